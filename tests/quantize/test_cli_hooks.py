"""The command-line hooks for quantization, the 12B preset and GGUF export (docs/quantization.md), end to
end on the tiny preset."""

from __future__ import annotations

import json

import pytest
import torch

from pixtral.cli import main


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny"
    assert main(["init", "--out", str(folder), "--preset", "tiny", "--seed", "2"]) == 0
    return folder


@pytest.mark.parametrize("extra", [["--quantize", "int8"], ["--quantize", "int4", "--group-size", "32"]])
def test_generate_with_quantize(tiny_dir, capsys, extra):
    argv = ["generate", "--model", str(tiny_dir), "--prompt", "Hello", "--max-tokens", "5", "--json", *extra]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["completion_tokens"] == 5


def test_init_12b_streams(tmp_path, monkeypatch):
    import pixtral.checkpoint.streaming_init as streaming

    calls = []
    monkeypatch.setattr(streaming, "write_random_checkpoint_streaming", lambda *a, **k: calls.append((a, k)))
    assert main(["init", "--out", str(tmp_path / "big"), "--preset", "12b"]) == 0
    (folder, config, dtype), kwargs = calls[0]
    assert config.text.dim == 5120 and dtype == torch.bfloat16 and kwargs["fmt"] == "native"


def test_convert_to_gguf(tiny_dir, tmp_path, capsys):
    argv = ["convert", str(tiny_dir), str(tmp_path / "t.gguf"), "--to", "gguf", "--gguf-type", "q8_0"]
    import gguf

    assert main(argv) == 0
    assert (tmp_path / "t.gguf").is_file() and (tmp_path / "mmproj-t.gguf").is_file()
    reader = gguf.GGUFReader(tmp_path / "mmproj-t.gguf")
    assert reader.fields["clip.projector_type"].contents() == "pixtral"
