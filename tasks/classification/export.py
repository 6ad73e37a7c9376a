"""A trained classification model as a plain checkpoint of its own library (``lcdense export``).

The folded model's network (every LC-Block a plain conv; the input normalisation, which lcdense
keeps inside the model, goes into the config beside the weights) is written as:

- a timm model (``timm:NAME``): ``model.safetensors`` and timm's ``config.json`` (architecture,
  classes, mean/std), loaded into timm's own model, from the file only::

      model = timm.create_model(NAME, num_classes=N)
      model.load_state_dict(safetensors.torch.load_file("model.safetensors"))

- a torchvision model: ``model.pth`` (its ``state_dict``) and ``config.json``, loaded with
  ``torchvision.models.get_model(NAME, num_classes=N).load_state_dict(torch.load("model.pth"))``;
- the paper's CIFAR ResNet (``resnet_lc``, lcdense's own): ``model.safetensors`` for
  ``lcdense.cifar_resnet(**config["args"])``, no LC-Block or conversion needed.

>>> sorted(library_of("timm:resnet18d")), library_of("resnet18"), library_of("resnet_lc")
(['resnet18d', 'timm'], ('torchvision', 'resnet18'), ('lcdense', 'resnet_lc'))
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn


def library_of(name: str) -> tuple[str, str]:
    """(library, architecture) of a ``model.name``: ``timm``, ``torchvision`` or ``lcdense``."""
    if name == "resnet_lc":
        return "lcdense", name
    source, _, bare = name.rpartition(":")
    if source == "timm":
        return "timm", bare
    import torchvision

    if bare in torchvision.models.list_models(module=torchvision.models):
        return "torchvision", bare
    return "timm", bare  # create_model looks a bare name up in timm when torchvision lacks it


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def export_model(model: nn.Module, config: dict[str, Any], facts: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Write the folded classifier ``model`` (a ``Normalized`` wrapper) into ``folder``.

    Args:
        model: The trained, folded model.
        config: The cell's config.
        facts: The cell's model facts (classes, channels, mean, std).
        folder: An existing, empty folder.

    Returns:
        The library's name → the weights file to load.
    """
    from safetensors.torch import save_file

    library, arch = library_of(config["model"]["name"])
    state = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    classes, mean, std = int(facts["classes"]), list(facts["mean"]), list(facts["std"])
    if library == "torchvision":
        torch.save(state, folder / "model.pth")
        _write_json(folder / "config.json", {"library": "torchvision", "architecture": arch, "num_classes": classes,
                                             "mean": mean, "std": std})
        return {"torchvision": folder / "model.pth"}
    save_file(state, str(folder / "model.safetensors"))
    if library == "timm":
        _write_json(folder / "config.json", {"architecture": arch, "num_classes": classes, "pretrained_cfg": {
            "num_classes": classes, "mean": mean, "std": std, "input_size": [int(facts["channels"]), 32, 32]
            if config["data"]["dataset"] not in ("imagefolder", "embedded-imagefolder")
            else [3, int(config["data"]["image_size"]), int(config["data"]["image_size"])]}})
        return {"timm": folder / "model.safetensors"}
    m = config["model"]
    args = {"depth": int(m["depth"]), "width": int(m["width"]), "kernel_size": int(m["kernel_size"]),
            "num_classes": classes, "in_channels": int(facts["channels"])}
    _write_json(folder / "config.json", {"library": "lcdense", "builder": "lcdense.cifar_resnet", "args": args,
                                         "mean": mean, "std": std})
    return {"lcdense": folder / "model.safetensors"}
