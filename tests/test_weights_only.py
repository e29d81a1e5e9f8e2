"""Checkpoints load with torch.load(weights_only=True), and freezable never unpickles anything."""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import Net, Tensors

import freezable as fz

PACKAGE = Path(fz.__file__).parent
UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "jsonpickle"}


def round_trip(obj: object) -> object:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)


def test_freeze_state_loads_with_weights_only(net):
    net.freeze("features", train_bn=True).unfreeze("classifier")
    state = net.freeze_state()
    assert round_trip(state) == state == json.loads(json.dumps(state))
    assert Net().load_freeze_state(round_trip(state)).freeze_state() == state


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.1, amsgrad=True),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.9, centered=True),
], ids=["AdamW", "SGD", "RMSprop"])
def test_a_full_checkpoint_loads_with_weights_only_and_resumes(net, images, make_optimizer):
    net.freeze("features").train()
    opt = make_optimizer(net.trainable_parameters())
    for _ in range(2):
        opt.zero_grad()
        net(images).square().mean().backward()
        opt.step()
    checkpoint = {"model": net.state_dict(), "optimizer": opt.state_dict(), "freeze_state": net.freeze_state(),
                  "epoch": 3}
    loaded = round_trip(checkpoint)
    other = Net()
    other.load_state_dict(loaded["model"], strict=True)
    other.load_freeze_state(loaded["freeze_state"])
    other_opt = make_optimizer(other.trainable_parameters())
    other_opt.load_state_dict(loaded["optimizer"])
    assert Tensors(other.state_dict()) == Tensors(net.state_dict())
    assert other.freeze_state() == net.freeze_state() and other.frozen_groups == ("features",)
    assert fz.check(other.train(), other_opt).ok
    assert str(other_opt.state_dict()) == str(opt.state_dict())


def test_a_frozen_backbone_checkpoint_loads_with_weights_only():
    torch.manual_seed(0)
    resnet = torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=4)
    fb = fz.FrozenBackbone(resnet, preset="torchvision.frozen_stages_2")
    fb.freeze("stem", guard=True)  # the guard stays out of the checkpoint
    loaded = round_trip({"model": fb.state_dict(), "freeze_state": fb.freeze_state()})
    assert list(loaded["model"]) == list(resnet.state_dict())
    plain = torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=4)
    plain.load_state_dict(loaded["model"], strict=True)
    again = fz.FrozenBackbone(plain).load_freeze_state(loaded["freeze_state"])
    assert again.frozen_groups == fb.frozen_groups


# -- nothing in freezable unpickles ---------------------------------------------------------------------------------


def unpickling_calls(source: str) -> list[str]:
    """Imports of unpickling modules, and torch.load calls without weights_only=True, in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] in UNPICKLERS]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNPICKLERS:
            found.append(node.module)
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name.endswith("load") and name.split(".")[0] == "torch" or name in ("load", "_load"):
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                if not safe:
                    found.append(ast.unparse(node))
    return found


def test_the_scan_catches_unpickling():
    assert unpickling_calls("import pickle\nfrom dill import loads\ntorch.load(f)\n"
                            "torch.serialization.load(f, weights_only=False)\ntorch.load(f, weights_only=True)") == [
        "pickle", "dill", "torch.load(f)", "torch.serialization.load(f, weights_only=False)"]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_freezable_never_unpickles(path):
    assert unpickling_calls(path.read_text()) == []
