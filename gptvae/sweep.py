"""Sweeps: an experiment spec (experiments/*.toml) is a base config plus the grid of one factor.

    spec = load_spec("experiments/kl_floor.toml")
    runs = plan_runs(spec, preset_name="cpu", dataset=None, seeds=[0, 1, 2])   # PlannedRun per setting and seed
    rows = run_sweep(spec, preset_name="cpu", dataset=None, seeds=[0], executor="serial")

Each setting and seed becomes an MLflow child run under one parent run per (spec, preset, dataset).
A re-run sweep skips children that finished (found by config hash and seed) and resumes the others
from their checkpoints, so a sweep can be stopped and continued in pieces. A setting that another
sweep already trained (the same config hash and seed: beta = 1 in kl-weight is lambda = 0 in kl-floor,
and every LM row of a preset is one config) is not trained again: its child links to that run.

How the runs are carried out is an executor's business (`gptvae.executors`: serial, pool, ...); one
run's lifecycle is `gptvae.run.execute`.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from gptvae.catalog import value_text
from gptvae.config import DATASETS, GPU_PRESETS, Config, ConfigError, ObjectiveConfig, apply_overrides, config_hash, parse_overrides, preset
from gptvae.families import BASELINE, BASELINE_NAME
from gptvae.run import SUMMARY_KEYS, PlannedRun, RunTask, run_dir_for
from gptvae.tracking import (TAG_DATASET, TAG_FACTOR, TAG_HASH, TAG_KIND, TAG_NOTE, TAG_PRESET, TAG_SAME_AS,
                             TAG_SEED, TAG_VALUES, Tracker)

SPEC_KEYS = {"name", "factor", "values", "base", "baseline", "description", "label", "symbol", "reference",
             "evaluations", "dataset", "compare", "margin"}
MARGIN = 0.01   # nats per token: a paired difference whose whole interval lies within +- this "ties"; on yelp 1% of
                # perplexity (exp(0.01) = 1.010), the smallest difference worth a word. A spec sets its own
                # `margin` where its task's scale differs (the synthetic task's entropy is 0.334 nats/token)
COMPARE_KEYS = {"name", "set"}   # a [[compare]] row: its label, and its overrides on top of [base]
EVALUATION_KEYS = {"whole_valid", "test", "k_sweep", "fp32"}   # what [evaluations] may ask for (gptvae.evaluation.spec_evaluations)


@dataclass(frozen=True)
class SweepSpec:
    name: str                    # e.g. "kl-floor": experiments/kl_floor.toml, `make ablation-kl-floor`
    factor: str                  # the config key that varies, e.g. "objective.free_bits"
    values: tuple                # its grid
    base: dict = field(default_factory=dict)  # overrides on top of the preset, shared by every run
    baseline: bool = True        # also train the baseline row (the LM: the same decoder, no latent)
    description: str = ""        # the question the sweep asks (MLflow note, paper)
    label: str = ""              # the factor on axes and in tables, e.g. "λ (free bits, nats/dim)"
    symbol: str = ""             # the factor in running text, e.g. "λ"
    reference: object = None     # the setting every other one is compared with (default: the first value)
    evaluations: dict = field(default_factory=dict)   # beyond each run's own: whole_valid = true (every run on
                                 # the whole validation split at its own K), test = true (every run on the test
                                 # split), k_sweep = [settings] and fp32 = [settings] (seed 0; "lm": the baseline)
    dataset: str | None = None   # the corpus the question is about (default: the preset's, yelp); --dataset must agree
    compare: tuple = ()          # ComparisonRow: rows trained beside the grid, e.g. another family at the same budget
    margin: float = MARGIN       # nats/token: the report's words, "ties" within +- margin (a word, not a config:
                                 # it changes no run)

    @property
    def experiment(self) -> str:
        return f"ablation-{self.name}"

    @property
    def family(self) -> str:
        """The model family of the grid's rows (the comparison rows may be another)."""
        return str(self.base.get("model.kind", Config().model.kind))

    @property
    def categorical(self) -> bool:
        """A factor of names (e.g. schedules) rather than numbers: runs.csv's value is its position."""
        return any(isinstance(v, str) for v in self.values)

    @property
    def reference_value(self):
        return self.values[0] if self.reference is None else self.reference

    def setting(self, value) -> str:
        """'λ = 0.25', 'κ = 1/64', 'schedule = cyclical', or 'LM baseline' for None."""
        if value is None:
            return "LM baseline"
        return f"{self.symbol} = {value_text(value)}"


