"""The training configuration: one flat dataclass, read from a JSON / TOML / YAML file and overridden by
command-line flags (every field is a flag: `--lr 1e-4`, `--pack`, `--no-pack`, `--freeze vision_encoder`).

Precedence: the defaults below < the config file < flags. The resolved config is written next to every
checkpoint, and `--resume` refuses a config whose data-shaping fields differ from the checkpoint's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pixtral.errors import PixtralError

FREEZABLE = ("vision_encoder", "adapter", "decoder")
LORA_TARGETS = ("decoder", "encoder", "adapter")
# The values a field may take (each item of a list field); checked by validated(), listed by --help.
CHOICES: dict[str, tuple[str, ...]] = {
    "mode": ("full", "lora"),
    "freeze": FREEZABLE,
    "lora_targets": LORA_TARGETS,
    "overflow": ("truncate", "drop"),
    "precision": ("auto", "fp32", "bf16"),
    "distributed": ("ddp", "fsdp"),
    "export_formats": ("native", "hf"),
    "export_dtype": ("", "float32", "bfloat16", "float16"),
}


DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")  # as every other command's --device (engine/device.py)


class TrainConfigError(PixtralError):
    """A training configuration that cannot run: the message names the field and what to change."""


@dataclass
class TrainConfig:
    # ---- what to train -----------------------------------------------------------------------------
    model: str = "preset:tiny"  # a model folder / hub id, or preset:NAME (random weights, see init_seed)
    init_seed: int = 0  # seed of the random weights for preset:NAME
    init_std: float = 0.02
    mode: str = "full"  # "full" | "lora"
    freeze: list[str] = field(default_factory=list)  # full mode: any of vision_encoder, adapter, decoder
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["decoder"])  # decoder, encoder, adapter
    # ---- data ----------------------------------------------------------------------------------------
    data: str = ""  # JSONL file of {"messages": [...]} or hf:NAME[:SPLIT] / a saved HF dataset folder
    val_data: str = ""
    seq_len: int = 2048  # tokens per row (the model input)
    overflow: str = "truncate"  # samples longer than seq_len: "truncate" (at a text boundary) or "drop"
    pack: bool = False  # several samples per row, attention kept within each sample
    # ---- optimisation --------------------------------------------------------------------------------
    max_steps: int = 100
    batch_size: int = 8  # rows per optimizer step, over all ranks (the global batch)
    micro_batch_size: int = 1  # rows per forward pass on one rank; accumulation makes up the rest
    lr: float = 1e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 10
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    seed: int = 0  # data order (and LoRA init)
    # ---- numerics and memory ---------------------------------------------------------------------------
    precision: str = "auto"  # "fp32" | "bf16" (autocast) | "auto" (bf16 where the GPU supports it, else fp32)
    activation_checkpointing: bool = False
    deterministic: bool = False  # torch.use_deterministic_algorithms(True)
    threads: int = 0  # torch intra-op threads per rank; 0: torch's default
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N" (one process; under torchrun: cuda:LOCAL_RANK)
    distributed: str = "ddp"  # with more than one rank: "ddp" or "fsdp" (FSDP2 fully_shard)
    # ---- output ------------------------------------------------------------------------------------------
    out_dir: str = "runs/train"
    save_every: int = 0  # steps between checkpoints; 0: only at the end and on SIGTERM / SIGINT
    keep_last: int = 2
    export_formats: list[str] = field(default_factory=lambda: ["native"])  # "native", "hf"
    export_dtype: str = ""  # "float32" | "bfloat16" | "": the base checkpoint's dtype (float32 for presets)
    log_every: int = 1
    val_every: int = 0  # steps between validation losses; 0: never (val_data still checked at the end)
    eval_every: int = 0  # steps between eval-hook runs; 0: never
    eval_task: str = ""  # an evals task name run on the current weights by the eval hook
    eval_limit: int = 20
    eval_data_dir: str = ""  # local copy of the eval task's data (evals --data-dir), if any
    progress: bool = True
    tensorboard: bool = True  # when the tensorboard package is installed

    # ---- derived and checks ------------------------------------------------------------------------------

    def validated(self) -> TrainConfig:
        def bad(name: str, why: str) -> TrainConfigError:
            return TrainConfigError(f"train config: {name}={getattr(self, name)!r} {why}")

        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            for item in value if isinstance(value, list) else [value]:
                if item not in allowed:
                    raise TrainConfigError(
                        f"train config: {name}: {item!r} is not one of {', '.join(map(repr, allowed))}"
                    )
        if not DEVICE.fullmatch(self.device):
            raise bad("device", "is not one of auto, cpu, cuda or cuda:N")
        if self.mode == "full" and set(self.freeze) >= set(FREEZABLE):
            raise bad("freeze", "freezes everything: leave one part trainable or use mode='lora'")
        if self.mode == "lora" and (self.lora_rank <= 0 or not self.lora_targets):
            raise bad("lora_rank", "must be positive, with at least one of lora_targets")
        for name in ("seq_len", "max_steps", "batch_size", "micro_batch_size", "log_every", "keep_last"):
            if getattr(self, name) <= 0:
                raise bad(name, "must be positive")
        for name in ("save_every", "val_every", "eval_every", "warmup_steps", "grad_clip", "weight_decay"):
            if getattr(self, name) < 0:
                raise bad(name, "must not be negative")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise TrainConfigError("train config: lr must be positive and min_lr_ratio within [0, 1]")
        if not self.data:
            raise TrainConfigError("train config: no training data: set data (a JSONL file or hf:NAME)")
        if self.eval_every and not self.eval_task:
            raise bad("eval_every", "needs eval_task (an evals task name)")
        return self

    def accumulation_steps(self, world_size: int) -> int:
        per_step = self.micro_batch_size * world_size
        if self.batch_size % per_step:
            raise TrainConfigError(
                f"train config: batch_size={self.batch_size} is not a multiple of micro_batch_size "
                f"({self.micro_batch_size}) x ranks ({world_size}); change one of them"
            )
        return self.batch_size // per_step

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # Fields that decide which rows a step sees: a resumed run must agree on them.
    DATA_FIELDS = ("data", "seq_len", "overflow", "pack", "batch_size", "seed", "model", "mode")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON, TOML or YAML file into a dict of TrainConfig fields (unknown keys are an error)."""
    path = Path(path)
    if not path.is_file():
        raise TrainConfigError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            values = json.loads(text)
        elif path.suffix == ".toml":
            if sys.version_info >= (3, 11):  # imported here: a test reads TOML as Python 3.10 would
                import tomllib
            else:  # a dependency on Python 3.10
                import tomli as tomllib

            values = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            try:
                import yaml  # optional: only YAML configs need PyYAML
            except ImportError as e:
                raise TrainConfigError(f"{path}: reading YAML needs PyYAML (pip install pyyaml)") from e
            values = yaml.safe_load(text)
        else:
            raise TrainConfigError(f"{path}: use a .json, .toml or .yaml config file")
    except (ValueError, ImportError) as e:  # json, toml and yaml errors are ValueErrors or subclasses
        raise TrainConfigError(f"{path}: cannot parse: {e}") from e
    if not isinstance(values, dict):
        raise TrainConfigError(f"{path}: expected a mapping of config fields at the top level")
    values = dict(values.get("train", values))  # allow a [train] table
    _check_keys(values, str(path))
    # Paths inside the file are relative to the file.
    for key in ("data", "val_data", "out_dir", "model"):
        value = values.get(key)
        if isinstance(value, str) and value and not _is_special(value) and not Path(value).is_absolute():
            candidate = path.parent / value
            if key == "out_dir" or candidate.exists():
                values[key] = os.path.normpath(candidate)
    return values


