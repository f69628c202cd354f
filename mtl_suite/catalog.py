"""The one typed source of truth for stages, tasks and run kinds: the CLI, tuning, compare, report and the tests read
them from here. Adding a stage is one `StagePlan` entry (plus its training specifics in training/stages.py); the
enums are `StrEnum`s, so a member is its own string in MLflow tags, YAML and comparisons.

Kept free of heavy imports: the CLI builds its choices and help from this module at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import yaml

from mtl_suite.config import ExperimentConfig
from mtl_suite.errors import UserError


# yaml.safe_dump refuses str subclasses; the catalog's members are written as the plain strings they are.
yaml.SafeDumper.add_multi_representer(StrEnum, lambda dumper, member: dumper.represent_str(str(member)))


class Stage(StrEnum):
    STAGE1 = "stage1"
    STAGE2 = "stage2"
    STAGE3 = "stage3"
    CLASSICAL = "classical"


class Task(StrEnum):
    BINARY = "binary"  # normal vs leukemia (smears) or normal vs blast (cells)
    MULTICLASS = "multiclass"  # the data's own classes


class StageData(StrEnum):
    """What a stage trains on."""

    SOURCE = "source"  # stage 1: ImageNet only, or an optional source dataset
    CELLS = "cells"  # single-cell crops or a single-cell dataset
    SMEARS = "smears"  # multi-cell smear fields


class RunKind(StrEnum):
    """The `run_kind` tag of every run the suite makes."""

    STAGE = "stage"
    FOLD = "fold"
    STUDY = "study"
    TRIAL = "trial"
    COMPARISON = "comparison"
    SEGMENTATION = "segmentation"  # `mtl-suite segment train|evaluate`
    REPORT = "report"  # `mlflow run . -e report`: the run MLflow made holds the report
    PROMOTION = "promotion"  # `mlflow run . -e promote`: the run MLflow made names the version it registered
    EVALUATION = "evaluation"  # `mtl-suite evaluate`: a model's metrics on a labelled dataset, linked to the model
    RECIPE = "recipe"  # `mtl-suite train RECIPE`: which runs the recipe made, the final one and the version registered
    SEAL = "seal"  # `mtl-suite data seal`: a set of images sealed as a final test, in SEAL_EXPERIMENT
    ASSESSMENT = "assessment"  # `mtl-suite assess RECIPE`: the recipe trained afresh on N outer splits, its headlines


class LookTag(StrEnum):
    """The ledger of looks at test parts (data/looks.py; MLflow I/O in tracking/looks.py): the tags of every run that
    scores a set of labelled images (a final-stage run its outer test part, `evaluate` its DATA), set once the images
    are scored. Searched across every experiment of the store, so a look is counted wherever it was made."""

    PART = "test_part_digest"  # sha256 over the sorted distinct content digests of the images scored
    IMAGES = "test_part_images"  # how many distinct images that is
    MODEL = "test_part_model"  # which configuration scored them: runs with the same value are one configuration
    CONFIGURATION = "test_part_configuration"  # the same, in words, for a reader of the ledger
    EARLIER = "test_part_earlier_configurations"  # other configurations that had scored these images before the run
    SEALED = "sealed_set"  # an evaluation that scored images of a sealed set: the seal's name
    SEALED_CONFIGURATIONS = "sealed_set_configurations"  # configurations that have scored that set, this one included


class SealTag(StrEnum):
    """The tags of a seal run (`RunKind.SEAL`); its `seal/digests.txt` lists the sealed images' content digests."""

    NAME = "seal_name"
    PART = "seal_digest"  # as LookTag.PART: an evaluation of exactly these images carries the same digest
    IMAGES = "seal_images"


SEAL_EXPERIMENT = "mtl-suite-seals"  # one experiment for the store's seals, whatever experiment the work is in


class Arm(StrEnum):
    """The two sides of a CTL-vs-MTL comparison."""

    CTL = "ctl"
    MTL = "mtl"


@dataclass(frozen=True)
class StagePlan:
    stage: Stage
    previous: Stage | None  # the stage whose backbone this one starts from; None: ImageNet
    head: str  # a name in models/heads.py
    data: StageData
    description: str  # one line, printed when the run starts
    help: str  # the CLI command's help
    label: str  # how reports name the configuration
    tunable: bool = False
    arm: Arm | None = None  # the comparison arm whose result this stage is
    fixed_task: Task | None = None  # a stage that always trains the same task (stage 2: blast vs normal)

    @property
    def name(self) -> str:
        return str(self.stage)

    @property
    def starts_another(self) -> bool:
        """Whether a later stage starts from this stage's backbone."""
        return any(plan.previous is self.stage for plan in STAGES.values())

    def task_for(self, requested: Task | str) -> Task:
        """The task this stage trains when the user asked for `requested` (stage 2 is binary whatever is asked)."""
        return self.fixed_task or Task(requested)

    def run_task(self, requested: Task | str, has_source: bool = False) -> str:
        """The `task` tag of this stage's run: stage 1 has no smear task, it is ImageNet or a source dataset."""
        if self.data is StageData.SOURCE:
            return "source" if has_source else "imagenet"
        return str(self.task_for(requested))


