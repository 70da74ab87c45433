"""Bad input, as a hostile new user would give it: one line naming the value and what is allowed,
exit status 2, no traceback, and nothing left behind (no store made, no run RUNNING, no stray file)."""

import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from gptvae.cli import main

ROOT = Path(__file__).resolve().parents[1]
FLOOR = str(ROOT / "experiments" / "kl_floor.toml")
SMOKE = ["train", "--preset", "smoke", "--dataset", "synthetic"]


def spec(text: str, name: str = "bad"):
    """A spec file written into the case's folder, named so that its name matches."""
    def setup(folder: Path) -> str:
        path = folder / f"{name}.toml"
        path.write_text(text)
        return str(path)
    return setup


GOOD = 'name = "bad"\nfactor = "objective.free_bits"\n'


def no_specs(folder: Path) -> str:
    """A folder of specs that holds none."""
    (folder / "specs").mkdir()
    return str(folder / "specs")

CASES = {
    # presets, overrides and config values
    "unknown preset": (SMOKE[:1] + ["--preset", "huge"], "preset='huge' is invalid; allowed: smoke, cpu, gpu"),
    "override without =": (SMOKE + ["--set", "model.dim_latent"], "malformed: expected section.field=value"),
    "override not a number": (SMOKE + ["--set", "model.dim_latent=big"], "model.dim_latent='big': expected an integer"),
    "unknown field": (SMOKE + ["--set", "model.width=3"], "'model.width' is not a config key; model has: kind"),
    "unknown section": (SMOKE + ["--set", "optim.lr=1"], "'optim.lr' is not a config key; sections: model"),
    "negative floor": (SMOKE + ["--set", "objective.free_bits=-1"], "objective.free_bits=-1.0 is invalid"),
    "infinite floor": (SMOKE + ["--set", "objective.free_bits=inf"], "objective.free_bits=inf is invalid; allowed: a finite"),
    "nan floor": (SMOKE + ["--set", "objective.free_bits=nan"], "objective.free_bits=nan is invalid; allowed: a finite"),
    "infinite lr": (SMOKE + ["--set", "train.lr=inf"], "train.lr=inf is invalid; allowed: a finite number"),
    "zero lr": (SMOKE + ["--set", "train.lr=0"], "train.lr=0.0 is invalid; allowed: a learning rate > 0"),
    "negative lr": (SMOKE + ["--set", "train.lr=-1e-3"], "train.lr=-0.001 is invalid"),
    "zero steps": (SMOKE + ["--set", "train.steps=0"], "train.steps=0 is invalid; allowed: an integer >= 1"),
    "negative batch": (SMOKE + ["--set", "train.batch_tokens=-5"], "train.batch_tokens=-5 is invalid"),
    "dropout of one": (SMOKE + ["--set", "model.dropout=1"], "model.dropout=1.0 is invalid; allowed: a probability in [0, 1)"),
    "latent dropout of one": (SMOKE + ["--set", "objective.latent_dropout=1"], "objective.latent_dropout=1.0 is invalid"),
    "unknown free-bits mode": (SMOKE + ["--set", "objective.free_bits_mode=sideways"], "allowed: per_dim, batch_dim, total"),
    "unknown schedule": (SMOKE + ["--set", "objective.schedule=sine"], "allowed: constant, linear, cyclical, zero_linear"),
    "unknown family": (SMOKE + ["--set", "model.kind=rnn"], "model.kind='rnn' is invalid; allowed: vae, lm"),
    "latent of no dimension": (SMOKE + ["--set", "model.dim_latent=0"], "model.dim_latent=0 is invalid for a VAE"),
    "unknown split": (SMOKE + ["--set", "eval.splits=valid,dev"], "allowed: a non-empty subset of train, valid, test"),
    "no importance samples": (SMOKE + ["--set", "eval.iw_samples=0"], "eval.iw_samples=0 is invalid"),
    "one evaluation sequence": (SMOKE + ["--set", "eval.max_sequences=1"], "eval.max_sequences=1 is invalid"),
    "not a boolean": (SMOKE + ["--set", "train.autocast=maybe"], "train.autocast='maybe': expected a boolean"),
    "negative KL weight": (SMOKE + ["--set", "objective.beta=-0.5"], "objective.beta=-0.5 is invalid"),
    "lr ratio above one": (SMOKE + ["--set", "train.min_lr_ratio=2"], "train.min_lr_ratio=2.0 is invalid"),
    "no cycles": (SMOKE + ["--set", "objective.cycles=0"], "objective.cycles=0 is invalid"),
    "unknown dataset": (SMOKE[:3] + ["--dataset", "imdb"], "data.dataset='imdb' is invalid; allowed: synthetic"),
    "negative seed": (SMOKE + ["--seed", "-1"], "train.seed=-1 is invalid; allowed: an integer in [0, 2^63)"),
    "seed not a number": (SMOKE + ["--seed", "one"], "argument --seed: invalid int value: 'one'"),
    "unknown command": (["frobnicate"], "invalid choice: 'frobnicate'"),
    # sweeps and their specs
    "spec is a folder": (["sweep", str(ROOT / "experiments")], "is a folder; give one of its specs: kappa.toml, kappa_yelp.toml, kl_floor.toml"),
    "spec does not exist": (["sweep", str(ROOT / "experiments" / "nope.toml")], "does not exist; specs in"),
    "spec with no values": (["sweep", spec(GOOD + "values = []\n")], "values = []; allowed: a non-empty list"),
    "spec with one value, not a list": (["sweep", spec(GOOD + "values = 0.5\n")], "values = 0.5; allowed: a non-empty list"),
    "spec not TOML": (["sweep", spec(GOOD + "values = [0.1,\n")], "is not valid TOML"),
    "spec without a factor": (["sweep", spec('name = "bad"\nvalues = [1]\n')], "lacks factor"),
    "spec with an unknown key": (["sweep", spec(GOOD + "values = [0.1]\nvalus = [1]\n")], "unknown keys valus"),
    "spec named unlike its file": (["sweep", spec(GOOD.replace('"bad"', '"good"') + "values = [0.1]\n")],
                                   "is named 'good'; its file name makes it 'bad'"),
    "spec varies no config key": (["sweep", spec('name = "bad"\nfactor = "objective.nope"\nvalues = [1.0]\n')],
                                  "'objective.nope' is not a config key"),
    "spec value of the wrong type": (["sweep", spec('name = "bad"\nfactor = "model.dim_latent"\nvalues = ["many"]\n')],
                                     "model.dim_latent='many': expected an integer"),
    "results from a folder without specs": (["results", "--out", "out", "--specs", no_specs],
                                            "holds no experiment spec (*.toml)"),
    "results from a spec that does not exist": (["results", "--out", "out", "--specs", "nope.toml"],
                                                "experiment spec nope.toml does not exist"),
    "spec repeats a value": (["sweep", spec(GOOD + "values = [0.1, 0.1]\n")], "repeats a value"),
    "spec margin not above 0": (["sweep", spec(GOOD + "values = [0.1]\nmargin = 0\n")],
                                "margin = 0; allowed: a number of nats per token above 0"),
    "spec margin not a number": (["sweep", spec(GOOD + "values = [0.1]\nmargin = \"tight\"\n")],
                                 "margin = 'tight'; allowed: a number of nats per token above 0"),
    "spec value out of range": (["sweep", spec(GOOD + "values = [0.1, -2.0]\n")], "objective.free_bits=-2.0 is invalid"),
    "seeds not numbers": (["sweep", FLOOR, "--seeds", "a b"], "--seeds 'a b' is malformed"),
    "no seeds": (["sweep", FLOOR, "--seeds", " "], "--seeds is empty"),
    "negative seed in a sweep": (["sweep", FLOOR, "--seeds", "0 -1"], "--seeds '0 -1' is invalid"),
    "repeated seed": (["sweep", FLOOR, "--seeds", "1 1"], "allowed: distinct integers >= 0"),
    "no jobs": (["sweep", FLOOR, "--preset", "smoke", "--jobs", "0"], "--jobs=0 is invalid; allowed: an integer >= 1"),
    "negative jobs": (["sweep", FLOOR, "--preset", "smoke", "--jobs", "-1"], "--jobs=-1 is invalid"),
    "unknown executor": (["sweep", FLOOR, "--executor", "slurm"], "argument --executor: invalid choice: 'slurm'"),
    "override of the swept factor": (["sweep", FLOOR, "--preset", "smoke", "--set", "objective.free_bits=0.5"],
                                     "overrides the factor this sweep varies (kl-floor: 0, 0.05"),
    # evaluating and sampling
    "no importance samples to evaluate": (["evaluate", "abc", "--iw-samples", "0"], "--iw-samples=0 is invalid"),
    "one sequence to evaluate": (["evaluate", "abc", "--max-sequences", "1"], "--max-sequences=1 is invalid"),
    "evaluate an unknown split": (["evaluate", "abc", "--split", "dev"], "argument --split: invalid choice: 'dev'"),
    "a K sweep that is not numbers": (["evaluate", "abc", "--k-sweep", "1,ten"], "--k-sweep='1,ten': give"),
    "a filter on no config key": (["evaluate", "--experiment", "x", "--where", "lambda=1"],
                                  "--where 'lambda=1' is invalid; allowed: KEY=VALUE"),
    "a filter without an experiment": (["evaluate", "abc", "--where", "train.seed=0"], "give --experiment NAME too"),
    "no evaluation processes": (["evaluate", "--specs", "experiments", "--jobs", "0"], "--jobs 0: allowed: an integer >= 1"),
    "parallel evaluations of named runs": (["evaluate", "abc", "--jobs", "2"], "more than 1 only with --specs"),
    "no samples": (["sample", "abc", "--n", "0"], "--n=0 is invalid; allowed: a number of samples >= 1"),
    "negative temperature": (["sample", "abc", "--temperature", "-1"], "--temperature=-1.0 is invalid"),
    "nan temperature": (["sample", "abc", "--temperature", "nan"], "--temperature=nan is invalid"),
    "empty reference": (["sample", "abc", "--reference", "  "], "--reference='  ' is invalid; allowed: a non-empty"),
    # results, paper, data
    "results from no store": (["results", "--out", "out"], "does not exist: run a sweep first"),
    "paper without results": (["paper", "--preset", "nothing-here"], "run `make results` first"),
    "unknown corpus": (["data", "imdb"], "unknown dataset 'imdb'; allowed: synthetic, yelp, ptb, shakespeare"),
}


