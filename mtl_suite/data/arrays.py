"""Images and labels held in memory: what the training code fits on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ArrayData:
    images: np.ndarray  # (N, H, W, 3) uint8, raw pixels: the model normalises inside (a head-only fit: features)
    labels: np.ndarray  # (N,) int class indices

    def __len__(self) -> int:
        return len(self.labels)