def _is_special(value: str) -> bool:
    return value.startswith(("preset:", "hf:")) or "://" in value


def _check_keys(values: dict[str, Any], source: str) -> None:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TrainConfigError(
            f"{source}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )


def make_config(file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults < file < overrides, validated."""
    values: dict[str, Any] = load_config_file(file) if file else {}
    if overrides:
        _check_keys(overrides, "overrides")
        values.update(overrides)
    cfg = TrainConfig()
    for f in fields(TrainConfig):
        if f.name in values:
            setattr(cfg, f.name, _coerce(f.name, values[f.name], _default(f)))
    return cfg.validated()


def _default(f: Any) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def _coerce(name: str, value: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(default, list):
            if isinstance(value, str):
                return [v for v in value.split(",") if v]
            return [str(v) for v in value]
        if isinstance(default, int):
            if isinstance(value, float) and value != int(value):
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError) as e:
        raise TrainConfigError(
            f"train config: {name}={value!r} is not a valid {type(default).__name__}"
        ) from e


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; only flags given on the command line override the file."""
    parser.add_argument("--config", help="a JSON / TOML / YAML file of training fields")
    group = parser.add_argument_group("training fields (override the config file)")
    for f in fields(TrainConfig):
        default = _default(f)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            group.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS
            )
        else:
            metavar = "A,B" if isinstance(default, list) else type(default).__name__.upper()
            help_text = ("comma-separated; " if isinstance(default, list) else "") + f"default: {default!r}"
            if f.name in CHOICES:
                metavar = "{" + ",".join(c for c in CHOICES[f.name] if c) + "}"
            if f.name == "device":
                metavar = "{auto,cpu,cuda,cuda:N}"
            group.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, metavar=metavar, help=help_text)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names}
