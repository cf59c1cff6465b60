"""Progress bars of the slow checkpoint operations: every operation reports all of its bytes, the bar reaches
stderr only on a terminal (after a delay), and PIXTRAL_NO_PROGRESS turns it off."""

from __future__ import annotations

import io
import time

import pytest
import torch

from pixtral.checkpoint import progress
from pixtral.checkpoint.loader import convert, load_model, open_checkpoint, save_model
from pixtral.checkpoint.progress import ByteProgress, progress_enabled
from pixtral.checkpoint.random_init import create_random_checkpoint
from pixtral.checkpoint.streaming_init import write_random_checkpoint_streaming
from tests.factories import TEST_CONFIG, random_model


@pytest.fixture
def bars(monkeypatch) -> list[tuple[str, int, int | None]]:
    """(description, bytes advanced, total) of every bar, recorded when it closes."""
    closed = []
    exit_ = ByteProgress.__exit__

    def record(self, *exc):
        closed.append((self.description, self.completed, self.total))
        return exit_(self, *exc)

    monkeypatch.setattr(ByteProgress, "__exit__", record)
    return closed


@pytest.fixture(scope="module")
def native_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny"
    save_model(random_model(seed=3), folder, "native")
    return folder


def test_load_reports_every_byte(native_dir, bars):
    load_model(native_dir)
    nbytes = open_checkpoint(native_dir).nbytes
    assert bars == [("loading tiny", nbytes, nbytes)]


def test_quantize_while_loading_reports_every_byte(native_dir, bars):
    from pixtral.engine.quantize import load_quantized

    load_quantized(native_dir, "int8")
    nbytes = open_checkpoint(native_dir).nbytes
    assert bars == [("loading tiny, quantizing to int8", nbytes, nbytes)]


@pytest.mark.parametrize("fmt", ["native", "hf"])
def test_convert_reports_reading_and_writing(native_dir, tmp_path, bars, fmt):
    convert(native_dir, tmp_path / "out", fmt)
    nbytes = open_checkpoint(native_dir).nbytes
    assert bars == [("reading tiny", nbytes, nbytes), ("writing weights", nbytes, nbytes)]


def test_init_reports_each_step(tmp_path, bars):
    create_random_checkpoint(tmp_path / "r", TEST_CONFIG, dtype=torch.bfloat16)
    nbytes = open_checkpoint(tmp_path / "r").nbytes
    assert bars == [
        ("building the model", 0, None),
        ("drawing random weights", 0, None),
        ("writing weights", nbytes, nbytes),
    ]


def test_streamed_init_reports_every_byte(tmp_path, bars):
    write_random_checkpoint_streaming(tmp_path / "s", TEST_CONFIG)
    nbytes = open_checkpoint(tmp_path / "s").nbytes
    assert bars == [("writing weights", nbytes, nbytes)]


def test_bars_show_on_a_terminal_unless_turned_off(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    monkeypatch.delenv(progress.NO_PROGRESS_ENV, raising=False)
    assert progress_enabled()
    monkeypatch.setenv(progress.NO_PROGRESS_ENV, "1")
    assert not progress_enabled()
    monkeypatch.setattr("sys.stderr", io.StringIO())
    monkeypatch.delenv(progress.NO_PROGRESS_ENV)
    assert not progress_enabled()  # piped or redirected: no bar


def test_a_bar_reaches_stderr_only_after_its_delay(capsys):
    with ByteProgress("quick", 10, delay=5, enabled=True) as bar:
        bar.advance(10)
    assert capsys.readouterr().err == ""
    with ByteProgress("slow", 10, delay=0, enabled=True) as bar:
        bar.advance(10)
        time.sleep(0.2)
    assert "slow" in capsys.readouterr().err


def test_gguf_export_reports_every_byte(native_dir, tmp_path, bars):
    pytest.importorskip("gguf")
    from pixtral.checkpoint.gguf_export import export_gguf

    result = export_gguf(native_dir, tmp_path / "m.gguf", "f16")
    assert [d for d, _, _ in bars] == ["writing m.gguf", "writing mmproj-m.gguf"]
    assert all(done == total > 0 for _, done, total in bars)
    assert result.model_path.stat().st_size > bars[0][1]  # the tensor data plus the header
