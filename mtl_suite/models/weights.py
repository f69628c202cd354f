"""Where a backbone's initial weights come from, checked by hash and recorded for provenance.

`imagenet` uses the bundled file when the package ships one (MobileNet 0.25), else Keras's own download and cache;
a path uses that file (its sha256 is logged); `none` is random initialisation, logged as such. ImageNet weights
that cannot be had are an error that says how to supply a file, never a silent random init.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mtl_suite.errors import UserError
from mtl_suite.io_utils import sha256_file

if TYPE_CHECKING:
    from mtl_suite.models.backbones import BackboneSpec

KERAS_CACHE = Path.home() / ".keras" / "models"


@dataclass(frozen=True)
class WeightsChoice:
    kind: str  # imagenet | file | none
    path: str | None = None
    sha256: str | None = None
    source: str = ""

    def as_tags(self) -> dict[str, str]:
        return {"weights": self.kind, "weights_source": self.source, "weights_sha256": self.sha256 or ""}


def resolve_weights(spec: "BackboneSpec", weights: str) -> WeightsChoice:
    if weights == "none":
        return WeightsChoice("none", source="random initialisation")
    if weights == "imagenet":
        return _imagenet(spec)
    path = Path(weights)
    if not path.is_file():
        raise UserError(f"--weights: expected 'imagenet', 'none' or a weights file. Received: {weights!r} "
                        f"(no such file)")
    return WeightsChoice("file", str(path.resolve()), sha256_file(path), source=f"file {path}")


def _imagenet(spec: "BackboneSpec") -> WeightsChoice:
    if spec.bundled_weights:
        path, expected = spec.bundled_weights
        actual = sha256_file(path)
        if actual != expected:
            raise UserError(f"bundled ImageNet weights {path} are corrupt: sha256 {actual}, expected {expected}")
        return WeightsChoice("imagenet", path, actual, source="bundled ImageNet file")
    if spec.imagenet_file is None:
        raise UserError(f"backbone {spec.name} has no ImageNet weights: use --weights none or a file")
    cached = KERAS_CACHE / spec.imagenet_file
    sha = sha256_file(cached) if cached.is_file() else None
    return WeightsChoice("imagenet", None, sha, source=f"keras.applications download/cache ({spec.imagenet_file})")


def keras_weights_argument(choice: WeightsChoice) -> str | None:
    """What to pass as `weights=` to a keras.applications constructor."""
    if choice.kind == "none":
        return None
    return choice.path or "imagenet"
