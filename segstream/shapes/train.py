"""Train the compact Mask R-CNN from scratch on rendered shapes.

    python -m segstream.shapes.train --out runs/shapes --steps 5000

Reproducible: sample k of the run is a function of (--seed, k) only, the model is initialised
from --seed, and the LR schedule (linear warmup, cosine decay) is a function of the step. Every
--checkpoint-minutes the run writes `last.pt` (model, EMA, optimiser, step) and a project
checkpoint of the EMA weights (`shapes_step<N>.safetensors`, what the pipeline loads);
`--resume` continues from `last.pt`. The EMA weights are what gets shipped: they are usable at
any point of the schedule, so an interrupted run still leaves a good model behind.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from tqdm import tqdm

from segstream.engines.checkpoint import save_checkpoint
from segstream.engines.compact import DEFAULT_OPTIONS, build_compact_maskrcnn
from segstream.engines.model_config import ModelConfig
from segstream.shapes.dataset import ShapesStream
from segstream.shapes.scene import MODEL_CLASS_NAMES

#: Test-time settings written into the shipped checkpoint (the engine applies them).
TEST_SETTINGS = dict(
    score_threshold=0.1,
    nms_threshold=0.5,
    max_detections=30,
    mask_threshold=0.5,
    rpn_pre_nms_top_n=300,
    rpn_post_nms_top_n=100,
)


def shapes_model_config(input_size: tuple[int, int], options: dict | None = None) -> ModelConfig:
    """The ModelConfig of a shapes model at `input_size` (H, W)."""
    return ModelConfig(
        architecture="compact",
        class_names=MODEL_CLASS_NAMES,
        input_size=input_size,
        options=dict(DEFAULT_OPTIONS, **(options or {})),
        **TEST_SETTINGS,  # type: ignore[arg-type]
    )


def learning_rate(step: int, total: int, peak: float, warmup: int, progress: float = 0.0) -> float:
    """Linear warmup from peak/50 to peak over `warmup` steps, then cosine decay to peak/100.

    progress: an external fraction of the schedule done (a wall-time budget); the cosine uses
    whichever is further along, the steps or it.
    """
    if step < warmup:
        return peak * (0.02 + 0.98 * step / warmup)
    t = min(1.0, max(progress, (step - warmup) / max(1, total - warmup)))
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


class ThreadPicker:
    """Chooses 1 or 2 torch threads from how busy the other processes keep the CPU.

    OpenMP threads wait for each other at every operator; when another process holds one of two
    cores, a second thread runs at that process's pace and slows every step, so one thread is
    faster then. Reads /proc (Linux); elsewhere it keeps torch's default.
    """

    def __init__(self, max_threads: int) -> None:
        self.max_threads = max_threads
        self.last = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float] | None:
        try:
            fields = open("/proc/stat").readline().split()[1:]
            busy = sum(float(v) for v in fields) - float(fields[3]) - float(fields[4])
            mine = 0.0
            import os

            for pid in [str(os.getpid())] + [str(c.pid) for c in _children()]:
                stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                mine += float(stat[11]) + float(stat[12])
            return busy, mine
        except (OSError, ValueError, IndexError):
            return None

    def pick(self) -> int:
        now = self._sample()
        if now is None or self.last is None or self.max_threads < 2:
            self.last = now
            return torch.get_num_threads()
        busy, mine = now[0] - self.last[0], now[1] - self.last[1]
        self.last = now
        # The share of busy CPU time that was not ours; above ~30%, someone holds a core.
        others = (busy - mine) / busy if busy > 0 else 0.0
        threads = 1 if others > 0.3 else self.max_threads
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        return threads


def _children() -> list:
    import multiprocessing

    return multiprocessing.active_children()


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(decay).add_(p.detach(), alpha=1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def _collate(batch: list) -> tuple[list, list]:
    return [b[0] for b in batch], [b[1] for b in batch]


def export(ema: nn.Module, config: ModelConfig, path: Path) -> Path:
    """Write the EMA weights as a project checkpoint (float32)."""
    return save_checkpoint(path, ema.state_dict(), config)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segstream train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/shapes"), help="run folder (checkpoints, log)")
    parser.add_argument("--steps", type=int, default=5000, help="optimiser steps in the whole schedule")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.03, help="peak SGD learning rate")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--input-size", type=int, nargs=2, default=(192, 320), metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ema-decay", type=float, default=0.998)
    parser.add_argument("--checkpoint-minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1, help="rendering processes")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: adapt between 1 and torch's default to other processes' load)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="wall-time budget: the cosine follows elapsed time when that is further along than the steps")
    parser.add_argument("--box-batch-size", type=int, default=None,
                        help="RoIs sampled per image for the box head (a quarter at most are positives and train the mask head)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--box-levels", nargs="+", default=["p4", "p5"], metavar="LEVEL",
                        help="FPN levels (p2..p5) the box head pools from; the finest one is used for this domain")
    parser.add_argument("--classifier-weight", type=float, default=1.0,
                        help="weight of the box head's classification loss (shape identity learns slowest)")
    parser.add_argument("--reset-ema", action="store_true",
                        help="on --resume, restart the weight average from the current weights (after changing the heads' inputs)")
    parser.add_argument("--new-cycle", action="store_true",
                        help="on --resume, start a new warmup + cosine cycle (--steps/--minutes counted from the resume point)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    picker = ThreadPicker(torch.get_num_threads()) if not args.threads and args.device == "cpu" else None
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    options: dict = {"box_batch_size_per_image": args.box_batch_size} if args.box_batch_size else {}
    if args.box_levels:
        options["box_levels"] = list(args.box_levels)
    config = shapes_model_config(tuple(args.input_size), options)
    model = build_compact_maskrcnn(config).to(device)
    ema = copy.deepcopy(model).eval()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, momentum=0.9
    )
    step, seconds_before = 0, 0.0
    # The schedule of the current cycle counts from here; a warm restart moves it to the resume point.
    cycle_step, cycle_seconds = 0, 0.0
    args.out.mkdir(parents=True, exist_ok=True)
    last = args.out / "last.pt"
    if args.resume and last.is_file():
        state = torch.load(last, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["model"] if args.reset_ema else state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        seconds_before = float(state.get("seconds", 0.0))
        cycle_step, cycle_seconds = int(state.get("cycle_step", 0)), float(state.get("cycle_seconds", 0.0))
        if args.new_cycle:
            cycle_step, cycle_seconds = step, seconds_before
        print(f"resumed from {last} at step {step} (cycle from step {cycle_step})", flush=True)

    stream = ShapesStream(args.seed, config.input_size, start=step * args.batch_size)
    loader = torch.utils.data.DataLoader(
        stream, batch_size=args.batch_size, collate_fn=_collate, num_workers=args.workers,
        prefetch_factor=4 if args.workers else None, persistent_workers=bool(args.workers),
    )

    def save() -> None:
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                    "step": step, "seconds": seconds_before + time.monotonic() - started, "config": config.to_json(),
                    "cycle_step": cycle_step, "cycle_seconds": cycle_seconds}, args.out / "last.pt.tmp")
        (args.out / "last.pt.tmp").replace(last)
        export(ema, config, args.out / f"shapes_step{step}.safetensors")

    model.train()
    started = last_save = time.monotonic()
    smoothed: dict[str, float] = {}
    bar = tqdm(total=cycle_step + args.steps, initial=step, desc="train", mininterval=5.0)
    for images, targets in loader:
        if step - cycle_step >= args.steps:
            break
        spent = seconds_before + time.monotonic() - started
        in_cycle = spent - cycle_seconds
        if args.minutes and in_cycle > args.minutes * 60:
            break
        lr = learning_rate(step - cycle_step, args.steps, args.lr, args.warmup,
                           in_cycle / (args.minutes * 60) if args.minutes else 0.0)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        loss = sum(v * (args.classifier_weight if k == "loss_classifier" else 1.0) for k, v in losses.items())
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss became {loss.item()} at step {step}: lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        step += 1
        update_ema(ema, model, min(args.ema_decay, (1 + step) / (10 + step)))
        for k, v in losses.items():
            smoothed[k] = 0.95 * smoothed.get(k, v.item()) + 0.05 * v.item()
        bar.update(1)
        bar.set_postfix(loss=f"{sum(smoothed.values()):.3f}", lr=f"{lr:.4f}", refresh=False)
        if picker is not None and step % 10 == 0:
            picker.pick()
        if step % 50 == 0:
            parts = " ".join(f"{k.replace('loss_', '')}={v:.3f}" for k, v in smoothed.items())
            print(f"\nstep {step} lr {lr:.4f} {parts} elapsed {spent:.0f}s threads {torch.get_num_threads()}", flush=True)
        if time.monotonic() - last_save > args.checkpoint_minutes * 60:
            save()
            last_save = time.monotonic()
    bar.close()
    save()
    final = export(ema, config, args.out / "shapes_final.safetensors")
    print(f"done: {step} steps in {seconds_before + time.monotonic() - started:.0f}s, weights in {final}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
