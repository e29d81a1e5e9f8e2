"""Other libraries' own notion of their models' parts: smp's stage split and ``freeze_encoder()``, ultralytics' yaml
sections and its trainer's ``freeze=N``, diffusers' blocks and autoencoder parts, torchvision's feature extractors
against the model they came from. Each check reads the answer off the library (its attributes, its own freeze
function, its yaml, the order a real forward runs), never off detection.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from freezable.detect import detect_groups
from freezable.wrapper import FrozenBackbone

from .classifiers import features_only_problems, stage_problems
from .groups import Groups, attr_ids, attribute_problems, cover_problems, ids, parameter_names, staged, whole
from .order import part_order_problems
from .parts import library_freeze_problems, straddle_problems

__all__ = ["smp_feature_parameters", "smp_stage_problems", "smp_problems", "smp_freeze_problems",
           "yolo_trainer_freeze", "yolo_sections", "ultralytics_problems", "ultralytics_freeze_problems",
           "diffusers_problems", "origin_problems"]


# -- segmentation_models_pytorch: its encoders' stage split, its parts, freeze_encoder() -------------------


def smp_feature_parameters(encoder: nn.Module, x: torch.Tensor) -> list[set[str]]:
    """For each feature map an smp encoder returns on ``x``, the parameters it depends on (those its autograd
    graph reaches); ``features[k]`` is at stride ``2 ** k``, or the encoder's output stride (checked)."""
    params = dict(encoder.named_parameters())
    with torch.enable_grad():
        features = encoder.eval()(x)
        found = []
        for k, feature in enumerate(features):
            stride = min(2 ** k, encoder.output_stride)  # a dilated encoder (DeepLabV3) stops at its output stride
            if feature.shape[-1] * stride != x.shape[-1]:
                raise AssertionError(f"smp feature {k} is at stride {x.shape[-1] / feature.shape[-1]}, not {stride}")
            if not feature.requires_grad:
                found.append(set())
                continue
            grads = torch.autograd.grad(feature.sum(), list(params.values()), allow_unused=True, retain_graph=True)
            found.append({n for n, g in zip(params, grads) if g is not None})
    return found


def smp_stage_problems(encoder: nn.Module, groups: Groups, x: torch.Tensor) -> list[str]:
    """An smp encoder's groups (named relative to it) are smp's own stage split: ``stem`` is what the
    stride-2 feature depends on, ``stage i`` what the stride-``2 ** (i + 1)`` feature adds; parameters no
    feature uses go with the last stage; blocks sit in the stages, in order."""
    used = smp_feature_parameters(encoder, x)
    pieces = [used[k] - (used[k - 1] if k else set()) for k in range(len(used))]
    expected = [pieces[0] | pieces[1]] + [p for p in pieces[2:] if p]
    unused = set(dict(encoder.named_parameters())) - set().union(*used)
    expected[-1] |= unused
    names = ["stem", *staged(groups, "stage")]
    got = [set(parameter_names(encoder, groups, g)) for g in names]
    problems = []
    if not expected[0]:  # no stride-2 feature of its own (a Mix Transformer): no stem
        expected, got = expected[1:], got[1:]
        if "stem" in groups:
            problems.append("a stem where smp's stride-2 feature is a placeholder")
    if got != expected:
        problems.append(f"stem and stages hold {[len(g) for g in got]} parameters, smp's feature split "
                        f"{[len(e) for e in expected]}")
    return problems + stage_problems(encoder, {**groups, "backbone": whole(encoder)})


