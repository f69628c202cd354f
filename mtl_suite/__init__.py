"""mtl-suite: multistage transfer learning for ALL classification, tracked with MLflow and tuned with Optuna."""

__version__ = "0.1.0"
