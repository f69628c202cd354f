"""`mtl-suite data ...`: look at a dataset and split it before training on it; the ledger of looks at test parts
and sealed final tests (workflows/looks.py)."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Annotated, Optional

import typer

from mtl_suite.cli.common import (DATA, AllowOutsideRoot, DataPath, GroupBy, Layout, TextOrJson, TrackingUri, choice,
                                  given, handle_user_errors, say)
from mtl_suite.config import NO_GROUPING
from mtl_suite.data import resolve_data_path
from mtl_suite.data.manifest import BAD_IMAGE_POLICIES, DUPLICATE_POLICIES, Manifest, build_manifest
from mtl_suite.data.splits import make_split, save_split

app = typer.Typer(help="Inspect and split datasets.", no_args_is_help=True)

OnBadImage = Annotated[choice(BAD_IMAGE_POLICIES), typer.Option("--on-bad-image", help="skip: leave unusable images out and list them; "
                                                                  "fail: stop at the first one.")]
Duplicates = Annotated[choice(DUPLICATE_POLICIES), typer.Option("--duplicates", help="drop: keep one copy of byte-identical files; "
                                                               "group: keep all copies, in one group.")]


@app.command()
@handle_user_errors
def inspect(
    path: DataPath = None,
    layout: Layout = "auto",
    on_bad_image: OnBadImage = "skip",
    output_format: TextOrJson = "text",
    allow_outside_root: AllowOutsideRoot = False,
    group_by: GroupBy = NO_GROUPING,
) -> None:
    """Classes and counts, duplicate sets, unreadable files, image sizes and independent groups of a dataset."""
    manifest = build_manifest(resolve_data_path(path), layout, on_bad_image=on_bad_image, duplicates="group",
                              allow_outside_root=allow_outside_root, group_by=group_by)
    report = inspection_report(manifest, group_by)
    typer.echo(json.dumps(report, indent=2) if output_format == "json" else format_inspection(report))


def inspection_report(manifest: Manifest, group_by: str = NO_GROUPING) -> dict:
    widths = [e.width for e in manifest.entries]
    heights = [e.height for e in manifest.entries]
    sizes = Counter(f"{e.width}x{e.height}" for e in manifest.entries)
    return {
        "root": manifest.root,
        "layout": manifest.layout,
        "images": len(manifest.entries),
        "classes": manifest.class_counts,
        "duplicate_sets": [[manifest.relative(p) for p in s] for s in manifest.duplicate_sets],
        "duplicate_files": sum(len(s) - 1 for s in manifest.duplicate_sets),
        "unreadable": [{"path": manifest.relative(p), "reason": r} for p, r in manifest.skipped],
        "size": {
            "width": {"min": min(widths), "median": statistics.median(widths), "max": max(widths)},
            "height": {"min": min(heights), "median": statistics.median(heights), "max": max(heights)},
            "most_common": dict(sizes.most_common(5)),
        },
        "groups": len({e.group for e in manifest.entries}),
        "group_by": group_by,
        "digest": manifest.digest,
    }


def format_inspection(report: dict) -> str:
    lines = [
        f"Dataset {report['root']} (layout: {report['layout']})",
        f"{report['images']} readable images in {len(report['classes'])} classes, "
        f"{report['groups']} independent groups ({_grouped_by(report['group_by'])})",
        "",
        f"  {'class':<20} images",
        *(f"  {name:<20} {count}" for name, count in report["classes"].items()),
        "",
        f"Duplicate sets (byte-identical files): {len(report['duplicate_sets'])} "
        f"({report['duplicate_files']} extra copies; kept together in one group by every split)",
        *(f"  {' = '.join(s)}" for s in report["duplicate_sets"]),
        f"Unreadable files: {len(report['unreadable'])}",
        *(f"  {u['path']}: {u['reason']}" for u in report["unreadable"]),
        "Image sizes: width {min}-{max} (median {median})".format(**report["size"]["width"])
        + ", height {min}-{max} (median {median})".format(**report["size"]["height"]),
        "  most common: " + ", ".join(f"{k} ({v})" for k, v in report["size"]["most_common"].items()),
        f"Manifest digest: {report['digest']}",
    ]
    return "\n".join(lines)


@app.command()
@handle_user_errors
def split(
    path: DataPath = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the split (JSON).")] = Path("split.json"),
    layout: Layout = "auto",
    folds: Annotated[int, typer.Option("--folds", min=1, help="Cross-validation folds (paper: 10).")] = 10,
    test_fraction: Annotated[float, typer.Option("--test-fraction", min=0.0, max=0.9,
                                                 help="Outer held-out test part.")] = 0.2,
    seed: Annotated[int, typer.Option("--seed")] = 42,
    duplicates: Duplicates = "drop",
    on_bad_image: OnBadImage = "fail",
    allow_outside_root: AllowOutsideRoot = False,
    group_by: GroupBy = NO_GROUPING,
) -> None:
    """Write a grouped split: outer test part plus stratified group k-fold (no group on two sides), and print it
    with the images per class and the independent groups of each part."""
    manifest = build_manifest(resolve_data_path(path), layout, duplicates=duplicates, on_bad_image=on_bad_image,
                              allow_outside_root=allow_outside_root, group_by=group_by)
    for skipped_path, reason in manifest.skipped:
        say(f"skipped {skipped_path}: {reason}")
    the_split = make_split(manifest, folds=folds, test_fraction=test_fraction, seed=seed)
    written, digest = save_split(the_split, out)
    summary, groups = the_split.summary(), the_split.group_counts()
    classes = manifest.classes
    typer.echo(f"  {'part':<12}" + "".join(f"{c:>10}" for c in classes) + f"{'groups':>10}")
    for part, counts in summary.items():
        typer.echo(f"  {part:<12}" + "".join(f"{counts.get(c, 0):>10}" for c in classes) + f"{groups[part]:>10}")
    typer.echo(f"{sum(groups.values())} independent groups ({_grouped_by(group_by)}); none is in two parts")
    if manifest.dropped_duplicates:
        typer.echo(f"{len(manifest.dropped_duplicates)} duplicate copies left out (one copy of each kept)")
    typer.echo(f"Split written to {written} (sha256 {digest})")


def _grouped_by(group_by: str) -> str:
    if group_by == NO_GROUPING:
        return "only byte-identical files grouped"
    return f"grouped by --group-by {group_by} and byte-identical files"


@app.command()
@handle_user_errors
def looks(
    tracking_uri: TrackingUri = None,
    output_format: TextOrJson = "text",
) -> None:
    """The ledger of looks: every set of images scored in the store (a final-stage run's outer test part, an
    `evaluate` run's DATA), across all its experiments, with each run that scored it in order of time and how many
    distinct configurations those were; then the sealed sets and their looks. A set is known by the digest of its
    images' contents, wherever the files sit; deleted runs count (their figures were seen)."""
    from mtl_suite.workflows.looks import ledger

    found = ledger(given(tracking_uri))
    typer.echo(json.dumps(found.to_json(), indent=2) if output_format == "json" else format_ledger(found))


def format_ledger(found) -> str:
    """The ledger for a reader: a heading per set, a line per look; a configuration seen before is marked."""
    from mtl_suite.data.looks import configurations, when

    lines = [f"Looks at test parts in {found.tracking_uri}: {len(found.parts)} set(s) scored"]
    for part in found.parts:
        sealed = f", sealed as {part.sealed!r}" if part.sealed else ""
        lines += ["", f"test part {part.digest[:16]} ({part.images} images{sealed}): {part.configurations} "
                  f"configuration(s) in {len(part.looks)} look(s)"]
        seen: set[str] = set()
        for look in part.looks:
            again = " (same configuration as above)" if look.model in seen else ""
            seen.add(look.model)
            state = " [deleted]" if look.deleted else "" if look.status == "FINISHED" else f" [{look.status}]"
            lines.append(f"  {when(look.start_time)}  {look.kind:<10} run {look.run_id} ({look.experiment}): "
                         f"{look.configuration or look.model}{again}{state}")
    for seal in found.seals:
        scored = found.sealed[seal.name]
        lines += ["", f"sealed set {seal.name!r} ({len(seal.images)} images, sealed {when(seal.start_time)}, run "
                  f"{seal.run_id}): {len(configurations(scored))} configuration(s) in {len(scored)} look(s)"]
        lines += [f"  {when(look.start_time)}  run {look.run_id}  {look.configuration or look.model}"
                  for look in scored]
    return "\n".join(lines)


@app.command()
@handle_user_errors
def seal(
    path: DataPath = None,
    name: Annotated[str, typer.Option("--name", help="The sealed set's name (letters, digits, '.', '_', '-').",
                                      show_default=False, rich_help_panel=DATA)] = ...,
    layout: Layout = "auto",
    on_bad_image: OnBadImage = "fail",
    allow_outside_root: AllowOutsideRoot = False,
    tracking_uri: TrackingUri = None,
) -> None:
    """Seal a folder's images as a final test, by their contents, in the tracking store (experiment
    mtl-suite-seals), so the whole team sees the seal. Then `mtl-suite evaluate` on any folder that holds sealed
    images, wherever it sits, scores them once: with the first configuration (the run that made the model), again
    with that one, and with another only given --again; every evaluation of the set is recorded with its count."""
    from mtl_suite.workflows.looks import SealRequest, seal_set

    outcome = seal_set(SealRequest(name=name, data=str(path) if path else None, layout=layout,
                                   allow_outside_root=allow_outside_root, on_bad_image=on_bad_image,
                                   tracking_uri=given(tracking_uri)))
    typer.echo(outcome.summary())
