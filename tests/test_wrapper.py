"""FrozenBackbone: API.md section 2."""

from __future__ import annotations

import collections
import copy
import dataclasses
import io

import pytest
import timm
import torch
import torchvision
from conftest import changed, snapshot
from torch import nn

import freezable as fz


def resnet(num_classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=num_classes)


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 32)


def test_everything_is_frozen_by_default(x):
    fb = fz.FrozenBackbone(resnet())
    assert not any(p.requires_grad for p in fb.parameters())
    assert list(fb.trainable_parameters()) == []
    assert fb.backbone.fc.weight is fb.fc.weight
    before = snapshot(fb)
    fb.train()(x)
    assert not changed(before, fb)


def test_trainable_takes_group_names_and_specs():
    fb = fz.FrozenBackbone(resnet(), trainable=["head"])
    assert [n for n, _ in fb.named_trainable_parameters()] == ["backbone.fc.weight", "backbone.fc.bias"]
    fb = fz.FrozenBackbone(resnet(), trainable=["layer4.1.*", "fc"])
    names = [n for n, _ in fb.named_trainable_parameters()]
    assert names[0].startswith("backbone.layer4.1.") and names[-1] == "backbone.fc.bias"
    assert "stage4" not in fb.frozen_groups and "stage3" in fb.frozen_groups


def test_trainable_accepts_a_single_name():
    fb = fz.FrozenBackbone(resnet(), trainable="head")
    assert [g for g in fb.frozen_groups if not g.startswith("block")] == [
        "stem", "stage1", "stage2", "stage3", "stage4", "backbone"]


def test_named_parameters_carry_the_prefix_and_freeze_state_does_not():
    fb = fz.FrozenBackbone(resnet(), trainable=["head"])
    assert all(n.startswith("backbone.") for n, _ in fb.named_parameters())
    state = fb.freeze_state()
    assert "conv1.weight" in state["frozen_parameters"] and "fc.weight" not in state["frozen_parameters"]
    assert "layer1" in state["frozen_modules"]


def test_state_dict_has_exactly_the_backbones_keys_both_ways():
    backbone = resnet()
    plain = copy.deepcopy(backbone)
    fb = fz.FrozenBackbone(backbone)
    assert list(fb.state_dict()) == list(plain.state_dict())
    other = resnet(4)
    with torch.no_grad():
        other.conv1.weight.add_(1)
    fb.load_state_dict(other.state_dict(), strict=True)
    assert torch.equal(fb.backbone.conv1.weight, other.conv1.weight)
    plain.load_state_dict(fb.state_dict(), strict=True)


def test_state_dict_keys_inside_a_container_and_loading_back():
    model = nn.Sequential(fz.FrozenBackbone(resnet()), nn.Linear(4, 2))
    keys = list(model.state_dict())
    assert keys[0] == "0.conv1.weight" and keys[-1] == "1.bias"
    assert not any(".backbone." in k for k in keys)
    other = nn.Sequential(fz.FrozenBackbone(resnet()), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.fill_(3)
    other.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(other[1].weight, model[1].weight)
    bad = dict(model.state_dict())
    bad["0.bogus"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="bogus"):
        other.load_state_dict(bad, strict=True)


def test_attributes_fall_through_to_the_backbone(x):
    backbone = timm.create_model("resnet18", pretrained=False, num_classes=5)
    fb = fz.FrozenBackbone(backbone)
    assert fb.num_features == 512
    assert fb.get_classifier() is backbone.fc
    assert fb.forward_features(x).shape == (2, 512, 1, 1)
    with pytest.raises(AttributeError, match="no_such_thing"):
        fb.no_such_thing


def test_a_fully_frozen_backbone_records_no_autograd_graph(x):
    fb = fz.FrozenBackbone(resnet()).train()
    out = fb(x)
    assert out.grad_fn is None and not out.requires_grad


def test_a_trainable_module_in_front_still_gets_gradients(x):
    front = nn.Conv2d(3, 3, 1)
    model = nn.Sequential(front, fz.FrozenBackbone(resnet()), nn.Linear(4, 1))
    model(x).sum().backward()
    assert front.weight.grad is not None and front.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model[1].parameters())


