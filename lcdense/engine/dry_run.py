"""``lcdense run ... --dry-run``: every cell's predicted memory and compute, nothing trained.

Per distinct cell (seeds share one estimate: same shapes) it builds the task's model, converts
a fake copy (:func:`lcdense.cost.estimate.estimate`) and reports parameters, state, activations,
the peak, FLOPs and whether the peak fits ``run.max_memory`` (``--memory``) or the device.
The table is printed and the estimates are written to ``OUT/TASK/dry-run/<time>.json``.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from ..base.files import write_json
from ..cost.estimate import Estimate, estimate, format_estimates
from ..cost.memory import parse_bytes
from .config import cell_config
from .rundir import dry_run_file
from .runner import converter, gpu_list, pick_device
from .task import Task
from .variants import CellSpec


def target_device(name: str) -> torch.device:
    """The device a run would use; a CUDA target is kept even without a GPU here (fake tensors
    need none), so a laptop can plan a GPU run."""
    if gpus := gpu_list(name):
        name = str(gpus[0])
    if name.isdigit() or name.startswith("cuda"):
        return torch.device("cuda" if name.isdigit() or name == "cuda" else name)
    return pick_device(name)


def dry_run(task: Task, config: dict[str, Any], cells: list[CellSpec], axis_keys: dict[str, str],
            cache_dir: Path, ranks: int = 1) -> list[Estimate]:
    """The estimates of ``cells`` (one per distinct variant and sweep point)."""
    device = target_device(str(config["run"]["device"]))
    limit = config["run"].get("max_memory")
    memory = parse_bytes(limit) if limit is not None else None
    data = task.prepare_data(config, cache_dir)
    estimates, seen = [], set()
    for spec in cells:
        key = (spec.variant.name, tuple(sorted(spec.axes.items())))
        if key in seen:
            continue
        seen.add(key)
        cfg = cell_config(config, spec, axis_keys)
        torch.manual_seed(spec.seed)
        model = task.build_model(cfg, data)
        fp = task.footprint(cfg)
        fp.batch_size = max(1, fp.batch_size // ranks)
        axes = "".join(f" {k}={v}" for k, v in spec.axes.items())
        est = estimate(model, fp, convert=converter(cfg, spec, task, counted=False), device=device,
                       name=spec.variant.name + axes, memory=memory)
        if limit is not None:
            est.memory_source = "run.max_memory"
        estimates.append(est)
    return estimates


def report(estimates: list[Estimate], out: str | Path, task: str) -> Path:
    """Print the table and write the JSON; returns the JSON's path (a new file)."""
    first = estimates[0]
    print(f"lcdense: dry run of {task} on {first.device}: batch {first.batch_size} per rank, input "
          f"{'x'.join(map(str, first.input_size))}, {first.optimizer}, bf16 autocast {first.amp}; "
          f"memory: {first.memory_source or 'unknown'}")
    print(format_estimates(estimates))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path = dry_run_file(out, task, stamp)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"task": task, "estimates": [e.to_dict() for e in estimates],
                      "meaning": "bytes of tensor storage; peak = live tensor bytes at their maximum over two "
                                 "training steps (lcdense.cost.estimate); FLOPs from torch.utils.flop_counter"})
    print(f"estimates: {path}")
    return path


__all__ = ["dry_run", "report", "target_device"]
