"""Train the example CartPole DQN policy that autoquant's quick-start compresses.

This script trains a stable-baselines3 DQN (``MlpPolicy``, ``net_arch=[64, 64]``)
on gymnasium ``CartPole-v1`` with the RL-Zoo hyperparameters for that
environment, evaluates the deterministic policy on a fixed set of episode
seeds, and saves:

* ``cartpole_dqn.zip``  -- the SB3 model (no replay buffer, empty optimizer state)
* ``cartpole_dqn.json`` -- metadata: hyperparameters, evaluation result,
  library versions and training wall time

Run it from the repository root::

    python examples/train_cartpole_dqn.py

Options: ``--out PATH`` (default: ``cartpole_dqn.zip`` next to this script),
``--timesteps N``, ``--seed N``, ``--eval-episodes N``. The script exits with a
non-zero status if the mean evaluation reward is below 475, so a badly trained
policy is never written out silently as the example.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import stable_baselines3
import torch
from stable_baselines3 import DQN

ENV_ID = "CartPole-v1"
ALGORITHM = "DQN"
NET_ARCH: list[int] = [64, 64]
DEFAULT_TIMESTEPS = 50_000
DEFAULT_SEED = 0
DEFAULT_EVAL_EPISODES = 20
EVAL_SEED_START = 1000
MIN_MEAN_REWARD = 475.0
NUM_THREADS = 1

# RL-Zoo hyperparameters for DQN on CartPole-v1.
HYPERPARAMS: dict[str, Any] = {
    "learning_rate": 2.3e-3,
    "batch_size": 64,
    "buffer_size": 100_000,
    "learning_starts": 1000,
    "gamma": 0.99,
    "target_update_interval": 10,
    "train_freq": 256,
    "gradient_steps": 128,
    "exploration_fraction": 0.16,
    "exploration_final_eps": 0.04,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=f"Train the example {ALGORITHM} policy on {ENV_ID}.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "cartpole_dqn.zip",
        help="where to save the model zip (default: cartpole_dqn.zip next to this script)",
    )
    parser.add_argument(
        "--timesteps",
        type=int,
        default=DEFAULT_TIMESTEPS,
        help=f"training timesteps (default: {DEFAULT_TIMESTEPS})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"training seed (default: {DEFAULT_SEED})",
    )
    parser.add_argument(
        "--eval-episodes",
        type=int,
        default=DEFAULT_EVAL_EPISODES,
        help=f"evaluation episodes, reset seeds {EVAL_SEED_START}.. (default: {DEFAULT_EVAL_EPISODES})",
    )
    args = parser.parse_args(argv)
    if args.timesteps <= 0:
        parser.error("--timesteps must be positive")
    if args.eval_episodes <= 0:
        parser.error("--eval-episodes must be positive")
    return args


def evaluate(model: DQN, seeds: list[int]) -> list[float]:
    """Run one deterministic episode per seed and return the episode returns."""
    env = gym.make(ENV_ID)
    returns: list[float] = []
    try:
        for seed in seeds:
            obs, _ = env.reset(seed=seed)
            total = 0.0
            done = False
            while not done:
                action, _ = model.predict(obs, deterministic=True)
                obs, reward, terminated, truncated, _ = env.step(int(action))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return returns


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    if out.suffix != ".zip":
        out = out.with_suffix(".zip")
    meta_path = out.with_suffix(".json")

    torch.set_num_threads(NUM_THREADS)

    model = DQN(
        "MlpPolicy",
        ENV_ID,
        policy_kwargs={"net_arch": list(NET_ARCH)},
        seed=args.seed,
        device="cpu",
        verbose=0,
        **HYPERPARAMS,
    )

    print(f"Training {ALGORITHM} on {ENV_ID} for {args.timesteps} timesteps (seed {args.seed}) ...")
    start = time.perf_counter()
    model.learn(total_timesteps=args.timesteps)
    train_seconds = time.perf_counter() - start
    print(f"Training took {train_seconds:.1f} s")

    eval_seeds = list(range(EVAL_SEED_START, EVAL_SEED_START + args.eval_episodes))
    returns = evaluate(model, eval_seeds)
    mean_reward = float(np.mean(returns))
    std_reward = float(np.std(returns))
    print(f"Evaluation over {len(returns)} episodes: {mean_reward:.2f} +/- {std_reward:.2f}")

    if mean_reward < MIN_MEAN_REWARD:
        print(
            f"error: mean eval reward {mean_reward:.2f} < {MIN_MEAN_REWARD:.0f}; not saving the model",
            file=sys.stderr,
        )
        return 1

    # SB3 always writes policy.optimizer.pth (DQN.load requires it), but the
    # Adam moment estimates are only needed to resume training. Dropping them
    # keeps the example zip small; the param groups (lr, betas, ...) remain.
    model.policy.optimizer.state.clear()

    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out, exclude=["replay_buffer"])

    metadata: dict[str, Any] = {
        "env_id": ENV_ID,
        "algorithm": ALGORITHM,
        "policy": "MlpPolicy",
        "net_arch": list(NET_ARCH),
        "timesteps": args.timesteps,
        "seed": args.seed,
        "hyperparameters": HYPERPARAMS,
        "eval_episodes": len(returns),
        "eval_seeds": eval_seeds,
        "eval_deterministic": True,
        "eval_mean_reward": mean_reward,
        "eval_std_reward": std_reward,
        "eval_returns": returns,
        "train_wall_time_s": round(train_seconds, 2),
        "torch_num_threads": NUM_THREADS,
        "versions": {
            "python": platform.python_version(),
            "stable_baselines3": stable_baselines3.__version__,
            "torch": torch.__version__,
            "gymnasium": gym.__version__,
        },
    }
    meta_path.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")

    print(f"Saved model to {out} ({out.stat().st_size} bytes)")
    print(f"Saved metadata to {meta_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
