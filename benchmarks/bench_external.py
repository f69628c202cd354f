"""Right outside the lab (issue 33): for finished final-stage runs, the in-lab figures beside what the model does on
another lab's images of one known class, and what its out-of-distribution detector costs when serving.

Per run:
  - in the lab (the run's own metrics): test accuracy and colour alone's on the same test part, the share of the test
    part flagged and the accuracy on the rest, the 95% and 99% prediction sets' coverage on the test part, and the
    development-side shifts (cross-validation validation images re-stained and magnified 2.5 times);
  - outside it: `mtl-suite evaluate runs:/<run>/model DATA --expect CLASS` (the run's model and its detector as
    served), recorded as an evaluation run in the same store: the share called CLASS, flagged, and called otherwise
    without a flag (with a normal CLASS, the confident leukemia calls). One look per run: never choose on it;
  - serving: the raw-image pyfunc's time per image on test-part images, with and without the detector (single
    images, p50 of --single calls; batches of 32, images/s).

    python benchmarks/bench_external.py --tracking-uri sqlite:////path/mlflow.db RUN [RUN ...] \
        --external ../shared/data/bccd/JPEGImages --expect Benign
    python benchmarks/bench_external.py --quick   # a tiny model on the bundled sample, uniform fields as "external"
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchlib import add_quick, emit, quick_defaults

SAMPLE = Path(__file__).resolve().parents[1] / "mtl_suite" / "assets" / "sample" / "original"
IN_LAB = {"test accuracy": "test/accuracy", "colour alone, test": "shortcut/best/test_accuracy",
          "test flagged": "test/ood/flagged_share", "test accuracy, unflagged": "test/ood/unflagged_accuracy",
          "95% sets: coverage": "test/conformal_95/coverage", "99% sets: coverage": "test/conformal_99/coverage",
          "99% sets: mean size": "test/conformal_99/mean_size",
          "re-stained test accuracy": "robustness/stain_shift_accuracy",
          "re-stained test flagged": "robustness/stain_shift_flagged_share",
          "CV accuracy": "cv/accuracy_mean", "CV re-stained accuracy": "cv/shift/stain_accuracy_mean",
          "CV magnified accuracy": "cv/shift/magnified_accuracy_mean"}
OUTSIDE = {"called the expected class": "called_expected_share", "flagged": "flagged_share",
           "called otherwise, unflagged": "confident_wrong_share", "set holds the class": "set_has_expected_share"}


def quick_run(root: Path) -> tuple[str, Path, str]:
    """A tiny classical run on the bundled sample, and a folder of uniform fields as the 'other lab'."""
    from PIL import Image

    from mtl_suite.config import load_config
    from mtl_suite.workflows.stage import StageRequest, run_stage

    uri = f"sqlite:///{root}/mlflow.db"
    config = load_config(None, {"data.image_size": 32, "data.folds": 2, "train.backbone": "tiny",
                                "train.weights": "none", "train.warmup_epochs": 1, "train.finetune_epochs": 0,
                                "tracking.tracking_uri": uri, "tracking.experiment": "bench-external"})
    outcome = run_stage(StageRequest(stage="classical", config=config, quiet=True), say=lambda m: None)
    folder = root / "uniform"
    folder.mkdir()
    for level in (60, 140, 220):
        Image.fromarray(np.full((240, 320, 3), level, np.uint8)).save(folder / f"uniform-{level}.png")
    return uri, folder, outcome.run_id


def outside(run_id: str, uri: str, data: str, expect: str) -> dict[str, float]:
    from mtl_suite.workflows.evaluate import EvaluateRequest, evaluate

    outcome = evaluate(EvaluateRequest(model_uri=f"runs:/{run_id}/model", data=data, expect=expect,
                                       tracking_uri=uri, experiment="bench-external"), say=lambda m: None)
    print(f"  {outcome.summary()}")
    return {**(outcome.reliability or {}), "evaluation_run": outcome.run_id}


def serving_cost(run_id: str, images: list[np.ndarray], single: int) -> dict[str, float]:
    """ms per single image (p50) and images/s in batches of 32, through the pyfunc's own answers(), with and
    without the detector."""
    import mlflow.keras

    import mtl_suite.models.serializable  # noqa: F401
    from mtl_suite.run_files import KERAS_MODEL, MODEL_INFO, ModelInfo
    from mtl_suite.serving.pyfunc import MtlImageClassifier
    from mtl_suite.tracking.evaluation import run_reliability

    classifier = MtlImageClassifier()
    info = ModelInfo.from_dict(mlflow.artifacts.load_dict(f"runs:/{run_id}/{MODEL_INFO}"), f"run {run_id}")
    model = mlflow.keras.load_model(f"runs:/{run_id}/{KERAS_MODEL}", load_model_kwargs={"safe_mode": True})
    detector = run_reliability(run_id)
    classifier.use(info, model, detector)
    out = {}
    for name, reliability in (("without", None), ("with", detector)):
        classifier.reliability = reliability
        classifier.answers(images[:2], 0.99)  # warm-up: traces the graphs
        times = []
        for k in range(single):
            start = time.perf_counter()
            classifier.answers([images[k % len(images)]], 0.99)
            times.append(time.perf_counter() - start)
        batch = [images[k % len(images)] for k in range(32)]
        start = time.perf_counter()
        classifier.answers(batch, 0.99)
        out[f"ms per image, single, {name} detector"] = 1000 * statistics.median(times)
        out[f"images/s, batches of 32, {name} detector"] = 32 / (time.perf_counter() - start)
    return out


def test_images(run_id: str, n: int) -> list[np.ndarray]:
    """The run's own test-part images (their files), as a served request would carry them."""
    import mlflow

    from mtl_suite.data.images import read_rgb

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="data", dst_path=tmp))
        split = json.loads(next(folder.glob("*.json")).read_text())
        rows = [r for r in split["rows"] if r["role"] == "test"]
    return [read_rgb(r["path"]) for r in rows[:n]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="finished stage-3, classical or ensemble runs")
    parser.add_argument("--tracking-uri", help="the store that holds the runs")
    parser.add_argument("--external", help="a folder of another lab's images, all of --expect")
    parser.add_argument("--expect", default="Benign", help="the class every --external image is")
    parser.add_argument("--single", type=int, default=30, help="single-image calls timed per variant (0: no timing)")
    add_quick(parser)
    args = quick_defaults(parser, parser.parse_args(), single=3)
    import mlflow

    root = Path(tempfile.mkdtemp(prefix="bench-external-"))
    if args.quick:
        uri, external, run_id = quick_run(root)
        runs, args.external = [run_id], str(external)
    else:
        if not (args.runs and args.tracking_uri and args.external):
            parser.error("give RUN ids, --tracking-uri and --external (or --quick)")
        uri, runs = args.tracking_uri, args.runs
    mlflow.set_tracking_uri(uri)
    figures = {}
    for run_id in runs:
        run = mlflow.get_run(run_id)
        tags, metrics = run.data.tags, run.data.metrics
        print(f"run {run_id} ({run.info.run_name}; stain {run.data.params.get('train.stain', '?')}, colour fusion "
              f"{tags.get('colour_fusion', '?')}, final model {tags.get('final_model', '?')})")
        result = {name: metrics[key] for name, key in IN_LAB.items() if key in metrics}
        seen = outside(run_id, uri, args.external, args.expect)
        result.update({f"{Path(args.external).name}: {name}": seen[key] for name, key in OUTSIDE.items()
                       if key in seen})
        if args.single:  # 0: the looks only (timings want an idle machine)
            result.update(serving_cost(run_id, test_images(run_id, 16), args.single))
        for name, value in result.items():
            print(f"  {name}: {value:.4f}" if isinstance(value, float) else f"  {name}: {value}")
        print(f"  evaluation run (the look at {args.external}): {seen['evaluation_run']}")
        figures[run_id[:8]] = result
    emit(figures)


if __name__ == "__main__":
    main()
