"""The in-place form (``fz.freeze``, ``fz.freezable``, ``fz.plain``): API.md 7.1 and 7.2.

The behaviour tests of API.md section 1 (B1-B6) run over the in-place form through the ``net`` fixture of
conftest.py; this file covers what only the in-place form promises: the class and names kept, the same
result as the wrapper, the way back to the plain class, whole-model pickling in a fresh process, and the
tools that act on a model's names (timm's optimizer factory) and on what it built frozen.
"""

from __future__ import annotations

import copy
import inspect
import io
import pickle
import subprocess
import sys
import warnings

import pytest
import timm
import torch
import torchvision
from conftest import changed, snapshot
from timm.optim import create_optimizer_v2
from torch import nn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

import freezable as fz


def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=4)


def vit(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=4, num_classes=3,
                             **kwargs)


def bert() -> nn.Module:
    pytest.importorskip("transformers")
    import _hf_models

    return _hf_models.bert()


MODELS = {"torchvision-resnet": resnet, "timm-vit": vit, "hf-bert": bert}


# -- the class and the names are kept ----------------------------------------------------------------------------


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_freeze_keeps_the_class_its_names_and_its_forward_signature(make):
    plain = make()
    cls = type(plain)
    names, keys = [n for n, _ in plain.named_parameters()], list(plain.state_dict())
    model = fz.freeze(plain, trainable=["head"])
    assert model is plain
    assert isinstance(model, cls) and isinstance(model, fz.Freezable)
    assert (type(model).__name__, type(model).__module__, type(model).__qualname__) == (
        cls.__name__, cls.__module__, cls.__qualname__)
    assert inspect.signature(model.forward) == inspect.signature(cls.forward.__get__(model))
    assert [n for n, _ in model.named_parameters()] == names and list(model.state_dict()) == keys
    head = {n for n, _ in model.freeze_group("head").named_parameters(model)}
    assert head and {n for n, _ in model.named_trainable_parameters()} == head


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
@pytest.mark.parametrize("kwargs", [{}, {"trainable": ["head"]}, {"trainable": ["stage4", "head"]},
                                    {"preset": "linear_probe"}, {"preset": "linear_probe", "norm_eval": False},
                                    {"trainable": ["head"], "norm_eval": True}],
                         ids=["all", "head", "stage4-head", "preset", "preset-norm_eval-off", "norm_eval"])
def test_freeze_in_place_does_what_the_wrapper_does(make, kwargs):
    wrapped_model, model = make(), make()
    try:
        fb = fz.FrozenBackbone(wrapped_model, **kwargs)
    except fz.FreezableError as e:  # a preset or group the model lacks: the same error in place
        with pytest.raises(type(e), match="."):
            fz.freeze(model, **kwargs)
        assert type(model) is type(wrapped_model)  # nothing changed, not even the class
        return
    fz.freeze(model, **kwargs)
    assert model.freeze_group_names == fb.freeze_group_names
    assert model.frozen_groups == fb.frozen_groups
    assert model.freeze_state() == fb.freeze_state()
    assert model.freeze_summary() == fb.freeze_summary()
    assert {n: m.training for n, m in model.train().named_modules()} == {
        n: m.training for n, m in fb.train().backbone.named_modules()}


def test_freezable_attaches_the_mixin_and_freezes_nothing_idempotently():
    model = resnet()
    before = snapshot(model)
    assert fz.freezable(model) is model and fz.freezable(model) is model
    assert model.frozen_groups == () and all(p.requires_grad for p in model.parameters())
    assert "stage4" in model.freeze_group_names and not changed(before, model)
    assert type(type(model)) is type(type(resnet()))  # one subclass per class, not one per call
    assert type(model) is type(fz.freezable(resnet()))


def test_a_freezable_of_its_own_is_returned_as_it_is():
    from conftest import Net

    net = Net().freeze("features")
    assert fz.freezable(net) is net and type(net) is Net and net.frozen_groups == ("features",)
    assert fz.freeze(net, trainable=["classifier"]) is net and type(net) is Net  # its own groups are kept
    assert net.frozen_groups == ("features",)


