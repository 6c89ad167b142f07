"""The generator's ground truth is exactly what it draws, in scenes, training samples and clips."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from segstream.shapes.clip import render_clip
from segstream.shapes.dataset import render_sample
from segstream.shapes.evaluate import coco_metrics, decode_frames, error_breakdown
from segstream.shapes.scene import Shape, paint, random_shape


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        inner = mask.copy()
        inner[1:] &= mask[:-1]
        inner[:-1] &= mask[1:]
        inner[:, 1:] &= mask[:, :-1]
        inner[:, :-1] &= mask[:, 1:]
        mask = inner
    return mask


def test_visible_masks_are_the_painted_pixels():
    rng = np.random.default_rng(3)
    background = np.zeros((120, 200, 3), np.uint8)
    shapes = [
        Shape(class_id=c, cx=float(rng.uniform(20, 180)), cy=float(rng.uniform(20, 100)), radius=30.0,
              angle=float(rng.uniform(0, 6)), colour=(40 * c, 255 - 40 * c, 100 + 20 * c), noise=0.0)
        for c in (1, 2, 3, 4, 2, 1)
    ]
    frame, visible = paint(background, shapes, rng)
    union = np.zeros(frame.shape[:2], bool)
    for shape, mask in zip(shapes, visible):
        assert not (mask & union).any(), "visible masks overlap"
        union |= mask
        assert (frame[mask] == shape.colour).all()
    assert (frame[~union] == 0).all()


def test_hidden_object_has_empty_mask_and_top_object_is_whole():
    rng = np.random.default_rng(0)
    small = Shape(class_id=3, cx=50, cy=50, radius=10, angle=0.3, colour=(255, 0, 0), noise=0)
    big = Shape(class_id=2, cx=50, cy=50, radius=40, angle=0.0, colour=(0, 255, 0), noise=0)
    _, (hidden, top) = paint(np.zeros((100, 100, 3), np.uint8), [small, big], rng)
    assert not hidden.any()
    side = 40 * np.sqrt(2)  # square of circumradius 40, axis-aligned at angle 0
    assert abs(int(top.sum()) - side * side) < 4 * side


def test_shapes_can_leave_the_frame():
    rng = np.random.default_rng(1)
    shape = random_shape(rng, 640, 360)
    edge = Shape(class_id=1, cx=-10, cy=100, radius=30, angle=0, colour=(1, 2, 3))
    _, (mask,) = paint(np.zeros((360, 640, 3), np.uint8), [edge], rng)
    assert 0 < mask.sum() < np.pi * 30 * 30 / 2
    assert 1 <= shape.class_id <= 4


def test_training_samples_are_reproducible_and_consistent():
    image, target = render_sample(np.random.default_rng([5, 1]), (192, 320))
    again, _ = render_sample(np.random.default_rng([5, 1]), (192, 320))
    assert image.shape == (3, 180, 320) and (image == again).all()
    masks = target["masks"].numpy().astype(bool)
    assert masks.shape[0] == len(target["labels"]) == len(target["boxes"])
    for mask, box, label in zip(masks, target["boxes"].numpy(), target["labels"].numpy()):
        ys, xs = np.nonzero(mask)
        assert list(box) == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert 1 <= label <= 4


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    video, gt = folder / "clip.mp4", folder / "clip.json"
    render_clip(video, gt, seed=99, frames=24)
    return video, gt


def test_clip_ground_truth_matches_decoded_video(clip):
    video, gt_path = clip
    gt = json.loads(gt_path.read_text())
    frames = list(decode_frames(video))
    assert len(frames) == len(gt["images"]) == 24
    assert frames[0].shape == (360, 640, 3)
    assert [c["name"] for c in gt["categories"]] == ["circle", "square", "triangle", "star"]
    checked = 0
    for ann in gt["annotations"]:
        mask = mask_utils.decode(ann["segmentation"]).astype(bool)
        assert int(mask.sum()) == ann["area"]
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        inner = _erode(mask, 3)
        if inner.sum() < 100:
            continue
        frame = frames[ann["image_id"] - 1]
        # H.264 is lossy and the fill has mild noise: the median colour still matches closely.
        assert np.abs(np.median(frame[inner], axis=0) - ann["colour"]).max() <= 12
        checked += 1
    assert checked >= 24


def test_coco_metrics_scores_ground_truth_as_perfect(clip):
    _, gt_path = clip
    gt = json.loads(gt_path.read_text())
    results = {img["frame"]: {"frame": img["frame"], "instances": []} for img in gt["images"]}
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        results[ann["image_id"] - 1]["instances"].append(
            {"class_id": ann["category_id"], "score": 0.9, "box": [x, y, x + w, y + h], "mask": ann["segmentation"]}
        )
    perfect = coco_metrics(gt_path, list(results.values()) + [{"eos": True, "frames": 24}])
    assert perfect["mask_ap"] > 0.99 and perfect["box_ap"] > 0.99 and perfect["frames"] == 24
    empty = coco_metrics(gt_path, [{"frame": 0, "instances": []}])
    assert empty["mask_ap"] == 0.0


def test_error_breakdown_names_missed_objects_wrong_classes_and_background_detections(clip):
    _, gt_path = clip
    gt = json.loads(gt_path.read_text())
    results = {img["frame"]: {"frame": img["frame"], "instances": []} for img in gt["images"]}
    for ann in gt["annotations"]:
        results[ann["image_id"] - 1]["instances"].append(
            {"class_id": ann["category_id"], "score": 0.9, "mask": ann["segmentation"]})
    perfect = error_breakdown(gt_path, list(results.values()))
    assert perfect["objects"] == len(gt["annotations"])
    assert (perfect["found"], perfect["wrong_class"], perfect["background"]) == (1.0, 0.0, 0.0)
    assert perfect["class_agnostic_mask_ap50"] > 0.99

    # Frame 0: every class one off, one object dropped, and a confident detection on empty ground.
    first = results[0]["instances"]
    assert len(first) >= 2, "the fixture clip has objects in its first frame"
    height, width = first[0]["mask"]["size"]
    corner = np.zeros((height, width), np.uint8, order="F")
    covered = np.zeros((height, width), bool)
    for inst in first:
        covered |= mask_utils.decode(inst["mask"]).astype(bool)
    corner[:8, :8] = 1
    assert not (covered & corner.astype(bool)).any(), "the fixture's first frame has an empty corner"
    rle = mask_utils.encode(corner)
    first.pop()
    for inst in first:
        inst["class_id"] = inst["class_id"] % 4 + 1
    first.append({"class_id": 1, "score": 0.8, "mask": {"size": [height, width], "counts": rle["counts"].decode()}})
    doctored = error_breakdown(gt_path, list(results.values()))
    objects = len(gt["annotations"])
    assert doctored["found"] == pytest.approx((objects - 1) / objects)
    assert doctored["wrong_class"] == pytest.approx(len(first[:-1]) / (objects - 1))
    assert doctored["background"] == 1.0
