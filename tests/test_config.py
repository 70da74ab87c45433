"""Configs: no torch to read them, and identities (config hashes) that never move."""

import csv
import subprocess
import sys
from dataclasses import asdict, field, fields, make_dataclass, replace
from pathlib import Path

import pytest

from gptvae.cli import main
from gptvae.config import Config, config_hash, preset
from gptvae.sweep import load_spec, load_specs, plan_runs

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "paper" / "results" / "cpu" / "runs.csv"


def no_torch_after(code: str) -> subprocess.CompletedProcess:
    check = f"{code}\nimport sys\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    return subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_config_imports_no_torch():
    done = no_torch_after("import gptvae.config")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("argv", [["--help"], ["sweep", "--help"], ["train", "--help"]])
def test_help_loads_no_torch(argv):
    done = no_torch_after(f"from gptvae.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass")
    assert done.returncode == 0, done.stderr


def with_new_field(cfg: Config, section: str, value=None) -> Config:
    """cfg with one more field in `section`, as a later issue would add it: a default that keeps today's behaviour."""
    sub = getattr(cfg, section)
    grown = make_dataclass(type(sub).__name__, [("added_knob", int, field(default=7))], bases=(type(sub),),
                           frozen=True)
    kwargs = asdict(sub) if value is None else {**asdict(sub), "added_knob": value}
    return replace(cfg, **{section: grown(**kwargs)})


def all_planned_configs():
    for spec in load_specs(ROOT / "experiments"):
        for name in ("smoke", "cpu", "gpu"):
            for run in plan_runs(spec, preset_name=name, dataset=None, seeds=[0, 1]):
                yield run.cfg


@pytest.mark.parametrize("section", [f.name for f in fields(Config)])
def test_adding_a_field_with_a_default_changes_no_hash(section):
    for cfg in all_planned_configs():
        assert config_hash(with_new_field(cfg, section)) == config_hash(cfg)
    cfg = preset("cpu")
    assert config_hash(with_new_field(cfg, section, value=8)) != config_hash(cfg)   # away from it, it counts


def test_the_seed_is_not_part_of_the_identity():
    cfg = preset("cpu")
    assert config_hash(replace(cfg, train=replace(cfg.train, seed=5))) == config_hash(cfg)


def test_a_schedule_parameter_its_schedule_does_not_read_leaves_the_setting_as_it_is():
    """kl-schedule sets cycles = 3 in its base: its constant row is still λ = 0 of kl-floor (one run,
    shared), while the cycles of a cyclical schedule are part of its identity."""
    cfg = preset("cpu")
    constant = replace(cfg, objective=replace(cfg.objective, schedule="constant", cycles=3, zero_fraction=0.5))
    assert config_hash(constant) == config_hash(cfg)
    cyclical = replace(cfg, objective=replace(cfg.objective, schedule="cyclical"))
    assert config_hash(replace(cyclical, objective=replace(cyclical.objective, cycles=3))) != config_hash(cyclical)
    assert config_hash(replace(cyclical, objective=replace(cyclical.objective, zero_fraction=0.5))) == \
        config_hash(cyclical)
    schedule = {r.value: r.config_hash for r in plan_runs(load_spec(ROOT / "experiments" / "kl_schedule.toml"),
                                                          preset_name="cpu", dataset=None, seeds=[0])}
    floor = {r.value: r.config_hash for r in plan_runs(load_spec(ROOT / "experiments" / "kl_floor.toml"),
                                                       preset_name="cpu", dataset=None, seeds=[0])}
    assert schedule["constant"] == floor[0.0] and schedule[None] == floor[None]


def test_todays_hashes_are_pinned():
    """Two hashes of the cpu preset (the whole 3,000-step cosine, the plateau judged at its end by the mean test);
    the committed results depend on them."""
    floor = load_spec(ROOT / "experiments" / "kl_floor.toml")
    runs = {r.name: r for r in plan_runs(floor, preset_name="cpu", dataset=None, seeds=[0])}
    assert runs["free_bits=0.0 seed=0"].config_hash == "cc20137be74f"
    assert runs["LM baseline seed=0"].config_hash == "0a507c946093"


def test_the_cpu_budget_is_the_probes_and_its_runs_are_theirs():
    """cpu trains the whole 3,000-step cosine and judges the plateau at its end, as the budget probes measured it;
    its λ = 0.1 and LM runs are the probes' 3,000-step runs (one run each, linked, never trained twice)."""
    from gptvae.config import PRESETS

    assert {k: PRESETS["cpu"][k] for k in ("train.steps", "train.plateau_test", "train.stop_on_plateau")} == \
        {"train.steps": 3_000, "train.plateau_test": "mean", "train.stop_on_plateau": False}
    study = {r.name: r.config_hash for r in plan_runs(load_spec(ROOT / "experiments" / "kl_floor.toml"),
                                                      preset_name="cpu", dataset=None, seeds=[0])}
    probes = {name: {r.name: r.config_hash for r in plan_runs(load_spec(ROOT / "experiments" / "probes" / f"{name}.toml"),
                                                              preset_name="cpu", dataset=None, seeds=[0])}
              for name in ("budget_vae", "budget_lm")}
    assert probes["budget_vae"]["steps=3000 seed=0"] == study["free_bits=0.1 seed=0"]
    assert probes["budget_lm"]["steps=3000 seed=0"] == study["LM baseline seed=0"]
    assert probes["budget_vae"]["steps=4500 seed=0"] not in study.values()


def test_committed_runs_are_the_runs_plan_prints(tmp_path, monkeypatch, capsys):
    """Every row of paper/results/cpu/runs.csv has the config hash `sweep --plan` prints for its setting and seed."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/none-yet.db")
    rows = list(csv.DictReader(COMMITTED.open()))
    assert rows
    for spec in load_specs(ROOT / "experiments"):
        mine = [r for r in rows if r["experiment"] == spec.experiment]
        if not mine:
            continue
        seeds = sorted({r["seed"] for r in mine})
        assert main(["sweep", str(ROOT / "experiments" / f"{spec.name.replace('-', '_')}.toml"), "--preset", "cpu",
                     "--seeds", " ".join(seeds), "--plan", "--runs-root", str(tmp_path / "runs")]) == 0
        printed = {}   # (run name, seed) -> hash, from the printed table
        for line in capsys.readouterr().out.splitlines():
            cells = line.rsplit(maxsplit=4)
            if len(cells) == 5 and cells[-1] == "train" and cells[-2] == "to":
                printed[(cells[0], cells[1])] = cells[2]
        short = spec.factor.rsplit(".", 1)[-1]
        for row in mine:
            compares = {printed.get((f"{c.name} seed={row['seed']}", row["seed"])) for c in spec.compare}
            if row["config_hash"] in compares:   # a [[compare]] row (its setting is its own factor's value)
                continue
            value = next((v for v in spec.values if str(v) == row["setting"]), None) if row["setting"] else None
            name = f"LM baseline seed={row['seed']}" if value is None else f"{short}={value} seed={row['seed']}"
            assert printed[(name, row["seed"])] == row["config_hash"], (spec.name, name)
    assert not (tmp_path / "none-yet.db").exists()   # planning reads a store, it never makes one
