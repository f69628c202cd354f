"""`mtl-suite cache info|clear`: the on-disk cache ($MTL_SUITE_CACHE, else ~/.cache/mtl-suite)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from mtl_suite.cli.common import handle_user_errors
from mtl_suite.errors import UserError

app = typer.Typer(help="The on-disk cache: backbone features and activations, decoded images, single-cell crops, "
                       "augmentation policies, checkpoints.", no_args_is_help=True)


@app.command("info")
@handle_user_errors
def info() -> None:
    """Where the cache is, what each part holds, and the feature cache's size limit."""
    from mtl_suite.cache import SECTIONS, default_cache_root, feature_cache_limit_bytes, usage

    root = default_cache_root()
    limit = feature_cache_limit_bytes()
    typer.echo(f"cache root: {root} (set $MTL_SUITE_CACHE to move it)")
    total = 0
    for section in usage(root):
        total += section.bytes
        typer.echo(f"  {section.name:<11} {section.files:>6} files {_mb(section.bytes):>10}  {SECTIONS[section.name]}")
    typer.echo(f"  {'total':<9} {'':>12} {_mb(total):>10}")
    limit_text = f"{_mb(limit)}" if limit else "0 (features kept in memory only, never written)"
    typer.echo(f"feature cache limit: {limit_text}; least recently used entries go first "
               "(set $MTL_SUITE_FEATURE_CACHE_MB)")


@app.command("clear")
@handle_user_errors
def clear(
    sections: Annotated[Optional[list[str]], typer.Argument(help="features, activations, images, cells, policies, "
                                                            "checkpoints or all.", show_default="all")] = None,
) -> None:
    """Remove cached data (rebuilt on demand, so clearing only costs time). Other files under the root stay."""
    from mtl_suite.cache import SECTIONS, clear as clear_sections, default_cache_root

    chosen = list(SECTIONS) if not sections or "all" in sections else sections
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        raise UserError(f"unknown cache section {unknown[0]!r}. Expected one of: {', '.join(SECTIONS)}, all")
    root = default_cache_root()
    files, size = clear_sections(chosen, root)
    typer.echo(f"removed {files} files ({_mb(size)}) from {root}: {', '.join(chosen)}")


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"
