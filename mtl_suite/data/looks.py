"""Looks at a set of labelled images: a figure measured on images that many configurations were scored on, and
chosen among them, is optimistic by however many looks there were. Every run that scores a set (a final-stage run
its outer test part, `evaluate` its DATA) records one look; this module is what a look is and how the looks at one
set are read. Pure data: the MLflow I/O is tracking/looks.py, the tags' names catalog.py's `LookTag`.

A set is known by its part digest: content hashes only, so the same images make the same set whatever their files
are called, where they sit or how they are labelled. One configuration is one model, named by the run that made it
(`model_key`): a stage run's model, evaluated again or registered and evaluated, is the same configuration, not a
new look; two training runs are two configurations even with the same settings (their models differ)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Iterable

from mtl_suite.catalog import LookTag
from mtl_suite.io_utils import sha256_text


def part_digest(content_digests: Iterable[str]) -> str:
    """sha256 over the sorted, distinct content digests (one per line) of the images scored."""
    return sha256_text("".join(f"{digest}\n" for digest in sorted(set(content_digests))))


def model_key(run_id: str | None = None, model_id: str | None = None, uri: str | None = None) -> str:
    """The configuration a model is: the run that made it ("run:<id>"), else its logged model, else its URI (a
    folder that names neither)."""
    if run_id:
        return f"run:{run_id}"
    return f"model:{model_id}" if model_id else f"uri:{uri}"


@dataclass(frozen=True)
class Look:
    """What a run records when it scores a set: which set, and which configuration scored it."""

    digest: str
    images: int
    model: str  # model_key()
    configuration: str  # the configuration in words ("stage3 xception multiclass, seed 42, refit")

    def tags(self, earlier: int) -> dict[str, str]:
        return {LookTag.PART: self.digest, LookTag.IMAGES: str(self.images), LookTag.MODEL: self.model,
                LookTag.CONFIGURATION: self.configuration[:500], LookTag.EARLIER: str(earlier)}


@dataclass(frozen=True)
class LoggedLook:
    """A look as the store holds it: the run that made it and where."""

    run_id: str
    run_name: str
    experiment: str  # the experiment's name
    kind: str  # the run's run_kind (stage, evaluation)
    start_time: int  # ms since the epoch
    digest: str
    images: int
    model: str
    configuration: str
    status: str  # FINISHED, FAILED, KILLED, RUNNING; a look is a look whatever became of the run
    deleted: bool  # deleted in MLflow: still a look (deleting a run does not unsee its figures)
    sealed_set: str | None = None

    def to_json(self) -> dict:
        return {"run_id": self.run_id, "run_name": self.run_name, "experiment": self.experiment, "kind": self.kind,
                "start_time": when(self.start_time), "configuration": self.configuration, "model": self.model,
                "status": self.status, "deleted": self.deleted, "sealed_set": self.sealed_set}


def configurations(looks: Iterable[LoggedLook], besides: str | None = None) -> list[str]:
    """The distinct configurations (model keys) among `looks`, in order of their first look, `besides` left out."""
    return [model for model in dict.fromkeys(look.model for look in sorted(looks, key=lambda x: x.start_time))
            if model != besides]


def earlier_text(earlier: int, what: str = "this test part") -> str:
    """'this test part had been scored by 3 earlier configurations' (by no earlier configuration: a first look)."""
    if earlier == 0:
        return f"{what} had been scored by no earlier configuration"
    return f"{what} had been scored by {earlier} earlier configuration{'' if earlier == 1 else 's'}"


def when(start_time: int) -> str:
    """A run's start (ms since the epoch) as UTC, to the minute."""
    return dt.datetime.fromtimestamp(start_time / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True)
class Seal:
    """A set of images registered as a final test (`mtl-suite data seal`): scored by one configuration; another
    only as a recorded second look (`evaluate --again`)."""

    name: str
    digest: str  # part_digest of its images
    images: frozenset[str]  # their content digests
    run_id: str  # the seal run
    start_time: int

    def overlap(self, digests: Iterable[str]) -> int:
        """How many of `digests` (distinct) are sealed images."""
        return len(self.images & set(digests))
