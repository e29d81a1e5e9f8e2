"""Bad input, everywhere: every public function answers with a FreezableError that names the bad value.

One row per distinct bad input: ``Bad(id, call, error, match)``. ``call`` gets the subjects
(``s.net``: a :class:`conftest.Net` with a guard and a registered group, ``s.fb``: a
FrozenBackbone of a small ResNet, ``s.extra``: whatever the row's ``setup`` built). ``error``
is the exception class expected (``pytest.raises(error, match=match)``), or, for the command
line, the exit code expected with ``match`` searched in stderr. After every row the subjects
must be exactly as before: freeze state, ``requires_grad`` and gradients, modes and hooks,
every tensor bit for bit, groups, the guard, and the preset registry.

To add a row, append a ``Bad`` to ``ROWS``; ids must stay unique.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torchvision
from conftest import Net, full_state
from torch import nn

import freezable as fz
from freezable.presets import Alias, PresetFamily
from freezable.__main__ import main
from freezable.errors import (FreezableTypeError, FreezeStateError, PresetError, SpecError, UnknownGroupError,
                             UnknownNameError)
from freezable.guard import guarded_names

FreezableError = fz.FreezableError


@dataclass
class Subjects:
    net: Net
    fb: fz.FrozenBackbone
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Bad:
    id: str  # unique, says what is wrong
    call: Callable[[Subjects], Any]  # the bad call
    error: type[BaseException] | int  # the exception expected, or the CLI's exit code
    match: str  # regex searched in the message (or in stderr for the CLI)
    setup: Callable[[Subjects], None] | None = None  # runs before the "before" snapshot


def cli(*argv: str) -> Callable[[Subjects], int]:
    return lambda s: main(list(argv))


STATE = {"format": "freezable.freeze_state", "version": 1, "frozen_modules": [], "frozen_parameters": []}


def state(**changes: Any) -> dict[str, Any]:
    """A valid empty freeze state with ``changes`` (a value of ``...`` removes the key)."""
    out = {**STATE, **changes}
    return {k: v for k, v in out.items() if v is not ...}


class ListGroups(Net):
    freeze_groups = ["features"]  # type: ignore[assignment]


class TypoGroups(Net):
    freeze_groups = {"features": "featurez"}


def replace_a_member(s: Subjects) -> None:
    s.net.register_freeze_group("loose", "classifier.0", "classifier.1.weight")
    s.net.classifier[1] = nn.Identity()


def headless_resnet(s: Subjects) -> None:
    """A ResNet whose classifier was removed (fc = nn.Identity(), to put a new head outside it)."""
    resnet = torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1])
    resnet.fc = nn.Identity()
    s.extra["headless"] = resnet


def hf_clip(s: Subjects) -> None:
    """A tiny two-tower CLIP and a FrozenBackbone of it (rows that need transformers skip without it)."""
    transformers = pytest.importorskip("transformers")
    sizes = dict(hidden_size=16, num_attention_heads=2, intermediate_size=32, num_hidden_layers=2)
    config = transformers.CLIPConfig(text_config=dict(sizes, vocab_size=50, max_position_embeddings=8),
                                     vision_config=dict(sizes, image_size=16, patch_size=8), projection_dim=8)
    s.extra["clip"] = transformers.CLIPModel(config)
    s.extra["clip_fb"] = fz.FrozenBackbone(transformers.CLIPModel(config), trainable=["visual_projection"])


def open_clip_resnet(s: Subjects) -> None:
    """A tiny open_clip CLIP with a ModifiedResNet image tower (rows that need open_clip skip without it)."""
    open_clip = pytest.importorskip("open_clip")
    s.extra["oc"] = open_clip.CLIP(embed_dim=8, vision_cfg=dict(layers=(1, 1, 1, 1), width=8, head_width=8,
                                                                image_size=32),
                                   text_cfg=dict(context_length=4, vocab_size=50, width=8, heads=2, layers=2))


def plain_resnet(s: Subjects) -> None:
    """A plain torchvision ResNet: what a failed fz.freeze must leave plain, its class included."""
    torch.manual_seed(0)
    s.extra["model"] = torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=4)


def in_place_resnet(s: Subjects) -> None:
    plain_resnet(s)
    fz.freeze(s.extra["model"], trainable=["head"])


def yolo_cls(s: Subjects) -> None:
    """A YOLOv8n classifier built from its yaml (rows that need ultralytics skip without it)."""
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import ClassificationModel

    s.extra["yolo"] = ClassificationModel("yolov8n-cls.yaml", verbose=False)


def hf_bert(s: Subjects) -> None:
    """A tiny BERT and a FrozenBackbone of it (rows that need transformers skip without it)."""
    pytest.importorskip("transformers")
    import _hf_models

    s.extra["bert"] = _hf_models.bert()
    s.extra["fb"] = fz.FrozenBackbone(_hf_models.bert(), trainable=["head"])


def hf_callback(*args: Any, **kwargs: Any) -> Any:
    transformers_integration = pytest.importorskip("freezable.integrations.transformers")
    return transformers_integration.GradualUnfreezing(*args, **kwargs)


def make_extra(cls: type[nn.Module]) -> Callable[[Subjects], None]:
    def setup(s: Subjects) -> None:
        s.extra["model"] = cls()

    return setup


def plain_freezable() -> nn.Module:
    """A Freezable without groups, its (empty) groups already resolved."""
    model = type("Plain", (fz.Freezable, nn.Sequential), {})(nn.Linear(2, 2))
    assert model.freeze_group_names == ()
    return model


def inner_train(s: Subjects) -> None:
    s.net.features.train()


class Tiny(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())


def tiny_frozen() -> fz.FrozenBackbone:
    return fz.FrozenBackbone(Tiny())


def progressive(s: Subjects) -> None:
    """A Freezable to freeze progressively (everything trainable) and its ProgressiveFreezing, in ``s.extra``."""
    torch.manual_seed(0)
    model = Net()
    s.extra["chain"] = model
    s.extra["pf"] = fz.ProgressiveFreezing(model, "gradient", optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def lightning_callback(*args: Any, **kwargs: Any) -> Any:
    return pytest.importorskip("freezable.integrations.lightning").ProgressiveFreezingCallback(*args, **kwargs)


def hf_progressive_callback(*args: Any, **kwargs: Any) -> Any:
    return pytest.importorskip("freezable.integrations.transformers").ProgressiveFreezingCallback(*args, **kwargs)


def enter(manager: Any) -> None:
    """Enters and leaves a context manager (frozen(), unfrozen()): a bad name fails on entering."""
    with manager:
        pass


def schedule(s: Subjects, **kwargs: Any) -> fz.ProgressiveFreezing:
    return fz.ProgressiveFreezing(s.net, "schedule", **{"total_steps": 10, **kwargs})


CONFLICT = fz.Preset("test.conflict", "redefines 'features'", {"features": "classifier"}, frozen=("features",))

ROWS: list[Bad] = [
    # -- Freezable.freeze / unfreeze -------------------------------------------------------------------------------
    Bad("freeze-unknown-group", lambda s: s.net.freeze("featurs"), UnknownGroupError,
        r"freeze\(\) entry 'featurs' is neither a group nor a submodule or parameter name of Net; did you mean the "
        r"group 'features'\? groups: \['features', 'classifier', 'conv1'\]"),
    Bad("freeze-second-name-unknown", lambda s: s.net.freeze("features", "clasifier"), UnknownGroupError,
        r"freeze\(\) entry 'clasifier' is neither a group .*did you mean the group 'classifier'"),
    Bad("freeze-empty-name", lambda s: s.net.freeze(""), UnknownGroupError,
        r"freeze\(\) entry '' is neither a group nor a submodule or parameter name of Net; groups: \['features', "
        r"'classifier', 'conv1'\]"),
    Bad("freeze-module-typo", lambda s: s.net.freeze("features.9"), UnknownNameError,
        r"freeze\(\) entry 'features.9' is neither a group nor .*did you mean the group 'features', or 'features.8'"),
    Bad("freeze-glob-matches-nothing", lambda s: s.net.freeze("blocks.*"), SpecError,
        r"freeze\(\) entry 'blocks.\*' is neither a group nor a submodule or parameter name of Net; groups: "),
    Bad("freeze-module-name-with-a-prefix-too-many", lambda s: s.net.freeze("net.features"), UnknownNameError,
        r"'net.features' is neither .*did you mean the group 'features', or 'features'\? names are relative to Net; "
        r"groups: \["),
    Bad("freeze-int-name", lambda s: s.net.freeze(3), FreezableTypeError, r"group name must be a str, not int: 3"),
    Bad("freeze-none-name", lambda s: s.net.freeze(None), FreezableTypeError, r"not NoneType: None"),
    Bad("freeze-list-of-names", lambda s: s.net.freeze(["features"]), FreezableTypeError,
        r"not list: \['features'\]"),
    Bad("freeze-train_bn-str", lambda s: s.net.freeze("features", train_bn="yes"), FreezableTypeError,
        r"train_bn must be a bool, not str: 'yes'"),
    Bad("freeze-train_bn-int", lambda s: s.net.freeze(train_bn=1), FreezableTypeError,
        r"train_bn must be a bool, not int: 1"),
    Bad("freeze-guard-str", lambda s: s.net.freeze("features", guard="yes"), FreezableTypeError,
        r"guard must be a bool, not str: 'yes'"),
    Bad("freeze-guard-none", lambda s: s.net.freeze(guard=None), FreezableTypeError,
        r"guard must be a bool, not NoneType: None"),
    Bad("freeze-guard-lazy-not-materialised", lambda s: s.extra["lazy"].freeze(guard=True), FreezableError,
        r"freeze\(\.\.\., guard=True\) cannot fingerprint 4 tensor\(s\) of lazy modules not materialised yet \('0.weight', "
        r"'0.bias', '1.weight', '1.bias'\); run one forward first", setup=lambda s: s.extra.update(
            lazy=fz.freezable(nn.Sequential(nn.LazyLinear(3), nn.LazyLinear(2))))),
    Bad("freeze-member-replaced-since-registration", lambda s: s.net.freeze("loose"), FreezableError,
        r"no parameter 'classifier.1.weight' any more", setup=replace_a_member),
    Bad("unfreeze-member-replaced-since-registration", lambda s: s.net.unfreeze("loose"), FreezableError,
        r"no parameter 'classifier.1.weight' any more", setup=replace_a_member),
    Bad("freeze_group-unknown", lambda s: s.net.freeze_group("clasifier"), UnknownGroupError,
        r"unknown freeze group 'clasifier'; did you mean 'classifier'"),
    Bad("freeze-on-a-model-without-groups", lambda s: s.extra["model"].freeze("backbone"), UnknownGroupError,
        r"freeze\(\) entry 'backbone' is neither a group nor a submodule or parameter name of Plain; Plain has no "
        r"freeze groups\. Declare them in the class "
        r"\(freeze_groups = .*register_freeze_group\(name, \*specs\).*fz\.apply_preset\(model, 'linear_probe'\)",
        setup=lambda s: s.extra.update(model=plain_freezable())),
    Bad("mixin-after-nn-module", lambda s: type("Net2", (nn.Module, fz.Freezable), {}), FreezableTypeError,
        r"class Net2 puts Freezable after nn.Module .*put the mixin first: class Net2\(Freezable, Module\)"),
    Bad("unfreeze-unknown-group", lambda s: s.net.unfreeze("head"), UnknownGroupError,
        r"unfreeze\(\) entry 'head' is neither a group nor a submodule or parameter name of Net; groups: "
        r"\['features', 'classifier', 'conv1'\]"),
    Bad("frozen-unknown-name", lambda s: enter(s.net.frozen("featurs")), UnknownNameError,
        r"frozen\(\) entry 'featurs' is neither a group .*did you mean the group 'features'"),
    Bad("frozen-int-name", lambda s: enter(s.net.frozen(3)), FreezableTypeError, r"group name must be a str, not int"),
    Bad("frozen-train_bn-str", lambda s: enter(s.net.frozen("features", train_bn="yes")), FreezableTypeError,
        r"train_bn must be a bool, not str: 'yes'"),
    Bad("unfrozen-unknown-name", lambda s: enter(s.net.unfrozen("clasifier")), UnknownNameError,
        r"unfrozen\(\) entry 'clasifier' is neither a group .*did you mean the group 'classifier'"),
    Bad("unfrozen-built_frozen-str", lambda s: enter(s.net.unfrozen("features", built_frozen="yes")),
        FreezableTypeError, r"built_frozen must be a bool, not str: 'yes'"),
    Bad("unfreeze-float-name", lambda s: s.net.unfreeze(1.5), FreezableTypeError, r"not float: 1.5"),
    Bad("unfreeze-bytes-name", lambda s: s.net.unfreeze(b"features"), FreezableTypeError, r"not bytes: b'features'"),
    Bad("class-groups-not-a-mapping", lambda s: s.extra["model"].freeze("features"), FreezableTypeError,
        r"ListGroups.freeze_groups must be a mapping of group name to specs, not list",
        setup=make_extra(ListGroups)),
    Bad("class-group-spec-matches-nothing", lambda s: s.extra["model"].freeze("features"), SpecError,
        r"spec 'featurez' of group 'features' matches no submodule or parameter; did you mean 'features'",
        setup=make_extra(TypoGroups)),
    # -- register_freeze_group --------------------------------------------------------------------------------------
    Bad("register-duplicate-name", lambda s: s.net.register_freeze_group("features", "features"), SpecError,
        r"a group named 'features' is already registered"),
    Bad("register-spec-typo", lambda s: s.net.register_freeze_group("x", "featurs"), SpecError,
        r"spec 'featurs' of group 'x' matches no submodule or parameter; did you mean 'features'"),
    Bad("register-glob-matches-nothing", lambda s: s.net.register_freeze_group("x", "layer[12]"), SpecError,
        r"spec 'layer\[12\]' of group 'x' matches no submodule"),
    Bad("register-regex-matches-nothing", lambda s: s.net.register_freeze_group("x", re.compile("^zzz")), SpecError,
        r"spec re.compile\('\^zzz'\) of group 'x' matches no"),
    Bad("register-callable-matches-nothing", lambda s: s.net.register_freeze_group("x", lambda n, o: False),
        SpecError, r"spec <function .*> of group 'x' matches no submodule"),
    Bad("register-callable-raises", lambda s: s.net.register_freeze_group("x", lambda n, o: 1 / 0), SpecError,
        r"callable spec <function .*> raised ZeroDivisionError: division by zero; a callable spec takes \(name, "),
    Bad("register-callable-wrong-arity", lambda s: s.net.register_freeze_group("x", lambda n: True), SpecError,
        r"raised TypeError: .*; a callable spec takes \(name, module_or_parameter\)"),
    Bad("register-no-spec", lambda s: s.net.register_freeze_group("x"), SpecError,
        r"register_freeze_group\('x'\) needs at least one spec"),
    Bad("register-empty-spec", lambda s: s.net.register_freeze_group("x", ""), SpecError,
        r"a group spec must not be empty or blank, got ''"),
    Bad("register-blank-spec", lambda s: s.net.register_freeze_group("x", "  "), SpecError,
        r"must not be empty or blank, got '  '"),
    Bad("register-empty-name", lambda s: s.net.register_freeze_group("", "features"), SpecError,
        r"a group name must not be empty or blank, got ''"),
    Bad("register-int-name", lambda s: s.net.register_freeze_group(3, "features"), FreezableTypeError,
        r"a group name must be a str, not int: 3"),
    Bad("register-int-spec", lambda s: s.net.register_freeze_group("x", 3), FreezableTypeError,
        r"a group spec must be a name, a glob, a re.Pattern or a callable, not int: 3"),
    Bad("register-bytes-spec", lambda s: s.net.register_freeze_group("x", b"features"), FreezableTypeError,
        r"not bytes: b'features'"),
    Bad("register-nested-list-spec", lambda s: s.net.register_freeze_group("x", ["features", 3]), FreezableTypeError,
        r"not list: \['features', 3\]"),
    Bad("register-second-spec-matches-nothing", lambda s: s.net.register_freeze_group("x", "features", "nope"),
        SpecError, r"spec 'nope' of group 'x' matches no"),
    Bad("register-index-out-of-range", lambda s: s.net.register_freeze_group("x", "features.9"), SpecError,
        r"spec 'features.9' .* did you mean 'features.8'"),
    Bad("register-parameter-typo", lambda s: s.net.register_freeze_group("x", "classifier.1.wieght"), SpecError,
        r"spec 'classifier.1.wieght' .* did you mean 'classifier.1.weight'"),
    Bad("register-prefixed-name-on-frozen-backbone", lambda s: s.fb.register_freeze_group("x", "backbone.conv1"),
        SpecError, r"spec 'backbone.conv1' of group 'x' matches no submodule or parameter; did you mean 'conv1'\? "
        r"names are relative to ResNet"),
    # -- load_freeze_state ------------------------------------------------------------------------------------------
    Bad("state-a-list", lambda s: s.net.load_freeze_state([]), FreezeStateError,
        r"a freeze state must be a dict from freeze_state\(\), not list: \[\]"),
    Bad("state-none", lambda s: s.net.load_freeze_state(None), FreezeStateError, r"not NoneType: None"),
    Bad("state-a-str", lambda s: s.net.load_freeze_state("features"), FreezeStateError, r"not str: 'features'"),
    Bad("state-empty-dict", lambda s: s.net.load_freeze_state({}), FreezeStateError,
        r"not a freeze state of version 1 or 2 or 3: format=None, version=None"),
    Bad("state-version-4", lambda s: s.net.load_freeze_state(state(version=4)), FreezeStateError,
        r"version 1 or 2 or 3: format='freezable.freeze_state', version=4"),
    Bad("state-version-a-str", lambda s: s.net.load_freeze_state(state(version="1")), FreezeStateError,
        r"version='1'"),
    Bad("state-version-a-bool", lambda s: s.net.load_freeze_state(state(version=True)), FreezeStateError,
        r"version=True"),
    Bad("state-other-format", lambda s: s.net.load_freeze_state(state(format="peft.adapter")), FreezeStateError,
        r"format='peft.adapter'"),
    Bad("state-modules-missing", lambda s: s.net.load_freeze_state(state(frozen_modules=...)), FreezeStateError,
        r"'frozen_modules' must be a list of names, got None"),
    Bad("state-parameters-missing", lambda s: s.net.load_freeze_state(state(frozen_parameters=...)),
        FreezeStateError, r"'frozen_parameters' must be a list of names, got None"),
    Bad("state-modules-a-str", lambda s: s.net.load_freeze_state(state(frozen_modules="features")),
        FreezeStateError, r"'frozen_modules' must be a list of names, got 'features'"),
    Bad("state-modules-with-an-int", lambda s: s.net.load_freeze_state(state(frozen_modules=["features", 1])),
        FreezeStateError, r"got \['features', 1\]"),
    Bad("state-parameters-a-dict", lambda s: s.net.load_freeze_state(state(frozen_parameters={"a": 1})),
        FreezeStateError, r"'frozen_parameters' must be a list of names, got \{'a': 1\}"),
    Bad("state-unknown-module", lambda s: s.net.load_freeze_state(state(frozen_modules=["featurs"])),
        FreezeStateError, r"'frozen_modules' names 'featurs', which the model lacks; did you mean 'features'"),
    Bad("state-unknown-parameter", lambda s: s.net.load_freeze_state(state(frozen_parameters=["features.0.wieght"])),
        FreezeStateError, r"names 'features.0.wieght', which the model lacks; did you mean 'features.0.weight'"),
    Bad("state-good-modules-bad-parameters",
        lambda s: s.net.load_freeze_state(state(frozen_modules=["features"], frozen_parameters=["x"])),
        FreezeStateError, r"'frozen_parameters' names 'x', which the model lacks"),
    Bad("state-norm-eval-a-str", lambda s: s.net.load_freeze_state(state(version=2, norm_eval_modules="features.1")),
        FreezeStateError, r"'norm_eval_modules' must be a list of names, got 'features.1'"),
    Bad("state-norm-eval-unknown-module",
        lambda s: s.net.load_freeze_state(state(version=2, norm_eval_modules=["features.9"])), FreezeStateError,
        r"'norm_eval_modules' names 'features.9', which the model lacks; did you mean 'features.8'"),
    Bad("state-norm-eval-not-a-norm",
        lambda s: s.net.load_freeze_state(state(version=2, norm_eval_modules=["features.0"])), FreezeStateError,
        r"'norm_eval_modules' names 'features.0' \(Conv2d\), which keeps no running statistics"),
    Bad("state-prefixed-names-on-frozen-backbone",
        lambda s: s.fb.load_freeze_state(state(frozen_modules=["backbone.layer1"])), FreezeStateError,
        r"names 'backbone.layer1', which the model lacks; did you mean 'layer1'"),
    # -- set_norm_eval -----------------------------------------------------------------------------------------------
    Bad("norm-eval-enabled-a-str", lambda s: s.net.set_norm_eval("yes"), FreezableTypeError,
        r"set_norm_eval's enabled must be a bool, not str: 'yes'"),
    Bad("norm-eval-enabled-none", lambda s: s.net.set_norm_eval(None, "features"), FreezableTypeError,
        r"set_norm_eval's enabled must be a bool, not NoneType: None"),
    Bad("norm-eval-group-name-as-enabled", lambda s: s.net.set_norm_eval("features"), FreezableTypeError,
        r"enabled must be a bool, not str: 'features'; set_norm_eval\(True, \*groups\)"),
    Bad("norm-eval-unknown-group", lambda s: s.net.set_norm_eval(True, "featurs"), UnknownGroupError,
        r"set_norm_eval\(\) entry 'featurs' is neither a group .*did you mean the group 'features'"),
    Bad("norm-eval-nothing-to-hold", lambda s: s.net.set_norm_eval(True, "classifier"), FreezableError,
        r"set_norm_eval\(True, 'classifier'\) changes nothing: the groups \['classifier'\] hold no norm layer with "
        r"running statistics .*groups that do: 'features'"),
    Bad("norm-eval-release-nothing", lambda s: s.net.set_norm_eval(False, "conv1"), FreezableError,
        r"set_norm_eval\(False, 'conv1'\) changes nothing"),
    Bad("norm-eval-model-without-running-stats",
        lambda s: s.extra["model"].set_norm_eval(True), FreezableError,
        r"set_norm_eval\(True\) changes nothing: Plain holds no norm layer with running statistics .*none",
        setup=lambda s: s.extra.update(model=plain_freezable())),
    # -- FrozenBackbone ---------------------------------------------------------------------------------------------
    Bad("wrapper-none", lambda s: fz.FrozenBackbone(None), FreezableTypeError,
        r"FrozenBackbone's backbone must be an nn.Module instance, not NoneType: None"),
    Bad("wrapper-model-name", lambda s: fz.FrozenBackbone("resnet18"), FreezableTypeError, r"not str: 'resnet18'"),
    Bad("wrapper-class-not-instance", lambda s: fz.FrozenBackbone(nn.Linear), FreezableTypeError,
        r"not the class torch.nn.modules.linear.Linear; pass an instance: Linear\(...\)"),
    Bad("wrapper-norm-eval-a-str", lambda s: fz.FrozenBackbone(s.fb.backbone, norm_eval="yes"), FreezableTypeError,
        r"norm_eval must be a bool or None, not str: 'yes'; None takes the preset's setting"),
    Bad("wrapper-norm-eval-an-int", lambda s: fz.FrozenBackbone(s.fb.backbone, preset="linear_probe", norm_eval=1),
        FreezableTypeError, r"norm_eval must be a bool or None, not int: 1"),
    Bad("wrapper-tensor", lambda s: fz.FrozenBackbone(torch.zeros(2)), FreezableTypeError, r"not Tensor: tensor"),
    Bad("wrapper-trainable-unknown-group", lambda s: fz.FrozenBackbone(s.fb.backbone, trainable=["stage9"]),
        SpecError, r"trainable entry 'stage9' is neither a group nor .*did you mean the group 'stage4'.*groups: \['stem'"),
    Bad("wrapper-trainable-glob-matches-nothing", lambda s: fz.FrozenBackbone(s.fb.backbone, trainable="layer9*"),
        SpecError, r"trainable entry 'layer9\*' is neither a group nor a submodule or parameter name of ResNet; "
        r"did you mean 'layer4' or 'layer3' or 'layer2'\? groups: \['stem'"),
    Bad("wrapper-trainable-regex-matches-nothing",
        lambda s: fz.FrozenBackbone(s.fb.backbone, trainable=[re.compile("^zzz")]), SpecError,
        r"spec re.compile\('\^zzz'\) of group 'trainable' matches no"),
    Bad("wrapper-trainable-module-typo", lambda s: fz.FrozenBackbone(s.fb.backbone, trainable=["layer9"]),
        SpecError, r"trainable entry 'layer9' is neither .* did you mean 'layer4'"),
    Bad("wrapper-trainable-group-typo", lambda s: fz.FrozenBackbone(s.fb.backbone, trainable=["haed"]),
        SpecError, r"did you mean the group 'head'\?"),
    Bad("wrapper-trainable-int", lambda s: fz.FrozenBackbone(s.fb.backbone, trainable=3), FreezableTypeError,
        r"not int: 3"),
    Bad("wrapper-preset-typo", lambda s: fz.FrozenBackbone(s.fb.backbone, preset="torchvision.linear_prob"),
        PresetError, r"unknown preset 'torchvision.linear_prob'; did you mean 'torchvision.linear_probe'"),
    Bad("wrapper-preset-int", lambda s: fz.FrozenBackbone(s.fb.backbone, preset=3), FreezableTypeError,
        r"a preset name must be a str, not int: 3"),
    Bad("wrapper-preset-for-another-model", lambda s: fz.FrozenBackbone(s.fb.backbone, preset="timm.hrnet.backbone"),
        PresetError, r"preset 'timm.hrnet.backbone' does not fit ResNet: spec 'conv2'"),
    Bad("wrapper-alexnet-preset-on-resnet",
        lambda s: fz.FrozenBackbone(s.fb.backbone, preset="torchvision.alexnet.classifier_only"), PresetError,
        r"does not fit ResNet: spec 'features' of group 'features' matches no"),
    Bad("wrapper-freeze-unknown-stage", lambda s: s.fb.freeze("stage9"), UnknownGroupError,
        r"freeze\(\) entry 'stage9' is neither a group nor a submodule or parameter name of ResNet; did you mean "
        r"the group 'stage4' or 'stage3' or 'stage2'\? groups: \['stem', 'stage1'"),
    Bad("wrapper-freeze-module-typo", lambda s: s.fb.freeze("layer_2"), UnknownNameError,
        r"freeze\(\) entry 'layer_2' is neither .*did you mean 'layer2'"),
    Bad("wrapper-smp-preset-on-resnet", lambda s: fz.FrozenBackbone(s.fb.backbone, preset="smp.freeze_encoder"),
        PresetError, r"preset 'smp.freeze_encoder' freezes \['encoder'\], which ResNet does not have; its detected "
        r"groups are \['stem', 'stage1'"),
    Bad("wrapper-ultralytics-preset-on-resnet",
        lambda s: fz.FrozenBackbone(s.fb.backbone, preset="ultralytics.freeze_3"), PresetError,
        r"ultralytics.freeze_3 fits ultralytics YOLO models .* not ResNet"),
    Bad("wrapper-ultralytics-freeze-every-layer",
        lambda s: fz.FrozenBackbone(s.extra["yolo"], preset="ultralytics.freeze_10"), PresetError,
        r"freeze=10 leaves nothing of this 10-layer ClassificationModel to train .*; N in 0\.\.9", setup=yolo_cls),
    # -- presets ----------------------------------------------------------------------------------------------------
    Bad("get-preset-typo", lambda s: fz.get_preset("timm.hrnet.backbon"), PresetError,
        r"unknown preset 'timm.hrnet.backbon'; did you mean 'timm.hrnet.backbone'"),
    Bad("get-preset-int", lambda s: fz.get_preset(3), FreezableTypeError, r"not int: 3"),
    Bad("get-preset-none", lambda s: fz.get_preset(None), FreezableTypeError, r"not NoneType: None"),
    Bad("list-presets-int-pattern", lambda s: fz.list_presets(3), FreezableTypeError,
        r"pattern must be a str, not int: 3"),
    Bad("list-presets-list-pattern", lambda s: fz.list_presets(["timm.*"]), FreezableTypeError,
        r"not list: \['timm.\*'\]"),
    Bad("register-preset-duplicate", lambda s: fz.register_preset(
        fz.Preset("timm.hrnet.backbone", "again", frozen=("backbone",))), PresetError,
        r"a preset named 'timm.hrnet.backbone' is already registered"),
    Bad("register-preset-member-of-a-family", lambda s: fz.register_preset(
        fz.Preset("ultralytics.freeze_3", "again", frozen=())), PresetError,
        r"a preset named 'ultralytics.freeze_3' is already registered"),
    Bad("register-alias-of-nothing", lambda s: fz.register_preset(Alias("t.alias", "linear_prob")), PresetError,
        r"alias 't.alias' names no registered preset 'linear_prob'; did you mean 'linear_probe'"),
    Bad("alias-of-a-family-without-N", lambda s: Alias("t.stages_N", "linear_probe"), PresetError,
        r"alias 't.stages_N' of 'linear_probe': a family's alias is a family's name"),
    Bad("preset-family-name-without-N", lambda s: PresetFamily("t.first", range(2), lambda n: None),
        FreezableTypeError, r"PresetFamily name must be a str ending in '_N', not str: 't.first'"),
    Bad("get-preset-family-number-out-of-range", lambda s: fz.get_preset("ultralytics.freeze_43"), PresetError,
        r"unknown preset 'ultralytics.freeze_43': ultralytics.freeze_N takes N in 0..42"),
    Bad("get-preset-alias-number-out-of-range", lambda s: fz.get_preset("torchvision.frozen_stages_0"), PresetError,
        r"unknown preset 'torchvision.frozen_stages_0': torchvision.frozen_stages_N takes N in 1..4"),
    Bad("apply-preset-blank-group-name",
        lambda s: fz.apply_preset(s.net, fz.Preset("t.blank", "d", {" ": "features"}, frozen=(" ",))), SpecError,
        r"a group name must not be empty or blank, got ' '"),
    Bad("register-preset-a-name", lambda s: fz.register_preset("timm.mine"), FreezableTypeError,
        r"register_preset's argument must be a Preset, not str: 'timm.mine'"),
    Bad("preset-frozen-a-str", lambda s: fz.Preset("t.x", "d", {"a": "features"}, frozen="a"), FreezableTypeError,
        r"Preset frozen must be a tuple of str, not str: 'a'; did you mean \('a',\)\?"),
    Bad("preset-frozen-undefined-group", lambda s: fz.Preset("t.x", "d", {"features": "f"}, frozen=("featurs",)),
        PresetError, r"freezes groups it does not define: \['featurs'\]; did you mean 'features'"),
    Bad("preset-empty-name", lambda s: fz.Preset("", "d"), FreezableTypeError,
        r"Preset name must be a non-empty str, not str: ''"),
    Bad("preset-groups-a-list", lambda s: fz.Preset("t.x", "d", ["features"]), FreezableTypeError,
        r"Preset groups must be a mapping .* not list: \['features'\]"),
    Bad("preset-train_bn-str", lambda s: fz.Preset("t.x", "d", train_bn="yes"), FreezableTypeError,
        r"Preset train_bn must be a bool, not str: 'yes'"),
    Bad("preset-norm_eval-str", lambda s: fz.Preset("t.x", "d", norm_eval="yes"), FreezableTypeError,
        r"Preset norm_eval must be a bool, not str: 'yes'"),
    Bad("apply-preset-plain-module", lambda s: fz.apply_preset(s.fb.backbone, "torchvision.linear_probe"),
        FreezableTypeError, r"apply_preset's model must be a Freezable model, not ResNet: .*; wrap it: FrozenBackbone"),
    Bad("apply-preset-unknown", lambda s: fz.apply_preset(s.net, "torchvision.alexnet.classifier"), PresetError,
        r"unknown preset 'torchvision.alexnet.classifier'; did you mean 'torchvision.alexnet.classifier_only'"),
    Bad("apply-preset-wrong-model", lambda s: fz.apply_preset(s.net, "timm.hrnet.backbone"), PresetError,
        r"preset 'timm.hrnet.backbone' does not fit Net: spec 'conv1' of group 'stem' matches no"),
    Bad("apply-preset-detected-groups-missing", lambda s: fz.apply_preset(s.net, "frozen_stages_2"), PresetError,
        r"freezes \[.*\], which Net does not have; its detected groups are \["),
    Bad("apply-preset-int", lambda s: fz.apply_preset(s.net, 3), FreezableTypeError, r"not int: 3"),
    Bad("apply-preset-conflicting-group", lambda s: fz.apply_preset(s.net, CONFLICT), PresetError,
        r"preset 'test.conflict' defines group 'features', which the model already has with other members"),
    # -- check ------------------------------------------------------------------------------------------------------
    Bad("check-not-a-module", lambda s: fz.check("model"), FreezableTypeError,
        r"check's model must be an nn.Module instance, not str: 'model'"),
    Bad("check-none", lambda s: fz.check(None), FreezableTypeError, r"not NoneType: None"),
    Bad("check-optimizer-a-str", lambda s: fz.check(s.net, "sgd"), FreezableTypeError,
        r"optimizer must be a torch.optim.Optimizer or None, not str: 'sgd'"),
    Bad("check-optimizer-a-list", lambda s: fz.check(s.net, list(s.net.parameters())), FreezableTypeError,
        r"not list: \[Parameter"),
    Bad("check-strict-a-str", lambda s: fz.check(s.net, strict="yes"), FreezableTypeError,
        r"strict must be a bool, not str: 'yes'"),
    Bad("check-strict-with-a-problem", lambda s: fz.check(s.net, strict=True), FreezableError,
        r"fz.check found 1 problem\(s\):\n- frozen module 'features' \(Sequential\) is in training mode",
        setup=inner_train),
    # -- command line (exit code 2, message on stderr) --------------------------------------------------------------
    Bad("cli-unknown-model", cli("show", "resnet181"), 2, r"unknown model 'resnet181'; did you mean 'resnet18'"),
    Bad("cli-unknown-preset", cli("show", "resnet18", "--preset", "timm.linear_prob"), 2,
        r"unknown preset 'timm.linear_prob'; did you mean 'timm.linear_probe'"),
    Bad("cli-preset-for-another-model", cli("show", "resnet18", "--preset", "timm.hrnet.backbone"), 2,
        r"preset 'timm.hrnet.backbone' does not fit ResNet"),
    Bad("cli-unknown-trainable", cli("show", "resnet18", "--trainable", "stage9"), 2,
        r"trainable entry 'stage9' is neither a group .*groups: \['stem'"),
    Bad("cli-no-preset-matches", cli("presets", "zzz*"), 2, r"no preset matches 'zzz\*'"),
    Bad("cli-unknown-command", cli("bogus"), 2, r"invalid choice: 'bogus' \(choose from '?presets'?, '?show'?\)"),
    Bad("cli-no-command", cli(), 2, r"the following arguments are required: command"),
    Bad("cli-show-without-model", cli("show"), 2, r"the following arguments are required: model"),
    Bad("cli-unknown-option", cli("show", "resnet18", "--bogus"), 2, r"unrecognized arguments: --bogus"),
    # -- training loops: param_groups, unfreeze(optimizer=), freeze_to, UnfreezeSchedule, rewrap_ddp ---------------
    Bad("param_groups-lr-str", lambda s: s.net.param_groups("fast"), FreezableTypeError,
        r"lr must be a number, not str: 'fast'"),
    Bad("param_groups-lr-negative", lambda s: s.net.param_groups(-1.0), FreezableError,
        r"lr must be a finite number >= 0, got -1.0"),
    Bad("param_groups-lr-nan", lambda s: s.net.param_groups(float("nan")), FreezableError,
        r"lr must be a finite number >= 0, got nan"),
    Bad("param_groups-weight_decay-str", lambda s: s.net.param_groups(0.1, weight_decay="x"), FreezableTypeError,
        r"weight_decay must be a number, not str: 'x'"),
    Bad("param_groups-lr_scale-unknown", lambda s: s.net.param_groups(0.1, lr_scale={"featurs": 0.1}),
        UnknownGroupError, r"lr_scale names 'featurs'.*did you mean 'features'"),
    Bad("param_groups-lr_scale-a-list", lambda s: s.net.param_groups(0.1, lr_scale=[0.1]), FreezableTypeError,
        r"lr_scale must be a mapping of group names to multipliers, not list"),
    Bad("param_groups-lr_scale-negative", lambda s: s.net.param_groups(0.1, lr_scale={"features": -1}),
        FreezableError, r"lr_scale\['features'\] must be a finite number >= 0, got -1"),
    Bad("param_groups-layer_decay-str", lambda s: s.net.param_groups(0.1, layer_decay="0.7"), FreezableTypeError,
        r"layer_decay must be a number in \(0, 1\], not str: '0.7'"),
    Bad("param_groups-layer_decay-bool", lambda s: s.fb.param_groups(0.1, layer_decay=True), FreezableTypeError,
        r"layer_decay must be a number in \(0, 1\], not bool: True"),
    Bad("param_groups-layer_decay-zero", lambda s: s.fb.param_groups(0.1, layer_decay=0), FreezableError,
        r"layer_decay must be in \(0, 1\] \(0.65 to 0.9 are usual\), got 0"),
    Bad("param_groups-layer_decay-above-one", lambda s: s.fb.param_groups(0.1, layer_decay=1.5), FreezableError,
        r"layer_decay must be in \(0, 1\].*got 1.5"),
    Bad("param_groups-layer_decay-nan", lambda s: s.fb.param_groups(0.1, layer_decay=float("nan")), FreezableError,
        r"layer_decay must be in \(0, 1\].*got nan"),
    Bad("param_groups-layer_decay-without-blocks", lambda s: s.net.param_groups(0.1, layer_decay=0.7), FreezableError,
        r"layer_decay needs block groups \('block1', ...\) or stage groups \('stage1', ...\).*'features'"),
    Bad("unfreeze-optimizer-a-str", lambda s: s.net.unfreeze("features", optimizer="sgd"), FreezableTypeError,
        r"optimizer must be a torch.optim.Optimizer, not str: 'sgd'"),
    Bad("unfreeze-lr-without-optimizer", lambda s: s.net.unfreeze("features", lr=0.1), FreezableTypeError,
        r"unfreeze\(lr=...\) sets the learning rate of the group added to optimizer=; pass optimizer= too"),
    Bad("unfreeze-optimizer-lr-negative",
        lambda s: s.net.unfreeze("features", optimizer=torch.optim.SGD(s.net.trainable_parameters(), lr=0.1), lr=-1),
        FreezableError, r"lr must be a finite number >= 0, got -1"),
    Bad("freeze_to-unknown-group", lambda s: s.net.freeze_to("featurs"), UnknownGroupError,
        r"unknown freeze group 'featurs'"),
    Bad("freeze_to-int", lambda s: s.net.freeze_to(1), FreezableTypeError, r"group name must be a str, not int: 1"),
    Bad("schedule-not-a-freezable", lambda s: fz.UnfreezeSchedule(nn.Linear(2, 2), {1: ["features"]}),
        FreezableTypeError, r"the model must be a Freezable model, not Linear: .*wrap a plain module: fz.FrozenBackbone"),
    Bad("schedule-unknown-group", lambda s: fz.UnfreezeSchedule(s.net, {1: ["featurs"]}), UnknownGroupError,
        r"milestone 1 names unknown freeze group 'featurs'; did you mean 'features'"),
    Bad("schedule-negative-epoch", lambda s: fz.UnfreezeSchedule(s.net, {-1: ["features"]}), FreezableError,
        r"an epoch must be an int >= 0, got -1"),
    Bad("schedule-str-epoch", lambda s: fz.UnfreezeSchedule(s.net, {"1": ["features"]}), FreezableTypeError,
        r"an epoch must be an int >= 0, not str: '1'"),
    Bad("schedule-milestones-a-list", lambda s: fz.UnfreezeSchedule(s.net, [1]), FreezableTypeError,
        r"milestones must be a mapping of epochs to group names, not list"),
    Bad("schedule-milestone-an-int", lambda s: fz.UnfreezeSchedule(s.net, {1: [3]}), FreezableTypeError,
        r"milestone 1 must be a group name or a list of them, not list: \[3\]"),
    Bad("schedule-step-negative", lambda s: fz.UnfreezeSchedule(s.net, {1: ["features"]}).step(-2), FreezableError,
        r"an epoch must be an int >= 0, got -2"),
    Bad("schedule-load-malformed-state", lambda s: fz.UnfreezeSchedule(s.net, {1: ["features"]}).load_state_dict({"x": 1}),
        FreezeStateError, r"not an UnfreezeSchedule state of version 1: \{'x': 1\}"),
    Bad("schedule-load-state-unknown-module",
        lambda s: fz.UnfreezeSchedule(s.net, {1: ["features"]}).load_state_dict(
            {"format": "freezable.unfreeze_schedule", "version": 1, "milestones": {}, "last_epoch": None,
             "initial_state": state(frozen_modules=["nope"])}),
        FreezeStateError, r"names 'nope', which the model lacks"),
    # -- the fast path and FeatureCache -------------------------------------------------------------------------------
    Bad("wrapper-fast-a-str", lambda s: fz.FrozenBackbone(s.extra["model"], fast="yes"), FreezableTypeError,
        r"fast must be a bool, not str: 'yes'", setup=make_extra(Tiny)),
    Bad("wrapper-frozen_dtype-without-fast", lambda s: fz.FrozenBackbone(s.extra["model"], frozen_dtype=torch.bfloat16),
        FreezableError, r"frozen_dtype=torch.bfloat16 needs fast=True", setup=make_extra(Tiny)),
    Bad("wrapper-frozen_dtype-integer", lambda s: fz.FrozenBackbone(s.extra["model"], fast=True, frozen_dtype=torch.int8),
        FreezableError, r"frozen_dtype must be a floating torch.dtype such as torch.bfloat16, not torch.int8",
        setup=make_extra(Tiny)),
    Bad("wrapper-frozen_dtype-a-str", lambda s: fz.FrozenBackbone(s.extra["model"], fast=True, frozen_dtype="bf16"),
        FreezableTypeError, r"frozen_dtype must be a floating torch.dtype .*, not str: 'bf16'", setup=make_extra(Tiny)),
    Bad("cache-not-a-module", lambda s: fz.FeatureCache("resnet"), FreezableTypeError,
        r"FeatureCache's backbone must be an nn.Module instance, not str: 'resnet'"),
    Bad("cache-backbone-not-fully-frozen", lambda s: fz.FeatureCache(s.fb), FreezableError,
        r"FeatureCache needs a fully frozen backbone"),
    Bad("cache-max_items-zero", lambda s: fz.FeatureCache(tiny_frozen(), max_items=0), FreezableError,
        r"max_items must be a positive int or None, not 0"),
    Bad("cache-max_bytes-a-float", lambda s: fz.FeatureCache(tiny_frozen(), max_bytes=1e6),
        FreezableTypeError, r"max_bytes must be a positive int or None, not float: 1000000.0"),
    Bad("cache-on_mismatch-unknown", lambda s: fz.FeatureCache(tiny_frozen(), on_mismatch="clean"), FreezableError,
        r"on_mismatch must be 'error' or 'clear', not str: 'clean'; did you mean 'clear'"),
    Bad("cache-verify_inputs-not-a-bool", lambda s: fz.FeatureCache(tiny_frozen(), verify_inputs="yes"),
        FreezableTypeError, r"verify_inputs must be a bool, not str: 'yes'"),
    Bad("cache-fewer-keys-than-samples", lambda s: fz.FeatureCache(tiny_frozen())(torch.zeros(2, 3, 8, 8), keys=[0]),
        FreezableError, r"got 1 keys for a batch of 2 samples"),
    Bad("cache-keys-a-str", lambda s: fz.FeatureCache(tiny_frozen())(torch.zeros(2, 3, 8, 8), keys="ab"),
        FreezableTypeError, r"keys must be a sequence with one key per sample, not str: 'ab'"),
    Bad("cache-float-key", lambda s: fz.FeatureCache(tiny_frozen())(torch.zeros(1, 3, 8, 8), keys=[0.5]),
        FreezableTypeError, r"a FeatureCache key must be an int, a str or a tuple of them, not float: 0.5"),
    Bad("cache-float-tensor-keys",
        lambda s: fz.FeatureCache(tiny_frozen())(torch.zeros(2, 3, 8, 8), keys=torch.tensor([0.0, 1.0])),
        FreezableError, r"tensor keys must be a 1-d integer tensor"),
    Bad("cache-input-needs-grad",
        lambda s: fz.FeatureCache(tiny_frozen())(torch.zeros(1, 3, 8, 8, requires_grad=True), keys=[0]),
        FreezableError, r"FeatureCache input requires grad"),
    Bad("cache-input-not-a-tensor", lambda s: fz.FeatureCache(tiny_frozen())([[0.0]], keys=[0]), FreezableTypeError,
        r"FeatureCache's input must be a batch tensor, not list: \[\[0.0\]\]"),
    Bad("rewrap_ddp-not-ddp", lambda s: fz.rewrap_ddp(s.net), FreezableTypeError,
        r"rewrap_ddp's argument must be a DistributedDataParallel, not Net"),
    # -- progressive freezing, optimizer state ----------------------------------------------------------------------
    Bad("progressive-not-a-freezable", lambda s: fz.ProgressiveFreezing(nn.Linear(2, 2), total_steps=5),
        FreezableTypeError, r"ProgressiveFreezing's model must be a Freezable model, not Linear: .*fz.freezable\(model\)"),
    Bad("progressive-rule-typo", lambda s: fz.ProgressiveFreezing(s.net, "schedul", total_steps=5), FreezableError,
        r"rule must be one of 'schedule', 'gradient', not str: 'schedul'; did you mean 'schedule'"),
    Bad("progressive-rule-none", lambda s: fz.ProgressiveFreezing(s.net, None), FreezableError,
        r"rule must be one of 'schedule', 'gradient', not NoneType: None"),
    Bad("progressive-schedule-without-total_steps", lambda s: fz.ProgressiveFreezing(s.net, "schedule"), FreezableError,
        r"rule='schedule' needs total_steps: the number of optimizer steps the run takes"),
    Bad("progressive-setting-of-the-other-rule", lambda s: fz.ProgressiveFreezing(s.net, "gradient", total_steps=5),
        FreezableError, r"total_steps is a setting of rule='schedule', not of rule='gradient' \(whose settings are "
        r"window, threshold\)"),
    Bad("progressive-window-with-schedule", lambda s: schedule(s, window=5), FreezableError,
        r"window is a setting of rule='gradient', not of rule='schedule'"),
    Bad("progressive-total_steps-zero", lambda s: schedule(s, total_steps=0), FreezableError,
        r"total_steps must be an int >= 1, got 0"),
    Bad("progressive-total_steps-a-float", lambda s: schedule(s, total_steps=10.0), FreezableTypeError,
        r"total_steps must be an int >= 1, not float: 10.0"),
    Bad("progressive-start-above-one", lambda s: schedule(s, start=1.5), FreezableError,
        r"start must be in \(0, 1\] \(a fraction of the run\), got 1.5"),
    Bad("progressive-start-zero", lambda s: schedule(s, start=0), FreezableError, r"start must be in \(0, 1\]"),
    Bad("progressive-spacing-typo", lambda s: schedule(s, spacing="cubik"), FreezableError,
        r"spacing must be one of 'linear', 'cubic', not str: 'cubik'; did you mean 'cubic'"),
    Bad("progressive-window-zero", lambda s: fz.ProgressiveFreezing(s.net, "gradient", window=0), FreezableError,
        r"window must be an int >= 1, got 0"),
    Bad("progressive-threshold-negative", lambda s: fz.ProgressiveFreezing(s.net, "gradient", threshold=-0.1),
        FreezableError, r"threshold must be a finite number > 0 \(a relative change of the gradient norm.*got -0.1"),
    Bad("progressive-threshold-nan", lambda s: fz.ProgressiveFreezing(s.net, "gradient", threshold=float("nan")),
        FreezableError, r"threshold must be a finite number > 0.*got nan"),
    Bad("progressive-threshold-a-str", lambda s: fz.ProgressiveFreezing(s.net, "gradient", threshold="0.1"),
        FreezableTypeError, r"threshold must be a number > 0, not str: '0.1'"),
    Bad("progressive-until-unknown", lambda s: schedule(s, until="clasifier"), UnknownGroupError,
        r"unknown freeze group 'clasifier'; did you mean 'classifier'"),
    Bad("progressive-until-the-last-group", lambda s: fz.ProgressiveFreezing(Net(), total_steps=5, until="classifier"),
        FreezableError, r"until='classifier' would freeze every staged group, the last \('classifier'\) too.*such as "
        r"'features'"),
    Bad("progressive-model-without-two-staged-groups", lambda s: schedule(Subjects(s.extra["model"], s.fb)),
        FreezableError, r"at least two staged groups .* Plain has none",
        setup=lambda s: s.extra.update(model=plain_freezable())),
    Bad("progressive-cache-without-inference-prefix", lambda s: schedule(s, cache=True, inference_prefix=False),
        FreezableError, r"cache=True caches the frozen prefix that inference_prefix=True runs"),
    Bad("progressive-cache_max_bytes-zero", lambda s: schedule(s, cache=True, cache_max_bytes=0), FreezableError,
        r"cache_max_bytes must be a positive int or None, not 0"),
    Bad("progressive-guard-a-str", lambda s: schedule(s, guard="yes"), FreezableTypeError,
        r"guard must be a bool, not str: 'yes'"),
    Bad("progressive-optimizer-a-str", lambda s: schedule(s, optimizer="adam"), FreezableTypeError,
        r"optimizer must be a torch.optim.Optimizer, not str: 'adam'"),
    Bad("progressive-lbfgs", lambda s: schedule(s, optimizer=torch.optim.LBFGS(s.net.parameters())), FreezableError,
        r"ProgressiveFreezing cannot release part of an LBFGS's state"),
    Bad("progressive-step-optimizer-a-list", lambda s: s.extra["pf"].step(optimizer=[]), FreezableTypeError,
        r"optimizer must be a torch.optim.Optimizer, not list", setup=progressive),
    Bad("progressive-load-malformed-state", lambda s: s.extra["pf"].load_state_dict({"x": 1}), FreezeStateError,
        r"not a ProgressiveFreezing state of version 1: \{'x': 1\}", setup=progressive),
    Bad("progressive-load-state-of-another-model",
        lambda s: s.extra["pf"].load_state_dict({**s.extra["pf"].state_dict(), "groups": ["stem", "head"]}),
        FreezeStateError, r"bad ProgressiveFreezing state: it walks the groups \['stem', 'head'\], the model "
        r"\['features'\]", setup=progressive),
    Bad("progressive-cache-keys-without-cache", lambda s: s.extra["pf"].cache_keys([0]).__enter__(), FreezableError,
        r"cache_keys needs ProgressiveFreezing\(..., cache=True\)", setup=progressive),
    Bad("release-state-not-an-optimizer", lambda s: fz.release_optimizer_state("adam"), FreezableTypeError,
        r"optimizer must be a torch.optim.Optimizer, not str: 'adam'"),
    Bad("release-state-model-a-str",
        lambda s: fz.release_optimizer_state(torch.optim.SGD(s.net.parameters(), lr=0.1), "net"), FreezableTypeError,
        r"release_optimizer_state's model must be an nn.Module instance or None, not str: 'net'"),
    Bad("release-state-of-lbfgs", lambda s: fz.release_optimizer_state(torch.optim.LBFGS(s.net.parameters())),
        FreezableError, r"cannot release part of an LBFGS: it keeps one curvature history over all its parameters"),
    Bad("cache-extended-by-a-trainable-tail", lambda s: fz.FeatureCache(tiny_frozen()).extended(nn.Linear(4, 2)),
        FreezableError, r"FeatureCache needs a fully frozen backbone, but 2 parameters train"),
    Bad("cache-extended-by-a-str", lambda s: fz.FeatureCache(tiny_frozen()).extended("head"), FreezableTypeError,
        r"FeatureCache.extended's tail must be an nn.Module instance, not str: 'head'"),
    Bad("lightning-progressive-unknown-argument", lambda s: lightning_callback("gradient", windw=3), FreezableError,
        r"unknown argument 'windw' of ProgressiveFreezing; did you mean 'window'"),
    Bad("lightning-progressive-rule-typo", lambda s: lightning_callback("gradiant"), FreezableError,
        r"rule must be one of 'schedule', 'gradient', not str: 'gradiant'; did you mean 'gradient'"),
    Bad("hf-progressive-setting-of-the-other-rule", lambda s: hf_progressive_callback("gradient", start=0.5),
        FreezableError, r"start is a setting of rule='schedule', not of rule='gradient'"),
    # -- in place: fz.freeze, fz.freezable, fz.plain, built-frozen parameters ------------------------------------
    Bad("in-place-freeze-not-a-module", lambda s: fz.freeze("resnet18"), FreezableTypeError,
        r"fz.freeze's model must be an nn.Module instance, not str: 'resnet18'"),
    Bad("in-place-freeze-a-class", lambda s: fz.freeze(torchvision.models.ResNet), FreezableTypeError,
        r"must be an nn.Module instance, not the class torchvision.models.resnet.ResNet; pass an instance"),
    Bad("in-place-freeze-torchscript", lambda s: fz.freeze(s.extra["model"]), FreezableTypeError,
        r"cannot change the class of a TorchScript module; freeze the model before torch.jit.script, or wrap it",
        setup=lambda s: s.extra.update(model=torch.jit.script(nn.Linear(2, 2)))),
    Bad("in-place-freeze-graph-module", lambda s: fz.freeze(s.extra["model"]), FreezableTypeError,
        r"cannot change the class of a torch.fx GraphModule .* wrap it: FrozenBackbone\(model\)",
        setup=lambda s: s.extra.update(model=torch.fx.symbolic_trace(nn.Sequential(nn.Linear(2, 2))))),
    Bad("in-place-freeze-trainable-typo", lambda s: fz.freeze(s.extra["model"], trainable=["haed"]), SpecError,
        r"trainable entry 'haed' is neither a group nor .* did you mean the group 'head'", setup=plain_resnet),
    Bad("in-place-freeze-preset-typo", lambda s: fz.freeze(s.extra["model"], preset="linear_prob"), PresetError,
        r"unknown preset 'linear_prob'; did you mean 'linear_probe'", setup=plain_resnet),
    Bad("in-place-freeze-norm_eval-str", lambda s: fz.freeze(s.extra["model"], norm_eval="yes"), FreezableTypeError,
        r"norm_eval must be a bool or None, not str: 'yes'", setup=plain_resnet),
    Bad("in-place-refreeze-trainable-typo", lambda s: fz.freeze(s.extra["model"], trainable=["stage5"]), SpecError,
        r"'stage5'.*did you mean the group 'stage4'", setup=in_place_resnet),
    Bad("in-place-freezable-not-a-module", lambda s: fz.freezable(None), FreezableTypeError,
        r"fz.freezable's model must be an nn.Module instance, not NoneType"),
    Bad("in-place-plain-a-mixin-class", lambda s: fz.plain(s.net), FreezableTypeError,
        r"plain\(\) undoes fz.freezable\(\) and fz.freeze\(\); Net is a Freezable class of its own"),
    Bad("in-place-plain-a-wrapper", lambda s: fz.plain(s.fb), FreezableTypeError,
        r"FrozenBackbone is a Freezable class of its own"),
    Bad("in-place-plain-a-plain-module", lambda s: fz.plain(nn.Linear(2, 2)), FreezableTypeError,
        r"Linear is not a Freezable"),
    Bad("unfreeze-built_frozen-str", lambda s: s.net.unfreeze("features", built_frozen="yes"), FreezableTypeError,
        r"built_frozen must be a bool, not str: 'yes'"),
    # -- Hugging Face: the groups of a PreTrainedModel, the Trainer callback ------------------------------------
    Bad("hf-trainable-unknown-group", lambda s: fz.FrozenBackbone(s.extra["bert"], trainable=["blok2"]), SpecError,
        r"'blok2'.*block2", setup=hf_bert),
    Bad("hf-freeze-unknown-group", lambda s: s.extra["fb"].freeze("encoder_block1"), UnknownGroupError,
        r"'encoder_block1'", setup=hf_bert),
    Bad("hf-callback-milestone-names-no-group", lambda s: hf_callback({1: ["blok4"]}, model=s.extra["fb"]),
        UnknownGroupError, r"milestone 1 names unknown freeze group 'blok4'; did you mean 'block4'", setup=hf_bert),
    Bad("hf-callback-milestone-names-no-group-at-train-begin",
        lambda s: hf_callback({2: ["head", "stemm"]}).on_train_begin(None, None, None, model=s.extra["fb"]),
        UnknownGroupError, r"'stemm'; did you mean 'stem'", setup=hf_bert),
    Bad("hf-callback-negative-epoch", lambda s: hf_callback({-1: ["block4"]}), FreezableError,
        r"epoch must be an int >= 0, got -1"),
    Bad("hf-callback-negative-epoch-with-model", lambda s: hf_callback({-2: ["block4"]}, model=s.extra["fb"]),
        FreezableError, r"got -2", setup=hf_bert),
    Bad("hf-callback-not-a-mapping", lambda s: hf_callback(["block4"]), FreezableTypeError, r"not list"),
    Bad("hf-callback-model-not-freezable", lambda s: hf_callback({1: ["block4"]}, model=nn.Linear(2, 2)),
        FreezableTypeError, r"GradualUnfreezing's model must be a Freezable model or None, not Linear: .*; make it "
        r"one in place: fz.freezable\(model\)"),
    Bad("hf-progressive-model-not-freezable", lambda s: hf_progressive_callback("schedule", model=nn.Linear(2, 2)),
        FreezableTypeError, r"ProgressiveFreezingCallback's model must be a Freezable model or None, not Linear"),
    # -- a removed classifier; models of several parts -----------------------------------------------------------
    Bad("wrapper-trainable-head-of-a-removed-classifier",
        lambda s: fz.FrozenBackbone(s.extra["headless"], trainable=["head"]), SpecError,
        r"trainable entry 'head': ResNet has no group 'head' any more: its members hold no parameter \('fc' is "
        r"Identity\), so the classifier was removed", setup=headless_resnet),
    Bad("freeze-trainable-head-of-a-removed-classifier", lambda s: fz.freeze(s.extra["headless"], trainable=["head"]),
        SpecError, r"no group 'head' any more.*classifier was removed.*put it in place of 'fc'", setup=headless_resnet),
    Bad("multipart-trainable-plain-block-name", lambda s: fz.FrozenBackbone(s.extra["clip"], trainable=["block1"]),
        SpecError, r"'block1' is neither a group .*did you mean the group 'text_model.block1' or "
        r"'vision_model.block1'", setup=hf_clip),
    Bad("multipart-freeze-to-plain-stage-name", lambda s: s.extra["clip_fb"].freeze_to("stage2"), UnknownGroupError,
        r"'stage2'; did you mean 'text_model.stage2' or 'vision_model.stage2'\? \(a model of several parts",
        setup=hf_clip),
    Bad("multipart-freeze-to-tower-group-typo", lambda s: s.extra["clip_fb"].freeze_to("vision_model.blok2"),
        UnknownGroupError, r"'vision_model.blok2'; did you mean 'vision_model.block2'", setup=hf_clip),
    Bad("open-clip-partial-lock-of-a-resnet-tower",
        lambda s: fz.freeze(s.extra["oc"], preset="open_clip.lock_image_tower_2"), PresetError,
        r"lock_image_tower_2: open_clip locks a ModifiedResNet image tower with unlocked_groups=0 only",
        setup=open_clip_resnet),
    Bad("open-clip-preset-on-a-torchvision-model",
        lambda s: fz.FrozenBackbone(s.fb.backbone, preset="open_clip.lock_text_tower_1"), PresetError,
        r"lock_text_tower_1 fits open_clip models \(CLIP, CustomTextCLIP, CoCa\), not ResNet"),
]


def test_the_table_has_at_least_50_distinct_bad_inputs():
    ids = [row.id for row in ROWS]
    assert len(ids) == len(set(ids)) and len(ids) >= 50


@pytest.fixture(scope="module")
def backbone_wrapper() -> fz.FrozenBackbone:
    torch.manual_seed(0)
    resnet = torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=4)
    return fz.FrozenBackbone(resnet, trainable=["head"]).train()


@pytest.fixture
def subjects(backbone_wrapper) -> Subjects:
    torch.manual_seed(0)
    net = Net()
    net.register_freeze_group("conv1", "features.0")
    net.freeze("features", guard=True).train()
    return Subjects(net=net, fb=backbone_wrapper)


def everything(s: Subjects) -> tuple:
    models = [s.net, s.fb, *(m for m in s.extra.values() if isinstance(m, nn.Module))]
    return (
        [type(m) for m in models],  # a failed in-place call leaves the class as it was
        [full_state(m) for m in models],
        [pf.state_dict() for pf in s.extra.values() if isinstance(pf, fz.ProgressiveFreezing)],
        [m.freeze_group_names if "_freezable_groups" in m.__dict__ else None for m in models],
        [guarded_names(m) for m in models],
        {name: fz.get_preset(name) for name in fz.list_presets()},
    )


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_is_answered_clearly_and_changes_nothing(row: Bad, subjects: Subjects, capsys):
    if row.setup is not None:
        row.setup(subjects)
    before = everything(subjects)
    if isinstance(row.error, int):
        assert row.call(subjects) == row.error
        assert re.search(row.match, capsys.readouterr().err)
    else:
        with pytest.raises(row.error, match=row.match) as info:
            row.call(subjects)
        assert isinstance(info.value, FreezableError)
        if isinstance(info.value, FreezableTypeError):
            assert isinstance(info.value, TypeError)
    assert everything(subjects) == before


def test_every_error_class_is_exported_from_fz():
    from freezable import errors

    classes = [name for name in errors.__all__ if isinstance(getattr(errors, name), type)]
    assert {"UnknownGroupError", "SpecError", "PresetError", "FreezeStateError", "FreezableTypeError",
            "UnknownNameError", "PrefixWarning"} <= set(classes)
    assert all(getattr(fz, name) is getattr(errors, name) and name in fz.__all__ for name in classes)
