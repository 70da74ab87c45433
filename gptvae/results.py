"""From the MLflow store to small text files, and from those files to tables.

`export_results` writes what the notebooks and the paper need into one folder, every row carrying its
MLflow run id, so that every number can be traced back to the run that produced it:

    runs.csv             one row per finished child run: factor, value, seed, final metrics; a setting
                         that two sweeps share cites the one run that trained it (`trained_in`)
    history.csv          training and validation curves
    posterior_means.csv  2-D PCA of posterior means on validation sequences, with their labels
    samples.csv          decoded samples: prior, reconstructions, interpolation, no latent

Final metrics and curves come from the store; samples and posterior means from the artifacts each
run logged (`gptvae.run`), so nothing here rebuilds a model or needs a run's checkpoint.
Everything downstream (`make figures`, `make paper`) reads only these files.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from gptvae.catalog import metric
from gptvae.errors import ResultsMissingError
from gptvae.families import BASELINE
from gptvae.files import atomic_write_csv
from gptvae.tracking import (TAG_DATASET, TAG_FACTOR, TAG_HASH, TAG_KIND, TAG_PARENT, TAG_PRESET, TAG_SAME_AS,
                             TAG_SEED, Tracker)

FILES = ("runs.csv", "history.csv", "posterior_means.csv", "samples.csv")
CURVES = ("train/loss", "train/kl", "train/rec_per_token", "val/neg_elbo", "val/rec", "val/kl", "val/au",
          "val/nll_bound_per_token")   # the curves exported to history.csv
POSTERIOR_POINTS = 500


def collect_runs(tracker: Tracker, *, preset: str | None = None, dataset: str | None = None) -> pd.DataFrame:
    """One row per FINISHED child run of every ablation-* experiment (optionally one preset/dataset)."""
    client = tracker.client
    rows = []
    experiments = tracker.call(client.search_experiments)
    names = {exp.experiment_id: exp.name for exp in experiments}
    for exp in experiments:
        if not exp.name.startswith("ablation-"):
            continue
        runs = tracker.call(client.search_runs, [exp.experiment_id], max_results=5000)
        parents = {r.info.run_id: r for r in runs if TAG_PARENT not in r.data.tags}
        for run in runs:
            tags = run.data.tags
            parent = parents.get(tags.get(TAG_PARENT))
            if parent is None or run.info.status != "FINISHED":
                continue
            ptags = parent.data.tags
            if (preset and ptags.get(TAG_PRESET) != preset) or (dataset and ptags.get(TAG_DATASET) != dataset):
                continue
            factor = ptags[TAG_FACTOR]
            kind = tags.get(TAG_KIND, "vae")
            # a linked child stands for the run it reuses: that run's id, numbers and checkpoint
            source = tracker.run(tags[TAG_SAME_AS]) if TAG_SAME_AS in tags else run
            params = source.data.params
            rows.append({
                "started": run.info.start_time,
                "experiment": exp.name, "factor": factor,
                "value": np.nan if kind == BASELINE else float(params[factor]),
                "kind": kind, "seed": int(tags[TAG_SEED]), "preset": ptags.get(TAG_PRESET),
                "dataset": ptags.get(TAG_DATASET), "run_id": source.info.run_id,
                "trained_in": names.get(source.info.experiment_id, exp.name),
                "parent_run_id": parent.info.run_id, "config_hash": tags[TAG_HASH],
                **{k: v for k, v in params.items() if k.split(".", 1)[0] in ("valid", "test")},
                **{k: v for k, v in source.data.metrics.items() if not k.startswith(("train/", "val/"))},
            })
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    # one row per setting and seed: a store can hold two children for one (e.g. an LM row planned under an
    # older config hash and again under today's); the first one made stands, as both are the same model
    frame = frame.sort_values("started", kind="stable").drop_duplicates(["experiment", "kind", "value", "seed"])
    return frame.drop(columns="started").sort_values(["experiment", "kind", "value", "seed"],
                                                     ascending=[True, False, True, True]).reset_index(drop=True)


def collect_history(tracker: Tracker, run_ids) -> pd.DataFrame:
    rows = []
    for run_id in run_ids:
        for key in CURVES:
            for m in tracker.call(tracker.client.get_metric_history, run_id, key):
                rows.append({"run_id": run_id, "key": key, "step": m.step, "value": m.value})
    return pd.DataFrame(rows).sort_values(["run_id", "key", "step"]).reset_index(drop=True)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """(N, 2) projection on the first two principal components (zeros past the data's rank).

    Each component's sign is fixed (largest loading positive) so that the output is deterministic.
    """
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    vt = vt[:2]
    for component in vt:
        if component[np.argmax(np.abs(component))] < 0:
            component *= -1
    projected = centred @ vt.T
    return np.pad(projected, ((0, 0), (0, 2 - projected.shape[1])))


def _artifact(tracker: Tracker, run_id: str, name: str, folder: Path) -> pd.DataFrame | None:
    """A CSV artifact of a run, or None if the run did not log it (any other failure is raised)."""
    logged = {a.path for a in tracker.call(tracker.client.list_artifacts, run_id)}
    if name not in logged:
        return None
    return pd.read_csv(tracker.call(tracker.client.download_artifacts, run_id, name, str(folder)))


def collect_artifacts(tracker: Tracker, runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Posterior-mean projections and decoded samples of the first seed of every setting, from the
    `posterior_means.csv` and `samples.csv` artifacts each run logged."""
    first_seed = runs[runs.seed == runs.groupby(["experiment", "kind", "value"], dropna=False).seed.transform("min")]
    means, samples, missing = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, run_id in enumerate(first_seed.run_id.drop_duplicates()):   # a run two sweeps share, once
            folder = Path(tmp) / str(i)
            folder.mkdir()
            decoded = _artifact(tracker, run_id, "samples.csv", folder)
            if decoded is None:
                missing.append(run_id)
                continue
            samples.append(decoded.assign(run_id=run_id)[["run_id", "section", "text"]])
            points = _artifact(tracker, run_id, "posterior_means.csv", folder)
            if points is None:   # no latent, nothing to project
                continue
            columns = [c for c in points if c.startswith("mean_")]
            xy = pca_2d(points[columns].to_numpy(dtype=np.float64))
            frame = pd.DataFrame({"run_id": run_id, "row": points["row"], "pc1": xy[:, 0], "pc2": xy[:, 1]})
            for name in [c for c in points.columns if c != "row" and c not in columns]:   # the labels
                frame[name] = points[name]
            means.append(frame)
    if missing:
        print(f"warning: {len(missing)} run(s) logged no samples.csv artifact (trained before runs logged "
              f"their samples): {', '.join(missing)}; their samples and posterior means are not exported",
              file=sys.stderr)
    return (pd.concat(means, ignore_index=True) if means else pd.DataFrame(columns=["run_id", "row", "pc1", "pc2"])), \
        (pd.concat(samples, ignore_index=True) if samples else pd.DataFrame(columns=["run_id", "section", "text"]))


def export_results(out_dir: str | Path, *, tracker: Tracker | None = None, preset: str | None = None,
                   dataset: str | None = None) -> dict[str, int]:
    """Write FILES into out_dir from the store. Returns the number of rows of each file."""
    from gptvae.tracking import store_exists, tracking_uri

    if tracker is None and not store_exists(tracking_uri()):
        raise ResultsMissingError(f"the store {tracking_uri()} does not exist: run a sweep first, e.g. "
                                  "`make ablation-kl-floor`, or set MLFLOW_TRACKING_URI to your store")
    tracker = tracker or Tracker()
    out = Path(out_dir)
    runs = collect_runs(tracker, preset=preset, dataset=dataset)
    if runs.empty:
        raise ResultsMissingError(f"the store {tracker.uri} has no finished ablation runs"
                                  f"{f' for preset {preset}' if preset else ''}: run a sweep first, "
                                  "e.g. `make ablation-kl-floor`")
    history = collect_history(tracker, runs.run_id.unique())
    means, samples = collect_artifacts(tracker, runs)
    frames = dict(zip(FILES, (runs, history, means, samples)))
    for name, frame in frames.items():
        atomic_write_csv(out / name, frame)
    return {name: len(frame) for name, frame in frames.items()}


def load_results(results_dir: str | Path) -> dict[str, pd.DataFrame]:
    folder = Path(results_dir)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise ResultsMissingError(f"{folder} lacks {', '.join(missing)}: run `make results` first "
                                  "(it exports them from the MLflow store of your sweeps)")
    return {name.removesuffix(".csv"): pd.read_csv(folder / name) for name in FILES}


def summarize(runs: pd.DataFrame, experiment: str, metrics: list[str]) -> pd.DataFrame:
    """mean, std and n over seeds for each value of the factor, the LM baseline last."""
    subset = runs[runs.experiment == experiment]
    grouped = subset.groupby(["kind", "value"], dropna=False)[metrics]
    table = grouped.agg(["mean", "std", "count"])
    table = table.reindex(sorted(table.index, key=lambda k: (k[0] == BASELINE, k[1])))
    return table


def format_table(summary: pd.DataFrame, metrics: list[str], *, factor_label: str) -> str:
    """A Markdown table of `mean ± std` cells, one column per catalogued metric."""
    counts = {int(c) for m in metrics for c in summary[(m, "count")] if c > 0}
    n = "/".join(str(c) for c in sorted(counts))
    header = [factor_label, *(metric(m).label for m in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (kind, value), row in summary.iterrows():
        label = "LM baseline" if kind == BASELINE else f"{value:g}"
        cells = []
        for m in metrics:
            mean, std, entry = row[(m, "mean")], row[(m, "std")], metric(m)
            cells.append("–" if pd.isna(mean) else entry.format(mean) + ("" if pd.isna(std) else f" ± {entry.format(std)}"))
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines) + f"\n\nmean ± std over seeds (n = {n})\n"