STAGES: dict[Stage, StagePlan] = {plan.stage: plan for plan in [
    StagePlan(Stage.STAGE1, None, "gap_softmax", StageData.SOURCE, "ImageNet weights W0 -> W1",
              "Stage 1: ImageNet weights W0 -> W1 (GAP + softmax head; fine-tuned only if --source is given).",
              "stage 1 (ImageNet)"),
    StagePlan(Stage.STAGE2, Stage.STAGE1, "dense_dropout", StageData.CELLS, "single cells, blast vs normal: W1 -> W2",
              "Stage 2: W1 -> W2 on single cells, blast vs normal (crops of the smears' training images, or --cells).",
              "stage 2 (2 transfers)", tunable=True, fixed_task=Task.BINARY),
    StagePlan(Stage.STAGE3, Stage.STAGE2, "dense_dropout", StageData.SMEARS, "multi-cell smear fields: W2 -> W3",
              "Stage 3: W2 -> W3 on multi-cell smears (--task binary|multiclass). Runs missing stages first.",
              "MTL (3 transfers)", tunable=True, arm=Arm.MTL),
    StagePlan(Stage.CLASSICAL, None, "dense_dropout", StageData.SMEARS, "classical TL: ImageNet -> smear task (baseline)",
              "Classical transfer learning baseline: ImageNet -> the stage-3 task directly, same head and budget.",
              "CTL (1 transfer)", tunable=True, arm=Arm.CTL),
]}


def get_stage(name: Stage | str) -> StagePlan:
    try:
        return STAGES[Stage(name)]
    except ValueError:
        raise UserError(f"unknown stage {name!r}. Expected one of: {', '.join(STAGES)}") from None


def chain(stage: Stage | str) -> tuple[StagePlan, ...]:
    """The stages a run of `stage` stands on, first to last: chain(stage3) = (stage1, stage2, stage3)."""
    plan = get_stage(stage)
    earlier = chain(plan.previous) if plan.previous else ()
    return (*earlier, plan)


def arm_stage(arm: Arm) -> StagePlan:
    """The stage whose runs are the comparison arm's result (CTL: classical; MTL: stage3)."""
    return next(plan for plan in STAGES.values() if plan.arm is arm)


TUNABLE_STAGES: tuple[Stage, ...] = tuple(plan.stage for plan in STAGES.values() if plan.tunable)
ARM_STAGES: tuple[Stage, ...] = tuple(plan.stage for plan in STAGES.values() if plan.arm)


# --- a comparison's request and pairs: shared by workflows/compare.py (which runs them) and
# analysis/comparison_report.py (which renders them) -----------------------------------------------------------------

@dataclass(frozen=True)
class UnitSharing:
    """Where a heavy command's units (tuning/units.py) are shared by every worker running the same command."""

    storage: str | None = None  # an Optuna storage URL or journal file; None: this process alone runs every unit
    heartbeat_interval: int = 10  # RDB storages: seconds between a worker's heartbeats
    grace_period: int | None = None  # a claim without heartbeat this long is a dead worker's (None: 3 heartbeats)
    max_retry: int = 3  # times a unit whose worker died is run again


@dataclass(frozen=True)
class CompareRequest:
    config: ExperimentConfig  # base config; pair i uses seeds base + i
    task: str
    runs: int
    normal_class: str | None = None
    cells: str | None = None
    report_dir: Path = Path("reports")
    command: str = ""
    study: str | None = None
    quiet: bool = False
    segmentation: str | None = None  # stage 2's cell segmentation, fixed at the start (stage.pinned_segmentation)
    config_file: Path | None = None  # the experiment file --config named (copied beside the report), None: none
    sharing: UnitSharing = UnitSharing()  # where the pairs' units are shared by workers (default: in memory, alone)


@dataclass
class Pair:
    index: int
    seed: int
    data_seed: int
    runs: dict[str, str] = field(default_factory=dict)  # stage -> finished run id
    failures: list[str] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # arm -> metric -> value
    checks: dict[str, dict[str, float]] = field(default_factory=dict)  # arm -> comparison_report.CHECKS -> value
    class_names: tuple[str, ...] = ()  # as the CTL run logged them (the report's label line)
    split_digest: str = ""
    test_train_ratio: float | None = None
    excluded: str = ""  # why the pair is left out of the statistics ("" = used)
    seconds: dict[str, float] = field(default_factory=dict)  # arm -> wall time of its runs (MTL: stages 1-3)