def test_trainable_parts_record_a_graph(x):
    fb = fz.FrozenBackbone(resnet(), trainable=["stage4", "head"])
    out = fb.train()(x)
    out.sum().backward()
    assert fb.backbone.layer4[0].conv1.weight.grad is not None
    assert fb.backbone.layer1[0].conv1.weight.grad is None


def test_frozen_batchnorm_stays_in_eval_through_every_train_call(x):
    fb = fz.FrozenBackbone(resnet(), trainable=["head"])
    model = nn.Sequential(nn.Sequential(fb), nn.Identity())
    before = snapshot(fb.backbone)
    expected = fb.eval()(x)
    for call in (model.train, fb.train, fb.backbone.train, fb.backbone.layer1.train):
        call()
        assert torch.equal(model(x), expected)
    assert changed(before, fb.backbone) == set()


def test_preset_freezes_its_frozen_groups_less_trainable():
    hrnet = timm.create_model("hrnet_w18_small", pretrained=False, num_classes=3)
    fb = fz.FrozenBackbone(hrnet, preset="timm.hrnet.backbone")
    assert [g for g in fb.frozen_groups if not g.startswith("block")] == [
        "stem", "stage1", "stage2", "stage3", "stage4", "backbone"]
    assert hrnet.classifier.weight.requires_grad and hrnet.final_layer[0].weight.requires_grad
    fb = fz.FrozenBackbone(timm.create_model("hrnet_w18_small", pretrained=False), preset="timm.hrnet.backbone",
                           trainable=["stage4"])
    assert "stage4" not in fb.frozen_groups and "stage3" in fb.frozen_groups


def test_repr_shows_the_state():
    fb = fz.FrozenBackbone(resnet(), trainable=["head"])
    assert repr(fb) == "FrozenBackbone(ResNet, frozen=['stem', 'stage1', 'stage2', 'stage3', 'stage4'], trainable=2.1K/11.2M)"
    assert repr(fz.FrozenBackbone(timm.create_model("resnet18", pretrained=False))).startswith(
        "FrozenBackbone(resnet18, frozen=")


def test_deepcopy_and_whole_module_save_keep_the_freeze_state(x):
    fb = fz.FrozenBackbone(resnet(), trainable=["head"])
    buffer = io.BytesIO()
    torch.save(fb, buffer)
    for other in (copy.deepcopy(fb), torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)):
        assert other.freeze_state() == fb.freeze_state()
        assert list(other.state_dict()) == list(fb.state_dict())
        assert not other.train().backbone.bn1.training


def test_works_on_the_meta_device():
    with torch.device("meta"):
        backbone = timm.create_model("convnext_atto", pretrained=False)
    fb = fz.FrozenBackbone(backbone, trainable=["head"])
    assert "norms in eval" in fb.freeze_summary()




# -- norm_eval -------------------------------------------------------------------------------------------------------

def _batch_norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_norm_eval_batch_1_training_forward_through_a_resnet():
    """mmdetection's reason for norm_eval: a batch of one trains; train-mode BatchNorm raises on 1x1 features."""
    torch.manual_seed(0)
    fb = fz.FrozenBackbone(torchvision.models.resnet18(num_classes=4), norm_eval=True).unfreeze().train()
    x = torch.randn(1, 3, 32, 32)
    before = {n: b.clone() for n, b in fb.backbone.named_buffers()}
    fb(x).sum().backward()
    assert all(torch.equal(b, dict(fb.backbone.named_buffers())[n]) for n, b in before.items())
    assert fb.backbone.layer4[1].bn2.weight.grad is not None
    plain = fz.FrozenBackbone(torchvision.models.resnet18(num_classes=4)).unfreeze().train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):  # the oracle: torch refuses
        plain(x)


def test_norm_eval_none_is_off_without_a_preset_and_follows_the_preset_with_one():
    resnet = torchvision.models.resnet18
    assert all(m.training for m in _batch_norms(fz.FrozenBackbone(resnet()).unfreeze().train()))
    fb = fz.FrozenBackbone(resnet(), preset="frozen_stages_1").train()
    assert not any(m.training for m in _batch_norms(fb)) and fb.backbone.layer2[0].bn1.weight.requires_grad
    off = fz.FrozenBackbone(resnet(), preset="frozen_stages_1", norm_eval=False).train()
    assert [m.training for m in _batch_norms(off.backbone.layer2)] == [True] * len(_batch_norms(off.backbone.layer2))
    assert not any(m.training for m in _batch_norms(off.backbone.layer1))  # frozen: held all the same
    on = fz.FrozenBackbone(resnet(), preset="linear_probe", norm_eval=True, trainable=["stage4"]).train()
    assert not any(m.training for m in _batch_norms(on.backbone.layer4))


