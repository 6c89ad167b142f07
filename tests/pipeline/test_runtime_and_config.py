"""The runtime's queue policies and failure handling; configs validated at load."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from segstream.pipeline.config import ConfigError, load_config, parse_config
from segstream.pipeline.runtime import BoundedQueue, Chain

ROOT = Path(__file__).resolve().parents[2]


def test_full_queue_evicts_the_oldest_droppable_item_and_reports_it():
    dropped = []
    q = BoundedQueue(2, droppable=lambda x: x.startswith("live"), on_drop=dropped.append)
    for item in ("live0", "live1", "live2", "live3"):
        q.put(item)
    assert q.get_many(5) == ["live2", "live3"] and dropped == ["live0", "live1"] and q.dropped == 2


def test_full_queue_blocks_items_that_must_not_be_lost():
    q = BoundedQueue(1, droppable=lambda x: False)
    q.put("a")
    done = threading.Event()
    threading.Thread(target=lambda: (q.put("b"), done.set()), daemon=True).start()
    assert not done.wait(0.3), "put waits for room"
    assert q.get_many(1) == ["a"]
    assert done.wait(2) and q.get_many(1) == ["b"]


class Numbers:
    name = "numbers"

    def __init__(self, n: int) -> None:
        self.n = n

    def items(self, stopping):
        for i in range(self.n):
            if stopping.is_set():
                return
            yield i


class Step:
    take = 1

    def __init__(self, name, fn) -> None:
        self.name, self.fn = name, fn

    def process(self, items):
        return [self.fn(x) for x in items]

    def flush(self):
        return ()


def test_chain_delivers_everything_in_order_with_backpressure():
    seen = []
    chain = Chain([Numbers(500)], [Step("double", lambda x: 2 * x), Step("sink", seen.append)], [2, 2])
    chain.run()
    assert seen == [2 * i for i in range(500)]


def test_a_failing_stage_stops_the_run_and_later_stages_finish_what_they_hold():
    seen = []

    def explode(x):
        if x == 50:
            raise ValueError("stage broke")
        return x

    chain = Chain([Numbers(10**9)], [Step("explode", explode), Step("sink", seen.append)], [4, 4])
    with pytest.raises(ValueError, match="stage broke"):
        chain.run()
    assert seen == list(range(50))


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    load_config(path)


def test_unknown_nested_key_is_named():
    with pytest.raises(ConfigError, match=r"redis\.pasword: unknown key"):
        parse_config({"redis": {"pasword": "x"}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"source\.read_timeout"):
        parse_config({"source": {"read_timeout": "soon"}})
