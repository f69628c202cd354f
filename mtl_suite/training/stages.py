"""What training needs per stage beyond the catalog (mtl_suite/catalog.py): the per-fold model factory that starts
from the stage's initial backbone weights W_{k-1}, and the W0 archive of ImageNet (or file, or no) weights."""

from __future__ import annotations

from pathlib import Path

from mtl_suite.config import TrainConfig


def model_factory(backbone_name: str, image_size: int, initial_weights: Path, head: str, n_classes: int,
                  cfg: TrainConfig):
    """A factory that builds the classifier with the stage's initial backbone weights (W_{k-1}), the same for
    every fold, and the stain control of `cfg.stain` inside its graph (a weightless layer: the archives of W0-W3
    are the same with or without it, so W0 is built without it)."""
    from mtl_suite.models.backbones import build_backbone
    from mtl_suite.models.heads import build_classifier
    from mtl_suite.models.transfer import load_backbone

    def build():
        backbone, _ = build_backbone(backbone_name, image_size, "none", cfg.precision, cfg.stain)
        load_backbone(backbone, initial_weights)
        return build_classifier(backbone, head, n_classes, cfg.dense_units, cfg.dropout, cfg.precision), backbone

    return build


def imagenet_backbone_file(backbone_name: str, image_size: int, weights: str, out_path: Path,
                           metadata: dict, seed: int = 0) -> tuple[Path, dict]:
    """Build the backbone with its ImageNet (or file, or no) weights once and save it as the W0/W1 archive.
    `seed` fixes the random initial weights of `weights="none"`, so a rerun (or a resumed run) starts the same."""
    import keras

    from mtl_suite.models.backbones import build_backbone
    from mtl_suite.models.transfer import save_backbone

    keras.utils.set_random_seed(seed)
    backbone, choice = build_backbone(backbone_name, image_size, weights)
    provenance = choice.as_tags()
    save_backbone(backbone, out_path, {**metadata, "backbone": backbone_name, **provenance})
    return out_path, provenance
