"""FrozenBackbone(fast=True): the inference-optimised shadow keeps every invariant of the plain path."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import timm
import torch
import torchvision
from conftest import Tensors, snapshot
from timm.layers import BatchNormAct2d
from torch import nn

import freezable as fz
from freezable.fast.fold import can_fold, fold_conv_bn, norm_remainder


def randomise_norms(model: nn.Module) -> nn.Module:
    """Running statistics and affine parameters far from their defaults, so that folding shows."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "resnet18":
        return randomise_norms(torchvision.models.resnet18(num_classes=10))
    if name.startswith("vit"):
        return timm.create_model(name, pretrained=False, img_size=32, num_classes=10)
    return randomise_norms(timm.create_model(name, pretrained=False, num_classes=10))


MODELS = ["resnet18", "resnet18d", "efficientnet_b0", "vit_tiny_patch16_224"]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", MODELS)
def test_fp32_output_matches_the_eval_backbone(name: str, x: torch.Tensor) -> None:
    model = build(name)
    reference = copy.deepcopy(model).eval()
    fb = fz.FrozenBackbone(model, fast=True).train()
    out = fb(x)
    with torch.no_grad():
        expected = reference(x)
    assert relative_error(out, expected) <= 1e-4
    folded = fb._fast_path.folded
    assert (len(folded) > 0) == (not name.startswith("vit"))  # folding applies to CNNs only
    convs = [m for m in fb._fast_path.module.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)


def test_batchnormact_keeps_its_activation() -> None:
    model = build("efficientnet_b0")
    assert any(type(m) is BatchNormAct2d and not isinstance(m.act, nn.Identity) for m in model.modules())
    conv, bn = nn.Conv2d(3, 8, 3), randomise_norms(BatchNormAct2d(8, act_layer=nn.ReLU)).eval()
    x = torch.randn(2, 3, 8, 8)
    assert can_fold(conv, bn)
    with torch.no_grad():
        torch.testing.assert_close(norm_remainder(bn)(fold_conv_bn(conv, bn)(x)), bn(conv(x)))
    assert (norm_remainder(bn)(fold_conv_bn(conv, bn)(x)) >= 0).all()


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224"])
def test_state_dict_and_parameters_are_the_original_ones(name: str, x: torch.Tensor) -> None:
    model = build(name)
    expected = Tensors({k: v.clone() for k, v in model.state_dict().items()})
    names = [n for n, _ in fz.FrozenBackbone(copy.deepcopy(model)).named_parameters()]
    fb = fz.FrozenBackbone(model, fast=True)
    fb(x)
    assert fb._fast_path is not None
    assert Tensors(fb.state_dict()) == expected
    assert all(v.dtype == expected[k].dtype for k, v in fb.state_dict().items())
    assert [n for n, _ in fb.named_parameters()] == names
    assert [n for n, _ in fb.named_modules()] == [n for n, _ in fz.FrozenBackbone(copy.deepcopy(model)).named_modules()]


def test_load_state_dict_updates_the_fast_path(x: torch.Tensor) -> None:
    fb = fz.FrozenBackbone(build("resnet18"), fast=True)
    fb(x)
    other = randomise_norms(torchvision.models.resnet18(num_classes=10))
    with torch.no_grad():
        other.bn1.running_mean.add_(1.0)
    fb.load_state_dict(other.state_dict())
    with torch.no_grad():
        expected = other.eval()(x)
    assert relative_error(fb(x), expected) <= 1e-4


def test_an_in_place_change_to_a_frozen_weight_is_seen(x: torch.Tensor) -> None:
    fb = fz.FrozenBackbone(build("resnet18"), fast=True)
    before = fb(x)
    with torch.no_grad():
        fb.backbone.layer1[0].bn1.running_var.mul_(4.0)
        expected = copy.deepcopy(fb.backbone).eval()(x)
    out = fb(x)
    assert not torch.allclose(out, before)
    assert relative_error(out, expected) <= 1e-4


def test_unfreeze_restores_the_original_weights_and_plain_behaviour(x: torch.Tensor) -> None:
    model = build("resnet18")
    plain = copy.deepcopy(model).train()
    before = snapshot(model)
    fb = fz.FrozenBackbone(model, fast=True)
    fb(x)
    fb.unfreeze().train()
    assert Tensors(snapshot(fb.backbone)) == Tensors(before)
    out = fb(x)
    torch.testing.assert_close(out, plain(x), rtol=0, atol=0)  # train-mode BatchNorm, the original kernels
    out.sum().backward()
    assert all(p.grad is not None for p in fb.parameters())
    assert Tensors(dict(fb.backbone.named_buffers())) == Tensors(dict(plain.named_buffers()))


def test_a_trainable_head_trains_on_fast_features(x: torch.Tensor) -> None:
    fb = fz.FrozenBackbone(build("resnet18"), fast=True)
    head = nn.Linear(10, 3)
    features = fb(x)
    assert not features.requires_grad and not features.is_inference()
    features.relu_()  # a normal tensor: in-place use outside inference mode is allowed
    head(features).sum().backward()
    assert head.weight.grad is not None
    assert all(p.grad is None for p in fb.parameters())


