"""Prometheus metrics in the text exposition format (version 0.0.4), without a client library."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Engine statistics whose names end like this only ever grow: exported as counters (name + "_total").
_COUNTER_SUFFIXES = ("hits", "misses", "finished", "steps", "reused")
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str] = ()):
        self.name, self.help, self.labelnames = name, help_text, tuple(labelnames)
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str] = ()):
        super().__init__(name, help_text, labelnames)
        self._values: dict[tuple[str, ...], float] = {} if self.labelnames else {(): 0.0}

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.labelnames, k)} {_num(v)}" for k, v in items]


class Gauge(_Metric):
    kind = "gauge"

    def __init__(self, name: str, help_text: str, fn: Callable[[], float] | None = None):
        super().__init__(name, help_text)
        self._value = 0.0
        self._fn = fn

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self._value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.inc(-amount)

    def set(self, value: float) -> None:
        with self._lock:
            self._value = value

    def read_from(self, fn: Callable[[], float]) -> None:
        """The gauge's value is `fn()` from now on (a figure another object owns, read when rendered)."""
        self._fn = fn

    def value(self) -> float:
        return float(self._fn()) if self._fn else self._value

    def render(self) -> list[str]:
        return self.header() + [f"{self.name} {_num(self.value())}"]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Iterable[float]):
        super().__init__(name, help_text)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._counts = [0] * len(self.buckets)
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        with self._lock:
            self._sum += value
            self._count += 1
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self._counts[i] += 1
                    break

    @property
    def count(self) -> int:
        return self._count

    def render(self) -> list[str]:
        with self._lock:
            counts, total, n = list(self._counts), self._sum, self._count
        lines, cumulative = self.header(), 0
        for bound, c in zip(self.buckets, counts, strict=True):
            cumulative += c
            lines.append(f'{self.name}_bucket{{le="{_num(bound)}"}} {cumulative}')
        lines += [f"{self.name}_sum {_num(total)}", f"{self.name}_count {n}"]
        return lines


class ServerMetrics:
    """The server's metrics; `render()` is the body of GET /metrics."""

    def __init__(self) -> None:
        p = "pixtral_"
        self.requests = Counter(
            p + "requests_total", "HTTP requests by path and status code.", ("path", "status")
        )
        self.rejected = Counter(
            p + "rejected_requests_total", "Chat requests refused, by reason.", ("reason",)
        )
        self.prompt_tokens = Counter(p + "prompt_tokens_total", "Prompt tokens processed.")
        self.generation_tokens = Counter(p + "generation_tokens_total", "Tokens generated.")
        self.images = Counter(p + "images_total", "Images accepted in chat requests.")
        self.finished = Counter(p + "generations_total", "Generations ended, by finish reason.", ("reason",))
        self.cancelled = Counter(p + "cancelled_generations_total", "Generations cancelled (client gone).")
        self.timeouts = Counter(p + "timed_out_requests_total", "Requests that ran past the request timeout.")
        self.running = Gauge(p + "running_generations", "Generations running in the engine now.")
        self.queued = Gauge(p + "queued_requests", "Admitted requests waiting for the engine.")
        self.draining = Gauge(p + "draining", "1 while the server drains before exiting.")
        self.latency = Histogram(
            p + "request_latency_seconds", "Chat request latency, arrival to last token.", LATENCY_BUCKETS
        )
        self.queue_time = Histogram(
            p + "queue_time_seconds", "Time admitted requests wait for the engine.", LATENCY_BUCKETS
        )
        self.ttft = Histogram(
            p + "time_to_first_token_seconds", "Arrival to the first generated token.", LATENCY_BUCKETS
        )
        self.prompt_len = Histogram(p + "request_prompt_tokens", "Prompt length per request.", TOKEN_BUCKETS)
        self.output_len = Histogram(
            p + "request_generation_tokens", "Generated tokens per request.", TOKEN_BUCKETS
        )
        self.engine_stats: Callable[[], dict[str, float]] | None = None

    def _all(self) -> list[_Metric]:
        return [
            self.requests,
            self.rejected,
            self.prompt_tokens,
            self.generation_tokens,
            self.images,
            self.finished,
            self.cancelled,
            self.timeouts,
            self.running,
            self.queued,
            self.draining,
            self.latency,
            self.queue_time,
            self.ttft,
            self.prompt_len,
            self.output_len,
        ]

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._all():
            lines += metric.render()
        if self.engine_stats is not None:
            # Engine-side figures (cache hits, KV blocks...) when the engine exposes `stats() -> dict`.
            try:
                stats = self.engine_stats() or {}
            except Exception:  # a metrics scrape must never fail because of the engine
                stats = {}
            for key, value in sorted(stats.items()):
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    name = "pixtral_engine_" + "".join(c if c.isalnum() else "_" for c in str(key))
                    if str(key).endswith(_COUNTER_SUFFIXES):
                        lines += [f"# TYPE {name}_total counter", f"{name}_total {_num(value)}"]
                    else:
                        lines += [f"# TYPE {name} gauge", f"{name} {_num(value)}"]
        return "\n".join(lines) + "\n"
