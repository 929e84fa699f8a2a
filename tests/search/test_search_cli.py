"""`autoquant search` and `export` as a user runs them, on the zoo's CartPole DQN."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

from autoquant.search import TrialRecord, trial_records
from tests.conftest import ROOT, cli_main, run_cli
from tests.targets.device import hold_a_trial, start_device, study_records, wait_for


@pytest.fixture(scope="module")
def thirty_trials(tmp_path_factory, cartpole_dqn_path: Path) -> tuple[Path, dict]:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("runs") / "cartpole"
    proc = cli_main("search", "--policy", str(cartpole_dqn_path), "--method", "prune", "--agent", "tpe",
                    "--trials", "30", "--out", str(out), "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


@pytest.mark.slow
def test_thirty_trials_find_a_faster_plan_that_keeps_the_reward(thirty_trials) -> None:  # type: ignore[no-untyped-def]
    out, result = thirty_trials
    assert result["trials"] == 30 and result["failed"] == 0
    best = result["best"]
    assert best is not None, result
    assert best["retention"] >= 0.98  # confirmed on fresh seeds
    assert best["latency_ratio"] < 1.0  # faster than onnxruntime fp32, measured in one window
    assert best["latency"]["reference"]["p10"] > best["latency"]["candidate"]["p10"]
    for name in ("run.json", "study.db", "states.npz", "report.md", "pareto.png", "best/plan.json",
                 "best/policy.onnx", "best/confirm.json"):
        assert (out / name).is_file(), name
    info = json.loads((out / "run.json").read_text())
    assert info["target"]["facts"]["onnxruntime"] and info["config"]["agent"] == "tpe"
    assert info["config"]["argv"][1:3] == ["search", "--policy"]  # as typed: `autoquant search --policy ...`
    assert "onnxruntime int8" in (out / "report.md").read_text()
    # the protocol and the distinct games behind every reward figure, in --json, run.json and report.md
    assert result["sticky_actions"] == 0.0 and result["protocol"]["name"] == "seeded starts"
    assert result["fp32_episodes"]["distinct_games"] == result["fp32_episodes"]["episodes"] == 10
    assert best["distinct_pairs"] == best["confirm_episodes"] == 20 and best["exact"] is False
    assert best["retention_low"] <= best["retention"] <= best["retention_high"]
    assert info["protocol"]["sticky_actions"] == 0.0 and info["config"]["sticky_actions"] == 0.0
    assert info["reference"]["fp32"]["distinct_games"] == 10
    report = (out / "report.md").read_text()
    assert "**protocol**: seeded starts; 10 episodes, 10 distinct games" in report
    assert f"**Best plan (confirmed):** trial {best['trial']}" in report and "distinct games" in report
    assert result["confirmation"]["passed"] is True


def test_run_json_records_the_command_main_was_given(finished_run: Path) -> None:
    """main(argv) in-process (as the session's run was made) records its argv, not the host's."""
    argv = json.loads((finished_run / "run.json").read_text())["config"]["argv"]
    assert argv[:4] == ["autoquant", "search", "--policy", argv[3]] and argv[3].endswith("CartPole-v1.zip")


def test_a_resumed_run_never_mixes_protocols(finished_run: Path) -> None:
    proc = cli_main("search", "--out", str(finished_run), "--resume", "--sticky-actions", "0.25", "--quiet")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "never mixes protocols" in proc.stderr


@pytest.mark.parametrize("args, words", [
    (("--env", "CartPole-v1", "--sticky-actions", "0.25"), ("applies to Atari", "CartPole-v1")),
    (("--sticky-actions", "1.5"), ("--sticky-actions", "[0, 1)")),
])
def test_sticky_actions_are_checked_in_one_line(args: tuple[str, ...], words: tuple[str, ...],
                                                cartpole_dqn_path: Path, tmp_path: Path) -> None:
    for command in ("evaluate", "search"):
        extra = ("--out", str(tmp_path / "run")) if command == "search" else ()
        proc = cli_main(command, "--policy", str(cartpole_dqn_path), *args, *extra, "--quiet" if extra else "--json")
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and all(w in proc.stderr for w in words), proc.stderr
        assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_export_reproduces_the_reward(thirty_trials, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from autoquant.evaluate import onnx_actor, play_episodes
    from autoquant.policy import load_policy

    out, result = thirty_trials
    confirm = json.loads((out / "best" / "confirm.json").read_text())
    proc = cli_main("export", str(out), "--trial", "best", "--format", "onnx", "--out", str(tmp_path / "onnx"))
    assert proc.returncode == 0, proc.stderr
    model = (tmp_path / "onnx" / "policy.onnx").read_bytes()
    assert model == (out / "best" / "policy.onnx").read_bytes()  # deterministic: what was played is exported
    bundle = load_policy(json.loads((out / "run.json").read_text())["config"]["policy"])
    seeds = confirm["confirm"]["seeds"]
    replay = play_episodes(onnx_actor(bundle, model), "CartPole-v1", seeds)
    assert list(replay.rewards) == confirm["confirm"]["reward"]["rewards"]

    proc = cli_main("export", str(out), "--trial", str(result["best"]["trial"]), "--format", "torch",
                    "--out", str(tmp_path / "torch"))
    assert proc.returncode == 0, proc.stderr
    scripted = load_policy(tmp_path / "torch" / "policy.pt", env_id="CartPole-v1", trust_pickle=True)  # our own file
    obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32) * 0.1
    assert np.mean(scripted.predict(obs) == bundle.predict(obs)) > 0.9


def test_existing_run_folder_needs_resume(finished_run: Path, cartpole_dqn_path: Path, tmp_path: Path) -> None:
    proc = cli_main("search", "--policy", str(cartpole_dqn_path), "--out", str(finished_run), "--trials", "2")
    assert proc.returncode == 2 and "--resume" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli_main("search", "--out", str(tmp_path), "--resume")
    assert proc.returncode == 2 and "not an autoquant run folder" in proc.stderr


def _completed(db: Path, name: str) -> dict[int, str]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    return {t.number: t.user_attrs["result"] for t in study.get_trials(deepcopy=False)
            if t.state == optuna.trial.TrialState.COMPLETE}


@pytest.mark.slow
def test_resume_after_kill_keeps_every_completed_trial(cartpole_dqn_path: Path, tmp_path: Path) -> None:
    """kill -9 mid-trial (held there by a paused device, so never after the last trial),
    then --resume: no completed trial is lost or measured again."""
    (tmp_path / "device").mkdir()
    device = start_device(tmp_path / "device", max_model_mb=8)
    out = tmp_path / "killed"
    target = ["--target", "arm", "--device", device.address, "--secret-file", str(device.secret_file)]
    cmd = [sys.executable, "-m", "autoquant", "search", "--policy", str(cartpole_dqn_path), "--method", "quant",
           "--agent", "random", "--trials", "6", "--episodes", "3", *target, "--out", str(out), "--quiet"]
    # 6 trials (it was 8): 4 complete before the kill, the 5th is killed mid-trial, and the resumed
    # search measures new plans to the end of the budget. What is checked (nothing completed lost
    # or measured again, the whole budget counted once) holds for any budget past the held trial.
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        hold_a_trial(device, proc, out / "study.db", "killed", completed=4)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before = _completed(out / "study.db", "killed")
        device.resume()
        assert proc.returncode == -signal.SIGKILL
        assert len(before) >= 4
        resumed = cli_main("search", "--out", str(out), "--resume", "--json", "--quiet", *target[2:])
    finally:
        device.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert resumed.returncode == 0, resumed.stderr
    after = _completed(out / "study.db", "killed")
    assert all(after[n] == before[n] for n in before)  # nothing completed was lost or redone
    records = _records(out / "study.db", "killed")
    assert len([r for r in records if r.counted]) == 6
    assert all(r.state != "RUNNING" for r in records)
    keys = [r.result.key for r in records if r.state == "COMPLETE" and r.result is not None and not r.cached]
    assert len(keys) == len(set(keys))  # no plan measured twice, across the restart


@pytest.mark.slow
def test_two_workers_share_one_study_on_postgres(postgres_url: str, cartpole_dqn_path: Path,
                                                 tmp_path: Path) -> None:
    def worker(name: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "autoquant", "search", "--policy", str(cartpole_dqn_path), "--method", "prune",
             "--agent", "tpe", "--trials", "10", "--seed", name[-1], "--storage", postgres_url, "--study", "shared",
             "--out", str(tmp_path / name), "--quiet"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def trials_of(proc: subprocess.Popen[bytes]) -> list[TrialRecord]:
        try:
            records = trial_records(optuna.load_study(study_name="shared", storage=postgres_url))
        except Exception:  # noqa: BLE001 - the schema or the study may not exist yet
            return []
        return [r for r in records if str(r.worker).endswith(f":{proc.pid}")]

    # Both workers take part whatever the machine's speed: the first is paused as soon as it
    # has a trial, until the second has one too (the first cannot use the budget up alone).
    first = worker("w1")
    wait_for("a trial of the first worker", first, lambda: bool(trials_of(first)))
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = worker("w2")
        wait_for("a trial of the second worker", second, lambda: bool(trials_of(second)))
    finally:
        os.kill(first.pid, signal.SIGCONT)
    workers = [first, second]
    errors = [w.communicate(timeout=480)[1].decode() for w in workers]
    assert [w.returncode for w in workers] == [0, 0], errors
    records = trial_records(optuna.load_study(study_name="shared", storage=postgres_url))
    counted = [r for r in records if r.counted]
    assert len(counted) == 10
    assert sorted(r.number for r in records) == list(range(len(records)))
    assert {str(r.worker).rsplit(":", 1)[1] for r in records} == {str(w.pid) for w in workers}
    keys = [r.result.key for r in counted if r.state == "COMPLETE" and r.result is not None and not r.cached]
    assert len(keys) == len(set(keys))


def _records(db: Path, name: str) -> list[TrialRecord]:
    return study_records(db, name)


def _ctrl_c_as_in_a_terminal() -> None:
    """The search starts with SIGINT at its default, as in a terminal: a test suite launched in
    the background of a script inherits SIGINT ignored (POSIX), and Python then never turns
    Ctrl-C into KeyboardInterrupt (the test hung in such fresh-clone runs)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_records_the_trial_and_prints_the_resume_command(cartpole_dqn_path: Path, tmp_path: Path) -> None:
    """The interrupted trial is held in flight, not caught by luck: the search measures on
    a real device server, which the test pauses (SIGSTOP) once the search is under way.
    A trial that needs the device (a plan not measured before) then cannot finish, and
    Ctrl-C arrives while it runs, every time."""
    (tmp_path / "device").mkdir()
    device = start_device(tmp_path / "device", max_model_mb=8)
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoquant", "search", "--policy", str(cartpole_dqn_path), "--method", "quant",
         "--agent", "random", "--trials", "40", "--episodes", "3", "--target", "arm", "--device", device.address,
         "--secret-file", str(device.secret_file), "--out", str(out), "--quiet"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_ctrl_c_as_in_a_terminal)
    try:
        held = hold_a_trial(device, proc, out / "study.db", "interrupted")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        device.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err.decode()
    assert f"autoquant search --out {out} --resume" in err.decode()
    assert "Traceback" not in err.decode()
    records = {r.number: r for r in _records(out / "study.db", "interrupted")}
    assert all(r.state != "RUNNING" for r in records.values())
    interrupted = records[held.number]
    assert interrupted.state == "FAIL" and interrupted.interrupted and not interrupted.counted
    assert interrupted.error == "interrupted by the user"


