"""The ledger of looks and sealed final tests (data/looks.py says what a look is):

- `ledger`: every set of images scored in the store (`mtl-suite data looks`), each with the runs that scored it in
  order of time and how many distinct configurations those were;
- `seal_set`: register a folder's images as a sealed final test (`mtl-suite data seal`), a run of its own in the
  store's seal experiment, so the whole team sees the seal;
- `sealed_look`: what `evaluate` asks before it scores anything: do these images belong to a sealed set, and has
  another configuration scored it already (then only `--again` scores it, and the look is recorded as such)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import mlflow

from mtl_suite.catalog import SEAL_EXPERIMENT, LookTag
from mtl_suite.data import resolve_data_path
from mtl_suite.data.looks import LoggedLook, Look, Seal, configurations, part_digest, when
from mtl_suite.data.manifest import build_manifest
from mtl_suite.errors import UserError
from mtl_suite.tracking import looks as store
from mtl_suite.tracking.reachability import check_tracking_uri
from mtl_suite.tracking.setup import resolve_tracking_uri, use_tracking

SEAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # safe inside a search filter's quotes


# --- the ledger --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Part:
    """One set of scored images and every look at it."""

    digest: str
    images: int
    looks: list[LoggedLook]
    sealed: str | None = None  # the seal's name when these are exactly a sealed set's images

    @property
    def configurations(self) -> int:
        return len(configurations(self.looks))

    def to_json(self) -> dict:
        return {"digest": self.digest, "images": self.images, "sealed_set": self.sealed,
                "configurations": self.configurations, "looks": [look.to_json() for look in self.looks]}


@dataclass(frozen=True)
class Ledger:
    tracking_uri: str
    parts: list[Part]  # in order of their first look
    seals: list[Seal] = field(default_factory=list)
    sealed: dict[str, list[LoggedLook]] = field(default_factory=dict)  # seal name -> its looks

    def to_json(self) -> dict:
        return {"tracking_uri": self.tracking_uri, "parts": [part.to_json() for part in self.parts],
                "seals": [{"name": s.name, "digest": s.digest, "images": len(s.images), "run_id": s.run_id,
                           "sealed": when(s.start_time),
                           "configurations": len(configurations(self.sealed[s.name])),
                           "looks": [look.run_id for look in self.sealed[s.name]]} for s in self.seals]}


def ledger(tracking_uri: str | None) -> Ledger:
    """Every look in the store, by set, and the store's seals with their looks."""
    uri = _open_store(tracking_uri)
    by_part: dict[str, list[LoggedLook]] = {}
    for look in store.all_looks():
        by_part.setdefault(look.digest, []).append(look)
    seals = store.seals()
    names = {seal.digest: seal.name for seal in seals}
    parts = [Part(digest, max(look.images for look in looks), looks, names.get(digest))
             for digest, looks in by_part.items()]
    return Ledger(uri, parts, seals, {seal.name: store.sealed_looks(seal) for seal in seals})


def _open_store(tracking_uri: str | None) -> str:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the seals' downloads: no bars
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    return uri


# --- sealing -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SealRequest:
    name: str
    data: str | None = None  # None: the bundled sample
    layout: str = "auto"
    allow_outside_root: bool = False
    on_bad_image: str = "fail"
    tracking_uri: str | None = None


@dataclass(frozen=True)
class SealOutcome:
    seal: Seal
    created: bool  # False: these images were already sealed under this name
    root: str
    # created: the configurations that had scored exactly these images before the seal; already sealed: those that
    # have scored the sealed set
    configurations: int
    tracking_uri: str

    def summary(self) -> str:
        seal, n = self.seal, self.configurations
        scored = f"{n} configuration{'' if n == 1 else 's'}"
        if self.created:
            head = f"sealed {len(seal.images)} images of {self.root} as {seal.name!r}"
            head += f"; {scored} had scored them before the seal" if n else ""
        else:
            looked = f"scored by {scored}" if n else "not scored yet"
            head = f"{self.root} is already sealed as {seal.name!r} ({len(seal.images)} images, {looked})"
        return f"{head}; seal run {seal.run_id} in {self.tracking_uri}"


