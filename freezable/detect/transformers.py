"""Freeze groups of any Hugging Face ``transformers.PreTrainedModel``, read from what the model declares.

:func:`hf_groups` names, with no per-model table:

* ``stem``: the input side: what holds ``get_input_embeddings()`` (token, position, token-type and
  patch embeddings and their norm, as HF keeps them together: ``bert.embeddings``, ``vit.embeddings``),
  everything of the base model that comes before its first layer (GPT-2's ``wte``, ``wpe``), and
  whatever is named ``*embed*`` outside the layers (BART's ``layernorm_embedding``);
* ``block1`` ... ``blockN``: the layers in forward order, the modules whose class is one of the
  model's ``_no_split_modules`` and that sit in a ``ModuleList``; a final norm after the layers (GPT-2's
  ``ln_f``, Llama's ``norm``, ViT's ``layernorm``) goes with the last block before it;
* ``stage1`` ... ``stage4``: the blocks in four even stages (as many stages as blocks when there are
  fewer than four);
* ``head``: the task head, everything of the model outside its base model (``classifier``, ``score``,
  ``lm_head``, ``qa_outputs``, ``cls``...) and ``get_output_embeddings()``; and the base model's
  **pooler**: it only feeds the task head (BERT's ``[CLS]`` dense + tanh), so a linear probe trains it
  with the classifier. A bare base model (``BertModel``) has no head, and its pooler no group but
  ``backbone``;
* ``backbone``: the base model (the ``base_model_prefix`` attribute) less the pooler when it went to the
  head: an umbrella over the stem and the blocks.

Encoder-decoder models (``config.is_encoder_decoder``: T5, BART...) name their layers
``encoder_block1..N`` and ``decoder_block1..M`` (stages run over both, encoder first), plus the umbrellas
``encoder`` and ``decoder`` (``get_encoder()``, ``get_decoder()``), so either can be frozen alone.

Group order is that of every detector (:mod:`freezable.detect._parts`): ``stem, stage1 ... stage4``,
the blocks, then ``head``, ``encoder``, ``decoder``, ``backbone``. A stage that holds a single block is
the same set as that block; walks over groups (``freeze_to``, gradual unfreezing) take the block then
(:func:`freezable.groups.staged_names`).

A ``peft.PeftModel`` (LoRA and the like) gets the groups of the model it wraps, with the names seen
from the ``PeftModel`` (``base_model.model.bert.embeddings``...); the adapters' own parameters sit inside
the layers they adapt, so they belong to those layers' blocks.

transformers is never imported here: a model of it can only exist when it is in ``sys.modules``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from torch import nn

from ._parts import has_params, within

__all__ = ["hf_groups", "is_hf_model"]

_STAGES = 4


def is_hf_model(model: object) -> bool:
    """Whether ``model`` is a ``transformers.PreTrainedModel`` (without importing transformers)."""
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(model, transformers.PreTrainedModel)


def hf_groups(model: nn.Module) -> dict[str, tuple[str, ...]] | None:
    """Names the stem, blocks, stages, head and backbone of a Hugging Face model.

    Args:
        model: any module; a ``transformers.PreTrainedModel`` or a ``peft.PeftModel`` around one gets groups.

    Returns:
        An ordered dict of group name -> module and parameter names relative to ``model`` (see the
        module docstring), or ``None`` when ``model`` is no Hugging Face model (or transformers is absent).

    Example:
        >>> import torch, transformers
        >>> config = transformers.BertConfig(num_hidden_layers=4, hidden_size=32, num_attention_heads=2,
        ...                                  intermediate_size=64, vocab_size=100)
        >>> with torch.device("meta"):
        ...     bert = transformers.BertForSequenceClassification(config)
        >>> groups = hf_groups(bert)
        >>> list(groups)
        ['stem', 'stage1', 'stage2', 'stage3', 'stage4', 'block1', 'block2', 'block3', 'block4', 'head', 'backbone']
        >>> groups["stem"], groups["block2"], groups["head"]
        (('bert.embeddings',), ('bert.encoder.layer.1',), ('bert.pooler', 'classifier'))
        >>> groups["backbone"]
        ('bert.embeddings', 'bert.encoder')
        >>> hf_groups(torch.nn.Linear(2, 2)) is None
        True
    """
    inner = _peft_inner(model)
    if inner is not None:
        prefix = _name_of(model, inner)
        groups = _groups(inner)
        return {g: tuple(_join(prefix, n) for n in names) for g, names in groups.items()}
    if not is_hf_model(model):
        return None
    return _groups(model)


def _peft_inner(model: nn.Module) -> nn.Module | None:
    """The transformers model inside a ``peft.PeftModel``, else None."""
    peft = sys.modules.get("peft")
    if peft is None or not isinstance(model, peft.PeftModel):
        return None
    inner = model.get_base_model()
    return inner if is_hf_model(inner) else None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _name_of(root: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in root.named_modules() if m is module)


# -- reading the model ------------------------------------------------------------------------------


def _layers(base: nn.Module, prefix: str, classes: set[str]) -> list[str]:
    """Top-most modules of a ``_no_split_modules`` class that sit in a ModuleList or Sequential, in order."""
    layers: list[str] = []

    def visit(module: nn.Module, name: str) -> None:
        for cname, child in module.named_children():
            full = _join(name, cname)
            if type(child).__name__ in classes and isinstance(module, (nn.ModuleList, nn.Sequential)):
                layers.append(full)
            else:
                visit(child, full)

    visit(base, prefix)
    return layers


def _repeated(base: nn.Module, prefix: str) -> list[str]:
    """Without ``_no_split_modules``: the children of the top-most ModuleLists of two or more modules of one
    class with parameters (the repeated layers), in order."""
    layers: list[str] = []

    def visit(module: nn.Module, name: str) -> None:
        for cname, child in module.named_children():
            full = _join(name, cname)
            kinds = {type(c) for c in child.children()} if isinstance(child, nn.ModuleList) else set()
            if len(kinds) == 1 and len(child) > 1 and has_params(child) and "embed" not in cname.lower():
                layers.extend(_join(full, n) for n, _ in child.named_children())
            else:
                visit(child, full)

    visit(base, prefix)
    return layers


def _units(module: nn.Module, name: str, layers: set[str], holders: set[str]) -> Iterator[str]:
    """``module`` cut into layers, maximal layer-free subtrees and the loose parameters of layer holders."""
    for pname, _ in module.named_parameters(recurse=False):
        yield _join(name, pname)
    for cname, child in module.named_children():
        full = _join(name, cname)
        if full in holders and full not in layers:
            yield from _units(child, full, layers, holders)
        else:
            yield full


def _module_or_none(get: object) -> nn.Module | None:
    """What the model's ``get_input_embeddings``/``get_output_embeddings`` gives, when it gives a module."""
    if not callable(get):
        return None
    try:
        found = get()  # type: ignore[operator]
    except (NotImplementedError, AttributeError, ValueError):
        return None
    return found if isinstance(found, nn.Module) else None


