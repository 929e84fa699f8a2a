"""Train the Pong DQN that autoquant's examples compress, under sticky actions.

Double DQN on ``PongNoFrameskip-v4`` with stable-baselines3's Atari wrappers and ALE's
sticky actions (p = 0.25) in training and in evaluation, so that the policy cannot win by
replaying memorised deterministic games. The network is SB3's ``CnnPolicy`` Q-network
(the Nature CNN), kept as a plain ``nn.Sequential`` with the layout autoquant loads.

Training (the hyperparameters are ``HYPERPARAMS``; each one is an option):

* ``--envs`` (32) SB3 Atari envs in subprocesses, training wrappers (episodic life, reward
  clipping, no-op and fire resets, frame skip 4, 84x84 grayscale, 4 stacked frames);
* a replay buffer of ``--buffer`` transitions on the accelerator where there is one
  (uint8 frames: a stack and the next frame per transition, about 35 KB);
* one update of ``--batch`` transitions per vector step, Adam, Huber loss, gradient norm
  clipped at 10, a Polyak-averaged target network, Double DQN targets;
* epsilon-greedy exploration, linear from ``--eps-start`` to ``--eps-end``.

Every ``--eval-every`` env steps the greedy policy plays ``--eval-episodes`` games under
sticky actions (autoquant's own evaluation: the wrappers autoquant evaluates with, every
seed a distinct game), and the best network so far is kept. A run stops at ``--steps`` or
when ``--time-limit`` seconds would be passed, and then writes, into ``--out``:

* ``dqn_pong.pt``: the best network's state dict (keys ``0.* 2.* 4.* 7.* 9.*``), input
  uint8 frames / 255, four stacked frames oldest first, channels first;
* ``dqn_pong.zip``: the same weights as an SB3 ``DQN`` zip (``CnnPolicy``);
* ``meta.json``: the steps, the hyperparameters and seed, and the best network's score
  under both protocols with intervals and distinct-game counts: sticky actions over
  ``--final-episodes`` seeds (each a distinct game), and deterministic over all 30 no-op
  starts (exact for that protocol; the starts are a few distinct games).

``checkpoint.pt`` in ``--out`` holds the training state after each evaluation (networks,
optimizer, step, best score, random states): ``--resume`` continues from it. The replay
buffer is not saved (at 500 k transitions it is about 17 GB); a resumed run refills it
for ``--learning-starts`` steps before it updates again. ``--init dqn_pong.pt`` starts
from another network's weights (the shared reference, trained without sticky actions).

Run from the repository root, on a machine with an accelerator::

    python examples/train_pong_dqn.py --init ../shared/policies/dqn-PongNoFrameskip-v4/dqn_pong.pt \\
        --steps 3000000 --time-limit 540

The script exits non-zero, and writes nothing as the example, when no evaluation ran.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ENV_ID = "PongNoFrameskip-v4"
STICKY = 0.25
N_ACTIONS = 6
EVAL_SEED = 300_000  # evaluation seeds during training: 300000.. (training envs: --seed..)
FINAL_SEED = 400_000  # the final sticky-actions evaluation: 400000..

HYPERPARAMS: dict[str, Any] = {
    "envs": 32,
    "buffer": 500_000,
    "batch": 256,
    "lr": 1e-4,
    "gamma": 0.99,
    "tau": 0.01,  # Polyak step of the target network, each update
    "learning_starts": 50_000,  # env steps collected before the first update
    "eps_start": 1.0,
    "eps_end": 0.01,
    "eps_steps": 1_000_000,  # env steps over which epsilon falls linearly
    "max_grad_norm": 10.0,
    "eval_every": 250_000,
    "eval_episodes": 16,
}


def q_network() -> nn.Sequential:
    """SB3's CnnPolicy Q-network (Nature CNN, then a linear head) as one Sequential."""
    return nn.Sequential(
        nn.Conv2d(4, 32, 8, stride=4), nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(3136, 512), nn.ReLU(),
        nn.Linear(512, N_ACTIONS),
    )


