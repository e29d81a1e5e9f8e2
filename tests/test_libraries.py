"""Groups of smp, ultralytics, diffusers models and torchvision's feature extractors (issue 20), each against its
library's own notion: its attributes, its own freeze function (smp's ``freeze_encoder``, the ultralytics
trainer's ``freeze=N``), its yaml, its stage split, the order a forward on a real input runs them.

One tiny model per family (``LIBRARY_SAMPLES`` of ``tools/sweeps/libraries.py``, run by ``tools/sweep.py libraries``),
random weights, nothing downloaded; the larger smp encoders run under ``-m slow``. Each library is skipped when
it is not installed.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from conftest import changed, snapshot
from torch import nn

import freezable as fz
from freezable.detect import detect_groups
from freezable.errors import BuiltFrozenWarning
from freezable.norms import has_running_stats
from tools.oracles.groups import attr_ids, ids
from tools.oracles.libraries import (
    diffusers_problems,
    origin_problems,
    smp_stage_problems,
    ultralytics_freeze_problems,
    ultralytics_problems,
    yolo_trainer_freeze,
)
from tools.oracles.parts import library_freeze_problems
from tools.sweep import main as sweep_main
from tools.sweeps.libraries import LIBRARIES, LIBRARY_SAMPLES, library_check, library_of

ROOT = Path(__file__).resolve().parents[1]


def needs(key: str) -> None:
    pytest.importorskip(LIBRARIES[library_of(key)])


def samples(*, trainable: bool = False) -> list:
    return [pytest.param(key, marks=[pytest.mark.slow] if sample.slow else [], id=key)
            for key, sample in LIBRARY_SAMPLES.items() if not trainable or sample.trainable]


@pytest.mark.parametrize("key", samples())
def test_groups_are_what_the_library_means(key):
    needs(key)
    row = library_check(key)
    assert row.status == ("absent" if LIBRARY_SAMPLES[key].absent else "right"), row.reasons


def scalar(output: object) -> torch.Tensor:
    """A loss from any output: the mean square of every floating tensor in it (lists, dicts, diffusers outputs)."""
    if isinstance(output, torch.Tensor):
        return output.float().square().mean() if output.is_floating_point() else torch.zeros(())
    items = output.values() if isinstance(output, Mapping) else output if isinstance(output, (list, tuple)) else ()
    return sum((scalar(item) for item in items), torch.zeros(()))


@pytest.mark.parametrize("key", samples(trainable=True))
def test_freezing_everything_but_x_holds_the_rest(key):
    """``FrozenBackbone(model, trainable=X)``: a training step moves trainable weights only, and frozen BatchNorm
    statistics stay bit-identical through ``train()`` and a forward."""
    needs(key)
    sample = LIBRARY_SAMPLES[key]
    model = sample.build()
    built_frozen = {n for n, p in model.named_parameters() if not p.requires_grad}  # ultralytics' DFL conv
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BuiltFrozenWarning)  # the DFL conv stays frozen, and says so
        fb = fz.FrozenBackbone(model, trainable=list(sample.trainable))
    trained = {n for g in sample.trainable for n, _ in fb.freeze_group(g).named_parameters(model)} - built_frozen
    assert trained and {n for n, p in model.named_parameters() if p.requires_grad} == trained
    frozen_norms = [n for n, m in model.named_modules() if has_running_stats(m)
                    and not any(p.requires_grad for p in m.parameters())]
    before = snapshot(model)
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(fb.trainable_parameters(), lr=1.0)
    scalar(sample.call(fb.train())).backward()
    optimizer.step()
    moved = changed(before, model)
    assert not moved & (set(dict(model.named_parameters())) - trained)
    assert not {n for n in moved for norm in frozen_norms if n.startswith(norm + ".")}
    assert moved & trained
    # every weight with a gradient large enough to move it in float32 (lr 1, weights of order 1) moved
    assert {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().max() > 1e-4} <= moved


# -- the oracles see wrong groups --------------------------------------------------------------------------


def built(key: str) -> tuple[nn.Module, dict[str, tuple[str, ...]]]:
    needs(key)
    model = LIBRARY_SAMPLES[key].build()
    return model, detect_groups(model)


def swapped(groups: dict, a: str, b: str) -> dict:
    return {**groups, a: groups[b], b: groups[a]}


def test_the_oracles_catch_wrong_smp_stages():
    model, groups = built("smp/Unet-resnet18")
    inner = {g: tuple(m.removeprefix("encoder.") for m in v) for g, v in groups.items() if g[:5] in ("stem", "stage")}
    x = torch.randn(2, 3, 64, 64)
    assert smp_stage_problems(model.encoder, inner, x) == []
    assert "stem and stages hold" in smp_stage_problems(model.encoder, swapped(inner, "stage1", "stage2"), x)[0]
    merged = {**inner, "stage1": inner["stage1"] + inner["stage2"]}
    merged.pop("stage2")
    assert smp_stage_problems(model.encoder, merged, x)


def test_the_oracles_catch_wrong_yolo_sections_and_order():
    model, groups = built("ultralytics/DetectionModel-yolov8n")
    x = torch.randn(1, 3, 64, 64)
    assert ultralytics_problems(model, groups, x) == []
    wrong = ultralytics_problems(model, swapped(groups, "backbone", "head"), x)
    assert wrong[0].startswith("backbone holds 103 parameters, model.0 + model.1") and wrong[1].startswith("head holds")
    assert wrong[2] == "sections: groups run in the order ['head', 'backbone'], not ['backbone', 'head']"
    assert any("layers: groups run in the order" in p for p in ultralytics_problems(
        model, swapped(groups, "layer1", "layer2"), x))


def test_the_oracles_catch_wrong_unet_blocks():
    model, groups = built("diffusers/UNet2DModel")
    run = lambda: model(torch.randn(1, 3, 16, 16), 3)  # noqa: E731
    assert diffusers_problems(model, groups, run) == []
    wrong = diffusers_problems(model, swapped(groups, "down_block1", "up_block1"), run)
    assert wrong[:2] == ["down_block1 holds 46 parameters, down_blocks.0 12",
                         "up_block1 holds 12 parameters, up_blocks.0 46"]
    assert wrong[2].startswith("model: groups run in the order ['stem', 'up_block1', 'down_block2'")


def test_the_oracles_catch_an_extractor_whose_stages_are_not_its_model_s():
    needs("torchvision-features/IntermediateLayerGetter-resnet18")
    import torchvision
    from torchvision.models._utils import IntermediateLayerGetter

    model = torchvision.models.resnet18()
    getter = IntermediateLayerGetter(model, {"layer4": "out"})
    ours, theirs = detect_groups(getter), detect_groups(model)
    assert origin_problems(getter, ours, model, theirs) == []
    assert origin_problems(getter, swapped(ours, "stage1", "stem"), model, theirs) == [
        "stem holds 12 parameters, the model's (in the extractor) 3",
        "stage1 holds 3 parameters, the model's (in the extractor) 12"]


def test_the_freeze_oracles_catch_a_preset_that_freezes_otherwise():
    needs("smp/Unet-resnet18")
    build = LIBRARY_SAMPLES["smp/Unet-resnet18"].build
    x = torch.randn(2, 3, 64, 64)

    def library(model):
        model.freeze_encoder()
        model.train()

    wrong = library_freeze_problems(build, library, lambda m: fz.FrozenBackbone(m, preset="frozen_stages_3",
                                                                                 norm_eval=False), "x", lambda m: m(x))
    assert wrong[0].startswith("x: freezes 45 parameters, the library 60 (only ours: [], only the library's: "
                               "['encoder.layer4.0.bn1.bias'")
    assert wrong[1].startswith("x: a forward in training leaves 15 norm layers' statistics alone, the library's 20")
    needs("ultralytics/DetectionModel-yolov8n")
    build = LIBRARY_SAMPLES["ultralytics/DetectionModel-yolov8n"].build
    assert ultralytics_freeze_problems(build, [3], x) == []
    wrong = library_freeze_problems(build, lambda m: yolo_trainer_freeze(m, 4),
                                    lambda m: fz.FrozenBackbone(m, preset="ultralytics.freeze_3"), "y", lambda m: m(x))
    assert [p.split(" (")[0] for p in wrong] == [
        "y: freezes 19 parameters, the library 22",
        "y: a forward in training leaves 6 norm layers' statistics alone, the library's 7"]


# -- what each library's groups are, by name (the prose of docs/groups.md) ------------------------


def test_smp_groups_are_its_parts_and_its_encoder_s_stages():
    model, groups = built("smp/Unet-resnet18")
    assert [g for g in groups if not g.startswith("block")] == [
        "stem", "stage1", "stage2", "stage3", "stage4", "encoder", "decoder", "segmentation_head",
        "classification_head", "backbone"]
    assert ids(model, groups, "backbone") == attr_ids(model, "encoder")
    assert groups["stage4"] == ("encoder.layer4",)
    _, mit = built("smp/Unet-mit_b0")
    assert "stem" not in mit and mit["stage1"] == ("encoder.patch_embed1", "encoder.block1", "encoder.norm1")


def test_an_smp_encoder_alone_gets_its_stages_and_inside_a_user_model_too():
    needs("smp/Unet-resnet18")
    import segmentation_models_pytorch as smp

    encoder = smp.encoders.get_encoder("resnet18", weights=None)
    assert detect_groups(encoder)["stage1"] == ("maxpool", "layer1")
    net = nn.Sequential(encoder)
    assert detect_groups(net)["stem"] == ("0.conv1", "0.bn1", "0.relu")


def test_the_smp_preset_is_freeze_encoder_and_unfreeze_restores_it():
    needs("smp/Unet-resnet18")
    model = LIBRARY_SAMPLES["smp/Unet-resnet18"].build()
    fb = fz.FrozenBackbone(model, preset="smp.freeze_encoder")
    assert set(fb.frozen_groups) == {"stem", "stage1", "stage2", "stage3", "stage4", "encoder", "backbone"} | {
        g for g in fb.freeze_group_names if g.startswith("block")}
    assert all(p.requires_grad for p in model.decoder.parameters())
    fb.unfreeze()
    assert all(p.requires_grad for p in model.parameters())


def test_yolo_groups_follow_the_yaml_and_the_dfl_conv_stays_frozen():
    model, groups = built("ultralytics/DetectionModel-yolov8n")
    assert groups["task_head"] == ("model.22",) and "layer10" not in groups  # layer 10 is an Upsample
    assert groups["backbone"] == tuple(f"model.{i}" for i in range(10))
    with pytest.warns(BuiltFrozenWarning, match="dfl"):
        fb = fz.FrozenBackbone(model, trainable=["task_head"])
    fb.unfreeze()
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["model.22.dfl.conv.weight"]
    yolo = pytest.importorskip("ultralytics").YOLO("yolov8n.yaml")  # the wrapper: the same groups, one level down
    assert detect_groups(yolo)["task_head"] == ("model.model.22",)


def test_ultralytics_freeze_n_outside_the_model_is_an_error():
    model, _ = built("ultralytics/ClassificationModel-yolov8n-cls")
    with pytest.raises(fz.FreezableError, match=r"freeze=10 leaves nothing of this 10-layer .* N in 0\.\.9"):
        fz.FrozenBackbone(model, preset="ultralytics.freeze_10")


def test_ultralytics_makes_no_network_call(monkeypatch):
    """YOLO_OFFLINE (set in conftest before anything imports ultralytics) stops its connectivity check; building,
    detecting and the trainer's own freeze make no call either."""
    needs("ultralytics/DetectionModel-yolov8n")
    import ultralytics.utils

    assert ultralytics.utils.ONLINE is False
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("no network in the tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    from ultralytics.nn.tasks import DetectionModel

    model = yolo_trainer_freeze(DetectionModel("yolo11n.yaml", verbose=False), 3)
    fz.FrozenBackbone(model, preset="ultralytics.freeze_3")(torch.randn(1, 3, 64, 64))
    assert calls == []


def test_diffusers_groups_run_stem_down_mid_up_head():
    model, groups = built("diffusers/UNet2DConditionModel")
    assert [g for g in groups] == ["stem", "down_block1", "down_block2", "mid_block", "up_block1", "up_block2", "head",
                                   "down_blocks", "up_blocks"]
    assert groups["stem"] == ("conv_in", "time_proj", "time_embedding")
    _, vae = built("diffusers/AutoencoderKL")
    assert list(vae) == ["encoder", "quant_conv", "post_quant_conv", "decoder"]


def test_ssdlite_body_has_the_stages_of_its_mobilenet_across_both_containers():
    model, groups = built("torchvision-features/ssdlite320_mobilenet_v3_large")
    assert groups["stage5"][:2] == ("backbone.features.0.13", "backbone.features.1.0")
    assert ("backbone.features.0.13", "backbone.features.1.0") in groups.values()  # the C4 block: one block


# -- the sweep script ---------------------------------------------------------------------------------------


def test_the_sweep_prints_right_absent_wrong_per_library(capsys):
    needs("diffusers/UNet2DModel")
    assert sweep_main(["libraries", "--libraries", "diffusers", "--no-progress"]) == 0
    assert "diffusers: 4 right, 1 absent, 0 wrong\n  absent: Transformer2DModel: a transformer" in capsys.readouterr().out


def test_the_sweep_exits_1_on_a_wrong_group(capsys, monkeypatch):
    needs("torchvision-features/IntermediateLayerGetter-resnet18")
    key = "torchvision-features/IntermediateLayerGetter-resnet18"
    sample = LIBRARY_SAMPLES[key]
    broken = type(sample)(sample.build, lambda m, g: ["a planted problem"], sample.call)
    monkeypatch.setitem(LIBRARY_SAMPLES, key, broken)
    assert sweep_main(["libraries", "--models", key, "--no-progress"]) == 1
    assert ("torchvision-features: 0 right, 0 absent, 1 wrong\n"
            "  wrong: IntermediateLayerGetter-resnet18: a planted problem") in capsys.readouterr().out


@pytest.mark.slow
def test_the_sweep_runs_as_a_script():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "sweep.py"), "libraries", "--no-progress"],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wrong" in done.stdout and " 0 wrong" in done.stdout
