#!/usr/bin/env python
"""The first GPU that comes (issue 21): one script that checks on one GPU, in under 8 minutes, the
paths that behave differently there, and writes one JSON and one table.

Checks (each one a row of the table; the JSON holds every number):

- ``filters``: every init's filters sampled for the device equal the CPU's, bit for bit;
- ``fold``: the fp64 fold against the unfolded model, and the bf16 fold's error, at E = 128;
- ``task:<name>``: every task's embedded default on the device: frozen digests, the precision
  provenance (fp32 math mode included), predicted against measured peak memory;
- ``timm``: the timm recipe at a tiny size with EMA and channels_last;
- ``dry-run``: the plan against a real training step of lc-learnable@128 ResNet-18d (224 px,
  batch 256, bf16, channels_last), and the refusal of an absurd E before anything is allocated;
- ``collectives``: a world-size-1 process group (NCCL on CUDA, gloo on CPU) through every
  collective lcdense uses (:class:`lcdense.World`: gather, mean, on_main, barrier, the running
  statistics' all-reduce, DDP);
- ``repeat``: one cell trained twice, to measure the device's nondeterminism (reported, not judged).

Usage::

    python scripts/gpu_validate.py --out gpu-validate              # one GPU (cuda:0), about 5 minutes
    python scripts/gpu_validate.py --device cpu --tiny --out /tmp/v  # the suite's CPU run, tiny sizes

Exit status 0 when every check passed; the table and ``gpu_validate.json`` are written either way.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import lcdense
from lcdense import INITS, LcdenseError, World, convert, fold, seeded_filters
from lcdense.base.files import write_json, write_text
from lcdense.core.models import cifar_resnet, create_model
from lcdense.cost.estimate import Footprint, check_cell, estimate
from lcdense.cost.memory import PeakMemory, format_bytes

#: sizes: one GPU, and the suite's tiny CPU run
SIZES: dict[str, dict[str, Any]] = {
    "gpu": {"fold_E": 128, "fold_depth": 20, "step_model": "timm:resnet18d", "step_E": 128, "step_image": 224, "step_batch": 256, "task_E": 8,
            "timm_image": 64, "timm_batch": 32, "tasks": {}, "variants": ["learnable", "lc-frozen", "lc-learnable"]},
    "tiny": {"fold_E": 4, "fold_depth": 8, "step_model": "timm:resnet10t", "step_E": 2, "step_image": 32, "step_batch": 2, "task_E": 2,
             "timm_image": 32, "timm_batch": 8, "variants": ["lc-frozen"],
             "tasks": {"classification": {"data.train_limit": 64, "data.val_limit": 32, "train.batch_size": 32,
                                          "eval.batch_size": 32},
                       "detection": {"data.shapes": {"n_trainval": 8, "n_test": 4, "size": 64, "max_objects": 2,
                                                     "seed": 0}, "train.batch_size": 4},
                       "segmentation": {"data.image_size": [16, 24], "train.batch_size": 8}}},
}
TASKS = ("classification", "detection", "segmentation")


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def check_filters(device: torch.device, size: dict[str, Any], out: Path) -> dict[str, Any]:
    """Every init's filters sampled for ``device`` equal the CPU's bit for bit (float32 and float64)."""
    rows = {}
    for init in INITS:
        for dtype in (torch.float32, torch.float64):
            shape = (64 * size["task_E"], 16, 3, 3)
            cpu = seeded_filters(init, shape, seed=0, name="layer1.0.conv1", dtype=dtype)
            dev = seeded_filters(init, shape, seed=0, name="layer1.0.conv1", dtype=dtype, device=device)
            rows[f"{init}/{str(dtype).removeprefix('torch.')}"] = {"equal": bool(torch.equal(cpu, dev.cpu())),
                                                                    "digest": _digest(cpu), "device": str(dev.device)}
    return {"passed": all(r["equal"] for r in rows.values()), "inits": rows,
            "summary": f"{sum(r['equal'] for r in rows.values())}/{len(rows)} equal"}


def check_fold(device: torch.device, size: dict[str, Any], out: Path) -> dict[str, Any]:
    """The fp64 fold against the unfolded model, and the bf16 fold's error against fp64, at E = ``fold_E``."""
    E = size["fold_E"]
    torch.manual_seed(0)
    model = convert(cifar_resnet(size["fold_depth"], 16, 3, 10, 3), "lc", E=E, spatial="learnable", seed=0).model
    model = model.to(device=device, dtype=torch.float64).eval()
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
    with torch.no_grad():
        reference = model(x)
        folded = fold(model)
        fp64_error = float((folded(x) - reference).abs().max() / reference.abs().max())
        folded32 = folded.float()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            low = folded32(x.float()).double()
        bf16_error = float((low - reference).abs().max() / reference.abs().max())
    passed = fp64_error < 1e-10 and math.isfinite(bf16_error) and bf16_error < 0.1
    return {"passed": passed, "E": E, "fp64_fold_rel_error": fp64_error, "bf16_fold_rel_error": bf16_error,
            "summary": f"E={E}: fp64 {fp64_error:.1e}, bf16 {bf16_error:.1e}"}