@dataclass(frozen=True)
class ComparisonRow:
    """A row beside a spec's grid: its own overrides on top of [base], e.g. a GPTVAE whose total floor matches
    a Free Transformer setting's budget. It is compared with the reference and the LM like any setting."""
    name: str                    # its label in tables and figures, e.g. "GPTVAE, 8 bits in all"
    overrides: dict              # on top of the spec's [base]
    kind: str                    # its model family
    value: object                # the spec's factor in its config (how its runs are told apart in runs.csv)


def spec_name(path: Path) -> str:
    """experiments/kl_floor.toml is the spec "kl-floor", run by `make ablation-kl-floor`."""
    return path.stem.replace("_", "-")


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a spec; every setting it plans is validated before anything trains."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"experiment spec {path} is a folder; give one of its specs: "
                          f"{', '.join(sorted(p.name for p in path.glob('*.toml'))) or 'none'}")
    if not path.is_file():
        known = ", ".join(sorted(p.name for p in path.parent.glob("*.toml"))) or "none"
        raise ConfigError(f"experiment spec {path} does not exist; specs in {path.parent}: {known}")
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"experiment spec {path} is not valid TOML: {err}") from None
    missing = {"name", "factor", "values"} - set(raw)
    if missing:
        raise ConfigError(f"experiment spec {path} lacks {', '.join(sorted(missing))}")
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise ConfigError(f"experiment spec {path} has unknown keys {', '.join(sorted(unknown))}; "
                          f"allowed: {', '.join(sorted(SPEC_KEYS))}")
    if raw["name"] != spec_name(path):
        raise ConfigError(f"experiment spec {path} is named {raw['name']!r}; its file name makes it "
                          f"{spec_name(path)!r} (`make ablation-{spec_name(path)}`): rename one of them")
    values = raw["values"]
    if not isinstance(values, list) or not values:
        raise ConfigError(f"experiment spec {path}: values = {values!r}; allowed: a non-empty list, e.g. [0.1, 0.5]")
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"experiment spec {path}: values = {values!r} repeats a value")
    short = raw["factor"].rsplit(".", 1)[-1]
    if len({isinstance(v, str) for v in values}) > 1:
        raise ConfigError(f"experiment spec {path}: values = {values!r} mixes names and numbers; allowed: one kind")
    dataset = raw.get("dataset")
    if dataset is not None and dataset not in DATASETS:
        raise ConfigError(f"experiment spec {path}: dataset = {dataset!r}; allowed: {', '.join(DATASETS)}")
    margin = raw.get("margin", MARGIN)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 < margin < math.inf:
        raise ConfigError(f"experiment spec {path}: margin = {margin!r}; allowed: a number of nats per token "
                          f"above 0 (a paired difference whose interval lies within +- margin ties), e.g. {MARGIN}")
    base = dict(raw.get("base", {}))
    spec = SweepSpec(name=raw["name"], factor=raw["factor"], values=tuple(values), base=base,
                     baseline=bool(raw.get("baseline", True)), description=raw.get("description", ""),
                     label=raw.get("label", raw["factor"]), symbol=raw.get("symbol", short),
                     reference=raw.get("reference"), evaluations=dict(raw.get("evaluations", {})),
                     dataset=dataset, compare=_comparisons(path, raw, base), margin=float(margin))
    unknown = set(spec.evaluations) - EVALUATION_KEYS
    if unknown:
        raise ConfigError(f"experiment spec {path}: [evaluations] has unknown keys {', '.join(sorted(unknown))}; "
                          f"allowed: {', '.join(sorted(EVALUATION_KEYS))}")
    for key in ("k_sweep", "fp32"):
        bad = [v for v in spec.evaluations.get(key, []) if v != "lm" and v not in spec.values]
        if bad:
            raise ConfigError(f"experiment spec {path}: [evaluations] {key} = {bad!r} are not settings of its grid "
                              f"{list(spec.values)!r} (or \"lm\")")
    if spec.reference is not None and spec.reference not in spec.values:
        raise ConfigError(f"experiment spec {path}: reference = {spec.reference!r} is not one of its values "
                          f"{list(spec.values)!r}")
    if spec.factor in spec.base:
        raise ConfigError(f"experiment spec {path} sets its factor {spec.factor} in [base] too; drop it there")
    for value in spec.values:   # fail before training
        apply_overrides(Config(), {**spec.base, spec.factor: value}).validate()
    grid = {(spec.family, repr(float(v)) if not isinstance(v, str) else v) for v in spec.values}
    for row in spec.compare:
        key = (row.kind, repr(float(row.value)) if not isinstance(row.value, str) else row.value)
        if key in grid:
            raise ConfigError(f"experiment spec {path}: [[compare]] {row.name!r} is the grid's own setting "
                              f"{spec.setting(row.value)}; a comparison row is another family or a value off the grid")
    return spec


