"""Run the project's benchmark scripts and write their figures, the machine and the exact commands to a results
file (issue 9's harness).

    python benchmarks/run.py                                # every benchmarks/bench_*.py, 3 runs each
    python benchmarks/run.py --quick --out /tmp/results.md   # smoke-sized inputs, for CI: does every script run?
    python benchmarks/run.py cache loader --repeats 5        # some scripts (bench_cache.py, bench_loader.py)

Each run of a script is its own process (its memory and threads are its own), started from the repository root
with an empty private $MTL_SUITE_CACHE, so every run does the same work. Scripts hand their figures over with
`benchlib.emit`; each figure in the results is the median of the runs, with every run's value beside it. Ratios
measured inside one run (cached vs uncached, suite vs bare Keras) are the figures to compare across machines.

The results file keeps what is written around the harness's block (between the `<!-- benchmarks/run.py` markers):
the block is replaced if present, appended otherwise, so the hand-written analysis in benchmarks/RESULTS.md stays.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_OUT = BENCH_DIR / "RESULTS.md"
BEGIN = "<!-- benchmarks/run.py: begin (generated; edit outside these markers) -->"
END = "<!-- benchmarks/run.py: end -->"
LIBRARIES = ("tensorflow", "keras", "numpy", "mlflow", "optuna", "keras-tuner", "scikit-learn", "scipy",
             "albumentations", "opencv-python-headless", "pillow", "typer")

sys.path.insert(0, str(BENCH_DIR))
from benchlib import FIGURES_ENV, SKIP_EXIT  # noqa: E402


@dataclass
class Run:
    returncode: int
    wall_s: float
    peak_rss_mb: float
    figures: dict[str, Any]
    log: Path
    timed_out: bool = False

    @property
    def skipped(self) -> bool:
        return self.returncode == SKIP_EXIT and not self.timed_out

    @property
    def failed(self) -> bool:
        return self.returncode != 0 and not self.skipped


@dataclass
class ScriptResult:
    script: Path
    command: list[str]
    runs: list[Run] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.runs) and not any(r.failed for r in self.runs)


def find_scripts(names: list[str]) -> list[Path]:
    """All benchmarks/bench_*.py, or the named ones ('cache', 'bench_cache', 'bench_cache.py' or a path)."""
    everything = sorted(BENCH_DIR.glob("bench_*.py"))
    if not names:
        return everything
    chosen = []
    for name in names:
        path = Path(name)
        if path.suffix == ".py" and path.is_file():
            chosen.append(path.resolve())
            continue
        stem = name.removesuffix(".py")
        stem = stem if stem.startswith("bench_") else f"bench_{stem}"
        match = [p for p in everything if p.stem == stem]
        if not match:
            raise SystemExit(f"no benchmark script {name!r}. Expected one of: "
                             f"{', '.join(p.stem.removeprefix('bench_') for p in everything)}")
        chosen.append(match[0])
    return chosen


LAUNCHER_VARIABLES = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


def run_once(command: list[str], log: Path, timeout: float | None, workdir: Path) -> Run:
    """One process: wall time, its own peak RSS (children it starts, e.g. `mtl-suite` processes, not counted)
    and the figures it emitted."""
    figures_file = workdir / "figures.json"
    # MLflow's run and experiment variables belong to whoever launched the harness (mlflow.set_experiment even
    # sets MLFLOW_EXPERIMENT_ID in-process); a script has its own stores, so they must not reach it.
    inherited = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env = {**inherited, FIGURES_ENV: str(figures_file), "MTL_SUITE_CACHE": str(workdir / "cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")]))}
    with open(log, "wb") as out:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # a timeout ends the script and what it started
        expired = threading.Event()
        timer = threading.Timer(timeout, lambda: (expired.set(), _kill_group(process.pid))) if timeout else None
        if timer:
            timer.start()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if timer:
            timer.cancel()
        wall = time.perf_counter() - start
    figures = json.loads(figures_file.read_text()) if figures_file.is_file() else {}
    return Run(process.returncode, wall, usage.ru_maxrss / 1024, figures, log, expired.is_set())


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def run_script(script: Path, args: argparse.Namespace, logs: Path) -> ScriptResult:
    command = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
    result = ScriptResult(script, command)
    for i in range(args.repeats):
        print(f"{script.name} run {i + 1}/{args.repeats}: {shlex.join(command)}", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix=f"bench-{script.stem}-") as workdir:
            run = run_once(command, logs / f"{script.stem}-{i + 1}.log", args.timeout, Path(workdir))
        result.runs.append(run)
        state = "timed out" if run.timed_out else "skipped" if run.skipped else f"exit {run.returncode}"
        print(f"  {state}, {run.wall_s:.1f} s, {len(run.figures)} figures", file=sys.stderr, flush=True)
        if run.returncode != 0:
            break  # a broken (or skipped) script does the same again; say so once
    return result


def summarise(values: list[Any]) -> Any:
    """Median of numbers; the common value of flags and texts, or all of them when they differ."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return statistics.median(values)
    return values[0] if all(v == values[0] for v in values) else " / ".join(str(v) for v in values)


