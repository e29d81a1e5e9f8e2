"""The drift guard: freeze(..., guard=True) and what fz.check reports from it."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torchvision
from conftest import Net, full_state
from torch import nn

import freezable as fz
from freezable.guard import fingerprint, guarded_names


def flip_bit(tensor: torch.Tensor, index: int = 0, bit: int = 0) -> None:
    """Flips one bit of one element, in place, bypassing autograd."""
    flat = tensor.detach().view(-1)
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[flat.element_size()]
    flat.view(as_int)[index] ^= 1 << bit


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64])
@pytest.mark.parametrize("bit", [0, 7, 15])
def test_a_single_bit_changes_the_fingerprint(dtype, bit):
    tensor = torch.arange(12).reshape(3, 4).to(dtype)
    before = fingerprint(tensor)
    flip_bit(tensor, index=5, bit=bit)
    assert fingerprint(tensor) != before
    flip_bit(tensor, index=5, bit=bit)
    assert fingerprint(tensor) == before


def test_dtype_and_shape_are_part_of_the_fingerprint():
    t = torch.zeros(4)
    assert fingerprint(t) != fingerprint(t.reshape(2, 2)) and fingerprint(t) != fingerprint(t.to(torch.int32))


def test_guard_records_frozen_parameters_and_buffers(net):
    net.freeze("features", guard=True)
    names = guarded_names(net)
    assert "features.0.weight" in names and "features.1.running_mean" in names
    assert "features.5.num_batches_tracked" in names
    assert not any(n.startswith("classifier") for n in names)
    assert len(names) == 8 + 2 * 3  # conv, bn, conv, bn; running_mean, running_var, num_batches_tracked


@pytest.mark.parametrize("name", ["features.4.weight", "features.1.running_var", "features.5.num_batches_tracked"])
def test_check_names_every_frozen_tensor_that_changed(net, name):
    net.freeze("features", guard=True)
    tensor = net.get_parameter(name) if "running" not in name and "batches" not in name else net.get_buffer(name)
    flip_bit(tensor, index=0, bit=0)
    (problem,) = fz.check(net).problems
    kind = "parameter" if isinstance(tensor, nn.Parameter) else "buffer"
    assert problem == f"frozen {kind} '{name}' changed since freeze(guard=True)"


def test_every_changed_tensor_is_reported(net):
    net.freeze(guard=True)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1)
    assert len(fz.check(net).problems) == len(list(net.parameters()))


def test_norm_layers_trained_in_train_mode_drift_and_are_reported(net, images):
    """The classic bug: statistics updated behind a frozen layer's back, by a call that skips hooks."""
    net.freeze("features", guard=True).train()
    bn = net.features[1]
    nn.functional.batch_norm(torch.randn(4, 8, 2, 2), bn.running_mean, bn.running_var, training=True)
    assert fz.check(net).problems == ["frozen buffer 'features.1.running_mean' changed since freeze(guard=True)",
                                      "frozen buffer 'features.1.running_var' changed since freeze(guard=True)"]


def test_training_leaves_a_guarded_model_clean(net, images):
    net.freeze("features", guard=True).train()
    opt = torch.optim.SGD(net.trainable_parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad(set_to_none=False)
        net(images).sum().backward()
        opt.step()
    assert fz.check(net, opt, strict=True).ok


def test_train_bn_norms_are_not_guarded(net, images):
    net.freeze("features", train_bn=True, guard=True).train()
    assert not any(n.startswith("features.1.") for n in guarded_names(net))
    net(images)  # statistics update, as train_bn means
    assert fz.check(net).ok


def test_unfreeze_drops_the_guard_on_what_it_unfreezes(net, images):
    net.register_freeze_group("conv2", "features.4")
    net.freeze(guard=True)
    net.unfreeze("conv2")
    assert not any(n.startswith("features.4.") for n in guarded_names(net))
    assert "features.0.weight" in guarded_names(net)
    with torch.no_grad():
        net.features[4].weight.add_(1)
    assert fz.check(net).ok
    net.unfreeze()
    assert guarded_names(net) == []


def test_freezing_again_with_guard_records_afresh(net):
    net.freeze("features", guard=True)
    with torch.no_grad():
        net.features[0].weight.mul_(2)  # e.g. new weights loaded on purpose
    assert not fz.check(net).ok
    net.freeze("features", guard=True)
    assert fz.check(net).ok


def test_a_tensor_made_trainable_by_load_freeze_state_is_no_longer_watched(net):
    net.freeze("features", guard=True)
    net.load_freeze_state(Net().freeze_state())
    with torch.no_grad():
        net.features[0].weight.add_(1)
    assert fz.check(net).ok


def test_guard_survives_deepcopy_and_whole_module_save(net):
    net.freeze("features", guard=True)
    buffer = io.BytesIO()
    torch.save(net, buffer)
    for other in (copy.deepcopy(net), torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)):
        assert guarded_names(other) == guarded_names(net) and fz.check(other).ok
        flip_bit(other.features[0].weight)
        assert fz.check(other).problems == ["frozen parameter 'features.0.weight' changed since freeze(guard=True)"]
    assert fz.check(net).ok  # the copies' tensors are their own