def _comparisons(path: Path, raw: dict, base: dict) -> tuple[ComparisonRow, ...]:
    rows = raw.get("compare", [])
    if not isinstance(rows, list):
        raise ConfigError(f"experiment spec {path}: compare must be a list of [[compare]] tables, each with "
                          f"name = \"...\" and set = {{key = value, ...}}")
    out = []
    for row in rows:
        if not isinstance(row, dict) or set(row) != COMPARE_KEYS or not isinstance(row["set"], dict):
            raise ConfigError(f"experiment spec {path}: [[compare]] {row!r}; allowed: exactly "
                              f"name = \"...\" and set = {{key = value, ...}}")
        cfg = apply_overrides(Config(), {**base, **row["set"]}).validate()
        factor = raw["factor"]
        out.append(ComparisonRow(name=str(row["name"]), overrides=dict(row["set"]), kind=cfg.model.kind,
                              value=cfg.flat()[factor]))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"experiment spec {path}: [[compare]] names {names!r} repeat")
    return tuple(out)


def load_specs(folder: str | Path = "experiments") -> list[SweepSpec]:
    """Every spec in a folder, by name."""
    return sorted((load_spec(p) for p in Path(folder).glob("*.toml")), key=lambda s: s.name)


def plan_runs(spec: SweepSpec, *, preset_name: str, dataset: str | None, seeds, overrides=()) -> list[PlannedRun]:
    """Every (setting, seed) of a sweep, the baseline row first within each seed: every paired comparison
    reads it, so a study stopped part-way through a seed can still compare what it trained."""
    if spec.dataset and dataset and dataset != spec.dataset:
        raise ConfigError(f"--dataset {dataset}: experiment spec {spec.name} is about {spec.dataset}; drop "
                          f"--dataset (make: DATASET), or sweep a spec written for {dataset}")
    dataset = dataset or spec.dataset
    base = apply_overrides(apply_overrides(preset(preset_name, dataset=dataset), spec.base), overrides)
    if spec.factor in (overrides if isinstance(overrides, dict) else parse_overrides(overrides)):
        raise ConfigError(f"--set {spec.factor}=... overrides the factor this sweep varies ({spec.name}: "
                          f"{', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in spec.values)}); "
                          "drop it, or write a spec with the grid you want")
    short = spec.factor.split(".")[-1]
    runs = []
    for seed in seeds:
        if spec.baseline:
            # the baseline has no latent, so neither the objective's knobs nor a plateau judged on the floored
            # objective (for an LM it is the NLL itself) touch it: one config per preset and corpus
            cfg = apply_overrides(base, {"model.kind": BASELINE, "train.seed": seed})
            cfg = replace(cfg, objective=ObjectiveConfig(),
                          train=replace(cfg.train, plateau_floored=False)).validate()
            runs.append(PlannedRun(f"{BASELINE_NAME} seed={seed}", BASELINE, None, cfg))
        for value in spec.values:
            cfg = apply_overrides(base, {spec.factor: value, "train.seed": seed}).validate()
            runs.append(PlannedRun(f"{short}={value} seed={seed}", cfg.model.kind, value, cfg))
        for row in spec.compare:
            cfg = apply_overrides(base, {**row.overrides, "train.seed": seed}).validate()
            runs.append(PlannedRun(f"{row.name} seed={seed}", cfg.model.kind, row.value, cfg))
    return runs


