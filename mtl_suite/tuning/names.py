"""The engines, samplers and pruners `mtl-suite tune` offers, as plain names: the CLI builds its choices from them
at start-up without importing Optuna or keras-tuner. workflows/tune.py:ENGINES, optuna_engine.py:SAMPLERS and
make_pruner are keyed by them (tests/unit/test_cli_options.py checks that they agree)."""

ENGINES = ("optuna", "keras-tuner")
SAMPLERS = ("tpe", "random", "cmaes", "gp")
PRUNERS = ("median", "hyperband", "none")
