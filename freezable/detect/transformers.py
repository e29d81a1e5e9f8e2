"""Freeze groups of any Hugging Face ``transformers.PreTrainedModel``, read from what the model declares.

:func:`hf_groups` names, with no per-model table:

* ``stem``: the input side: what holds ``get_input_embeddings()`` (token, position, token-type and
  patch embeddings and their norm, as HF keeps them together: ``bert.embeddings``, ``vit.embeddings``),
  everything of the base model that comes before its first layer (GPT-2's ``wte``, ``wpe``), and
  whatever is named ``*embed*`` outside the layers (BART's ``layernorm_embedding``);
* ``block1`` ... ``blockN``: the layers in forward order, the modules whose class is one of the
  model's ``_no_split_modules`` and that sit in a ``ModuleList`` (a layer in a list that holds such a
  module outside any list, as a ResNet bottleneck holds its shortcut, is the layer; every layer of its
  class is then one); a final norm after the layers (GPT-2's ``ln_f``, Llama's ``norm``, ViT's
  ``layernorm``; the encoder's ``layer_norm`` where the config says ``do_stable_layer_norm``) goes with
  the last block before it, as does one registered before them but named ``final_*`` (OPT's ``final_layer_norm``);
* ``stage1`` ... ``stage4``: the blocks in four even stages (as many stages as blocks when there are
  fewer than four); where the config declares the stages' depths (``depths`` summing to the blocks, with
  ``stage_names``: HF's ResNet), the stages follow them;
* ``head``: the task head, everything of the model outside its base model (``classifier``, ``score``,
  ``lm_head``, ``qa_outputs``, ``cls``...), ``get_output_embeddings()`` and a ``mask_decoder`` (SAM's);
  and the base model's **pooler**: it only feeds the task head (BERT's ``[CLS]`` dense + tanh), so a
  linear probe trains it with the classifier. A bare base model (``BertModel``) has no head, and its
  pooler no group but ``backbone``;
* ``backbone``: the base model (the ``base_model_prefix`` attribute) less the pooler when it went to the
  head: an umbrella over the stem and the blocks.

**Models of several parts.** Where the layers lie in more than one child of the base model (CLIP's
``text_model`` and ``vision_model``, LLaVA's ``vision_tower`` and ``language_model``, an encoder and a
decoder), or a child holds a model another source knows (DETR's CNN ``backbone``), each such child is a
part, read alone and named after its attribute path from the base model
(:func:`freezable.detect._parts.part_groups`): ``vision_model.stem``, ``vision_model.stage1 ... stage4``,
``vision_model.block1 ... blockN`` and the umbrella ``vision_model``. A feature encoder that the model
freezes as a unit (Wav2Vec2's ``feature_extractor``, what ``freeze_feature_encoder()`` freezes) is a
part too, its conv layers its blocks. The base model's other children with parameters (projections,
``logit_scale``, a multimodal projector, DETR's ``input_projection``) are groups of their own, named
after their attribute, unless the parts' groups hold their parameters already (tied input embeddings);
they are never inside a part's stem, stage or block. What a part registers after its layers goes with its
last block when it is a norm (or holds no parameter); anything else there (SigLIP's pooling ``head``, Conditional
DETR's ``ref_point_head``, which runs before the first layer) may run before or after them, so it is a group of
its own in the part (``vision_model.head``, ``decoder.ref_point_head``), in no block or stage. A part called
``backbone`` is the ``backbone``
group (DETR's, which ``freeze_backbone()`` freezes); otherwise ``backbone`` is everything but the head.
Plain ``stem``, ``stageN`` and ``blockN`` belong to models with one stack.

Group order is that of every detector (:mod:`freezable.detect._parts`): ``stem, stage1 ... stage4``,
the blocks, then ``head``, ``backbone``; parts and the pieces between them in the order the base model
registers them. A stage that holds a single block is the same set as that block; walks over groups
(``freeze_to``, gradual unfreezing) take the block then (:func:`freezable.stages.staged_names`).

A ``peft.PeftModel`` (LoRA and the like) gets the groups of the model it wraps, with the names seen
from the ``PeftModel`` (``base_model.model.bert.embeddings``...); the adapters' own parameters sit inside
the layers they adapt, so they belong to those layers' blocks.

transformers is never imported here: a model of it can only exist when it is in ``sys.modules``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch import nn

from ..norms import is_norm
from ..groups import is_within
from ._parts import Groups, has_params, holds_params, instance_of, part_groups

__all__ = ["hf_groups", "is_hf_model"]

_STAGES = 4
_LISTS = (nn.ModuleList, nn.Sequential)
_HEAD_PARTS = ("mask_decoder",)  # children of the base model that are the task head (SAM's mask decoder)

Inner = Callable[[nn.Module], Groups]  # the groups of the known models inside a module (detect_groups)


def is_hf_model(model: object) -> bool:
    """Whether ``model`` is a ``transformers.PreTrainedModel`` (without importing transformers)."""
    return instance_of(model, "transformers", "PreTrainedModel")


def hf_groups(model: nn.Module, inner: Inner | None = None) -> Groups | None:
    """Names the stem, blocks, stages, head and backbone of a Hugging Face model, per part where it has several.

    Args:
        model: any module; a ``transformers.PreTrainedModel`` or a ``peft.PeftModel`` around one gets groups.
        inner: how to find the groups of a known model inside a child of the base model that holds no
            layer of its own (DETR's CNN backbone, a timm or HF model): ``freezable.detect.detect_groups``.
            Without it such a child is a group of its own, with no stem or stages.

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
        >>> sizes = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=2)
        >>> config = transformers.CLIPConfig(text_config=sizes, vision_config=dict(sizes, image_size=32, patch_size=8))
        >>> with torch.device("meta"):
        ...     clip = transformers.CLIPModel(config)
        >>> [g for g in hf_groups(clip) if "stage" not in g]  # doctest: +NORMALIZE_WHITESPACE
        ['text_model.stem', 'text_model.block1', 'text_model.block2', 'text_model',
         'vision_model.stem', 'vision_model.block1', 'vision_model.block2', 'vision_model',
         'visual_projection', 'text_projection', 'logit_scale']
        >>> hf_groups(torch.nn.Linear(2, 2)) is None
        True
    """
    wrapped = _peft_inner(model)
    if wrapped is not None:
        prefix = _name_of(model, wrapped)
        groups = _groups(wrapped, inner)
        return {g: tuple(_join(prefix, n) for n in names) for g, names in groups.items()}
    if not is_hf_model(model):
        return None
    return _groups(model, inner)


def _peft_inner(model: nn.Module) -> nn.Module | None:
    """The transformers model inside a ``peft.PeftModel``, else None."""
    if not instance_of(model, "peft", "PeftModel"):
        return None
    wrapped = model.get_base_model()
    return wrapped if is_hf_model(wrapped) else None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _relative(name: str, prefix: str) -> str:
    return name[len(prefix) + 1:] if prefix else name


def _name_of(root: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in root.named_modules() if m is module)


# -- reading the model ------------------------------------------------------------------------------


def _layers(base: nn.Module, prefix: str, classes: set[str]) -> list[str]:
    """Top-most modules in a ModuleList or Sequential whose class is a ``_no_split_modules`` one, or the class
    of a listed module that holds such a module outside any list (a ResNet bottleneck around its shortcut)."""
    listed: list[tuple[str, type]] = []
    composite: set[type] = set()

    def visit(module: nn.Module, name: str, nearest: nn.Module | None) -> None:
        in_list = isinstance(module, _LISTS)
        for cname, child in module.named_children():
            full = _join(name, cname)
            if in_list:
                listed.append((full, type(child)))
            elif type(child).__name__ in classes and nearest is not None:
                composite.add(type(nearest))
            visit(child, full, child if in_list else nearest)

    visit(base, prefix, None)
    chosen: list[str] = []
    for name, cls in listed:
        if (cls.__name__ in classes or cls in composite) and not is_within(name, chosen):
            chosen.append(name)
    return chosen


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


def _feature_encoders(base: nn.Module, prefix: str) -> list[str]:
    """Children of the base model that the model freezes as a unit (``_freeze_parameters``: Wav2Vec2's
    ``feature_extractor``, which ``freeze_feature_encoder()`` freezes) and that hold a list of layers."""
    return [_join(prefix, n) for n, child in base.named_children()
            if callable(getattr(child, "_freeze_parameters", None)) and _list_children(child, "")]


def _list_children(module: nn.Module, prefix: str) -> list[str]:
    """The children with parameters of the first ModuleList with parameters inside ``module`` (depth first)."""
    for name, child in module.named_children():
        full = _join(prefix, name)
        if isinstance(child, nn.ModuleList) and has_params(child):
            return [_join(full, n) for n, c in child.named_children() if has_params(c)]
        found = _list_children(child, full)
        if found:
            return found
    return []


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


def _is_backbone(model: nn.Module) -> bool:
    """Whether ``model`` is an HF backbone (``BackboneMixin``: ``ResNetBackbone``): its stages feed another model,
    and it has no head."""
    return any(cls.__name__ == "BackboneMixin" for cls in type(model).__mro__)


def _find_layers(model: nn.Module, base: nn.Module, base_name: str) -> list[str]:
    """The layers of ``base`` in module order, a feature encoder's conv layers among them."""
    layers = _layers(base, base_name, set(getattr(model, "_no_split_modules", None) or ()))
    layers = layers or _repeated(base, base_name)
    for encoder in _feature_encoders(base, base_name):
        layers = [x for x in layers if not is_within(x, (encoder,))]
        layers += _list_children(base.get_submodule(_relative(encoder, base_name)), encoder)
    order: dict[str, int] = {}
    for index, (name, _) in enumerate(model.named_modules(remove_duplicate=False)):
        order.setdefault(name, index)
    return sorted(layers, key=lambda name: order.get(name, len(order)))