def smp_problems(model: nn.Module, groups: Groups, x: torch.Tensor) -> list[str]:
    """An smp segmentation model: its parts are its attributes (``backbone`` is ``encoder``), the encoder's
    stages are smp's own split (a ``tu-`` encoder's: timm's own groups of its timm model, which may cut
    elsewhere than smp's feature maps), no stage or block straddles two parts, and the stages, the blocks and
    the parts run in that order."""
    parts = [p for p in ("encoder", "decoder", "segmentation_head", "classification_head")
             if getattr(model, p, None) is not None]
    problems = attribute_problems(model, groups, {**{p: [p] for p in parts}, "backbone": ["encoder"]})
    inner = {g: tuple(m.removeprefix("encoder.") for m in members) for g, members in groups.items()
             if g == "stem" or g[:5] in ("stage", "block") and g[5:].isdigit()}
    timm_model = getattr(model.encoder, "model", None)
    if type(model.encoder).__name__ == "TimmUniversalEncoder" and timm_model is not None:  # timm's own groups
        import timm

        classifier = timm.create_model(timm_model.pretrained_cfg["architecture"], pretrained=False)
        own = {g: tuple(m.removeprefix("model.") for m in members) for g, members in inner.items()}
        problems += [f"timm's own: {p}" for p in features_only_problems(
            timm_model, {**own, "backbone": whole(timm_model)}, classifier, detect_groups(classifier))]
    else:
        problems += smp_stage_problems(model.encoder, inner, x)
    stages = ["stem", *staged(groups, "stage")]
    blocks = staged(groups, "block")
    problems += straddle_problems(model, groups, stages + blocks, {p: attr_ids(model, p) for p in parts})
    problems += part_order_problems(model, groups, {"encoder stages": stages, "encoder blocks": blocks,
                                                    "parts": parts}, lambda: model.eval()(x))
    return problems


def smp_freeze_problems(build: Callable[[], nn.Module], x: torch.Tensor) -> list[str]:
    """The preset ``smp.freeze_encoder`` freezes what ``model.freeze_encoder()`` freezes, norms held in eval alike."""
    def library(model: nn.Module) -> None:
        model.freeze_encoder()
        model.train()  # smp's train() leaves a frozen encoder's norm layers in eval

    return library_freeze_problems(build, library, lambda m: FrozenBackbone(m, preset="smp.freeze_encoder"),
                                   "smp.freeze_encoder", lambda m: m(x))


# -- ultralytics: model.model[i], the yaml's sections, the trainer's freeze=N --------------------------------


def yolo_trainer_freeze(model: nn.Module, n: int) -> nn.Module:
    """Freezes ``model`` (a YOLO ``BaseModel``) as the ultralytics trainer does for ``freeze=n`` and puts it in
    training mode as the trainer does: its own ``BaseTrainer._setup_train`` (cut short after freezing, before
    it builds data loaders) and ``_model_train``, on a trainer that holds ``model``. Returns ``model``."""
    from ultralytics.cfg import DEFAULT_CFG, get_cfg
    from ultralytics.engine.trainer import BaseTrainer
    from ultralytics.utils import LOGGER

    class Frozen(Exception):
        pass

    class FreezeOnly(BaseTrainer):
        def __init__(self) -> None:  # only what _setup_train reads before it freezes
            self.args = get_cfg(DEFAULT_CFG, {"freeze": n, "amp": False, "compile": False, "device": "cpu"})
            self.device, self.model, self.world_size, self.batch_size = torch.device("cpu"), model, 1, 16

        def setup_model(self) -> None:
            return None

        def set_model_attributes(self) -> None:
            pass

        def _build_train_pipeline(self) -> None:
            raise Frozen

    trainer = FreezeOnly()
    level = LOGGER.level
    LOGGER.setLevel("WARNING")  # it logs a line per frozen parameter
    try:
        trainer._setup_train()
    except Frozen:
        pass
    finally:
        LOGGER.setLevel(level)
    trainer._model_train()
    return model


def yolo_sections(model: nn.Module) -> tuple[list[int], list[int]]:
    """The layer indices of the yaml's ``backbone`` and ``head`` sections, read off the yaml file ultralytics
    loads (``yaml_model_load``), or ``model.yaml`` where the model came from a dict; each row's module is
    checked to be the class of ``model.model[i]``."""
    from ultralytics.nn.tasks import yaml_model_load

    spec = model.yaml
    if spec.get("yaml_file"):
        spec = yaml_model_load(spec["yaml_file"])
    rows = spec["backbone"] + spec["head"]
    layers = list(model.model)
    if len(rows) != len(layers):
        raise AssertionError(f"the yaml lists {len(rows)} layers, the model has {len(layers)}")
    for i, (row, layer) in enumerate(zip(rows, layers)):
        if str(row[2]).rpartition(".")[2] != type(layer).__name__:
            raise AssertionError(f"yaml row {i} is a {row[2]}, model.model[{i}] a {type(layer).__name__}")
    cut = len(spec["backbone"])
    return list(range(cut)), list(range(cut, len(layers)))


