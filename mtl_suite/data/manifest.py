"""The Manifest: every usable image with its label, content hash, group and size.

Groups are what splits keep together. A file's group is its patient id when the layout or CSV gives one, else
its group by name when `group_by` asks for one (data/grouping.py: fields of one smear numbered in a row), else the
file itself; byte-identical files are merged into one group (or dropped to one copy), so that a test fold can never
contain an image that is also in training.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mtl_suite.config import NO_GROUPING
from mtl_suite.data.grouping import name_groups, parse_grouping
from mtl_suite.data.images import MAX_PIXELS, MIN_SIDE, read_rgb
from mtl_suite.data.layouts import ONE_CLASS, Record, read_layout, read_one_class
from mtl_suite.errors import BadImageError, UserError
from mtl_suite.io_utils import sha256_file, sha256_text

DUPLICATE_POLICIES = ("drop", "group")
BAD_IMAGE_POLICIES = ("skip", "fail")


@dataclass(frozen=True)
class Entry:
    path: str  # absolute
    label: str
    sha256: str
    group: str
    width: int
    height: int
    mask: str | None = None


@dataclass(frozen=True)
class Manifest:
    root: str
    layout: str
    entries: tuple[Entry, ...]
    duplicate_sets: tuple[tuple[str, ...], ...] = ()  # paths of byte-identical files, first one kept
    dropped_duplicates: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()  # (path, reason) of unusable images
    class_counts: dict[str, int] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return sorted({e.label for e in self.entries})

    @property
    def digest(self) -> str:
        """Content digest: changes when any image, label or group changes, not when files move."""
        lines = sorted(f"{e.sha256} {e.label} {e.group}" for e in self.entries)
        return sha256_text("\n".join(lines))

    def relative(self, path: str) -> str:
        root = Path(self.root)
        base = root.parent if root.is_file() else root
        try:
            return str(Path(path).relative_to(base))
        except ValueError:
            return path

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["path", "label", "group", "sha256", "width", "height", "mask"])
        for e in self.entries:
            writer.writerow([self.relative(e.path), e.label, e.group, e.sha256, e.width, e.height, e.mask or ""])
        return out.getvalue()


def build_manifest(
    root: str | Path,
    layout: str = "auto",
    *,
    masks: str | Path | None = None,
    duplicates: str = "drop",
    on_bad_image: str = "fail",
    class_map: dict[str, str] | None = None,
    max_pixels: int = MAX_PIXELS,
    workers: int | None = None,
    allow_outside_root: bool = False,
    one_class: str | None = None,
    group_by: str = NO_GROUPING,
) -> Manifest:
    """Read a dataset, decode every image once to check it, hash it, and group duplicates. A CSV manifest's paths
    must stay inside its folder unless `allow_outside_root`. `one_class`: every image under the folder has this
    label, whatever the layout (images from elsewhere known to be of one class). `group_by`: groups from file names
    (data/grouping.py), joined with the layout's own groups and with duplicates."""
    if duplicates not in DUPLICATE_POLICIES:
        raise UserError(f"unknown --duplicates policy. Expected one of: {', '.join(DUPLICATE_POLICIES)}. "
                        f"Received: {duplicates!r}")
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise UserError(f"unknown --on-bad-image policy. Expected one of: {', '.join(BAD_IMAGE_POLICIES)}. "
                        f"Received: {on_bad_image!r}")
    grouping = parse_grouping(group_by)  # a bad value fails before any image is decoded
    root = Path(root).resolve()
    if one_class is not None:
        layout_name, records = ONE_CLASS, read_one_class(root, one_class)
    else:
        layout_name, records = read_layout(root, layout, allow_outside_root)
    if masks is not None:
        records = _attach_masks(records, root, Path(masks))
    if class_map:
        records = _map_classes(records, class_map)
    by_name = name_groups(grouping, [r.path for r in records], root.parent if root.is_file() else root)
    checked, skipped = _check_all(records, on_bad_image, max_pixels, workers)
    if not checked:
        raise UserError(f"{root}: none of the {len(records)} images could be read (first: {skipped[0][1]})")
    entries, duplicate_sets, dropped = _resolve_duplicates(checked, duplicates, by_name)
    return Manifest(
        root=str(root),
        layout=layout_name,
        entries=tuple(sorted(entries, key=lambda e: (e.label, e.path))),
        duplicate_sets=duplicate_sets,
        dropped_duplicates=tuple(dropped),
        skipped=tuple(skipped),
        class_counts=dict(sorted(Counter(e.label for e in entries).items())),
    )