def seal_set(request: SealRequest) -> SealOutcome:
    """Seal the images under `request.data` as `request.name`. Sealing the same images under the same name again
    changes nothing; a name or images already sealed otherwise, or images shared with another sealed set, are
    refused (an image belongs to one sealed set at most, so an evaluation touches one seal)."""
    if not SEAL_NAME.fullmatch(request.name):
        raise UserError(f"--name: expected 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit. "
                        f"Received: {request.name!r}")
    root = resolve_data_path(request.data)
    if not root.exists():
        raise UserError(f"PATH: no such file or folder. Received: {str(root)!r}")
    manifest = build_manifest(root, request.layout, on_bad_image=request.on_bad_image,
                              allow_outside_root=request.allow_outside_root)
    digests = sorted({entry.sha256 for entry in manifest.entries})
    digest = part_digest(digests)
    uri = _open_store(request.tracking_uri)
    existing = _existing_seal(request.name, digest, digests)
    if existing is not None:
        return SealOutcome(existing, False, manifest.root, len(configurations(store.sealed_looks(existing))), uri)
    earlier = len(configurations(store.looks_at(digest)))
    _, experiment_id = use_tracking(uri, SEAL_EXPERIMENT)
    tags = {"data": manifest.root[:250], "data_layout": manifest.layout, "dataset_digest": manifest.digest,
            "classes": ",".join(f"{label}:{count}" for label, count in manifest.class_counts.items())[:500]}
    run_id = store.log_seal(experiment_id, request.name, digest, digests, tags, manifest.to_csv())
    seal = Seal(request.name, digest, frozenset(digests), run_id, mlflow.get_run(run_id).info.start_time)
    return SealOutcome(seal, True, manifest.root, earlier, uri)


def _existing_seal(name: str, digest: str, digests: list[str]) -> Seal | None:
    """The seal these images already are under this name; None when they are not sealed; a UserError when the name
    or any image is another seal's."""
    for seal in store.seals():
        if seal.name == name and seal.digest == digest:
            return seal
        if seal.digest == digest:
            raise UserError(f"PATH is already sealed as {seal.name!r} (seal run {seal.run_id}); not sealed again as "
                            f"{name!r}")
        if seal.name == name:
            raise UserError(f"--name {name}: already the name of a sealed set of {len(seal.images)} other images "
                            f"(seal run {seal.run_id}); choose another name")
        shared = seal.overlap(digests)
        if shared:
            raise UserError(f"PATH shares {shared} of its {len(digests)} images with sealed set {seal.name!r} "
                            f"(seal run {seal.run_id}): an image belongs to one sealed set at most")
    return None


# --- evaluating a sealed set -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SealedLook:
    """An evaluation's look at a sealed set, counted with this one."""

    seal: Seal
    shared: int  # how many of the evaluated images are sealed ones
    configurations: int  # distinct configurations that will have scored the set, this one included
    looks: int  # evaluations (and runs) that will have scored it, this one included
    again: bool  # a further configuration, scored because --again was given

    def tags(self) -> dict[str, str]:
        return {LookTag.SEALED: self.seal.name, LookTag.SEALED_CONFIGURATIONS: str(self.configurations)}

    def text(self) -> str:
        """"sealed set 'final': scored by 2 configurations in 3 looks, this one included (--again)"."""
        part = "" if self.shared == len(self.seal.images) else f" ({self.shared} of its {len(self.seal.images)} images)"
        plural = "" if self.configurations == 1 else "s"
        return (f"sealed set {self.seal.name!r}{part}: scored by {self.configurations} configuration{plural} in "
                f"{self.looks} look{'' if self.looks == 1 else 's'}, this one included"
                + (" (a further configuration: --again)" if self.again else ""))

    def to_json(self) -> dict:
        return {"name": self.seal.name, "images": len(self.seal.images), "shared": self.shared,
                "configurations": self.configurations, "looks": self.looks, "again": self.again}


def sealed_look(digests: list[str], look: Look, again: bool) -> SealedLook | None:
    """None when none of `digests` is sealed. Else the look this evaluation would be at its sealed set; a UserError
    when another configuration has scored the set and `again` is not given (the same configuration scoring it
    again is no new look at it: its figures were seen)."""
    touched = [(seal, seal.overlap(digests)) for seal in store.seals()]
    touched = [(seal, shared) for seal, shared in touched if shared]
    if not touched:
        return None
    if len(touched) > 1:
        raise UserError(f"DATA holds images of {len(touched)} sealed sets ({', '.join(s.name for s, _ in touched)}): "
                        "evaluate each sealed set on its own")
    seal, shared = touched[0]
    looks = store.sealed_looks(seal)
    scored_by = configurations(looks)
    new = look.model not in scored_by
    if scored_by and new and not again:
        first = next(x for x in looks if x.model == scored_by[0])
        first_text = f"first {first.configuration or first.model}, run {first.run_id}"
        raise UserError(
            f"DATA holds {shared} of the {len(seal.images)} images of sealed set {seal.name!r}, already scored by "
            f"{len(scored_by)} configuration{'' if len(scored_by) == 1 else 's'} ({first_text}); scoring it with "
            f"{look.configuration} would be another look: pass --again to make it, recorded as one")
    return SealedLook(seal, shared, len(scored_by) + new, len(looks) + 1, again and new and bool(scored_by))
