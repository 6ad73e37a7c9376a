#!/usr/bin/env python
"""Check the cost estimate on a real device: the dry-run prediction, then a few real training steps.

For the baseline and the LC model (default: learnable LCx128 ResNet-18d, 224 px, batch 256, bf16
autocast, channels_last, SGD with momentum) it prints the predicted peak (lcdense.cost.estimate) beside
the measured one (``torch.cuda.max_memory_allocated``; on CPU, lcdense.cost.memory's tensor peak) and
the median step time against the baseline's.

    python scripts/gpu_cost_check.py                      # on a GPU, the issue's configuration
    python scripts/gpu_cost_check.py --device cpu --image-size 32 --batch-size 4 --E 2 --amp none --steps 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from lcdense import LcdenseError, convert
from lcdense.core.models import create_model
from lcdense.cost.estimate import Footprint, estimate, format_estimates
from lcdense.cost.memory import PeakMemory, format_bytes


def _train(model: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> tuple[float, float]:
    """Median step seconds and peak bytes of ``args.steps`` SGD steps (after one warm-up step)."""
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=gen).to(device)
    x = x.contiguous(memory_format=torch.channels_last) if args.channels_last else x
    y = torch.randint(0, 1000, (args.batch_size,), generator=gen).to(device)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9, nesterov=True,
                          weight_decay=5e-5)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")
    times = []
    with PeakMemory(device, held=[*model.parameters(), *model.buffers()]) as memory:
        for i in range(args.steps + 1):
            start = time.perf_counter()
            with autocast:
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                times.append(time.perf_counter() - start)
    return statistics.median(times), memory.peak_mb * 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="timm:resnet18d")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--E", type=int, default=128)
    p.add_argument("--spatial", choices=("frozen", "learnable"), default="learnable")
    p.add_argument("--impl", default="auto", help="conversion impl (auto, fold, naive, preconditioned)")
    p.add_argument("--amp", choices=("none", "bf16"), default="bf16")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args(argv)
    try:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise LcdenseError("no CUDA GPU is visible; run with --device cpu (and a small --image-size/--batch-size)")
        size = (3, args.image_size, args.image_size)
        fp = Footprint(batch_size=args.batch_size, input_size=size, optimizer="sgd", lr=0.01, momentum=0.9,
                       weight_decay=5e-5, amp=args.amp == "bf16", channels_last=args.channels_last,
                       grads_during_forward=False)
        name = f"lc-{args.spatial}@{args.E}"

        def lc(model: torch.nn.Module):
            return convert(model, "lc", E=args.E, spatial=args.spatial, impl=args.impl, input_size=size,
                           batch_size=args.batch_size)

        torch.manual_seed(0)
        base = create_model(args.model, num_classes=1000)
        predicted = [estimate(base, fp, device=device, name="baseline"),
                     estimate(base, fp, convert=lc, device=device, name=name)]
        print(f"dry run: {args.model}, {args.image_size} px, batch {args.batch_size}, amp {args.amp}, "
              f"channels_last {args.channels_last}, {device}")
        print(format_estimates(predicted))
        base_time, base_peak = _train(base, args, device)
        torch.manual_seed(0)
        lc_time, lc_peak = _train(lc(create_model(args.model, num_classes=1000)).model, args, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print("real run: config, predicted peak, measured peak, measured/predicted, step s, step ×baseline")
        for est, step, peak in ((predicted[0], base_time, base_peak), (predicted[1], lc_time, lc_peak)):
            print(f"{est.name}: {format_bytes(est.peak_bytes)}, {format_bytes(peak)}, {peak / est.peak_bytes:.3f}, "
                  f"{step:.4f}, {step / base_time:.2f}")
    except LcdenseError as exc:
        print(f"gpu_cost_check: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