def test_plain_returns_the_plain_class_with_every_mark_hook_and_hold_removed():
    model = fz.freeze(resnet(), trainable=["head"], norm_eval=True)
    model.bn1.weight.requires_grad_(False)  # a change by hand is undone too: plain() unfreezes what it froze
    fz.plain(model)
    assert type(model) is torchvision.models.ResNet
    for m in model.modules():
        assert not [k for k in m.__dict__ if k.startswith("_freezable")]
        assert not m._forward_pre_hooks and not m._forward_hooks
    assert all(m.training for m in model.train().modules()) and not any(m.training for m in model.eval().modules())
    assert all(p.requires_grad for p in model.parameters())
    assert fz.freeze(model).frozen_groups  # and it can be frozen again


def test_plain_keeps_what_the_model_was_built_with_frozen():
    model = fz.freeze(resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=3))
    fz.plain(model)
    assert sum(not p.requires_grad for p in model.parameters()) == 5


# -- whole-model copies: deepcopy, pickle, torch.save, a fresh process ----------------------------------------------

_FRESH_PROCESS = """
import sys, torch, torchvision, freezable as fz
model = torch.load(sys.argv[1], weights_only=False)
model.train()
x = torch.randn(2, 3, 32, 32)
before = {k: v.clone() for k, v in model.state_dict().items()}
model(x).sum().backward()
moved = sorted(k for k, v in model.state_dict().items() if not torch.equal(v, before[k]))
print(type(model).__name__, isinstance(model, torchvision.models.ResNet), isinstance(model, fz.Freezable),
      model.frozen_groups[:3], model.bn1.training, model.fc.training, moved,
      [n for n, p in model.named_parameters() if p.grad is not None])
"""


def test_a_frozen_model_saved_whole_loads_in_a_fresh_process(tmp_path):
    model = fz.freeze(resnet(), trainable=["head"]).train()
    torch.save(model, tmp_path / "model.pt")
    out = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, str(tmp_path / "model.pt")], capture_output=True,
                         text=True, check=True).stdout
    assert out.split() == "ResNet True True ('stem', 'stage1', 'stage2') False True [] ['fc.weight', 'fc.bias']".split()


@pytest.mark.parametrize("copy_model", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m)),
                                        lambda m: torch.load(_saved(m), weights_only=False)],
                         ids=["deepcopy", "pickle", "torch.save"])
def test_copies_keep_class_freeze_state_and_holds(copy_model):
    model = fz.freeze(vit(), trainable=["head"]).train()
    other = copy_model(model)
    assert type(other) is type(model) and other.freeze_state() == model.freeze_state()
    assert not other.train().blocks[0].training and other.head.training
    fz.plain(other)
    assert type(other) is type(vit()) and type(model) is not type(vit())


def _saved(model: nn.Module) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return buffer


def test_state_dict_loads_into_the_plain_model_and_back():
    model, plain = fz.freeze(resnet(), trainable=["head"]), resnet()
    plain.load_state_dict(model.state_dict(), strict=True)
    model.load_state_dict(plain.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))


# -- names read by the tools: timm's optimizer factory -------------------------------------------------------------


def _per_parameter(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, tuple[float, float]]:
    """(lr_scale, weight_decay) of every parameter the optimizer holds, by the plain model's name."""
    names = {id(p): n.removeprefix("backbone.") for n, p in model.named_parameters()}
    return {names[id(p)]: (g.get("lr_scale", 1.0), g["weight_decay"]) for g in optimizer.param_groups
            for p in g["params"]}


@pytest.mark.parametrize("form", ["in_place", "wrapped"])
@pytest.mark.parametrize("make, trainable", [(vit, ["stem", "block3", "block4", "head"]),
                                             (lambda: timm.create_model("resnet18", num_classes=3),
                                              ["stem", "stage4", "head"])], ids=["vit", "resnet"])