def _cells(result: Any) -> list[dict[str, Any]]:
    rows = []
    for cell in result.cells:
        costs, prov = cell.costs, cell.provenance
        measured, predicted = costs.get("peak_memory_mb"), costs.get("predicted_peak_memory_mb")
        rows.append({"cell": cell.id, "status": cell.status,
                     "digest_unchanged": cell.frozen_digest_before == cell.frozen_digest_after,
                     "frozen_digest": cell.frozen_digest_after, "evaluated_digests": prov.get("frozen_digests"),
                     "precision": prov.get("precision"), "peak_memory_mb": measured, "peak_memory_kind": costs.get("peak_memory_kind"),
                     "predicted_peak_memory_mb": predicted,
                     "measured_over_predicted": measured / predicted if measured and predicted else None,
                     "metrics": {k: v for k, v in cell.metrics.items() if isinstance(v, float)}})
    return rows


def _run(task: str, device: torch.device, out: Path, name: str, size: dict[str, Any], **settings: Any) -> Any:
    overrides = {**size["tasks"].get(task, {}), **settings}
    return lcdense.run(task, device=str(device), out=str(out / task), name=name, quiet=True, analysis=False, epochs=1,
                       seeds=[0], **{"run.cache_dir": str(out.parent / "cache")}, **overrides)


def check_task(task: str) -> Callable[[torch.device, dict[str, Any], Path], dict[str, Any]]:
    def check(device: torch.device, size: dict[str, Any], out: Path) -> dict[str, Any]:
        """The task's embedded default on the device: digests, precision provenance, planned against measured peak."""
        result = _run(task, device, out / "tasks", task, size, variants=size["variants"], E=[size["task_E"]])
        RESULTS[f"task:{task}"] = result
        cells = _cells(result)
        passed = result.complete and all(c["digest_unchanged"] and c["precision"]["fp32_math"] for c in cells)
        ratios = [c["measured_over_predicted"] for c in cells if c["measured_over_predicted"]]
        return {"passed": passed, "cells": cells, "run_dir": str(result.run_dir),
                "summary": f"{len(cells)} cells; precision {cells[0]['precision']['train']}/{cells[0]['precision']['eval']} "
                           f"({cells[0]['precision']['fp32_math']}); peak measured/predicted "
                           + ", ".join(f"{r:.2f}" for r in ratios)}
    check.__doc__ = f"{task}'s embedded default on the device"
    return check


def check_timm(device: torch.device, size: dict[str, Any], out: Path) -> dict[str, Any]:
    """The timm recipe at a tiny size with EMA and channels_last."""
    result = _run("classification", device, out / "tasks", "timm", size, variants=["lc-frozen"], E=[size["task_E"]],
                  **{"data.dataset": "embedded-imagefolder", "data.train_limit": None, "data.val_limit": None, "data.image_size": size["timm_image"],
                            "train.recipe": "timm", "train.batch_size": size["timm_batch"],
                            "eval.batch_size": size["timm_batch"], "train.lr": 1e-3, "train.warmup_epochs": 0,
                            "train.timm.ema": True, "train.timm.channels_last": True})
    cells = _cells(result)
    training = result.cells[0].extra_metrics.get("training", {}) if result.cells else {}
    digests = cells[0]["evaluated_digests"] if cells else {}
    passed = (result.complete and cells[0]["digest_unchanged"] and training.get("channels_last") is True
              and training.get("ema") is not None and digests.get("ema") == digests.get("model"))
    return {"passed": passed, "cells": cells, "training": training,
            "summary": f"EMA digest {'=' if digests.get('ema') == digests.get('model') else '!='} model's; "
                       f"channels_last {training.get('channels_last')}; optimizer {training.get('optimizer')}"}


