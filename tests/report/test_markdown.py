"""The markdown report of one search."""

from __future__ import annotations

from autoquant.report import write_report
from tests.report.helpers import FLOOR, assert_png, trial

RUN_INFO = {"policy": "dqn-CartPole-v1", "env": "CartPole-v1", "target": "host", "method": "joint",
            "agent": "tpe", "trials": 11, "seed": 0, "device": {"cpu": "Xeon 8480", "threads": 1}}


def test_report_has_header_best_front_references_counts_and_plot(  # type: ignore[no-untyped-def]
        tmp_path, records, references) -> None:
    md = tmp_path / "report.md"
    write_report(md, records, references, floor=FLOOR, run_info=RUN_INFO)
    text = md.read_text()
    for fact in ("**policy**: dqn-CartPole-v1", "**env**: CartPole-v1", "**target**: host", "**method**: joint",
                 "**agent**: tpe", "**trials**: 11", "**seed**: 0", "cpu=Xeon 8480, threads=1",
                 "**retention floor**: 0.950"):
        assert fact in text
    assert ("**Best feasible plan (not confirmed yet):** trial 6, `fc1 w4a8 \\| p0.25`: latency ratio 0.650 (1.54x "
            "the fp32 speed), retention 0.960, size ratio 0.240.") in text
    assert "| 1 | fc1 w8a8 p0.50, fc2 w8a8 | 0.700 | 0.980 | 0.260 | yes |" in text
    assert "| 3 | plan 3 | 0.500 | 0.900 | 0.200 | no |" in text
    assert "| 0 | fc1 w8a8, fc2 w8a8 | 0.900 | 1.000 | 0.500 | yes |" in text
    front = text.split("## Pareto front")[1].split("## Played trials")[0]
    assert "| 2 | plan 2 |" not in front                 # dominated
    assert "| fp32 | 1.000 | 1.000 | 1.000 |" in text
    assert "| onnxruntime int8 | 0.720 | 0.970 | 0.250 |" in text
    assert "| torch eager | 1.800 | n/a | n/a |" in text
    assert ("- complete: 8, of which measured 8 (played 7, not played 1: 0 could not beat the best feasible "
            "latency, 1 failed the screen)") in text
    assert "- failed: 2" in text and "  - 2 x `onnxruntime: int8 kernel missing`" in text
    assert "- running: 1" in text
    assert "![pareto](pareto.png)" in text
    assert_png(tmp_path / "pareto.png")


def test_report_says_when_no_plan_met_the_floor(tmp_path) -> None:  # type: ignore[no-untyped-def]
    md = tmp_path / "out" / "report.md"
    write_report(md, [trial(0, 0.5, 0.4), trial(1, 0.6, None)], {}, floor=FLOOR, run_info={"policy": "p"},
                 plot_name="front.png")
    text = md.read_text()
    assert "no plan both met the floor (retention >= 0.950) and ran faster than fp32" in text
    assert "![pareto](front.png)" in text and "_None given._" in text
    assert_png(tmp_path / "out" / "front.png")


def test_report_lists_played_trials_with_their_interval_and_the_proxy_rank_correlation(tmp_path) -> None:  # type: ignore[no-untyped-def]
    records = []
    for number, (proxy, retention, episodes, decision) in enumerate(
            [(0.99, 1.00, 2, "above"), (0.90, 0.97, 10, "undecided"), (0.80, 0.40, 3, "below"), (0.85, 0.60, 2, "below")]):
        record = trial(number, 0.5 + number / 10, retention)
        record.update(proxy=proxy, episodes=episodes, decision=decision, retention_low=retention - 0.05,
                      retention_high=retention + 0.05, distinct_pairs=min(episodes, 3))
        records.append(record)
    md = tmp_path / "report.md"
    write_report(md, records, {}, floor=FLOOR, run_info={"policy": "p"})
    text = md.read_text()
    assert "## Played trials" in text and "sequential test" in text
    assert "Episodes per played trial: median 3, 2 to 10, 17 in all over 4 trials." in text
    assert "Spearman rank correlation 1.00 (n = 4)" in text  # proxy order = retention order
    assert "| 1 | plan 1 | 0.600 | 0.900 | 10 | 3 | 0.970 | [0.920, 1.020] | undecided | yes |" in text


