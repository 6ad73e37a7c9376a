"""Time and memory of LC-Block implementations vs the baseline, side by side.

The arguments of :func:`lcdense.bench`, which this command calls. Examples::

    lcdense bench                      # CPU: CIFAR ResNet-20-16, batch 128
    lcdense bench --device cuda        # ResNet-18d at 224 px, batch 256, bf16, channels_last
"""
from __future__ import annotations

import argparse

from ..cost.bench import CIFAR_MODEL, bench
from .common import parse_ints


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--model", default=None,
                   help=f"'{CIFAR_MODEL}' (CPU default) or a torchvision/timm name (CUDA default: timm:resnet18d)")
    p.add_argument("--image-size", type=int, default=None, help="input side in px (default 32 CIFAR, else 224)")
    p.add_argument("--batch-size", type=int, default=None, help="default 128 on CPU, 256 on CUDA")
    p.add_argument("--E", type=parse_ints, default=(1, 8, 32, 128), help="expansions, e.g. 1,8,32,128")
    p.add_argument("--naive-max-E", type=int, default=None,
                   help="time the two-conv form only up to this E (default 8 on CPU, 1 on CUDA: it costs ~E×)")
    p.add_argument("--rounds", type=int, default=4, help="round-robin rounds (medians over rounds)")
    p.add_argument("--steps", type=int, default=1, help="steps per configuration per round")
    p.add_argument("--amp", choices=("none", "bf16"), default=None, help="autocast (default none CPU, bf16 CUDA)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on for CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch on --device cpu (default 1: stable ratios on a shared machine)")
    p.add_argument("--reuse-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="CPU: let glibc keep freed memory for reuse, as the CUDA caching allocator does (default on; "
                        "off: every step page-faults its fresh gradient and activation buffers anew)")
    p.add_argument("--out", default=None,
                   help="JSON result file (default runs/bench/lc-DEVICE-TIMESTAMP.json; never overwritten)")


def run(args: argparse.Namespace) -> int:
    result = bench(device=args.device, model=args.model, image_size=args.image_size, batch_size=args.batch_size,
                   E=args.E, naive_max_E=args.naive_max_E, rounds=args.rounds, steps=args.steps, amp=args.amp,
                   channels_last=args.channels_last, compile=args.compile, threads=args.threads,
                   reuse_freed_memory=args.reuse_freed_memory, out=args.out)
    print(result.summary())
    return 0
