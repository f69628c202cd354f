"""The Optuna engine: storage (a local journal file by default, any RDB URL; PostgreSQL for several workers with
heartbeats), samplers seeded per trial slot so that a killed and resumed study equals an uninterrupted one
(resume.py), dead workers' trials failed and redone with the same parameters, pruners, the objective, our MLflow
callback and the study's artifacts."""

from __future__ import annotations

import importlib.util
import math
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from mtl_suite import progress
from mtl_suite.errors import UserError
from mtl_suite.tuning.artifacts import write_study_artifacts
from mtl_suite.tuning.objective import TuningContext, evaluate, trial_config
from mtl_suite.tuning.optuna_private import heartbeat_enabled, stored_trial
from mtl_suite.tuning.resume import (
    FAILED_TRIAL, OWNERLESS_GRACE_S, SLOT_ATTR, STOPPED_ATTR, SlotHyperbandPruner, SlotSeededSampler, owner_is_dead,
    recover_dead_trials, repair_journal, retry_trial, this_owner,
)
from mtl_suite.tuning.storage_check import check_storage
from mtl_suite.tuning.study import StudyRuns, TuneOutcome, TuneRequest, study_tags, work_dir
from mtl_suite.tuning.tracker import StudyTracker, mask_password

STORAGE_ENV = "MTL_SUITE_OPTUNA_STORAGE"
DEFAULT_STORAGE = "optuna-studies.log"  # Optuna's JournalFileBackend: survives interruption, safe for local workers
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# How long a worker waits for the worker that created the study to record the study's MLflow run (it resolves
# nothing slow in between: the stage's weights and data are ready before the study opens).
STUDY_RUN_WAIT_S = 60.0
SCHEMA_RACE_TRIES = 4  # opening an empty RDB storage while other workers create its tables
OPENER_ATTR = "mtl_suite:study_run_opener"  # host:pid:start of the worker that created the study
# Attributes a resumed study must share with the command that resumes it (else its values are not comparable).
IDENTITY = ("stage", "backbone", "task", "metric", "folds", "image_size", "data")


def _sampler_tpe(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed)


def _sampler_random(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


def _sampler_cmaes(seed: int) -> optuna.samplers.BaseSampler:
    _require("cmaes", "--sampler cmaes needs the 'cmaes' package (pip install cmaes)")
    # Categorical parameters fall back to the independent sampler; say so once, not per trial.
    return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False,
                                        independent_sampler=optuna.samplers.RandomSampler(seed=seed))


def _sampler_gp(seed: int) -> optuna.samplers.BaseSampler:
    _require("torch", "--sampler gp needs PyTorch (pip install torch); tpe, random and cmaes need nothing more")
    return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)


SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe": _sampler_tpe, "random": _sampler_random, "cmaes": _sampler_cmaes, "gp": _sampler_gp}