def _groups(model: nn.Module) -> dict[str, tuple[str, ...]]:
    modules = {id(m): n for n, m in model.named_modules()}
    names = set(modules.values())
    base = model.base_model if isinstance(getattr(model, "base_model", None), nn.Module) else model
    base_name = modules.get(id(base), "")
    layers = _layers(base, base_name, set(getattr(model, "_no_split_modules", None) or ()))
    layers = layers or _repeated(base, base_name)
    inputs = _module_or_none(getattr(model, "get_input_embeddings", None))
    input_name = modules.get(id(inputs)) if inputs is not None else None
    if base is model and layers:  # no base-model attribute: the one child that holds the layers and the inputs
        holder = layers[0].partition(".")[0]
        if all(within(n, (holder,)) for n in layers + [input_name or holder]) and holder != layers[0]:
            base, base_name = model.get_submodule(holder), holder
    holders = {".".join(layer.split(".")[:i]) for layer in layers for i in range(1, layer.count(".") + 1)}
    holders |= {""} if layers else set()
    layers_set = set(layers)

    has_head = base is not model
    labels: dict[str, str] = {}  # unit -> "stem" | "head" | the layer it goes with
    last_in: dict[str, str] = {}  # holder -> the last layer seen inside it so far
    for unit in _units(base, base_name, set(layers), holders) if layers else ():
        leaf = unit.rpartition(".")[2]
        if unit in layers_set:
            labels[unit] = unit
            last_in.update((holder, unit) for holder in holders if within(unit, (holder,)))
        elif has_head and "pooler" in leaf and unit in names and has_params(model.get_submodule(unit)):
            labels[unit] = "head"
        elif input_name is not None and within(input_name, (unit,)):
            labels[unit] = "stem"
        elif "embed" in leaf.lower():  # a list of them (PVT's per-stage patch embeddings) is no stem
            if not isinstance(model.get_submodule(unit) if unit in names else None, (nn.ModuleList, nn.ModuleDict)):
                labels[unit] = "stem"
        else:  # after a layer of the same holder: a final norm, with that layer; before any: the stem
            labels[unit] = last_in.get(unit.rpartition(".")[0], "stem")

    head = [] if not has_head else [
        name for name, child in model.named_children() if child is not base and has_params(child)
    ] + [name for name, _ in model.named_parameters(recurse=False)]
    outputs = _module_or_none(getattr(model, "get_output_embeddings", None))
    if outputs is None and base is not model:  # a wrapper that only its base model's lm_head serves (ShieldGemma2)
        outputs = _module_or_none(getattr(base, "get_output_embeddings", None))
    output_name = modules.get(id(outputs)) if outputs is not None else None
    if output_name and not within(output_name, head) and output_name in labels:
        labels[output_name] = "head"  # an output projection the base model holds (a multimodal wrapper's lm_head)
    pooled = [unit for unit, label in labels.items() if label == "head"]
    backbone = _complement(base, base_name, pooled) if has_head else []

    encoder_decoder = _encoder_decoder(model, modules, layers)
    return _assemble(labels, layers, pooled + head, backbone, encoder_decoder)