def test_timm_optimizer_factory_gives_every_parameter_what_the_plain_model_gets(form, make, trainable):
    plain = make()
    expected = _per_parameter(create_optimizer_v2(plain, weight_decay=0.05, layer_decay=0.75), plain)
    model = fz.freeze(make(), trainable=trainable) if form == "in_place" else fz.FrozenBackbone(make(), trainable)
    got = _per_parameter(create_optimizer_v2(model, weight_decay=0.05, layer_decay=0.75), model)
    assert set(got) == {n.removeprefix("backbone.") for n, _ in model.named_trainable_parameters()}
    assert got == {n: expected[n] for n in got}
    assert len({scale for scale, _ in got.values()}) > 2  # layer decay in effect, not one layer for all
    if "stem" in trainable and "pos_embed" in got:
        assert got["pos_embed"][1] == got["cls_token"][1] == 0.0  # no_weight_decay() honoured


# -- what the model built frozen stays frozen ----------------------------------------------------------------------


def _fixed_pos_embed() -> nn.Module:
    model = vit()
    model.pos_embed.requires_grad_(False)  # fixed by hand (a sin-cos table, say)
    return model


def _whisper() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                        vocab_size=100, num_mel_bins=8, max_source_positions=16,
                                        max_target_positions=16, decoder_start_token_id=1, pad_token_id=0,
                                        bos_token_id=1, eos_token_id=2)
    return transformers.WhisperForConditionalGeneration(config)


def _vitmae() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, image_size=32, patch_size=8)
    return transformers.ViTMAEModel(config)


BUILT_FROZEN = {  # model, the group that holds what it built frozen
    "torchvision-resnet_fpn_backbone": (
        lambda: resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=3), None),
    "timm-fixed-pos_embed": (_fixed_pos_embed, "stem"),
    "hf-whisper": (_whisper, "stem"),
    "hf-vitmae": (_vitmae, "stem"),
}


def _built_frozen(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if not p.requires_grad]


@pytest.mark.parametrize("form", ["in_place", "wrapped"])
@pytest.mark.parametrize("make, group", BUILT_FROZEN.values(), ids=BUILT_FROZEN.keys())
def test_unfreeze_and_trainable_leave_what_the_model_built_frozen_frozen(form, make, group):
    plain = make()
    built = _built_frozen(plain)
    assert built  # the case is real: the library (or the user) froze these
    model = fz.freeze(plain) if form == "in_place" else fz.FrozenBackbone(plain)
    root = model if form == "in_place" else model.backbone
    assert model.freeze_state()["built_frozen_parameters"] == built
    assert "built frozen: " in model.freeze_summary() and built[0] in model.freeze_summary()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unfreezing the whole model names no group: no warning
        model.unfreeze()
    assert _built_frozen(root) == built
    if group is None:
        return
    in_group = {n for n, _ in model.freeze_group(group).named_parameters(root)}
    assert set(built) <= in_group
    with pytest.warns(fz.BuiltFrozenWarning, match=rf"{built[0]}.*built_frozen=True") as record:
        model.freeze().unfreeze(group)
    assert len(record) == 1 and [n for n in _built_frozen(root) if n in in_group] == built
    with pytest.warns(fz.BuiltFrozenWarning, match=rf"trainable=\['{group}'\].*{built[0]}.*built_frozen=True"):
        again = fz.freeze(make(), trainable=[group]) if form == "in_place" else fz.FrozenBackbone(make(), [group])
    again_root = again if form == "in_place" else again.backbone
    assert [n for n in _built_frozen(again_root) if n in in_group] == built
    model.unfreeze(group, built_frozen=True)  # the explicit way: from now on they are ordinary parameters
    assert not in_group & set(_built_frozen(root))
    model.freeze(group).unfreeze(group)
    assert not in_group & set(_built_frozen(root)) and model.freeze_state()["built_frozen_parameters"] == []


def test_parameters_an_earlier_wrapper_froze_are_not_built_frozen():
    model = resnet()
    fz.FrozenBackbone(model)  # froze everything, then the wrapper is dropped
    assert fz.freeze(model).freeze_state()["built_frozen_parameters"] == []
    assert not _built_frozen(model.unfreeze())


def test_built_frozen_record_survives_freeze_state_round_trip():
    model = fz.freeze(_fixed_pos_embed())
    state = model.freeze_state()
    other = fz.freezable(vit()).load_freeze_state(state)  # pos_embed trainable in this one
    assert other.freeze_state() == state
    assert not other.unfreeze().pos_embed.requires_grad

