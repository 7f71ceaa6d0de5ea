"""The one timing function behind `mobilec demo` and `bench --vs`: engines alternate in blocks after
a warm-up, each engine's latency is the median of its block medians; checked on a scripted clock."""

import pytest
from pytest import approx

from mobilec.runtime import timing


class Clock:
    """A fake perf_counter: each engine call advances it by what the script says."""

    def __init__(self):
        self.now, self.log = 0.0, []

    def __call__(self):
        return self.now

    def engine(self, name, ms):
        def call():
            self.log.append(name)
            self.now += ms(len(self.log)) / 1e3 if callable(ms) else ms / 1e3
        return call


@pytest.mark.structure
def test_engines_alternate_in_blocks_after_the_warmup(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    engines = {"a": clock.engine("a", 2.0), "b": clock.engine("b", 3.0)}
    out = timing.interleaved(engines, warmup=2, rounds=4, block=3)
    warm, timed = clock.log[:4], clock.log[4:]
    assert sorted(warm) == ["a", "a", "b", "b"]
    blocks = [timed[i:i + 3] for i in range(0, len(timed), 3)]
    assert all(len(set(b)) == 1 for b in blocks)  # blocks of 3 calls of one engine
    assert all(sorted(b[0] for b in blocks[i:i + 2]) == ["a", "b"] for i in range(0, 8, 2))  # each once a round
    assert out["a"] == {"median_ms": approx(2.0), "quiet_ms": approx(2.0), "min_ms": approx(2.0),
                        "max_ms": approx(2.0), "rounds": 4, "block": 3, "calls": 12}
    assert out["b"]["median_ms"] == approx(3.0)


@pytest.mark.structure
def test_no_engine_always_runs_after_the_same_one(monkeypatch):
    """With three or more engines the order changes each round, so each engine follows every other
    one (a rotation kept the cyclic order: one engine always paid for the same neighbour's pool)."""
    clock, idle = Clock(), []
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    monkeypatch.setattr(timing.time, "sleep", idle.append)
    names = ["mobilec fp32", "mobilec int8", "onnxruntime fp32", "onnxruntime int8"]
    timing.interleaved({n: clock.engine(n, 1.0) for n in names}, warmup=0, rounds=20, block=2)
    assert idle == [timing.SETTLE_S] * 80  # each block after the last engine's pool went quiet
    starts = clock.log[::2]
    after = {(a, b) for a, b in zip(starts, starts[1:]) if a != b}
    assert after == {(a, b) for a in names for b in names if a != b}
    assert all(sorted(starts[i:i + 4]) == sorted(names) for i in range(0, 80, 4))  # each engine once a round


@pytest.mark.structure
def test_a_pool_still_spinning_from_the_other_engine_does_not_set_the_median(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)

    def slow_after_switch(i):  # the first call after the other engine pays 10 ms for its spinning pool
        return 12.0 if i > 1 and clock.log[-2] != clock.log[-1] else 2.0

    engines = {"mobilec": clock.engine("mobilec", slow_after_switch), "onnxruntime": clock.engine("onnxruntime", 1.0)}
    out = timing.interleaved(engines, warmup=0, rounds=6, block=5)
    assert out["mobilec"]["median_ms"] == approx(2.0) and out["mobilec"]["max_ms"] == approx(12.0)
    assert out["mobilec"]["min_ms"] == approx(2.0) and out["mobilec"]["calls"] == 30


@pytest.mark.structure
def test_median_of_block_medians(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    script = [5, 1, 1, 9, 9, 2, 3, 3, 3]  # blocks of 3: medians 1, 9, 3 -> 3
    out = timing.interleaved({"x": clock.engine("x", lambda i: script[i - 1])}, warmup=0, rounds=3, block=3)
    assert (out["x"]["median_ms"], out["x"]["min_ms"], out["x"]["max_ms"]) == approx((3.0, 1.0, 9.0))
    assert out["x"]["quiet_ms"] == approx(1.4)  # the 10th percentile of 1, 3, 9


@pytest.mark.structure
def test_rounds_go_on_for_the_time_asked(monkeypatch):
    """A busy spell of a shared machine lasts seconds: ``min_seconds`` spreads the rounds over
    that long, so the quiet time has quiet seconds to come from."""
    clock, seconds = Clock(), iter(range(1000))
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    monkeypatch.setattr(timing.time, "monotonic", lambda: next(seconds))  # a second per look at the clock
    script = lambda i: 2.0 if i > 20 else 4.0  # busy for the first 4 rounds of 5 calls
    out = timing.interleaved({"x": clock.engine("x", script)}, warmup=0, rounds=2, block=5, min_seconds=9)
    assert out["x"]["rounds"] == 10 and out["x"]["calls"] == 50  # the clock read 9 s after round 10
    assert out["x"]["median_ms"] == approx(2.0) and out["x"]["quiet_ms"] == approx(2.0)
    out = timing.interleaved({"x": clock.engine("x", 1.0)}, warmup=0, rounds=3, block=1)
    assert out["x"]["rounds"] == 3  # no time asked: the rounds asked


@pytest.mark.structure
def test_blocks_and_bad_arguments():
    assert timing.blocks_for(50) == (10, 5)
    assert timing.blocks_for(3) == (3, 1)
    assert timing.blocks_for(101) == (21, 5)
    with pytest.raises(ValueError, match="repeat=0: time at least one call"):
        timing.blocks_for(0)
    with pytest.raises(ValueError, match="need warmup >= 0"):
        timing.interleaved({"x": lambda: None}, warmup=-1)
