"""Mask and box AP of per-frame results against a clip's COCO ground truth.

The results are what the pipeline publishes (Redis wire schema v1, design.md section 3): one dict
per frame with `frame` and `instances` [{class_id, score, box [x1,y1,x2,y2] px, mask {size,
counts}}]; end-of-stream entries are ignored. `coco_metrics` is the metric core,
`evaluate_clip` times any runner that turns a video into such results, and `predict_clip`
is the runner without the pipeline (the model called directly on decoded frames), used to
follow training and by the tests:

    python -m segstream.shapes.evaluate VIDEO GT.json [--model CHECKPOINT]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import itertools
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import av
import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

if TYPE_CHECKING:  # torch only for predict_clip/main (the model run directly): the metrics need none
    import torch

FrameResult = dict


def coco_metrics(gt_json_path: str | Path, frame_results: Iterable[FrameResult], only_seen: bool = False) -> dict[str, float]:
    """COCO AP of frame results.

    Ground truth images are matched by their `frame` field (frame index; falls back to id - 1).
    Returns mask_ap (AP@[.5:.95], segm), mask_ap50, mask_ap75, box_ap, box_ap50, and `frames`,
    the number of ground-truth frames that received a result. Frames without a result count
    as frames where nothing was found, unless only_seen (then they are left out of the score).
    """
    gt, by_frame = _load_ground_truth(gt_json_path)
    segm, boxes, seen = [], [], set()
    for image_id, instances in _frames_with_ground_truth(frame_results, by_frame):
        seen.add(image_id)
        for inst in instances:
            x1, y1, x2, y2 = (float(v) for v in inst["box"])
            common = {"image_id": image_id, "category_id": int(inst["class_id"]), "score": float(inst["score"])}
            segm.append({**common, "segmentation": _coco_rle(inst["mask"])})
            boxes.append({**common, "bbox": [x1, y1, x2 - x1, y2 - y1]})
    metrics = {"frames": float(len(seen))}
    for kind, dets, prefix in (("segm", segm, "mask"), ("bbox", boxes, "box")):
        if not dets:
            metrics.update({f"{prefix}_ap": 0.0, f"{prefix}_ap50": 0.0, f"{prefix}_ap75": 0.0})
            continue
        stats = _coco_stats(gt, dets, kind, seen if only_seen else by_frame.values())
        metrics.update({f"{prefix}_ap": float(stats[0]), f"{prefix}_ap50": float(stats[1]), f"{prefix}_ap75": float(stats[2])})
    return metrics


def error_breakdown(gt_json_path: str | Path, frame_results: Iterable[FrameResult],
                    confident: float = 0.5) -> dict[str, float]:
    """Where mask AP50 goes: missed objects, wrong classes, detections on the background.

    Per ground-truth object, the detections (any class) whose mask IoU with it is >= 0.5
    "find" it; the highest-scoring of them gives its class. Returns `objects` (count), `found`
    (fraction of the objects), `wrong_class` (fraction of the found objects), `background`
    (count of detections scoring >= `confident` whose mask IoU with every object of their frame
    is < 0.1) and `class_agnostic_mask_ap50` (mask AP50 with every class merged into one:
    localisation alone; two detections of one object under different classes make one of
    them a false positive there).
    """
    gt, by_frame = _load_ground_truth(gt_json_path)
    objects = found = wrong = background = 0
    merged: list[dict] = []
    for image_id, instances in _frames_with_ground_truth(frame_results, by_frame):
        masks = [_coco_rle(inst["mask"]) for inst in instances]
        scores = [float(inst["score"]) for inst in instances]
        merged += [{"image_id": image_id, "category_id": 1, "score": sc, "segmentation": m} for sc, m in zip(scores, masks)]
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[image_id]))
        objects += len(anns)
        if not masks:
            continue
        iou = mask_utils.iou(masks, [gt.annToRLE(a) for a in anns], [0] * len(anns)) if anns else np.zeros((len(masks), 0))
        iou = np.asarray(iou).reshape(len(masks), len(anns))
        for j, ann in enumerate(anns):
            hits = [(scores[i], int(instances[i]["class_id"])) for i in np.nonzero(iou[:, j] >= 0.5)[0]]
            if hits:
                found += 1
                wrong += max(hits)[1] != int(ann["category_id"])
        touches = iou.max(axis=1) if anns else np.zeros(len(masks))
        background += int(sum(1 for sc, t in zip(scores, touches) if sc >= confident and t < 0.1))
    agnostic = 0.0
    if merged:
        merged_gt = copy.deepcopy(gt.dataset)
        merged_gt["categories"] = [{"id": 1, "name": "object"}]
        for ann in merged_gt["annotations"]:
            ann["category_id"] = 1
        with contextlib.redirect_stdout(io.StringIO()):
            agnostic_gt = COCO()
            agnostic_gt.dataset = merged_gt
            agnostic_gt.createIndex()
        agnostic = float(_coco_stats(agnostic_gt, merged, "segm", by_frame.values())[1])
    return {"objects": float(objects), "found": found / max(objects, 1), "wrong_class": wrong / max(found, 1),
            "background": float(background), "class_agnostic_mask_ap50": agnostic}


def tracking_metrics(gt_json_path: str | Path, frame_results: Iterable[FrameResult],
                     min_score: float = 0.5) -> dict[str, float] | None:
    """IDF1, MOTA and identity switches of the published track ids (motmetrics' CLEAR MOT / ID measures).

    Hypotheses: the instances scoring >= `min_score`, identified by `track_id`; ground truth: the
    annotations, identified by their `track` field. A hypothesis and an object may match when their
    mask IoU is >= 0.5 (motmetrics then keeps matches across frames, as CLEAR MOT says). Frames
    without a result count as frames where nothing was found.
    Returns idf1, mota, switches, gt_tracks, switches_per_100 (per 100 ground-truth tracks), and
    idf1_oracle: the IDF1 the same detections would reach with perfect identities (each takes the
    identity of the object it overlaps most, IoU >= 0.5); None when the ground truth has no `track`
    or no instance carries a `track_id` (tracking off).
    """
    accumulators = tracking_accumulators(gt_json_path, frame_results, min_score)
    return None if accumulators is None else summarize_tracking([accumulators])


def tracking_accumulators(gt_json_path: str | Path, frame_results: Iterable[FrameResult],
                          min_score: float = 0.5) -> tuple[Any, Any] | None:
    """motmetrics accumulators (tracker, perfect identities) of one clip; see tracking_metrics."""
    import motmetrics

    gt, by_frame = _load_ground_truth(gt_json_path)
    if not gt.dataset["annotations"] or any("track" not in a for a in gt.dataset["annotations"]):
        return None
    results = {image_id: instances for image_id, instances in _frames_with_ground_truth(frame_results, by_frame)}
    tracker, oracle = motmetrics.MOTAccumulator(), motmetrics.MOTAccumulator()
    any_ids = False
    spare = itertools.count(-1, -1)  # oracle identities of detections that match no object
    for image_id in sorted(by_frame.values()):
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[image_id]))
        instances = [i for i in results.get(image_id, []) if float(i["score"]) >= min_score]
        any_ids = any_ids or any("track_id" in i for i in instances)
        objects = [int(a["track"]) for a in anns]
        iou = np.zeros((len(objects), len(instances)))
        if anns and instances:
            iou = np.asarray(mask_utils.iou([gt.annToRLE(a) for a in anns], [_coco_rle(i["mask"]) for i in instances],
                                            [0] * len(instances))).reshape(len(objects), len(instances))
        distance = np.where(iou >= 0.5, 1.0 - iou, np.nan)
        tracker.update(objects, [int(i.get("track_id", -1)) for i in instances], distance, frameid=image_id)
        oracle.update(objects, _ideal_identities(objects, iou, spare), distance, frameid=image_id)
    return (tracker, oracle) if any_ids else None


def _ideal_identities(objects: list[int], iou: np.ndarray, spare: Iterator[int]) -> list[int]:
    """Per detection (columns of iou [objects, detections]), the identity of the object it overlaps
    most (IoU >= 0.5), each object given once a frame (to its best detection); others a spare id."""
    ideal = [next(spare) for _ in range(iou.shape[1])]
    given: set[int] = set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        row, col = divmod(int(flat), iou.shape[1])
        if iou[row, col] < 0.5:
            break
        if row not in given and ideal[col] < 0:
            ideal[col] = objects[row]
            given.add(row)
    return ideal


def summarize_tracking(accumulators: list[tuple[Any, Any]]) -> dict[str, float]:
    """tracking_metrics' figures over one or more clips (their identities kept apart)."""
    import motmetrics

    host = motmetrics.metrics.create()
    wanted = ["idf1", "mota", "num_switches", "num_unique_objects"]
    names = [f"clip{k}" for k in range(len(accumulators))]
    scored = host.compute_many([a for a, _ in accumulators], metrics=wanted, names=names, generate_overall=True)
    ideal = host.compute_many([o for _, o in accumulators], metrics=["idf1"], names=names, generate_overall=True)
    row = scored.loc["OVERALL"]
    gt_tracks, switches = int(row["num_unique_objects"]), int(row["num_switches"])
    return {"idf1": float(row["idf1"]), "mota": float(row["mota"]), "switches": float(switches),
            "gt_tracks": float(gt_tracks), "switches_per_100": 100.0 * switches / max(gt_tracks, 1),
            "idf1_oracle": float(ideal.loc["OVERALL"]["idf1"])}


def _frames_with_ground_truth(frame_results: Iterable[FrameResult], by_frame: dict[int, int]) -> Iterator[tuple[int, list[dict]]]:
    """(ground-truth image id, instances) of each frame result; EOS entries and unknown frames are skipped."""
    for result in frame_results:
        if result.get("eos") or "instances" not in result:
            continue
        image_id = by_frame.get(int(result["frame"]))
        if image_id is not None:
            yield image_id, result["instances"]


def _load_ground_truth(gt_json_path: str | Path) -> tuple[COCO, dict[int, int]]:
    """The COCO ground truth and its image ids by frame index (`frame` field, else id - 1)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_json_path))
    return gt, {int(img.get("frame", img["id"] - 1)): img["id"] for img in gt.dataset["images"]}


def _coco_stats(gt: COCO, dets: list[dict], kind: str, image_ids: Iterable[int]) -> np.ndarray:
    """COCOeval's 12 summary numbers (AP, AP50, AP75, ...) of `dets` over `image_ids`, quietly."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(dets), kind)
        evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def _coco_rle(mask: dict) -> dict:
    """A wire-schema mask {size, counts} as pycocotools wants it (counts as str)."""
    counts = mask["counts"]
    return {"size": list(mask["size"]), "counts": counts if isinstance(counts, str) else counts.decode("ascii")}


def evaluate_clip(
    video: str | Path, gt_json: str | Path, run_pipeline: Callable[[str], Iterable[FrameResult]], only_seen: bool = False
) -> dict[str, float]:
    """Run `run_pipeline(video)` (which yields or returns frame results) and score it.

    Adds `fps`: frames with a result per second of wall time spent in the runner.
    """
    start = time.perf_counter()
    results = list(run_pipeline(str(video)))
    elapsed = time.perf_counter() - start
    metrics = coco_metrics(gt_json, results, only_seen)
    frames = sum(1 for r in results if not r.get("eos"))
    metrics["fps"] = frames / elapsed if elapsed > 0 else 0.0
    metrics["seconds"] = elapsed
    return metrics


def decode_frames(video: str | Path, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """RGB frames uint8 [H, W, 3] of a video file, in decode order."""
    with av.open(str(video)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if max_frames is not None and i >= max_frames:
                return
            yield frame.to_ndarray(format="rgb24")


def predict_clip(model: torch.nn.Module, video: str | Path, class_names: Sequence[str],
                 mask_threshold: float = 0.5, batch_size: int = 4, max_frames: int | None = None) -> Iterator[FrameResult]:
    """Frame results of a torchvision Mask R-CNN run directly on a video (no pipeline).

    The model's own transform resizes each frame to fit its input size and pads it; its
    postprocess maps boxes back to frame pixels and pastes the masks at frame resolution.
    """
    import torch

    model.eval()
    batch: list[np.ndarray] = []
    index = 0

    def flush() -> Iterator[FrameResult]:
        nonlocal index
        tensors = [torch.from_numpy(f).permute(2, 0, 1).float().div_(255.0) for f in batch]
        with torch.inference_mode():
            outputs = model(tensors)
        for frame, out in zip(batch, outputs):
            h, w = frame.shape[:2]
            masks = (out["masks"][:, 0] >= mask_threshold).numpy().astype(np.uint8)
            instances = []
            for box, score, label, mask in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist(), masks):
                rle = mask_utils.encode(np.asfortranarray(mask))
                instances.append({"class_id": int(label), "label": class_names[int(label)], "score": float(score),
                                  "box": [float(v) for v in box],
                                  "mask": {"size": [h, w], "counts": rle["counts"].decode("ascii")}})
            yield {"schema": 1, "frame": index, "width": w, "height": h, "instances": instances}
            index += 1
        batch.clear()

    for frame in decode_frames(video, max_frames):
        batch.append(frame)
        if len(batch) == batch_size:
            yield from flush()
    if batch:
        yield from flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segstream.shapes.evaluate",
                                     description="COCO mask/box AP of a shapes checkpoint on a clip (model only, no pipeline).")
    parser.add_argument("video", type=Path)
    parser.add_argument("gt", type=Path)
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: the bundled shapes model)")
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--score-threshold", type=float, default=None, help="override the checkpoint's")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    from segstream.shapes.model import load_shapes_model

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model, config = load_shapes_model(args.model, score_threshold=args.score_threshold)
    metrics = evaluate_clip(args.video, args.gt, lambda v: predict_clip(model, v, config.class_names,
                                                                           config.mask_threshold, max_frames=args.max_frames),
                            only_seen=args.max_frames is not None)
    print(json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
