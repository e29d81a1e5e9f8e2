"""The command line: python -m freezable presets / show (the sweeps are the project's own tools: tests/test_tools.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from freezable.__main__ import main
from freezable._models import build_model


def test_presets_lists_names_and_descriptions(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "torchvision.alexnet.classifier_only" in out and "timm.frozen_stages_4" in out


def test_presets_with_a_pattern(capsys):
    assert main(["presets", "torchvision.*"]) == 0
    assert all(line.startswith("torchvision.") for line in capsys.readouterr().out.splitlines())


def test_show_prints_groups_and_summary(capsys):
    assert main(["show", "resnet18", "--trainable", "stage4", "head"]) == 0
    out = capsys.readouterr().out
    assert "FrozenBackbone(ResNet, frozen=['stem', 'stage1', 'stage2', 'stage3']" in out
    assert "stem: conv1, bn1" in out and "stage1: layer1" in out
    assert "norms in eval" in out and "total" in out


def test_show_says_which_library_built_the_model_and_the_other_only_where_it_has_the_name(capsys):
    assert main(["show", "resnet18"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "resnet18 built from torchvision (meta device, no weights); timm has it too: timm/resnet18; a bare name both "
        "libraries have is torchvision's")
    assert main(["show", "timm/resnet18"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "resnet18 built from timm (meta device, no weights); torchvision has it too: torchvision/resnet18")
    assert main(["show", "alexnet"]) == 0  # timm has no alexnet: no hint that would fail
    assert capsys.readouterr().out.splitlines()[0] == "alexnet built from torchvision (meta device, no weights)"
    assert main(["show", "resnet18d"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "resnet18d built from timm (meta device, no weights)"


def test_features_only_follows_the_one_rule_for_ambiguous_names(capsys):
    assert main(["show", "convnext_tiny", "--features-only"]) == 2
    assert ("--features-only builds timm models, and 'convnext_tiny' is torchvision's; timm has it too: say "
            "timm/convnext_tiny" in capsys.readouterr().err)
    assert main(["show", "timm/convnext_tiny", "--features-only"]) == 0
    assert capsys.readouterr().out.startswith("convnext_tiny built from timm")
    assert main(["show", "alexnet", "--features-only"]) == 2
    assert "torchvision.models.feature_extraction" in capsys.readouterr().err


def test_a_library_preset_builds_the_model_from_that_library(capsys):
    assert main(["show", "resnet18", "--preset", "timm.frozen_stages_2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("resnet18 built from timm")
    assert "FrozenBackbone(resnet18, frozen=['stem', 'stage1', 'stage2']" in out  # timm's pretrained_cfg name


def test_a_closed_pipe_ends_the_output_without_a_traceback():
    child = subprocess.Popen([sys.executable, "-m", "freezable", "show", "resnet18"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    child.stdout.close()  # the reader is gone before anything is written, as with `| head -0`
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0 and b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()


def test_show_with_a_preset_and_a_source_prefix(capsys):
    assert main(["show", "timm/hrnet_w18_small", "--preset", "timm.hrnet.backbone"]) == 0
    assert "frozen=['stem', 'stage1', 'stage2', 'stage3', 'stage4'" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["show", "resnet181"], "unknown model 'resnet181'; did you mean 'resnet18'"),
        (["show", "resnet18", "--preset", "timm.linear_prob"], "did you mean 'timm.linear_probe'"),
        (["show", "resnet18", "--trainable", "stage9"], "'stage9'"),
        (["presets", "zzz*"], "no preset matches 'zzz*'"),
    ],
)
def test_bad_names_exit_2_with_close_matches(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_build_model_uses_the_meta_device():
    assert build_model("torchvision/resnet18").fc.weight.is_meta
    assert build_model("timm/resnet18").fc.weight.is_meta


def test_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "freezable", "presets", "timm.hrnet.*"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.startswith("timm.hrnet.backbone")


def test_the_command_line_keeps_show_and_presets_and_points_to_the_sweeps(capsys):
    assert main(["sweep", "torchvision"]) == 2
    assert "invalid choice: 'sweep'" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "python tools/sweep.py" in capsys.readouterr().out
