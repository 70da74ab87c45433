"""Training is deterministic, survives kill -9, refuses bad checkpoints and stops on a non-finite loss."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import gptvae.files as files_module
import gptvae.train as train_module
from gptvae.config import apply_overrides, config_hash, preset
from gptvae.errors import CheckpointError, ConfigError, NonFiniteLossError
from gptvae.evaluation import final_evaluation
from gptvae.files import CHECKPOINT, load_checkpoint
from gptvae.run import RESULT
from gptvae.train import plateau, train

SYNTHETIC = {"data.dataset": "synthetic", "data.synthetic_train": 600, "data.synthetic_eval": 64,
             "train.steps": 24, "train.eval_every": 8, "train.log_every": 4, "eval.max_sequences": 32}


def smoke(**overrides):
    return apply_overrides(preset("smoke"), {**SYNTHETIC, **overrides}).validate()


def final(trained, cfg):
    return final_evaluation(trained.model, trained.corpus, cfg, autocast=trained.autocast).metrics


@pytest.mark.parametrize("bounds, patience, tolerance, expected", [
    ([4.0, 3.5, 3.4], 1, 0.05, (False, 0.1)),              # still learning
    ([4.0, 3.5, 3.49], 1, 0.05, (True, 0.01)),             # moved less than the tolerance
    ([4.0, 3.5, 3.6, 3.55], 2, 0.01, (True, -0.05)),        # got worse: a plateau (overfitting) too
    ([4.0, 3.5], 2, 0.01, (None, math.nan)),               # too few points to judge
    ([4.0, 3.5, 3.4], 0, 0.01, (None, math.nan)),          # patience 0: never judged
])
def test_plateau(bounds, patience, tolerance, expected):
    on_plateau, improvement = plateau(bounds, patience=patience, tolerance=tolerance)
    assert on_plateau is expected[0]
    assert improvement == pytest.approx(expected[1]) if not math.isnan(expected[1]) else math.isnan(improvement)


def test_one_low_point_ends_a_falling_run_under_the_best_test_and_not_under_the_mean_test():
    """The λ = 0.1 VAE's validation bound at seed 1 with a 3,000-step cosine (steps 1,600-2,100): the best
    test stopped it at step 2,100, with its learning rate still at 28% of the peak, because 1,800's low point
    outweighed the next three. The mean of those three against the three before still falls by 0.025."""
    curve = [3.6838, 3.6626, 3.6353, 3.6292, 3.6483, 3.6294]
    assert plateau(curve, patience=3, tolerance=0.01, test="best") == (True, pytest.approx(0.0061))
    assert plateau(curve, patience=3, tolerance=0.01, test="mean") == (False, pytest.approx(0.02493, abs=1e-5))
    flat = [3.43, 3.425, 3.431, 3.428, 3.426, 3.429]
    assert plateau(flat, patience=3, tolerance=0.01, test="mean")[0] is True
    assert plateau(flat[:5], patience=3, tolerance=0.01, test="mean") == (None, pytest.approx(math.nan, nan_ok=True))


def test_a_plateau_test_nobody_wrote_is_refused_with_what_is_allowed():
    with pytest.raises(ConfigError, match=r"train.plateau_test='median' is invalid; allowed: best, mean"):
        smoke(**{"train.plateau_test": "median"})


def test_training_stops_on_a_plateau_and_records_it_and_a_resume_trains_no_further(tmp_path):
    cfg = smoke(**{"train.patience": 1, "train.tolerance": 100.0, "train.steps": 40})   # any step is a plateau
    trained = train(cfg, run_dir=tmp_path, progress=False)
    assert trained.stopped and trained.finished and trained.step == 16   # evaluations at 8 and 16
    record = trained.convergence(cfg)
    assert record["train.converged"] == 1.0 and record["train.steps_trained"] == 16
    assert record["train.stopped_early"] == 1.0 and len(trained.bounds) == 2
    again = train(cfg, run_dir=tmp_path, progress=False)
    assert again.stopped and again.step == 16 and again.bounds == trained.bounds

    running = smoke(**{"train.patience": 1, "train.tolerance": 0.0})   # improvement < 0 never happens early on
    whole = train(running, run_dir=tmp_path / "whole", progress=False)
    assert not whole.stopped and whole.step == 24
    assert "train.converged" in whole.convergence(running)
    assert "train.converged" not in whole.convergence(smoke())   # patience 0: not judged


def test_a_run_that_judges_its_plateau_at_the_end_trains_every_step_and_still_records_it(tmp_path):
    cfg = smoke(**{"train.patience": 1, "train.tolerance": 100.0, "train.steps": 40,   # any point is a plateau
                   "train.stop_on_plateau": False})
    trained = train(cfg, run_dir=tmp_path, progress=False)
    assert not trained.stopped and trained.finished and trained.step == 40
    record = trained.convergence(cfg)
    assert record["train.converged"] == 1.0 and record["train.stopped_early"] == 0.0
    assert record["train.steps_trained"] == 40 and len(trained.bounds) == 5   # evaluations at 8, 16, 24, 32, 40


def test_the_plateau_reads_the_objective_the_kl_weight_defines(tmp_path):
    """At beta < 1 the bound can stall while the run still trades distortion for rate: the plateau test
    reads (Rec + beta KL) / tokens, the objective without its floor; at beta = 1 that is the bound."""
    from gptvae.data import VALIDATION_SEED, subset
    from gptvae.train import validate

    cfg = smoke(**{"objective.beta": 0.1, "objective.free_bits": 0.5, "train.patience": 1, "train.tolerance": 0.0})
    trained = train(cfg, run_dir=tmp_path, progress=False)
    split = subset(trained.corpus.splits["valid"], cfg.train.val_sequences, seed=VALIDATION_SEED)
    val = validate(trained.model, split, cfg, device=trained.device, autocast=trained.autocast)
    tokens = (val["val/rec"] + val["val/kl"]) * len(split) / val["val/nll_bound_per_token"]
    assert val["val/objective_per_token"] == pytest.approx((val["val/rec"] + 0.1 * val["val/kl"]) * len(split) / tokens)
    assert val["val/kl"] > 0 and val["val/objective_per_token"] < val["val/nll_bound_per_token"]
    assert trained.bounds[-1] == pytest.approx(val["val/objective_per_token"], rel=1e-6)   # what the test judged
    at_one = validate(trained.model, split, smoke(), device=trained.device, autocast=trained.autocast)
    assert at_one["val/objective_per_token"] == pytest.approx(at_one["val/nll_bound_per_token"])


def test_a_floored_plateau_reads_the_objective_as_trained(tmp_path):
    """train.plateau_floored: the plateau reads (Rec + beta max(KL, floor)) / tokens, what the gradient sees,
    not the unfloored objective that climbs while KL fills a large floor for free."""
    from gptvae.data import VALIDATION_SEED, subset
    from gptvae.train import validate

    cfg = smoke(**{"objective.free_bits": 50.0, "objective.free_bits_mode": "total", "train.patience": 1,
                   "train.tolerance": 0.0, "train.plateau_floored": True})
    trained = train(cfg, run_dir=tmp_path, progress=False)
    split = subset(trained.corpus.splits["valid"], cfg.train.val_sequences, seed=VALIDATION_SEED)
    val = validate(trained.model, split, cfg, device=trained.device, autocast=trained.autocast)
    tokens = (val["val/rec"] + val["val/kl"]) * len(split) / val["val/nll_bound_per_token"]
    # KL stays far below a floor of 50 nats a sequence: the floored objective pays the floor, not KL
    assert val["val/kl"] < 50.0
    assert val["val/trained_objective_per_token"] == pytest.approx((val["val/rec"] + 50.0) * len(split) / tokens)
    assert trained.bounds[-1] == pytest.approx(val["val/trained_objective_per_token"], rel=1e-6)
    assert trained.bounds[-1] > val["val/objective_per_token"]


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    cfg = smoke()
    whole = train(cfg, run_dir=tmp_path / "whole", progress=False)

    stopped = train(cfg, run_dir=tmp_path / "resumed", progress=False, stop_after=13)  # last checkpoint: 8
    assert not stopped.finished and stopped.step == 13
    assert load_checkpoint(tmp_path / "resumed" / CHECKPOINT)["step"] == 8
    resumed = train(cfg, run_dir=tmp_path / "resumed", progress=False)

    assert resumed.resumed_from == 8 and resumed.finished and whole.finished
    for name, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    expected, got = final(whole, cfg), final(resumed, cfg)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_kill_9_mid_training_then_resume(tmp_path):
    """The real thing: a separate process killed with SIGKILL after its first checkpoint."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    sets = [f"--set={k}={v}" for k, v in {**SYNTHETIC, "train.steps": 60, "train.eval_every": 10}.items()]
    command = [sys.executable, "-m", "gptvae", "train", "--preset", "smoke", "--quiet",
               "--runs-root", str(tmp_path / "runs"), *sets]
    cfg = smoke(**{"train.steps": 60, "train.eval_every": 10})
    ckpt = tmp_path / "runs" / "train" / f"{config_hash(cfg)}-seed0" / CHECKPOINT

    victim = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600   # a bound for a loaded machine: the loop ends at the first checkpoint
    while not ckpt.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = load_checkpoint(ckpt)["step"]
    assert 0 < killed_at < 60, "the kill must land mid-training"

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)
    assert row["status"] == "resumed"
    resumed = json.loads((ckpt.parent / RESULT).read_text())

    threads = load_checkpoint(ckpt)["threads"]   # its share of the cores; numbers are exact per thread count
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        reference = final(train(cfg, run_dir=tmp_path / "reference", progress=False), cfg)
    finally:
        torch.set_num_threads(before)
    for key, value in reference.items():
        if not key.startswith("time."):
            assert resumed[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key

    # the store holds one child for this setting, and no metric step twice
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    for key in ("train/loss", "val/neg_elbo"):
        steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, key)]
        assert len(steps) == len(set(steps)) and max(steps) == 60, key


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    cfg = smoke()
    real_objective = train_module.objective
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        terms = real_objective(*args, **kwargs)
        calls["n"] += args[0].training   # validation calls the objective too, in eval mode
        if calls["n"] == 11:   # step 10, after the checkpoint at step 8
            terms.loss = terms.loss * float("nan")
        return terms

    monkeypatch.setattr(train_module, "objective", poisoned)
    with pytest.raises(NonFiniteLossError, match="step 10.*last good checkpoint"):
        train(cfg, run_dir=tmp_path, progress=False)
    assert load_checkpoint(tmp_path / CHECKPOINT)["step"] == 8


