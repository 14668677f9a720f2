"""`mmfuse compare`: cells run in child processes, results come from them, reruns reuse them."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_config, write_shapes_csv
from mmfuse.cli import app
from mmfuse.compare import paired_p, plan_parts, run_comparison
from mmfuse.config import parse_config
from mmfuse.errors import ConfigError

FUSIONS = ["concat", "late"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    write_shapes_csv(folder)
    return folder


def config_for(table, folder, epochs=1):
    # compare.set reaches every cell: a frozen image encoder, so noisy features are cached too.
    return parse_config(tiny_config(folder, table / "table.csv", **{
        "train.epochs": epochs, "compare.set": {"encoders.image.trainable": False, "head.hidden": 12}}))


@pytest.fixture(scope="module")
def compared(table, tmp_path_factory):
    """One real comparison (2 fusions × 2 seeds), shared by the tests that read its results."""
    folder = tmp_path_factory.mktemp("compare")
    out, lines = folder / "out", []
    frame = run_comparison(config_for(table, folder), FUSIONS, 2, None, out, echo=lines.append)
    return frame, out, lines, folder


def test_results_come_from_the_cells(compared):
    frame, out, _, _ = compared
    csv = pd.read_csv(out / "comparison.csv")
    assert len(csv) == 4 and len(frame) == 4
    assert sorted(zip(csv["fusion"], csv["seed"])) == [("concat", 0), ("concat", 1), ("late", 0), ("late", 1)]
    for row in csv.itertuples():
        cell = json.loads((out / "cells" / f"{row.fusion}-s{row.seed}" / "cell.json").read_text())
        assert cell["metric"] == pytest.approx(row.metric, abs=1e-12)
        assert cell["metric_name"] == "accuracy" and cell["accuracy"] == cell["metric"]
        assert cell["params"] > 0 and cell["train_s"] > 0 and cell["latency_ms_per_row"] > 0
        assert cell["peak_rss_mb"] > 50  # a torch process, measured in the child
        assert {"without_image", "without_text"} <= set(cell)
    # The two seeds of one fusion are different runs (different initial weights).
    assert (out / "cells" / "concat-s0" / "config.yaml").read_text() != (out / "cells" / "concat-s1" / "config.yaml").read_text()


def test_markdown_matches_the_csv(compared):
    _, out, lines, _ = compared
    csv = pd.read_csv(out / "comparison.csv")
    md = (out / "comparison.md").read_text()
    stats = csv.groupby("fusion")["metric"].agg(["mean", "std"])
    for fusion, row in stats.iterrows():
        assert f"| {fusion} | {row['mean']:.4f} ± {row['std']:.4f} | 2 |" in md
    ranked = [line.split("|")[2].strip() for line in md.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert ranked == list(stats["mean"].sort_values(ascending=False).index) or stats["mean"].nunique() == 1
    assert "p vs best" in md and "best" in md
    assert (out / "metric.png").stat().st_size > 0 and (out / "cost.png").stat().st_size > 0
    assert any("| rank | fusion |" in line for line in lines)  # the table is printed at the end


def test_rerun_reuses_every_cell(compared, table):
    _, out, _, folder = compared
    cells = sorted((out / "cells").glob("*/cell.json"))
    before = [p.stat().st_mtime_ns for p in cells]
    lines = []
    again = run_comparison(config_for(table, folder), FUSIONS, 2, None, out, echo=lines.append)
    assert [p.stat().st_mtime_ns for p in cells] == before
    assert any("reused 4 with a cell.json, 0 to run" in line for line in lines)
    assert sum("reused (cell.json exists)" in line for line in lines) == 4
    assert len(again) == 4


def test_rerun_with_another_config_is_refused(compared, table):
    _, out, _, folder = compared
    config = config_for(table, folder, epochs=2)
    with pytest.raises(ConfigError, match="train.epochs: 1 -> 2"):
        run_comparison(config, FUSIONS, 2, None, out, echo=lambda _: None)


def test_unknown_fusion_fails_before_any_work(tmp_path, table):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="unknown fusion 'nope'; available: .*concat"):
        run_comparison(config_for(table, tmp_path), ["concat", "nope"], 2, None, out, echo=lambda _: None)
    assert not out.exists()


def test_folds_group_images_and_keep_the_test_split(tmp_path, table):
    from mmfuse.predictor import Predictor

    config = config_for(table, tmp_path)
    splits = Predictor(config).splits()
    parts = plan_parts(splits, 3, config)
    held = [set(part["val"]["image"]) for part in parts.values()]
    assert all(a.isdisjoint(b) for i, a in enumerate(held) for b in held[i + 1:])  # one image, one fold
    assert set().union(*held) == set(splits["train"]["image"]) | set(splits["val"]["image"])
    assert all(part["eval"] is splits["test"] for part in parts.values())
    for part in parts.values():
        assert set(part["train"]["image"]).isdisjoint(part["val"]["image"])

    # No test split: each held-out fold is scored, and checkpoint picking uses other rows.
    no_test = parse_config(tiny_config(tmp_path, table / "table.csv", **{"data.test_fraction": 0.0}))
    parts = plan_parts(Predictor(no_test).splits(), 3, no_test)
    for part in parts.values():
        assert part["eval_split"] == "held-out fold" and len(part["val"]) > 0
        assert set(part["eval"]["image"]).isdisjoint(set(part["train"]["image"]) | set(part["val"]["image"]))
    with pytest.raises(ConfigError, match="no test rows"):
        plan_parts(Predictor(no_test).splits(), None, no_test)


def test_paired_p_over_shared_cells():
    index = pd.MultiIndex.from_tuples([(0, -1), (1, -1), (2, -1)], names=["seed", "fold"])
    a = pd.Series([0.90, 0.92, 0.91], index=index)
    assert paired_p(a, a) == 1.0  # identical runs: no evidence of a difference
    assert paired_p(a, a.iloc[:1]) is None  # one shared cell: no test
    b = pd.Series([0.80, 0.83, 0.80], index=index)
    assert paired_p(a, b) == pytest.approx(0.003317, abs=1e-5)  # t = 17.32 on 2 degrees of freedom


def test_cli_compare(tmp_path, table):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path, table / "table.csv", **{"train.epochs": 1})))
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, ["compare", str(config), "--fusions", "concat,late", "--seeds", "1",
                                      "--out", str(out), "--set", "head.hidden=8"])
    assert result.exit_code == 0, result.output
    for name in ("comparison.csv", "comparison.md", "metric.png", "cost.png"):
        assert (out / name).is_file()
    assert "| n/a |" in (out / "comparison.md").read_text()  # one seed: no paired test
    assert yaml.safe_load((out / "cells" / "late-s0" / "config.yaml").read_text())["head"]["hidden"] == 8


def test_cli_unknown_fusion_exits_2(monkeypatch, capsys, tmp_path, table):
    from mmfuse.cli import main

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path, table / "table.csv")))
    monkeypatch.setattr("sys.argv", ["mmfuse", "compare", str(config), "--fusions", "concat,nope"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and capsys.readouterr().err.startswith("error: unknown fusion 'nope'")


def test_compare_settings_reach_every_cell(compared):
    _, out, _, folder = compared
    for cell in (out / "cells").glob("*/config.yaml"):
        config = yaml.safe_load(cell.read_text())
        assert config["head"]["hidden"] == 12 and config["encoders"]["image"]["trainable"] is False
        assert config["compare"]["set"] == {}  # applied once, not again by the cell
    # The frozen image encoder's noisy features were cached once per (noise, level); level 0 is
    # the clean cache. (Each seed's frozen random encoder is another fingerprint, another folder.)
    variants = {p.name.split("-", 2)[2] for p in (folder / "cache").glob("image-*-*-*")}
    assert variants == set(f"{noise}-{level}-s0" for noise in ("blur", "gaussian", "occlusion")
                              for level in ("0.25", "0.5"))


def test_robustness_curves_come_from_the_cells(compared):
    _, out, _, _ = compared
    from mmfuse.robustness import relative_robustness

    md = (out / "comparison.md").read_text()
    assert "robust image" in md and "robust text" in md and "![robustness curves](robustness.png)" in md
    assert (out / "robustness.png").stat().st_size > 0
    for cell_dir in (out / "cells").iterdir():
        cell = json.loads((cell_dir / "cell.json").read_text())
        if cell["seed"] != 0:  # curves come from each fusion's first seed only
            assert not (cell_dir / "robustness.csv").exists() and "robust_text" not in cell
            continue
        curves = pd.read_csv(cell_dir / "robustness.csv")
        assert sorted(curves["level"].unique()) == [0.0, 0.25, 0.5]
        assert set(curves["noise"]) == {"gaussian", "blur", "occlusion", "token_drop", "typo"}
        # Level 0 is the clean input: the cell's own metric.
        assert np.allclose(curves.loc[curves["level"] == 0, "accuracy"], cell["metric"])
        text = [relative_robustness(p.sort_values("level")["level"].tolist(), p.sort_values("level")["accuracy"].tolist())
                for _, p in curves[curves["modality"] == "text"].groupby("noise")]
        assert cell["robust_text"] == pytest.approx(np.mean(text))


def test_effective_robustness_is_the_residual_of_a_line_fit():
    from mmfuse.compare import effective_robustness

    summary = pd.DataFrame({"mean": [0.9, 0.8, 0.7], "robust_image": [0.9, 0.8, 0.9], "robust_text": [0.9, 0.8, 0.5]})
    eff = effective_robustness(summary)
    assert np.allclose(eff, 0.0, atol=1e-9)  # on the line: nothing more robust than expected
    summary.loc[1, "robust_text"] = 1.0  # fusion 1 gains 0.1 of mean relative robustness
    eff = effective_robustness(summary)
    assert eff[1] > 0 and eff[0] < 0 and eff[2] < 0 and abs(eff.sum()) < 1e-9
    assert effective_robustness(summary.iloc[:2]).isna().all()  # no line through two fusions
