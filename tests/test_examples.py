"""Every example runs and shows what it claims."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_has_a_smoke_test():
    tested = {"alexnet_classifier_only", "hrnet_frozen_backbone", "timm_pretrained_local", "gradual_unfreezing",
              "bert_gradual_unfreezing"}
    assert {p.stem for p in EXAMPLES.glob("*.py")} <= tested


def test_alexnet_classifier_only(capsys):
    result = load("alexnet_classifier_only").main(steps=2)
    assert result == {"features_unchanged": True, "classifier_moved": True}
    assert "features bit-identical after training: True" in capsys.readouterr().out


def test_hrnet_frozen_backbone(capsys):
    result = load("hrnet_frozen_backbone").main(steps=2, batch_size=2, image_size=64)
    assert result == {"backbone_stats_unchanged": True, "head_stats_moved": True}
    assert "norms in eval" in capsys.readouterr().out


def test_timm_pretrained_local(capsys):
    assert load("timm_pretrained_local").main(steps=2) == {"loaded": True, "unchanged": True}
    assert "FrozenBackbone(resnet18" in capsys.readouterr().out


def test_gradual_unfreezing_resumes_bit_identical_to_an_uninterrupted_run(capsys):
    result = load("gradual_unfreezing").main(epochs=4, stop_after=2)
    assert result["resumed_equals_uninterrupted"] is True
    assert result["frozen_by_epoch"] == {0: ("stem", "stage1", "stage2"), 1: ("stem", "stage1"), 2: ("stem",), 3: ()}
    assert result["resumed_frozen_by_epoch"] == {2: ("stem",), 3: ()}
    assert "bit-identical to the uninterrupted one: True" in capsys.readouterr().out


def test_gradual_unfreezing_checkpoint_loads_with_weights_only(tmp_path):
    example = load("gradual_unfreezing")
    example.train(epochs=2, stop_after=1, checkpoint_dir=tmp_path)
    ckpt = torch.load(tmp_path / "epoch1.pt", weights_only=True)
    assert set(ckpt) >= {"model", "optimizer", "lr_scheduler", "freeze_state", "schedule"}
    assert ckpt["schedule"]["initial_state"]["frozen_modules"]  # the initial freeze state, saved


def test_bert_gradual_unfreezing(capsys):
    pytest.importorskip("transformers")
    result = load("bert_gradual_unfreezing").main(epochs=3, samples=16)
    assert result == {"stem_unchanged": True, "layer4_moved": True, "reloaded_equal": True}
    assert "embeddings bit-identical after training: True" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["alexnet_classifier_only", "hrnet_frozen_backbone", "timm_pretrained_local",
                                  "gradual_unfreezing", "bert_gradual_unfreezing"])
def test_examples_have_a_docstring_that_says_how_to_run_them(name):
    assert f"python examples/{name}.py" in load(name).__doc__
