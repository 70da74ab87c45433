"""Going back to a logged run: rebuild its model from the checkpoint, re-evaluate it, decode from it."""

from __future__ import annotations

from pathlib import Path

import torch

from gptvae.config import apply_overrides, config_from_dict
from gptvae.data import BOS, EOS
from gptvae.model import build_model
from gptvae.train import (CHECKPOINT, autocast_context, bf16_is_fast, final_evaluation,
                          load_checkpoint, load_data, pick_device)
from gptvae.tracking import Tracker, TrackingError


def load_run(run: str, *, tracker: Tracker | None = None, device=None):
    """(model in eval mode, corpus, config, run_id or None) from an MLflow run id or a run folder."""
    run_id = None
    if Path(run).is_dir():
        ckpt = Path(run) / CHECKPOINT
    else:
        tracker = tracker or Tracker()
        try:
            tags = tracker.run(run).data.tags
        except Exception as err:
            raise TrackingError(f"run {run!r} is not in the store {tracker.uri} ({type(err).__name__})") from None
        if "gptvae.checkpoint" not in tags:
            raise TrackingError(f"run {run!r} has no gptvae.checkpoint tag: it is not a gptvae training run")
        ckpt, run_id = Path(tags["gptvae.checkpoint"]), run
    state = load_checkpoint(ckpt)
    cfg = config_from_dict(state["config"])
    device = pick_device(device)
    corpus = load_data(cfg)
    model = build_model(cfg.model, num_tokens=len(corpus.vocab)).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, corpus, cfg, run_id


def evaluate_logged_run(run_id: str, *, split: str = "test", iw_samples: int = 500, max_sequences: int | None = None,
                        seed: int = 0, tracker: Tracker | None = None) -> dict[str, float]:
    """Evaluate a run's final checkpoint on `split` and log the metrics into the same run.

    Metrics are logged as "<split>.<metric>"; K, N and the sequence count as params. A split already
    evaluated with another K gets the prefix "<split>_k<K>" so that params are never overwritten.
    """
    tracker = tracker or Tracker()
    model, corpus, cfg, _ = load_run(run_id, tracker=tracker)
    cfg = apply_overrides(cfg, {"eval.splits": (split,), "eval.iw_samples": iw_samples,
                                "eval.max_sequences": max_sequences, "train.seed": seed})
    device = next(model.parameters()).device
    result = final_evaluation(model, corpus, cfg, device=device,
                              autocast=cfg.train.autocast and bf16_is_fast(device), progress=True)

    logged_k = tracker.params(run_id).get(f"{split}.iw_samples")
    prefix = split if logged_k in (None, str(iw_samples)) else f"{split}_k{iw_samples}"
    result = {prefix + key[len(split):]: value for key, value in result.items()}
    count_keys = {f"{prefix}.{k}" for k in ("iw_samples", "mi_samples", "n_sequences", "mc_samples")}
    tracker.log_params(run_id, {k: int(v) for k, v in result.items() if k in count_keys})
    tracker.log_metrics(run_id, [(k, v, cfg.train.steps) for k, v in result.items() if k not in count_keys])
    return result


@torch.no_grad()
def sample_from_run(run: str, *, n: int = 8, reference: str | None = None, prior: bool = True,
                    temperature: float = 1.0, seed: int = 0) -> list[str]:
    """Decoded samples: from the prior, from a reference sentence's posterior mean, or without a latent."""
    model, corpus, cfg, _ = load_run(run)
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    vocab = corpus.vocab
    prompts = torch.full((n, 1), BOS, dtype=torch.long, device=device)
    kwargs = dict(max_new_tokens=cfg.model.max_seq_len - 1, temperature=temperature)
    with autocast_context(device, False):
        if reference is not None and model.has_latent:
            x = torch.tensor([[BOS, *vocab.encode(reference), EOS]], device=device)
            out = model.generate(prompts, reference=x.expand(n, -1), **kwargs)
        elif prior and model.has_latent:
            out = model.generate(prompts, prior=True, **kwargs)
        else:
            out = model.generate(prompts, **kwargs)
    return [vocab.decode(s) for s in out]


__all__ = ["evaluate_logged_run", "load_run", "sample_from_run"]
