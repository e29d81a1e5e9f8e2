"""ultralytics' ``freeze=N`` training argument, as groups for the presets ``ultralytics.freeze_N``.

The trainer (``ultralytics/engine/trainer.py``) freezes every parameter whose name holds ``model.i.``
for ``i < N``, and, always, those whose name holds ``.dfl`` (the detection head's fixed DFL
convolution); in training it holds the BatchNorm layers of those modules in eval. The presets freeze
the same parameters as the group ``frozen_layers``, the layers' BatchNorm held in eval as every frozen
norm is; the detected groups come along.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..detect import detect_groups
from ..detect.ultralytics import is_yolo_model
from ..errors import PresetError
from ..groups import is_within

__all__ = ["freeze_layers", "FROZEN_LAYERS", "MAX_FREEZE"]

FROZEN_LAYERS = "frozen_layers"
MAX_FREEZE = 42  # presets freeze_0 ... freeze_42: every N that leaves a layer to train in a model ultralytics ships
# a yaml for (the largest, YOLOv9e, has 43 layers)


def freeze_layers(n: int) -> Callable[[nn.Module], dict[str, tuple[str, ...]]]:
    """The groups function of the preset for ``freeze=n``.

    Example:
        >>> import os; _ = os.environ.setdefault("YOLO_OFFLINE", "1")
        >>> from ultralytics.nn.tasks import DetectionModel
        >>> freeze_layers(3)(DetectionModel("yolov8n.yaml", verbose=False))[FROZEN_LAYERS]
        ('model.0', 'model.1', 'model.2', 'model.22.dfl')
    """

    def groups(model: nn.Module) -> dict[str, tuple[str, ...]]:
        prefix, yolo = _yolo(model, n)
        count = len(yolo.get_submodule("model"))
        if not 0 <= n < count:
            raise PresetError(f"ultralytics.freeze_{n}: freeze={n} leaves nothing of this {count}-layer "
                              f"{type(yolo).__name__} to train (the trainer refuses it too); N in 0..{count - 1}")
        layers = [f"model.{i}" for i in range(n) if any(True for _ in yolo.get_submodule(f"model.{i}").parameters())]
        dfl = [name for name, module in yolo.named_modules() if name.endswith(".dfl")
               and any(True for _ in module.parameters()) and not is_within(name, layers)]
        return {**detect_groups(model), FROZEN_LAYERS: tuple(prefix + name for name in layers + dfl)}

    return groups


def _yolo(model: nn.Module, n: int) -> tuple[str, nn.Module]:
    """The YOLO model in ``model`` (itself, or the one an ``ultralytics.YOLO`` holds) and the prefix of its names."""
    for name, module in model.named_modules():
        if is_yolo_model(module):
            return (f"{name}." if name else ""), module
    raise PresetError(f"ultralytics.freeze_{n} fits ultralytics YOLO models (a DetectionModel, SegmentationModel, "
                      f"ClassificationModel... or the YOLO holding one), not {type(model).__name__}")
