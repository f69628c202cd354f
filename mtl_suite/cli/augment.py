"""`mtl-suite augment ...`: look at an augmentation policy before training with it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from mtl_suite.cli.common import DataPath, handle_user_errors
from mtl_suite.cli.imaging_options import image_files, write_png
from mtl_suite.data import resolve_data_path
from mtl_suite.data.images import read_resized

app = typer.Typer(help="Augmentation policies (training data only).", no_args_is_help=True)


@app.command()
@handle_user_errors
def preview(
    path: DataPath = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG grid to write.")] = Path("augment_preview.png"),
    policy: Annotated[str, typer.Option("--policy", help="none, paper, paper+color, color or a .yaml file.")]
    = "paper+color",
    strength: Annotated[float, typer.Option("--strength", min=0.0, max=3.0, help="Scales shift/scale/colour "
                                                                                 "ranges.")] = 1.0,
    count: Annotated[int, typer.Option("--count", min=1, help="Source images (rows).")] = 6,
    copies: Annotated[int, typer.Option("--copies", min=1, help="Augmented copies per image (columns).")] = 5,
    image_size: Annotated[int, typer.Option("--image-size", min=16, help="Images are resized to this first.")] = 160,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """A PNG grid: each row is an original followed by augmented copies."""
    from mtl_suite.imaging.augment import build_transform, preview_grid

    build_transform(policy, strength)  # a bad policy fails before any image is read
    files = list(image_files(resolve_data_path(path)))
    chosen = [files[i] for i in np.linspace(0, len(files) - 1, min(count, len(files))).round().astype(int)]
    images = np.stack([read_resized(f, image_size) for f in chosen])
    write_png(out, preview_grid(images, policy, strength, copies, seed, tile=image_size))
    typer.echo(f"{len(chosen)} x {copies} augmented samples ({policy}, strength {strength}) in {out}")