def test_norm_eval_without_running_stats_in_the_body_changes_nothing():
    with torch.device("meta"):
        vit = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    fb = fz.FrozenBackbone(vit, norm_eval=True, trainable=["stage4"]).train()
    assert fb.freeze_state()["norm_eval_modules"] == []
    assert fb.backbone.norm.training


def test_norm_eval_holds_the_body_not_the_head():
    """norm_eval is mmdetection's backbone setting: a head's BatchNorm (LeViT's) still trains."""
    with torch.device("meta"):
        levit = timm.create_model("levit_128s", pretrained=False)
    fb = fz.FrozenBackbone(levit, norm_eval=True).unfreeze().train()
    assert fb.backbone.head.bn.training and fb.backbone.head_dist.bn.training
    assert not any(m.training for m in _batch_norms(fb.backbone.stem) + _batch_norms(fb.backbone.stages))


@pytest.mark.parametrize("frozen_dtype", [None, torch.bfloat16])
def test_norm_eval_trainable_norms_train_through_the_fast_path(frozen_dtype):
    torch.manual_seed(0)
    fb = fz.FrozenBackbone(torchvision.models.resnet18(num_classes=4), trainable=["stage4", "head"], fast=True,
                           frozen_dtype=frozen_dtype, norm_eval=True).train()
    stats = {n: b.clone() for n, b in fb.backbone.layer4.named_buffers()}
    fb(torch.randn(1, 3, 32, 32)).sum().backward()
    bn = fb.backbone.layer4[1].bn2
    assert bn.weight.grad is not None and bn.weight.grad.dtype == torch.float32
    assert all(torch.equal(b, dict(fb.backbone.layer4.named_buffers())[n]) for n, b in stats.items())


# -- nested Freezables (issue 21) ------------------------------------------------------------------------------------


class Encoded(fz.Freezable, nn.Module):
    """A model whose encoder is a Freezable of its own."""

    freeze_groups = {"encoder": "encoder", "head": "head"}

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.encoder(x))


INNER = {
    "wrapper": lambda: fz.FrozenBackbone(resnet(), trainable=["head"]),
    "wrapper_fast": lambda: fz.FrozenBackbone(resnet(), trainable=["head"], fast=True),
    "in_place": lambda: fz.freeze(resnet(), trainable=["head"]),
}


@pytest.mark.parametrize("inner", INNER)
def test_a_hold_is_released_when_a_nested_freezable_makes_part_of_it_trainable(inner, x):
    model = Encoded(INNER[inner]()).freeze()  # the outer model frozen whole, the encoder with it
    encoder = model.encoder
    body = encoder.backbone if inner.startswith("wrapper") else encoder
    model(x)  # a fast path is built now, with stage4 frozen
    encoder.unfreeze("stage4")
    assert body.layer4[0].bn1.weight.requires_grad
    assert encoder.train().training and encoder(x) is not None  # B5 for the inner model, before the outer runs
    assert body.layer4[0].bn1.training and not body.bn1.training
    for call in (encoder.train, model.train):
        call()
        assert fz.check(model).ok, fz.check(model).problems  # no frozen module in training mode
        stem, stage4 = snapshot(body.bn1), snapshot(body.layer4)
        model(x)
        assert body.layer4[0].bn1.training and encoder.training and model.training  # B5: plain PyTorch's modes
        assert changed(stage4, body.layer4) and not changed(stem, body.bn1)  # stage4's BatchNorms train
        assert not body.bn1.training
    encoder.freeze("stage4")  # frozen whole again, through the inner model: the outer one holds it all again
    model.train()
    assert not encoder.training and not body.layer4[0].bn1.training
    stage4 = snapshot(body.layer4)
    assert torch.equal(model(x), model.eval()(x)) and not changed(stage4, body.layer4)


