"""Keep ultralytics offline and inside our directories.

ultralytics reads its switches when it is first imported, so :data:`OFFLINE_ENV` is applied by
``lcdense_tasks.detection`` before any ultralytics import (which this package only does lazily, through
:func:`load_ultralytics`):

- ``YOLO_OFFLINE=1``: ``utils.ONLINE`` is False, which disables the import-time probe, the pip
  update check, telemetry events and error reporting, and makes downloads fail fast;
- ``YOLO_AUTOINSTALL=0``: no pip installs from ``check_requirements``;
- ``YOLO_CONFIG_DIR``: the settings directory (settings.json, fonts) — set by
  :func:`load_ultralytics` to a directory under the task's cache dir, never ~/.config.

ultralytics' own experiment-tracker integrations (:data:`INTEGRATIONS`: MLflow, W&B, TensorBoard,
ClearML, Comet, DVC, Ray Tune) start whenever their package is importable, and MLflow's writes to
the working directory or to the user's ``MLFLOW_TRACKING_URI``; :func:`load_ultralytics` turns them
off in the settings file it owns (lcdense's own trackers are ``--logger``).

The plotting font (``Arial.ttf``, otherwise downloaded even offline) is pre-placed there from
matplotlib's bundled DejaVuSans. Training passes ``amp`` explicitly and never ``True`` (its check
downloads weights) and ``plots=False``.

>>> import os
>>> os.environ["YOLO_OFFLINE"]
'1'
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

from lcdense import LcdenseError, framework_output

OFFLINE_ENV: dict[str, str] = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0"}
INTEGRATIONS: tuple[str, ...] = ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")
os.environ.update(OFFLINE_ENV)


def _place_font(settings_dir: Path) -> None:
    font = settings_dir / "Arial.ttf"
    if not font.is_file():
        import matplotlib

        bundled = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        tmp = font.with_suffix(".tmp")
        shutil.copyfile(bundled, tmp)
        os.replace(tmp, font)


def load_ultralytics(cache_dir: Path) -> ModuleType:
    """Import ultralytics offline, with its settings under ``cache_dir/ultralytics`` (first import wins).

    Raises LcdenseError if ultralytics was already imported elsewhere with network access on.
    """
    if "ultralytics" not in sys.modules and "YOLO_CONFIG_DIR" not in os.environ:
        os.environ["YOLO_CONFIG_DIR"] = str(Path(cache_dir).resolve() / "ultralytics")
    if "ultralytics" not in sys.modules:  # its first import announces the settings file it creates: logged
        log = Path(cache_dir).resolve() / "ultralytics" / "import.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with framework_output(log, show=False):
            import ultralytics  # noqa: F401
    import ultralytics
    from ultralytics import utils

    if utils.ONLINE:
        raise LcdenseError("ultralytics was imported with network access on; import lcdense_tasks.detection first "
                           "or set YOLO_OFFLINE=1 in the environment")
    _place_font(utils.USER_CONFIG_DIR)
    if any(utils.SETTINGS.get(key) for key in INTEGRATIONS):
        utils.SETTINGS.update({key: False for key in INTEGRATIONS})
    return ultralytics
