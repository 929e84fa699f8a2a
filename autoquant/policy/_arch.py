"""Networks rebuilt from weights: ordered Conv/Linear blocks -> a named nn.Sequential.

The layouts of stable-baselines3 (and sb3-contrib) policies are read from their
state-dict key names; plain ``nn.Sequential`` state dicts from their indices and
tensor shapes. Nothing here unpickles anything.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from autoquant.errors import PolicyLoadError

__all__ = [
    "ACTIVATIONS",
    "Block",
    "build_chain",
    "blocks_from_plain_state_dict",
    "infer_square_input",
    "sb3_layout",
]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
}
# torch class names as SB3 stores them in policy_kwargs -> our names
_TORCH_ACTIVATION_NAMES = {cls.__name__: name for name, cls in ACTIVATIONS.items()}

# SB3's NatureCNN: kernel -> stride, no padding.
_NATURE_CNN = ((8, 4), (4, 2), (3, 1))


@dataclass(frozen=True)
class Block:
    """One Conv2d or Linear layer and the activation that follows it."""

    source: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    activation: str | None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)

    @property
    def is_conv(self) -> bool:
        return self.weight.dim() == 4


def build_chain(blocks: Sequence[Block]) -> tuple[nn.Sequential, dict[str, str]]:
    """A named ``nn.Sequential`` (conv1.., flatten, fc1..) and name -> source key."""
    if not blocks:
        raise PolicyLoadError("no Conv2d or Linear weights found in the policy file")
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    sources: dict[str, str] = {}
    n_conv = n_fc = n_act = 0
    seen_linear = False
    for block in blocks:
        w = _checked(block.weight, _tensor_name(block.source, "weight"))
        b = None if block.bias is None else _checked(block.bias, _tensor_name(block.source, "bias"))
        if b is not None and tuple(b.shape) != (w.shape[0],):
            raise PolicyLoadError(
                f"{_tensor_name(block.source, 'bias')} has shape {tuple(b.shape)}, its weight "
                f"{tuple(w.shape)} needs ({w.shape[0]},): the file is corrupt"
            )
        if block.is_conv:
            if seen_linear:
                raise PolicyLoadError(
                    f"{block.source}: a Conv2d after a Linear layer is not a layout autoquant "
                    "can rebuild from weights; save the model as TorchScript instead"
                )
            n_conv += 1
            name = f"conv{n_conv}"
            layer: nn.Module = nn.Conv2d(
                w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=block.stride,
                padding=block.padding, bias=b is not None,
            )
        elif w.dim() == 2:
            if n_conv and not seen_linear:
                modules["flatten"] = nn.Flatten()
            seen_linear = True
            n_fc += 1
            name = f"fc{n_fc}"
            layer = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        else:
            raise PolicyLoadError(
                f"{block.source}.weight has shape {tuple(w.shape)}: only Conv2d (4-D) and "
                "Linear (2-D) weights are supported"
            )
        with torch.no_grad():
            layer.weight.copy_(w)
            if b is not None:
                layer.bias.copy_(b)
        modules[name] = layer
        sources[name] = block.source
        if block.activation is not None:
            n_act += 1
            modules[f"act{n_act}"] = ACTIVATIONS[block.activation]()
    net = nn.Sequential(modules)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, sources


def _tensor_name(source: str, kind: str) -> str:
    return f"{source}.{kind}" if source else kind


def _checked(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """``tensor`` as float32, refused if empty, not real floating point, or not finite:
    such weights make a policy that plays one constant action."""
    if tensor.layout != torch.strided or not tensor.is_floating_point():
        raise PolicyLoadError(f"tensor {name} holds {tensor.dtype} ({tensor.layout}) values, not dense "
                              "floating-point weights: the file is not a policy autoquant can read")
    if tensor.numel() == 0:
        raise PolicyLoadError(f"tensor {name} is empty (shape {tuple(tensor.shape)}): the file is corrupt")
    values = tensor.detach().to(torch.float32)
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        n_nan = int(torch.isnan(values).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise PolicyLoadError(f"tensor {name} holds {n_nan} NaN and {n_inf} infinite values (of "
                              f"{values.numel()}): the policy is broken; load a checkpoint from before "
                              "training diverged")
    return values


def infer_square_input(blocks: Sequence[Block]) -> tuple[int, ...]:
    """The smallest input shape that the weights chain through (MLP: (in,), CNN: (C, H, H))."""
    first = blocks[0]
    if not first.is_conv:
        return (int(first.weight.shape[1]),)
    convs = [b for b in blocks if b.is_conv]
    linears = [b for b in blocks if not b.is_conv]
    channels = int(first.weight.shape[1])
    if not linears:
        raise PolicyLoadError("a convolutional network without a Linear head is not supported")
    want = int(linears[0].weight.shape[1])
    for size in range(1, 1025):
        h = size
        for b in convs:
            k, s, p = b.weight.shape[2], b.stride[0], b.padding[0]
            h = (h + 2 * p - k) // s + 1
            if h < 1:
                break
        if h >= 1 and h * h * int(convs[-1].weight.shape[0]) == want:
            return (channels, size, size)
    raise PolicyLoadError(
        f"cannot find an input size for which the convolutions flatten to {want} features; "
        "pass --env so the observation shape is known, or check --conv-strides"
    )


# --- plain nn.Sequential state dicts ------------------------------------------------

def blocks_from_plain_state_dict(
    state: Mapping[str, torch.Tensor],
    *,
    activation: str = "relu",
    conv_strides: Sequence[int] | None = None,
) -> list[Block]:
    """Blocks of a plain Conv/Linear stack saved as ``state_dict()``; activation after
    every layer but the last."""
    entries = _collect(state, "")
    if not entries:
        raise PolicyLoadError("the state dict holds no 2-D or 4-D '.weight' tensors")
    convs = [e for e in entries if e[1].dim() == 4]
    strides = _conv_strides(convs, conv_strides)
    blocks = []
    for i, (source, w, b) in enumerate(entries):
        act = activation if i < len(entries) - 1 else None
        if w.dim() == 4:
            s = strides.pop(0)
            blocks.append(Block(source, w, b, act, stride=(s, s)))
        else:
            blocks.append(Block(source, w, b, act))
    return blocks


def _conv_strides(convs: list[tuple[str, torch.Tensor, torch.Tensor | None]],
                  given: Sequence[int] | None) -> list[int]:
    if given is not None:
        if len(given) != len(convs):
            raise PolicyLoadError(
                f"--conv-strides gives {len(given)} strides for {len(convs)} convolutions"
            )
        if not all(isinstance(s, int) and s >= 1 for s in given):
            raise PolicyLoadError(f"--conv-strides must be positive integers, got {list(given)}")
        return [int(s) for s in given]
    kernels = tuple(int(w.shape[-1]) for _, w, _ in convs)
    if not convs:
        return []
    if kernels == tuple(k for k, _ in _NATURE_CNN):
        return [s for _, s in _NATURE_CNN]
    raise PolicyLoadError(
        f"convolution strides are not stored in a state dict and kernels {kernels} are not "
        "the Nature-CNN's (8, 4, 3): pass --conv-strides, e.g. --conv-strides 4,2,1"
    )


def _collect(state: Mapping[str, torch.Tensor], prefix: str
             ) -> list[tuple[str, torch.Tensor, torch.Tensor | None]]:
    """(source, weight, bias) of the Conv/Linear layers in state-dict order.

    With a ``prefix``, only the layers directly under it (``prefix.N.weight`` or
    ``prefix.weight``); without one, every 2-D or 4-D ``*.weight``.
    """
    out = []
    for key, value in state.items():
        if not key.endswith("weight") or not key.startswith(prefix):
            continue
        if prefix and not re.fullmatch(r"(?:\d+\.)?weight", key[len(prefix):]):
            continue
        if not isinstance(value, torch.Tensor) or value.dim() not in (2, 4):
            continue
        source = key[: -len("weight")].rstrip(".")
        bias = state.get(f"{source}.bias" if source else "bias")
        out.append((source, value, bias if isinstance(bias, torch.Tensor) else None))
    return out


# --- stable-baselines3 layouts ------------------------------------------------------


@dataclass(frozen=True)
class SB3Layout:
    algo: str
    blocks: list[Block]
    kind: str  # ActionSpec kind
    clip_mean: float | None = None


def activation_from_kwargs(policy_kwargs: Mapping[str, object], default: str) -> str:
    """SB3 policy_kwargs['activation_fn'] (a class, or its repr when pickled) -> name."""
    value = policy_kwargs.get("activation_fn")
    if value is None:
        return default
    match = re.search(r"(\w+)'?>?\s*$", str(value))
    name = _TORCH_ACTIVATION_NAMES.get(match.group(1)) if match else None
    if name is None:
        raise PolicyLoadError(
            f"activation_fn {value!r} is not one of {sorted(_TORCH_ACTIVATION_NAMES)}"
        )
    return name


def _clip_mean(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < float("inf"):
        raise PolicyLoadError(f"policy_kwargs clip_mean is {value!r}, not a positive number: the file is corrupt")
    return float(value)


def _features(state: Mapping[str, torch.Tensor], prefix: str) -> list[Block]:
    """Blocks of an SB3 features extractor at ``prefix`` (NatureCNN, or Flatten: none)."""
    cnn = _collect(state, f"{prefix}cnn.")
    if not cnn:
        if any(k.startswith(prefix) for k in state):
            raise PolicyLoadError(
                f"features extractor '{prefix[:-1]}' is neither NatureCNN nor Flatten; "
                "custom extractors are not supported"
            )
        return []
    kernels = tuple(int(w.shape[-1]) for _, w, _ in cnn)
    if kernels != tuple(k for k, _ in _NATURE_CNN):
        raise PolicyLoadError(
            f"CNN features extractor with kernels {kernels} is not SB3's NatureCNN (8, 4, 3)"
        )
    blocks = [Block(src, w, b, "relu", stride=(s, s))
              for (src, w, b), (_, s) in zip(cnn, _NATURE_CNN)]
    blocks += [Block(src, w, b, "relu") for src, w, b in _collect(state, f"{prefix}linear.")]
    return blocks


def _mlp(state: Mapping[str, torch.Tensor], prefix: str, activation: str,
         *, last_activation: bool) -> list[Block]:
    entries = _collect(state, prefix)
    return [
        Block(src, w, b, activation if (last_activation or i < len(entries) - 1) else None)
        for i, (src, w, b) in enumerate(entries)
    ]


def _head(state: Mapping[str, torch.Tensor], prefix: str) -> list[Block]:
    entries = _collect(state, prefix)
    if len(entries) != 1:
        raise PolicyLoadError(f"expected one Linear layer at '{prefix}', found {len(entries)}")
    src, w, b = entries[0]
    return [Block(src, w, b, None)]


def sb3_layout(
    state: Mapping[str, torch.Tensor],
    *,
    algo_hint: str | None,
    policy_kwargs: Mapping[str, object],
    use_sde: bool = False,
) -> SB3Layout:
    """Read an SB3 policy state dict: which algorithm family, its inference blocks."""
    keys = list(state)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("q_net."):
        act = activation_from_kwargs(policy_kwargs, "relu")
        blocks = _features(state, "q_net.features_extractor.")
        blocks += _mlp(state, "q_net.q_net.", act, last_activation=False)
        return SB3Layout(algo_hint or "dqn", blocks, "argmax")
    if has("quantile_net."):
        act = activation_from_kwargs(policy_kwargs, "relu")
        blocks = _features(state, "quantile_net.features_extractor.")
        blocks += _mlp(state, "quantile_net.quantile_net.", act, last_activation=False)
        return SB3Layout(algo_hint or "qrdqn", blocks, "quantile")
    if has("action_net."):
        act = activation_from_kwargs(policy_kwargs, "tanh")
        fx = "pi_features_extractor." if has("pi_features_extractor.") else "features_extractor."
        blocks = _features(state, fx)
        blocks += _mlp(state, "mlp_extractor.shared_net.", act, last_activation=True)
        blocks += _mlp(state, "mlp_extractor.policy_net.", act, last_activation=True)
        blocks += _head(state, "action_net.")
        return SB3Layout(algo_hint or "ppo", blocks, "argmax")  # kind fixed by the space
    if has("actor.latent_pi."):
        act = activation_from_kwargs(policy_kwargs, "relu")
        blocks = _features(state, "actor.features_extractor.")
        blocks += _mlp(state, "actor.latent_pi.", act, last_activation=True)
        mu_prefix = "actor.mu.0." if has("actor.mu.0.") else "actor.mu."
        blocks += _head(state, mu_prefix)
        clip = _clip_mean(policy_kwargs.get("clip_mean", 2.0)) if use_sde else None
        return SB3Layout(algo_hint or "sac", blocks, "squash", clip_mean=clip)
    if has("actor.mu."):
        act = activation_from_kwargs(policy_kwargs, "relu")
        blocks = _features(state, "actor.features_extractor.")
        blocks += _mlp(state, "actor.mu.", act, last_activation=False)
        return SB3Layout(algo_hint or "td3", blocks, "squash")
    raise PolicyLoadError(
        "state dict keys match no stable-baselines3 policy layout (q_net, quantile_net, "
        f"action_net, actor.*); first keys: {keys[:3]}"
    )