def sweep_key(spec: SweepSpec, preset_name: str, dataset: str, overrides) -> str:
    return f"{spec.name}|{preset_name}|{dataset}|{'|'.join(sorted(overrides))}"


def exported_runs(results: str | Path | None, experiment: str | None = None) -> dict[tuple[str, int], str]:
    """(config hash, seed) -> run id of every run of `experiment` (None: of any) already exported to
    results/runs.csv.

    A study trained in pieces on machines whose stores are lost in between: what an earlier piece
    exported (and committed) is not trained again, in its own sweep or in another that shares it."""
    path = Path(results) / "runs.csv" if results else None
    if path is None or not path.is_file():
        return {}
    import pandas as pd

    runs = pd.read_csv(path, usecols=["experiment", "config_hash", "seed", "run_id"], dtype={"config_hash": str})
    if experiment is not None:
        runs = runs[runs.experiment == experiment]
    return {(h, int(seed)): run_id for h, seed, run_id in zip(runs.config_hash, runs.seed, runs.run_id)}


def plan_status(runs: list[PlannedRun], *, experiment: str, runs_root: str | Path,
                tracker: Tracker | None, exported: dict | None = None, elsewhere: dict | None = None
                ) -> list[dict]:
    """What a sweep would do with each planned run, read from the store (None: no store yet) without changing it."""
    exported = exported or {}
    elsewhere = elsewhere or {}
    finished: dict[tuple[str, str], list] = {}
    for r in tracker.finished_runs() if tracker else []:
        finished.setdefault((r.data.tags[TAG_HASH], r.data.tags[TAG_SEED]), []).append(r)
    exp_id = tracker.find_experiment(experiment) if tracker else None
    rows = []
    for run in runs:
        key = (run.config_hash, str(run.seed))
        here = [r for r in finished.get(key, []) if r.info.experiment_id == exp_id]
        trained = [r for r in finished.get(key, []) if TAG_SAME_AS not in r.data.tags]
        if (run.config_hash, run.seed) in exported:
            status = f"exported ({exported[run.config_hash, run.seed][:8]})"
        elif here and TAG_SAME_AS not in here[0].data.tags:
            status = f"finished ({here[0].info.run_id[:8]})"
        elif here:
            status = f"link to {here[0].data.tags[TAG_SAME_AS][:8]}"
        elif trained:
            status = f"link to {trained[0].info.run_id[:8]} (trained in another sweep)"
        elif (run.config_hash, run.seed) in elsewhere:
            status = f"link to {elsewhere[run.config_hash, run.seed][:8]} (exported by another sweep)"
        elif (run_dir_for(runs_root, experiment, run.cfg) / "checkpoint.pt").is_file():
            status = "to resume"
        else:
            status = "to train"
        rows.append({"name": run.name, "seed": run.seed, "config_hash": run.config_hash, "status": status})
    return rows


