"""Groups from file names, for data that gives no patient id (`--group-by`, `data.group_by`).

Without a patient id a file is its own group, so a split keeps only byte-identical files together. On aria-all
neighbouring file numbers are often fields of one smear (same patient, same staining, same slide): a split that puts
some of them in training and the rest in the test part scores the model on near copies of its training images.
A grouping names the files that belong together, so every split keeps them on one side:

    none             only byte-identical files are grouped (the default; what every earlier split did)
    blocks:N         N consecutive file numbers form a group: the last run of digits in the file name, counted in
                     blocks 0..N-1, N..2N-1, ..., within one folder and one name around the number
                     (Benign/WBC-Benign-001.jpg with N = 20: group Benign/WBC-Benign-[0-19])
    regex:PATTERN    the first capture group of PATTERN searched in the path relative to the data folder (the whole
                     match if it has none): files with the same text form a group, whatever their folder

Byte-identical files are still joined on top (data/manifest.py), and so are a layout's own groups (a CSV's group
column, C-NMC's patient): files that share either stay together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from mtl_suite.config import NO_GROUPING
from mtl_suite.errors import UserError

NameGroup = Callable[[PurePosixPath], "str | None"]  # a file's path relative to the data folder -> its group


@dataclass(frozen=True)
class GroupingKind:
    name: str
    syntax: str
    parse: Callable[[str], NameGroup] | None  # the text after "name:" -> the grouping; raises ValueError(problem)
    unmatched: str  # what a file without a group lacks, for the error that names it


@dataclass(frozen=True)
class Grouping:
    """A parsed --group-by value."""

    text: str  # as given: what the error messages quote
    kind: GroupingKind
    name_group: NameGroup | None = None  # None: no grouping by name

    @property
    def active(self) -> bool:
        return self.name_group is not None


# --- blocks:N ------------------------------------------------------------------------------------------------------

_LAST_NUMBER = re.compile(r"^(.*?)(\d+)(\D*)$")  # lazy prefix: the digits matched are the stem's last run


def _blocks(argument: str) -> NameGroup:
    try:
        size = int(argument)
    except ValueError:
        raise ValueError("N must be a whole number, as in blocks:20") from None
    if size < 1:
        raise ValueError("N must be at least 1, as in blocks:20")

    def block_of(relative: PurePosixPath) -> str | None:
        match = _LAST_NUMBER.match(relative.stem)
        if match is None:
            return None
        prefix, number, suffix = match.groups()
        start = int(number) // size * size
        # folder and prefix in the name: numbers of two classes (or two series) never share a block
        return str(relative.parent / f"{prefix}[{start}-{start + size - 1}]{suffix}")

    return block_of


# --- regex:PATTERN -------------------------------------------------------------------------------------------------

def _regex(argument: str) -> NameGroup:
    if not argument:
        raise ValueError("PATTERN is empty, as in regex:^(.+)-\\d\\d")
    try:
        pattern = re.compile(argument)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression ({exc})") from None

    def match_of(relative: PurePosixPath) -> str | None:
        match = pattern.search(relative.as_posix())
        if match is None:
            return None
        text = match.group(1) if pattern.groups else match.group(0)
        return text or None  # an empty (or unmatched optional) group names nothing

    return match_of


GROUPINGS: dict[str, GroupingKind] = {kind.name: kind for kind in [
    GroupingKind(NO_GROUPING, NO_GROUPING, None, ""),
    GroupingKind("blocks", "blocks:N", _blocks, "have no number in their file name"),
    GroupingKind("regex", "regex:PATTERN", _regex, "do not match the pattern (or its capture group is empty)"),
]}
EXPECTED = ("none, blocks:N (N >= 1 consecutive file numbers per group) or regex:PATTERN (group = its first capture "
            "group, else the whole match)")


def parse_grouping(text: str, option: str = "--group-by") -> Grouping:
    """'blocks:20' -> Grouping; a bad value is one line naming `option`, the value and what was expected."""
    name, colon, argument = text.partition(":")
    kind = GROUPINGS.get(name.strip())
    where = f"{option} {text!r}"
    if kind is None:
        raise UserError(f"{where}: unknown grouping {name.strip()!r}. Expected {EXPECTED}")
    if kind.parse is None:
        if colon:
            raise UserError(f"{where}: {kind.name} takes no value. Expected {EXPECTED}")
        return Grouping(text, kind)
    if not colon:
        raise UserError(f"{where}: {kind.name} needs a value ({kind.syntax}). Expected {EXPECTED}")
    try:
        return Grouping(text, kind, kind.parse(argument))
    except ValueError as exc:
        raise UserError(f"{where}: {exc}. Expected {EXPECTED}") from None


def name_groups(grouping: Grouping, paths: Iterable[Path], base: Path) -> dict[Path, str]:
    """Each path's group from its name relative to `base` (the data folder, or a CSV's folder); {} for none. Every
    file must have one: a file left out would be its own group, the leak the grouping is there to close."""
    if grouping.name_group is None:
        return {}
    groups, unmatched = {}, []
    for path in paths:
        relative = _relative(Path(path), base)
        group = grouping.name_group(relative)
        if group is None:
            unmatched.append(relative)
        else:
            groups[path] = group
    if unmatched:
        raise UserError(f"--group-by {grouping.text!r}: {len(unmatched)} of {len(groups) + len(unmatched)} images "
                        f"{grouping.kind.unmatched}, e.g. {unmatched[0]}. Expected every image to have a group; "
                        f"choose another --group-by")
    return groups


def _relative(path: Path, base: Path) -> PurePosixPath:
    """The path below the data folder; a CSV may list files outside it (--allow-outside-root): then the whole path."""
    try:
        return PurePosixPath(path.relative_to(base).as_posix())
    except ValueError:
        return PurePosixPath(path.as_posix())
