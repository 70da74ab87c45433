"""From the MLflow store to small text files, and from those files to tables.

`export_results` writes what the notebooks and the paper need into one folder, every row carrying its
MLflow run id, so that every number can be traced back to the run that produced it:

    runs.csv             one row per finished child run: factor, value, seed, final metrics; a setting
                         that two sweeps share cites the one run that trained it (`trained_in`)
    history.csv          training and validation curves
    posterior_means.csv  2-D PCA of posterior means on validation sequences, with their labels
    samples.csv          decoded samples: prior, reconstructions, interpolation, no latent

Everything downstream (`make figures`, `make paper`) reads only these files.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from gptvae.tracking import TAG_HASH, TAG_KIND, TAG_PARENT, TAG_SAME_AS, TAG_SEED, Tracker

FILES = ("runs.csv", "history.csv", "posterior_means.csv", "samples.csv")
CURVES = ("train/loss", "train/kl", "train/rec_per_token", "val/neg_elbo", "val/rec", "val/kl", "val/au",
          "val/nll_bound_per_token")
POSTERIOR_POINTS = 500


class ResultsMissingError(FileNotFoundError):
    """Exported results are absent; the message names the make target that produces them."""


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    from gptvae.train import atomic_write_bytes

    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.10g", lineterminator="\n")
    atomic_write_bytes(path, lambda h: h.write(buffer.getvalue().encode()))


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
            if (preset and ptags.get("gptvae.preset") != preset) or (dataset and ptags.get("gptvae.dataset") != dataset):
                continue
            factor = ptags["gptvae.factor"]
            kind = tags.get(TAG_KIND, "vae")
            # a linked child stands for the run it reuses: that run's id, numbers and checkpoint
            source = tracker.run(tags[TAG_SAME_AS]) if TAG_SAME_AS in tags else run
            params = source.data.params
            rows.append({
                "experiment": exp.name, "factor": factor,
                "value": float(params[factor]) if kind == "vae" else np.nan,
                "kind": kind, "seed": int(tags[TAG_SEED]), "preset": ptags.get("gptvae.preset"),
                "dataset": ptags.get("gptvae.dataset"), "run_id": source.info.run_id,
                "trained_in": names.get(source.info.experiment_id, exp.name),
                "parent_run_id": parent.info.run_id, "config_hash": tags[TAG_HASH],
                "checkpoint": source.data.tags.get("gptvae.checkpoint", ""),
                **{k: v for k, v in params.items() if k.split(".", 1)[0] in ("valid", "test")},
                **{k: v for k, v in source.data.metrics.items() if not k.startswith(("train/", "val/"))},
            })
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return frame.sort_values(["experiment", "kind", "value", "seed"], ascending=[True, False, True, True]).reset_index(drop=True)


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


def collect_from_checkpoints(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Posterior-mean projections and decoded samples for the first seed of every setting."""
    import torch

    from gptvae.evaluation import load_run
    from gptvae.metrics import posterior_moments
    from gptvae.train import VALIDATION_SEED, decode_samples, subset

    first_seed = runs[runs.seed == runs.groupby(["experiment", "kind", "value"], dropna=False).seed.transform("min")]
    means, samples = [], []
    for row in first_seed.drop_duplicates("run_id").itertuples():   # a run shared by two sweeps, once
        model, corpus, cfg, _ = load_run(str(Path(row.checkpoint).parent))
        device = next(model.parameters()).device
        for section, text in decode_samples(model, corpus, cfg, device=device):
            samples.append({"run_id": row.run_id, "section": section, "text": text})
        if not model.has_latent:
            continue
        split = subset(corpus.splits["valid"], POSTERIOR_POINTS, seed=VALIDATION_SEED)
        with torch.no_grad():
            mu, _ = posterior_moments(model, split)
        xy = pca_2d(mu.double().numpy())
        frame = pd.DataFrame({"run_id": row.run_id, "row": np.arange(len(split)), "pc1": xy[:, 0], "pc2": xy[:, 1]})
        for name, labels in split.labels.items():
            frame[name] = labels.numpy()
        means.append(frame)
    return (pd.concat(means, ignore_index=True) if means else pd.DataFrame()), pd.DataFrame(samples)


def export_results(out_dir: str | Path, *, tracker: Tracker | None = None, preset: str | None = None,
                   dataset: str | None = None) -> dict[str, int]:
    """Write FILES into out_dir from the store. Returns the number of rows of each file."""
    tracker = tracker or Tracker()
    out = Path(out_dir)
    runs = collect_runs(tracker, preset=preset, dataset=dataset)
    if runs.empty:
        raise ResultsMissingError(f"the store {tracker.uri} has no finished ablation runs"
                                  f"{f' for preset {preset}' if preset else ''}: run a sweep first, "
                                  "e.g. `make ablation-kl-floor`")
    history = collect_history(tracker, runs.run_id.unique())
    means, samples = collect_from_checkpoints(runs)
    frames = dict(zip(FILES, (runs.drop(columns=["checkpoint"]), history, means, samples)))
    for name, frame in frames.items():
        _write_csv(frame, out / name)
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
    table = table.reindex(sorted(table.index, key=lambda k: (k[0] == "lm", k[1])))
    return table


def format_table(summary: pd.DataFrame, metrics: dict[str, str], *, factor_label: str,
                 digits: dict[str, int] | None = None) -> str:
    """A Markdown table of `mean ± std` cells, metric -> column label; `digits` per metric (default 3)."""
    digits = digits or {}
    counts = {int(c) for m in metrics for c in summary[(m, "count")] if c > 0}
    n = "/".join(str(c) for c in sorted(counts))
    header = [factor_label, *metrics.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (kind, value), row in summary.iterrows():
        label = "LM baseline" if kind == "lm" else f"{value:g}"
        cells = []
        for m in metrics:
            mean, std, d = row[(m, "mean")], row[(m, "std")], digits.get(m, 3)
            cells.append("–" if pd.isna(mean) else f"{mean:.{d}f}" + ("" if pd.isna(std) else f" ± {std:.{d}f}"))
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines) + f"\n\nmean ± std over seeds (n = {n})\n"
