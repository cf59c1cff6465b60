"""LoRA: low-rank adapters on the model's nn.Linear layers, merge, and adapter files.

Our own small module rather than `peft`: a LoRALinear *is* an nn.Linear (subclass) that keeps the base
`weight` / `bias` under their original names, so every native tensor name is unchanged (the checkpoint
code, FSDP wrapping and `torch.distributed.checkpoint` see the same model), and the adapters add two
parameters per layer, `<layer>.lora_A` (r, in) and `<layer>.lora_B` (out, r):

    y = x W^T + b + scale * (dropout(x) A^T) B^T,   scale = alpha / r,   B = 0 at the start.

Merging writes W + scale * B A into the base weight; `merge_lora_checkpoint` does it for a saved adapter
folder (`adapter_config.json` + `adapter.safetensors`), for `pixtral convert --merge-lora`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from pixtral.checkpoint.formats import copy_tokenizer_files
from pixtral.checkpoint.loader import DTYPES, load_model, save_model
from pixtral.errors import CheckpointError

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter.safetensors"

# Which nn.Linear layers each target covers (native names, regex fullmatch).
TARGET_PATTERNS = {
    "decoder": r"layers\.\d+\.(attention\.w[qkvo]|feed_forward\.w[123])",
    "encoder": r"vision_encoder\.transformer\.layers\.\d+\.(attention\.w[qkvo]|feed_forward\.w[123])",
    "adapter": r"vision_language_adapter\.w_(in|out)",
}


@dataclass
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["decoder"])
    base_model: str = ""  # what the adapters were trained on (informative)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nn.Linear):
    """An nn.Linear with a low-rank update; base weight and bias keep their names."""

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.rank, self.scale = rank, alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        w = base.weight
        a = torch.empty(rank, self.in_features, dtype=torch.float32)
        bound = 1.0 / math.sqrt(self.in_features)  # kaiming_uniform(a=sqrt(5)) as nn.Linear, seeded
        a.uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(a.to(device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=w.device, dtype=w.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.linear(x, self.weight, self.bias)
        update = F.linear(
            F.linear(self.dropout(x), self.lora_A), self.lora_B
        )  # (.., in) -> (.., r) -> (.., out)
        return base + update * self.scale

    def delta(self) -> torch.Tensor:
        """scale * B A, the merged weight update (out, in)."""
        return (self.lora_B.float() @ self.lora_A.float()) * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scale={self.scale:g}"


def target_names(model: nn.Module, targets: list[str]) -> list[str]:
    unknown = [t for t in targets if t not in TARGET_PATTERNS]
    if unknown:
        raise ValueError(f"unknown LoRA target(s) {unknown}; use {', '.join(TARGET_PATTERNS)}")
    pattern = re.compile("|".join(f"(?:{TARGET_PATTERNS[t]})" for t in targets))
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not isinstance(module, LoRALinear) and pattern.fullmatch(name)
    ]


def apply_lora(model: nn.Module, config: LoRAConfig, seed: int = 0) -> list[str]:
    """Replace the targeted nn.Linear layers by LoRALinear in place; freeze everything but the adapters.
    Returns the names of the adapted layers."""
    names = target_names(model, config.targets)
    if not names:
        raise ValueError(f"no nn.Linear layer matches the LoRA targets {config.targets}")
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(
            parent,
            child,
            LoRALinear(getattr(parent, child), config.rank, config.alpha, config.dropout, generator),
        )
    return names


def is_lora_name(name: str) -> bool:
    return name.endswith((".lora_A", ".lora_B"))


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if is_lora_name(n)}


@torch.no_grad()
def merge_lora_(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and turn the LoRALinear layers back into plain nn.Linear."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            linear = nn.Linear(
                module.in_features, module.out_features, bias=module.bias is not None, device="meta"
            )
            weight = module.weight.detach()
            linear.weight = nn.Parameter(
                (weight.float() + module.delta()).to(weight.dtype), requires_grad=module.weight.requires_grad
            )
            if module.bias is not None:
                linear.bias = module.bias
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, linear)
    return model


def merge_lora_state_dict(state: Mapping[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A state dict with `<layer>.lora_A/B` entries -> plain native tensors (W + scale * B A)."""
    out = {n: t for n, t in state.items() if not is_lora_name(n)}
    for name in state:
        if name.endswith(".lora_A"):
            layer = name[: -len(".lora_A")]
            a, b = state[name].float(), state[layer + ".lora_B"].float()
            w = out[layer + ".weight"]
            out[layer + ".weight"] = (w.float() + (b @ a) * scale).to(w.dtype)
    return out


def save_adapter(
    model: nn.Module, folder: str | Path, config: LoRAConfig, state: Mapping[str, torch.Tensor] | None = None
) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        n: t.detach().contiguous().cpu()
        for n, t in (state or lora_state_dict(model)).items()
        if is_lora_name(n)
    }
    save_file(tensors, str(folder / ADAPTER_WEIGHTS))
    (folder / ADAPTER_CONFIG).write_text(json.dumps(asdict(config), indent=2) + "\n")


def load_adapter_config(folder: str | Path) -> LoRAConfig:
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        raise CheckpointError(
            f"{folder}: no {ADAPTER_CONFIG}; is this a LoRA adapter folder from pixtral train?"
        )
    try:
        raw = json.loads(path.read_text())
        return LoRAConfig(**raw)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: not a valid adapter config ({e})") from e


def load_adapter_(model: nn.Module, folder: str | Path) -> LoRAConfig:
    """apply_lora + the saved adapter weights (strict: every adapter tensor must match a layer)."""
    config = load_adapter_config(folder)
    path = Path(folder) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {ADAPTER_WEIGHTS}")
    apply_lora(model, config)
    tensors = load_file(str(path))
    own = dict(model.named_parameters())
    expected = {n for n in own if is_lora_name(n)}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise CheckpointError(
            f"{path}: adapter tensors do not match the model (missing {missing[:3]}, unexpected {extra[:3]}); "
            "was it trained on another base model?"
        )
    with torch.no_grad():
        for name, t in tensors.items():
            if own[name].shape != t.shape:
                raise CheckpointError(
                    f"{path}: {name} has shape {list(t.shape)}, expected {list(own[name].shape)}"
                )
            own[name].copy_(t)
    return config


def merge_lora_checkpoint(
    base: str | Path, adapter: str | Path, out: str | Path, fmt: str = "native", dtype: str | None = None
) -> Path:
    """Load `base`, apply the adapters of folder `adapter`, merge them (in float32), and save a plain
    checkpoint to `out` in the base's stored dtype unless `dtype` is given (`pixtral convert --merge-lora`)."""

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out}: destination exists and is not empty")
    model, ckpt = load_model(base, "float32")
    load_adapter_(model, adapter)
    merge_lora_(model)
    model.to(DTYPES[dtype] if dtype else ckpt.stored_dtype)
    save_model(model, out, fmt)
    copy_tokenizer_files(ckpt.folder, out)
    return out
