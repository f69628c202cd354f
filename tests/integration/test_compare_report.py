"""`mtl-suite compare` and `mtl-suite report` end to end on the bundled sample with the tiny backbone and a tmp
tracking store; the report's HTML is rendered in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from mtl_suite.analysis import compare as stats
from mtl_suite.cli import app

pytestmark = pytest.mark.slow

TINY = ["--backbone", "tiny", "--weights", "none", "--image-size", "64", "--folds", "2", "--epochs", "1",
        "--finetune-epochs", "1"]
runner = CliRunner()


def invoke(args: list[str]):
    result = runner.invoke(app, args)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{root}/mlflow.db"
    args = ["compare", *TINY, "--task", "binary", "--runs", "2", "--tracking-uri", uri, "--experiment", "cmp",
            "--out", str(root / "reports"), "-q"]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    mlflow.set_tracking_uri(uri)
    return {"root": root, "uri": uri, "args": args}


def _client(uri: str) -> mlflow.MlflowClient:
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient()


def _stage_runs(client, experiment_id: str, extra: str = "") -> list:
    return client.search_runs([experiment_id], "tags.run_kind = 'stage'" + extra, max_results=1000)


def test_compare_makes_paired_runs_report_and_plot(compared):
    client = _client(compared["uri"])
    exp = client.get_experiment_by_name("cmp")
    parents = client.search_runs([exp.experiment_id], "tags.run_kind = 'comparison'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["backbone"] == "tiny" and parent.data.tags["task"] == "binary"
    arms = _stage_runs(client, exp.experiment_id, f" AND tags.comparison_run = '{parent.info.run_id}' "
                                                  "AND tags.comparison_role = 'arm'")
    assert len(arms) == 4
    assert sorted(r.data.tags["stage"] for r in arms) == ["classical", "classical", "stage3", "stage3"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in arms)
    by_pair = {}
    for r in arms:
        by_pair.setdefault(r.data.tags["comparison_pair"], {})[r.data.tags["stage"]] = r
    assert set(by_pair) == {"0", "1"}
    for pair, runs in by_pair.items():
        ctl, mtl = runs["classical"], runs["stage3"]
        assert ctl.data.tags["seed"] == mtl.data.tags["seed"] == str(42 + int(pair))
        assert ctl.data.params["data.seed"] == mtl.data.params["data.seed"] == str(42 + int(pair))
        assert ctl.data.tags["split_digest"] == mtl.data.tags["split_digest"]
        assert (ctl.info.run_name, mtl.info.run_name) == (f"pair{pair}-classical-tiny-binary",
                                                          f"pair{pair}-stage3-tiny-binary")
        # MTL's lineage is this pair's own stage 2 (explicit parent, same split seed), not "the newest" run
        stage2 = client.get_run(mtl.data.tags["parent_stage_run"])
        assert stage2.data.tags["stage"] == "stage2"
        assert stage2.data.tags["comparison_pair"] == pair and stage2.data.params["data.seed"] == str(42 + int(pair))
    assert by_pair["0"]["classical"].data.tags["split_digest"] != by_pair["1"]["classical"].data.tags["split_digest"]

    # statistics recomputed from the runs match what was logged and written
    ctl = [by_pair[p]["classical"].data.metrics["test/accuracy"] for p in ("0", "1")]
    mtl = [by_pair[p]["stage3"].data.metrics["test/accuracy"] for p in ("0", "1")]
    ratio = parent.data.metrics["compare/test_train_ratio"]
    expected = stats.compare_arms(ctl, mtl, ratio, "accuracy")
    assert parent.data.metrics["compare/accuracy/mean_difference"] == pytest.approx(expected.mean_difference)
    assert parent.data.metrics["compare/accuracy/t_pooled"] == pytest.approx(expected.pooled.statistic)
    assert expected.pooled.df == 2 * 2 - 2
    assert 0 < ratio < 1

    reports = list((compared["root"] / "reports").glob("compare-tiny-binary-*.md"))
    assert len(reports) == 1
    text = reports[0].read_text()
    assert "mtl-suite compare --backbone tiny" in text and "--runs 2" in text
    assert expected.verdict in text
    # the paper's test, the colour baseline beside both arms (every stage run logs it), the paper's numbers checked
    assert "pooled t (paper's test)" in text and "| colour alone |" in text
    assert "Colour alone (the best colour-only baseline" in text and "Under stain shifts (test parts" in text
    assert "are inconsistent: at df = 18" in text
    assert "- Labels: the classes are the dataset's own (normal, leukemia)" in text  # binary: not Aria's names
    assert "Dataset digest" in text or "dataset digest" in text
    assert "CPU cores" in text
    table = re.findall(r"^\| [12] \| 4[23] \|", text, flags=re.M)
    assert len(table) == 2
    plots = list((compared["root"] / "reports").glob("compare-tiny-binary-*.png"))
    assert len(plots) == 1
    with Image.open(plots[0]) as im:
        assert im.size[0] > 200 and im.size[1] > 200
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert {"comparison/table_v.csv", "comparison/statistics.json", "comparison/report.md"} <= artifacts
    # per-image predictions beside the report: each arm's test accuracy recomputed from the CSV alone
    predictions = list((compared["root"] / "reports").glob("compare-tiny-binary-*-predictions.csv"))
    assert len(predictions) == 1 and f"`{predictions[0].name}` (4 arm runs" in text
    assert f"comparison/{predictions[0].name}" in artifacts and "- Config file: none" in text
    frame = pd.read_csv(predictions[0])
    for (run, arm), rows in frame.groupby(["run", "arm"]):
        logged = by_pair[str(run - 1)]["classical" if arm == "ctl" else "stage3"].data.metrics["test/accuracy"]
        assert (rows["label"] == rows["predicted"]).mean() == pytest.approx(logged)


def test_compare_resumes_without_repeating_finished_pairs(compared):
    client = _client(compared["uri"])
    exp = client.get_experiment_by_name("cmp")
    before = len(_stage_runs(client, exp.experiment_id))
    result = invoke(compared["args"][:-1])  # not quiet: the output says what is reused
    assert result.exit_code == 0, result.output
    assert len(_stage_runs(client, exp.experiment_id)) == before
    assert "resuming comparison run" in result.output and "reusing finished stage3" in result.output
    assert len(client.search_runs([exp.experiment_id], "tags.run_kind = 'comparison'")) == 1


def test_compare_rejects_too_few_runs_and_unknown_study(tmp_path):
    result = invoke(["compare", *TINY, "--runs", "1", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert result.exit_code == 2 and "at least 2" in result.output
    result = invoke(["compare", *TINY, "--runs", "2", "--params-from-study", "s1",
                     "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert result.exit_code == 2 and "--params-from-study" in result.output
    assert not (tmp_path / "m.db").exists() or not mlflow.MlflowClient(f"sqlite:///{tmp_path}/m.db").search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(f"sqlite:///{tmp_path}/m.db").search_experiments()])


def test_failed_arms_are_reported_and_excluded(tmp_path, monkeypatch):
    """Every CTL arm raises: both pairs are listed as excluded with the reason, MTL is not trained for them, and
    with fewer than 2 usable pairs the command ends with a clear error after writing the report."""
    from mtl_suite.workflows import stage

    calls = []

    def failing(request, say=print):
        calls.append(request.stage)
        raise RuntimeError(f"simulated out-of-memory in {request.stage}")

    monkeypatch.setattr(stage, "run_stage", failing)  # workflows/compare.py looks it up there per call
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = invoke(["compare", *TINY, "--task", "binary", "--runs", "2", "--tracking-uri", uri,
                     "--experiment", "flaky", "--out", str(tmp_path / "reports"), "-q"])
    assert result.exit_code == 2
    assert "only 0 of 2 pairs" in result.output
    assert calls == ["classical", "classical"]
    text = next((tmp_path / "reports").glob("*.md")).read_text()
    assert "run 1 (seed 42): CTL classical failed: RuntimeError: simulated out-of-memory in classical" in text
    assert "run 2 (seed 43): CTL classical failed" in text
    assert "No verdict" in text
    parent = mlflow.MlflowClient(uri).search_runs(
        [mlflow.MlflowClient(uri).get_experiment_by_name("flaky").experiment_id], "tags.run_kind = 'comparison'")[0]
    assert parent.info.status == "FAILED"


@pytest.fixture(scope="module")
def reported(compared):
    """Add a multiclass stage-3 run beside the comparison's binary runs, then build the report."""
    uri, root = compared["uri"], compared["root"]
    result = invoke(["stage3", *TINY, "--task", "multiclass", "--tracking-uri", uri, "--experiment", "cmp", "-q"])
    assert result.exit_code == 0, result.output
    out = root / "report"
    result = invoke(["report", "--experiment", "cmp", "--tracking-uri", uri, "--out", str(out), "-q",
                     "--gradcam-per-class", "1"])
    assert result.exit_code == 0, result.output
    return out