@pytest.mark.parametrize("fast", [False, True])
def test_frozen_outputs_are_normal_tensors_a_head_can_train_on(fast: bool, x: torch.Tensor) -> None:
    fb = fz.FrozenBackbone(build("resnet18"), fast=fast)
    with torch.no_grad():  # features computed once, used later with autograd on (linear probing)
        features = fb(x)
    assert not features.is_inference()
    head = nn.Linear(10, 3)
    head(features).sum().backward()
    assert head.weight.grad is not None
    with torch.inference_mode():
        assert fb(x).is_inference()  # no clone when the caller is in inference mode itself


def test_partially_frozen_backbone_trains_like_the_plain_path() -> None:
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))  # train-mode BatchNorm needs spread
    model = build("resnet18")
    plain = fz.FrozenBackbone(copy.deepcopy(model), trainable=["stage4", "head"]).train()
    fast = fz.FrozenBackbone(model, trainable=["stage4", "head"], fast=True).train()
    out_plain, out_fast = plain(x), fast(x)
    assert fast._fast_path is not None and fast._fast_path.folded  # the frozen prefix is folded
    torch.testing.assert_close(out_fast, out_plain, rtol=1e-4, atol=1e-4)
    out_plain.square().sum().backward()
    out_fast.square().sum().backward()
    for (name, p), (_, q) in zip(plain.named_trainable_parameters(), fast.named_trainable_parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4, msg=name)
    # trainable BatchNorm layers updated their statistics as in the plain path; frozen ones did not
    torch.testing.assert_close(dict(fast.backbone.named_buffers()), dict(plain.backbone.named_buffers()))
    fast.eval()
    plain.eval()
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # modes follow under no_grad too (the inference-mode branch)
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-4)
        fast.train()
        plain.train()
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-4)
    assert "fast=True" in repr(fast) and "fast=True" not in repr(plain)


def test_frozen_dtype_stores_frozen_copies_in_bf16(x: torch.Tensor) -> None:
    model = build("resnet18")
    reference = copy.deepcopy(model).eval()
    fb = fz.FrozenBackbone(model, fast=True, frozen_dtype=torch.bfloat16)
    out = fb(x)
    assert out.dtype == torch.float32
    assert relative_error(out, reference(x).detach()) <= 5e-2
    shadow_params = [p for p in fb._fast_path.module.parameters()]
    assert shadow_params and all(p.dtype == torch.bfloat16 for p in shadow_params)
    assert all(v.dtype != torch.bfloat16 for v in fb.state_dict().values())