def _complement(module: nn.Module, name: str, left_out: list[str]) -> list[str]:
    """Top-most names of everything in ``module`` (called ``name``) outside ``left_out``."""
    if not left_out:
        return [name]
    names = [_join(name, p) for p, _ in module.named_parameters(recurse=False)]
    for cname, child in module.named_children():
        full = _join(name, cname)
        if full in left_out:
            continue
        names += _complement(child, full, left_out) if any(within(x, (full,)) for x in left_out) else [full]
    return names


def _encoder_decoder(model: nn.Module, modules: dict[int, str], layers: list[str]) -> dict[str, str]:
    """``{"encoder": name, "decoder": name}`` of an encoder-decoder model whose layers split between them."""
    config = getattr(model, "config", None)
    if not getattr(config, "is_encoder_decoder", False):
        return {}
    found = {}
    for part in ("encoder", "decoder"):
        module = _module_or_none(getattr(model, f"get_{part}", None))
        name = modules.get(id(module)) if module is not None and module is not model else None
        if name and any(within(layer, (name,)) for layer in layers):
            found[part] = name
    return found if len(found) == 2 else {}


def _assemble(labels: dict[str, str], layers: list[str], head: list[str], backbone: list[str],
              encoder_decoder: dict[str, str]) -> dict[str, tuple[str, ...]]:
    members: dict[str, list[str]] = {layer: [] for layer in layers}
    stem: list[str] = []
    for unit, label in labels.items():
        if label == "stem":
            stem.append(unit)
        elif label in members:
            members[label].append(unit)
    blocks = [members[layer] for layer in layers]

    def block_name(index: int, layer: str) -> str:
        for part, name in encoder_decoder.items():
            if within(layer, (name,)):
                return f"{part}_block{1 + sum(within(x, (name,)) for x in layers[:index])}"
        return f"block{index + 1}"

    groups: dict[str, tuple[str, ...]] = {}
    if stem:
        groups["stem"] = tuple(stem)
    n = len(blocks)
    stages = min(_STAGES, n)
    for s in range(stages):
        lo, hi = s * n // stages, (s + 1) * n // stages
        groups[f"stage{s + 1}"] = tuple(u for block in blocks[lo:hi] for u in block)
    for i in range(n):
        groups[block_name(i, layers[i])] = tuple(blocks[i])
    if head:
        groups["head"] = tuple(dict.fromkeys(head))
    groups.update((part, (name,)) for part, name in encoder_decoder.items())
    groups["backbone"] = tuple(backbone)
    return {g: names for g, names in groups.items() if names}