def _groups(model: nn.Module, inner: Inner | None) -> Groups:
    modules = {id(m): n for n, m in model.named_modules()}
    names = set(modules.values())
    base = model.base_model if isinstance(getattr(model, "base_model", None), nn.Module) else model
    base_name = modules.get(id(base), "")
    layers = _find_layers(model, base, base_name)
    inputs = _module_or_none(getattr(model, "get_input_embeddings", None))
    input_name = modules.get(id(inputs)) if inputs is not None else None
    if base is model and layers and not _is_backbone(model):
        # no base-model attribute: the one child that holds the layers and the inputs
        holder = layers[0].partition(".")[0]
        if all(is_within(n, (holder,)) for n in layers + [input_name or holder]) and holder != layers[0]:
            base, base_name = model.get_submodule(holder), holder
    holders = {".".join(layer.split(".")[:i]) for layer in layers for i in range(1, layer.count(".") + 1)}
    holders |= {""} if layers else set()
    layers_set = set(layers)
    head_parts = [_join(base_name, n) for n, child in base.named_children() if n in _HEAD_PARTS and has_params(child)]

    has_head = base is not model or bool(head_parts)
    labels: dict[str, str] = {}  # unit -> "stem" | "head" | the layer it goes with
    last_in: dict[str, str] = {}  # holder -> the last layer seen inside it so far
    for unit in _units(base, base_name, set(layers), holders) if layers else ():
        leaf = unit.rpartition(".")[2]
        if unit in layers_set:
            labels[unit] = unit
            last_in.update((holder, unit) for holder in holders if is_within(unit, (holder,)))
        elif has_head and "pooler" in leaf and unit in names and has_params(model.get_submodule(unit)):
            labels[unit] = "head"
        elif input_name is not None and is_within(input_name, (unit,)):
            labels[unit] = "stem"
        elif "embed" in leaf.lower():  # a list of them (PVT's per-stage patch embeddings) is no stem
            if not isinstance(model.get_submodule(unit) if unit in names else None, (nn.ModuleList, nn.ModuleDict)):
                labels[unit] = "stem"
        else:  # after a layer of the same holder: a final norm, with that layer; before any: the stem
            labels[unit] = last_in.get(unit.rpartition(".")[0], "stem")
    _final_norms_after_layers(model, labels, layers)

    head = [] if base is model else [
        name for name, child in model.named_children() if child is not base and has_params(child)
    ] + [name for name, _ in model.named_parameters(recurse=False)]
    head += head_parts
    outputs = _module_or_none(getattr(model, "get_output_embeddings", None))
    if outputs is None and base is not model:  # a wrapper that only its base model's lm_head serves (ShieldGemma2)
        outputs = _module_or_none(getattr(base, "get_output_embeddings", None))
    output_name = modules.get(id(outputs)) if outputs is not None else None
    if output_name and not is_within(output_name, head) and output_name in labels:
        labels[output_name] = "head"  # an output projection the base model holds (a multimodal wrapper's lm_head)
    labels = {unit: label for unit, label in labels.items() if not is_within(unit, head_parts)}
    pooled = [unit for unit, label in labels.items() if label == "head"]
    head = pooled + head

    parts = _parts(model, base, base_name, layers, head, inner)
    kinds = [kind for _, kind, _ in parts]
    if "list" not in kinds and sum(kind != "piece" for kind in kinds) >= 2:
        return _several(model, base, base_name, labels, layers, head, has_head, parts)
    backbone = _complement(base, base_name, [h for h in head if is_within(h, (base_name,))]) if has_head else []
    groups = _staged({u: label for u, label in labels.items() if label != "head"}, layers, _depths(model, layers))
    if head:
        groups["head"] = tuple(dict.fromkeys(head))
    groups["backbone"] = tuple(backbone)
    return {g: names for g, names in groups.items() if names}


