"""Print the conversion report of a torchvision or timm model (random init, nothing downloaded).

Example: ``lcdense convert resnet18 --mode lc --E 8 --input-size 3,32,32``
"""
from __future__ import annotations

import argparse
import json

from ..base.errors import LcdenseError
from ..core.convert import MODES, block_modes, convert
from ..core.inits import INITS
from ..core.models import create_model
from .common import parse_ints, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="torchvision or timm model name, e.g. resnet18, timm:resnet18d")
    p.add_argument("--mode", choices=[m.name for m in MODES.values()], default="lc")
    p.add_argument("--E", type=positive_int, default=None, help="LC expansion (mode lc; default 1)")
    p.add_argument("--spatial", choices=("frozen", "learnable"), default="frozen", help="LC spatial bank")
    p.add_argument("--init", default="kaiming_uniform", help=f"spatial init: {', '.join(INITS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mid", choices=("relu", "bn", "bn_relu"), default=None, help="op between the LC convs")
    p.add_argument("--input-size", type=parse_ints, default=(3, 224, 224), help="C,H,W for MAC counts")
    p.add_argument("--num-classes", type=positive_int, default=1000)
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    model = create_model(args.model, num_classes=args.num_classes)
    blocks = MODES.get(args.mode).blocks
    kwargs = {"E": args.E or 1, "mid": args.mid} if blocks else {}
    if not blocks and (args.E is not None or args.mid is not None):
        raise LcdenseError(f"--E and --mid only apply to --mode {' or '.join(block_modes())} (got --mode {args.mode})")
    report = convert(model, args.mode, spatial=args.spatial, init=args.init, seed=args.seed,
                     input_size=args.input_size, **kwargs)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report)
    return 0