@pytest.mark.parametrize("argv,message", CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_clear_line_and_leaves_nothing(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.setenv("GPTVAE_PAPER_DIR", str(tmp_path / "paper"))
    argv = [a(tmp_path) if callable(a) else a for a in argv]
    before = {p for p in tmp_path.rglob("*")}
    try:
        status = main(argv)
    except SystemExit as exit_:   # argparse
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err
    assert {p for p in tmp_path.rglob("*")} == before   # no store, no run folder, no temporary file


@pytest.mark.parametrize("uri,message", [
    ("sqlite:////no/such/folder/mlflow.db", "folder /no/such/folder does not exist or is not writable"),
    ("ftp://example.org/store", "has an unsupported scheme 'ftp'"),
    ("http://127.0.0.1:9", "is unreachable"),
    ("sqlite:///{tmp}/not-a-store.db", "is not an MLflow store (the file is not an SQLite database)"),
    ("sqlite:///{tmp}", "is not a writable file"),
])
def test_unusable_stores_are_one_clear_line(uri, message, tmp_path, monkeypatch, capsys):
    (tmp_path / "not-a-store.db").write_text("these are not the tables you are looking for\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.format(tmp=tmp_path))
    monkeypatch.setenv("GPTVAE_DATA_DIR", "")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    status = main(["sweep", FLOOR, "--preset", "smoke", "--dataset", "synthetic", "--runs-root", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_damaged_checkpoint_is_refused_and_the_run_is_not_left_running(tmp_path, monkeypatch, capsys):
    """Random bytes in the middle of a checkpoint: its sha256 fails, the run is FAILED, the file kept."""
    from gptvae.config import apply_overrides, config_hash, preset

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    sets = ["data.synthetic_train=200", "data.synthetic_eval=32", "train.steps=20", "train.eval_every=5",
            "eval.max_sequences=16"]
    argv = [*SMOKE, "--quiet", *[f"--set={s}" for s in sets]]
    cfg = apply_overrides(preset("smoke", dataset="synthetic"), sets)
    ckpt = tmp_path / "runs" / "train" / f"{config_hash(cfg)}-seed0" / "checkpoint.pt"

    from gptvae import train as train_module
    real = train_module.train
    monkeypatch.setattr(train_module, "train", lambda *a, **k: real(*a, **{**k, "stop_after": 12}))
    assert main(argv) == 0                      # stopped at step 12; the checkpoint is at step 10
    monkeypatch.setattr(train_module, "train", real)
    blob = bytearray(ckpt.read_bytes())
    blob[len(blob) // 2:len(blob) // 2 + 8] = os.urandom(8)
    ckpt.write_bytes(bytes(blob))
    capsys.readouterr()

    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]   # x-transformers may warn first
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0] and "Traceback" not in err, err
    assert "sha256 does not match" in err and "left untouched" in err
    assert ckpt.read_bytes() == bytes(blob)
    statuses = {r.info.status for r in MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("train").experiment_id])}
    assert statuses == {"FAILED"}


TRAIN_SETS = ["data.synthetic_train=200", "data.synthetic_eval=32", "train.steps=20", "train.eval_every=5",
              "eval.max_sequences=16"]


@pytest.fixture
def mount(tmp_path):
    """mount(folder, 'size=64k' or 'ro'): a small or read-only tmpfs, where this machine lets us mount."""
    import subprocess

    mounted = []

    def make(folder: Path, options: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not permitted'})")
        mounted.append(folder)
        return folder

    yield make
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def train_into(tmp_path, monkeypatch, capsys, runs_root: Path) -> tuple[int, str, set]:
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    (tmp_path / "store").mkdir(exist_ok=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    status = main([*SMOKE, "--quiet", "--runs-root", str(runs_root), *[f"--set={s}" for s in TRAIN_SETS]])
    err = capsys.readouterr().err
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("train")
    statuses = {r.info.status for r in client.search_runs([experiment.experiment_id])} if experiment else set()
    return status, err, statuses


def one_error_line(err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


def test_a_full_disk_for_checkpoints_is_named(tmp_path, monkeypatch, capsys, mount):
    runs = mount(tmp_path / "runs", "size=48k")
    status, err, statuses = train_into(tmp_path, monkeypatch, capsys, runs)
    assert status == 2 and "the disk is full" in one_error_line(err) and statuses == {"FAILED"}
    assert not [p for p in runs.rglob("*") if p.name.endswith(".tmp")]   # nothing half-written


def test_a_read_only_runs_folder_is_named(tmp_path, monkeypatch, capsys, mount):
    runs = mount(tmp_path / "runs", "ro")
    status, err, statuses = train_into(tmp_path, monkeypatch, capsys, runs)
    assert status == 2 and "the file system is read-only" in one_error_line(err) and statuses == {"FAILED"}


def test_a_full_disk_for_the_store_is_named(tmp_path, monkeypatch, capsys, mount):
    store = mount(tmp_path / "store", "size=96k")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
    status = main([*SMOKE, "--quiet", "--runs-root", str(tmp_path / "runs"), *[f"--set={s}" for s in TRAIN_SETS]])
    assert status == 2 and "is on a full disk" in one_error_line(capsys.readouterr().err)


def test_a_disk_that_fills_while_checkpointing_is_named(tmp_path, monkeypatch, capsys):
    """Anywhere (no mount needed): the checkpoint's fsync says the disk is full."""
    import errno

    import gptvae.files as files

    real = files.os.fsync

    def full(fd):
        if os.fstat(fd).st_size > 10_000:   # the checkpoint, not config.json
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(files.os, "fsync", full)
    status, err, statuses = train_into(tmp_path, monkeypatch, capsys, tmp_path / "runs")
    line = one_error_line(err)
    assert status == 2 and "checkpoint.pt: the disk is full" in line and statuses == {"FAILED"}
    assert not [p for p in (tmp_path / "runs").rglob("*") if p.name.endswith(".tmp")]
