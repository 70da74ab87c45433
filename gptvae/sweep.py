"""Sweeps: an experiment spec (experiments/*.toml) is a base config plus the grid of one factor.

Each setting and seed becomes an MLflow child run under one parent run per (spec, preset, dataset).
A re-run sweep skips children that finished (found by config hash and seed) and resumes the others
from their checkpoints, so a sweep can be stopped and continued in pieces.

A setting that another sweep already trained (the same config hash and seed, e.g. beta = 1 in kl-weight
is lambda = 0 in kl-floor, and every LM row of a preset is one config) is not trained again: its child
is a link (tag `gptvae.same_as`) to the finished run, and the exported results cite that run's id.
"""

from __future__ import annotations

import fcntl
import os
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

from tqdm.auto import tqdm

from gptvae.config import Config, ConfigError, apply_overrides, config_hash, preset
from gptvae.objective import ObjectiveConfig
from gptvae.tracking import TAG_KIND, TAG_SAME_AS, Tracker, RunLogger

SUMMARY_KEYS = ("valid.neg_elbo", "valid.rec", "valid.kl", "valid.iw_nll_per_token", "valid.mi", "valid.au",
                "valid.lm_nll_per_token", "time.train_seconds", "time.eval_seconds")


@dataclass(frozen=True)
class SweepSpec:
    name: str                    # e.g. "kl-floor"; the MLflow experiment is "ablation-<name>"
    factor: str                  # the config key that varies, e.g. "objective.free_bits"
    values: tuple                # its grid
    base: dict = field(default_factory=dict)  # overrides on top of the preset, shared by every run
    baseline: bool = True        # also train the LM row (same decoder, no latent)
    description: str = ""

    @property
    def experiment(self) -> str:
        return f"ablation-{self.name}"


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        known = ", ".join(sorted(p.name for p in path.parent.glob("*.toml"))) or "none"
        raise ConfigError(f"experiment spec {path} does not exist; specs in {path.parent}: {known}")
    with open(path, "rb") as handle:
        raw = tomllib.load(handle)
    missing = {"name", "factor", "values"} - set(raw)
    if missing:
        raise ConfigError(f"experiment spec {path} lacks {', '.join(sorted(missing))}")
    spec = SweepSpec(name=raw["name"], factor=raw["factor"], values=tuple(raw["values"]),
                     base=dict(raw.get("base", {})), baseline=bool(raw.get("baseline", True)),
                     description=raw.get("description", ""))
    apply_overrides(Config(), {**spec.base, spec.factor: spec.values[0]}).validate()  # fail before training
    return spec


@dataclass(frozen=True)
class PlannedRun:
    name: str       # MLflow run name, e.g. "free_bits=0.25 seed=0"
    kind: str       # "vae" or "lm"
    value: object   # the factor's value (None for the LM row)
    cfg: Config


def plan_runs(spec: SweepSpec, *, preset_name: str, dataset: str | None, seeds, overrides=()) -> list[PlannedRun]:
    base = apply_overrides(apply_overrides(preset(preset_name, dataset=dataset), spec.base), overrides)
    short = spec.factor.split(".")[-1]
    runs = []
    for seed in seeds:
        for value in spec.values:
            cfg = apply_overrides(base, {spec.factor: value, "train.seed": seed}).validate()
            runs.append(PlannedRun(f"{short}={value} seed={seed}", "vae", value, cfg))
        if spec.baseline:
            # the LM has no latent, so the objective's knobs do not touch it: one config per preset
            cfg = replace(apply_overrides(base, {"model.kind": "lm", "train.seed": seed}),
                          objective=ObjectiveConfig()).validate()
            runs.append(PlannedRun(f"LM baseline seed={seed}", "lm", None, cfg))
    return runs


def run_dir_for(root: Path, experiment: str, cfg: Config) -> Path:
    return Path(root) / experiment / f"{config_hash(cfg)}-seed{cfg.train.seed}"


