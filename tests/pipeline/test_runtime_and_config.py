"""The runtime's queue policies and failure handling; configs validated at load."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from segstream.pipeline.config import ConfigError, load_config, parse_config
from segstream.pipeline.queues import BoundedQueue, EdgePolicy, FairInbox
from segstream.pipeline.runtime import Chain

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


def test_light_markers_never_wait_for_room_and_keep_their_place():
    # Markers ("c...") take no room from the heavy items: a queue full of frames still takes them.
    q = BoundedQueue(2, light=lambda x: x.startswith("c"), light_capacity=3)
    for item in ("f0", "c1", "f2", "c3", "c4"):
        q.put(item)  # would block at the third item if the markers counted
    done = threading.Event()
    threading.Thread(target=lambda: (q.put("c5"), done.set()), daemon=True).start()
    assert not done.wait(0.3), "the markers' own bound still holds"
    assert q.get_many(2) == ["f0", "c1"]
    assert done.wait(2) and q.get_many(10) == ["f2", "c3", "c4", "c5"]


def test_a_shared_dropping_queue_takes_the_frame_of_the_camera_with_most_waiting():
    dropped = []
    q = BoundedQueue(3, droppable=lambda x: True, on_drop=dropped.append, owner=lambda x: x[0])
    for item in ("a0", "b0", "b1"):
        q.put(item)
    q.put("c0")  # b has two waiting: one of b's goes, not a's older frame
    q.put("c1")  # c has two (with the new one): c's waiting one goes
    assert dropped == ["b1", "c0"] and q.get_many(5) == ["a0", "b0", "c1"]
    # A camera faster than the rest still gets its turn: its oldest waiting frame keeps its place.
    for item in ("a1", "b2", "a2", "a3", "a4"):
        q.put(item)
    assert q.get_many(5)[0] == "a1"


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


def test_lanes_are_served_round_robin_so_a_full_lane_never_starves_another():
    inbox = FairInbox(batchable=lambda item: not item.endswith("!"))
    busy = inbox.add_lane("busy", EdgePolicy(100))
    quiet = inbox.add_lane("quiet", EdgePolicy(100))
    for i in range(50):
        busy.put(f"b{i}")
    quiet.put("q0")
    quiet.put("q1")
    assert inbox.get_many(4) == ["b0", "q0", "b1", "q1"]
    assert inbox.get_many(3) == ["b2", "b3", "b4"]


def test_a_marker_ends_its_lanes_share_of_a_group_so_order_per_lane_is_kept():
    inbox = FairInbox(batchable=lambda item: not item.endswith("!"))
    a = inbox.add_lane("a", EdgePolicy(10))
    b = inbox.add_lane("b", EdgePolicy(10))
    for item in ("a0", "end-a!", "a1"):
        a.put(item)
    for item in ("b0", "b1", "b2"):
        b.put(item)
    assert inbox.get_many(8) == ["a0", "b0", "end-a!", "b1", "b2"]
    assert inbox.get_many(8) == ["a1"]


def test_a_blocking_lane_that_is_full_does_not_hold_up_a_dropping_one():
    inbox = FairInbox(batchable=lambda item: True)
    dropped = []
    file_lane = inbox.add_lane("file", EdgePolicy(2))
    camera = inbox.add_lane("camera", EdgePolicy(2, "drop_oldest", on_drop=dropped.append))
    file_lane.put("f0")
    file_lane.put("f1")
    blocked = threading.Event()
    threading.Thread(target=lambda: (file_lane.put("f2"), blocked.set()), daemon=True).start()
    for i in range(5):
        camera.put(f"c{i}")  # never waits, even while the file's decoder does
    assert not blocked.is_set() and dropped == ["c0", "c1", "c2"]
    assert inbox.get_many(4) == ["f0", "c3", "f1", "c4"]
    assert blocked.wait(2)


def test_a_producer_added_while_the_chain_runs_is_served_and_the_chain_ends_on_stop():
    seen = []
    chain = Chain([], [Step("sink", seen.append)], [4], keep_alive=True)
    chain.start()
    chain.add_producer(Numbers(5))
    deadline = time.monotonic() + 5
    while len(seen) < 5 and time.monotonic() < deadline:
        threading.Event().wait(0.02)
    assert seen == [0, 1, 2, 3, 4] and not chain.done(), "keep_alive: the chain outlives its producers"
    chain.stop()
    assert chain.wait(5)


def test_stopping_a_kept_alive_chain_ends_it_once_its_producers_finish():
    seen = []
    chain = Chain([], [Step("sink", seen.append)], [4], keep_alive=True)
    chain.start()
    chain.add_producer(Numbers(10**9))
    while not seen:
        time.sleep(0.01)
    chain.stop()
    assert chain.wait(5), "END follows the producer that stopped"


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
