"""Where training reports: metrics.jsonl (one object per logged step / validation), TensorBoard when the
package is installed, and a tqdm progress bar with loss, lr, tokens/s and ETA. Rank 0 only."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tqdm import tqdm

log = logging.getLogger("pixtral.train")


class MetricsLogger:
    def __init__(
        self,
        out_dir: Path,
        enabled: bool,
        total_steps: int,
        start_step: int,
        progress: bool = True,
        tensorboard: bool = True,
    ) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self._file = None
        self._bar = None
        self._tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        if progress:
            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional: tensorboard may be absent

                self._tb = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                log.info("tensorboard is not installed: metrics go to %s only", self.path)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        assert self._file is not None
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = record.get("step", 0)
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)

    def progress(self, steps: int, postfix: dict[str, str]) -> None:
        if self._bar is not None:
            self._bar.update(steps)
            self._bar.set_postfix(postfix, refresh=False)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            log.info(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()


def read_metrics(path: str | Path) -> dict[int, dict[str, Any]]:
    """The last training record of every step in a metrics.jsonl (a resumed run re-logs some steps)."""
    out: dict[int, dict[str, Any]] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if "loss" in record:
                out[record["step"]] = record
    return out