EXPECTED_FIGURES = {
    "fig9-convergence-binary.png", "fig9-convergence-multiclass.png",
    "fig10-roc-tiny-binary-stage3.png", "fig10-roc-tiny-multiclass-stage3.png",
    "fig11-curves-tiny-binary-stage3.png", "fig11-curves-tiny-multiclass-stage3.png",
    "calibration-tiny-binary-stage3.png", "calibration-tiny-multiclass-stage3.png",
    "gradcam-tiny-binary-stage3.png", "gradcam-tiny-multiclass-stage3.png",
}


def test_report_has_every_table_and_figure(reported):
    md = (reported / "report.md").read_text()
    assert "No finished runs" not in md
    for heading in ("## Data", "## Table II", "## Table III", "## Table IV", "## Fig. 9", "## Fig. 10",
                    "## Fig. 11", "calibration", "shortcut check", "Grad-CAM"):
        assert heading in md
    assert re.search(r"^\| tiny \| CTL \(1 transfer\) \| \d", md, flags=re.M)  # Table II, both arms
    assert re.search(r"^\| tiny \| MTL \(3 transfers\) \| \d", md, flags=re.M)
    assert "| true \\ predicted | normal | leukemia |" in md  # Table IV, binary
    assert "| true \\ predicted | Benign | Early | Pre | Pro |" in md  # Table IV, multiclass
    assert re.search(r"^\| total \| \d+ \| \d+ \| \d+ \|", md, flags=re.M)  # data section counts
    assert "duplicates removed before the split: 1" in md  # the bundled sample has one duplicate pair
    shortcut, as_binary = md.split("*Read as normal vs leukemia", 1)  # the shortcut table, then its binary reading
    colour_vs_cnn_task = re.compile(r"^\| tiny (\w+) MTL \(3 transfers\) \| \d+\.\d+ / \d+\.\d+ \|", flags=re.M)
    assert sorted(colour_vs_cnn_task.findall(shortcut)) == ["binary", "multiclass"]  # one row per run
    # only the multiclass run has a normal class among several to group; the binary run is binary already
    assert colour_vs_cnn_task.findall(as_binary.split("\n## ")[0]) == ["multiclass"]
    figures = {p.name for p in (reported / "figures").glob("*.png")}
    assert EXPECTED_FIGURES <= figures
    linked = re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", md)
    assert {Path(p).name for p in linked} == figures
    for name in figures:
        with Image.open(reported / "figures" / name) as im:
            assert im.size[0] > 100
    html = (reported / "report.html").read_text()
    assert len(re.findall(r'<img class="figure"[^>]+src="data:image/png;base64,', html)) == len(figures)
    assert "src=\"figures/" not in html  # self-contained


