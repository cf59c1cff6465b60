"""The benchmark's timing helpers (pixtral/benchmark.py)."""

from pixtral import benchmark


def test_best_of_interleaved_runs_the_functions_in_turn_and_keeps_each_ones_best(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(benchmark.time, "perf_counter", lambda: now[0])
    calls = []
    durations = {"ours": iter([5.0, 3.0, 4.0]), "peer": iter([2.0, 6.0, 1.0])}

    def step(name):
        def run():
            calls.append(name)
            now[0] += next(durations[name])

        return run

    best = benchmark.best_of_interleaved({"ours": step("ours"), "peer": step("peer")}, rounds=3)
    assert calls == ["ours", "peer"] * 3
    assert best == {"ours": 3.0, "peer": 1.0}