def q_values(net: nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """Q-values of uint8 stacked frames (N, 4, 84, 84)."""
    return net(frames.float() / 255.0)  # type: ignore[no-any-return]


class Replay:
    """Transitions on ``device``: the stacked frames, the action, the clipped reward, whether
    the episode ended, and only the newest frame of the next observation (its other three
    are the stack's last three)."""

    def __init__(self, capacity: int, device: torch.device) -> None:
        self.capacity, self.device, self.size, self.at = capacity, device, 0, 0
        self.obs = torch.empty((capacity, 4, 84, 84), dtype=torch.uint8, device=device)
        self.next_frame = torch.empty((capacity, 84, 84), dtype=torch.uint8, device=device)
        self.action = torch.empty(capacity, dtype=torch.int64, device=device)
        self.reward = torch.empty(capacity, dtype=torch.float32, device=device)
        self.done = torch.empty(capacity, dtype=torch.float32, device=device)

    def add(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, next_frame: torch.Tensor,
            done: torch.Tensor) -> None:
        n = obs.shape[0]
        idx = (torch.arange(n, device=self.device) + self.at) % self.capacity
        self.obs[idx], self.next_frame[idx], self.action[idx] = obs, next_frame, action
        self.reward[idx], self.done[idx] = reward, done
        self.at = (self.at + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        idx = torch.randint(0, self.size, (batch,), device=self.device, generator=generator)
        obs = self.obs[idx]
        following = torch.cat([obs[:, 1:], self.next_frame[idx].unsqueeze(1)], dim=1)
        return obs, self.action[idx], self.reward[idx], following, self.done[idx]


def training_envs(n: int, seed: int) -> Any:
    """SB3's Atari training envs with sticky actions, in subprocesses, frames channels first."""
    import ale_py
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecFrameStack, VecTransposeImage

    gym.register_envs(ale_py)  # the ALE's ids, in this process (subprocess envs import it themselves)
    venv = make_atari_env(ENV_ID, n_envs=n, seed=seed, vec_env_cls=SubprocVecEnv if n > 1 else DummyVecEnv,
                          env_kwargs={"repeat_action_probability": STICKY})
    return VecTransposeImage(VecFrameStack(venv, n_stack=4))


def evaluate(net: nn.Module, device: torch.device, seeds: list[int], *, sticky: float,
             n_envs: int = 16) -> Any:
    """The greedy policy on ``seeds`` with autoquant's evaluation (its wrappers, its
    distinct-game counting): sticky actions, or the deterministic protocol's no-op starts."""
    from autoquant.evaluate import play_episodes
    from autoquant.policy import resolve_protocol

    net.eval()

    @torch.no_grad()
    def act(obs: np.ndarray) -> np.ndarray:
        return q_values(net, torch.as_tensor(obs, device=device)).argmax(1).cpu().numpy()

    try:
        return play_episodes(act, ENV_ID, seeds, protocol=resolve_protocol(ENV_ID, sticky or None),
                             n_envs=n_envs)
    finally:
        net.train()


def describe(stats: Any) -> dict[str, Any]:
    est = stats.estimate()
    return {"mean_reward": est.mean, "ci95": None if math.isnan(est.half_width) else est.half_width,
            "low": None if math.isinf(est.low) else est.low, "episodes": len(stats.seeds),
            "distinct_games": stats.distinct_games, "exact": stats.exact, "protocol": stats.protocol.to_json(),
            "seeds": list(stats.seeds), "rewards": list(stats.rewards), "lengths": list(stats.lengths)}


def save_sb3_zip(state: dict[str, torch.Tensor], path: Path) -> None:
    """The weights as an SB3 DQN zip (CnnPolicy, no replay buffer)."""
    from stable_baselines3 import DQN

    venv = training_envs(1, 0)
    try:
        model = DQN("CnnPolicy", venv, buffer_size=1, learning_starts=0, device="cpu")
        mapping = {"features_extractor.cnn.0": "0", "features_extractor.cnn.2": "2", "features_extractor.cnn.4": "4",
                   "features_extractor.linear.0": "7", "q_net.0": "9"}
        sb3 = {f"{ours}.{p}": state[f"{theirs}.{p}"] for ours, theirs in mapping.items() for p in ("weight", "bias")}
        model.policy.q_net.load_state_dict(sb3)
        model.policy.q_net_target.load_state_dict(sb3)
        model.save(path)
    finally:
        venv.close()


def atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the example Pong DQN under sticky actions (p = 0.25).")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "pong",
                   help="output folder (default examples/pong)")
    p.add_argument("--steps", type=int, default=3_000_000, help="env steps to train in all (default 3000000)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds: stop, evaluate and write the outputs before this much wall-clock has passed")
    p.add_argument("--seed", type=int, default=0, help="seed of the envs, the network and the sampling (default 0)")
    p.add_argument("--init", type=Path, default=None, help="start from this state dict (dqn_pong.pt layout)")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    p.add_argument("--final-episodes", type=int, default=30,
                   help="sticky-actions games of the final evaluation, each a distinct game (default 30)")
    p.add_argument("--final-starts", type=int, default=30,
                   help="deterministic no-op starts of the final evaluation (default all 30: exact)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads on a CPU device (default 1)")
    for name, value in HYPERPARAMS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value,
                       help=f"(default {value})")
    args = p.parse_args(argv)
    for name in ("steps", "envs", "buffer", "batch", "eval_every", "eval_episodes", "final_episodes", "final_starts"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.final_starts > 30:
        p.error("--final-starts: the deterministic protocol has 30 no-op starts")
    if args.resume and args.init is not None:
        p.error("--resume continues from the checkpoint's own weights; leave out --init")
    if args.resume and not (args.out / "checkpoint.pt").is_file():
        p.error(f"--resume: {args.out / 'checkpoint.pt'} does not exist; start without --resume")
    if args.init is not None and not args.init.is_file():
        p.error(f"--init: {args.init} is not a file")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    deadline = started + args.time_limit if args.time_limit else math.inf
    device = torch.device(args.device)
    if device.type == "cpu":  # batch-1 acting: one thread (two threads beside the env processes: 20x slower)
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    hyper = {name: getattr(args, name) for name in HYPERPARAMS}

    net, target = q_network().to(device), q_network().to(device)
    if args.init is not None:
        net.load_state_dict(torch.load(args.init, map_location=device, weights_only=True))
    target.load_state_dict(net.state_dict())
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    step, best, history = 0, -math.inf, []
    best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    if args.resume:
        ck = torch.load(args.out / "checkpoint.pt", map_location=device, weights_only=True)
        net.load_state_dict(ck["net"])
        target.load_state_dict(ck["target"])
        optimizer.load_state_dict(ck["optimizer"])
        step, best, history, best_state = ck["step"], ck["best"], ck["history"], ck["best_state"]
        torch.set_rng_state(ck["torch_rng"])
    generator = torch.Generator(device=device).manual_seed(args.seed + step)
    rng = np.random.default_rng(args.seed + step)
    replay = Replay(args.buffer, device)
    envs = training_envs(args.envs, args.seed + step)
    collected = 0  # transitions since this process started (the buffer starts empty here)
    next_eval = (step // args.eval_every + 1) * args.eval_every
    eval_s, t0, steps0 = 0.0, time.monotonic(), step

    def epsilon() -> float:
        frac = min(1.0, step / args.eps_steps)
        return args.eps_start + frac * (args.eps_end - args.eps_start)

    def checkpoint_and_eval() -> None:
        nonlocal best, best_state, eval_s
        t = time.monotonic()
        seeds = [EVAL_SEED + len(history) * args.eval_episodes + i for i in range(args.eval_episodes)]
        stats = evaluate(net, device, seeds, sticky=STICKY)
        eval_s += time.monotonic() - t
        history.append({"step": step, "sticky_mean": stats.mean, "episodes": len(stats.seeds),
                        "eps": epsilon(), "seconds": time.monotonic() - started,
                        "env_steps_per_s": (step - steps0) / max(1e-9, time.monotonic() - t0 - eval_s)})
        if stats.mean > best:
            best, best_state = stats.mean, {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        print(json.dumps(history[-1]), flush=True)
        atomic_save({"net": net.state_dict(), "target": target.state_dict(), "optimizer": optimizer.state_dict(),
                     "step": step, "best": best, "best_state": best_state, "history": history,
                     "torch_rng": torch.get_rng_state(), "hyperparams": hyper, "seed": args.seed},
                    args.out / "checkpoint.pt")

    # Time kept for the final evaluation and the outputs: a fifth of the limit until an evaluation
    # was timed, then what the longest one took scaled to the final one's episodes.
    reserve = 0.2 * args.time_limit if args.time_limit else 0.0
    timed = 0.0
    final_share = (args.final_episodes + args.final_starts + args.eval_episodes) / args.eval_episodes
    obs = torch.as_tensor(envs.reset(), device=device)
    try:
        while step < args.steps and time.monotonic() + reserve < deadline:
            with torch.no_grad():
                greedy = q_values(net, obs).argmax(1).cpu().numpy()
            explore = rng.random(args.envs) < epsilon()
            actions = np.where(explore, rng.integers(0, N_ACTIONS, args.envs), greedy)
            next_obs, rewards, dones, infos = envs.step(actions)
            newest = next_obs[:, -1].copy()
            ended = np.zeros(args.envs, dtype=np.float32)
            for i, done in enumerate(dones):
                if done:  # the env reset: the transition's next frame is the terminal one
                    newest[i] = np.asarray(infos[i]["terminal_observation"])[-1]
                    ended[i] = 0.0 if infos[i].get("TimeLimit.truncated", False) else 1.0
            replay.add(obs, torch.as_tensor(actions, dtype=torch.int64, device=device),
                       torch.as_tensor(rewards, dtype=torch.float32, device=device),
                       torch.as_tensor(newest, device=device), torch.as_tensor(ended, device=device))
            obs = torch.as_tensor(next_obs, device=device)
            step += args.envs
            collected += args.envs
            if collected >= args.learning_starts and replay.size >= args.batch:
                s, a, r, s2, d = replay.sample(args.batch, generator)
                with torch.no_grad():
                    pick = q_values(net, s2).argmax(1, keepdim=True)
                    y = r + args.gamma * (1.0 - d) * q_values(target, s2).gather(1, pick).squeeze(1)
                q = q_values(net, s).gather(1, a.unsqueeze(1)).squeeze(1)
                loss = nn.functional.smooth_l1_loss(q, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), args.max_grad_norm)
                optimizer.step()
                with torch.no_grad():
                    for pt, pn in zip(target.parameters(), net.parameters()):
                        pt.lerp_(pn, args.tau)
            if step >= next_eval:
                t = time.monotonic()
                checkpoint_and_eval()
                timed = max(timed, time.monotonic() - t)
                reserve = final_share * timed
                next_eval += args.eval_every
        if not history or history[-1]["step"] != step:
            checkpoint_and_eval()
    finally:
        envs.close()

    # The best network, measured under both protocols, and written out.
    net.load_state_dict({k: v.to(device) for k, v in best_state.items()})
    sticky = evaluate(net, device, [FINAL_SEED + i for i in range(args.final_episodes)], sticky=STICKY, n_envs=30)
    deterministic = evaluate(net, device, list(range(args.final_starts)), sticky=0.0, n_envs=30)
    atomic_save(best_state, args.out / "dqn_pong.pt")
    save_sb3_zip(best_state, args.out / "dqn_pong.zip")
    import gymnasium
    import stable_baselines3

    meta = {
        "algorithm": "Double DQN (examples/train_pong_dqn.py), SB3 CnnPolicy's Q-network (Nature CNN)",
        "env": f"{ENV_ID}, sticky actions p={STICKY} in training and evaluation; SB3 AtariWrapper, 4-frame stack",
        "trained_env_steps": step,
        "init": str(args.init.name) if args.init is not None else None,
        "seed": args.seed,
        "hyperparams": hyper,
        "sticky_actions_0.25": describe(sticky),
        "deterministic": describe(deterministic),
        "evaluations": history,
        "best_training_eval_sticky_mean": best,
        "wall_s": time.monotonic() - started,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "versions": {"torch": torch.__version__, "stable_baselines3": stable_baselines3.__version__,
                     "gymnasium": gymnasium.__version__, "python": platform.python_version()},
    }
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps({"sticky": meta["sticky_actions_0.25"]["mean_reward"],
                      "deterministic": meta["deterministic"]["mean_reward"], "steps": step}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