# -- typed outputs of a fully frozen backbone (issue 21) -------------------------------------------------------------


@dataclasses.dataclass
class Pooled:
    pooled: torch.Tensor
    maps: list[torch.Tensor]
    name: str = "pooled"


@dataclasses.dataclass(frozen=True)
class FrozenPooled:
    pooled: torch.Tensor
    count: int = dataclasses.field(default=0, init=False)


Pair = collections.namedtuple("Pair", "maps pooled")


class Typed(nn.Module):
    """A small CNN whose forward returns its features in a container of the kind named."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x):
        maps = self.body(x)
        pooled = maps.mean((2, 3))
        return {"dataclass": lambda: Pooled(pooled, [maps]),
                "frozen_dataclass": lambda: FrozenPooled(pooled),
                "namedtuple": lambda: Pair(maps, pooled),
                "ordered_dict": lambda: collections.OrderedDict(maps=maps, pooled=pooled),
                "nested": lambda: (Pair(maps, pooled), {"pooled": [pooled]})}[self.kind]()


def _pooled(out):
    return out[1]["pooled"][0] if isinstance(out, tuple) and not hasattr(out, "_fields") else (
        out["pooled"] if isinstance(out, dict) else out.pooled)


FAST = {"plain": {}, "fast": {"fast": True}, "fast_bf16": {"fast": True, "frozen_dtype": torch.bfloat16}}


@pytest.mark.parametrize("options", FAST)
@pytest.mark.parametrize("kind", ["dataclass", "frozen_dataclass", "namedtuple", "ordered_dict", "nested"])
def test_outputs_of_a_fully_frozen_backbone_keep_their_type_and_train_a_head(kind, options, x):
    torch.manual_seed(0)
    model = Typed(kind)
    with torch.no_grad():
        expected = copy.deepcopy(model).eval()(x)
    out = fz.FrozenBackbone(model, **FAST[options]).train()(x)
    assert type(out) is type(expected)
    leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    leaves += [out.pooled] if dataclasses.is_dataclass(out) else []
    assert leaves and not any(t.is_inference() or t.requires_grad for t in leaves)
    torch.testing.assert_close(_pooled(out), _pooled(expected), **({} if options != "fast_bf16" else
                                                                  {"rtol": 0.05, "atol": 0.05}))
    assert _pooled(out).dtype == torch.float32
    head = nn.Linear(4, 2)
    head(_pooled(out)).sum().backward()  # inference tensors could not be saved for backward
    assert head.weight.grad is not None


@pytest.mark.parametrize("options", ["plain", "fast"])
def test_a_frozen_hugging_face_model_returns_its_model_output(options):
    transformers = pytest.importorskip("transformers")
    import _hf_models

    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(num_hidden_layers=2, max_position_embeddings=64,
                                                          **_hf_models.SIZES))
    ids = torch.randint(0, 100, (2, 8))
    with torch.no_grad():
        expected = copy.deepcopy(bert).eval()(input_ids=ids)
    out = fz.FrozenBackbone(bert, **FAST[options]).train()(input_ids=ids)
    assert type(out) is type(expected)
    assert torch.equal(out.last_hidden_state, expected.last_hidden_state) and out[0] is out.last_hidden_state
    assert not out.pooler_output.is_inference()
    head = nn.Linear(32, 2)
    head(out.pooler_output).sum().backward()
    assert head.weight.grad is not None


def test_an_inner_fast_path_follows_holds_the_outer_model_changes(x):
    """Found by the widened property test: a fast path built while an outer model held the backbone, then that
    hold released by the outer model (the wrapper itself, unfrozen whole, no longer watches its own holds)."""
    model = Encoded(fz.FrozenBackbone(resnet(), fast=True))
    model.unfreeze()  # through the outer model: the wrapper holds nothing of its own now
    model.train()(x)
    model.freeze()
    model.load_state_dict(model.state_dict())  # drops the fast path: rebuilt with the backbone held by the outer
    model(x)
    model.unfreeze().train()
    plain = copy.deepcopy(model.encoder.backbone)
    torch.manual_seed(0)
    out = model.encoder(x)
    torch.manual_seed(0)
    assert torch.equal(out, plain(x))  # training-mode BatchNorm, not the held copy's running statistics
