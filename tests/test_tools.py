"""The project's own checks under tools/: they run, they say each miss in words, they exit 1 only on a wrong group,
their oracles catch planted mistakes, and the coverage page is what they print."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from freezable._models import build_model
from freezable.detect import detect_groups
from tools.oracles.classifiers import head_problems
from tools.oracles.parts import straddle_problems
from tools.sweep import PAGE_ORDER
from tools.sweep import main as sweep
from tools.sweeps import classifiers, hf
from tools.sweeps.report import Row, Section, page_sections, report, row, section_markdown, update_page, versions

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
PAGE = ROOT / "docs" / "coverage.md"


@pytest.mark.slow
def test_ecosystem_report_finds_nothing_frozen_moved():
    pytest.importorskip("transformers")
    out = subprocess.run([sys.executable, str(TOOLS / "ecosystem.py")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = out.stdout.splitlines()[1:-1]
    assert len(rows) >= 15 and all(row.split()[-1] == "0" and int(row.split()[-2]) > 0 for row in rows)
    assert out.stdout.splitlines()[-1] == "ok: nothing frozen moved"


# -- the sweep: right, absent, wrong, each miss in words ---------------------------------------------------


def test_the_sweep_exits_0_on_documented_absences_and_says_each_in_words(capsys):
    assert sweep(["torchvision", "--models", "resnet18", "alexnet", "--no-progress"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "torchvision: 2 right, 0 absent, 0 wrong"
    assert sweep(["timm", "--models", "resnet18", "mobilenetv5_300m_enc", "caformer_s18", "rdnet_tiny",
                  "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:4] == [
        "timm: 1 right, 3 absent, 0 wrong",
        "  absent: mobilenetv5_300m_enc: no head: the model has no classifier; no stem or stages: timm gives it no "
        "group_matcher",
        "  absent: caformer_s18: no stem or stages: timm gives it no group_matcher",
        "  absent: rdnet_tiny: no stem or stages: its group_matcher fails: coarse grouping is not implemented for RDNet"]


def test_the_sweep_exits_1_on_a_wrong_group_and_names_what_disagrees(capsys, monkeypatch):
    def no_stem_and_fc_in_the_backbone(model):
        groups = detect_groups(model)
        return {"stage1": groups["stage1"], "backbone": groups["backbone"] + groups["head"]}

    monkeypatch.setattr(classifiers, "detect_groups", no_stem_and_fc_in_the_backbone)
    assert sweep(["torchvision", "--models", "resnet18", "--no-progress"]) == 1
    assert capsys.readouterr().out.splitlines()[:2] == [
        "torchvision: 0 right, 0 absent, 1 wrong",
        "  wrong: resnet18: no head, though the classifier attribute names fc; no stem, though the model is a "
        "classifier; stem and stages do not cover the backbone"]
    monkeypatch.undo()
    assert sweep(["timm", "--models", "no_such_model", "--no-progress"]) == 1
    assert capsys.readouterr().out.splitlines()[1].startswith(
        "  wrong: no_such_model: fails to build or detect: FreezableError: ")


def test_the_sweep_checks_detection_presets_and_features_only_stages_against_their_oracles(capsys):
    assert sweep(["torchvision", "--models", "fasterrcnn_mobilenet_v3_large_fpn", "--no-progress"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [
        "torchvision: 1 right, 0 absent, 0 wrong",
        "  trainable_backbone_layers_N = torchvision's rule for every N: 1/1 FPN detectors"]
    assert sweep(["timm", "--models", "convnext_atto", "caformer_s18", "--features-only", "--no-progress"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [
        "timm features_only: 1 right, 1 absent, 0 wrong",
        "  absent: caformer_s18: no stages, as its classifier has none: timm gives it no group_matcher"]


def test_volo_s_head_is_timm_s_own_classifier_and_the_oracle_still_sees_a_wrong_head():
    """VOLO: ``get_classifier()`` names ``head``; ``reset_classifier`` (what fine-tuning replaces) and
    ``pretrained_cfg["classifier"]`` name ``head`` and ``aux_head``. Either of timm's notions is right; a head that
    is neither is wrong, with both named."""
    model = build_model("timm/volo_d1_224")
    groups = detect_groups(model)
    assert groups["head"] == ("head", "aux_head") and head_problems(model, groups) == []
    assert head_problems(model, {**groups, "head": ("head",)}) == []
    assert head_problems(model, {**groups, "head": ("aux_head",)}) == [
        "head holds aux_head (get_classifier() names head; reset_classifier() names aux_head, head)"]


def test_hugging_face_absences_are_the_documented_ones_in_words():
    pytest.importorskip("transformers")
    albert = next(a for a in hf.architectures() if a[2] == "AlbertForSequenceClassification")
    result = hf.check_architecture(*albert)
    assert result.row() == Row("transformers sequence classification", "AlbertForSequenceClassification", "absent",
                               ("no stem or blocks: one layer shared by every depth: no blocks to tell apart, nor a "
                                "stem before them",))
    bert = next(a for a in hf.architectures() if a[2] == "BertForSequenceClassification")
    assert hf.check_architecture(*bert).row().status == "right"


def test_the_report_counts_each_label_and_prints_each_miss_once():
    rows = [row("a", "m1"), row("a", "m2", absent=["no stem: why"]), row("b", "m3", ["x"], ["y", "z"]),
            Row("b", "m4", "skipped", ("not installed",))]
    assert report(rows, ["a note"]) == (
        "a: 1 right, 1 absent, 0 wrong\n  absent: m2: no stem: why\n"
        "b: 0 right, 0 absent, 1 wrong (1 skipped)\n  wrong: m3: y; z; x\n  skipped: m4: not installed\n  a note")


# -- the straddle oracle, for parts named in the groups and for a library's sections -----------------------


def test_the_straddle_oracle_catches_a_piece_across_two_parts_and_a_model_level_piece_inside_one():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    from tools.sweeps import multipart

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = multipart.clip()
    groups = detect_groups(clip)
    assert straddle_problems(clip, groups) == []
    across = {**groups, "vision_model.block1": groups["vision_model.block1"] + groups["text_model.block1"]}
    assert straddle_problems(clip, across) == ["vision_model.block1 holds parameters outside the part 'vision_model'"]
    plain = {**groups, "block1": groups["vision_model.block1"] + groups["text_model.block1"]}
    assert straddle_problems(clip, plain) == ["block1 holds parameters of the parts ['text_model', 'vision_model']"]
    inside = {**groups, "visual_projection": groups["visual_projection"] + groups["vision_model.block2"]}
    assert straddle_problems(clip, inside) == [
        "visual_projection, outside the parts, holds parameters of a part's pieces"]


def test_the_straddle_oracle_reads_a_library_s_sections():
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        model = torchvision.models.resnet18()
    groups = detect_groups(model)
    sections = {"body": {id(p) for n, p in model.named_parameters() if not n.startswith("fc.")},
                "fc": {id(p) for p in model.fc.parameters()}}
    assert straddle_problems(model, groups, sections=sections) == []
    assert straddle_problems(model, {**groups, "stage4": groups["stage4"] + ("fc",)}, sections=sections) == [
        "stage4 holds parameters of the parts ['body', 'fc']"]
    layers = {**groups, "layer": ("layer4.1", "fc")}
    assert straddle_problems(model, layers, ["layer"], sections) == ["layer holds parameters of the parts ['body', 'fc']"]


# -- the coverage page: written by the sweep, what the sweep prints ---------------------------------------

_MEASURED = re.compile(r"^`(?P<command>python tools/sweep\.py [^`]+)`: measured (?P<date>\d{4}-\d\d-\d\d) in "
                       r"(?P<seconds>\d+) s with Python [\d.]+, torch [\w.+]+", re.M)
_TABLE = re.compile(r"^\| (?P<label>[^|]+?) \| (?P<n>\d+) \| (?P<right>\d+) \| (?P<absent>\d+) \| (?P<wrong>\d+) \|$",
                    re.M)
_MISSES = re.compile(r"^(?P<status>Absent|Wrong|Skipped) \((?P<n>\d+)\):\n\n(?P<lines>(?:- .*\n?)+)", re.M)


def misses(section: str) -> dict[str, dict[str, str]]:
    """status -> model (as listed) -> its reasons, from a section of the page."""
    found: dict[str, dict[str, str]] = {}
    for block in _MISSES.finditer(section):
        for line in block["lines"].splitlines():
            models, _, reason = line[2:].partition(": ")
            for model in re.findall(r"`([^`]+)`", models):
                found.setdefault(block["status"].lower(), {})[model] = reason.replace("\\|", "|")
    return found


def page() -> dict[str, str]:
    return page_sections(PAGE.read_text())


def measured_here(section: str) -> bool:
    """Whether the packages installed are those the section was measured with (its figures hold for those only)."""
    said = re.search(r"with Python [\d.]+, (.*)\.$", section, re.M).group(1).split(", ")
    return all(versions([name]).endswith(f"{name} {version}") for name, _, version in (p.partition(" ") for p in said))


def test_the_coverage_page_has_a_section_per_source_with_its_command_date_and_versions():
    sections = page()
    assert list(sections) == ["torchvision", "timm", "timm-features", "hf", "libraries", "multipart"]
    assert list(sections) == [k for k in PAGE_ORDER if k in sections]
    for key, text in sections.items():
        measured = _MEASURED.search(text)
        assert measured, key
        assert measured["command"] == "python tools/sweep.py " + {"timm-features": "timm --features-only"}.get(key, key)
        tables = list(_TABLE.finditer(text))
        assert tables, key
        for table in tables:  # the counts add up
            assert int(table["n"]) == sum(int(table[s]) for s in ("right", "absent", "wrong")), (key, table[0])
        listed = misses(text)
        for status in ("absent", "wrong"):  # each miss counted is listed, by model
            assert sum(int(t[status]) for t in tables) == len(listed.get(status, {})), (key, status)
    if measured_here(sections["timm"]):  # every timm classifier of that timm
        timm = {t["label"]: int(t["n"]) for t in _TABLE.finditer(sections["timm"])}
        assert timm["timm"] == len(classifiers.model_names("timm"))


def test_the_page_s_misses_are_what_a_rerun_of_those_models_prints():
    """The page lists each absent or wrong model with its reason; rerunning a model of each reason (and every
    torchvision miss) gives that reason again, word for word."""
    for key, source, features_only in (("torchvision", "torchvision", False), ("timm", "timm", False),
                                       ("timm-features", "timm", True)):
        label = "timm features_only" if features_only else source
        if not measured_here(page()[key]):
            continue  # other versions may miss otherwise: the page says which versions it holds for
        listed = {m.rpartition("/")[2]: (status, reason) for status, found in misses(page()[key]).items()
                  for m, reason in found.items() if not m.startswith(f"{source} forward order")}
        sample = {}
        for model, (status, reason) in listed.items():  # one model per reason
            sample.setdefault(reason, model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = classifiers.sweep(source, list(sample.values()), features_only=features_only, progress=False)
        assert [(r.label, r.model, r.status, "; ".join(r.reasons)) for r in rows] == [
            (label, model, *listed[model]) for model in sample.values()]


def test_the_generator_writes_the_page_s_form_and_rewrites_only_its_own_section(tmp_path):
    rows = [row("torchvision", "resnet18"), row("torchvision", "raft_small", absent=["no head: no classifier"])]
    section = Section("torchvision", "torchvision: every model (all tasks)", "python tools/sweep.py torchvision",
                      rows, ["a note"], 3.0, ("torch",))
    text = section_markdown(section)
    assert _MEASURED.search(text)["command"] == "python tools/sweep.py torchvision"
    assert [t["n"] for t in _TABLE.finditer(text)] == ["2"] and misses(text) == {
        "absent": {"raft_small": "no head: no classifier"}}
    updated = update_page(PAGE.read_text(), [section], PAGE_ORDER)
    assert page_sections(updated) == {**page(), "torchvision": text}
    assert update_page(updated, [], PAGE_ORDER) == updated


@pytest.mark.slow
def test_a_rerun_of_the_torchvision_section_gives_the_page_s_figures(tmp_path):
    shown = page()["torchvision"]
    if not measured_here(shown):
        pytest.skip("the page was measured with other versions of torch or torchvision")
    target = tmp_path / "coverage.md"
    assert sweep(["torchvision", "--no-progress", "--markdown", str(target)]) == 0
    fresh = page_sections(target.read_text())["torchvision"]
    assert _MEASURED.sub("", fresh) == _MEASURED.sub("", shown)
