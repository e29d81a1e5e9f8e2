"""The benchmark scripts: argument handling, and a tiny run of each that writes a readable results file.

No timing is asserted: these runs take a step or two on tiny models.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def throughput() -> ModuleType:
    return load("throughput")


@pytest.fixture(scope="module")
def freeze_depth() -> ModuleType:
    return load("freeze_depth")


@pytest.fixture(scope="module")
def feature_cache() -> ModuleType:
    return load("feature_cache")


TINY = ["--batch-size", "2", "--img-size", "32", "--warmup", "0", "--steps", "1", "--no-progress", "--device", "cpu"]


def test_throughput_defaults_on_cpu(throughput: ModuleType) -> None:
    args = throughput.parse_args(["--device", "cpu"])
    assert (args.model, args.batch_size, args.img_size, args.modes) == ("resnet18", 16, 128, list(throughput.MODES))
    assert args.precision == "fp32" and not args.channels_last and not args.compile


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--modes", "full", "fastest"], "unknown mode 'fastest'"),
        (["--results-file", "out.txt"], "use a .json or .csv name"),
        (["--plot", "out.jpg"], "use a .png name"),
        (["--batch-size", "0"], "--batch-size must be positive"),
        (["--precision", "fp8"], "invalid choice: 'fp8'"),
    ],
)
def test_throughput_refuses_bad_arguments(throughput: ModuleType, argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit):
        throughput.parse_args(["--device", "cpu", *argv])
    assert message in capsys.readouterr().err


def test_throughput_modes_accept_commas(throughput: ModuleType) -> None:
    args = throughput.parse_args(["--device", "cpu", "--modes", "floor,freezable", "floor"])
    assert args.modes == ["floor", "freezable"]


def test_throughput_tiny_run_writes_json_and_plot(throughput: ModuleType, tmp_path: Path, capsys) -> None:
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    throughput.main(["--model", "resnet18", *TINY, "--no-memory", "--results-file", str(out), "--plot", str(png)])
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    assert [r["mode"] for r in results["rows"]] == list(throughput.MODES)
    assert all(r["step_ms"] > 0 and r["samples_per_sec"] > 0 for r in results["rows"])
    floor = next(r for r in results["rows"] if r["mode"] == "floor")
    assert floor["x_floor"] == 1.0 and results["rows"][0]["speedup_vs_full"] == 1.0
    assert {"device", "dtype", "torch", "timm", "date"} <= results["meta"].keys()
    assert "freezable_fast" in printed and "x_floor" in printed
    assert png.stat().st_size > 0


def test_throughput_measures_cpu_memory_in_a_subprocess(throughput: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    throughput.main(["--model", "test_resnet", *TINY, "--modes", "freezable", "floor", "--results-file", str(out)])
    rows = list(csv.DictReader(out.open()))
    assert [r["mode"] for r in rows] == ["freezable", "floor"]
    assert all(float(r["peak_mem_mb"]) > 0 for r in rows)
    assert float(rows[1]["mem_x_floor"]) == 1.0 and rows[0]["device"] == "cpu"


def test_freeze_depth_configurations(freeze_depth: ModuleType) -> None:
    configs = freeze_depth.configurations("resnet18", 32)
    assert list(configs) == ["nothing", "stem", "stem..stage1", "stem..stage2", "stem..stage3", "backbone",
                             "stage3 only"]
    assert configs["stem..stage2"] == ["stem", "stage1", "stage2"] and configs["stage3 only"] == ["stage3"]


def test_freeze_depth_tiny_run(freeze_depth: ModuleType, tmp_path: Path) -> None:
    out, png = tmp_path / "d.json", tmp_path / "d.png"
    freeze_depth.main(["--models", "test_resnet", "test_vit", *TINY, "--no-memory", "--results-file", str(out),
                       "--plot", str(png)])
    rows = json.loads(out.read_text())["rows"]
    for model in ("test_resnet", "test_vit"):
        mine = [r for r in rows if r["model"] == model]
        assert mine[0]["frozen"] == "nothing" and mine[0]["frozen_pct"] == 0
        assert any(r["frozen"] == "backbone" and r["frozen_pct"] > 50 for r in mine)
        assert any(r["frozen"].endswith(" only") for r in mine)
    assert png.stat().st_size > 0


def test_freeze_depth_refuses_bad_arguments(freeze_depth: ModuleType, capsys) -> None:
    with pytest.raises(SystemExit):
        freeze_depth.parse_args(["--device", "cpu", "--steps", "0"])
    assert "--steps must be positive" in capsys.readouterr().err


def test_feature_cache_tiny_run(feature_cache: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    feature_cache.main(["--model", "test_resnet", "--num-samples", "4", "--batch-size", "2", "--img-size", "32",
                        "--epochs", "2", "--uncached-epochs", "1", "--device", "cpu", "--no-progress",
                        "--cache-dir", str(tmp_path / "features"), "--results-file", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["freezable", "freezable_fast", "cache_epoch1", "cache_epoch2+"]
    assert len(list((tmp_path / "features").glob("*.pt"))) == 4


def test_feature_cache_refuses_one_epoch(feature_cache: ModuleType, capsys) -> None:
    with pytest.raises(SystemExit):
        feature_cache.parse_args(["--epochs", "1", "--device", "cpu"])
    assert "--epochs must be at least 2" in capsys.readouterr().err


def test_readme_table_rewrites_between_the_markers(tmp_path: Path) -> None:
    readme_table = load("readme_table")
    results = tmp_path / "r.json"
    meta = {"benchmark": "throughput", "model": "resnet18", "batch_size": 16, "img_size": 128, "dtype": "fp32",
            "device": "cpu", "device_name": "CPU", "threads": 2, "torch": "2.x", "timm": "1.x", "date": "today",
            "command": "python benchmarks/throughput.py"}
    rows = [{"mode": "floor", "step_ms": 10.0, "samples_per_sec": 1600.0, "peak_mem_mb": None, "x_floor": 1.0,
             "mem_x_floor": None, "speedup_vs_full": 3.0}]
    results.write_text(json.dumps({"meta": meta, "rows": rows}))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{readme_table.START}\nold\n{readme_table.END}\nrest\n")
    readme_table.main(["--update", str(readme), str(results)])
    text = readme.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith("rest\n")
    assert "| floor | 10.0 | 1600.0 | n/m | 1.00 | n/m | 3.00 |" in text
    assert f"[`{results}`](r.json)" in text  # linked relative to the README it goes into


def test_the_readmes_figures_are_those_of_the_results_files() -> None:
    """The headline in README.md and docs/benchmarks.md and the tables in benchmarks/README.md are generated, not
    typed in: not stale."""
    readme_table = load("readme_table")
    root = Path(__file__).resolve().parents[1]
    readme, tables = (root / "README.md").read_text(), (root / "benchmarks" / "README.md").read_text()
    page = (root / "docs" / "benchmarks.md").read_text()
    linked = re.findall(r"\[`(benchmarks/results/[^`]+\.json)`\]", tables)
    assert linked, "benchmarks/README.md links no results file"
    results = [json.loads((root / p).read_text()) for p in linked]
    assert readme_table.headline(results) in readme and readme_table.headline(results) in page
    for result, path in zip(results, linked):
        assert readme_table.table(result, path, str(Path(path).relative_to("benchmarks"))) in tables


def test_the_benchmark_readmes_links_resolve_from_its_own_directory() -> None:
    here = Path(__file__).resolve().parents[1] / "benchmarks"
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", (here / "README.md").read_text())
    assert any(t.endswith(".json") for t in targets)
    assert [t for t in targets if not t.startswith("http") and not (here / t).exists()] == []


def test_fast_levers_tiny_run(tmp_path: Path) -> None:
    fast_levers = load("fast_levers")
    out = tmp_path / "l.json"
    fast_levers.main(["--model", "test_resnet", "--batch-size", "2", "--img-size", "32", "--warmup", "0",
                      "--steps", "1", "--device", "cpu", "--no-progress", "--results-file", str(out)])
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == list(fast_levers.VARIANTS)
    assert rows["fold"]["folded"] > 0 and rows["channels_last"]["folded"] == 0 and rows["floor"]["x_floor"] == 1.0


def test_feature_cache_checks_tiny_run(feature_cache: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "checks.json"
    feature_cache.main(["--checks", "--model", "test_resnet", "--batch-size", "2", "--img-size", "32", "--repeats",
                        "1", "--device", "cpu", "--no-progress", "--results-file", str(out)])
    rows = {r["case"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["forward (no cache)"]["pct_of_forward"] == 100
    assert {"per-call weights check", "weights fingerprint (full)", "cache, all hits, verify_inputs"} <= set(rows)


@pytest.fixture(scope="module")
def accuracy() -> ModuleType:
    pytest.importorskip("sklearn")
    return load("accuracy")


def test_accuracy_defaults_and_quick_mode(accuracy: ModuleType) -> None:
    args = accuracy.parse_args([])
    assert (args.modes, args.settings, args.batch_sizes, args.seeds) == (
        list(accuracy.MODES), list(accuracy.SETTINGS), [2, 4, 8, 16, 32, 64], 5)
    quick = accuracy.parse_args(["--quick", "--modes", "naive,freezable"])
    assert quick.seeds == 1 and quick.batch_sizes == [4, 32] and quick.modes == ["naive", "freezable"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--modes", "naive", "frozen"], "unknown mode 'frozen'"),
        (["--settings", "rotated"], "unknown setting 'rotated'"),
        (["--batch-sizes", "0"], "--batch-sizes must be positive"),
        (["--seeds", "0"], "--seeds must be positive"),
        (["--results-file", "out.txt"], "use a .json or .csv name"),
        (["--plot", "out.jpg"], "use a .png name"),
    ],
)
def test_accuracy_refuses_bad_arguments(accuracy: ModuleType, argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit):
        accuracy.parse_args(argv)
    assert message in capsys.readouterr().err


def test_accuracy_tiny_run_writes_json_and_plot(accuracy: ModuleType, tmp_path: Path, capsys) -> None:
    out, png = tmp_path / "a.json", tmp_path / "a.png"
    accuracy.main(["--quick", "--batch-sizes", "8", "--shots", "2", "--no-progress", "--results-file", str(out),
                   "--plot", str(png)])
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    rows = results["rows"]
    assert [(r["setting"], r["mode"]) for r in rows] == [(s, m) for s in accuracy.SETTINGS for m in accuracy.MODES]
    for row in rows:
        assert 0 <= row["acc_min_pct"] <= row["acc_pct"] <= row["acc_max_pct"] <= 100 and row["train_s"] >= 0
        if row["mode"] in ("freezable", "linear_probe"):  # frozen right: statistics untouched, no train/eval gap
            assert row["bn_mean_shift_sd"] == 0 and row["loss_gap_nats"] == 0
    naive = next(r for r in rows if r["mode"] == "naive")
    assert naive["bn_mean_shift_sd"] > 0  # naive freezing lets the running statistics drift
    assert {"device", "threads", "torch", "timm", "date", "command", "seeds", "source_acc_pct"} <= results["meta"].keys()
    assert "acc_pct" in printed and "bn_mean_shift_sd" in printed and png.stat().st_size > 0


def test_the_readmes_accuracy_and_cache_check_figures_are_those_of_the_results_files() -> None:
    """docs/benchmarks.md's accuracy tables and FeatureCache check costs are copied from committed results: kept
    equal."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "docs" / "benchmarks.md").read_text()
    accuracy = json.loads((root / "benchmarks" / "results" / "cpu_accuracy_digits.json").read_text())
    rows: dict[tuple[str, str], list[dict]] = {}
    for row in accuracy["rows"]:
        rows.setdefault((row["setting"], row["mode"]), []).append(row)
    for (setting, mode), mode_rows in rows.items():
        mode_rows.sort(key=lambda r: r["batch_size"])
        header = " | ".join(f"batch {r['batch_size']}" for r in mode_rows)
        cells = " | ".join(f"{r['acc_pct']:.1f} ± {r['acc_std_pct']:.1f}" for r in mode_rows)
        assert f"| {header} |" in readme and f"| `{mode}` | {cells} |" in readme, (setting, mode)
    checks = json.loads((root / "benchmarks" / "results" / "cpu_feature_cache_checks_resnet50.json").read_text())
    for row in checks["rows"]:
        ms = f"{row['batch_ms']:,.0f}" if row["batch_ms"] >= 100 else f"{row['batch_ms']:.2f}"
        assert f"| {row['case']} | {ms} | {row['pct_of_forward']:.3g} |" in readme, row["case"]