def test_repeats_are_counted_apart_and_not_as_trials_spent(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from autoquant.report import trials_to_reach

    records = [trial(0, 0.9, 0.99), trial(1, 0.9, 0.99), trial(2, 0.5, 0.99)]
    records[1].update(cached=True, counted=False)  # trial 0's plan proposed again
    md = tmp_path / "report.md"
    write_report(md, records, {}, floor=FLOOR, run_info={"policy": "p"})
    text = md.read_text()
    assert "of which measured 2 (played 2, not played 0: 0 could not beat" in text
    assert "and 1 repeats (a plan measured before" in text
    assert trials_to_reach(records, 0.6) == 2  # the repeat used no budget


def test_a_plan_that_failed_confirmation_is_never_the_best(tmp_path, records, references) -> None:  # type: ignore[no-untyped-def]
    """The search's fastest feasible trial (6) failed confirmation; trial 1 passed: the report names 1."""
    failed = {"trial": 6, "summary": "fc1 w4a8 | p0.25", "retention": 0.80, "passed": False,
              "paired": {"distinct_pairs": 4, "exact": False}}
    passed = {"trial": 1, "summary": "fc1 w8a8 p0.50, fc2 w8a8", "retention": 0.99, "passed": True}
    confirmation = {"trial": 1, "summary": passed["summary"], "attempts": [failed, passed],
                    "search": {"latency_ratio": 0.7, "retention": 0.98, "size_ratio": 0.26},
                    "confirm": {"retention": 0.99, "episodes": 30, "exact": True, "distinct_pairs": 5}}
    md = tmp_path / "report.md"
    write_report(md, records, references, floor=FLOOR, run_info=RUN_INFO, confirmation=confirmation)
    text = md.read_text()
    assert ("**Failed confirmation:** trial 6, `fc1 w4a8 \\| p0.25`: retention 0.800 on the confirmation episodes "
            "(4 distinct pairs of games), below the floor (retention >= 0.950).") in text
    assert ("**Best plan (confirmed):** trial 1, `fc1 w8a8 p0.50, fc2 w8a8`: latency ratio 0.700 (1.43x the fp32 "
            "speed), retention 0.990 exact over all 30 starts of the protocol (5 distinct pairs of games)") in text
    assert "Best feasible plan" not in text

    md2 = tmp_path / "none.md"
    write_report(md2, records, references, floor=FLOOR, run_info=RUN_INFO, confirmation={"attempts": [failed]})
    text = md2.read_text()
    assert "**Failed confirmation:** trial 6" in text
    assert "**Best plan:** none: no plan both kept the floor (retention >= 0.950) on confirmation" in text


def test_trials_that_took_another_runtimes_episodes_say_so(tmp_path) -> None:  # type: ignore[no-untyped-def]
    records = []
    for number, shared in enumerate((None, "onnxruntime", None)):
        record = trial(number, 0.5 + number / 10, 0.99)
        record.update(proxy=0.99, episodes=4, decision="above", distinct_pairs=2, episodes_shared_from=shared)
        records.append(record)
    md = tmp_path / "report.md"
    write_report(md, records, {}, floor=FLOOR, run_info={"policy": "p"})
    text = md.read_text()
    assert "8 in all over 2 trials." in text  # the shared trial played none of its own
    assert "1 trial took the episodes of the same plan on another runtime" in text
    assert "| 4 (from onnxruntime) |" in text


def test_a_settled_trial_shows_what_its_first_test_found(tmp_path) -> None:  # type: ignore[no-untyped-def]
    record = trial(0, 0.4, 0.97)
    record.update(proxy=0.99, episodes=30, decision="below", distinct_pairs=4, exact=True, settled_from=0.98,
                  settled_episodes=10)
    md = tmp_path / "report.md"
    write_report(md, [record], {}, floor=FLOOR, run_info={"policy": "p"})
    assert "| below, settled (0.980 on 10) |" in md.read_text()


def test_played_trials_say_why_the_agent_proposed_them_where_it_said(tmp_path) -> None:  # type: ignore[no-untyped-def]
    records = []
    for number, why in enumerate(("bisection", "near miss")):
        record = trial(number, 0.5, 0.99)
        record.update(proxy=0.99, episodes=4, decision="above", distinct_pairs=3, proposed_as=why)
        records.append(record)
    md = tmp_path / "report.md"
    write_report(md, records, {}, floor=FLOOR, run_info={"policy": "p"})
    text = md.read_text()
    assert "| proposed as |" in text and "| yes | near miss |" in text
    for record in records:
        record["proposed_as"] = None
    write_report(md, records, {}, floor=FLOOR, run_info={"policy": "p"})
    assert "proposed as" not in md.read_text()  # agents that do not say: no column
