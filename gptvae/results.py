"""From the MLflow store to small text files, and from those files to tables.

`export_results` writes what the notebooks and the paper need into one folder, every row carrying its
MLflow run id, so that every number can be traced back to the run that produced it:

    runs.csv             one row per finished child run: factor, value, seed, its logged config, final
                         metrics and convergence; a setting that two sweeps share cites the one run
                         that trained it (`trained_in`)
    history.csv          training and validation curves
    units.csv            per latent unit: MI of the unit alone, Var_x(mu_u), mean KL
    posterior_means.csv  2-D PCA of posterior means on validation sentences, with their labels
    samples.csv          decoded samples: prior, reconstructions, interpolation, no latent
    sentences/<run id>.<split>.csv
                         per sentence: tokens, Rec, KL, -ELBO, IW-NLL, NLL with the latent masked,
                         reconstruction BLEU; what paired comparisons resample (`gptvae.stats`)

Exports merge: rows of runs the store holds replace that run's rows, and rows of runs it does not hold
are kept. A study trained in pieces, on machines whose stores are lost in between, therefore adds up
in the committed files, and a re-export of the same store rewrites the same bytes.

Final metrics and curves come from the store; the rest from the artifacts each run logged
(`gptvae.run`), so nothing here rebuilds a model or needs a run's checkpoint. Everything downstream
(`make figures`, `make paper`) reads only these files.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from gptvae.errors import ResultsMissingError
from gptvae.families import BASELINE, BASELINE_NAME
from gptvae.files import atomic_write_csv
from gptvae.tracking import (
    TAG_AUTOCAST,
    TAG_DATASET,
    TAG_FACTOR,
    TAG_HASH,
    TAG_KIND,
    TAG_PARENT,
    TAG_PRESET,
    TAG_SAME_AS,
    TAG_SEED,
    TAG_VALUES,
    Tracker,
)

FILES = ("runs.csv", "history.csv", "units.csv", "posterior_means.csv", "samples.csv")
OPTIONAL = ("ksweep.csv",)   # written by every export; read as empty from exports made before it existed
SENTENCES = "sentences"   # the folder of per-sentence files
CURVES = ("train/loss", "train/kl", "train/rec_per_token", "val/neg_elbo", "val/rec", "val/kl", "val/au",
          "val/nll_bound_per_token", "val/objective_per_token", "val/plateau_improvement")   # the curves exported
CONFIG_SECTIONS = ("model", "objective", "data", "train", "eval")   # a run's logged config, in runs.csv
RUN_KEY = ["experiment", "kind", "value", "seed"]   # one row of runs.csv per setting and seed
PRECISION = "train.precision"   # bf16, fp32 or mixed (resumed elsewhere), as the run trained; empty if not recorded
FROM_EXPORT = "from_export"   # collect_runs' mark on a row it took from the earlier export (never written)
POSTERIOR_POINTS = 500
# metrics logged under another name by runs finished before the rename: exported under the current one
RENAMED = {"decoder_use_per_token": "swap_penalty_per_token"}   # Rec with another sentence's z minus with its own


def _as_logged(factor: str, value) -> str:
    """A config value as a run logs it (the text of its field's type): a float field's 0, read back from a
    CSV column of integers, is "0.0", the setting a run trained here would carry."""
    import typing

    from gptvae.config import Config

    section, _, name = factor.partition(".")
    fields = getattr(Config(), section, None)
    hint = typing.get_type_hints(type(fields)).get(name) if fields is not None else None
    try:
        return str(float(value)) if hint is float else str(value)
    except (TypeError, ValueError):
        return str(value)


def collect_runs(tracker: Tracker, *, preset: str | None = None, dataset: str | None = None,
                 exported: pd.DataFrame | None = None, experiments: set[str] | None = None) -> pd.DataFrame:
    """One row per FINISHED child run of every ablation-* experiment (optionally one preset/dataset, and only
    the experiments named in `experiments`).

    exported: runs.csv of an earlier export. A child linked to a run this store does not hold (a sweep on a
    fresh store reusing a run that another sweep trained in an earlier piece) takes that run's exported row."""
    client = tracker.client
    rows, lost = [], []
    stored = tracker.call(client.search_experiments)
    names = {exp.experiment_id: exp.name for exp in stored}
    for exp in stored:
        if not exp.name.startswith("ablation-") or (experiments is not None and exp.name not in experiments):
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
            # the sweep's baseline row, or (an LM-family grid, e.g. a budget probe) a setting of its grid
            baseline = kind == BASELINE and (run.info.run_name or BASELINE_NAME).startswith(BASELINE_NAME)
            # a linked child stands for the run it reuses: that run's id, numbers and checkpoint
            source = tracker.find_run(tags[TAG_SAME_AS]) if TAG_SAME_AS in tags else run
            if source is None:   # reused from an earlier piece's export, not in this store: its exported row
                known = exported[exported.run_id == tags[TAG_SAME_AS]] if exported is not None else None
                if known is None or known.empty:
                    lost.append(f"{run.info.run_id} -> {tags[TAG_SAME_AS]}")
                    continue
                row = known.iloc[0].to_dict()
                setting = "" if baseline else _as_logged(factor, row[factor])
                rows.append({**row, "started": run.info.start_time, "experiment": exp.name, "factor": factor,
                             "value": np.nan if baseline else _value(setting, ptags.get(TAG_VALUES)),
                             "setting": setting, "parent_run_id": parent.info.run_id, FROM_EXPORT: True})
                continue
            params = source.data.params
            setting = "" if baseline else str(params[factor])
            rows.append({
                "started": run.info.start_time,
                "experiment": exp.name, "factor": factor,
                "value": np.nan if baseline else _value(setting, ptags.get(TAG_VALUES)),
                "setting": setting,
                "kind": kind, "seed": int(tags[TAG_SEED]), "preset": ptags.get(TAG_PRESET),
                "dataset": ptags.get(TAG_DATASET), "run_id": source.info.run_id,
                "trained_in": names.get(source.info.experiment_id, exp.name),
                "parent_run_id": parent.info.run_id, "config_hash": tags[TAG_HASH],
                # the precision it trained in: train.autocast asks for bf16, the machine decides (fp32 without AMX,
                # AVX512-BF16 or CUDA bf16); empty for runs exported before this was recorded
                PRECISION: {"True": "bf16", "False": "fp32", "mixed": "mixed"}.get(source.data.tags.get(TAG_AUTOCAST), ""),
                **{k: _param(v) for k, v in params.items() if k.split(".", 1)[0] in CONFIG_SECTIONS},
                **{k: v for k, v in params.items() if k.split(".", 1)[0].split("_", 1)[0] in ("valid", "test")},
                **{k: v for k, v in source.data.metrics.items() if not k.startswith(("train/", "val/"))},
            })
    if lost:
        print(f"warning: {len(lost)} linked run(s) point to runs neither this store nor the export holds, "
              f"and are not exported: {', '.join(lost)}", file=sys.stderr)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame[FROM_EXPORT] = frame[FROM_EXPORT].fillna(False).astype(bool) if FROM_EXPORT in frame else False
    # one row per setting and seed: a store can hold two children for one (e.g. an LM row planned under an
    # older config hash and again under today's); the first one made stands, as both are the same model
    frame = frame.sort_values("started", kind="stable").drop_duplicates(["experiment", "kind", "value", "seed"])
    return frame.drop(columns="started").sort_values(["experiment", "kind", "value", "seed"],
                                                     ascending=[True, False, True, True]).reset_index(drop=True)


def is_baseline(kind: str, setting) -> bool:
    """Whether a runs.csv row is a sweep's LM baseline, as `collect_runs` writes it: the family BASELINE with
    no setting (and so no value). The rows of an LM grid (a budget probe) are settings of their factor."""
    return kind == BASELINE and (pd.isna(setting) or str(setting) == "")   # NaN in a frame, "" as read back


def baseline_rows(runs: pd.DataFrame) -> pd.Series:
    """`is_baseline` for every row of a runs frame."""
    return pd.Series([is_baseline(k, s) for k, s in zip(runs.kind, runs.setting)], index=runs.index, dtype=bool)


def _value(setting: str, grid: str | None) -> float:
    """A setting as a number: itself, or for a factor of names its position in the spec's grid."""
    try:
        return float(setting)
    except ValueError:
        names = json.loads(grid) if grid else []
        return float(names.index(setting)) if setting in names else np.nan


def _param(text: str):
    """A logged param as the value it was: numbers as numbers, the rest as text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def collect_history(tracker: Tracker, run_ids) -> pd.DataFrame:
    rows = []
    for run_id in run_ids:
        for key in CURVES:
            for m in tracker.call(tracker.client.get_metric_history, run_id, key):
                rows.append({"run_id": run_id, "key": key, "step": m.step, "value": m.value})
    columns = ["run_id", "key", "step", "value"]
    return pd.DataFrame(rows, columns=columns).sort_values(columns[:3]).reset_index(drop=True)


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


def _artifact(tracker: Tracker, run_id: str, name: str, folder: Path, logged=None) -> pd.DataFrame | None:
    """A CSV artifact of a run, or None if the run did not log it (any other failure is raised)."""
    if logged is None:
        logged = {a.path for a in tracker.call(tracker.client.list_artifacts, run_id)}
    if name not in logged:
        return None
    return pd.read_csv(tracker.call(tracker.client.download_artifacts, run_id, name, str(folder)))


def collect_artifacts(tracker: Tracker, runs: pd.DataFrame, *, everything: pd.DataFrame | None = None
                      ) -> dict[str, pd.DataFrame]:
    """From the artifacts each run logged: per-sentence and per-unit tables of every run; posterior-mean
    projections and decoded samples of the first seed of every setting.

    Returns {"units": ..., "posterior_means": ..., "samples": ..., "sentences/<run id>.<split>.csv": ...}.
    """
    every = runs if everything is None else everything   # "first seed" among all exported runs, not this store's
    first_seed = every[every.seed == every.groupby(["experiment", "kind", "value"], dropna=False).seed.transform("min")]
    firsts = set(first_seed.run_id)
    means, samples, units, ksweeps, missing = [], [], [], [], []
    out: dict[str, pd.DataFrame] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, run_id in enumerate(runs.run_id.drop_duplicates()):   # a run two sweeps share, once
            folder = Path(tmp) / str(i)
            folder.mkdir()
            logged = {a.path for a in tracker.call(tracker.client.list_artifacts, run_id)}
            for name in sorted(logged):
                stem = name.removesuffix(".csv")
                if stem.startswith("sentences_"):
                    out[f"{SENTENCES}/{run_id}.{stem.removeprefix('sentences_')}.csv"] = \
                        _artifact(tracker, run_id, name, folder)
                elif stem.startswith("units_"):
                    frame = _artifact(tracker, run_id, name, folder)
                    units.append(frame.assign(run_id=run_id, split=stem.removeprefix("units_")))
                elif stem.startswith("ksweep_"):   # ksweep_<split>_n<N>_s<seed>_k<K-K-...>: `evaluate --k-sweep`
                    split, _, seed, _ = stem.removeprefix("ksweep_").rsplit("_", 3)
                    frame = _artifact(tracker, run_id, name, folder)
                    ksweeps.append(frame.assign(run_id=run_id, split=split, eval_seed=int(seed[1:])))
            if run_id not in firsts:
                continue
            decoded = _artifact(tracker, run_id, "samples.csv", folder, logged)
            if decoded is None:
                missing.append(run_id)
                continue
            samples.append(decoded.assign(run_id=run_id)[["run_id", "section", "text"]])
            points = _artifact(tracker, run_id, "posterior_means.csv", folder, logged)
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

    def stacked(parts, columns):
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)

    unit_columns = ["run_id", "split", "unit", "mi", "mean_variance", "kl"]
    out["units"] = stacked(units, unit_columns)
    if not out["units"].empty:
        out["units"] = out["units"][unit_columns]
    ksweep_columns = ["run_id", "split", "eval_seed", "n_sequences", "n_tokens", "K", "iw_nll", "iw_nll_per_token"]
    out["ksweep"] = stacked(ksweeps, ksweep_columns)
    if not out["ksweep"].empty:
        out["ksweep"] = out["ksweep"][ksweep_columns]
    out["posterior_means"] = stacked(means, ["run_id", "row", "pc1", "pc2"])
    out["samples"] = stacked(samples, ["run_id", "section", "text"])
    return out


def current_names(runs: pd.DataFrame) -> pd.DataFrame:
    """runs.csv with every metric a run logged under an old name (RENAMED) under its current name."""
    runs = runs.copy()
    for column in [c for c in runs.columns if c.split(".", 1)[-1] in RENAMED]:
        prefix, name = column.split(".", 1)
        current = f"{prefix}.{RENAMED[name]}"
        runs[current] = runs[current].fillna(runs[column]) if current in runs else runs[column]
        runs = runs.drop(columns=column)
    return runs


def merge_by_run(old: pd.DataFrame | None, new: pd.DataFrame, *, key=None) -> pd.DataFrame:
    """`new`, plus the rows of `old` whose run the new export does not hold.

    key: runs.csv's one-row-per-setting-and-seed columns. A setting and seed already exported from a
    run that the store no longer holds keeps that row: the committed run stands, and a second run
    of it trained elsewhere is not added beside it.
    """
    if old is None or old.empty:
        return new
    if "experiment" in old and "experiment" in new:   # runs.csv: a run two sweeps share has a row in each
        mine = pd.MultiIndex.from_frame(new[["experiment", "run_id"]].astype(str))
        kept = old[~pd.MultiIndex.from_frame(old[["experiment", "run_id"]].astype(str)).isin(mine)]
    else:
        kept = old[~old.run_id.isin(set(new.run_id))]
    if key is not None and not new.empty:
        taken = {tuple(row[:-1]): row[-1] for row in kept[[*key, "config_hash"]].astype(str).to_numpy()}
        rows = [tuple(row) for row in new[[*key, "config_hash"]].astype(str).to_numpy()]
        clash = next((row for row in rows if row[:-1] in taken and taken[row[:-1]] != row[-1]), None)
        if clash is not None:
            raise ResultsMissingError(
                f"the export already holds {', '.join(clash[:-1])} trained under config {taken[clash[:-1]]}, and "
                f"the store has it under {clash[-1]}: two versions of the study. Move the old results aside "
                "before exporting the new one into their folder")
        new = new[[row[:-1] not in taken for row in rows]]
    frame = pd.concat([kept, new], ignore_index=True)
    return frame


def _check_one_config_per_setting(runs: pd.DataFrame, out: Path) -> None:
    """Rows of one setting trained under two configs (a changed preset, e.g. a new budget) are two
    studies; merged, their seeds would be averaged together. Refuse, naming them."""
    if runs.empty:
        return
    runs = runs.assign(setting=runs.setting.fillna("").astype(str))
    counts = runs.groupby(["experiment", "kind", "setting"], dropna=False).config_hash.nunique()
    mixed = counts[counts > 1]
    if not mixed.empty:
        (experiment, kind, setting), _ = next(iter(mixed.items()))
        hashes = sorted(runs[(runs.experiment == experiment) & (runs.kind == kind)
                             & (runs.setting.fillna("") == ("" if pd.isna(setting) else setting))].config_hash.unique())
        raise ResultsMissingError(
            f"{out} would hold {experiment} {kind} {setting or 'baseline'} under {len(hashes)} configs "
            f"({', '.join(hashes)}): the exported rows come from another version of the preset. Move the old "
            f"results aside (e.g. `git rm -r {out}`) before exporting the new study into it")


def export_results(out_dir: str | Path, *, tracker: Tracker | None = None, preset: str | None = None,
                   dataset: str | None = None, experiments: set[str] | None = None) -> dict[str, int]:
    """Merge the store's finished runs into FILES (and sentences/) in out_dir. Returns rows per file.
    experiments: only these sweeps (e.g. {"ablation-kl-floor"}); default every ablation in the store."""
    from gptvae.tracking import store_exists, tracking_uri

    if tracker is None and not store_exists(tracking_uri()):
        raise ResultsMissingError(f"the store {tracking_uri()} does not exist: run a sweep first, e.g. "
                                  "`make ablation-kl-floor`, or set MLFLOW_TRACKING_URI to your store")
    tracker = tracker or Tracker()
    out = Path(out_dir)
    old = {name: read_csv(out / name) for name in (*FILES, *OPTIONAL) if (out / name).is_file()}
    stored = collect_runs(tracker, preset=preset, dataset=dataset, exported=old.get("runs.csv"),
                          experiments=experiments)
    if stored.empty:
        raise ResultsMissingError(f"the store {tracker.uri} has no finished ablation runs"
                                  f"{f' for preset {preset}' if preset else ''}"
                                  f"{' of ' + ', '.join(sorted(experiments)) if experiments else ''}: run a sweep first, "
                                  "e.g. `make ablation-kl-floor`")
    held = set(stored.run_id[~stored.pop(FROM_EXPORT)])   # runs whose artifacts this store holds
    runs = current_names(merge_by_run(old.get("runs.csv"), stored, key=RUN_KEY))
    _check_one_config_per_setting(runs, out)
    runs = runs.sort_values(["experiment", "kind", "value", "seed"], ascending=[True, False, True, True],
                            na_position="last").reset_index(drop=True)
    fresh = runs[runs.run_id.isin(held)]   # what this store adds or updates
    artifacts = collect_artifacts(tracker, fresh, everything=runs)
    frames = {
        "runs.csv": runs,
        "history.csv": merge_by_run(old.get("history.csv"), collect_history(tracker, fresh.run_id.unique())),
        "units.csv": merge_by_run(old.get("units.csv"), artifacts.pop("units")),
        "posterior_means.csv": merge_by_run(old.get("posterior_means.csv"), artifacts.pop("posterior_means")),
        "samples.csv": merge_by_run(old.get("samples.csv"), artifacts.pop("samples")),
        "ksweep.csv": merge_by_run(old.get("ksweep.csv"), artifacts.pop("ksweep")),
    }
    order = {run_id: i for i, run_id in enumerate(runs.run_id.drop_duplicates())}
    for name, frame in frames.items():
        if name != "runs.csv" and not frame.empty:   # runs in runs.csv order, each run's rows as exported
            frame = frame.iloc[np.lexsort((np.arange(len(frame)), frame.run_id.map(order).fillna(len(order))))]
        frames[name] = frame.reset_index(drop=True)
        atomic_write_csv(out / name, frames[name])
    for name, frame in artifacts.items():   # sentences/<run id>.<split>.csv: one file per run, never dropped
        atomic_write_csv(out / name, frame)
    counts = {name: len(frame) for name, frame in frames.items()}
    counts[SENTENCES] = len(list((out / SENTENCES).glob("*.csv"))) if (out / SENTENCES).is_dir() else 0
    return counts


def load_results(results_dir: str | Path) -> dict[str, pd.DataFrame]:
    folder = Path(results_dir)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise ResultsMissingError(f"{folder} lacks {', '.join(missing)}: run `make results` first "
                                  "(it exports them from the MLflow store of your sweeps)")
    frames = {name.removesuffix(".csv"): read_csv(folder / name) for name in FILES}
    for name in OPTIONAL:
        frames[name.removesuffix(".csv")] = read_csv(folder / name) if (folder / name).is_file() else pd.DataFrame()
    frames["runs"] = no_rise_for_a_plateau(widest_evaluations(frames["runs"]))
    return frames


def no_rise_for_a_plateau(runs: pd.DataFrame) -> pd.DataFrame:
    """runs with train.converged = 0 where the plateau rule stopped a run whose objective was rising: it reads
    "improved by less than the tolerance", which a rise of any size passes (a bound climbing while KL fills a
    large floor). Such a run stopped moving toward nothing; it is a snapshot. train.rising says which."""
    needed = {"train.converged", "train.plateau_improvement", "train.tolerance"}
    if not needed <= set(runs):
        return runs
    rising = (runs["train.converged"] == 1) & (
        pd.to_numeric(runs["train.plateau_improvement"], errors="coerce")
        < -pd.to_numeric(runs["train.tolerance"], errors="coerce"))
    runs = runs.copy()
    runs.loc[rising, "train.converged"] = 0.0
    runs["train.rising"] = rising.astype(float)
    return runs


def widest_evaluations(runs: pd.DataFrame, splits=("valid", "test"), *, by: str = "experiment") -> pd.DataFrame:
    """Each run's <split>.* columns set to the widest evaluation on that split that every run of its table
    (the rows sharing `by`) holds: of the protocols logged with the run's own K and seed, in bf16 (its final
    evaluation "<split>", and "<split>_k<K>_n<N>" that `evaluate` added, e.g. the whole split after a final
    evaluation on a subset), the one on the most sentences that all of them have. So a table's numbers
    measured once per run (MI, AU, a probe) come from one protocol for every row, and a run evaluated more
    widely than the others is read on the sentences they share; where no size is shared, each run's widest.
    Its name goes to "<split>.protocol", which names the per-sentence file to read. The raw columns stay
    under their own names, so runs.csv itself keeps every protocol."""
    runs = runs.copy()
    groups = runs[by].fillna("") if by in runs else pd.Series("", index=runs.index)
    for split in splits:
        if f"{split}.n_sequences" not in runs:
            continue
        pattern = re.compile(rf"^{split}_k(\d+)_n(\d+)$")   # no _s<seed>, no _fp32: the run's own protocol
        others = {m.group(0): int(m.group(1)) for c in runs.columns
                  if c.endswith(".n_sequences") and (m := pattern.match(c.removesuffix(".n_sequences")))}
        missing = sorted({split + c[len(prefix):] for prefix in others for c in runs if c.startswith(prefix + ".")}
                         - set(runs.columns))   # keys only an added protocol logged (e.g. its eval_seed)
        runs = pd.concat([runs, pd.DataFrame(np.nan, index=runs.index, columns=missing)], axis=1)
        sizes = {}   # run -> {sentences: protocol}, the run's own protocol first among equals
        for i in runs.index:
            own = pd.to_numeric(runs.at[i, f"{split}.n_sequences"], errors="coerce")
            if pd.isna(own):
                continue
            sizes[i] = {own: split}
            for prefix, k in sorted(others.items()):
                n = pd.to_numeric(runs.at[i, f"{prefix}.n_sequences"], errors="coerce")
                if k == pd.to_numeric(runs.at[i, f"{split}.iw_samples"], errors="coerce") and not pd.isna(n):
                    sizes[i].setdefault(n, prefix)
        protocols = dict.fromkeys(runs.index)
        for _, members in groups[list(sizes)].groupby(groups[list(sizes)]):
            shared = set.intersection(*(set(sizes[i]) for i in members.index))
            for i in members.index:
                protocols[i] = sizes[i][max(shared or sizes[i])]
        for i, best in protocols.items():
            if best not in (None, split):   # every number of the run on this split from that one evaluation
                for column in [c for c in runs if c.startswith(best + ".")]:
                    runs.loc[i, split + column[len(best):]] = runs.loc[i, column]
        runs[f"{split}.protocol"] = pd.Series(protocols, dtype=object)
    return runs


def load_sentences(results_dir: str | Path, run_id: str, split: str) -> pd.DataFrame | None:
    """The per-sentence results of one run on one split (or evaluation protocol, e.g. "valid_k64_n9611"),
    or None when the run exported none."""
    path = Path(results_dir) / SENTENCES / f"{run_id}.{split}.csv"
    if not path.is_file():
        return None
    stat = path.stat()
    return _read_sentences(str(path.resolve()), stat.st_mtime_ns, stat.st_size).copy()


@functools.lru_cache(maxsize=256)
def _read_sentences(path: str, mtime_ns: int, size: int) -> pd.DataFrame:
    """A paper reads each run's sentences many times (every comparison that involves it); a file read once
    per version of it (path, modification time, size)."""
    return read_csv(Path(path))


def read_csv(path: Path) -> pd.DataFrame:
    """An exported file as it was written: only empty cells are missing ("None", a logged config value,
    stays text), so that reading and writing it again gives the same bytes."""
    return pd.read_csv(path, keep_default_na=False, na_values=[""], converters={"setting": str})