def make_pruner(name: str, max_steps: int, warmup_steps: int = 0) -> optuna.pruners.BasePruner:
    """median: stop a trial whose report is below the median of earlier trials at the same step (after 5 finished
    trials), judged only from the first step at which every trial is fine-tuning (`warmup_steps`): warm-up epochs
    train the head on cached features, so stopping there saves almost no time, and their validation scores differ
    by an image or two (22 of 32 trials of the aria-all study were stopped on them, benchmarks/RESULTS.md);
    hyperband: successive halving over the steps (epochs of fold 0, then folds)."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup_steps)
    if name == "hyperband":  # brackets by trial slot, so a redone trial is judged as its first try was
        return SlotHyperbandPruner(min_resource=1, max_resource=max(2, max_steps), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"--pruner {name!r}: expected one of: median, hyperband, none")


def pruner_label(name: str, warmup_steps: int) -> str:
    """The study run's `pruner` tag: the median pruner's with the first step it judges (see make_pruner)."""
    return f"median (judged from step {warmup_steps})" if name == "median" else name


def _require(module: str, message: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UserError(message)


def check_request(request: TuneRequest) -> None:
    """Everything the Optuna engine takes from the user, checked before any run, study or training exists: the
    sampler (and its package), the pruner, the storage (reachable, writable)."""
    if request.sampler not in SAMPLERS:
        raise UserError(f"--sampler {request.sampler!r}: expected one of: {', '.join(SAMPLERS)}")
    SAMPLERS[request.sampler](request.seed)  # a missing package
    if isinstance(request.pruner, str):
        make_pruner(request.pruner, 2)
    check_storage(resolve_storage(request.storage))


# --- storage ----------------------------------------------------------------------------------------------------

def resolve_storage(url: str | None) -> str:
    return url or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def open_storage(url: str, heartbeat_interval: int = 10, grace_period: int | None = None,
                 stale_trial_callback: Callable | None = None) -> optuna.storages.BaseStorage:
    """A URL (sqlite:///, postgresql://, mysql://) is an RDB storage with heartbeats, so a killed worker's trial is
    failed by the others; anything else is a journal file path."""
    if "://" not in url:
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_journal(path)  # a record torn by a power loss
        backend = optuna.storages.journal.JournalFileBackend(str(path))
        return optuna.storages.JournalStorage(backend)
    if url.startswith(("postgresql://", "postgresql+psycopg://")):  # SQLAlchemy 2.1's default driver: psycopg 3
        _require("psycopg", "a postgresql:// storage needs the psycopg driver (pip install 'psycopg[binary]')")
    for attempt in range(SCHEMA_RACE_TRIES):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=_engine_kwargs(url),
                    heartbeat_interval=heartbeat_interval, grace_period=grace_period or 3 * heartbeat_interval,
                    heartbeat_stale_trial_callback=stale_trial_callback)
            except Exception as exc:  # SQLAlchemy reports an unreachable server with several exception types
                if "sqlalchemy" not in type(exc).__module__:
                    raise
                # Workers started together on an empty database all create Optuna's tables; all but one collide
                # (PostgreSQL: a unique violation on the catalog). The tables exist by then: open it again.
                if type(exc).__name__ == "IntegrityError" and attempt + 1 < SCHEMA_RACE_TRIES:
                    time.sleep(0.5 * (attempt + 1))
                    continue
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UserError(f"cannot open Optuna storage {mask_password(url)}: {reason}") from None
    raise AssertionError("unreachable: the last try returns or raises")


def _engine_kwargs(url: str) -> dict[str, Any] | None:
    """Connections checked before use (a server restarted under a long study), and a connect timeout, so a
    database host that stops answering fails a worker in seconds rather than at the TCP timeout."""
    if url.startswith("sqlite"):
        return None
    timeout = {"connect_timeout": 10} if url.startswith(("postgresql", "mysql")) else {}
    return {"pool_pre_ping": True, **({"connect_args": timeout} if timeout else {})}


class StaleTrialHandler:
    """A trial whose worker is gone: close its MLflow run, then queue it again with the same parameters and slot
    (at most `max_retry` times per configuration). Called by the RDB storage for a trial without heartbeats (FAIL),
    and by `recover_dead_trials` for one whose worker died on this host (KILLED)."""

    def __init__(self, max_retry: int, say: Callable[[str], None] = lambda message: None):
        self.max_retry, self.say = max_retry, say

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.handle(study, trial, "FAIL", "worker stopped sending heartbeats (killed or lost)")

    def dead(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.handle(study, trial, "KILLED", trial.system_attrs.get(STOPPED_ATTR, "its worker died"))

    def handle(self, study: optuna.Study, trial: FrozenTrial, state: str, note: str) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id and StudyTracker.run_exists(run_id):
            StudyTracker.close_run(run_id, state, note)
        retry = retry_trial(study, trial, self.max_retry) if self.max_retry > 0 else None
        again = f"; its configuration is queued again as trial {retry.number}" if retry else ""
        self.say(f"trial {trial.number} failed: {note}{again}")


class RecoverDeadTrials:
    """After each trial: fail the trials of workers that died on this host meanwhile (a journal storage has no
    heartbeats), so another local worker redoes them in this run."""

    def __init__(self, handler: StaleTrialHandler, ownerless_grace_s: float | None):
        self.handler, self.ownerless_grace_s = handler, ownerless_grace_s

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        recover_dead_trials(study, self.handler.dead, self.ownerless_grace_s)


# --- the engine -------------------------------------------------------------------------------------------------

class OptunaSuggest:
    """The only calls of trial.suggest_* in the code base."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial

    def float(self, name, low, high, log, step):
        return self.trial.suggest_float(name, low, high, log=log, step=step)

    def int(self, name, low, high, log, step):
        return self.trial.suggest_int(name, low, high, step=step, log=log)

    def categorical(self, name, choices):
        return self.trial.suggest_categorical(name, list(choices))


class OptunaReporter:
    def __init__(self, trial: optuna.Trial):
        self.trial = trial

    def report(self, step: int, value: float) -> None:
        if not math.isfinite(value):
            return
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (value {value:.4f})")


def make_objective(ctx: TuningContext, tracker: StudyTracker, max_retry: int) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        frozen = stored_trial(trial)
        tags = {"slot": str(frozen.system_attrs.get(SLOT_ATTR, ""))}
        if "failed_trial" in frozen.system_attrs:
            tags["retry_of"] = str(frozen.system_attrs["failed_trial"])
        run_id = tracker.start_trial(trial.number, tags)
        trial.set_user_attr("mlflow_run_id", run_id)
        try:
            with tracker.closing_on_failure(run_id):
                params = ctx.space.sample(OptunaSuggest(trial), ctx.base.train)
                _, strength, overrides = trial_config(ctx, params)
                trial.set_user_attr("params", params)  # fixed ones too: trial.params has only the searched
                trial.set_user_attr("config_overrides", overrides)
                trial.set_user_attr("augment_strength", strength)
                tracker.log_params(run_id, params)
                return evaluate(ctx, params, OptunaReporter(trial), tracker, run_id, f"trial {trial.number}:")
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: Optuna fails the trial; the next run redoes its configuration
            if max_retry > 0:
                retry_trial(trial.study, stored_trial(trial), max_retry)
            raise

    return objective


class MlflowTrialCallback:
    """Our Optuna callback (optuna_integration.MLflowCallback is deprecated and flattens nesting): after every trial
    this process ran, record params, value and state on the trial's nested run and the study's progress on the
    parent run."""

    def __init__(self, tracker: StudyTracker, metric: str, say: Callable[[str], None],
                 done: Callable[[str], None] = lambda note: None):
        self.tracker, self.metric, self.say, self.done = tracker, metric, say, done  # done: the progress display

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id") or self.tracker.start_trial(trial.number)
        params = {**trial.user_attrs.get("params", {}), **trial.params}
        state = trial.state.name
        note = ""
        if trial.state == TrialState.PRUNED:
            note = f"pruned at step {trial.last_step}"
            self.tracker.log_metrics(run_id, {"pruned_at_step": trial.last_step or 0})
        value = trial.value if trial.state == TrialState.COMPLETE else None
        self.tracker.finish_trial(run_id, state, value, params, self.metric, note)
        counts, best = study_progress(study)
        self.tracker.log_study_progress(counts, best.value if best else None, best.number if best else None)
        shown = f"{self.metric} {value:.4f}" if value is not None else note or state.lower()
        best_text = f"; best {best.value:.4f} (trial {best.number})" if best else ""
        self.say(f"trial {trial.number} {state.lower()}: {shown}{best_text}")
        self.done(f"trial {trial.number} {state.lower()}")


def study_progress(study: optuna.Study) -> tuple[dict[str, int], FrozenTrial | None]:
    trials = study.get_trials(deepcopy=False)
    counts = {state.name: sum(t.state == state for t in trials)
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = None
    if complete:
        best = (max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min)(
            complete, key=lambda t: t.value)
    return counts, best


def run_optuna(request: TuneRequest, ctx: TuningContext, runs: StudyRuns, say: Callable[[str], None]) -> TuneOutcome:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = resolve_storage(request.storage)
    if request.sampler not in SAMPLERS:
        raise UserError(f"--sampler {request.sampler!r}: expected one of: {', '.join(SAMPLERS)}")
    SAMPLERS[request.sampler](request.seed)  # fail on a missing package before any work
    pruner = (make_pruner(request.pruner, ctx.max_steps, ctx.warmup_steps) if isinstance(request.pruner, str)
              else request.pruner)
    pruner_name = (pruner_label(request.pruner, ctx.warmup_steps) if isinstance(request.pruner, str)
                   else type(request.pruner).__name__)
    handler = StaleTrialHandler(request.max_retry, say)
    storage = open_storage(url, request.heartbeat_interval, request.grace_period, handler)
    name = request.name
    # Each trial draws from a sampler seeded by (seed, its slot): a resumed study draws what an uninterrupted one
    # would, and a second worker's trial, which takes the next free slot, draws something else.
    study, founder = open_study(name, storage, ctx.direction, pruner,
                                SlotSeededSampler(SAMPLERS[request.sampler], request.seed))
    identity = _check_identity(study, request, ctx, url)
    name_objective(study, ctx.metric)
    # Heartbeats (RDB) judge workers on any host; without them, a trial that never recorded its worker is judged
    # by its age.
    ownerless_grace = None if heartbeat_enabled(storage) else OWNERLESS_GRACE_S
    recover_dead_trials(study, handler.dead, ownerless_grace, wait=True)
    finished = sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))
    remaining = request.trials - finished
    say(f"study {name!r} in {mask_password(url)}: {finished} finished trial(s), "
        f"{max(0, remaining)} to run (target {request.trials})")

    tags = study_tags(request, ctx, url, request.sampler, pruner_name)
    existing = study.user_attrs.get("mlflow_run_id")
    if existing is None and not founder:  # workers started together: the one that created the study opens its run
        existing = wait_for_study_run(study, say)
    if existing and not StudyTracker.run_exists(existing):  # the study was tracked in another MLflow store
        existing = None
    existing = existing or StudyTracker.find_study_run(runs.experiment_id, name, "optuna")
    error: BaseException | None = None
    with work_dir() as tmp:
        tracker = runs.open(existing, name, tags, ctx, Path(tmp))
        if study.user_attrs.get("mlflow_run_id") != tracker.study_run_id:
            study.set_user_attr("mlflow_run_id", tracker.study_run_id)
        try:
            close_left_trial_runs(study, tracker, ctx.metric)
            if remaining > 0:
                display = progress.current()
                with display.level("trials", remaining) as trials:
                    callbacks = [MlflowTrialCallback(tracker, ctx.metric, say, lambda note: display.advance(trials,
                                                                                                          note)),
                                 RecoverDeadTrials(handler, ownerless_grace),
                                 optuna.study.MaxTrialsCallback(request.trials, states=FINISHED)]
                    # no gc_after_trial: every fold ends with clear_session(free_memory=True), a gc.collect included
                    study.optimize(make_objective(ctx, tracker, request.max_retry), n_trials=remaining,
                                   timeout=request.timeout, callbacks=callbacks)
                _fail_stale(study, storage)
                recover_dead_trials(study, handler.dead, ownerless_grace)  # one that died during our last trial
                if request.timeout is None:  # --timeout: no trial starts after it
                    redo_queued_retries(study, make_objective(ctx, tracker, request.max_retry),
                                        [MlflowTrialCallback(tracker, ctx.metric, say),
                                         RecoverDeadTrials(handler, ownerless_grace)])
            write_study_artifacts(study, tracker, Path(tmp) / "study", ctx, identity, url)
        except BaseException as exc:
            error = exc
            raise
        finally:
            StudyRuns.close(error)
    counts, best = study_progress(study)
    say(f"study {name!r}: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed; "
        + (f"best {ctx.metric} {best.value:.4f} (trial {best.number})" if best else "no complete trial"))
    return TuneOutcome(name, mask_password(url), tracker.study_run_id, best.value if best else None,
                       dict(best.user_attrs.get("params", best.params)) if best else {},
                       best.number if best else None, counts, runs.uri)


