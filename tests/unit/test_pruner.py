"""The median pruner judges a trial only once every trial is fine-tuning: warm-up epochs train the head on cached
features (almost free to finish) and their validation scores differ by an image or two."""

from __future__ import annotations

import optuna

from mtl_suite.tuning.optuna_engine import make_pruner

WARMUP_STEPS, MAX_STEPS = 4, 9


def _study_with_good_trials() -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", MAX_STEPS, WARMUP_STEPS))
    for _ in range(5):  # the pruner's startup trials
        trial = study.ask()
        for step in range(MAX_STEPS):
            trial.report(0.9, step)
        study.tell(trial, 0.9)
    return study


def test_a_poor_warm_up_epoch_is_not_pruned_but_a_poor_fine_tuning_epoch_is():
    study = _study_with_good_trials()
    trial = study.ask()
    for step in range(WARMUP_STEPS):
        trial.report(0.1, step)
        assert not trial.should_prune(), f"pruned on warm-up step {step}"
    trial.report(0.1, WARMUP_STEPS)
    assert trial.should_prune()


def test_without_warm_up_steps_the_first_epoch_is_judged():
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", MAX_STEPS))
    for _ in range(5):
        trial = study.ask()
        trial.report(0.9, 0)
        study.tell(trial, 0.9)
    trial = study.ask()
    trial.report(0.1, 0)
    assert trial.should_prune()