def check_dry_run(device: torch.device, size: dict[str, Any], out: Path) -> dict[str, Any]:
    """The plan of lc-learnable@E ResNet-18d (tiny: ResNet-10t) against a real training step; an absurd E refused
    before allocation."""
    E, image, batch = size["step_E"], size["step_image"], size["step_batch"]
    cuda = device.type == "cuda"
    fp = Footprint(batch_size=batch, input_size=(3, image, image), optimizer="sgd", momentum=0.9, weight_decay=5e-5,
                   amp=cuda, channels_last=True)
    lc = lambda m: convert(m, "lc", E=E, spatial="learnable", seed=0)  # noqa: E731
    torch.manual_seed(0)
    base = create_model(size["step_model"], num_classes=1000)
    planned = estimate(base, fp, convert=lc, device=device, name=f"lc-learnable@{E}")
    model = lc(copy.deepcopy(base)).model.to(device).to(memory_format=torch.channels_last)  # convert works in place
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9, weight_decay=5e-5,
                          foreach=cuda)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, image, image, generator=gen).to(device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    times = []
    with PeakMemory(device, held=[*model.parameters(), *model.buffers()]) as peak:
        for _ in range(2):  # two steps: the second holds the optimizer state, as the plan does
            began = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - began)
    measured = peak.peak_mb * 2**20
    del model, opt, x, y
    # the refusal: a bank no device holds, refused on fake tensors, before any real allocation
    before = torch.cuda.memory_allocated(device) if cuda else None
    absurd = 10**6
    try:
        check_cell(base, fp, {"run": {"max_memory": None}}, lambda m: convert(m, "lc", E=absurd, spatial="learnable", seed=0),
                   device, name=f"lc-learnable@{absurd}__seed0", expansion=absurd, spatial="learnable")
        refusal = None
    except LcdenseError as exc:
        refusal = str(exc)
    after = torch.cuda.memory_allocated(device) if cuda else None
    ratio = measured / planned.peak_bytes
    passed = refusal is not None and "\n" not in refusal and before == after and 0.5 < ratio < 1.5
    return {"passed": passed, "model": size["step_model"], "E": E, "image": image, "batch": batch, "predicted_peak_bytes": planned.peak_bytes,
            "predicted_train_peak_bytes": planned.train_peak_bytes, "measured_peak_bytes": measured,
            "peak_kind": peak.kind, "measured_over_predicted": ratio, "step_seconds": times,
            "refusal": refusal, "allocated_before_after_refusal": [before, after],
            "summary": f"lc-learnable@{E}: predicted {format_bytes(planned.train_peak_bytes)}, measured "
                       f"{format_bytes(measured)} ({ratio:.2f}); E={absurd} {'refused' if refusal else 'NOT refused'}"}


class _OneRankGroup(World):
    """A world of one rank that still goes through the collectives (a plain one-rank World skips them)."""

    @property
    def active(self) -> bool:
        return True


def check_collectives(device: torch.device, size: dict[str, Any], out: Path) -> dict[str, Any]:
    """A world-size-1 group (NCCL on CUDA, gloo on CPU) through every collective of :class:`lcdense.World`."""
    import torch.distributed as dist

    if dist.is_initialized():
        return {"passed": False, "summary": "a process group already exists in this process"}
    backend = "nccl" if device.type == "cuda" else "gloo"
    store = Path(tempfile.mkdtemp(dir=out)) / "store"
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL binds the group to the current device
    dist.init_process_group(backend, init_method=f"file://{store.resolve()}", rank=0, world_size=1)
    try:
        world, seen = _OneRankGroup(), {}
        seen["gather"] = world.gather({"rank": 0}) == [{"rank": 0}]
        seen["mean"] = world.mean(2.5) == 2.5
        seen["on_main"] = world.on_main(lambda: 7) == 7
        try:
            world.on_main(lambda: (_ for _ in ()).throw(LcdenseError("rank 0 refused")))
            seen["on_main_error"] = False
        except LcdenseError as exc:
            seen["on_main_error"] = str(exc) == "rank 0 refused"
        world.barrier()
        seen["barrier"] = True
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                  torch.nn.LazyLinear(2)).to(device)
        x = torch.rand(4, 3, 8, 8, device=device)
        net(x)
        stats = net[1].running_mean.clone()
        world.average_running_stats(net)
        seen["all_reduce"] = bool(torch.equal(stats, net[1].running_mean))
        ddp = world.data_parallel(net, device)
        ddp(x).sum().backward()
        seen["ddp"] = isinstance(ddp, torch.nn.parallel.DistributedDataParallel) and net[0].weight.grad is not None
    finally:
        dist.destroy_process_group()
    return {"passed": all(seen.values()), "backend": backend, "collectives": seen,
            "summary": f"{backend}: " + ", ".join(k for k, v in seen.items() if v)
                       + ("" if all(seen.values()) else "; FAILED: " + ", ".join(k for k, v in seen.items() if not v))}


