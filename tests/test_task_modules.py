"""Training with frozen task modules: a frozen part that serves its model's training forward.

A detector's RPN, RoI heads and input transform return losses and training proposals in
``train()``. Frozen, they follow ``train()`` while what is inside them is held at inference
(``freezable._state.follows_train``). Checked against the same model frozen by hand:
``requires_grad_(False)`` on the same parameters and those norm layers in ``.eval()``.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

import freezable as fz
from freezable.mixin import is_frozen, is_held
from freezable.norms import has_running_stats

_IMAGES = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1)) for _ in range(2)]
_TARGETS = [
    {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
    {"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0], [0.0, 0.0, 20.0, 20.0]]), "labels": torch.tensor([2, 1])},
]


def _detector() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=64,
        rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100, rpn_batch_size_per_image=32,
        box_batch_size_per_image=32,
    )


def _frozen_by_hand(model: nn.Module, frozen: set[str]) -> nn.Module:
    """``model`` with ``frozen`` parameters' requires_grad off and the norms among them in eval, in train()."""
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen)
    model.train()
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if has_running_stats(module) and params and not any(p.requires_grad for p in params):
            module.eval()
    return model


def _step(model: nn.Module, params: list[nn.Parameter]) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    torch.manual_seed(2)  # the RPN and RoI heads sample at random in training
    losses = model(_IMAGES, _TARGETS)
    sum(losses.values()).backward()
    grads = [p.grad.clone() for p in params]
    optimizer.step()
    return losses, grads


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "trainable",
    [["neck", "rpn", "roi_heads"], ["backbone", "roi_heads"]],
    ids=["body_frozen", "rpn_frozen"],
)
def test_detector_with_frozen_parts_trains_as_frozen_by_hand(trainable):
    fb = fz.FrozenBackbone(_detector(), trainable=trainable)
    frozen = {n for n, p in fb.backbone.named_parameters() if not p.requires_grad}
    assert frozen and is_frozen(fb.backbone.transform)  # the parameter-free transform is frozen too
    reference = _frozen_by_hand(_detector(), frozen)
    before = _state(fb.backbone)

    losses, grads = _step(fb.train(), list(fb.trainable_parameters()))
    expected, expected_grads = _step(reference, [p for p in reference.parameters() if p.requires_grad])

    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    for key in expected:
        torch.testing.assert_close(losses[key], expected[key], rtol=0, atol=0)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=0, atol=0)
    after, expected_after = _state(fb.backbone), _state(reference)
    for key, value in after.items():
        torch.testing.assert_close(value, expected_after[key], rtol=0, atol=0, msg=key)
        owner = key.rpartition(".")[0]
        if key in frozen or any(f.rpartition(".")[0] == owner for f in frozen):  # frozen parameters, frozen norms
            assert torch.equal(value, before[key]), key
    moved = [n for n, p in fb.backbone.named_parameters() if not torch.equal(p, before[n])]
    assert moved and not set(moved) & frozen


def test_frozen_rpn_follows_train_while_its_insides_are_held():
    fb = fz.FrozenBackbone(_detector(), trainable=["backbone", "roi_heads"]).train()
    rpn = fb.backbone.rpn
    assert is_frozen(rpn) and rpn.training and not is_held(rpn)
    assert is_held(rpn.head) and not rpn.head.training
    fb.eval()
    assert not rpn.training
    fb.unfreeze("backbone").freeze("backbone")  # the hold is derived again after any change
    assert fb.train().backbone.rpn.training


def test_wholly_frozen_detector_stays_at_inference():
    fb = fz.FrozenBackbone(_detector()).train()
    assert is_held(fb.backbone.rpn) and not fb.backbone.roi_heads.training
    with torch.no_grad():
        (detections,) = fb([_IMAGES[0]])
    assert set(detections) == {"boxes", "labels", "scores"}


# Whole models that switch their output on self.training: held only when frozen whole.


def _inception() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False, num_classes=3)


def _googlenet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False, num_classes=3)


@pytest.mark.parametrize("build, size", [(_inception, 299), (_googlenet, 224)], ids=["inception_v3", "googlenet"])
def test_frozen_aux_logits_do_not_break_a_training_step(build, size):
    fb = fz.FrozenBackbone(build(), trainable=["fc"]).train()
    out = fb(torch.rand(1, 3, size, size))  # sizes at which the aux branches run
    logits, aux = out[0], out[1]  # training outputs: (logits, aux logits...)
    loss = nn.functional.cross_entropy(logits, torch.tensor([2])) + sum(a.sum() for a in out[1:])
    loss.backward()
    assert all((p.grad is None) != p.requires_grad for p in fb.parameters())
    aux_module = getattr(fb.backbone, "AuxLogits", None) or fb.backbone.aux1
    assert is_held(aux_module) and not aux.requires_grad


@pytest.mark.parametrize("build, size", [(_inception, 139), (_googlenet, 32)], ids=["inception_v3", "googlenet"])
def test_wholly_frozen_model_with_aux_logits_gives_its_inference_output(build, size):
    fb = fz.FrozenBackbone(build())
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        in_train, in_eval = fb.train()(x), fb.eval()(x)
    assert isinstance(in_train, torch.Tensor)
    torch.testing.assert_close(in_train, in_eval, rtol=0, atol=0)


def _deit() -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, num_classes=3, depth=2)
    model.set_distilled_training(True)
    return model


def test_distilled_vit_with_frozen_blocks_returns_both_heads_in_training():
    fb = fz.FrozenBackbone(_deit(), trainable=["head"]).train()
    x = torch.rand(2, 3, 32, 32)
    out, out_dist = fb(x)
    (out.sum() + out_dist.sum()).backward()
    assert all((p.grad is None) != p.requires_grad for p in fb.parameters())
    with torch.no_grad():
        torch.testing.assert_close(fb.eval()(x), (out + out_dist) / 2)


def test_wholly_frozen_distilled_vit_is_a_teacher_at_inference():
    fb = fz.FrozenBackbone(_deit())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fb.train()(x), fb.eval()(x), rtol=0, atol=0)