def execute(run: PlannedRun, *, experiment: str, parent_id: str | None, runs_root: Path, tracker: Tracker,
            progress: bool = True, tags: dict | None = None) -> dict:
    """Train one planned run into its MLflow child, unless it already finished. Returns a summary row."""
    cfg = run.cfg
    exp_id = tracker.experiment_id(experiment)
    run_id, status = tracker.child_run(exp_id, config_hash=config_hash(cfg), seed=cfg.train.seed, name=run.name,
                                       parent_id=parent_id, tags={TAG_KIND: run.kind, **(tags or {})})
    row = {"name": run.name, "kind": run.kind, "value": run.value, "seed": cfg.train.seed, "run_id": run_id}
    if status == "FINISHED":
        return {**row, "status": "skipped (finished)", **_final_metrics(tracker, run_id)}
    twin = tracker.finished_twin(config_hash=config_hash(cfg), seed=cfg.train.seed, exclude_run=run_id)
    if twin is not None:
        tracker.set_tags(run_id, {TAG_SAME_AS: twin.info.run_id})
        tracker.set_status(run_id, "FINISHED")
        return {**row, "status": f"reused {twin.info.run_id[:8]}", **{k: twin.data.metrics.get(k) for k in SUMMARY_KEYS}}

    run_dir = run_dir_for(runs_root, experiment, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return {**row, "status": "skipped (running in another process)"}

        from gptvae.train import train   # heavy imports only where training happens

        tracker.set_status(run_id, "RUNNING")
        logger = RunLogger(tracker, run_id)
        try:
            result = train(cfg, run_dir=run_dir, logger=logger, progress=progress)
        except BaseException as err:
            logger.flush()
            tracker.set_status(run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise
        tracker.set_status(run_id, "FINISHED")
    status = "resumed" if result.resumed_from else "trained"
    return {**row, "status": status, **{k: result.final.get(k) for k in SUMMARY_KEYS}}


def _final_metrics(tracker: Tracker, run_id: str) -> dict:
    metrics = tracker.resolve(run_id).data.metrics
    return {k: metrics.get(k) for k in SUMMARY_KEYS}


def _execute_in_worker(run: PlannedRun, experiment: str, parent_id: str, runs_root: str, uri: str, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    return execute(run, experiment=experiment, parent_id=parent_id, runs_root=Path(runs_root),
                   tracker=Tracker(uri), progress=False)


def run_sweep(spec: SweepSpec, *, preset_name: str, dataset: str | None, seeds, jobs: int = 1, overrides=(),
              runs_root: str | Path = "runs", tracker: Tracker | None = None, progress: bool = True) -> list[dict]:
    tracker = tracker or Tracker()
    runs = plan_runs(spec, preset_name=preset_name, dataset=dataset, seeds=seeds, overrides=overrides)
    dataset = runs[0].cfg.data.dataset
    exp_id = tracker.experiment_id(spec.experiment)
    sweep_key = f"{spec.name}|{preset_name}|{dataset}|{'|'.join(sorted(overrides))}"
    parent_id = tracker.parent_run(exp_id, sweep_key, name=f"{spec.name} ({preset_name}, {dataset})",
                                   tags={"gptvae.factor": spec.factor, "gptvae.preset": preset_name,
                                         "gptvae.dataset": dataset, "mlflow.note.content": spec.description})
    tracker.set_status(parent_id, "RUNNING")

    rows: list[dict] = []
    try:
        if jobs <= 1:
            for run in tqdm(runs, desc=spec.experiment, unit="run", disable=not progress, position=1):
                rows.append(execute(run, experiment=spec.experiment, parent_id=parent_id,
                                    runs_root=Path(runs_root), tracker=tracker, progress=progress))
        else:
            threads = max(1, (os.cpu_count() or 1) // jobs)
            with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(_execute_in_worker, run, spec.experiment, parent_id, str(runs_root),
                                       tracker.uri, threads) for run in runs]
                for future in tqdm(as_completed(futures), total=len(futures), desc=spec.experiment, unit="run",
                                   disable=not progress):
                    rows.append(future.result())
    except BaseException:
        tracker.set_status(parent_id, "FAILED")
        raise
    tracker.set_status(parent_id, "FINISHED")
    order = {run.name: i for i, run in enumerate(runs)}
    return sorted(rows, key=lambda r: order[r["name"]])


def format_rows(rows: list[dict]) -> str:
    """A plain-text table of a sweep's outcome."""
    header = ["run", "status", *SUMMARY_KEYS]
    table = [header] + [[r["name"], r["status"], *("-" if r.get(k) is None else f"{r[k]:.3f}" for k in SUMMARY_KEYS)]
                        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in table)
