"""Keras callbacks that report to MLflow. Training code receives them as plain Keras callbacks and never
imports mlflow itself."""

from __future__ import annotations

import keras
import mlflow


def metric_key(keras_name: str, prefix: str = "") -> str:
    """Keras 'val_loss' -> 'val/loss', 'loss' -> 'train/loss' (one namespace per data part in the MLflow UI)."""
    if keras_name.startswith("val_"):
        return f"{prefix}val/{keras_name[4:]}"
    if keras_name in ("learning_rate", "lr"):
        return f"{prefix}learning_rate"
    return f"{prefix}train/{keras_name}"


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs every epoch's metrics to the given run. `step_offset` continues the step count across training
    phases (head warm-up, then fine-tuning) so one curve shows the whole fit."""

    def __init__(self, run_id: str, prefix: str = "", step_offset: int = 0):
        super().__init__()
        self.run_id = run_id
        self.prefix = prefix
        self.step_offset = step_offset
        self._client = mlflow.MlflowClient()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = [
            mlflow.entities.Metric(metric_key(name, self.prefix), float(value), _now_ms(), epoch + self.step_offset)
            for name, value in (logs or {}).items()
            if isinstance(value, (int, float)) or hasattr(value, "__float__")
        ]
        if metrics:
            self._client.log_batch(self.run_id, metrics=metrics, synchronous=True)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
