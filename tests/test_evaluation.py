"""End-to-end evaluation: the synthetic task's exact likelihood, the PTB denominator, re-evaluating a logged run."""

import math

import pytest
import torch
from mlflow.tracking import MlflowClient

from gptvae.cli import main
from gptvae.config import apply_overrides, preset
from gptvae.data import BOS, EOS, Split, Vocab, read_split, synthetic_exact_nll
from gptvae.config import ModelConfig
from gptvae.data import load_data
from gptvae.evaluation import final_evaluation
from gptvae.families import build_model
from gptvae.metrics import evaluate
from gptvae.run import PlannedRun, RunTask, execute
from gptvae.train import train

SYNTHETIC = {"data.dataset": "synthetic", "data.synthetic_train": 2_000, "data.synthetic_eval": 200,
             "train.steps": 60, "train.eval_every": 30, "train.batch_tokens": 2_048, "train.lr": 3e-3,
             "eval.max_sequences": 200, "eval.iw_samples": 16, "eval.splits": ("test",)}


def test_trained_model_iw_nll_is_not_below_the_exact_data_entropy(tmp_path):
    cfg = apply_overrides(preset("smoke"), SYNTHETIC).validate()
    trained = train(cfg, run_dir=tmp_path, progress=False)
    report = final_evaluation(trained.model, trained.corpus, cfg, autocast=trained.autocast)
    result = report.metrics
    test = load_data(cfg.data).splits["test"]
    vocab = load_data(cfg.data).vocab
    exact = torch.tensor([synthetic_exact_nll(vocab.decode(s)) for s in test.sequences], dtype=torch.float64)

    assert result["test.n_sequences"] == 200 and result["test.n_tokens"] == 200 * 67   # 66 chars + EOS
    # IW-NLL is an upper bound on -log p(x) in expectation, and the model cannot beat the data entropy
    noise = 3 * exact.std().item() / math.sqrt(len(exact))
    assert result["test.iw_nll"] >= exact.mean().item() - noise
    assert result["test.neg_elbo"] >= result["test.iw_nll"] - 1e-6    # the ELBO is the K=1 bound
    assert 0 <= result["test.au"] <= cfg.model.dim_latent

    # the per-sentence table is what the split's numbers are means of, sentence by sentence
    sentences = report.sentences["test"]
    assert list(sentences.sentence) == list(range(200)) and sentences.tokens.sum() == result["test.n_tokens"]
    for column in ("rec", "kl", "neg_elbo", "iw_nll", "lm_nll"):
        assert sentences[column].mean() == pytest.approx(result[f"test.{column}"], rel=1e-12), column
    assert (sentences.neg_elbo - sentences.rec - sentences.kl).abs().max() < 1e-9
    units = report.units["test"]
    assert list(units.unit) == list(range(cfg.model.dim_latent))
    assert units.kl.sum() == pytest.approx(result["test.kl"], rel=1e-9)
    assert (units.mean_variance >= 0.01).sum() == result["test.au"]
    # MI with its noise and ceiling; reconstructions scored against their inputs
    assert result["test.mi_ceiling"] == pytest.approx(math.log(result["test.mi_samples"]))
    assert result["test.mi_noise"] >= 0
    assert 0 <= result["test.recon_bleu"] <= 100 and 0 <= result["test.recon_bleu_masked"] <= 100
    assert {"recon_bleu", "recon_bleu_masked"} <= set(sentences.columns)


@pytest.mark.corpus
def test_ptb_test_perplexity_uses_82430_tokens():
    symbols, _ = read_split("ptb", "test")
    vocab = Vocab.build(symbols, unit="word")   # PTB train is not offline; the denominator does not need it
    split = Split([torch.tensor([BOS, *vocab.encode(s), EOS]) for s in symbols])
    torch.manual_seed(0)
    lm = build_model(ModelConfig(kind="lm", dim=16, depth=1, heads=1, attn_dim_head=16, max_seq_len=128),
                     num_tokens=len(vocab))
    result = evaluate(lm, split, iw_samples=1, max_tokens=32_768)
    assert result["n_sequences"] == 3_761 and result["n_tokens"] == 82_430
    assert result["ppl"] == pytest.approx(math.exp(result["iw_nll"] * 3_761 / 82_430), rel=1e-9)


def test_evaluate_command_logs_into_the_same_run(tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = apply_overrides(preset("smoke"), {**SYNTHETIC, "train.steps": 6, "eval.splits": ("valid",),
                                            "eval.max_sequences": 16}).validate()
    row = execute(RunTask(run=PlannedRun("vae", "vae", None, cfg), experiment="evaluate-test", parent_id=None,
                          runs_root=str(tmp_path / "runs"), tracking_uri=uri, progress=False))

    argv = ["evaluate", row["run_id"], "--split", "test", "--iw-samples", "4", "--max-sequences", "16"]
    assert main(argv) == 0
    assert main(argv[:4] + ["--iw-samples", "6", "--max-sequences", "16"]) == 0
    run = MlflowClient(uri).get_run(row["run_id"])
    assert run.data.params["test.iw_samples"] == "4" and run.data.params["test_k6_n16.iw_samples"] == "6"
    assert {"test.iw_nll", "test.mi", "test_k6_n16.iw_nll", "valid.iw_nll"} <= set(run.data.metrics)
    logged = {a.path for a in MlflowClient(uri).list_artifacts(row["run_id"])}
    assert {"sentences_valid.csv", "sentences_test.csv", "sentences_test_k6_n16.csv", "units_test.csv"} <= logged

    # every run of an experiment; fp32 under its own keys (this preset trains without autocast: equal numbers)
    assert main(["evaluate", "--experiment", "evaluate-test", "--split", "test", "--iw-samples", "4",
                 "--max-sequences", "16", "--fp32"]) == 0
    metrics = MlflowClient(uri).get_run(row["run_id"]).data.metrics
    assert metrics["test_k4_n16_fp32.iw_nll"] == pytest.approx(metrics["test.iw_nll"], rel=1e-12)
    # the K sweep: one table, logged once
    assert main(["evaluate", row["run_id"], "--split", "valid", "--k-sweep", "1,4,16", "--max-sequences", "8"]) == 0
    assert "ksweep_valid_n8_s0_k1-4-16.csv" in {a.path for a in MlflowClient(uri).list_artifacts(row["run_id"])}
    assert main(["evaluate", "--experiment", "no-such-experiment"]) == 2
    assert main(["evaluate", "no-such-run"]) == 2
    assert "not in the store" in capsys.readouterr().err