def _final_norms_after_layers(model: nn.Module, labels: dict[str, str], layers: list[str]) -> None:
    """Final norms registered before the layers they follow go with the last layer of their holder: one named
    ``final_*`` (OPT's ``final_layer_norm``), and, where the config says ``do_stable_layer_norm`` (Wav2Vec2 and its
    kin, pre-norm layout), the ``layer_norm`` beside the layers."""
    stable = getattr(getattr(model, "config", None), "do_stable_layer_norm", False) is True
    for unit, label in labels.items():
        holder, _, leaf = unit.rpartition(".")
        inside = [layer for layer in layers if holder and is_within(layer, (holder,))]
        if label == "stem" and inside and (leaf.startswith("final") or stable and leaf == "layer_norm"):
            labels[unit] = inside[-1]


def _parts(model: nn.Module, base: nn.Module, base_name: str, layers: list[str], head: list[str],
           inner: Inner | None) -> list[tuple[str, str, Groups]]:
    """The base model's children and loose parameters in order, as ``(name, kind, inner groups)``.

    ``kind``: ``"layers"`` (holds layers), ``"head"`` (a head part that holds layers), ``"list"`` (a list of
    layers itself, no part: GPT-2's ``h``, XLM's parallel ``attentions`` and ``ffns``), ``"known"`` (holds a
    model ``inner`` knows, with a stem or stages), or ``"piece"`` (anything else).
    """
    found: list[tuple[str, str, Groups]] = []
    for name, child in base.named_children():
        full = _join(base_name, name)
        if any(is_within(layer, (full,)) for layer in layers):
            kind = "list" if isinstance(child, _LISTS) else "head" if is_within(full, head) else "layers"
            found.append((full, kind, {}))
            continue
        known = inner(child) if inner is not None and not is_within(full, head) and has_params(child) else {}
        if any(g in known for g in ("stem", "stage1")):
            found.append((full, "known", known))
        else:
            found.append((full, "piece", {}))
    found += [(_join(base_name, n), "piece", {}) for n, _ in base.named_parameters(recurse=False)]
    return found


