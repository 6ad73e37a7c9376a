#!/usr/bin/env python
"""GPU check of the timm recipe (issue 14): a few hundred training steps of the A2 recipe on
synthetic ImageNet-shaped data for the baseline, lc-frozen@128 and lc-learnable@128; prints
images/s and peak GPU memory for each, and that the frozen digest did not move.

The model, conversion, LAMB + cosine schedule, BCE loss with Mixup/CutMix targets, the config's
precision (``train.amp``: fp16 autocast with a gradient scaler, as the A2 config asks; ``--amp bf16``
for bf16) and channels_last are the ones ``lcdense run --config configs/classification/imagenet_resnet18d_rsb_a2.yaml``
trains with; only the data is synthetic (random pixels and labels, already on the device), so the
numbers are the model's training throughput without JPEG decoding.

Usage (one GPU, about 5 minutes):
    python scripts/gpu_check_timm.py
    python scripts/gpu_check_timm.py --device cpu --size 32 --batch 8 --steps 3 --warmup 1 --E 2   # a CPU smoke run
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from lcdense_tasks.classification import ClassificationTask
from lcdense_tasks.classification.timm_recipe import TimmRecipe, loss_for

from lcdense import autocast, autocast_precision, convert, frozen_digest
from lcdense.engine.config import load_yaml, resolve
from lcdense.engine.training import grad_scaler
from lcdense.engine.variants import Variant

A2 = Path(__file__).resolve().parents[1] / "configs" / "classification" / "imagenet_resnet18d_rsb_a2.yaml"


def measure(variant: Variant, config: dict, args: argparse.Namespace, device: torch.device) -> dict:
    """Train ``variant`` for ``args.steps`` steps; images/s over the steps after ``args.warmup``."""
    from timm.data import Mixup

    task = ClassificationTask()
    train, opts = config["train"], config["train"]["timm"]
    classes = args.classes
    torch.manual_seed(0)
    model = task.build_model(config, {"train": _Classes(classes)})
    kwargs = {"E": variant.E, "spatial": variant.spatial} if variant.mode == "lc" else {}
    model = convert(model, variant.mode, seed=0, input_size=(3, args.size, args.size), batch_size=args.batch,
                    **kwargs).model.to(device).to(memory_format=torch.channels_last)
    digest = frozen_digest(model)
    recipe = TimmRecipe(train, steps=args.steps)  # timm's optimizer, schedule (and EMA), as in training
    recipe.scaler = grad_scaler(train["amp"], device)  # fp16: the loop's gradient scaler
    recipe.setup(model)
    mixup = Mixup(mixup_alpha=opts["mixup"], cutmix_alpha=opts["cutmix"], label_smoothing=0.0, num_classes=classes)
    loss_fn = loss_for(opts, float(train["label_smoothing"]))
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, device=device, generator=gen)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (args.batch,), device=device, generator=gen)
    amp = device.type == "cuda"
    precision = autocast_precision(train["amp"], device)
    if amp:
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    for step in range(args.steps):
        if step == args.warmup:
            if amp:
                torch.cuda.synchronize(device)
            began = time.perf_counter()
        inputs, targets = mixup(x.clone(), y)
        with autocast(device, train["amp"]):
            loss = loss_fn(model(inputs), targets)
        recipe.optimizer.zero_grad(set_to_none=True)
        (loss if recipe.scaler is None else recipe.scaler.scale(loss)).backward()
        recipe.update(step + 1)
    if amp:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - began
    return {"variant": variant.name, "images_per_s": args.batch * (args.steps - args.warmup) / elapsed,
            "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if amp else float("nan"),
            "loss": float(loss.detach()), "frozen_unchanged": frozen_digest(model) == digest,
            "precision": f"{precision}-autocast" if precision != "fp32" else "fp32"}


class _Classes:
    """Stands in for a dataset where the task only asks for the class count."""

    def __init__(self, n: int) -> None:
        self.classes = [str(i) for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30, help="steps not timed (cudnn autotune, allocator)")
    p.add_argument("--E", type=int, default=128)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--model", default=None, help="default: the A2 config's timm:resnet18d")
    p.add_argument("--amp", default=None, choices=["fp16", "bf16"], help="default: the A2 config's train.amp (fp16)")
    args = p.parse_args(argv)
    if args.steps <= args.warmup:
        p.error("--steps must exceed --warmup")
    device = torch.device(args.device)
    config = resolve(ClassificationTask().default_config(), load_yaml(A2), {"data.image_size": args.size})
    if args.model:
        config["model"]["name"] = args.model
    if args.amp:
        config["train"]["amp"] = args.amp
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"{config['model']['name']} at {args.size} px, batch {args.batch}, {args.steps} steps "
          f"({args.warmup} untimed), {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"{'variant':<20} {'images/s':>10} {'peak GiB':>9} {'precision':>14} {'frozen unchanged':>17}")
    ok = True
    for name in ("learnable", f"lc-frozen@{args.E}", f"lc-learnable@{args.E}"):
        r = measure(Variant.parse(name), config, args, device)
        ok &= r["frozen_unchanged"] and r["loss"] == r["loss"]
        print(f"{r['variant']:<20} {r['images_per_s']:>10.1f} {r['peak_gib']:>9.2f} {r['precision']:>14} "
              f"{str(r['frozen_unchanged']):>17}", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
