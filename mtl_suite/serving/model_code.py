"""Models-from-code entry point of the registered pyfunc: MLflow stores this file with the model and runs it at
load time, so the model is rebuilt from the installed mtl-suite code instead of being unpickled."""

import mlflow

from mtl_suite.serving.pyfunc import MtlImageClassifier

mlflow.models.set_model(MtlImageClassifier())
