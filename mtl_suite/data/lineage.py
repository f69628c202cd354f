"""What a stage's weights have seen: the content digests of every image that trained them or any stage before them
(for stage 2's crops: the smears they were cut from), with a line per stage saying where those images came from.

A stage may start from a parent only if none of the images it holds out (its outer test part) is among what the
parent's weights have seen: otherwise its test score would be measured on images the chain trained on. Digests are
content hashes, so the check holds whatever the files are called and wherever they sit. Pure data: MLflow I/O of
the record is tracking/stage_log.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

DIGEST_CHARS = 16  # 64 bits of sha256: no accidental collision among millions of images, a quarter of the size


def short_digest(sha256: str) -> str:
    return sha256[:DIGEST_CHARS]


@dataclass(frozen=True)
class DataSource:
    """One stage's training data, as a reader needs it to see why two runs do not fit together."""

    stage: str
    run_id: str
    data: str  # e.g. "smears:/data/aria-all/original" or "crops-of-development-smears:..."
    dataset_digest: str
    split_seed: int | None
    images: int  # distinct images (for crops: source smears) that reached training

    def text(self) -> str:
        seed = f", split seed {self.split_seed}" if self.split_seed is not None else ""
        return (f"{self.stage} run {self.run_id[:12]} trained on {self.images} images of {self.data} "
                f"(dataset {self.dataset_digest[:12]}{seed})")


@dataclass(frozen=True)
class HeldOut:
    """The images a stage keeps from training (its outer test part, or for stage 2's crops the smears' test part),
    and the data they belong to, for the message when a parent has seen some of them."""

    digests: frozenset[str]
    dataset_digest: str
    split_seed: int | None
    data: str

    def text(self) -> str:
        seed = f" split seed {self.split_seed}" if self.split_seed is not None else ""
        return f"{len(self.digests)} held-out images of {self.data} (dataset {self.dataset_digest[:12]}{seed})"


@dataclass(frozen=True)
class Exposure:
    digests: frozenset[str] = frozenset()
    sources: tuple[DataSource, ...] = field(default=())

    def extended(self, source: DataSource, trained: Iterable[str]) -> Exposure:
        return Exposure(self.digests | {short_digest(d) for d in trained}, (*self.sources, source))

    def seen(self, held_out: HeldOut) -> int:
        """How many of the held-out images these weights have seen (0: the stage may start from them)."""
        return len(self.digests & {short_digest(d) for d in held_out.digests})

    def conflict(self, held_out: HeldOut) -> str | None:
        """None when the weights have seen none of the held-out images, else one sentence saying which stage saw
        them and on what data, against the held-out part it would leak."""
        seen = self.seen(held_out)
        if not seen:
            return None
        sources = "; ".join(s.text() for s in self.sources if s.images) or "unknown data"
        return f"its weights have seen {seen} of this run's {held_out.text()}: {sources}"

    def to_json(self) -> dict:
        return {"digest_chars": DIGEST_CHARS, "digests": sorted(self.digests),
                "sources": [vars(s) for s in self.sources]}

    @classmethod
    def from_json(cls, data: dict) -> Exposure:
        return cls(frozenset(data["digests"]), tuple(DataSource(**s) for s in data["sources"]))