def ultralytics_problems(model: nn.Module, groups: Groups, x: torch.Tensor) -> list[str]:
    """A YOLO model: ``layer{i}`` is ``model.model[i]`` (absent without parameters), ``task_head`` the last layer,
    ``backbone`` and ``head`` the yaml's sections, each layer in one section, layers and sections in forward
    order, and ``ultralytics.freeze_N`` what the trainer's ``freeze=N`` freezes (N: 0, 1, the backbone, all but
    the last layer)."""
    backbone, head = yolo_sections(model)
    layers = list(model.model)
    expected = {f"layer{i}": [f"model.{i}"] for i in range(len(layers))}
    expected.update(task_head=[f"model.{len(layers) - 1}"], backbone=[f"model.{i}" for i in backbone],
                    head=[f"model.{i}" for i in head])
    problems = attribute_problems(model, groups, expected)
    layer_groups = [f"layer{i}" for i in range(len(layers)) if f"layer{i}" in groups]
    sections = {"backbone": attr_ids(model, *expected["backbone"]), "head": attr_ids(model, *expected["head"])}
    problems += straddle_problems(model, groups, layer_groups, sections)
    problems += part_order_problems(model, groups, {"layers": layer_groups, "sections": ["backbone", "head"]},
                                    lambda: model.eval()(x))
    return problems


def ultralytics_freeze_problems(build: Callable[[], nn.Module], ns: list[int], x: torch.Tensor) -> list[str]:
    """``ultralytics.freeze_N`` freezes what the trainer's ``freeze=N`` freezes, norms held in eval alike."""
    return [p for n in ns for p in library_freeze_problems(
        build, lambda m, n=n: yolo_trainer_freeze(m, n),
        lambda m, n=n: FrozenBackbone(m, preset=f"ultralytics.freeze_{n}"), f"ultralytics.freeze_{n}",
        lambda m: m(x))]


# -- diffusers: a UNet's blocks and an autoencoder's parts, by attribute ------------------------------------


def diffusers_problems(model: nn.Module, groups: Groups, run: Callable[[], object]) -> list[str]:
    """A UNet: ``down_block{i}``, ``mid_block``, ``up_block{i}`` are its blocks, stem and head its other children
    (input and output sides), all of them splitting the model and running stem, down, mid, up, head.
    An autoencoder: each part is its attribute, the parts split the model and run encoder first."""
    children = dict(model.named_children())
    if "down_blocks" in children:
        down = [f"down_block{i + 1}" for i in range(len(model.down_blocks))]
        up = [f"up_block{i + 1}" for i in range(len(model.up_blocks))]
        expected = {g: [f"down_blocks.{i}"] for i, g in enumerate(down)}
        expected.update({g: [f"up_blocks.{i}"] for i, g in enumerate(up)})
        expected.update(mid_block=["mid_block"] if model.mid_block is not None else [], down_blocks=["down_blocks"],
                        up_blocks=["up_blocks"], head=[n for n in ("conv_norm_out", "conv_out") if children.get(n)])
        order = ["stem", *down, "mid_block", *up, "head"]
    else:
        order = [n for n in ("encoder", "quant_conv", "quantize", "post_quant_conv", "decoder")
                 if children.get(n) is not None]
        expected = {n: [n] for n in order}
    return (attribute_problems(model, groups, expected) + cover_problems(model, groups, order)
            + part_order_problems(model, groups, {"model": order}, run))


# -- torchvision's feature extractors: the stages of the model they came from -------------------------------


def origin_problems(extractor: nn.Module, ours: Groups, original: nn.Module, theirs: Groups) -> list[str]:
    """A feature extractor's stem, stages and blocks are those of the model it was made from (whose modules it
    shares): the same parameters, restricted to those the extractor has; a group left empty is absent."""
    mine = {id(p) for p in extractor.parameters()}
    names = ["stem", *staged(theirs, "stage"), *staged(theirs, "block")]
    problems = [f"{extra} is not a group of the model it came from"
                for extra in [*staged(ours, "stage"), *staged(ours, "block")] if extra not in names]
    for name in names:
        expected = ids(original, theirs, name) & mine
        got = ids(extractor, ours, name)
        if got != expected:
            problems.append(f"{name} holds {len(got)} parameters, the model's (in the extractor) {len(expected)}")
    return problems