def machine() -> dict[str, str]:
    cpu = _cpuinfo("model name") or platform.processor() or platform.machine()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "CPU": f"{cpu} ({platform.machine()})",
        "cores": f"{usable} usable by this process, {os.cpu_count()} logical in the machine",
        "memory": f"{_meminfo_gib():.1f} GiB",
        "GPU": _gpus(),
        "OS": platform.platform(),
        "Python": f"{platform.python_version()} ({sys.executable})",
        "load average (1/5/15 min) at start": _load(),
    }


def _cpuinfo(key: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _meminfo_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def _gpus() -> str:
    """From nvidia-smi, so the harness itself needs no TensorFlow import."""
    if shutil.which("nvidia-smi") is None:
        return "none (no nvidia-smi)"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown (nvidia-smi: {exc})"
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return "; ".join(lines) if out.returncode == 0 and lines else f"none (nvidia-smi exit {out.returncode})"


def _load() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def render(results: list[ScriptResult], args: argparse.Namespace, info: dict[str, str], started: float,
           invocation: str) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    mode = ("quick (smoke-sized inputs: shows that each script runs; its figures say nothing about speed)"
            if args.quick else "full (each script's defaults)")
    lines = [BEGIN, "## All benchmarks, as run by the harness", "",
             f"Generated {when} by `{invocation}` in {time.time() - started:.0f} s. Mode: {mode}.",
             f"Each figure is the median of {args.repeats} run(s) of the command above it, every run a fresh process "
             "started from the repository root with an empty private `$MTL_SUITE_CACHE`.", "",
             "Machine:", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in info.items()),
             f"| load average (1/5/15 min) at end | {_load()} |", "",
             "Libraries:", "", "| package | version |", "|---|---|",
             *(f"| {k} | {v} |" for k, v in versions().items())]
    for result in results:
        lines += ["", *_section(result)]
    return "\n".join(lines + ["", END]) + "\n"


def _section(result: ScriptResult) -> list[str]:
    command = shlex.join(["python", _shown(result.script), *result.command[2:]])
    walls = ", ".join(f"{r.wall_s:.1f}" for r in result.runs)
    peak = max((r.peak_rss_mb for r in result.runs), default=0.0)
    lines = [f"### {result.script.stem}", "", f"Command: `{command}`", "",
             f"Runs: {sum(r.returncode == 0 for r in result.runs)} of {len(result.runs)} succeeded; wall s per run: "
             f"{walls}; peak RSS of the script's own process: {peak:.0f} MB."]
    failed = [r for r in result.runs if r.failed]
    skipped = [r for r in result.runs if r.skipped]
    if skipped:
        lines += ["", f"**Skipped** on this machine: {' '.join(_tail(skipped[0].log, 1)).removeprefix('skipped: ')}"]
    if failed:
        run = failed[0]
        why = "timed out" if run.timed_out else f"exit code {run.returncode}"
        lines += ["", f"**FAILED** ({why}); log: `{run.log}`. Last lines:", "", "```",
                  *_tail(run.log, 15), "```"]
    ok = [r for r in result.runs if r.returncode == 0]
    names = list(dict.fromkeys(name for r in ok for name in r.figures))
    if names:
        lines += ["", "| figure | median | runs |", "|---|---:|---|"]
        for name in names:
            values = [r.figures[name] for r in ok if name in r.figures]
            lines.append(f"| {name} | {_fmt(summarise(values))} | {', '.join(_fmt(v) for v in values)} |")
    elif not failed and not skipped:
        lines += ["", "(no figures reported: the script does not call benchlib.emit)"]
    return lines


def _shown(script: Path) -> str:
    try:
        return str(script.resolve().relative_to(REPO))
    except ValueError:
        return str(script)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _tail(log: Path, n: int) -> list[str]:
    try:
        return log.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return ["(log not readable)"]


def write_block(out: Path, block: str) -> None:
    """Replace the harness's block in `out` (or append it); everything else in the file stays."""
    text = out.read_text(encoding="utf-8") if out.is_file() else ""
    old = re.search(r"<!-- benchmarks/run\.py: begin.*?-->.*?" + re.escape(END), text, flags=re.S)
    if old:  # the begin marker is matched by its prefix: its wording may change
        text = text[:old.start()] + block.rstrip("\n") + text[old.end():]
    elif text:
        text = text.rstrip("\n") + "\n\n" + block
    else:
        text = "# Benchmark results\n\n" + block
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)  # a crash leaves the old file, not half of the new one


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("scripts", nargs="*", help="scripts to run (default: every benchmarks/bench_*.py)")
    parser.add_argument("--quick", action="store_true", help="run each script with --quick (seconds each)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per script; figures are their medians")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results file (its harness block is rewritten)")
    parser.add_argument("--logs", type=Path, help="per-run logs (default: benchmarks/out/logs)")
    parser.add_argument("--timeout", type=float, help="seconds per run before it is stopped (default: none)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    invocation = shlex.join(["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])
    scripts = find_scripts(args.scripts)
    logs = args.logs or BENCH_DIR / "out" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started, info = time.time(), machine()
    results = [run_script(script, args, logs) for script in scripts]
    write_block(args.out, render(results, args, info, started, invocation))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