def _several(model: nn.Module, base: nn.Module, base_name: str, labels: dict[str, str], layers: list[str],
             head: list[str], has_head: bool, parts: list[tuple[str, str, Groups]]) -> Groups:
    """The groups of a model of several parts: each part's, named after it, and the pieces between them."""
    groups: Groups = {}
    for full, kind, known in parts:
        name = _relative(full, base_name)
        if kind == "layers":
            mine = {u: label for u, label in labels.items() if is_within(u, (full,)) and label != "head"}
            inside = {_relative(u, full): label if label == "stem" else _relative(label, full)
                      for u, label in mine.items() if label in ("stem", u) or _final(model, u)}
            own = [_relative(x, full) for x in layers if is_within(x, (full,))]
            single = _staged(inside, own)
            single.update((_relative(u, full), (_relative(u, full),)) for u in mine if _relative(u, full) not in inside)
            groups.update(part_groups(full, single, name))
        elif kind == "known":
            groups.update(part_groups(full, known, name))
    held = {id(p) for members in groups.values() for p in _parameters(model, members)}
    candidates = {_relative(full, base_name): {id(p) for p in _parameters(model, [full])} for full, kind, _ in parts
                  if kind == "piece" and not is_within(full, head) and holds_params(model, [full])}
    pieces: Groups = {}
    for name, own in candidates.items():  # one whose parameters a part or a larger piece holds (tied) gets none
        larger = {p for other, theirs in candidates.items() if other != name and len(theirs) > len(own) for p in theirs}
        if name not in groups and not own <= held | larger:
            pieces[name] = (_join(base_name, name),)
    ordered: Groups = {}
    for full, kind, _ in parts:  # parts and pieces in the base model's order
        name = _relative(full, base_name)
        ordered.update((g, m) for g, m in groups.items() if is_within(g, (name,)))
        if name in pieces:
            ordered[name] = pieces[name]
    if head:
        ordered["head"] = tuple(dict.fromkeys(head))
    if "backbone" not in ordered and has_head:
        ordered["backbone"] = tuple(_complement(base, base_name, [h for h in head if is_within(h, (base_name,))]))
    return {g: names for g, names in ordered.items() if names}


