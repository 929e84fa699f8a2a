"""Pretrain the meta-RL agent (DDPG) across networks and write the weights the package ships.

The corpus: the reference policies in ``--policies`` except the Pong DQN (the Nature-CNN
family is held out, so that searches of it show what transfers), and ``--generated``
random Conv and MLP Q-networks of varied depth and width. Each gets a surrogate on the
host (its latency model, measured as a search measures it and cached the same way, and
its sensitivities); the agent then plays ``--episodes`` surrogate episodes, each on a
network and a bound drawn at random (``autoquant.agents.pretrain``). Writes
``autoquant/agents/pretrained/ddpg.npz`` and ``ddpg.json`` (metadata: corpus, budget,
seconds, SHA-256 of the arrays).

After training, and alone with ``--evaluate``, the policy's zero-shot plans are scored
on every corpus network and on the held-out Pong DQN against the surrogate's optimum
(the ILP's plan), over 8 bounds each; the scores go into ``ddpg.json``.

    python tools/pretrain_agent.py                      # about 10 minutes on 2 cores
    python tools/pretrain_agent.py --generated 4 --episodes 2000 --out /tmp/weights
    python tools/pretrain_agent.py --evaluate           # score the shipped weights again
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = ("dqn-PongNoFrameskip-v4", "dqn_pong.pt", "nature-cnn-q", "PongNoFrameskip-v4")
REFERENCES = (  # (folder, file, family); the Pong DQN is left out on purpose
    ("dqn-CartPole-v1", "CartPole-v1.zip", "sb3-mlp-q"),
    ("ppo-CartPole-v1", "CartPole-v1.zip", "sb3-mlp-policy"),
    ("dqn-LunarLander-v2", "LunarLander-v2.zip", "sb3-mlp-q"),
    ("sac-Pendulum-v1", "Pendulum-v1.zip", "sb3-mlp-actor"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", type=Path, default=REPO / ".." / "shared" / "policies")
    parser.add_argument("--generated", type=int, default=12, help="random networks in the corpus (default 12)")
    parser.add_argument("--episodes", type=int, default=20000, help="surrogate episodes (default 20000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evaluate", action="store_true", help="only score the weights in --out (or the "
                        "package's) on the corpus and the held-out Pong DQN")
    parser.add_argument("--cache", type=Path, default=REPO / "benchmarks" / "scratch" / "pretrain",
                        help="where the corpus's latency models are kept between invocations (default "
                             "benchmarks/scratch/pretrain, git ignored)")
    parser.add_argument("--out", type=Path, default=None, help="folder for ddpg.npz / ddpg.json "
                        "(default: the package's autoquant/agents/pretrained)")
    args = parser.parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from autoquant.evaluate import HELD_OUT_SEED_OFFSET, record_states
    from autoquant.policy import load_policy
    from autoquant.agents import (OBS_DIM, OBS_VERSION, PRETRAINED_DIR, generated_networks, load_weights, pretrain,
                                  save_weights, surrogate_of, zero_shot)
    from autoquant.targets import HostTarget, MeasureProtocol, target_fingerprint

    def log(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    start = time.perf_counter()
    target = HostTarget(protocol=MeasureProtocol(warmup=10, calls=200))
    fingerprint = target_fingerprint(target)
    corpus = []
    for folder, name, family in REFERENCES:
        path = args.policies / folder / name
        if not path.is_file():
            print(f"error: {path} not found (pass --policies DIR)", file=sys.stderr)
            return 2
        bundle = load_policy(path)
        states = np.asarray(record_states(bundle, n=512, seed=args.seed).states, dtype=np.float32)
        held = np.asarray(record_states(bundle, n=256, seed=args.seed + HELD_OUT_SEED_OFFSET).states, dtype=np.float32)
        corpus.append(surrogate_of(folder, family, bundle, states, held, target, fingerprint=fingerprint,
                                   seed=args.seed, cache=args.cache, log=log))
    folder_name, file_name, family_name, env_id = HELD_OUT
    held_path = args.policies / folder_name / file_name

    def evaluate(model, corpus):  # type: ignore[no-untyped-def]
        """Zero-shot scores on the corpus and on the held-out network (measured here)."""
        scores = [zero_shot(model, entry) for entry in corpus]
        if held_path.is_file():
            bundle = load_policy(held_path, env_id=env_id)
            states = np.asarray(record_states(bundle, n=512, seed=args.seed).states, dtype=np.float32)
            held = np.asarray(record_states(bundle, n=256, seed=args.seed + HELD_OUT_SEED_OFFSET).states,
                              dtype=np.float32)
            entry = surrogate_of(folder_name, family_name, bundle, states, held, target, fingerprint=fingerprint,
                                 seed=args.seed, cache=args.cache, log=log)
            scores.append({**zero_shot(model, entry), "held_out": True})
        for score in scores:
            log(f"zero-shot {score['network']}: mean surrogate reward {score['agent']:.3f} (optimum "
                f"{score['optimum']:.3f}), {score['within_bound']} of {score['bounds']} plans within the bound"
                + (" [held out]" if score.get("held_out") else ""))
        return scores

    for name, family, bundle, states, held in generated_networks(args.generated, args.seed):
        corpus.append(surrogate_of(name, family, bundle, states, held, target, fingerprint=fingerprint,
                                   seed=args.seed, cache=args.cache, log=log))
    folder = args.out or PRETRAINED_DIR
    if args.evaluate:
        import json

        from autoquant.agents import PretrainEnv
        from stable_baselines3 import DDPG

        model = DDPG("MlpPolicy", PretrainEnv(corpus[:1]), device="cpu", policy_kwargs={"net_arch": [64, 64]})
        loaded = load_weights("ddpg", model, obs_version=OBS_VERSION, obs_dim=OBS_DIM, folder=folder)
        if not loaded or not loaded["used"]:
            print(f"error: no usable weights in {folder}: {(loaded or {}).get('why', 'none there')}", file=sys.stderr)
            return 2
        meta_path = folder / "ddpg.json"
        meta = json.loads(meta_path.read_text())
        meta["zero_shot"] = evaluate(model, corpus)
        meta_path.write_text(json.dumps(meta, indent=1) + "\n")
        log(f"scored the weights in {folder}")
        return 0
    log(f"corpus of {len(corpus)} networks ready; pretraining ddpg on {args.episodes} surrogate episodes")
    result = pretrain("ddpg", corpus, episodes=args.episodes, seed=args.seed)
    meta = {"corpus": result.corpus, "episodes": result.episodes, "seed": args.seed,
            "target": fingerprint, "trained_s": round(result.seconds, 1),
            "held_out": "the Nature-CNN family (the Pong DQN)",
            "command": "python tools/pretrain_agent.py" + ("" if argv is None and len(sys.argv) == 1
                                                            else " " + " ".join(sys.argv[1:] if argv is None else argv)),
            "zero_shot": evaluate(result.model, corpus),
            "total_s": round(time.perf_counter() - start, 1)}
    out = save_weights("ddpg", result.model, meta, obs_version=OBS_VERSION, obs_dim=OBS_DIM, folder=folder)
    log(f"wrote {out} ({result.seconds:.0f} s of training, {meta['total_s']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
