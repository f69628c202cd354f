"""The study's artifacts on its MLflow parent run: optimization history, parameter importances, parallel
coordinates and slice plots (PNG, via optuna.visualization.matplotlib), best_params.yaml, the search space and a
table of all trials. A keras-tuner search is converted to an in-memory Optuna study first, so both engines give
the same files."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import yaml  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from mtl_suite.tuning.objective import TuningContext  # noqa: E402
from mtl_suite.tuning.tracker import StudyTracker, mask_password  # noqa: E402

PLOTS = {
    "optimization_history": optuna.visualization.matplotlib.plot_optimization_history,
    "param_importances": optuna.visualization.matplotlib.plot_param_importances,
    "parallel_coordinate": optuna.visualization.matplotlib.plot_parallel_coordinate,
    "slice": optuna.visualization.matplotlib.plot_slice,
}


def write_study_artifacts(study: optuna.Study, tracker: StudyTracker, folder: Path, ctx: TuningContext,
                          identity: dict[str, Any], storage: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    notes = write_plots(study, folder / "plots", len(complete))
    if notes:
        (folder / "plots" / "NOTES.txt").write_text("\n".join(notes) + "\n")
    (folder / "space.yaml").write_text(yaml.safe_dump(ctx.space.as_dict(), sort_keys=False))
    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "duration"))
    frame.to_csv(folder / "trials.csv", index=False)
    if complete:
        best = study.best_trial
        summary = {
            "study": study.study_name, "storage": mask_password(storage), "trial": best.number,
            "value": float(best.value), "metric": ctx.metric, "direction": ctx.direction,
            **{k: identity[k] for k in ("stage", "backbone", "task", "folds", "image_size", "weights")},
            "params": {k: _plain(v) for k, v in best.user_attrs.get("params", best.params).items()},
            "config_overrides": {k: _plain(v) for k, v in best.user_attrs.get("config_overrides", {}).items()},
            "augment_strength": best.user_attrs.get("augment_strength", 1.0),
            "use_with": f"mtl-suite {identity['stage']} --params-from-study {study.study_name} "
                        f"--storage {mask_password(storage)}",
        }
        (folder / "best_params.yaml").write_text(yaml.safe_dump(summary, sort_keys=False))
    tracker.log_artifacts(folder, "study")


def write_plots(study: optuna.Study, folder: Path, n_complete: int) -> list[str]:
    """Each plot that the study can support; the reasons for any left out."""
    folder.mkdir(parents=True, exist_ok=True)
    notes = []
    for name, plot in PLOTS.items():
        if n_complete < (2 if name == "param_importances" else 1):
            notes.append(f"{name}: needs more complete trials (has {n_complete})")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning on every matplotlib plot
            try:
                axes = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. importances of constant params
                notes.append(f"{name}: not drawn ({type(exc).__name__}: {exc})")
                plt.close("all")
                continue
        figure = _figure(axes)
        figure.savefig(folder / f"{name}.png", dpi=110, bbox_inches="tight")
        plt.close(figure)
    return notes


def _figure(axes: Any):
    if hasattr(axes, "figure"):
        return axes.figure
    return axes.flat[0].figure  # plot_slice returns an array of Axes


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value