def _final(model: nn.Module, unit: str) -> bool:
    """Whether ``unit``, registered after a part's layers, surely runs after them: a norm, or nothing to freeze.

    Other modules there may serve every layer from before the first (Conditional DETR's ``query_scale`` and
    ``ref_point_head``): in a part, each is a group of its own (``decoder.ref_point_head``), in no block or stage."""
    try:
        module = model.get_submodule(unit)
    except AttributeError:
        return False  # a loose parameter
    return is_norm(module) or "norm" in type(module).__name__.lower() or not has_params(module)


def _parameters(model: nn.Module, members: tuple[str, ...] | list[str]) -> Iterator[nn.Parameter]:
    """The parameters of the named modules and parameters, tied ones under every module that holds them."""
    for name in members:
        try:
            yield from model.get_submodule(name).parameters()
        except AttributeError:
            yield model.get_parameter(name)


def _complement(module: nn.Module, name: str, left_out: list[str]) -> list[str]:
    """Top-most names of everything in ``module`` (called ``name``) outside ``left_out``."""
    if not left_out:
        return [name]
    names = [_join(name, p) for p, _ in module.named_parameters(recurse=False)]
    for cname, child in module.named_children():
        full = _join(name, cname)
        if full in left_out:
            continue
        names += _complement(child, full, left_out) if any(is_within(x, (full,)) for x in left_out) else [full]
    return names


def _depths(model: nn.Module, layers: list[str]) -> list[int] | None:
    """The blocks per stage the config declares (``depths`` with ``stage_names``: HF's ResNet), when they count
    the layers found; else None."""
    config = getattr(model, "config", None)
    depths = getattr(config, "depths", None)
    if getattr(config, "stage_names", None) is None or not isinstance(depths, (list, tuple)):
        return None
    if not all(isinstance(d, int) and d > 0 for d in depths) or sum(depths) != len(layers):
        return None
    return list(depths)


def _staged(labels: dict[str, str], layers: list[str], depths: list[int] | None = None) -> Groups:
    """``stem``, ``stage1 ... stage4`` and ``block1 ... blockN`` of one stack, from each unit's label; the stages
    split the blocks evenly, or by ``depths``."""
    members: dict[str, list[str]] = {layer: [] for layer in layers}
    stem: list[str] = []
    for unit, label in labels.items():
        if label == "stem":
            stem.append(unit)
        elif label in members:
            members[label].append(unit)
    blocks = [members[layer] for layer in layers]
    groups: Groups = {}
    if stem:
        groups["stem"] = tuple(stem)
    n = len(blocks)
    if depths is None:
        stages = min(_STAGES, n)
        bounds = [(s * n // stages, (s + 1) * n // stages) for s in range(stages)]
    else:
        ends = [sum(depths[:i + 1]) for i in range(len(depths))]
        bounds = list(zip([0] + ends[:-1], ends))
    for s, (lo, hi) in enumerate(bounds):
        groups[f"stage{s + 1}"] = tuple(u for block in blocks[lo:hi] for u in block)
    for i in range(n):
        groups[f"block{i + 1}"] = tuple(blocks[i])
    return {g: names for g, names in groups.items() if names}
