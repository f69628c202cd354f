"""benchmarks/run.py: runs benchmark scripts in --quick mode into a tmp results file that is well formed (machine,
library versions, the exact command and the median of the runs per figure), keeps the text around its block,
reports a failing script instead of hiding it, and a script that cannot run on this machine as skipped."""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HARNESS = REPO / "benchmarks" / "run.py"
BEGIN, END = "<!-- benchmarks/run.py: begin", "<!-- benchmarks/run.py: end -->"

# A stand-in benchmark: each run reports the next of 5, 1, 3 (median 3), a flag and a text; it must get --quick.
FAKE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from benchlib import emit

    assert sys.argv[1:] == ["--quick"], sys.argv
    counter = Path(__file__).with_suffix(".count")
    n = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(n + 1))
    emit({"speed": {"images_per_s": [5.0, 1.0, 3.0][n]}, "agree": True, "run": f"r{n}"})
""")


def harness(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HARNESS), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


def section(text: str, name: str) -> str:
    return text.split(f"### {name}\n", 1)[1].split("\n### ", 1)[0]


def figure_rows(block: str) -> dict[str, tuple[str, list[str]]]:
    rows = {}
    for line in block.splitlines():
        match = re.fullmatch(r"\| (.+?) \| (.+?) \| (.+?) \|", line)
        if match and match.group(1) not in ("figure", "---"):
            rows[match.group(1)] = (match.group(2), match.group(3).split(", "))
    return rows


def check_header(text: str) -> None:
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    for row in ("| CPU |", "| cores |", "| memory |", "| GPU |", "| load average (1/5/15 min) at start |"):
        assert row in text
    versions = dict(re.findall(r"^\| ([\w.-]+) \| (\d[\w.]*) \|$", text, flags=re.M))
    assert {"python", "tensorflow", "keras", "mlflow", "numpy"} <= set(versions)


def test_figures_are_medians_of_the_runs_and_the_text_around_the_block_stays(tmp_path):
    fake = tmp_path / "bench_fake.py"
    fake.write_text(FAKE)
    out = tmp_path / "RESULTS.md"
    out.write_text(f"# Results\n\nHand-written analysis.\n\n{BEGIN} (generated) -->\nold figures\n{END}\n\nMore notes.\n")
    result = harness("--quick", "--repeats", "3", str(fake), "--out", str(out), "--logs", str(tmp_path / "logs"))
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert text.startswith("# Results\n\nHand-written analysis.\n\n") and text.endswith("\n\nMore notes.\n")
    assert "old figures" not in text
    check_header(text)
    assert "Mode: quick" in text and "median of 3 run(s)" in text
    fake_part = section(text, "bench_fake")
    assert f"Command: `python {fake} --quick`" in fake_part
    assert "Runs: 3 of 3 succeeded" in fake_part
    rows = figure_rows(fake_part)
    assert rows["speed/images_per_s"] == ("3", ["5", "1", "3"])
    assert rows["agree"] == ("True", ["True", "True", "True"])
    assert rows["run"][0] == "r0 / r1 / r2"  # texts that differ are all shown, never silently one of them


def test_a_failing_script_is_reported_and_fails_the_harness(tmp_path):
    broken = tmp_path / "bench_broken.py"
    broken.write_text("import sys\nprint('something went wrong here')\nsys.exit(3)\n")
    out = tmp_path / "results.md"
    result = harness("--quick", "--repeats", "2", str(broken), "--out", str(out), "--logs", str(tmp_path / "logs"))
    assert result.returncode == 1
    part = section(out.read_text(), "bench_broken")
    assert "Runs: 0 of 1 succeeded" in part and "**FAILED** (exit code 3)" in part
    assert "something went wrong here" in part


def test_a_script_that_cannot_run_here_is_reported_skipped_and_the_harness_passes(tmp_path):
    """A benchmark that needs what this machine lacks (bench_server: a PostgreSQL server) says why and is skipped,
    so `run.py --quick` stays green on a developer's machine while a real failure still fails it."""
    lacking = tmp_path / "bench_lacking.py"
    lacking.write_text("from benchlib import skip\nskip('no database server here')\n")
    out = tmp_path / "results.md"
    result = harness("--quick", "--repeats", "2", str(lacking), "--out", str(out), "--logs", str(tmp_path / "logs"))
    assert result.returncode == 0, result.stderr
    part = section(out.read_text(), "bench_lacking")
    assert "**Skipped** on this machine: no database server here" in part and "FAILED" not in part
    assert "skipped, " in result.stderr and "run 2/2" not in result.stderr


