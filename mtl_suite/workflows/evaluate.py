"""`mtl-suite evaluate`: a registered or logged model's stage metrics on any labelled dataset (an external test set
from another lab, say), recorded as one MLflow evaluation run linked to the model.

Everything that can be wrong with the input is found before the run opens (no FAILED run is left for a typo): the
data path, the model URI, the dataset's layout and images, the mapping of its labels onto the model's classes, and
the predictions themselves. Only then is the run opened, and it holds finished results."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from mtl_suite.analysis.evaluation import Scored, score, write_evaluation_files
from mtl_suite.analysis.external import expected_class_scores, external_line
from mtl_suite.catalog import RunKind, Task
from mtl_suite.config import DEFAULT_EXPERIMENT
from mtl_suite.data import resolve_data_path
from mtl_suite.data.looks import Look, earlier_text, model_key, part_digest
from mtl_suite.data.manifest import Manifest, build_manifest
from mtl_suite.errors import UserError
from mtl_suite.io_utils import write_text_atomic
from mtl_suite.serving.pyfunc import COLUMN, ImageError, read_file
from mtl_suite.tasks import POSITIVE_NAME, class_map_for
from mtl_suite.tracking.evaluation import EvaluatedModel, load_model, log_evaluation
from mtl_suite.tracking.looks import earlier_configurations, run_model_key
from mtl_suite.tracking.reachability import check_tracking_uri
from mtl_suite.tracking.runs import git_commit
from mtl_suite.tracking.setup import resolve_tracking_uri, take_launcher_run, use_tracking
from mtl_suite.training.conformal import DEFAULT_COVERAGE, check_coverage, set_metrics
from mtl_suite.workflows.looks import SealedLook, sealed_look

NORMAL = "normal"  # a binary model's negative class (tasks.py: ordered_classes)
Progress = Callable[[int], Callable[[int], None] | None]  # total images -> a report(done) callback, or None


@dataclass(frozen=True)
class EvaluateRequest:
    model_uri: str
    data: str | None = None  # None: the bundled sample
    layout: str = "auto"
    allow_outside_root: bool = False
    on_bad_image: str = "fail"
    normal_class: str | None = None  # binary model: this data class is normal, every other one the positive class
    batch_size: int = 32
    tracking_uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    output: str | None = None  # a JSON file for the metrics
    expect: str | None = None  # every image under `data` is of this class (another lab's normal smears, say)
    coverage: float = DEFAULT_COVERAGE  # of the prediction sets
    again: bool = False  # score a sealed set another configuration has scored (a recorded further look)


@dataclass(frozen=True)
class EvaluateOutcome:
    run_id: str
    tracking_uri: str
    experiment_id: str
    model: EvaluatedModel
    scored: Scored
    output: Path | None
    expected: str | None = None  # the model class every image was expected to be (--expect)
    reliability: dict[str, float] | None = None  # flags and sets; with --expect the expected-class shares
    earlier: int = 0  # other configurations that had scored these images before this run (the ledger's count)
    sealed: SealedLook | None = None  # the look at a sealed set this was

    def summary(self) -> str:
        """How often these images had been looked at (and the sealed set's count), then the figures' line:
        `evaluate: accuracy 0.954 (523/548; 95% CI 0.93-0.97; majority class 0.31), macro-F1 0.95; 1.1% flagged,
        accuracy on the rest 0.960; run <id> in <uri>`; with --expect, the expected-class line instead."""
        looks = f"evaluate: {earlier_text(self.earlier, 'these images')}"
        looks += f"; {self.sealed.text()}" if self.sealed else ""
        return f"{looks}\n{self._figures()}"

    def _figures(self) -> str:
        if self.expected is not None and self.reliability is not None and "flagged_share" in self.reliability:
            head = external_line("evaluate", self.expected, self.reliability)
        elif self.expected is not None:
            head = (f"evaluate ({self.scored.context.n} images, all {self.expected}): "
                    f"{self.scored.metrics['accuracy']:.1%} called {self.expected} (no detector in this model)")
        else:
            head = (f"evaluate: accuracy {self.scored.context.text()}, macro-F1 {self.scored.metrics['f1_macro']:.2f}"
                    + _flag_text(self.reliability))
        return f"{head}; run {self.run_id} in {self.tracking_uri}"


def _flag_text(reliability: dict[str, float] | None) -> str:
    if not reliability or "flagged_share" not in reliability:
        return ""
    rest = reliability.get("unflagged_accuracy")
    return (f"; {reliability['flagged_share']:.1%} flagged as unlike the training images"
            + (f", accuracy on the rest {rest:.3f}" if rest is not None else ""))


def evaluate(request: EvaluateRequest, say: Callable[[str], None] = print,
             progress: Progress | None = None) -> EvaluateOutcome:
    uri = resolve_tracking_uri(request.tracking_uri)
    root = resolve_data_path(request.data)
    if not root.exists():
        raise UserError(f"DATA: no such file or folder. Received: {str(root)!r}")
    output = _check_output(request.output)
    if request.batch_size < 1:
        raise UserError(f"--batch-size: expected 1 or more. Received: {request.batch_size}")
    check_coverage(request.coverage)
    model = load_model(request.model_uri, uri)
    say(f"model {request.model_uri}: classes {', '.join(model.class_names)} ({model.kind}, {model.image_size} px)")
    manifest = build_manifest(root, request.layout, on_bad_image=request.on_bad_image,
                              allow_outside_root=request.allow_outside_root, one_class=request.expect)
    mapping = label_map(manifest.classes, model.class_names, request.normal_class, model.uri)
    entries = manifest.entries
    check_tracking_uri(uri)  # the ledger and the seals are read before anything is scored
    look = look_of(model, [e.sha256 for e in entries])
    sealed = sealed_look([e.sha256 for e in entries], look, request.again)  # a refused second look costs nothing
    earlier = earlier_configurations(look)
    say(f"data {manifest.root} ({manifest.layout}): {len(entries)} images, classes "
        + ", ".join(f"{label} {count}" for label, count in manifest.class_counts.items())
        + (f"; {len(manifest.skipped)} unusable image(s) left out" if manifest.skipped else ""))
    paths = [e.path for e in entries]
    rows = predict_paths(model, paths, request.batch_size, progress(len(paths)) if progress else None,
                         request.coverage)
    proba = np.asarray([[float(p) for p in row] for row in rows["probabilities"]], dtype=np.float64)
    index = {name: k for k, name in enumerate(model.class_names)}
    y_true = np.array([index[mapping[e.label]] for e in entries], dtype=np.int64)
    scored = score(model.class_names, paths, [e.sha256 for e in entries], [e.label for e in entries], y_true, proba)
    expected = mapping[request.expect] if request.expect is not None else None
    reliability = reliability_scores(rows, scored, expected)

    _, experiment_id = use_tracking(uri, request.experiment)
    with tempfile.TemporaryDirectory(prefix="mtl-evaluate-") as tmp:
        folder = write_evaluation_files(scored, Path(tmp) / "eval", f"{model.label} on {Path(manifest.root).name}",
                                        _reliability_columns(rows))
        if manifest.skipped:
            (folder / "skipped_images.tsv").write_text("".join(f"{p}\t{r}\n" for p, r in manifest.skipped))
        tags = _tags(model, manifest, mapping) | ({"expected_class": expected} if expected else {}) | \
            ({"coverage": f"{request.coverage:g}"} if reliability else {}) | look.tags(earlier) | \
            (sealed.tags() if sealed else {})
        run_id = log_evaluation(
            experiment_id, take_launcher_run(experiment_id), f"evaluate-{model.label}", tags,
            {**scored.metrics, **{f"{RELIABILITY_PREFIX}{k}": v for k, v in (reliability or {}).items()}}, folder,
            _dataset_rows(manifest, mapping), manifest.root, f"eval-{manifest.digest[:12]}", model.model_id)
    outcome = EvaluateOutcome(run_id, uri, experiment_id, model, scored, output, expected, reliability, earlier,
                              sealed)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output, json.dumps({"run_id": run_id, "tracking_uri": uri, "model_uri": model.uri,
                                              "data": manifest.root, "dataset_digest": manifest.digest,
                                              **scored.summary(), "expected_class": expected,
                                              "reliability": reliability, "earlier_configurations": earlier,
                                              "sealed_set": sealed.to_json() if sealed else None}, indent=2))
    return outcome


def look_of(model: EvaluatedModel, digests: list[str]) -> Look:
    """This evaluation's look: the images scored, and the configuration (data/looks.py:model_key) that scores them:
    the stage run that made the model, however it is named (a registered version, its logged model, runs:/)."""
    key = run_model_key(model.source_run_id) if model.source_run_id else model_key(None, model.model_id, model.uri)
    run = f" (run {model.source_run_id})" if model.source_run_id and model.source_run_id not in model.uri else ""
    return Look(part_digest(digests), len(set(digests)), key, f"{model.uri}{run}")


RELIABILITY_PREFIX = "reliability/"  # eval/reliability/<share>: the flags and sets (analysis/external.py with --expect)


def reliability_scores(rows: pd.DataFrame, scored: Scored, expected: str | None) -> dict[str, float] | None:
    """The detector's flags and the prediction sets on these images: the share flagged, accuracy on the unflagged
    ones and the sets' coverage; with an expected class, analysis/external.py's shares. None for a model without
    a detector."""
    flags = list(rows["in_distribution"])
    if any(value is None for value in flags):
        return None
    flagged = ~np.asarray(flags, dtype=bool)
    sets = _sets(rows, scored.class_names)
    if expected is not None:
        return expected_class_scores(scored.class_names, expected, scored.y_pred, flagged, sets)
    out = {"flagged_share": float(flagged.mean())}
    if (~flagged).any():
        out["unflagged_accuracy"] = float(np.mean(scored.y_pred[~flagged] == scored.y_true[~flagged]))
    if sets is not None:
        out.update({f"sets/{k}": v for k, v in set_metrics(sets, scored.y_true).items()})
    return out


def _sets(rows: pd.DataFrame, class_names: list[str]) -> np.ndarray | None:
    if any(s is None for s in rows["prediction_set"]):
        return None
    return np.array([[name in set(s) for name in class_names] for s in rows["prediction_set"]], dtype=bool)


def _reliability_columns(rows: pd.DataFrame) -> pd.DataFrame | None:
    """ood_score, in_distribution, prediction_set per image for predictions.csv (None: the model has none)."""
    if any(value is None for value in rows["in_distribution"]):
        return None
    return pd.DataFrame({"ood_score": rows["ood_score"].astype(float), "in_distribution": rows["in_distribution"],
                         "prediction_set": ["|".join(s) if s is not None else "" for s in rows["prediction_set"]]})


def label_map(data_classes: list[str], model_classes: list[str], normal_class: str | None,
              model_uri: str) -> dict[str, str]:
    """Each data label -> the model class it is scored as: the same name, or with `normal_class` (binary models
    only) that class -> normal and every other class -> the model's positive class (tasks.py's binary mapping)."""
    shown = ", ".join(model_classes)
    binary = len(model_classes) == 2 and NORMAL in model_classes
    if normal_class is not None:
        if not binary:
            raise UserError(f"--normal-class maps the data onto a binary model's classes ({NORMAL} and "
                            f"{'/'.join(POSITIVE_NAME.values())}); model {model_uri} has classes {shown}")
        positive = next(c for c in model_classes if c != NORMAL)
        if len(data_classes) == 1:  # one class is enough to score (not to train on, which class_map_for checks)
            return {data_classes[0]: NORMAL if data_classes[0] == normal_class else positive}
        return class_map_for(Task.BINARY, data_classes, normal_class, positive)
    unknown = [c for c in data_classes if c not in model_classes]
    if unknown:
        which = f"label {unknown[0]!r}" if len(unknown) == 1 else f"labels {', '.join(map(repr, unknown))}"
        hint = (f"; pass --normal-class NAME to score the data's NAME as {NORMAL} and every other class as "
                f"{next(c for c in model_classes if c != NORMAL)}") if binary else ""
        raise UserError(f"data {which} not among the classes of model {model_uri} ({shown}){hint}")
    return {c: c for c in data_classes}


def predict_paths(model: EvaluatedModel, paths: list[str], batch_size: int,
                  report: Callable[[int], None] | None = None, coverage: float = DEFAULT_COVERAGE) -> pd.DataFrame:
    """The model's rows (serving/pyfunc.py's columns) for every path, batch by batch through its raw-image interface
    (images read as `predict` reads them, then checked and resized by the model as for `serve`). An image it cannot
    use is a UserError, before any run exists."""
    from mlflow.exceptions import MlflowException

    parts = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        try:
            frame = model.predict(pd.DataFrame({COLUMN: pd.Series([_read(p) for p in chunk], dtype=object)}),
                                  coverage)
        except MlflowException as exc:
            raise UserError(f"{model.uri} could not classify the images from {chunk[0]}: "
                            f"{str(exc).splitlines()[0][:300]}") from None
        for path, error in zip(chunk, frame["error"]):
            if isinstance(error, str):
                raise UserError(f"{path}: {error}")
        parts.append(frame)
        if report:
            report(min(start + batch_size, len(paths)))
    return pd.concat(parts, ignore_index=True)


def _read(path: str) -> np.ndarray:
    """The file read here (the model reads none: see serving/pyfunc.py, PATHS_ENV)."""
    try:
        return read_file(path)
    except ImageError as exc:
        raise UserError(f"{path}: {exc}") from None


def _check_output(output: str | None) -> Path | None:
    if not output:
        return None
    path = Path(output)
    if path.is_dir():
        raise UserError(f"--out: expected a file name for the metrics JSON; {output!r} is a folder")
    return path


def _tags(model: EvaluatedModel, manifest: Manifest, mapping: dict[str, str]) -> dict[str, str]:
    tags = {"run_kind": str(RunKind.EVALUATION), "git_commit": git_commit(), **model.tags(),
            "data": manifest.root[:250], "data_layout": manifest.layout, "dataset_digest": manifest.digest,
            "classes": ",".join(model.class_names)}
    if any(label != target for label, target in mapping.items()):
        tags["label_map"] = ",".join(f"{label}->{target}" for label, target in sorted(mapping.items()))[:500]
    return tags


def _dataset_rows(manifest: Manifest, mapping: dict[str, str]) -> pd.DataFrame:
    """The evaluated images as MLflow's dataset input: one row each, `label` the class it is scored as."""
    return pd.DataFrame({"path": [manifest.relative(e.path) for e in manifest.entries],
                         "data_label": [e.label for e in manifest.entries],
                         "label": [mapping[e.label] for e in manifest.entries],
                         "sha256": [e.sha256 for e in manifest.entries]})
