"""What a logged model requires, pinned to the versions installed here (where it was trained and checked): the one
list of distributions each kind of model imports. mtl-suite itself is never among them: it is on no package index,
and the served model carries its code (tracking/registry.py:package_code).

tests/unit/test_served_model.py loads and runs the served model in a fresh interpreter and fails when it imports a
distribution that SERVING_PACKAGES does not pin (directly from mtl_suite's code) or bring in (as a dependency)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from mtl_suite.errors import UserError

# A stage run's Keras model, as mlflow.keras loads it (tensorflow: Keras's backend, which keras does not require).
KERAS_MODEL_PACKAGES = ("mlflow", "tensorflow", "keras", "numpy")
# The registered raw-image pyfunc (serving/pyfunc.py and what it imports when MLflow loads it and when it answers):
# pandas (its input and output), pillow and opencv (data/images.py: decode, resize), pyyaml (config.py),
# scikit-learn (models/colour.py, training/metrics.py).
SERVING_PACKAGES = KERAS_MODEL_PACKAGES + ("pandas", "pillow", "opencv-python-headless", "pyyaml", "scikit-learn")


def pinned(packages: tuple[str, ...]) -> list[str]:
    """`name==version` for each package; one that is not installed is a user error (a model logged without it
    would not load where it is served)."""
    try:
        return [f"{package}=={version(package)}" for package in packages]
    except PackageNotFoundError as exc:
        raise UserError(f"{exc.name} is not installed, and the model being logged requires it: reinstall "
                        "mtl-suite's environment (pip install -e .)") from None


def model_requirements() -> list[str]:
    return pinned(KERAS_MODEL_PACKAGES)


def serving_requirements() -> list[str]:
    return pinned(SERVING_PACKAGES)