def test_report_on_an_experiment_without_runs_says_so(compared, tmp_path):
    client = _client(compared["uri"])
    client.create_experiment("empty")
    result = invoke(["report", "--experiment", "empty", "--tracking-uri", compared["uri"], "--out",
                     str(tmp_path / "r"), "-q"])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "r" / "report.md").read_text()
    assert md.count("No finished runs of this kind") >= 9
    assert "Table II cannot be shown" in md and "Table III cannot be shown" in md
    result = invoke(["report", "--experiment", "nope", "--tracking-uri", compared["uri"], "-q"])
    assert result.exit_code == 2 and "no such experiment" in result.output


def test_report_on_one_comparison_reads_only_its_runs(compared, tmp_path):
    client = _client(compared["uri"])
    exp = client.get_experiment_by_name("cmp")
    parent = client.search_runs([exp.experiment_id], "tags.run_kind = 'comparison'")[0].info.run_id
    result = invoke(["report", "--experiment", "cmp", "--tracking-uri", compared["uri"], "--comparison", parent,
                     "--out", str(tmp_path / "r"), "--gradcam-per-class", "0"])
    assert result.exit_code == 0, result.output
    stage_runs = _stage_runs(client, exp.experiment_id, f" AND tags.comparison_run = '{parent}'")
    finished = [r for r in stage_runs if r.info.status == "FINISHED"]
    assert f"{len(finished)} finished stage runs of comparison(s) {parent}" in result.output
    md = (tmp_path / "r" / "report.md").read_text()
    assert f"--comparison {parent} --out" in md and f"{len(finished)} finished stage runs of comparison run(s)" in md
    result = invoke(["report", "--experiment", "cmp", "--tracking-uri", compared["uri"], "--comparison", "0" * 32,
                     "--out", str(tmp_path / "none"), "-q"])
    assert result.exit_code == 2 and "no finished stage runs of that comparison" in result.output
    assert not (tmp_path / "none").exists()


# --- the HTML in a real browser ---------------------------------------------------------------------------------

PROBE = ("<script>window.addEventListener('load', function () { var out = [];"
         " document.querySelectorAll('img').forEach(function (img) { out.push(img.naturalWidth); });"
         " var pre = document.createElement('pre'); pre.id = 'natural-widths'; pre.textContent = JSON.stringify(out);"
         " document.body.appendChild(pre); });</script>")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("CI=true but no chromium on PATH: .ci/run must `apt-get install -y chromium`")
    pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); required in CI")


def render(browser: str, html: str, workdir: Path) -> tuple[list[int], list[str]]:
    """Widths of every <img> after the load event, and the page's console messages."""
    workdir.mkdir(parents=True, exist_ok=True)
    page = workdir / "probe.html"
    page.write_text(html.replace("</head>", PROBE + "</head>", 1), encoding="utf-8")
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={workdir / 'profile'}",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="natural-widths">([^<]*)</pre>', proc.stdout)
    assert match, f"chromium did not run the page (rc {proc.returncode}): {proc.stderr[-2000:]}"
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return json.loads(match.group(1)), console


def test_html_report_renders_in_chromium(reported, tmp_path):
    browser = _chromium()
    # the check itself can fail: a broken image and a script error are seen
    widths, console = render(browser, "<html><head></head><body><img src='data:image/png;base64,AAAA'>"
                                      "<script>undefinedFunction();</script></body></html>", tmp_path / "control")
    assert widths == [0] and any("undefinedFunction" in line for line in console)

    html = (reported / "report.html").read_text()
    widths, console = render(browser, html, tmp_path / "report")
    assert len(widths) == len(EXPECTED_FIGURES)
    assert all(w > 0 for w in widths), widths
    assert console == []
