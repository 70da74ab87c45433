"""Sweeps against a real SQLite MLflow store: structure, skipping finished runs, concurrency, CLI errors."""

import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from gptvae.cli import main
from gptvae.config import ConfigError, apply_overrides, config_hash, preset
from gptvae.sweep import exported_runs, load_spec, plan_runs, plan_status, run_sweep
from gptvae.tracking import Tracker, TrackingError

ROOT = Path(__file__).resolve().parents[1]
FAST = ["data.dataset=synthetic", "data.synthetic_train=300", "data.synthetic_eval=32", "train.steps=6",
        "train.eval_every=3", "train.log_every=3", "eval.max_sequences=16", "eval.num_samples=2"]


def write_spec(folder: Path, name: str, values) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f'name = "{name}"\nfactor = "objective.free_bits"\nvalues = {list(values)}\nbaseline = true\n')
    return path


@pytest.mark.parametrize("spec", sorted((ROOT / "experiments").glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_specs_plan_their_grid_plus_the_lm_row(spec):
    s = load_spec(spec)
    runs = plan_runs(s, preset_name="cpu", dataset=None, seeds=[0, 1])
    assert len(runs) == 2 * (len(s.values) + 1 + len(s.compare))
    assert sum(r.kind == "lm" for r in runs) == 2
    assert {r.cfg.data.dataset for r in runs} == {s.dataset or "yelp"}
    factor_values = {apply_overrides(preset("cpu"), {}).flat()[s.factor]} | set(s.values)
    assert {r.cfg.flat()[s.factor] for r in runs if r.kind == s.family} <= factor_values
    assert [r.value for r in runs if r.kind not in ("lm", s.family)] == [c.value for c in s.compare if c.kind != s.family] * 2


def test_every_shipped_spec_shares_one_lm_row_per_seed():
    """The LM has no latent, so no objective knob of a spec's base may make its row another config: one LM row per
    corpus and training budget (the Free Transformer specs pin the older 2,000-step budget, so yelp has two)."""
    specs = [load_spec(p) for p in sorted((ROOT / "experiments").glob("*.toml"))]
    lm: dict[tuple, set[str]] = {}   # (corpus, steps, plateau test, stop on plateau) -> the LM rows' hashes
    for s in specs:
        for r in plan_runs(s, preset_name="cpu", dataset=None, seeds=[0]):
            if r.kind == "lm":
                budget = (r.cfg.data.dataset, r.cfg.train.steps, r.cfg.train.plateau_test, r.cfg.train.stop_on_plateau)
                lm.setdefault(budget, set()).add(config_hash(r.cfg))
    assert specs and all(len(hashes) == 1 for hashes in lm.values()), lm
    assert sorted((dataset, steps) for dataset, steps, *_ in lm) == [("synthetic", 2000), ("yelp", 2000), ("yelp", 3000)]


def test_a_spec_about_one_corpus_refuses_another_and_plans_its_comparison_rows(tmp_path):
    spec = load_spec(ROOT / "experiments" / "kappa.toml")
    runs = plan_runs(spec, preset_name="smoke", dataset=None, seeds=[0])
    assert {r.cfg.data.dataset for r in runs} == {"synthetic"}
    assert [r.kind for r in runs] == ["lm"] + ["freetransformer"] * len(spec.values) + ["vae"]
    gptvae = runs[-1].cfg
    assert gptvae.objective.free_bits_mode == "total" and gptvae.objective.free_bits_nats == pytest.approx(8.375 * math.log(2))
    assert plan_runs(spec, preset_name="smoke", dataset="synthetic", seeds=[0]) == runs
    with pytest.raises(ConfigError, match="--dataset yelp: experiment spec kappa is about synthetic"):
        plan_runs(spec, preset_name="smoke", dataset="yelp", seeds=[0])


@pytest.mark.parametrize("extra,message", [
    ('dataset = "imdb"\n', "dataset = 'imdb'; allowed: synthetic, yelp"),
    ('[[compare]]\nname = "same"\nset = { "objective.free_bits" = 0.5 }\n', "is the grid's own setting"),
    ('[[compare]]\nname = "x"\n', "allowed: exactly name"),
    ('[[compare]]\nname = "x"\nset = { "model.kind" = "gru" }\n', "model.kind"),
    ('[[compare]]\nname = "x"\nset = { "model.kind" = "lm" }\n[[compare]]\nname = "x"\nset = { "model.dim" = 8 }\n',
     "repeat"),
])
def test_bad_spec_datasets_and_comparison_rows_are_one_clear_error(tmp_path, extra, message):
    path = write_spec(tmp_path, "floor", [0.0, 0.5])
    text = path.read_text()
    path.write_text(extra + text if extra.startswith("dataset") else text + extra)
    with pytest.raises(ConfigError, match=re.escape(message) if "'" in message else message):
        load_spec(path)


def test_sweep_logs_parent_children_curves_and_skips_on_rerun(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    spec = load_spec(write_spec(tmp_path, "floor", [0.0, 0.5]))
    rows = run_sweep(spec, preset_name="smoke", dataset=None, seeds=[0], overrides=FAST,
                     runs_root=tmp_path / "runs", tracker=tracker, progress=False)
    assert [r["status"] for r in rows] == ["trained"] * 3

    client = MlflowClient(tracker.uri)
    exp = client.get_experiment_by_name("ablation-floor")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.params["objective.free_bits"] in ("0.0", "0.5")
        assert {"gptvae.git_commit", "gptvae.config_hash", "gptvae.seed"} <= set(child.data.tags)
        assert "valid.iw_nll" in child.data.metrics and child.data.params["valid.iw_samples"] == "8"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")] == [3, 6]
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val/neg_elbo")] == [3, 6]
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"samples.txt", "config.json", "checkpoint_path.txt"} <= artifacts

    again = run_sweep(spec, preset_name="smoke", dataset=None, seeds=[0], overrides=FAST,
                      runs_root=tmp_path / "runs", tracker=tracker, progress=False)
    assert [r["status"] for r in again] == ["skipped (finished)"] * 3
    assert len(client.search_runs([exp.experiment_id])) == 4


def test_a_sqlite_stores_artifacts_live_beside_it_whatever_the_working_folder(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)   # MLflow's default would put them in ./mlruns here
    (tmp_path / "store").mkdir()
    tracker = Tracker(f"sqlite:///{tmp_path}/store/mlflow.db")
    exp = tracker.client.get_experiment(tracker.experiment_id("ablation-x"))
    assert exp.artifact_location == (tmp_path / "store" / "mlruns" / "ablation-x").as_uri()
    assert not (elsewhere / "mlruns").exists()


def test_two_sweeps_at_once_on_one_sqlite_store(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    sets = [f"--set={s}" for s in FAST]
    procs = [subprocess.Popen([sys.executable, "-m", "gptvae", "sweep", str(write_spec(tmp_path, name, [0.0, 0.2])),
                               "--preset", "smoke", "--quiet", "--runs-root", str(tmp_path / "runs"), *sets],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("first", "second")]
    results = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err[-2000:]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    for name in ("first", "second"):
        runs = client.search_runs([client.get_experiment_by_name(f"ablation-{name}").experiment_id])
        assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}


@pytest.mark.parametrize("argv,message", [
    (["train", "--preset", "huge"], "preset='huge' is invalid; allowed: smoke, cpu, gpu"),
    (["train", "--preset", "smoke", "--set", "model.dim_latent"], "malformed: expected section.field=value"),
    (["train", "--preset", "smoke", "--set", "model.dim_latent=big"], "model.dim_latent='big': expected an integer"),
    (["train", "--preset", "smoke", "--set", "model.width=3"], "'model.width' is not a config key"),
    (["train", "--preset", "smoke", "--set", "objective.free_bits=-1"], "objective.free_bits=-1.0 is invalid"),
    (["train", "--preset", "smoke", "--dataset", "imdb"], "data.dataset='imdb' is invalid; allowed: synthetic"),
    (["sweep", "experiments/nope.toml"], "does not exist; specs in"),
    (["sweep", "experiments/kl_floor.toml", "--seeds", "a b"], "--seeds 'a b' is malformed"),
])
def test_bad_command_lines_get_one_clear_error(argv, message, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(ROOT)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_unreachable_tracking_uri_fails_fast(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    started = time.time()
    with pytest.raises(TrackingError, match="unreachable"):
        Tracker()
    assert time.time() - started < 15


def test_unwritable_sqlite_folder_is_refused():
    with pytest.raises(TrackingError, match="does not exist or is not writable"):
        Tracker("sqlite:////nonexistent/folder/mlflow.db")


def test_config_type_errors_from_specs(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nfactor = "model.dim_latent"\nvalues = ["many"]\n')
    with pytest.raises(ConfigError, match="expected an integer"):
        load_spec(bad)


def test_a_setting_another_sweep_trained_is_linked_not_retrained(tmp_path):
    """beta = 1 in a kl-weight sweep is lambda = 0 in a kl-floor sweep, and the LM row is shared."""
    from gptvae.results import collect_history, collect_runs

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    common = dict(preset_name="smoke", dataset=None, seeds=[0], runs_root=tmp_path / "runs", tracker=tracker,
                  progress=False)
    floor = run_sweep(load_spec(write_spec(tmp_path, "floor", [0.0, 0.5])), overrides=FAST, **common)
    weight_spec = tmp_path / "weight.toml"
    weight_spec.write_text('name = "weight"\nfactor = "objective.beta"\nvalues = [0.5, 1.0]\n')
    planned = plan_runs(load_spec(weight_spec), preset_name="smoke", dataset=None, seeds=[0], overrides=FAST)
    before = plan_status(planned, experiment="ablation-weight", runs_root=tmp_path / "runs", tracker=tracker)
    assert [r["status"].split(" (")[0][:7] for r in before] == ["link to", "to trai", "link to"]   # LM first
    weight = run_sweep(load_spec(weight_spec), overrides=FAST, **common)
    after = plan_status(planned, experiment="ablation-weight", runs_root=tmp_path / "runs", tracker=tracker)
    assert [r["status"][:8] for r in after] == ["link to ", "finished", "link to "]
    assert [r["config_hash"] for r in after] == [r.config_hash for r in planned]
    by_name = {r["name"]: r for r in floor + weight}
    assert [r["status"][:6] for r in weight] == ["reused", "traine", "reused"]
    assert by_name["beta=1.0 seed=0"]["status"] == f"reused {by_name['free_bits=0.0 seed=0']['run_id'][:8]}"
    assert by_name["beta=1.0 seed=0"]["valid.kl"] == by_name["free_bits=0.0 seed=0"]["valid.kl"]

    client = MlflowClient(tracker.uri)
    link = client.get_run(by_name["beta=1.0 seed=0"]["run_id"])
    assert link.info.status == "FINISHED" and link.data.metrics == {}    # nothing logged twice
    assert link.data.tags["gptvae.same_as"] == by_name["free_bits=0.0 seed=0"]["run_id"]

    runs = collect_runs(tracker, preset="smoke")
    weight_rows = runs[runs.experiment == "ablation-weight"].set_index("value", drop=False)
    assert weight_rows.loc[1.0, "run_id"] == by_name["free_bits=0.0 seed=0"]["run_id"]
    assert weight_rows.loc[1.0, "trained_in"] == "ablation-floor"
    assert weight_rows.loc[0.5, "trained_in"] == "ablation-weight"
    lm = runs[runs.kind == "lm"]
    assert len(lm) == 2 and lm.run_id.nunique() == 1
    history = collect_history(tracker, runs.run_id.unique())
    assert not history.duplicated(["run_id", "key", "step"]).any()

    again = run_sweep(load_spec(weight_spec), overrides=FAST, **common)
    assert [r["status"] for r in again] == ["skipped (finished)"] * 3
    assert {r["name"]: r for r in again}["beta=1.0 seed=0"]["valid.kl"] == by_name["free_bits=0.0 seed=0"]["valid.kl"]


def test_a_spec_dropped_into_experiments_is_a_make_target(tmp_path):
    """No other edit: `make ablation-<name>` finds the new spec by its file name and runs its sweep."""
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "my_factor.toml").write_text(
        'name = "my-factor"\nlabel = "μ (a test factor)"\nsymbol = "μ"\nfactor = "objective.beta"\n'
        'values = [0.5, 1.0]\ndescription = "dropped in by a test"\n')
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    make = ["make", "-f", str(ROOT / "Makefile"), "-C", str(tmp_path), f"PY={sys.executable}", "STAMP=",
            "PRESET=smoke", "DATASET=synthetic", f"MLFLOW_TRACKING_URI={uri}", f"SET={' '.join(FAST)}"]
    listed = subprocess.run([*make, "help"], capture_output=True, text=True, timeout=60)
    assert "ablation-my-factor" in listed.stdout
    done = subprocess.run([*make, "ablation-my-factor"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ablation-my-factor: 3 runs" in done.stdout
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ablation-my-factor").experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}   # the parent and three children


def test_export_keeps_one_row_per_setting_and_seed(tmp_path):
    """Two children for one setting and seed in one experiment (a row planned under an old hash and
    again under today's) export as one row: the first made."""
    from gptvae.results import collect_runs
    from gptvae.tracking import TAG_FACTOR, TAG_KIND, TAG_PRESET

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    exp = tracker.experiment_id("ablation-x")
    parent = tracker.parent_run(exp, "x|smoke|yelp|", name="x", tags={TAG_FACTOR: "objective.beta", TAG_PRESET: "smoke"})
    made = []
    for made_hash in ("oldhash", "newhash"):
        run_id, _ = tracker.child_run(exp, config_hash=made_hash, seed=0, name="LM baseline seed=0",
                                      parent_id=parent, tags={TAG_KIND: "lm"})
        tracker.set_status(run_id, "FINISHED")
        made.append(run_id)
        time.sleep(0.01)
    runs = collect_runs(tracker)
    assert list(runs.run_id) == [made[0]] and "started" not in runs


def test_a_study_trained_in_pieces_on_two_machines_adds_up_in_the_export(tmp_path):
    """Machine A trains seed 0 and exports; its store is lost. Machine B, with a fresh store and the
    committed export, trains only seed 1, and its export merges into the same files without dropping A's."""
    from gptvae.results import FILES, SENTENCES, export_results

    spec = load_spec(write_spec(tmp_path, "floor", [0.5]))
    results = tmp_path / "results"
    first = Tracker(f"sqlite:///{tmp_path}/a.db")
    run_sweep(spec, preset_name="smoke", dataset=None, seeds=[0], overrides=FAST, runs_root=tmp_path / "a",
              tracker=first, progress=False, results=results)
    export_results(results, tracker=first, preset="smoke")
    from_a = (results / "runs.csv").read_text()

    second = Tracker(f"sqlite:///{tmp_path}/b.db")
    rows = run_sweep(spec, preset_name="smoke", dataset=None, seeds=[0, 1], overrides=FAST, runs_root=tmp_path / "b",
                     tracker=second, progress=False, results=results)
    assert [r["status"].split(" ")[0] for r in rows] == ["exported", "exported", "trained", "trained"]
    counts = export_results(results, tracker=second, preset="smoke")
    import pandas as pd

    runs = pd.read_csv(results / "runs.csv")
    assert len(runs) == 4 and sorted(runs.seed) == [0, 0, 1, 1]
    assert set(pd.read_csv(results / "history.csv").run_id) == set(runs.run_id)
    assert counts[SENTENCES] == 4 and all(line in (results / "runs.csv").read_text()
                                          for line in from_a.splitlines()[1:])
    before = {name: (results / name).read_bytes() for name in FILES}
    export_results(results, tracker=second, preset="smoke")   # the same store again: the same bytes
    assert {name: (results / name).read_bytes() for name in FILES} == before


def test_a_fresh_store_links_runs_another_sweep_exported_instead_of_training_them(tmp_path):
    """Sweep "floor" trains and exports on machine A; on machine B (a fresh store), sweep "twin" plans the
    same configs. It trains nothing: its children link to the exported runs, and the export gives "twin"
    rows with those run ids (trained in "floor") while keeping floor's own rows."""
    import pandas as pd

    from gptvae.results import export_results

    results = tmp_path / "results"
    first = Tracker(f"sqlite:///{tmp_path}/a.db")
    run_sweep(load_spec(write_spec(tmp_path, "floor", [0.5])), preset_name="smoke", dataset=None, seeds=[0],
              overrides=FAST, runs_root=tmp_path / "a", tracker=first, progress=False, results=results)
    export_results(results, tracker=first, preset="smoke")

    second = Tracker(f"sqlite:///{tmp_path}/b.db")
    twin = load_spec(write_spec(tmp_path, "twin", [0.5]))
    plan = plan_status(plan_runs(twin, preset_name="smoke", dataset=None, seeds=[0], overrides=FAST),
                       experiment=twin.experiment, runs_root=tmp_path / "b", tracker=None,
                       elsewhere=exported_runs(results))
    assert all("exported by another sweep" in row["status"] for row in plan)
    rows = run_sweep(twin, preset_name="smoke", dataset=None, seeds=[0], overrides=FAST, runs_root=tmp_path / "b",
                     tracker=second, progress=False, results=results)
    assert all(r["status"].startswith("linked to") for r in rows) and not (tmp_path / "b").exists()
    from gptvae.evaluation import spec_evaluations

    assert second.trained_runs(twin.experiment) == []   # its links point at runs machine B never held:
    assert spec_evaluations(twin, second, preset_name="smoke", overrides=FAST) == []   # nothing to evaluate here
    export_results(results, tracker=second, preset="smoke")
    runs = pd.read_csv(results / "runs.csv")
    floor, mine = runs[runs.experiment == "ablation-floor"], runs[runs.experiment == "ablation-twin"]
    assert len(floor) == 2 and len(mine) == 2
    assert set(mine.run_id) == set(floor.run_id) and set(mine.trained_in) == {"ablation-floor"}
    assert mine.set_index("kind")["valid.iw_nll"].equals(floor.set_index("kind")["valid.iw_nll"])
    again = run_sweep(twin, preset_name="smoke", dataset=None, seeds=[0], overrides=FAST, runs_root=tmp_path / "b",
                      tracker=second, progress=False, results=results)
    assert all(r["status"].startswith("exported") for r in again)   # now its own rows: nothing logged twice


def test_an_export_refuses_to_merge_two_versions_of_a_study():
    """The same setting and seed under another config (a changed preset) is not silently dropped or mixed."""
    import pandas as pd

    from gptvae.errors import ResultsMissingError
    from gptvae.results import RUN_KEY, merge_by_run

    old = pd.DataFrame([{"experiment": "ablation-x", "kind": "vae", "value": 0.5, "seed": 0, "run_id": "a",
                         "config_hash": "h1"}])
    same = old.assign(run_id="b")
    assert list(merge_by_run(old, same, key=RUN_KEY).run_id) == ["a"]   # the committed run stands
    with pytest.raises(ResultsMissingError, match="two versions of the study"):
        merge_by_run(old, same.assign(config_hash="h2"), key=RUN_KEY)


def test_a_ray_head_that_answers_but_refuses_says_why(monkeypatch):
    """A head whose port answers but which refuses the driver (Ray's token authentication, the usual cause) is
    not 'unreachable': the one line names the address and how to make the driver and the nodes agree. An
    address Ray resolves itself ("auto") was never probed, so its failure says it cannot reach the cluster."""
    ray = pytest.importorskip("ray")
    from gptvae.errors import ClusterError
    from gptvae.executors import on_ray

    def refuse(**_):
        raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    probe = on_ray._check_reachable
    monkeypatch.setattr(on_ray, "_check_reachable", lambda address: True)   # the port answers
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    with pytest.raises(ClusterError) as caught:
        on_ray.connect()
    message = str(caught.value)
    assert "\n" not in message and "RAY_ADDRESS=10.0.0.1:6379 answers but refused" in message
    assert "RAY_AUTH_MODE=token" in message and "Failed to connect" in message

    monkeypatch.setattr(on_ray, "_check_reachable", probe)
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    with pytest.raises(ClusterError) as caught:
        on_ray.connect()
    assert "cannot reach the Ray cluster at RAY_ADDRESS=auto" in str(caught.value)
    assert "RAY_AUTH_MODE" not in str(caught.value)
