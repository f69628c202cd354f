"""Hyperparameter search, the only place that imports optuna and keras_tuner (and calls trial.suggest_*): search
spaces from studies/*.yaml (space.py), the cross-validated objective with pruning reports (objective.py), the Optuna
and keras-tuner engines, what makes a killed Optuna study resume as if uninterrupted (resume.py), and the study's
MLflow runs and artifacts (tracker.py, artifacts.py)."""