def test_guard_stays_out_of_the_state_dict():
    torch.manual_seed(0)

    class AlexNet(fz.Freezable, torchvision.models.AlexNet):
        freeze_groups = {"features": "features"}

    model = AlexNet(num_classes=4).freeze("features", guard=True)
    plain = torchvision.models.AlexNet(num_classes=4)
    assert list(model.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(model.state_dict(), strict=True)
    model.load_state_dict(plain.state_dict(), strict=True)
    assert fz.check(model).ok  # the same values: no drift


def test_loading_other_weights_into_guarded_parts_is_reported(net):
    net.freeze("features", guard=True)
    torch.manual_seed(9)
    net.load_state_dict(Net().state_dict())
    problems = fz.check(net).problems
    assert "frozen parameter 'features.0.weight' changed since freeze(guard=True)" in problems
    assert not any("running_mean" in p for p in problems)  # fresh statistics are equal to the old ones


def test_frozen_backbone_guard_uses_the_callers_names():
    torch.manual_seed(0)
    fb = fz.FrozenBackbone(torchvision.models.resnet18(num_classes=4), trainable=["fc"])
    fb.freeze("stem", guard=True)
    flip_bit(fb.backbone.bn1.running_mean)
    assert fz.check(fb).problems == ["frozen buffer 'backbone.bn1.running_mean' changed since freeze(guard=True)"]
    assert fz.check(nn.Sequential(fb)).problems == [
        "frozen buffer '0.backbone.bn1.running_mean' changed since freeze(guard=True)"]
    assert "bn1.running_mean" in guarded_names(fb)  # stored with the backbone's own names


def test_a_replaced_module_is_reported(net):
    net.freeze("features", guard=True)
    net.features[4] = nn.Identity()
    problems = fz.check(net).problems
    assert "guarded frozen parameter 'features.4.weight' is no longer in the model" in problems


def test_meta_tensors_are_not_fingerprinted():
    with torch.device("meta"):
        model = Net()
    model.freeze("features", guard=True)
    assert fz.check(model).ok


@pytest.mark.parametrize("guard", ["yes", 1, None])
def test_guard_must_be_a_bool_and_a_bad_one_changes_nothing(net, guard):
    before = full_state(net)
    with pytest.raises(fz.FreezableError, match=f"guard must be a bool, not {type(guard).__name__}: {guard!r}"):
        net.freeze("features", guard=guard)
    assert full_state(net) == before and guarded_names(net) == []


# -- a guarded module swapped after freezing (issue 21) ---------------------------------------------------------------


def _sync_batchnorm(net: nn.Module) -> None:
    net.features = nn.SyncBatchNorm.convert_sync_batchnorm(net.features)  # the same Parameter and buffer objects


def _rebuilt(net: nn.Module) -> None:
    """A new layer by hand, with the old one's values and frozen parameters (a deepcopy would carry the hold)."""
    layer = nn.BatchNorm2d(8)
    layer.load_state_dict(net.features[1].state_dict())
    net.features[1] = layer.requires_grad_(False)


def _fresh(net: nn.Module) -> None:
    net.features[1] = nn.BatchNorm2d(8)  # trainable: a conflict at a frozen place


SWAPS = {"convert_sync_batchnorm": _sync_batchnorm, "rebuilt_by_hand": _rebuilt, "fresh_layer": _fresh}


def _forward_on_the_layer(net: nn.Module) -> None:
    net.features[1].train()(torch.randn(4, 8, 3, 3) * 3 + 1)  # called directly: no hook of the model runs


def _write(net: nn.Module) -> None:
    flip_bit(net.features[1].running_var)


DRIFTS = {"none": lambda net: None, "training_forward_on_the_layer": _forward_on_the_layer, "buffer_written": _write}


@pytest.mark.parametrize("drift", DRIFTS)
@pytest.mark.parametrize("swap", SWAPS)
def test_a_guarded_norm_swapped_after_freezing_then_drifted_is_reported_in_eval(net, swap, drift):
    torch.manual_seed(0)
    with torch.no_grad():
        net.features[1].running_mean.uniform_(-1, 1)
        net.features[1].running_var.uniform_(0.5, 2)
    net.freeze("features", guard=True).train()
    SWAPS[swap](net)
    DRIFTS[drift](net)  # before any train(), forward or check of the model: not yet frozen like its place
    problems = fz.check(net.eval()).problems  # eval: the swapped-in layer is frozen (or a conflict) now
    drifted = [p for p in problems if p.startswith("frozen buffer 'features.1.running_")]
    assert all(p.endswith("changed since freeze(guard=True)") for p in drifted)
    assert bool(drifted) is (drift != "none" or swap == "fresh_layer"), problems  # a fresh layer: other statistics