@pytest.fixture(scope="module")
def progressive() -> ModuleType:
    pytest.importorskip("sklearn")
    return load("progressive")


def test_progressive_defaults_and_quick_mode(progressive: ModuleType) -> None:
    args = progressive.parse_args([])
    assert (args.modes, args.seeds, args.epochs, args.device) == (["full", "schedule", "gradient"], 5, 15, "cpu")
    quick = progressive.parse_args(["--quick", "--modes", "full,gradient"])
    assert (quick.seeds, quick.epochs, quick.modes) == (1, 2, ["full", "gradient"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--modes", "full", "freezeout"], "unknown mode 'freezeout'"),
        (["--modes", "schedule"], "--modes must include full"),
        (["--epochs", "0"], "--epochs must be positive"),
        (["--train-fraction", "1.5"], "--train-fraction must be in (0, 1)"),
        (["--results-file", "out.txt"], "use a .json or .csv name"),
    ],
)
def test_progressive_refuses_bad_arguments(progressive: ModuleType, argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit):
        progressive.parse_args(argv)
    assert message in capsys.readouterr().err


def test_progressive_tiny_run_writes_json_and_plot(progressive: ModuleType, tmp_path: Path, capsys) -> None:
    out, png = tmp_path / "p.json", tmp_path / "p.png"
    progressive.main(["--quick", "--modes", "full", "schedule", "gradient_uncached", "--no-memory", "--no-progress",
                      "--results-file", str(out), "--plot", str(png)])
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    rows = {r["mode"]: r for r in results["rows"]}
    assert list(rows) == ["full", "schedule", "gradient_uncached"]
    assert rows["full"]["wall_x_full"] == 1.0 and rows["full"]["frozen_groups"] == 0
    assert rows["schedule"]["frozen_groups"] == 6  # a run of 2 epochs: every group freezes in its second half
    assert rows["schedule"]["opt_state_mb_end"] < rows["schedule"]["opt_state_mb_start"] <= rows["full"]["opt_state_mb_end"]
    assert rows["schedule"]["saved_mb_end"] < rows["full"]["saved_mb_end"]
    assert rows["schedule"]["step_mem_mb_end"] < rows["schedule"]["step_mem_mb_start"] <= rows["full"]["step_mem_mb_start"]
    assert all(0 <= r["acc_min_pct"] <= r["acc_pct"] <= 100 and r["wall_s"] > 0 for r in rows.values())
    assert {"device", "dtype", "torch", "date", "command", "loadavg_start", "loadavg_end", "target_acc_pct"} <= \
        results["meta"].keys()
    assert len(results["runs"]) == 3 and len(results["runs"][0]["epochs"]) == 2
    assert "wall_x_full" in printed and "opt_state_mb_end" in printed and png.stat().st_size > 0


def test_progressive_measures_peak_memory_in_a_child(progressive: ModuleType, capsys) -> None:
    progressive.main(["--quick", "--memory-child", "schedule"])
    measured = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert measured is None or measured["peak_mem_mb"] >= measured["last_epoch_mem_mb"] >= 0


def test_fast_path_staleness_tiny_run(tmp_path: Path) -> None:
    staleness = load("fast_path_staleness")
    out = tmp_path / "s.json"
    meta, rows = staleness.main(["--model", "resnet18", "--batch-size", "1", "--img-size", "32", "--repeats", "1",
                                 "--device", "cpu", "--results-file", str(out)])
    assert [r["case"] for r in json.loads(out.read_text())["rows"]] == ["fast forward", "staleness check",
                                                                       "version part only"]
    assert meta["identity_comparisons"] > meta["version_comparisons"] > 0