def test_unknown_script_name_lists_the_known_ones(tmp_path):
    result = harness("--quick", "nope", "--out", str(tmp_path / "r.md"))
    assert result.returncode != 0 and "no benchmark script 'nope'" in result.stderr and "cache" in result.stderr


def test_a_real_benchmark_in_quick_mode(tmp_path):
    """bench_loader is the quickest real script (about 10 s here): decode + resize of the bundled sample."""
    out = tmp_path / "results.md"
    result = harness("--quick", "--repeats", "1", "loader", "--out", str(out), "--logs", str(tmp_path / "logs"))
    assert result.returncode == 0, result.stderr + result.stdout
    text = out.read_text()
    check_header(text)
    part = section(text, "bench_loader")
    assert "Command: `python benchmarks/bench_loader.py --quick`" in part
    rows = figure_rows(part)
    for loader in ("keras", "file_dataset", "load_image_array"):
        median, runs = rows[f"{loader} 64px/images_per_s"]
        assert float(median) > 0 and len(runs) == 1
    assert not (REPO / "benchmarks" / "RESULTS.md").read_text().count("Mode: quick")  # never the real file


# Their quick modes start several `mtl-suite` and MLflow processes (about 2.5 of the 3.5 minutes that all scripts
# take on 2 cores), and the integration tests already run the same commands for real (test_serving, test_tune):
# left to `python benchmarks/run.py --quick` so CI stays well inside its 20 minutes. bench_throughput's quick mode
# builds and trains the whole MobileNet in a worker process (about a minute here: TensorFlow start-up, model build,
# tracing the training step), and nothing in the product depends on it. bench_faults runs a whole stage chain
# several times (minutes even in quick mode); tests/integration/test_stages.py kills and resumes a run in CI.
# bench_segmentation (U-Net training, ~50 s) and bench_stages (MobileNet fits, ~30 s) likewise: test_cli_imaging and
# test_stages run their code paths. bench_server starts a tracking server on PostgreSQL and three `mtl-suite tune`
# workers, the path test_scale_out runs with a killed worker. bench_loader runs in the test just above.
# bench_execution (about 25 s: eager and traced fits of the tiny backbone) times what tests/unit/test_execution.py
# runs both ways. bench_spread (about two minutes: a comparison by one worker, then by two) times what
# test_spread.py (two workers, one killed) and test_assess.py's two workers run in CI.
OUTSIDE_CI = ("serving", "tuning", "throughput", "faults", "segmentation", "stages", "server", "loader", "execution",
              "spread")


@pytest.mark.slow
def test_every_benchmark_script_has_a_working_quick_mode(tmp_path):
    """The benchmark scripts through the harness in --quick mode (but OUTSIDE_CI)."""
    names = sorted(s.stem.removeprefix("bench_") for s in (REPO / "benchmarks").glob("bench_*.py"))
    names = [name for name in names if name not in OUTSIDE_CI]
    out = tmp_path / "results.md"
    result = harness("--quick", "--repeats", "1", *names, "--out", str(out), "--logs", str(tmp_path / "logs"),
                     timeout=900)
    text = out.read_text()
    assert result.returncode == 0, text
    for name in names:
        part = section(text, f"bench_{name}")
        assert "Runs: 1 of 1 succeeded" in part, part
        assert figure_rows(part), f"bench_{name} reported no figures"
    rows = figure_rows(section(text, "bench_cache"))
    assert rows["head_metrics_agree"][0] == "True"
    assert statistics.median([float(v) for v in rows["cached_epoch_s"][1]]) > 0
