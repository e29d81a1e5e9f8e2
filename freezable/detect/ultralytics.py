"""ultralytics YOLO models (``ultralytics.nn.tasks.BaseModel``: detection, segmentation, classification, pose, OBB).

A YOLO model is the ``nn.Sequential`` ``model.model`` of the layers its yaml lists, ``model.model[i]`` for
the yaml's row ``i``: first the rows of its ``backbone`` section, then those of its ``head`` section (the
yaml as parsed is ``model.yaml``). :func:`ultralytics_groups` names, by those indices:

* ``layer0`` ... ``layerN``: ``model.i``, under ultralytics' own index (the one ``freeze=[i]`` and the
  printed model table use); a layer without parameters (``Upsample``, ``Concat``) has no group;
* ``task_head``: the last layer, ``Detect`` / ``Segment`` / ``Pose`` / ``OBB`` / ``Classify``, what a new
  task or class count replaces;
* ``head``: the yaml's ``head`` section (the neck's layers and the task head, as ultralytics names it);
* ``backbone``: the yaml's ``backbone`` section.

``ultralytics.freeze_N`` (:mod:`freezable.presets.ultralytics`) freezes what the trainer's ``freeze=N``
freezes. The DFL convolution a detection head holds is built frozen (``requires_grad=False``, never
trained): it stays frozen whatever is unfrozen (see ``Freezable.unfreeze(built_frozen=)``).

ultralytics is never imported here: a model of it can only exist when it is in ``sys.modules``.
"""

from __future__ import annotations


from torch import nn

from ._parts import Groups, has_params, instance_of

__all__ = ["ultralytics_groups", "is_yolo_model", "yolo_layers"]


def is_yolo_model(model: object) -> bool:
    """Whether ``model`` is an ultralytics ``BaseModel`` with its layers in ``model.model`` (without importing it)."""
    layers = getattr(model, "model", None)
    return instance_of(model, "ultralytics.nn.tasks", "BaseModel") and isinstance(layers, nn.Sequential)


def yolo_layers(model: nn.Module) -> list[tuple[int, str]]:
    """``(index, name)`` of the layers of a YOLO model that hold parameters, in order."""
    return [(int(i), f"model.{i}") for i, layer in model.get_submodule("model").named_children() if has_params(layer)]


def ultralytics_groups(model: nn.Module) -> Groups | None:
    """The groups of an ultralytics YOLO model, or ``None`` when ``model`` is not one.

    Example:
        >>> import os; _ = os.environ.setdefault("YOLO_OFFLINE", "1")  # no connectivity check on import
        >>> from ultralytics.nn.tasks import DetectionModel
        >>> groups = ultralytics_groups(DetectionModel("yolov8n.yaml", verbose=False))
        >>> groups["layer0"], groups["task_head"], groups["backbone"][-1], groups["head"][0]
        (('model.0',), ('model.22',), 'model.9', 'model.12')
        >>> "layer10" in groups  # an Upsample: no parameters, no group
        False
    """
    if not is_yolo_model(model):
        return None
    layers = yolo_layers(model)
    if not layers:
        return {}
    groups: Groups = {f"layer{i}": (name,) for i, name in layers}
    last = len(model.get_submodule("model")) - 1
    if layers[-1][0] == last:
        groups["task_head"] = (layers[-1][1],)
    sections = getattr(model, "yaml", None)
    if isinstance(sections, dict) and all(isinstance(sections.get(k), list) for k in ("backbone", "head")):
        cut = len(sections["backbone"])
        if cut + len(sections["head"]) == last + 1:  # the yaml lists every layer: its sections are the model's
            head = tuple(name for i, name in layers if i >= cut)
            backbone = tuple(name for i, name in layers if i < cut)
            if head:
                groups["head"] = head
            if backbone:
                groups["backbone"] = backbone
    return groups
