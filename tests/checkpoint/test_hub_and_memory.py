"""Hub ids resolve through huggingface_hub (pointed at a local cache here); loading keeps memory bounded."""

from __future__ import annotations

import shutil

import pytest
import torch

from pixtral.checkpoint import hub
from pixtral.checkpoint.loader import load_model, save_model
from pixtral.errors import CheckpointError
from tests.factories import TEST_CONFIG, random_model


def fake_hub_cache(cache, repo_id, model_dir, commit="0123456789abcdef0123456789abcdef01234567"):
    """The on-disk layout huggingface_hub uses for a downloaded snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    shutil.copytree(model_dir, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


def test_hub_id_resolves_through_huggingface_hub_offline_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    model_dir = tmp_path / "model"
    save_model(random_model(seed=5), model_dir, "hf")
    cache = tmp_path / "cache"
    snap = fake_hub_cache(cache, "someone/tiny-pixtral", model_dir)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, ckpt = load_model("someone/tiny-pixtral")
    assert ckpt.folder.resolve() == snap.resolve()
    assert ckpt.format == "hf"
    with pytest.raises(CheckpointError, match="offline"):
        load_model("someone/not-downloaded")


def test_download_asks_only_for_checkpoint_files(monkeypatch, tmp_path):
    calls = {}

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, local_files_only=False):
        calls.update(repo_id=repo_id, allow_patterns=allow_patterns, local_files_only=local_files_only)
        return str(tmp_path)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert hub.resolve_model_path("mistralai/Pixtral-12B-2409") == tmp_path
    assert calls["repo_id"] == "mistralai/Pixtral-12B-2409" and not calls["local_files_only"]
    assert "consolidated.safetensors" in calls["allow_patterns"] and "*" not in calls["allow_patterns"]


def test_not_a_folder_nor_a_hub_id(tmp_path):
    with pytest.raises(CheckpointError, match="no such folder"):
        hub.resolve_model_path(str(tmp_path / "missing" / "deeper" / "x"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="expected a model folder"):
        hub.resolve_model_path(tmp_path / "file")


@pytest.mark.slow
def test_peak_rss_while_loading_stays_within_1_3x_the_weights(tmp_path):
    from bench.bench_load_rss import measure

    from pixtral.checkpoint.random_init import create_random_checkpoint
    from pixtral.config import with_text

    config = with_text(
        TEST_CONFIG, dim=512, hidden_dim=2048, n_heads=8, head_dim=64, n_layers=4, vocab_size=32768
    )
    create_random_checkpoint(tmp_path / "m", config, dtype=torch.bfloat16)  # ~100 MB file
    for dtype in ("bfloat16", "float32"):
        r = measure(tmp_path / "m", dtype)
        print(f"\npeak RSS while loading ({dtype} from a bf16 file): {r['ratio']:.3f} x the weights")
        assert r["weights"] > 50e6
        assert r["ratio"] <= 1.3