def test_a_run_folder_never_switches_on_unpickling(finished_run: Path, tmp_path: Path) -> None:
    """run.json edited to trust a pickled policy: export and resume still refuse it, and
    nothing from the file runs."""
    import shutil

    import torch

    from autoquant._io import sha256_file

    run = tmp_path / "tampered"
    shutil.copytree(finished_run, run)
    marker = tmp_path / "pwned"
    policy = tmp_path / "policy.pt"
    torch.save(_Touch(str(marker)), policy)
    info = json.loads((run / "run.json").read_text())
    info["config"]["trust_pickle"] = True
    info["config"]["policy"] = info["policy"]["path"] = str(policy)
    info["policy"]["sha256"] = sha256_file(policy)
    (run / "run.json").write_text(json.dumps(info))
    for args in (("export", str(run), "--trial", "0", "--out", str(tmp_path / "exported")),
                 ("search", "--out", str(run), "--resume", "--quiet")):
        proc = cli_main(*args)
        assert proc.returncode == 2, proc.stderr
        assert "--trust-pickle" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not marker.exists(), f"{args[0]} unpickled the policy"
    assert not (tmp_path / "exported").exists()


class _Touch:
    """Unpickling this creates a file: the proof that a pickle ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (Path(self.path),))


@pytest.mark.slow
def test_a_resumed_search_proposes_new_plans(cartpole_dqn_path: Path, tmp_path: Path) -> None:
    """A seeded sampler that restarted its sequence on resume would re-propose every plan
    of the first part; the resumed agent continues instead, and repeats cost no budget."""
    out = tmp_path / "resumed"
    first = cli_main("search", "--policy", str(cartpole_dqn_path), "--method", "quant", "--agent", "random",
                     "--trials", "8", "--episodes", "3", "--out", str(out), "--quiet", "--json")
    assert first.returncode == 0, first.stderr
    resumed = cli_main("search", "--out", str(out), "--resume", "--trials", "16", "--quiet", "--json")
    assert resumed.returncode == 0, resumed.stderr
    records = _records(out / "study.db", "resumed")
    counted = [r for r in records if r.counted]
    assert len(counted) == 16
    assert len({r.key for r in counted}) == 16  # every counted trial measured a plan of its own
    later = [r for r in records if r.number >= 8]
    assert sum(r.repeat for r in later) <= 2, [r.summary for r in later]  # not the first eight again


def test_resume_after_an_interrupted_set_up_says_to_start_again(tmp_path: Path) -> None:
    """Killed while setting up: only the staging folder exists, and --resume says what to do."""
    (tmp_path / ".run.partial-12345").mkdir()
    proc = cli_main("search", "--out", str(tmp_path / "run"), "--resume")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "no run.json" in proc.stderr and "start the search again without --resume" in proc.stderr


@pytest.mark.parametrize("value", ["0", "-5", "soon", "inf"])
def test_a_bad_time_budget_is_one_line_and_exit_2(value: str, cartpole_dqn_path: Path, tmp_path: Path) -> None:
    proc = cli_main("search", "--policy", str(cartpole_dqn_path), "--time-budget", value, "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--time-budget" in proc.stderr and "seconds" in proc.stderr
    assert not (tmp_path / "r").exists()  # nothing was started


@pytest.mark.slow
def test_a_time_budget_ends_the_search_before_its_trials(cartpole_dqn_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    proc = cli_main("search", "--policy", str(cartpole_dqn_path), "--agent", "random", "--trials", "1000",
                   "--time-budget", "5", "--states", "256", "--episodes", "2", "--confirm-episodes", "2",
                   "--out", str(out), "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert 1 <= summary["trials"] < 1000
    study = optuna.load_study(study_name="r", storage=f"sqlite:///{out / 'study.db'}")
    assert study.user_attrs["search_seconds"] >= 5.0


@pytest.mark.slow
def test_finetuned_trials_are_recorded_kept_and_exported_as_judged(cartpole_dqn_path: Path, tmp_path: Path) -> None:
    """--finetune: a plan below --finetune-below is fine-tuned before it is judged; the run
    records it, keeps its graph, reports it, confirms and exports that graph, and refuses a
    torch export it could not make faithfully (one line, exit 2)."""
    space = tmp_path / "w4.toml"
    space.write_text('name = "w4"\nweight_bits = [4]\nprune_ratios = [0.0, 0.5]\nchannel_multiple = 8\n')
    out = tmp_path / "run"
    proc = cli_main("search", "--policy", str(cartpole_dqn_path), "--method", str(space), "--agent", "random",
                   "--trials", "2", "--finetune", "10", "--finetune-below", "1.0", "--min-retention", "0.5",
                   "--episodes", "4", "--confirm-episodes", "4", "--states", "512", "--out", str(out), "--json",
                   "--quiet")
    assert proc.returncode == 0, proc.stderr
    records = trial_records(optuna.load_study(study_name="run", storage=f"sqlite:///{out / 'study.db'}"))
    tried = [r for r in records if r.result is not None and r.result.finetune is not None]
    assert tried, "every plan of this space is below agreement 1.0 and the first could beat fp32: it is fine-tuned"
    for r in tried:  # judged on the tuned graph exactly where tuning raised held-out fidelity
        info = r.result.finetune
        assert info["rounds"] == 2 and info["epochs"] == 10 and info["seconds"] > 0
        assert info["kept"] == (info["fidelity_after"] > info["fidelity_before"]) == r.result.fine_tuned
        assert r.result.fidelity_score == info["fidelity_after" if info["kept"] else "fidelity_before"]
        assert (out / "models" / f"{r.key}.onnx").is_file() == info["kept"]
    tuned = [r for r in tried if r.result.fine_tuned]
    assert tuned, [r.result.finetune for r in tried]  # 4-bit weights on this DQN: distillation helps
    first = tuned[0]
    kept = out / "models" / f"{first.key}.onnx"
    assert kept.is_file()
    assert "## Fine-tuned trials" in (out / "report.md").read_text()
    proc = cli_main("export", str(out), "--trial", str(first.number), "--format", "onnx", "--out", str(tmp_path / "x"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "x" / "policy.onnx").read_bytes() == kept.read_bytes()
    proc = cli_main("export", str(out), "--trial", str(first.number), "--format", "torch", "--out", str(tmp_path / "t"))
    assert proc.returncode == 2 and "fine-tuned" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flag, value", [("--finetune", "-1"), ("--finetune-below", "1.5"),
                                         ("--finetune-rounds", "x")])
def test_a_bad_finetune_option_is_one_line_and_exit_2(flag: str, value: str, cartpole_dqn_path: Path,
                                                     tmp_path: Path) -> None:
    proc = cli_main("search", "--policy", str(cartpole_dqn_path), flag, value, "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert flag.lstrip("-").split("-")[0] in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("storage", "words"), [
    ("notaurl", ("is not a database URL",)),
    ("sqlite://", ("in-memory",)),
    ("sqlite:////proc/autoquant/study.db", ("nothing can be created in /proc",)),
    ("nosuchdb+driver://host/db", ("no driver for 'nosuchdb+driver'",)),
    ("postgresql+psycopg2://user:hunter2@nohost.invalid/db", ("cannot connect", "nohost.invalid", "***")),
])
def test_a_storage_that_cannot_hold_the_study_is_refused_before_the_set_up(storage: str, words: tuple[str, ...],
                                                                         cartpole_dqn_path: Path,
                                                                         tmp_path: Path) -> None:
    """A bad --storage failed only after 13-18 s of set-up, and left a run folder with no study."""
    out = tmp_path / "run"
    proc = cli_main("search", "--policy", str(cartpole_dqn_path), "--trials", "2", "--out", str(out),
                    "--storage", storage)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--storage" in lines[0] and all(w in lines[0] for w in words), proc.stderr
    assert "hunter2" not in proc.stderr  # a password never reaches the terminal
    assert list(tmp_path.iterdir()) == []  # no run folder, no staging folder


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real 1 MiB file system (tmpfs), to fill up; skipped where mounting is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}): needs root")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path, leave_kb: int) -> None:
    """Fill ``disk`` until ``leave_kb`` KiB are free."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler.write_bytes(bytes(max(0, free - leave_kb * 1024)))


