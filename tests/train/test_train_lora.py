"""LoRA: only the adapters train; merging (in memory, from a state dict, from an adapter folder) gives the
adapted model's outputs."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from pixtral.checkpoint.loader import load_model, save_model
from pixtral.cli import main as cli_main
from pixtral.train.loop import LossModule, build_model, train
from pixtral.train.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    load_adapter_,
    merge_lora_,
    merge_lora_checkpoint,
    target_names,
)
from tests.factories import prompt_with_images, random_model
from tests.train.train_helpers import colour_dataset, small_config


def test_targets_cover_the_intended_layers_and_keep_native_names():
    model = random_model()
    names_before = set(model.state_dict())
    decoder = target_names(model, ["decoder"])
    assert len(decoder) == 2 * 7 and all(n.startswith("layers.") for n in decoder)
    assert len(target_names(model, ["decoder", "encoder", "adapter"])) == 2 * 7 + 2 * 7 + 2
    chosen = target_names(model, ["decoder", "encoder"])
    apply_lora(model, LoRAConfig(rank=4, targets=["decoder", "encoder"]))
    names_after = set(model.state_dict())
    assert names_before <= names_after  # base tensors keep their names
    added = {f"{m}.lora_{x}" for m in chosen for x in "AB"}
    assert names_after - names_before == added
    assert {n for n, p in model.named_parameters() if p.requires_grad} == added


def test_only_adapter_parameters_change_and_merged_outputs_equal_adapted_outputs():
    model = random_model().train()
    base = {n: t.clone() for n, t in model.state_dict().items()}
    apply_lora(model, LoRAConfig(rank=4, alpha=8, targets=["decoder", "encoder", "adapter"]), seed=1)
    ids, images = prompt_with_images([(2, 3), (1, 2)], seed=3)
    labels = torch.roll(ids, -1, 1)
    with torch.no_grad():
        assert torch.equal(model(ids, images), random_model()(ids, images))  # B = 0: no change at start
    root = LossModule(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        root(ids, labels, images).backward()
        opt.step()
        opt.zero_grad()
    state = model.state_dict()
    for name, tensor in base.items():
        assert torch.equal(state[name], tensor), f"{name} changed"
    assert all(state[n].abs().sum() > 0 for n in state if n.endswith("lora_B"))
    model.eval()
    with torch.no_grad():
        adapted = model(ids, images)
        merge_lora_(model)
        merged = model(ids, images)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == set(base)
    assert (adapted - merged).abs().max() <= 1e-5
    assert (adapted - random_model()(ids, images)).abs().max() > 1e-3  # the adapters did something


def test_lora_training_run_exports_adapter_and_merged_model(tmp_path):
    data = colour_dataset(tmp_path, n=2)
    cfg = small_config(
        tmp_path,
        data,
        mode="lora",
        lora_rank=4,
        lora_targets=["decoder", "encoder"],
        max_steps=2,
        lr=1e-2,
        batch_size=2,
        micro_batch_size=2,
        export_formats=["native", "hf"],
    )
    result = train(cfg)
    final = result.export_dir
    # The checkpoint holds only the adapters (frozen base weights come back from the base model).
    ckpt = sorted((tmp_path / "run" / "checkpoints").glob("step_*"))[-1]
    assert sum(f.stat().st_size for f in ckpt.glob("*.distcp")) < 2_000_000
    # base + adapter folder, merged by merge_lora_checkpoint, equals the exported merged model
    base_model, _, _, _ = build_model(cfg)
    save_model(base_model, tmp_path / "base")
    argv = ["convert", str(tmp_path / "base"), str(tmp_path / "merged"), "--to", "native"]
    assert cli_main([*argv, "--merge-lora", str(final / "adapter")]) == 0
    exported, _ = load_model(final)
    hf, _ = load_model(final / "hf")
    merged, _ = load_model(tmp_path / "merged")
    adapted, _ = load_model(tmp_path / "base")
    load_adapter_(adapted, final / "adapter")
    assert (
        load_file(str(final / "adapter" / "adapter.safetensors"))["layers.0.attention.wq.lora_B"].abs().sum()
        > 0
    )
    ids = torch.tensor([[1, 3, 5847, 13089, 1063, 4, 1065]])
    with torch.no_grad():
        want = adapted.eval()(ids)
        for other in (exported, hf, merged):
            assert (other(ids) - want).abs().max() <= 1e-5
        assert (base_model.eval()(ids) - want).abs().max() > 1e-4
    with pytest.raises(Exception, match="not empty"):
        merge_lora_checkpoint(tmp_path / "base", final / "adapter", tmp_path / "merged")