def test_fast_path_survives_deepcopy_save_and_to(x: torch.Tensor) -> None:
    fb = fz.FrozenBackbone(build("resnet18"), fast=True)
    expected = fb(x)
    buffer = io.BytesIO()
    torch.save(fb, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    twin = copy.deepcopy(fb)
    assert twin._fast_path is None and loaded._fast_path is None
    torch.testing.assert_close(twin(x), expected)
    torch.testing.assert_close(loaded(x), expected)
    fb.double()
    assert fb._fast_path is None
    assert fb(x.double()).dtype == torch.float64


def test_wrong_fold_is_detected_and_run_unfolded() -> None:
    class ReusesConvOutput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y  # y is read twice: folding bn into conv would change the second read

    model = randomise_norms(ReusesConvOutput())
    x = torch.randn(2, 3, 8, 8)
    expected = copy.deepcopy(model).eval()(x).detach()
    fb = fz.FrozenBackbone(model, fast=True)
    with pytest.warns(RuntimeWarning, match="running it unfolded"):
        out = fb(x)
    assert fb._fast_path.folded == []
    torch.testing.assert_close(out, expected)


def test_compiled_fast_forward_has_no_graph_break(x: torch.Tensor) -> None:
    torch._dynamo.reset()
    fb = fz.FrozenBackbone(build("resnet18"), fast=True)
    expected = fb(x)  # builds the shadow eagerly
    head = nn.Linear(10, 3)
    compiled = torch.compile(nn.Sequential(fb, head), backend="eager", fullgraph=True)  # a graph break raises
    out = compiled(x)
    out.sum().backward()
    assert head.weight.grad is not None
    torch.testing.assert_close(out, head(expected))


def test_build_under_autocast_still_folds(x: torch.Tensor) -> None:
    model = build("resnet18")
    reference = copy.deepcopy(model).eval()
    fb = fz.FrozenBackbone(model, fast=True)
    with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
        warnings.simplefilter("error")
        out = fb(x)
    assert fb._fast_path.folded
    assert relative_error(out.float(), reference(x).detach()) <= 5e-2


def test_bad_fast_arguments_are_refused() -> None:
    model = torchvision.models.resnet18()
    with pytest.raises(fz.FreezableError, match="needs fast=True"):
        fz.FrozenBackbone(model, frozen_dtype=torch.bfloat16)
    with pytest.raises(fz.FreezableError, match="floating torch.dtype.*torch.int8"):
        fz.FrozenBackbone(model, fast=True, frozen_dtype=torch.int8)
    with pytest.raises(fz.FreezableError, match="fast must be a bool"):
        fz.FrozenBackbone(model, fast="yes")
    assert all(p.requires_grad for p in model.parameters())  # refused before anything changed


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fast_path_channels_last_and_bf16(x: torch.Tensor) -> None:
    model = build("resnet18").cuda()
    reference = copy.deepcopy(model).eval()
    x = x.cuda()
    fb = fz.FrozenBackbone(model, fast=True)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        assert relative_error(fb(x), reference(x).detach()) <= 1e-4
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    weights = [p for p in fb._fast_path.module.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    bf = fz.FrozenBackbone(copy.deepcopy(reference), fast=True, frozen_dtype=torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16), warnings.catch_warnings():
        warnings.simplefilter("error")  # the build compares folded and unfolded outside autocast: no fallback
        out = bf(x)
    assert bf._fast_path.folded
    assert relative_error(out.float(), reference(x).detach()) <= 5e-2


# -- new tensor objects (issue 21) -------------------------------------------------------------------------------------


def _new_weights(fb: fz.FrozenBackbone) -> None:
    """Every parameter and buffer of the backbone replaced by new objects (other values, same frozen state)."""
    torch.manual_seed(5)
    other = randomise_norms(torchvision.models.resnet18(num_classes=10))
    for p in other.parameters():
        p.requires_grad_(False)
    fb.backbone.load_state_dict(other.state_dict(), assign=True)


def _new_conv1_weight(fb: fz.FrozenBackbone) -> None:
    fb.backbone.conv1.weight = nn.Parameter(torch.randn_like(fb.backbone.conv1.weight), requires_grad=False)


def _new_running_var(fb: fz.FrozenBackbone) -> None:
    fb.backbone.layer1[0].bn1.running_var = fb.backbone.layer1[0].bn1.running_var * 4


def _new_frozen_conv(fb: fz.FrozenBackbone) -> None:
    conv = copy.deepcopy(fb.backbone.layer2[0].conv1)
    with torch.no_grad():
        conv.weight.mul_(-1)
    fb.backbone.layer2[0].conv1 = conv


def _new_head(fb: fz.FrozenBackbone) -> None:
    fb.backbone.fc = nn.Linear(512, 10)


def _new_backbone(fb: fz.FrozenBackbone) -> None:
    backbone = copy.deepcopy(fb.backbone)  # frozen and held like the one it replaces (the marks are copied)
    with torch.no_grad():
        backbone.conv1.weight.mul_(-1)
    fb.backbone = backbone


NEW_OBJECTS = {"load_state_dict_assign": _new_weights, "parameter_assigned": _new_conv1_weight,
               "buffer_assigned": _new_running_var, "frozen_module_swapped": _new_frozen_conv,
               "trainable_module_swapped": _new_head, "backbone_replaced": _new_backbone}


@pytest.mark.parametrize("change", NEW_OBJECTS)
@pytest.mark.parametrize("trainable", [(), ("head",)], ids=["frozen", "head_trains"])
def test_new_tensor_objects_in_the_backbone_rebuild_the_fast_path(change: str, trainable: tuple[str, ...],
                                                                   x: torch.Tensor) -> None:
    fb = fz.FrozenBackbone(build("resnet18"), trainable=list(trainable), fast=True)
    before = fb(x)
    NEW_OBJECTS[change](fb)
    with torch.no_grad():
        expected = copy.deepcopy(fb.backbone).eval()(x)
    out = fb(x)
    assert not torch.allclose(out, before)
    assert relative_error(out, expected) <= 1e-4


class Iterates(nn.Module):
    """A parent that iterates its ModuleList and ModuleDict instead of calling them (they have no forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
                                     nn.Conv2d(4, 4, 1)])
        self.heads = nn.ModuleDict({"a": nn.Conv2d(4, 2, 1), "b": nn.BatchNorm2d(2)})

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        for head in self.heads.values():
            x = head(x)
        return x


@pytest.mark.parametrize("frozen_dtype", [None, torch.bfloat16])
def test_held_containers_without_a_forward_stay_containers_in_the_fast_path(frozen_dtype, x: torch.Tensor) -> None:
    """Found by the widened property test (issue 21): a held ModuleList was wrapped as if it were called."""
    model = randomise_norms(Iterates())
    with torch.no_grad():
        expected = copy.deepcopy(model).eval()(x)
    fb = fz.FrozenBackbone(model, trainable=["heads.a"], fast=True, frozen_dtype=frozen_dtype).train()
    out = fb(x)
    assert isinstance(fb._fast_path.module.blocks, nn.ModuleList) and fb._fast_path.folded  # its parts are folded
    torch.testing.assert_close(out, expected, **({"rtol": 0.05, "atol": 0.05} if frozen_dtype else {}))