_SMALL = ("--method", "quant", "--agent", "random", "--states", "256", "--episodes", "3", "--confirm-episodes", "3")


def test_a_set_up_on_a_full_disk_is_one_line_and_leaves_nothing(small_disk: Path, cartpole_dqn_path: Path) -> None:
    """The states fit, the study did not: the folder was left without a study, and the message
    ('cannot open study') did not say why."""
    _fill(small_disk, leave_kb=64)
    out = small_disk / "run"
    proc = cli_main("search", "--policy", str(cartpole_dqn_path), "--trials", "2", "--out", str(out), "--quiet",
                    *_SMALL)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no space left" in lines[0] and "nothing was kept" in lines[0], proc.stderr
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]  # no run folder, no staging folder


@pytest.mark.slow
def test_a_resume_on_a_full_disk_is_one_line_that_says_how_to_resume(small_disk: Path,
                                                                     cartpole_dqn_path: Path) -> None:
    """--resume on a full disk crashed (StorageInternalError: 'internal error', exit 1)."""
    out = small_disk / "run"
    proc = cli_main("search", "--policy", str(cartpole_dqn_path), "--trials", "2", "--out", str(out), "--quiet",
                    *_SMALL)
    assert proc.returncode == 0, proc.stderr
    for leave_kb, args in ((0, ()), (24, ("--trials", "40", "--time-budget", "600"))):
        _fill(small_disk, leave_kb)
        proc = cli_main("search", "--out", str(out), "--resume", "--quiet", *args)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "no space left" in lines[0] and "internal error" not in lines[0], proc.stderr
    assert "resume with: autoquant search --out" in lines[0]
    (small_disk / "filler").unlink()
    records = trial_records(optuna.load_study(study_name="run", storage=f"sqlite:///{out / 'study.db'}"))
    assert len([r for r in records if r.state == "COMPLETE"]) >= 2  # the trials so far are in the study
    assert all(r.state != "RUNNING" for r in records)