# --- units of work: a heavy command's parts, shared by any number of workers (tuning/units.py claims them through
# the Optuna storage; workflows/compare.py runs a comparison's) ------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    """One claimable part of a command's work. A unit's place in its command's list is its identity in the storage,
    so a command only ever appends units (a comparison's report first, then pair by pair)."""

    key: str  # unique within the command: "pair0/mtl/stage2"
    group: int  # the pair (an assessment's split, a recipe's member): -1 for the whole command's units
    step: str  # what it runs: a stage name, or REPORT_STEP; units of one step take about as long (the time left)
    after: tuple[str, ...] = ()  # units that must be settled first; a failed one blocks this one
    despite_failures: bool = False  # runs once `after` are settled, whatever their outcome (the report)
    every_round: bool = False  # done again by every new command on the same work (the report of more pairs)


REPORT_STEP = "report"


def comparison_units(runs: int) -> list[Unit]:
    """The report, then per pair the CTL arm and the MTL chain (stage 3 waits for stage 2, stage 2 for stage 1): the
    two arms of a pair run side by side, and every pair beside every other."""
    units: list[Unit] = []
    for index in range(runs):
        units.append(Unit(comparison_unit_key(index, Arm.CTL, arm_stage(Arm.CTL).stage), index,
                          arm_stage(Arm.CTL).name))
        previous: tuple[str, ...] = ()
        for plan in chain(arm_stage(Arm.MTL).stage):
            key = comparison_unit_key(index, Arm.MTL, plan.stage)
            units.append(Unit(key, index, plan.name, after=previous))
            previous = (key,)
    report = Unit(REPORT_STEP, -1, REPORT_STEP, after=tuple(u.key for u in units), despite_failures=True,
                  every_round=True)
    return [report, *units]


def comparison_unit_key(index: int, arm: Arm, stage: Stage) -> str:
    return f"pair{index}/{arm}/{stage}"


ENSEMBLE_STEP = "ensemble"


def member_stages(stage: Stage | str, member: int) -> tuple[StagePlan, ...]:
    """The stages a recipe's member trains itself, as `train` runs them: the first member its whole chain, every
    other member only the final stage, started from the first member's stage before it (the run `train`'s later
    members find as their parent)."""
    plans = chain(stage)
    return plans if member == 0 else plans[-1:]


def shared_stage(stage: Stage | str) -> StagePlan | None:
    """The first member's stage that every later member's final stage starts from (None: a one-stage recipe)."""
    plans = chain(stage)
    return plans[-2] if len(plans) > 1 else None


def recipe_units(members: int, stage: Stage | str, group: int = 0, prefix: str = "") -> tuple[list[Unit], str]:
    """One recipe trained as `train` runs it, as units keyed `<prefix>m1/stage2`...: each member's stages
    (member_stages: a stage waits for the one before it, a later member's final stage for the first member's stage
    before it) and, with several members, their ensemble (`<prefix>ensemble`, waiting for every member's final
    stage). Returns the units and the key of the final one (the ensemble, or the only member's final stage)."""
    units: list[Unit] = []
    ends: list[str] = []
    before_final = shared_stage(stage)
    shared = (recipe_unit_key(0, before_final.stage, prefix),) if before_final else ()
    for member in range(members):
        previous: tuple[str, ...] = shared if member else ()
        for plan in member_stages(stage, member):
            key = recipe_unit_key(member, plan.stage, prefix)
            units.append(Unit(key, group, plan.name, after=previous))
            previous = (key,)
        ends.extend(previous)
    if members == 1:
        return units, ends[0]
    final = recipe_unit_key(None, stage, prefix)
    units.append(Unit(final, group, ENSEMBLE_STEP, after=tuple(ends)))
    return units, final


def recipe_unit_key(member: int | None, stage: Stage | str, prefix: str = "") -> str:
    """'m1/stage2' (member index 0 is m1), or 'ensemble' (member None), after `prefix`."""
    return prefix + (ENSEMBLE_STEP if member is None else f"m{member + 1}/{Stage(stage)}")


def unit_member(key: str) -> int | None:
    """The member index of a recipe unit's key ('split1000/m2/stage3' and 'm2/stage3': 1), None for an ensemble."""
    part = key.split("/")[-2] if "/" in key else key
    return int(part.removeprefix("m")) - 1 if part.startswith("m") and part[1:].isdigit() else None


PROMOTE_STEP = "promote"


def training_units(members: int, stage: Stage | str) -> list[Unit]:
    """`train` of a recipe shared by workers: the promotion of the final run (and the recipe run that records it),
    done again by every new command on the same work as a rerun of `train` promotes again, then the recipe's units
    (recipe_units). Members run side by side once the first member's shared stage is done."""
    units, final = recipe_units(members, stage)
    return [Unit(PROMOTE_STEP, -1, PROMOTE_STEP, after=(final,), every_round=True), *units]


def assessment_units(seeds: tuple[int, ...] | list[int], members: int, stage: Stage | str) -> list[Unit]:
    """The report, then per outer split (its data seed) the recipe's units (recipe_units, keyed `split<seed>/...`);
    the report waits for every split's final unit. Members of a split, and splits, run side by side."""
    units: list[Unit] = []
    finals: list[str] = []
    for index, seed in enumerate(seeds):
        split_units, final = recipe_units(members, stage, index, f"split{seed}/")
        units.extend(split_units)
        finals.append(final)
    report = Unit(REPORT_STEP, -1, REPORT_STEP, after=tuple(finals), every_round=True)
    return [report, *units]


def assessment_unit_key(seed: int, member: int | None, stage: Stage | str) -> str:
    """'split1000/m1/stage2' (member index 0 is m1), or 'split1000/ensemble' (member None)."""
    return recipe_unit_key(member, stage, f"split{seed}/")
