"""`mtl-suite preprocess`: the paper's ROI preprocessing on a folder of fields, with a contact sheet to judge it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from mtl_suite.cli.common import Quiet, handle_user_errors, progress_printer, say
from mtl_suite.cli.imaging_options import (Blue, Green, OffsetMode, Red, Threshold, image_files, relative_name,
                                           roi_params, write_png)
from mtl_suite.data.images import read_rgb
from mtl_suite.errors import BadImageError, UserError
from mtl_suite.imaging.roi import apply_mask, clean_mask, contact_sheet, roi_mask
from mtl_suite.paths import SAMPLE_IMAGES

SHEET_NAME = "contact_sheet.png"


@handle_user_errors
def preprocess(
    path: Annotated[Optional[Path], typer.Argument(help="An image or a folder of images (searched recursively). "
                                                        "Default: bundled sample.", show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: masks/, masked/, contact_sheet.png.")]
    = Path("roi"),
    red: Red = 88, green: Green = 41, blue: Blue = 20, threshold: Threshold = 98, offset_mode: OffsetMode = "subtract",
    clean: Annotated[bool, typer.Option("--clean/--no-clean", help="Morphological clean-up of the mask "
                                                                   "(not in the paper).")] = False,
    sheet_rows: Annotated[int, typer.Option("--sheet-rows", min=1, help="Images on the contact sheet.")] = 12,
    quiet: Quiet = False,
) -> None:
    """ROI masks and masked images (cells on black); the contact sheet shows original | mask | masked."""
    root = path or SAMPLE_IMAGES
    params = roi_params(red, green, blue, threshold, offset_mode)
    files = list(image_files(root))
    report = progress_printer(len(files), "preprocess", quiet)
    rows, empty, unreadable = [], [], []
    for i, file in enumerate(files, start=1):
        try:
            image = read_rgb(file)
        except BadImageError as exc:
            unreadable.append(f"{file.name} ({exc.reason})")
            continue
        mask = roi_mask(image, params)
        mask = clean_mask(mask) if clean else mask
        masked = apply_mask(image, mask)
        rel = relative_name(file, root).with_suffix(".png")
        write_png(out / "masks" / rel, mask.astype(np.uint8) * 255)
        write_png(out / "masked" / rel, masked)
        if not mask.any():
            empty.append(file.name)
        if len(rows) < sheet_rows:
            rows.append([image, mask, masked])
        if report:
            report(i)
    if not rows:
        raise UserError(f"none of the {len(files)} images could be read: {'; '.join(unreadable[:5])}")
    write_png(out / SHEET_NAME, contact_sheet(rows))
    _report(len(files) - len(unreadable), empty, unreadable, quiet)
    typer.echo(f"ROI masks in {out / 'masks'}, masked images in {out / 'masked'}, contact sheet {out / SHEET_NAME}")


def _report(done: int, empty: list[str], unreadable: list[str], quiet: bool) -> None:
    if unreadable:
        say(f"{len(unreadable)} unreadable images left out: {', '.join(unreadable[:5])}", quiet)
    if empty:
        say(f"{len(empty)} of {done} images with no ROI pixel (no cell found): {', '.join(empty[:5])}"
            + (" ..." if len(empty) > 5 else ""), quiet)