def run_sweep(spec: SweepSpec, *, preset_name: str, dataset: str | None, seeds, jobs: int = 1,
              executor: str | None = None, overrides=(), runs_root: str | Path = "runs",
              tracker: Tracker | None = None, progress: bool = True, results: str | Path | None = None
              ) -> list[dict]:
    """Train every planned run of a sweep with an executor (default: serial for one job, pool for more).

    results: an export folder; runs already exported there (by config hash and seed) are skipped."""
    from tqdm.auto import tqdm

    from gptvae.data import check_available
    from gptvae.executors import check_executor, get_executor

    # everything that can be checked is checked before the store is touched
    runs = plan_runs(spec, preset_name=preset_name, dataset=dataset, seeds=seeds, overrides=overrides)
    exported = exported_runs(results, spec.experiment)
    skipped = [{"name": run.name, "kind": run.kind, "value": run.value, "seed": run.seed,
                "run_id": exported[run.config_hash, run.seed], "status": f"exported in {results}"}
               for run in runs if (run.config_hash, run.seed) in exported]
    runs_to_do = [run for run in runs if (run.config_hash, run.seed) not in exported]
    elsewhere = exported_runs(results)   # trained by another sweep in an earlier piece: linked, not retrained
    shared = [run for run in runs_to_do if (run.config_hash, run.seed) in elsewhere]
    runs_to_do = [run for run in runs_to_do if (run.config_hash, run.seed) not in elsewhere]
    executor = executor or ("serial" if jobs <= 1 else "pool")
    check_executor(executor, jobs=jobs)
    check_available(runs[0].cfg.data)
    tracker = tracker or Tracker()
    chosen = get_executor(executor, jobs=jobs)   # a cluster is reached before anything is logged
    dataset = runs[0].cfg.data.dataset
    exp_id = tracker.experiment_id(spec.experiment)
    parent_id = tracker.parent_run(exp_id, sweep_key(spec, preset_name, dataset, overrides),
                                   name=f"{spec.name} ({preset_name}, {dataset})",
                                   tags={TAG_FACTOR: spec.factor, TAG_PRESET: preset_name, TAG_DATASET: dataset,
                                         TAG_VALUES: json.dumps(list(spec.values)), TAG_NOTE: spec.description})
    tracker.set_status(parent_id, "RUNNING")
    for run in shared:
        source = elsewhere[run.config_hash, run.seed]
        child, status = tracker.child_run(exp_id, config_hash=run.config_hash, seed=run.seed, name=run.name,
                                          parent_id=parent_id, tags={TAG_KIND: run.kind})
        if status != "FINISHED":
            tracker.set_tags(child, {TAG_SAME_AS: source})
            tracker.set_status(child, "FINISHED")
        skipped.append({"name": run.name, "kind": run.kind, "value": run.value, "seed": run.seed,
                        "run_id": source, "status": f"linked to {source[:8]} (exported by another sweep)"})
    tasks = [RunTask(run=run, experiment=spec.experiment, parent_id=parent_id, runs_root=str(runs_root),
                     tracking_uri=tracker.uri, progress=progress, gpus=GPU_PRESETS.get(preset_name, 0))
             for run in runs_to_do]

    rows: list[dict] = list(skipped)
    outcomes = chosen.run(tasks)
    try:
        for row in tqdm(outcomes, total=len(tasks), desc=spec.experiment, unit="run", disable=not progress,
                        position=1):
            rows.append(row)
    except BaseException as err:
        outcomes.close()   # the executor stops its runs (marking them) before the parent is marked
        tracker.set_status(parent_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    tracker.set_status(parent_id, "FINISHED")
    order = {run.name: i for i, run in enumerate(runs)}
    return sorted(rows, key=lambda r: order[r["name"]])


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows])


def format_rows(rows: list[dict]) -> str:
    """A plain-text table of a sweep's outcome."""
    return format_table(["run", "status", *SUMMARY_KEYS],
                        [[r["name"], r["status"], *("-" if r.get(k) is None else f"{r[k]:.3f}" for k in SUMMARY_KEYS)]
                         for r in rows])


def format_plan(rows: list[dict]) -> str:
    return format_table(["run", "seed", "config hash", "status"],
                        [[r["name"], str(r["seed"]), r["config_hash"], r["status"]] for r in rows])


__all__ = ["PlannedRun", "SweepSpec", "config_hash", "format_plan", "format_rows", "load_spec", "load_specs",
           "plan_runs", "plan_status", "run_sweep"]
