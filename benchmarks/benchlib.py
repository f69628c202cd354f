"""What every benchmark script shares with the harness (benchmarks/run.py).

A script prints its own report as before, and also hands its figures to the harness with `emit(...)`: a JSON
file named by $MTL_SUITE_BENCH_FIGURES (set by the harness; without it, emit does nothing). `--quick` modes use
`quick_defaults` so that options typed on the command line still win.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

FIGURES_ENV = "MTL_SUITE_BENCH_FIGURES"
# The exit status of a script that cannot run on this machine (automake's SKIP): the harness reports it as skipped,
# with the reason, not as a failure.
SKIP_EXIT = 77
REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "mtl_suite" / "assets" / "sample"


def add_quick(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="smoke-sized inputs (bundled sample or synthetic arrays): seconds, for CI and the harness")


def quick_defaults(parser: argparse.ArgumentParser, args: argparse.Namespace, **values: Any) -> argparse.Namespace:
    """With --quick, replace the options still at their defaults by `values`."""
    if getattr(args, "quick", False):
        for name, value in values.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    return args


def skip(reason: str) -> NoReturn:
    """Stop: this machine lacks what the script measures (a database server, a GPU); `reason` says what."""
    print(f"skipped: {reason}", file=sys.stderr)
    sys.exit(SKIP_EXIT)


def emit(figures: dict[str, Any]) -> None:
    """Give the harness this run's figures: {name: number | bool | str}; nested dicts become 'a/b' names."""
    target = os.environ.get(FIGURES_ENV)
    if not target:
        return
    flat = flatten(figures)
    previous = json.loads(Path(target).read_text()) if Path(target).is_file() else {}
    Path(target).write_text(json.dumps({**previous, **flat}, indent=1, default=str))


def flatten(figures: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in figures.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{name}/"))
        elif isinstance(value, (int, float, bool, str)) or value is None:
            out[f"{prefix}{name}"] = value
    return out