def _attach_masks(records: list[Record], root: Path, mask_root: Path) -> list[Record]:
    if not mask_root.is_dir():
        raise UserError(f"mask folder not found: {mask_root}")
    base = root.parent if root.is_file() else root  # a CSV manifest's paths are relative to its folder
    out = []
    for record in records:
        try:
            candidate = mask_root / record.path.relative_to(base)
        except ValueError:
            candidate = mask_root / record.path.name
        out.append(Record(record.path, record.label, record.group, candidate if candidate.is_file() else None))
    return out


def _map_classes(records: list[Record], class_map: dict[str, str]) -> list[Record]:
    unknown = sorted({r.label for r in records} - set(class_map))
    if unknown:
        raise UserError(f"class map has no entry for class(es) {', '.join(unknown)}. Received map: {class_map}")
    return [Record(r.path, class_map[r.label], r.group, r.mask) for r in records]


# (path, size, mtime, max_pixels) -> (sha256, width, height) of files that decoded: a stage reads its data's manifest
# more than once (its held-out part for the lineage check, its crops, its task), and a full decode of every image
# each time would be the same work again. A file that changes gets a new key; one that failed is never kept.
_CHECKED: dict[tuple[str, int, int, int], tuple[str, int, int]] = {}


def _check_one(record: Record, max_pixels: int) -> tuple[Record, str, int, int]:
    try:
        stat = Path(record.path).stat()
    except OSError:  # missing or unreadable: read_rgb below says so in the suite's own words
        stat = None
    key = (str(record.path), stat.st_size, stat.st_mtime_ns, max_pixels) if stat else None
    if key is None or key not in _CHECKED:
        # full decode: catches truncated files, not just bad headers
        image = read_rgb(record.path, max_pixels, min_side=MIN_SIDE)
        checked = (sha256_file(record.path), image.shape[1], image.shape[0])
        if key is None:
            return (record, *checked)
        _CHECKED[key] = checked
    return (record, *_CHECKED[key])


def _check_all(records: list[Record], on_bad_image: str, max_pixels: int, workers: int | None):
    checked, skipped = [], []
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) + 2)) as pool:
        futures = [pool.submit(_check_one, r, max_pixels) for r in records]
        for future in futures:
            try:
                checked.append(future.result())
            except BadImageError as exc:
                if on_bad_image == "fail":
                    pool.shutdown(wait=True, cancel_futures=True)  # stop decoding the rest of a dataset we reject
                    raise BadImageError(exc.path, exc.reason + " (use --on-bad-image skip to leave it out)") from None
                skipped.append((exc.path, exc.reason))
    return checked, skipped


def _resolve_duplicates(checked, policy: str, by_name: dict[Path, str] | None = None):
    """Group byte-identical files; with 'drop' keep the first copy (by path) of each.

    Groups are merged transitively (union-find): when copies of one image carry different patient groups, those
    patients' images are joined into one group, since a split that separated them would put the same pixels on
    both sides. `by_name` (path -> group from its name) is a file's group where the layout gives none, and is
    joined with the layout's group where it gives one. A file with neither is its own group, named by its content
    hash, so the manifest digest does not change when files are renamed or moved.
    """
    by_name = by_name or {}
    by_hash: dict[str, list] = defaultdict(list)
    for item in checked:
        by_hash[item[1]].append(item)
    parent: dict[str, str] = {}

    def find(g: str) -> str:
        parent.setdefault(g, g)
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # the smaller name represents the set: independent of input order

    def own_group(record: Record, sha: str) -> str:
        return record.group or by_name.get(record.path) or f"sha256:{sha[:16]}"

    duplicate_sets, kept_items, dropped = [], [], []
    for sha, items in by_hash.items():
        items.sort(key=lambda item: str(item[0].path))
        groups = [own_group(i[0], sha) for i in items]
        for item, g in zip(items, groups):
            union(groups[0], g)
            if item[0].group and item[0].path in by_name:  # a patient id and a name group: both hold
                union(g, by_name[item[0].path])
        if len(items) > 1:
            duplicate_sets.append(tuple(str(i[0].path) for i in items))
            labels = {i[0].label for i in items}
            if len(labels) > 1:
                raise UserError(
                    f"identical files carry different labels ({', '.join(sorted(labels))}): "
                    + ", ".join(str(i[0].path) for i in items)
                )
        kept = items[:1] if policy == "drop" else items
        dropped += [str(i[0].path) for i in items[len(kept):]]
        kept_items += [(item, own_group(item[0], sha)) for item in kept]
    entries = [
        Entry(path=str(record.path), label=record.label, sha256=digest, group=find(group),
              width=width, height=height, mask=str(record.mask) if record.mask else None)
        for (record, digest, width, height), group in kept_items
    ]
    return entries, tuple(sorted(duplicate_sets)), sorted(dropped)
