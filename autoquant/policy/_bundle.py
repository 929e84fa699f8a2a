"""PolicyBundle: the fp32 network of a policy plus what is needed to run it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["ActionSpec", "PolicyBundle"]

# How a network's raw output becomes an action.
#   argmax:   Q-values or logits of a Discrete action space.
#   quantile: QR-DQN quantiles, (n_quantiles x n_actions) -> mean over quantiles -> argmax.
#   squash:   a Box action in [-1, 1] by tanh (SAC, TQC, TD3), optionally after clipping
#             the mean (SAC's gSDE), then rescaled to the space's bounds.
#   clip:     a Box action used as is, clipped to the space's bounds (PPO, A2C).
ACTION_KINDS = ("argmax", "quantile", "squash", "clip")


@dataclass(frozen=True)
class ActionSpec:
    """How raw network outputs map to environment actions."""

    kind: str
    n_actions: int | None = None
    action_shape: tuple[int, ...] = ()
    n_quantiles: int | None = None
    clip_mean: float | None = None
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ACTION_KINDS:
            raise ValueError(f"action kind must be one of {ACTION_KINDS}, got {self.kind!r}")

    @property
    def discrete(self) -> bool:
        return self.kind in ("argmax", "quantile")

    def with_bounds(self, low: np.ndarray, high: np.ndarray) -> ActionSpec:
        return dataclasses.replace(
            self,
            low=tuple(float(v) for v in np.ravel(low)),
            high=tuple(float(v) for v in np.ravel(high)),
        )

    def scores(self, outputs: np.ndarray) -> np.ndarray:
        """The per-action values the policy ranks (Q-values for quantile nets)."""
        if self.kind == "quantile":
            assert self.n_actions is not None and self.n_quantiles is not None
            # sb3-contrib's QuantileNetwork lays its output out as (n_quantiles, n_actions)
            return outputs.reshape(len(outputs), self.n_quantiles, self.n_actions).mean(axis=1)
        return outputs

    def actions(self, outputs: np.ndarray) -> np.ndarray:
        """Batch of raw outputs -> batch of actions, as the original policy acts."""
        outputs = np.asarray(outputs, dtype=np.float32)
        if self.discrete:
            return self.scores(outputs).argmax(axis=1)
        mean = outputs.reshape((len(outputs), *self.action_shape))
        if self.kind == "clip":
            if self.low is None:
                return mean
            return np.clip(mean, np.array(self.low).reshape(self.action_shape),
                           np.array(self.high).reshape(self.action_shape)).astype(np.float32)
        if self.clip_mean is not None:
            mean = np.clip(mean, -self.clip_mean, self.clip_mean)
        squashed = np.tanh(mean)
        if self.low is None:
            return squashed
        low = np.array(self.low, dtype=np.float32).reshape(self.action_shape)
        high = np.array(self.high, dtype=np.float32).reshape(self.action_shape)
        return (low + 0.5 * (squashed + 1.0) * (high - low)).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass(eq=False)
class PolicyBundle:
    """A loaded policy: fp32 torch network, the spaces, the env and the algorithm.

    ``net`` maps a float32 batch of prepared observations (``prepare``) to the raw
    output of the action head; ``action.actions`` turns that into actions.
    """

    net: nn.Sequential
    input_shape: tuple[int, ...]
    action: ActionSpec
    algo: str
    source: Path
    obs_scale: float = 1.0
    env_id: str | None = None
    layer_sources: dict[str, str] = field(default_factory=dict)
    observation_space: Any = None
    action_space: Any = None

    def prepare(self, obs: np.ndarray) -> np.ndarray:
        """Environment observations (batch) -> float32 network input."""
        x = np.asarray(obs, dtype=np.float32)
        if self.obs_scale != 1.0:
            x = x * np.float32(self.obs_scale)
        return x.reshape((-1, *self.input_shape))

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Raw fp32 outputs for a prepared batch, through torch."""
        import torch

        with torch.no_grad():
            return self.net(torch.as_tensor(x)).numpy()

    def predict(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic actions for a batch of observations (fp32, torch)."""
        return self.action.actions(self.forward(self.prepare(obs)))

    def example_input(self, batch: int = 1) -> torch.Tensor:
        import torch

        return torch.zeros((batch, *self.input_shape), dtype=torch.float32)
