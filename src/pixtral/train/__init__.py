"""Training and fine-tuning: data (conversations -> ids, loss mask, images), packing, LoRA, the loop,
checkpoints (torch.distributed.checkpoint) and distributed launch (torchrun: DDP or FSDP2).

    from pixtral.train import TrainConfig, make_config, train
    result = train(make_config("examples/train/config.toml", {"max_steps": 20}))
"""

from pixtral.train.config import TrainConfig, TrainConfigError, make_config
from pixtral.train.lora import LoRAConfig, apply_lora, merge_lora_, merge_lora_checkpoint

__all__ = [
    "LoRAConfig",
    "TrainConfig",
    "TrainConfigError",
    "apply_lora",
    "make_config",
    "merge_lora_",
    "merge_lora_checkpoint",
    "train",
]


def train(*args, **kwargs):  # noqa: ANN002, ANN003 - re-exported lazily (imports torch.distributed)
    from pixtral.train.loop import train as _train

    return _train(*args, **kwargs)