def name_objective(study: optuna.Study, metric: str) -> None:
    """Name the study's objective as trial runs name their value (`cv/f1_macro_mean`): optuna-dashboard and
    trials.csv show it instead of "Objective 0"."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if study.metric_names != [f"cv/{metric}_mean"]:
            study.set_metric_names([f"cv/{metric}_mean"])


def redo_queued_retries(study: optuna.Study, objective: Callable[[optuna.Trial], float],
                        callbacks: list[Callable]) -> None:
    """A trial whose worker died is queued again (WAITING, same parameters and slot). When the others reach the
    target meanwhile (one started a new trial before the death was seen), the queued one would be left undone: run
    it here, one at a time, so every configuration is finished or redone and no trial is left waiting. The study
    then has a trial more than --trials."""
    while any(FAILED_TRIAL in t.system_attrs for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))):
        study.optimize(objective, n_trials=1, callbacks=callbacks)


def open_study(name: str, storage: optuna.storages.BaseStorage, direction: str, pruner: optuna.pruners.BasePruner,
               sampler: optuna.samplers.BaseSampler) -> tuple[optuna.Study, bool]:
    """The study, and whether this worker created it. Exactly one worker does, on whichever machine (the storage
    refuses a second study of one name), and only that one opens the study's MLflow run: workers started at the
    same moment would otherwise each open their own and split the trials between two parent runs."""
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction=direction, pruner=pruner,
                                    sampler=sampler)
        study.set_user_attr(OPENER_ATTR, this_owner())
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.create_study(study_name=name, storage=storage, direction=direction, pruner=pruner,
                                   sampler=sampler, load_if_exists=True), False


def wait_for_study_run(study: optuna.Study, say: Callable[[str], None],
                       timeout_s: float = STUDY_RUN_WAIT_S) -> str | None:
    """The study's MLflow run id once the worker that created the study has recorded it; None at once when no
    worker is known to be opening it (a study made before this was recorded) or that worker is dead on this host,
    else after `timeout_s` (it died elsewhere): then this worker finds or opens the run itself."""
    deadline = time.monotonic() + timeout_s
    said = False
    while time.monotonic() < deadline:
        attrs = study.user_attrs
        if attrs.get("mlflow_run_id"):
            return attrs["mlflow_run_id"]
        opener = attrs.get(OPENER_ATTR)
        if opener is None or owner_is_dead(opener):
            return None
        if not said:
            say(f"study {study.study_name!r}: waiting for the worker that created it to open its MLflow run")
            said = True
        time.sleep(0.5)
    return None


def close_left_trial_runs(study: optuna.Study, tracker: StudyTracker, metric: str) -> None:
    """Trial runs a killed worker left RUNNING under the study's run: one whose trial finished (killed after
    Optuna recorded it) gets its outcome and FINISHED; any other whose trial is not running (killed before or
    while it ran, or before the trial recorded the run) is closed KILLED. So the study run ends with exactly one
    FINISHED trial run per finished trial."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for run in tracker.open_trial_runs():
        number = int(run.data.tags.get("trial", -1))
        trial = trials.get(number)
        if trial is not None and trial.state in (TrialState.RUNNING, TrialState.WAITING):
            continue  # a live worker's, or judged by heartbeats
        if trial is not None and trial.state in FINISHED and trial.user_attrs.get("mlflow_run_id") == run.info.run_id:
            params = {**trial.user_attrs.get("params", {}), **trial.params}
            value = trial.value if trial.state == TrialState.COMPLETE else None
            tracker.finish_trial(run.info.run_id, trial.state.name, value, params, metric,
                                 "recorded after its worker was killed")
        else:
            tracker.mark_trial(run.info.run_id, "KILLED", "its worker was killed")


