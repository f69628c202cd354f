"""The one module that touches Optuna's private names. Resuming a killed study (resume.py) needs a few things Optuna
keeps private: a study's storage and id, a trial's storage id, whether a storage runs heartbeats, the study a
Hyperband bracket study wraps, and the Hyperband bracket choice. Private names may change in any release, so
pyproject.toml and conda.yaml cap Optuna below its next minor version, and `missing_attributes()` (run by
tests/unit/test_private_api.py) names each one an upgrade dropped. Every other module goes through the functions
here."""

from __future__ import annotations

import importlib

import optuna
from optuna.storages import BaseStorage
from optuna.study import Study
from optuna.trial import FrozenTrial, Trial

HEARTBEAT_MODULE = "optuna.storages._heartbeat"


def storage_of(study: Study) -> BaseStorage:
    """The study's storage (`Study._storage`): the only way to write a trial's system attributes or state."""
    return study._storage


def study_id(study: Study) -> int:
    """The study's id in its storage (`Study._study_id`)."""
    return study._study_id


def trial_id(trial: Trial | FrozenTrial) -> int:
    """The trial's id in its storage (`_trial_id`), which the storage's setters take (not the trial number)."""
    return trial._trial_id


def stored_trial(trial: Trial) -> FrozenTrial:
    """The trial as stored, with its system attributes (optuna.Trial shows only params and user attributes)."""
    return storage_of(trial.study).get_trial(trial_id(trial))


def heartbeat_enabled(storage: BaseStorage) -> bool:
    """Whether the storage runs heartbeats (`optuna.storages._heartbeat.is_heartbeat_enabled`)."""
    return importlib.import_module(HEARTBEAT_MODULE).is_heartbeat_enabled(storage)


def unfiltered_study(study: Study) -> Study:
    """The whole study behind a HyperbandPruner bracket study (its `_study`), which shows one bracket's trials;
    any other study as it is."""
    return getattr(study, "_study", study)


class HyperbandBracketHook(optuna.pruners.HyperbandPruner):
    """HyperbandPruner whose bracket choice is the public method `bracket_id`, for subclasses to override. Optuna
    asks for a trial's bracket through the private `_get_bracket_id` (in `prune`, when it hands a trial's sampler
    the trial's bracket study, and in that study's `get_trials`); this class routes that call to `bracket_id`."""

    def _get_bracket_id(self, study: Study, trial: FrozenTrial) -> int:
        return self.bracket_id(study, trial)

    def bracket_id(self, study: Study, trial: FrozenTrial) -> int:
        """Optuna's own choice: a hash of the trial number."""
        return super()._get_bracket_id(study, trial)

    def brackets_ready(self) -> bool:
        """False until Optuna has set up the brackets (on the first `prune` that knows the maximum resource)."""
        return len(self._pruners) > 0

    def bracket_of_hash(self, digest: int) -> int:
        """The bracket Optuna's rule gives a hash: its share of the total budget. Call only once brackets_ready()."""
        n = digest % self._total_trial_allocation_budget
        for bracket in range(self._n_brackets):
            n -= self._trial_allocation_budgets[bracket]
            if n < 0:
                return bracket
        raise AssertionError("unreachable: the budgets sum to the total")


def bracket_as_optuna_asks(pruner: optuna.pruners.HyperbandPruner, study: Study, trial: FrozenTrial) -> int:
    """The trial's bracket, asked the way Optuna asks (`_get_bracket_id`), so a check sees what Optuna sees."""
    return pruner._get_bracket_id(study, trial)


# --- what an upgrade may break ------------------------------------------------------------------------------------

HYPERBAND_METHODS = ("_get_bracket_id", "_create_bracket_study")
HYPERBAND_STATE = ("_pruners", "_n_brackets", "_trial_allocation_budgets", "_total_trial_allocation_budget")


def missing_attributes() -> list[str]:
    """Every private name above that the installed Optuna lacks (or no longer calls), checked on a real in-memory
    study, trial and HyperbandPruner; [] when all are there."""
    study = _in_memory_study(optuna.pruners.NopPruner())
    trial = study.ask()
    missing = _absent("optuna.study.Study", study, ("_storage", "_study_id"))
    missing += _absent("optuna.trial.Trial", trial, ("_trial_id",))
    missing += _absent("optuna.trial.FrozenTrial", study.get_trials(deepcopy=False)[-1], ("_trial_id",))
    hyperband = optuna.pruners.HyperbandPruner
    missing += _absent("optuna.pruners.HyperbandPruner", hyperband, HYPERBAND_METHODS)  # on Optuna's class, not ours
    missing += _absent("optuna.pruners.HyperbandPruner", hyperband(), HYPERBAND_STATE)
    if not any(entry.startswith("optuna.pruners.HyperbandPruner.") for entry in missing):
        missing += _hyperband_hook_missing()
    return missing + _heartbeat_missing()


def _in_memory_study(pruner: optuna.pruners.BasePruner) -> Study:
    return optuna.create_study(storage=optuna.storages.InMemoryStorage(), sampler=optuna.samplers.RandomSampler(),
                               pruner=pruner)


def _absent(owner: str, obj: object, names: tuple[str, ...]) -> list[str]:
    return [f"{owner}.{name}" for name in names if not hasattr(obj, name)]


def _hyperband_hook_missing() -> list[str]:
    """The bracket study's `_study`, and that Optuna still asks `_get_bracket_id` when it gives a new trial its
    bracket's study and when it prunes (an override of a method Optuna stopped calling would be silently ignored)."""
    pruner = _RecordingHyperband(min_resource=1, max_resource=9, reduction_factor=3)
    study = _in_memory_study(pruner)
    trial = study.ask()
    missing = _absent("optuna.pruners.HyperbandPruner._create_bracket_study(...)",
                      pruner._create_bracket_study(study, 0), ("_study",))
    if not pruner.asked:
        missing.append("optuna.trial.Trial (bracket study for the sampler) no longer calls _get_bracket_id")
    trial.report(0.0, 0)
    pruner.asked = False
    trial.should_prune()
    if not pruner.asked:
        missing.append("optuna.pruners.HyperbandPruner.prune no longer calls _get_bracket_id")
    return missing


def _heartbeat_missing() -> list[str]:
    try:
        module = importlib.import_module(HEARTBEAT_MODULE)
    except ImportError:
        return [HEARTBEAT_MODULE]
    return _absent(HEARTBEAT_MODULE, module, ("is_heartbeat_enabled",))


class _RecordingHyperband(HyperbandBracketHook):
    """Notes that Optuna's prune asked for a bracket through the hook."""

    asked = False

    def bracket_id(self, study: Study, trial: FrozenTrial) -> int:
        self.asked = True
        return super().bracket_id(study, trial)
