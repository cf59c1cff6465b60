"""The benchmark's timing helpers (pixtral/benchmark.py)."""

from pixtral import benchmark


def test_best_of_interleaved_takes_turns_times_each_second_run_and_keeps_each_ones_best(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(benchmark.time, "perf_counter", lambda: now[0])
    calls = []
    # per round: an untimed warm run (100 s, never the answer), then the timed one
    durations = {
        "ours": iter([100.0, 5.0, 100.0, 3.0, 100.0, 4.0]),
        "peer": iter([100.0, 2.0, 100.0, 6.0, 100.0, 1.0]),
    }

    def step(name):
        def run():
            calls.append(name)
            now[0] += next(durations[name])

        return run

    best = benchmark.best_of_interleaved({"ours": step("ours"), "peer": step("peer")}, rounds=3)
    assert calls == ["ours", "ours", "peer", "peer"] * 3
    assert best == {"ours": 3.0, "peer": 1.0}