def test_corrupt_checkpoint_is_refused_and_left_alone(tmp_path):
    cfg = smoke()
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.*left untouched"):
        train(cfg, run_dir=tmp_path, progress=False)
    assert (tmp_path / CHECKPOINT).read_bytes() == b"not a checkpoint"


def test_missing_checkpoint_is_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / CHECKPOINT)


def test_checkpoint_of_another_config_is_refused(tmp_path):
    train(smoke(), run_dir=tmp_path, progress=False, stop_after=9)
    with pytest.raises(CheckpointError, match="another config"):
        train(smoke(**{"objective.beta": 0.5}), run_dir=tmp_path, progress=False)


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    """A crash while writing leaves the previous checkpoint intact and no temporary file behind."""
    path = tmp_path / CHECKPOINT
    files_module.save_checkpoint(path, {"step": 1})
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        files_module.save_checkpoint(path, {"step": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]


def test_non_finite_loss_before_any_checkpoint_says_so(tmp_path, monkeypatch):
    real_objective = train_module.objective

    def poisoned(*args, **kwargs):
        terms = real_objective(*args, **kwargs)
        terms.loss = terms.loss * float("inf")
        return terms

    monkeypatch.setattr(train_module, "objective", poisoned)
    with pytest.raises(NonFiniteLossError, match="step 0.*no checkpoint had been written yet"):
        train(smoke(), run_dir=tmp_path, progress=False)
    assert not (tmp_path / CHECKPOINT).exists()


def test_a_run_resumed_in_the_other_precision_is_tagged_mixed(tmp_path, monkeypatch):
    """The precision tag is written at every start, a resume included: a run begun in fp32 (a machine without
    fast bf16) and resumed where bf16 autocast runs trained in both, and says so; one resumed in its own says
    its own."""
    from gptvae.run import RunLogger
    from gptvae.tracking import TAG_AUTOCAST, Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    cfg = smoke(**{"train.autocast": True, "train.steps": 8, "train.eval_every": 4})

    def attempt(name: str, *, bf16_here: bool, stop_after=None) -> str:
        run_id = runs.setdefault(name, tracker.client.create_run(tracker.experiment_id("precision")).info.run_id)
        monkeypatch.setattr(train_module, "bf16_is_fast", lambda device: bf16_here)
        logger = RunLogger(tracker, run_id, cfg=cfg, checkpoint=tmp_path / name / CHECKPOINT)
        trained = train(cfg, run_dir=tmp_path / name, logger=logger, progress=False, stop_after=stop_after)
        logger.flush()
        assert trained.autocast is bf16_here and (trained.resumed_from == 4) is (stop_after is None)
        return tracker.run(run_id).data.tags[TAG_AUTOCAST]

    runs: dict[str, str] = {}
    assert attempt("moved", bf16_here=False, stop_after=6) == "False"   # fp32 here, checkpoint at step 4
    assert attempt("moved", bf16_here=True) == "mixed"                  # resumed where bf16 autocast runs
    assert attempt("stayed", bf16_here=False, stop_after=6) == "False"
    assert attempt("stayed", bf16_here=False) == "False"