def _fail_stale(study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
    """Optuna fails stale trials when a trial starts; check once more at the end, so a worker that died during this
    worker's last trial is not left RUNNING."""
    if heartbeat_enabled(storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


def _check_identity(study: optuna.Study, request: TuneRequest, ctx: TuningContext, url: str) -> dict[str, Any]:
    identity = {"stage": request.stage, "backbone": ctx.base.train.backbone, "task": ctx.task,
                "metric": ctx.metric, "folds": request.folds, "image_size": ctx.base.data.image_size,
                "data": ctx.task_data.description, "weights": ctx.base.train.weights, "engine": "optuna"}
    old = study.user_attrs
    for key in IDENTITY:
        if key in old and old[key] != identity[key]:
            raise UserError(f"study {request.name!r} in {mask_password(url)} was made with {key} {old[key]!r}; this "
                            f"command has {identity[key]!r}. Use the same settings to resume, or another --study-name")
    for key, value in identity.items():
        if old.get(key) != value:
            study.set_user_attr(key, value)
    if old.get("space_digest") not in (None, ctx.space.digest):
        ctx.say(f"note: the search space changed since this study started ({ctx.space.path}); earlier trials keep "
                "their values")
    study.set_user_attr("space_digest", ctx.space.digest)
    return identity


def best_trial_of(name: str, storage: str | None) -> tuple[FrozenTrial, dict[str, Any], str]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = resolve_storage(storage)
    if "://" not in url and not Path(url.removeprefix("journal:")).is_file():
        raise UserError(f"--params-from-study {name}: Optuna storage not found: {url} (pass --storage)")
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        known = optuna.get_all_study_names(open_storage(url))
        raise UserError(f"--params-from-study {name}: no such study in {mask_password(url)}. "
                        f"Expected one of: {', '.join(known) or '(none)'}") from None
    _, best = study_progress(study)
    if best is None:
        raise UserError(f"--params-from-study {name}: the study has no complete trial yet")
    return best, dict(study.user_attrs), url
