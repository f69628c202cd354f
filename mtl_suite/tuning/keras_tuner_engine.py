"""The keras-tuner engine: Bayesian optimisation (Gaussian process) over the same YAML space and the same CV
objective, logged to MLflow the same way, so the two engines can be compared on one task. keras-tuner keeps its
state in a project folder (the --storage path, default keras-tuner/ in the working directory) and resumes from it.
No pruning: keras-tuner's oracle has no per-step reports for a custom run_trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import keras_tuner as kt
import optuna

from mtl_suite.tuning.artifacts import write_study_artifacts
from mtl_suite.tuning.objective import NoPruning, TuningContext, evaluate, trial_config
from mtl_suite.tuning.study import StudyRuns, TuneOutcome, TuneRequest, study_tags, work_dir
from mtl_suite.tuning.tracker import StudyTracker

DEFAULT_DIRECTORY = "keras-tuner"


class KerasTunerSuggest:
    def __init__(self, hp: kt.HyperParameters):
        self.hp = hp

    def float(self, name, low, high, log, step):
        return self.hp.Float(name, low, high, step=step, sampling="log" if log else "linear")

    def int(self, name, low, high, log, step):
        return self.hp.Int(name, low, high, step=step, sampling="log" if log else "linear")

    def categorical(self, name, choices):
        return self.hp.Choice(name, list(choices))


def run_keras_tuner(request: TuneRequest, ctx: TuningContext, runs: StudyRuns,
                    say: Callable[[str], None]) -> TuneOutcome:
    directory = Path(request.storage or DEFAULT_DIRECTORY)
    name = request.name
    tags = study_tags(request, ctx, str(directory), "bayesian(keras-tuner)", "none")
    existing = StudyTracker.find_study_run(runs.experiment_id, name, "keras-tuner")
    error: BaseException | None = None
    with work_dir() as tmp:
        tracker = runs.open(existing, name, tags, ctx, Path(tmp))
        try:
            tuner = _tuner(request, ctx, tracker, directory)
            done = sum(t.status == "COMPLETED" for t in tuner.oracle.trials.values())
            say(f"keras-tuner study {name!r} in {directory}: {done} finished trial(s), target {request.trials}")
            tuner.search(verbose=0)
            study = as_optuna_study(tuner, ctx)
            complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            best = study.best_trial if complete else None
            best_number = int(best.user_attrs["keras_tuner_trial"]) if best else None  # keras-tuner's own id
            counts = {"COMPLETE": len(complete), "PRUNED": 0,
                      "FAIL": sum(t.status in ("FAILED", "INVALID") for t in tuner.oracle.trials.values())}
            tracker.log_study_progress(counts, best.value if best else None, best_number)
            identity = {"stage": request.stage, "backbone": ctx.base.train.backbone, "task": ctx.task,
                        "folds": request.folds, "image_size": ctx.base.data.image_size,
                        "weights": ctx.base.train.weights}
            write_study_artifacts(study, tracker, Path(tmp) / "study", ctx, identity, str(directory))
        except BaseException as exc:
            error = exc
            raise
        finally:
            StudyRuns.close(error)
    say(f"keras-tuner study {name!r}: {counts['COMPLETE']} complete; "
        + (f"best {ctx.metric} {best.value:.4f} (trial {best_number})" if best else "no complete trial"))
    return TuneOutcome(name, str(directory), tracker.study_run_id, best.value if best else None,
                       dict(best.user_attrs.get("params", {})) if best else {}, best_number,
                       counts, runs.uri)


def _tuner(request: TuneRequest, ctx: TuningContext, tracker: StudyTracker, directory: Path) -> kt.Tuner:
    class CrossValidatedBayesian(kt.BayesianOptimization):
        def run_trial(self, trial, *args, **kwargs):
            number = int(trial.trial_id)
            run_id = tracker.start_trial(number)
            with tracker.closing_on_failure(run_id):
                params = ctx.space.sample(KerasTunerSuggest(trial.hyperparameters), ctx.base.train, everything=True)
                tracker.log_params(run_id, params)
                value = evaluate(ctx, params, NoPruning(), tracker, run_id, f"trial {number}:")
            tracker.finish_trial(run_id, "COMPLETE", value, params, ctx.metric)
            ctx.say(f"trial {number} complete: {ctx.metric} {value:.4f}")
            return {ctx.metric: value}

    direction = "max" if ctx.direction == "maximize" else "min"
    return CrossValidatedBayesian(
        hypermodel=None, objective=kt.Objective(ctx.metric, direction=direction), max_trials=request.trials,
        seed=request.seed, directory=str(directory), project_name=request.name, overwrite=False,
        max_consecutive_failed_trials=1)


def as_optuna_study(tuner: kt.Tuner, ctx: TuningContext) -> optuna.Study:
    """keras-tuner's trials as an in-memory Optuna study (same plots, same best_params.yaml). Only the parameters
    active in a trial are kept, with the distributions of the YAML space."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {name: _distribution(spec) for name, spec in ctx.space.params.items() if spec.type != "fixed"}
    study = optuna.create_study(direction=ctx.direction, study_name=tuner.project_name)
    for trial_id in sorted(tuner.oracle.trials, key=int):
        trial = tuner.oracle.trials[trial_id]
        if trial.status != "COMPLETED" or trial.score is None:
            continue
        values = trial.hyperparameters.values
        drawn = {name: values[name] for name in ctx.space.params if name in values}
        drawn.update({name: spec.value for name, spec in ctx.space.params.items() if spec.type == "fixed"})
        params = ctx.space.sample(_Replay(drawn), ctx.base.train)
        _, strength, overrides = trial_config(ctx, params)
        searched = {k: v for k, v in params.items() if k in distributions}
        study.add_trial(optuna.trial.create_trial(
            params=searched, distributions={k: distributions[k] for k in searched}, value=float(trial.score),
            user_attrs={"params": params, "config_overrides": overrides, "augment_strength": strength,
                        "keras_tuner_trial": trial_id}))
    return study


class _Replay:
    """Replays recorded values through the space, so inactive parameters are dropped as in a live trial."""

    def __init__(self, values: dict[str, Any]):
        self.values = values

    def float(self, name, low, high, log, step):
        return self.values[name]

    def int(self, name, low, high, log, step):
        return self.values[name]

    def categorical(self, name, choices):
        return self.values[name]


def _distribution(spec) -> optuna.distributions.BaseDistribution:
    if spec.type == "float":
        return optuna.distributions.FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
    if spec.type == "int":
        return optuna.distributions.IntDistribution(spec.low, spec.high, log=spec.log, step=spec.step or 1)
    return optuna.distributions.CategoricalDistribution(list(spec.choices))
