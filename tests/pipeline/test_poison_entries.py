"""A bad entry on a result stream never stops a consumer: it is reported once, skipped, and in a
consumer group moved to `<key>:dead` so no restart sees it again. The wire's JSON Schema in the
repository is the one the models generate.

Entries are XADDed with redis-py onto a real redis-server, as anyone who can write to Redis could.
Valid frames carry real COCO RLE masks (pycocotools.encode of drawn shapes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from segstream.pipeline.wire.consumer import Subscriber
from segstream.pipeline.wire.schema import MAX_MASK_PIXELS, MalformedEntry, parse_entry, schema_text
from segstream.pipeline.wire.entries import MaskError, decode_mask, entry_kind

ROOT = Path(__file__).resolve().parents[2]
SEGSTREAM = str(Path(sys.executable).with_name("segstream"))
WIDTH, HEIGHT = 64, 48
FAST = {"read_block_ms": 200, "socket_timeout": 0.5, "backoff_initial": 0.05, "backoff_max": 0.3}


def drawn_mask(n: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[5 + n % 20: 20 + n % 20, 3 + n % 30: 30 + n % 30] = 1
    return mask


def rle(mask: np.ndarray) -> dict:
    encoded = coco_mask.encode(np.asfortranarray(mask))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def valid_frame(stream: str, n: int) -> dict:
    return {"schema": 1, "stream": stream, "frame": n, "pts": n / 25, "time": 1764999000.0 + n, "width": WIDTH,
            "height": HEIGHT, "dropped": 0, "latency": 0.05, "future_key": {"ignored": True},
            "instances": [{"class_id": 1, "label": "square", "score": 0.9, "box": [3.0, 5.0, 30.0, 20.0],
                           "mask": rle(drawn_mask(n)), "track_id": n % 3}]}


def malformed_entries(stream: str) -> list[dict]:
    """XADD field mappings of 50 entries that do not validate, in the ways a careless or hostile writer might."""
    def frame(**change) -> dict:
        message = valid_frame(stream, 0)
        message.update(change)
        return {"data": json.dumps(message)}

    def instance(**change) -> dict:
        message = valid_frame(stream, 0)
        message["instances"][0].update(change)
        return {"data": json.dumps(message)}

    good = rle(drawn_mask(0))
    kinds = [
        frame(instances=[1]),
        frame(pts="abc"),
        frame(width=100000, height=100000, instances=[{**valid_frame(stream, 0)["instances"][0],
                                                       "mask": {"size": [100000, 100000], "counts": "0"}}]),
        instance(mask={"size": [HEIGHT, WIDTH], "counts": good["counts"] + "0"}),  # counts add up to more
        instance(mask={"size": [HEIGHT, WIDTH], "counts": "1"}),  # and to less
        instance(mask={"size": [HEIGHT, WIDTH], "counts": "~~~"}),
        instance(mask={"size": [10, 10], "counts": "T1"}),  # a valid 10x10 mask, not the frame's size
        instance(mask={"size": [HEIGHT, WIDTH]}),
        instance(mask="abc"),
        instance(score="0.9"),
        instance(box=[1, 2, 3]),
        instance(label=5),
        instance(track_id="x"),
        frame(frame="3"),
        frame(frame=-1),
        frame(width=True),
        frame(schema=2),
        frame(time=float("nan")),  # json.dumps writes NaN, which json.loads reads back
        frame(instances=None),
        frame(stream=None),
        {"data": "not json"},
        {"data": "[1, 2]"},
        {"data": "null"},
        {"data": "[" * 100000 + "]" * 100000},  # too deep for json.loads
        {"other": "field"},
        {"data": json.dumps({"schema": 1, "stream": stream, "eos": "yes", "frames": 3})},
        {"data": json.dumps({"schema": 1, "stream": stream, "eos": True, "frames": "3"})},
        {"data": json.dumps({"schema": 1, "stream": stream, "status": "exploded", "since": 0, "reconnects": 0})},
        {"data": json.dumps({"schema": 1, "stream": stream, "status": "live", "since": 0, "reconnects": -1})},
        {"data": json.dumps({"schema": 1, "instances": []})},
    ]
    return [kinds[i % len(kinds)] for i in range(50)]


def fill(client, stream: str) -> tuple[list[str], list[str]]:
    """50 valid frames with 50 malformed entries in between, then an EOS: (valid ids, malformed ids)."""
    key = f"segstream:{stream}"
    valid, malformed = [], []
    for n, bad in enumerate(malformed_entries(stream)):
        malformed.append(client.xadd(key, bad).decode())
        valid.append(client.xadd(key, {"data": json.dumps(valid_frame(stream, n))}).decode())
    client.xadd(key, {"data": json.dumps({"schema": 1, "stream": stream, "eos": True, "frames": 50})})
    return valid, malformed


def subscribe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SEGSTREAM, "subscribe", *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ))


def skipped_ids(stderr: str) -> list[str]:
    return [line.split("skipped malformed entry ")[1].split()[0] for line in stderr.splitlines()
            if "skipped malformed entry" in line]


def test_subscribe_prints_the_50_valid_frames_between_50_malformed_entries_and_exits_at_eos(redis_url, redis_client):
    _, malformed = fill(redis_client, "poisoned")
    done = subscribe("poisoned", "--redis", redis_url, "--from-start")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [
        f"poisoned frame {n} t={n / 25:.2f}s {WIDTH}x{HEIGHT}" for n in range(50)]
    assert all(line.endswith(f": 1 square #{n % 3}") for n, line in enumerate(lines[:-1]))
    assert lines[-1] == "poisoned end of stream: 50 frames"
    # Each malformed entry is reported exactly once, by its id, with the field that is wrong.
    assert skipped_ids(done.stderr) == malformed
    assert "instances.0: Input should be a valid dictionary" in done.stderr
    assert "pts: Input should be a valid number" in done.stderr
    assert "above the bound of 67108864" in done.stderr
    assert "mask counts add up to" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_group_moves_malformed_entries_to_the_dead_letter_stream_and_a_restart_never_sees_them(redis_url, redis_client):
    _, malformed = fill(redis_client, "grouped")
    first = subscribe("grouped", "--redis", redis_url, "--group", "printers")
    assert first.returncode == 0, first.stderr
    assert len(first.stdout.splitlines()) == 51 and first.stdout.splitlines()[-1].endswith("end of stream: 50 frames")
    assert skipped_ids(first.stderr) == malformed
    assert "(moved to segstream:grouped:dead)" in first.stderr

    dead = redis_client.xrange("segstream:grouped:dead")
    assert [fields[b"entry"].decode() for _, fields in dead] == malformed
    originals = {i.decode(): fields for i, fields in redis_client.xrange("segstream:grouped")}
    for _, fields in dead:  # the original fields, plus why
        entry = fields.pop(b"entry").decode()
        reason = fields.pop(b"reason").decode()
        assert fields == originals[entry] and reason
    assert redis_client.xpending("segstream:grouped", "printers")["pending"] == 0

    redis_client.xadd("segstream:grouped", {"data": json.dumps(valid_frame("grouped", 50))})
    redis_client.xadd("segstream:grouped", {"data": json.dumps({"schema": 1, "stream": "grouped", "eos": True,
                                                                "frames": 51})})
    again = subscribe("grouped", "--redis", redis_url, "--group", "printers")
    assert again.returncode == 0, again.stderr
    assert [line.split(":")[0] for line in again.stdout.splitlines()] == [
        f"grouped frame 50 t=2.00s {WIDTH}x{HEIGHT}", "grouped end of stream"]
    assert "malformed" not in again.stderr
    assert redis_client.xlen("segstream:grouped:dead") == 50


def test_the_subscriber_api_hands_out_only_valid_entries_and_their_masks_decode(redis_url, redis_client):
    _, malformed = fill(redis_client, "api")
    frames = []
    subscriber = Subscriber(redis_url, "api", from_start=True, block_ms=5000, **FAST)
    for message in subscriber:
        if entry_kind(message) == "eos":
            break
        frames.append(message)
    subscriber.close()
    assert [m["frame"] for m in frames] == list(range(50))
    assert subscriber.malformed == 50
    for n, message in enumerate(frames):
        assert np.array_equal(decode_mask(message["instances"][0]["mask"]), drawn_mask(n))

    grouped = Subscriber(redis_url, "api", group="readers", consumer="r1", block_ms=5000, **FAST)
    kinds = []
    for message in grouped:
        kinds.append(entry_kind(message))
        if kinds[-1] == "eos":
            grouped.ack()
            break
    grouped.close()
    assert kinds == ["frame"] * 50 + ["eos"] and grouped.malformed == 50
    assert [f[b"entry"].decode() for _, f in redis_client.xrange("segstream:api:dead")] == malformed
    # The same member restarted: nothing pending, nothing malformed delivered again.
    restarted = Subscriber(redis_url, "api", group="readers", consumer="r1", block_ms=1000, **FAST)
    assert list(restarted) == [] and restarted.malformed == 0
    restarted.close()


def test_a_dead_letter_key_of_another_type_does_not_stop_a_group_reader(redis_url, redis_client):
    redis_client.set("segstream:odd:dead", "a string, not a stream")
    bad = redis_client.xadd("segstream:odd", {"data": json.dumps({"schema": 1, "stream": "odd", "instances": [1]})})
    redis_client.xadd("segstream:odd", {"data": json.dumps(valid_frame("odd", 0))})
    redis_client.xadd("segstream:odd", {"data": json.dumps({"schema": 1, "stream": "odd", "eos": True, "frames": 1})})
    done = subscribe("odd", "--redis", redis_url, "--group", "g")
    assert done.returncode == 0, done.stderr
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == [
        f"odd frame 0 t=0.00s {WIDTH}x{HEIGHT}", "odd end of stream"]
    assert f"could not copy entry {bad.decode()} to segstream:odd:dead" in done.stderr
    assert redis_client.xpending("segstream:odd", "g")["pending"] == 0  # acknowledged all the same


def test_decode_mask_refuses_a_huge_size_without_allocating_it():
    tracemalloc.start()
    try:
        with pytest.raises(MaskError, match=r"mask size \[100000, 100000\] is 10000000000 pixels, above the bound"):
            decode_mask({"size": [100000, 100000], "counts": "0"})
        with pytest.raises(MaskError, match="above the bound of 100"):
            decode_mask({"size": [20, 20], "counts": "0"}, max_pixels=100)
        # Counts claiming one run of 10^10 pixels inside an allowed size: refused from the string alone.
        with pytest.raises(MaskError, match=r"add up to \d+ pixels, not 8000 x 8000 = 64000000"):
            decode_mask({"size": [8000, 8000], "counts": "0" + "?" * 7 + "1"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # bytes; the mask asked for would be 9.3 GiB
    assert MAX_MASK_PIXELS == 8192 * 8192


def test_decode_mask_refuses_counts_that_do_not_add_up_and_matches_pycocotools_otherwise():
    mask = drawn_mask(4)
    good = rle(mask)
    for counts, why in [(good["counts"] + "0", "add up to"), (good["counts"][:-1], "add up to|end inside"),
                        ("", "add up to 0 pixels"), ("\x7f", "not COCO compressed RLE"), ("é", "not COCO"),
                        ("0_", "end inside a number")]:
        with pytest.raises(MaskError, match=why):
            decode_mask({"size": [HEIGHT, WIDTH], "counts": counts})
    with pytest.raises(MaskError, match="two integers"):
        decode_mask({"size": [HEIGHT, "64"], "counts": good["counts"]})
    rng = np.random.default_rng(3)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        random_mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        encoded = coco_mask.encode(np.asfortranarray(random_mask))
        ours = decode_mask({"size": [h, w], "counts": encoded["counts"].decode()})
        assert ours.dtype == np.uint8 and np.array_equal(ours, coco_mask.decode(encoded))


def test_the_json_schema_in_the_repository_is_the_one_the_models_generate():
    committed = (ROOT / "docs" / "wire-schema-v1.json").read_text()
    assert committed == schema_text(), (
        "docs/wire-schema-v1.json is stale: run `python -m segstream.pipeline.wire.entries --schema docs/wire-schema-v1.json`")


def test_a_consumer_in_another_language_validating_with_the_json_schema_agrees_on_types():
    document = json.loads((ROOT / "docs" / "wire-schema-v1.json").read_text())
    validator = jsonschema.Draft202012Validator(document)
    assert validator.is_valid(valid_frame("c", 3))
    assert validator.is_valid({"schema": 1, "stream": "c", "eos": True, "frames": 3})
    assert validator.is_valid({"schema": 1, "stream": "c", "status": "live", "since": 1.5, "reconnects": 0})
    assert validator.is_valid({"schema": 1, "stream": "c", "heartbeat": 3})  # a kind from a newer producer
    judged = 0
    for fields in malformed_entries("c"):
        with pytest.raises(MalformedEntry) as refused:
            parse_entry(fields)
        try:
            message = json.loads(fields.get("data", "null"))
        except (ValueError, RecursionError):
            continue
        # What JSON Schema can say (types, ranges, required keys), it says too; the rules on a mask's
        # counts and size are stated in its descriptions and checked by the models. NaN is not JSON:
        # strict parsers in other languages refuse it before any schema.
        if "mask" not in str(refused.value) and "finite number" not in str(refused.value):
            assert not validator.is_valid(message), (message, str(refused.value))
            judged += 1
    assert judged >= 30
