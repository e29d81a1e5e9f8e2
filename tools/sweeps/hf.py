"""Every architecture of transformers' sequence- and image-classification auto mappings, built from its default
config with at most 4 layers (the layer counts are what the groups depend on) on the meta device (no memory, no
weights), and checked: it has a ``stem``, blocks and a ``head`` (a model of several parts: a part's stem and blocks,
``encoder.stem``), and the groups that are no umbrella (``backbone``, a part's own group) cover every parameter.

    python tools/sweep.py hf                 # 173 architectures (about a minute)

Right: all of that holds. Absent: the groups a documented architecture lacks, and only those (``ABSENT``: ALBERT's
one shared layer, Perceiver's head inside its base model, PVT's and SegFormer's patch embedding in each stage).
Wrong: anything else missing, a parameter in no group, detection failing. Skipped: a default config that
transformers itself cannot build (an optional library missing, an invalid default): no detection can run on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from freezable.detect import detect_groups
from freezable.groups import part_of, resolve_group

from .report import Row

__all__ = ["ABSENT", "Result", "architectures", "check_architecture", "sweep", "rows"]

# model_type -> (what its groups lack, why): the documented absences; anything else missing is wrong
ABSENT = {
    "albert": (("stem", "blocks"), "one layer shared by every depth: no blocks to tell apart, nor a stem before them"),
    "perceiver": (("head",), "its task head is the base model's decoder (perceiver.decoder), inside the backbone"),
    "pvt": (("stem",), "its patch embeddings sit in each stage: no stem can be told apart without a forward"),
    "pvt_v2": (("stem",), "its patch embeddings sit in each stage: no stem can be told apart without a forward"),
    "segformer": (("stem",), "its patch embeddings sit in each stage: no stem can be told apart without a forward"),
}

_LAYER_KEYS = ("num_hidden_layers", "num_layers", "n_layer", "n_layers", "encoder_layers", "decoder_layers",
               "num_decoder_layers", "num_encoder_layers")
_MAX_LAYERS = 4


@dataclass(frozen=True)
class Result:
    """What the sweep found for one architecture."""

    task: str  # "sequence" or "image" classification
    model_type: str  # the config's model_type, the mapping's key
    architecture: str  # the class name
    groups: tuple[str, ...] = ()  # the groups found
    reason: str = ""  # why it is not covered; empty when it is
    status: str = "right"  # "right", "absent" (documented in ABSENT), "wrong" or "skipped" (does not build)

    @property
    def covered(self) -> bool:
        return not self.reason

    def row(self) -> Row:
        return Row(f"transformers {self.task} classification", self.architecture, self.status,
                   (self.reason,) if self.reason else ())


def architectures() -> list[tuple[str, str, str]]:
    """``(task, model_type, class name)`` for every class of the two auto mappings, in mapping order."""
    from transformers.models.auto import modeling_auto

    found = []
    for task, mapping in (("sequence", modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES),
                          ("image", modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)):
        for model_type, names in mapping.items():
            for name in (names,) if isinstance(names, str) else names:
                found.append((task, model_type, name))
    return found


def tiny_config(model_type: str):
    """The default config of ``model_type`` with at most 4 layers (in every stack of a composite config)."""
    import transformers

    config = transformers.CONFIG_MAPPING[model_type]()
    for sub in [config] + [getattr(config, k) for k in dir(config) if k.endswith("_config")
                           and isinstance(getattr(config, k, None), transformers.PretrainedConfig)]:
        for key in _LAYER_KEYS:
            value = getattr(sub, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > _MAX_LAYERS:
                try:
                    setattr(sub, key, _MAX_LAYERS)
                except NotImplementedError:  # Funnel: its layers come from block_sizes
                    pass
        _complete(sub)
    return config


def _complete(config) -> None:
    """Fills the sizes a few default configs leave ``None`` with what their models assume by default."""
    heads, hidden = getattr(config, "num_attention_heads", None), getattr(config, "hidden_size", None)
    if getattr(config, "head_dim", 0) is None and isinstance(heads, int) and isinstance(hidden, int):
        config.head_dim = hidden // heads
    if getattr(config, "num_key_value_heads", 0) is None and isinstance(heads, int):
        config.num_key_value_heads = heads
    if getattr(config, "vocab_size", 0) is None:
        config.vocab_size = 32


def build(model_type: str, name: str) -> nn.Module:
    """The architecture ``name`` built from its tiny default config, on the meta device."""
    import transformers

    cls = getattr(transformers, name)
    with torch.device("meta"):
        return cls(tiny_config(model_type))


def check_architecture(task: str, model_type: str, name: str) -> Result:
    """Builds one architecture and checks its groups (never raises: a failure is the result's reason)."""
    try:
        model = build(model_type, name)
    except Exception as e:  # noqa: BLE001 - a model that does not build is a result, not a crash
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
        first = first.split(". ")[0].rstrip(".") + "."  # its first sentence
        return Result(task, model_type, name, status="skipped",
                      reason=f"does not build from its default config: {type(e).__name__}: {first[:160]}")
    try:
        groups = detect_groups(model)
        for group, names in groups.items():
            resolve_group(model, group, list(names))
    except Exception as e:  # noqa: BLE001
        return Result(task, model_type, name, status="wrong", reason=f"detection failed: {type(e).__name__}: {e}")
    kinds = {part_of(g)[1] for g in groups}
    missing = [g for g in ("stem", "head") if g not in groups and g not in kinds]
    if "block" not in kinds:
        missing.append("blocks")
    if missing:
        lacks, why = ABSENT.get(model_type, ((), ""))
        if tuple(missing) == lacks:
            return Result(task, model_type, name, tuple(groups), f"no {' or '.join(missing)}: {why}", "absent")
        said = f" (documented: no {' or '.join(lacks)})" if lacks else ""
        return Result(task, model_type, name, tuple(groups), f"no {' or '.join(missing)}{said}", "wrong")
    # every parameter in a group that is no umbrella (backbone, a part: vision_model)
    umbrellas = {"backbone"} | {part_of(g)[0] for g in groups}
    covered = {id(p) for g, names in groups.items() if g not in umbrellas for p in _parameters(model, names)}
    left = [n for n, p in model.named_parameters() if id(p) not in covered]
    if left:
        return Result(task, model_type, name, tuple(groups),
                      f"{len(left)} parameter(s) in no stem, block or head group: {left[:3]}", "wrong")
    if model_type in ABSENT:
        return Result(task, model_type, name, tuple(groups),
                      f"documented without {' or '.join(ABSENT[model_type][0])}, yet it has them all", "wrong")
    return Result(task, model_type, name, groups=tuple(groups))


def _parameters(model: nn.Module, names: tuple[str, ...]):
    modules = dict(model.named_modules())
    for name in names:
        if name in modules:
            yield from modules[name].parameters()
        else:
            yield model.get_parameter(name)


def sweep(sample: list[tuple[str, str, str]] | None = None) -> list[Result]:
    """:func:`check_architecture` over ``sample`` (default: every architecture of the two mappings)."""
    import transformers

    transformers.logging.set_verbosity_error()
    return [check_architecture(*arch) for arch in (architectures() if sample is None else sample)]


def rows(results: list[Result]) -> list[Row]:
    """The sweep's rows in the shared report format."""
    return [r.row() for r in results]