def check_repeat(device: torch.device, size: dict[str, Any], out: Path) -> dict[str, Any]:
    """One classification cell trained again (after ``task:classification``, or twice): how far apart the
    device's results are (measured, not judged)."""
    cell_id = f"lc-frozen@{size['task_E']}__seed0"
    first = RESULTS.get("task:classification")
    runs = [] if first is not None else [_run("classification", device, out / "repeat", "repeat0", size,
                                              variants=["lc-frozen"], E=[size["task_E"]])]
    runs.append(_run("classification", device, out / "repeat", "repeat1", size, variants=["lc-frozen"], E=[size["task_E"]]))
    cells = [c for r in ([first] if first is not None else []) + runs for c in r.cells if c.id == cell_id]
    a, b = cells
    loss = [abs(x["train_loss"] - y["train_loss"]) for x, y in zip(a.history, b.history)]
    metrics = {k: abs(a.metrics[k] - b.metrics[k]) for k in a.metrics if isinstance(a.metrics[k], float) and k in b.metrics}
    identical = max(loss + list(metrics.values()), default=0.0) == 0.0
    return {"passed": a.frozen_digest_after == b.frozen_digest_after, "cell": cell_id, "bitwise_identical": identical,
            "train_loss_abs_diff": loss, "metric_abs_diff": metrics,
            "summary": ("bitwise identical" if identical else
                        f"differ: train loss {max(loss):.2e}, metrics up to {max(metrics.values(), default=0.0):.2e}")}


#: the run results of the task checks, for the repeated cell
RESULTS: dict[str, Any] = {}


CHECKS: dict[str, Callable[[torch.device, dict[str, Any], Path], dict[str, Any]]] = {
    "filters": check_filters, "fold": check_fold, **{f"task:{t}": check_task(t) for t in TASKS}, "timm": check_timm,
    "dry-run": check_dry_run, "collectives": check_collectives, "repeat": check_repeat,
}


def environment(device: torch.device) -> dict[str, Any]:
    info = {"lcdense": lcdense.__version__, "torch": torch.__version__, "device": str(device),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": sys.version.split()[0]}
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), capability=list(torch.cuda.get_device_capability(device)),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| check | result | seconds | details |", "|---|---|---:|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {'ok' if r['passed'] else 'FAILED'} | {r['seconds']:.1f} | {r['summary']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (the suite's CPU run)")
    p.add_argument("--out", default="gpu-validate", help="folder for the runs, gpu_validate.json and gpu_validate.md")
    p.add_argument("--only", default=None, help=f"comma-separated checks of: {', '.join(CHECKS)}")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    size = SIZES["tiny" if args.tiny else "gpu"]
    chosen = args.only.split(",") if args.only else list(CHECKS)
    unknown = [c for c in chosen if c not in CHECKS]
    if unknown:
        print(f"gpu_validate: unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    results: dict[str, dict[str, Any]] = {}
    began = time.perf_counter()
    for name in chosen:
        start = time.perf_counter()
        try:
            results[name] = CHECKS[name](device, size, out)
        except Exception as exc:  # one failing check must not lose the others' results
            results[name] = {"passed": False, "summary": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                             "traceback": traceback.format_exc()}
        results[name]["seconds"] = time.perf_counter() - start
        print(f"{name}: {'ok' if results[name]['passed'] else 'FAILED'} ({results[name]['seconds']:.1f} s) "
              f"{results[name]['summary']}", flush=True)
    report = {"environment": environment(device), "size": "tiny" if args.tiny else "gpu",
              "seconds": time.perf_counter() - began, "passed": all(r["passed"] for r in results.values()),
              "checks": results}
    write_json(out / "gpu_validate.json", report)
    text = table(results)
    write_text(out / "gpu_validate.md", f"# gpu_validate on {report['environment'].get('gpu', str(device))}\n\n{text}\n")
    print(text)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
