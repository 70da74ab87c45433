"""Evaluating a trained model: the final metrics, decoded examples, posterior means; and going back
to a logged run to re-evaluate it or decode from it."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gptvae.config import Config, apply_overrides, config_from_dict, require
from gptvae.data import (BOS, EOS, VALIDATION_SEED, Corpus, Split, collate, corpus_params, load_data, subset,
                         subset_index, synthetic_exact_nll)
from gptvae.device import autocast_context, bf16_is_fast, model_device, pick_device
from gptvae.families import build_model
from gptvae.files import CHECKPOINT, MODEL, MODEL_KEYS, atomic_write_csv, load_checkpoint
from gptvae.metrics import evaluate_split, iw_nll_curve, latent_probes, posteriors
from gptvae.tracking import TAG_CHECKPOINT, Tracker, TrackingError

POSTERIOR_POINTS = 500      # validation sequences whose posterior means a run keeps
MI_REPEATS = 5              # draws of z behind each MI estimate: its mean, and its noise as their std
COUNT_KEYS = ("iw_samples", "mi_samples", "n_sequences", "mc_samples")   # logged as params, not metrics


@dataclass
class Report:
    """A final evaluation: flat metrics {"valid.iw_nll": ...}, and per split the per-sentence and
    per-unit tables behind them (`sentences[split]` is what paired comparisons resample)."""

    metrics: dict
    sentences: dict[str, pd.DataFrame] = field(default_factory=dict)
    units: dict[str, pd.DataFrame] = field(default_factory=dict)

    def files(self) -> dict[str, pd.DataFrame]:
        """The tables as the files a run keeps: sentences_<split>.csv, units_<split>.csv."""
        return {**{f"sentences_{k}.csv": v for k, v in self.sentences.items()},
                **{f"units_{k}.csv": v for k, v in self.units.items() if not v.empty}}


def final_evaluation(model, corpus: Corpus, cfg: Config, *, autocast: bool, progress: bool = False,
                     splits=None, untrained: bool = True, init_seed: int | None = None) -> Report:
    """REFERENCE 3 metrics on each configured split, with the measures of use:

    - MI over the whole split (or eval.mi_sequences of it; MI_REPEATS draws: mean, noise, ceiling log N);
    - probes on mu and on a sampled z, the majority class, and the same probe on the same architecture
      untrained (same seed, no training): what a probe reads from an encoder that learnt nothing;
    - greedy reconstructions from mu and with the latent masked, scored by BLEU against their inputs;
    - on the synthetic task, what the latent controls in samples (`gptvae.control`), once per run;
    - per sentence: tokens, Rec, KL, -ELBO, IW-NLL, NLL with the latent masked, reconstruction BLEU, and on
      the synthetic task its exact NLL (exact_nll: the mean is the sample's entropy, the floor of every bound).
    """
    report = Report({})
    probe = subset(corpus.splits["train"], cfg.eval.probe_sequences, seed=VALIDATION_SEED)
    untrained_model = None
    for name in splits or cfg.eval.splits:
        full = corpus.splits[name]
        index = subset_index(len(full), cfg.eval.max_sequences, seed=VALIDATION_SEED)
        split = subset(full, cfg.eval.max_sequences, seed=VALIDATION_SEED)
        result = evaluate_split(model, split, iw_samples=cfg.eval.iw_samples, mc_samples=cfg.eval.mc_samples,
                                max_tokens=cfg.eval.batch_tokens, seed=cfg.train.seed,
                                mi_split=subset(full, cfg.eval.mi_sequences, seed=VALIDATION_SEED),
                                mi_repeats=MI_REPEATS, probe_split=probe if split.labels else None,
                                autocast=autocast, progress=progress)
        metrics = dict(result.metrics)
        sentences = pd.DataFrame(result.sentences)
        sentences.insert(1, "sentence", index.numpy())   # the row of the whole split: pairs runs sentence by sentence
        if corpus.name == "synthetic":   # the task's exact -log p(x): the floor every NLL estimate must respect
            sentences["exact_nll"] = [synthetic_exact_nll(corpus.vocab.decode(seq)) for seq in split.sequences]
            metrics["exact_nll"] = float(sentences.exact_nll.mean())
            metrics["exact_nll_per_token"] = float(sentences.exact_nll.sum() / sentences.tokens.sum())
        if model.prior.units > 0:
            # nothing is reconstructed longer than the longest input: the greedy decoder stops there
            scores = reconstruction_bleu(model, split, corpus.vocab, max_new_tokens=int(split.lengths.max()))
            metrics.update(scores.metrics)
            for key, values in scores.sentences.items():
                sentences[key] = values
            if untrained and split.labels:
                untrained_model = untrained_model or initial_model(cfg, corpus, seed=init_seed)
                metrics.update(untrained_probes(untrained_model, cfg, probe, split, autocast=autocast))
            if corpus.name == "synthetic" and not any("control_well_formed" in k for k in report.metrics):
                from gptvae.control import latent_control   # once per run: it samples, it reads no split

                metrics.update(latent_control(model, corpus.vocab, groups=cfg.eval.control_groups,
                                                    seed=cfg.train.seed))
        report.metrics.update({f"{name}.{k}": v for k, v in metrics.items()})   # counts stay ints
        report.sentences[name] = sentences
        report.units[name] = pd.DataFrame(result.units)
    return report


@dataclass
class Scores:
    metrics: dict
    sentences: dict[str, np.ndarray]


@torch.no_grad()
def reconstruction_bleu(model, split: Split, vocab, *, max_new_tokens: int, batch: int = 512) -> Scores:
    """Greedy decoding from the posterior mean, and with the latent masked, scored against the inputs.

    recon_bleu          corpus BLEU (sacrebleu, whitespace tokens) of the reconstructions from mu
    recon_bleu_masked   the same for greedy decoding without the latent: what the decoder writes
                        from nothing; the difference is what z tells it
    per sentence: recon_bleu, recon_bleu_masked (sentence BLEU, exponential smoothing)
    """
    import sacrebleu

    device = model_device(model)
    refs, from_mu, masked = [], [], []
    with autocast_context(device, False):
        for b0 in range(0, len(split), batch):
            x = collate(split, torch.arange(b0, min(len(split), b0 + batch))).to(device)
            prompts = torch.full((len(x), 1), BOS, dtype=torch.long, device=device)
            kwargs = dict(max_new_tokens=max_new_tokens, temperature=0.0)
            from_mu += [vocab.decode(s) for s in model.generate(prompts, reference=x, **kwargs)]
            masked += [vocab.decode(s) for s in model.generate(prompts, **kwargs)]
            refs += [vocab.decode(s) for s in x]
    metrics, sentences = {}, {}
    for key, hyps in (("recon_bleu", from_mu), ("recon_bleu_masked", masked)):
        metrics[key] = sacrebleu.corpus_bleu(hyps, [refs], tokenize="none", force=True).score
        sentences[key] = np.array([sacrebleu.sentence_bleu(h, [r], tokenize="none", smooth_method="exp").score
                                   for h, r in zip(hyps, refs)])
    return Scores(metrics, sentences)


def initial_model(cfg: Config, corpus: Corpus, *, seed: int | None = None):
    """The run's model as it was before its first step: the same architecture and seed (train.seed
    unless given), untrained."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed if seed is None else seed)
        model = build_model(cfg.model, num_tokens=len(corpus.vocab)).to(pick_device(None))
    return model.eval()


def untrained_probes(model, cfg: Config, probe: Split, split: Split, *, autocast: bool) -> dict:
    """probe_untrained_z_acc_<label>: the sampled-z probe on `initial_model`: a probe that reads as
    much from a model that learnt nothing measures the probe, not the latent."""
    out = latent_probes(model, probe, split, max_tokens=cfg.eval.batch_tokens, autocast=autocast,
                        generator=torch.Generator().manual_seed(cfg.train.seed))
    return {k.replace("probe_z_acc_", "probe_untrained_z_acc_"): v for k, v in out.items()
            if k.startswith("probe_z_acc_")}


@torch.no_grad()
def decode_examples(model, corpus: Corpus, cfg: Config) -> list[tuple[str, str]]:
    """(section, text) pairs of what the model's family shows: prior samples, reconstructions, ...

    Seeded by train.seed, so a checkpoint always decodes to the same texts.
    """
    vocab, n = corpus.vocab, cfg.eval.num_samples
    reference = subset(corpus.splits["valid"], n, seed=VALIDATION_SEED)
    x = collate(reference, torch.arange(len(reference))).to(model_device(model))
    torch.manual_seed(cfg.train.seed)
    out = []
    for example in model.examples(x, num=n, max_new_tokens=cfg.model.max_seq_len - 1):
        text = vocab.decode(example.output)
        if example.source is not None:
            text = f"{vocab.decode(example.source)}  =>  {text}"
        if example.note:
            text = f"{example.note}  {text}"
        out.append((example.section, text))
    return out


def samples_text(examples: list[tuple[str, str]]) -> str:
    """The decoded examples as a text file, one section after another: the artifact people read."""
    lines, section = [], None
    for name, text in examples:
        if name != section:
            lines += ([""] if section else []) + [f"# {name}"]
            section = name
        lines.append(text)
    return "\n".join(lines) + "\n"


@torch.no_grad()
def posterior_means(model, corpus: Corpus) -> pd.DataFrame:
    """Per-unit posterior means of POSTERIOR_POINTS validation sequences with their labels (empty
    without a latent): what the exported 2-D projections are computed from."""
    split = subset(corpus.splits["valid"], POSTERIOR_POINTS, seed=VALIDATION_SEED)
    mean = posteriors(model, split).mean.double().numpy()
    if np.isnan(mean).any():   # a per-token unit a shorter sequence lacks: its mean over the rows that have it
        mean = np.where(np.isnan(mean), np.nan_to_num(np.nanmean(mean, axis=0)), mean)
    if mean.shape[1] == 0:
        return pd.DataFrame()
    frame = pd.DataFrame(mean, columns=[f"mean_{u}" for u in range(mean.shape[1])])
    frame.insert(0, "row", range(len(split)))
    for name, labels in split.labels.items():
        frame[name] = labels.numpy()
    return frame


# going back to a logged run

def _logged_weights(run_id: str, tracker: Tracker) -> dict:
    """A run's state from the store: its checkpoint where the tag says, when this machine has it (the machine
    that trained it, or one that shares its runs_root), else the weights the run logged as an artifact."""
    try:
        tags = tracker.run(run_id).data.tags
    except Exception as err:
        raise TrackingError(f"run {run_id!r} is not in the store {tracker.uri} ({type(err).__name__})") from None
    if TAG_CHECKPOINT not in tags:
        raise TrackingError(f"run {run_id!r} has no {TAG_CHECKPOINT} tag: it is not a gptvae training run")
    local = Path(tags[TAG_CHECKPOINT])
    if local.is_file():
        return load_checkpoint(local)
    logged = {a.path for a in tracker.call(tracker.client.list_artifacts, run_id)}
    if MODEL not in logged:
        raise TrackingError(f"run {run_id!r}: its checkpoint {local} is not on this machine, and the run logged no "
                            f"{MODEL} artifact (it is unfinished, or finished before runs logged their weights)")
    with tempfile.TemporaryDirectory() as folder:
        return load_checkpoint(tracker.call(tracker.client.download_artifacts, run_id, MODEL, folder), keys=MODEL_KEYS)


def load_run(run: str, *, tracker: Tracker | None = None, device=None):
    """(model in eval mode, corpus, config, run_id or None) from an MLflow run id or a run folder."""
    run_id = None
    if Path(run).is_dir():
        state = load_checkpoint(Path(run) / CHECKPOINT)
    else:
        run_id = run
        state = _logged_weights(run, tracker or Tracker())
    cfg = config_from_dict(state["config"])
    device = pick_device(device)
    corpus = load_data(cfg.data)
    model = build_model(cfg.model, num_tokens=len(corpus.vocab)).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, corpus, cfg, run_id


def check_protocol(*, iw_samples: int, max_sequences: int | None, seed: int | None) -> None:
    """One clear error for an evaluation protocol that cannot be run, before anything is opened."""
    require(isinstance(iw_samples, int) and iw_samples >= 1, "--iw-samples", iw_samples,
            "a number of importance samples K >= 1 (reported numbers use 500)")
    require(max_sequences is None or max_sequences >= 2, "--max-sequences", max_sequences,
            "a number of sequences >= 2 (MI and active units compare sequences), or all")
    require(seed is None or seed >= 0, "--seed", seed, "an integer >= 0")


def evaluate_logged_run(run_id: str, *, split: str = "test", iw_samples: int = 500, max_sequences: int | None = None,
                        seed: int | None = None, fp32: bool = False, tracker: Tracker | None = None
                        ) -> dict[str, float]:
    """Evaluate a run's final checkpoint on `split` and log the numbers into the same run, never over
    the numbers it already has.

    A protocol logged before some per-sentence column existed (SENTENCE_COLUMNS, e.g. rec_other) is
    completed: evaluated again, its logged columns kept as they were and the new ones added by row,
    and only the metrics it lacked logged.

    An evaluation protocol is (split, K, N, seed); the seed defaults to the run's own, as in its final
    evaluation. The first protocol logged for a split takes the keys "<split>.<metric>", with K, N, the
    MI and MC sample counts and the seed as params "<split>.iw_samples", ...; another protocol on that
    split takes "<split>_k<K>_n<N>[_s<seed>].<metric>". Asking for a protocol already logged logs
    nothing and returns its logged numbers. fp32 evaluates without bf16 autocast, always under its own
    keys "<split>_k<K>_n<N>[_s<seed>]_fp32.<metric>": the check of the bf16 numbers.
    """
    check_protocol(iw_samples=iw_samples, max_sequences=max_sequences, seed=seed)
    tracker = tracker or Tracker()
    model, corpus, cfg, _ = load_run(run_id, tracker=tracker)
    run_seed = cfg.train.seed
    seed = run_seed if seed is None else seed
    cfg = apply_overrides(cfg, {"eval.splits": (split,), "eval.iw_samples": iw_samples,
                                "eval.max_sequences": max_sequences, "train.seed": seed}).validate()
    n = len(subset(corpus.splits[split], max_sequences, seed=VALIDATION_SEED))
    params = tracker.params(run_id)
    corpus_logged = {k: v for k, v in corpus_params(corpus, batch_tokens=cfg.train.batch_tokens).items()
                     if k not in params}
    if corpus_logged:   # runs trained before runs logged their corpus: the paper states split sizes from these
        tracker.log_params(run_id, corpus_logged)
    protocol = (str(iw_samples), str(n), str(seed))

    def logged_protocol(prefix: str):
        return (params.get(f"{prefix}.iw_samples"), params.get(f"{prefix}.n_sequences"),
                params.get(f"{prefix}.eval_seed", str(run_seed)))

    own = f"{split}_k{iw_samples}_n{n}" + (f"_s{seed}" if seed != run_seed else "") + ("_fp32" if fp32 else "")
    logged = None   # the per-sentence table of a protocol measured before some of its columns existed
    for prefix in ((own,) if fp32 else (split, own)):
        if logged_protocol(prefix) == protocol:   # already measured: the store has these numbers
            logged = _logged_table(tracker, run_id, f"sentences_{prefix}.csv")
            if logged is None or set(SENTENCE_COLUMNS) <= set(logged.columns):
                metrics = tracker.run(run_id).data.metrics
                return {k: v for k, v in metrics.items() if k.startswith(prefix + ".")}
            break
    else:
        prefix = split if f"{split}.iw_samples" not in params and not fp32 else own

    device = model_device(model)
    autocast = cfg.train.autocast and bf16_is_fast(device) and not fp32
    report = final_evaluation(model, corpus, cfg, autocast=autocast, progress=True, init_seed=run_seed)
    result = {prefix + key[len(split):]: value for key, value in report.metrics.items()}
    files = {name.replace(f"_{split}.", f"_{prefix}."): frame for name, frame in report.files().items()}
    if logged is not None:   # completing: the logged columns stay as they were, the new ones join them by row
        new = files[f"sentences_{prefix}.csv"].set_index("row")
        files = {f"sentences_{prefix}.csv": logged.join(new[[c for c in new if c not in logged]], on="row")}
    with tempfile.TemporaryDirectory() as tmp:   # the per-sentence tables first: the metrics mark it done
        for name, frame in files.items():
            tracker.log_artifact(run_id, atomic_write_csv(Path(tmp) / name, frame))
    count_keys = {f"{prefix}.{k}" for k in COUNT_KEYS}
    new_params = {**{k: int(v) for k, v in result.items() if k in count_keys}, f"{prefix}.eval_seed": seed}
    tracker.log_params(run_id, {k: v for k, v in new_params.items() if k not in params})
    have = tracker.run(run_id).data.metrics   # a completed protocol logs only the numbers it did not have
    tracker.log_metrics(run_id, [(k, v, cfg.train.steps) for k, v in result.items()
                                 if k not in count_keys and k not in have])
    return {**result, **{k: v for k, v in have.items() if k.startswith(prefix + ".")}}


SENTENCE_COLUMNS = ("tokens", "rec", "rec_other", "kl", "iw_nll", "lm_nll", "neg_elbo")   # a complete table


def _logged_table(tracker: Tracker, run_id: str, name: str) -> pd.DataFrame | None:
    """A CSV artifact of a run as logged, or None."""
    if name not in {a.path for a in tracker.call(tracker.client.list_artifacts, run_id)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return pd.read_csv(tracker.call(tracker.client.download_artifacts, run_id, name, tmp))


KSWEEP = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)   # the K of the estimator-bound figure


def k_sweep_logged_run(run_id: str, *, split: str = "valid", ks=KSWEEP, max_sequences: int | None = 500,
                       seed: int | None = None, tracker: Tracker | None = None) -> pd.DataFrame:
    """IW-NLL at every K in `ks` from one set of max(ks) importance samples (the estimate at K uses the
    first K), on a seeded subset of `split`; logged into the run as the artifact ksweep_<split>.csv
    (K, iw_nll, iw_nll_per_token, n_sequences, n_tokens), named by its protocol
    (ksweep_<split>_n<N>_s<seed>_k<K-K-...>.csv), never twice. Returns that table."""
    ks = sorted({int(k) for k in ks})
    require(bool(ks) and ks[0] >= 1, "--k-sweep", ks, "importance-sample counts K >= 1, e.g. 1,10,100,1000")
    require(max_sequences is None or max_sequences >= 1, "--max-sequences", max_sequences,
            "a number of sequences >= 1, or all")
    tracker = tracker or Tracker()
    model, corpus, cfg, _ = load_run(run_id, tracker=tracker)
    seed = cfg.train.seed if seed is None else seed
    n = len(subset(corpus.splits[split], max_sequences, seed=VALIDATION_SEED))
    name = f"ksweep_{split}_n{n}_s{seed}_k{'-'.join(map(str, ks))}.csv"   # the protocol, so none is reused for another
    with tempfile.TemporaryDirectory() as tmp:
        if name in {a.path for a in tracker.call(tracker.client.list_artifacts, run_id)}:
            return pd.read_csv(tracker.call(tracker.client.download_artifacts, run_id, name, tmp))
        data = subset(corpus.splits[split], max_sequences, seed=VALIDATION_SEED)
        device = model_device(model)
        curve = iw_nll_curve(model, data, ks, max_tokens=cfg.eval.batch_tokens, seed=seed,
                             autocast=cfg.train.autocast and bf16_is_fast(device), progress=True)
        path = atomic_write_csv(Path(tmp) / name, curve)
        tracker.log_artifact(run_id, path)
    return curve


TEST_PROTOCOL = {"split": "test", "iw_samples": 500, "max_sequences": 1000}       # the published K
KSWEEP_PROTOCOL = {"split": "valid", "ks": KSWEEP, "max_sequences": 500}
FP32_SEED = 0   # the seed whose runs a spec's fp32 check and K sweeps use


def spec_evaluations(spec, tracker: Tracker, *, preset_name: str = "cpu", dataset: str | None = None,
                     overrides=()) -> list[dict]:
    """What a spec asks of the runs this store holds at one preset (and dataset), as (kind, run id,
    protocol) rows: every run's own
    validation table completed where it lacks a column ("complete"), and what [evaluations] asks: every
    run on the whole validation split at its own K (whole_valid = true; a no-op for a run whose final
    evaluation was on the whole split), every run on the test split (test = true), and seed FP32_SEED of the listed settings as a K sweep on
    validation (k_sweep) or the final validation protocol again in fp32 (fp32). Each is idempotent: a
    protocol already logged in full is not computed again."""
    from gptvae.sweep import plan_runs
    from gptvae.tracking import TAG_HASH

    if tracker.find_experiment(spec.experiment) is None or (spec.dataset and dataset and spec.dataset != dataset):
        return []   # nothing trained, or a spec about another corpus than the one asked for
    planned = {run.config_hash for run in plan_runs(spec, preset_name=preset_name, dataset=dataset, seeds=[0],
                                                    overrides=overrides)}   # the sweep's settings, as it planned them
    wanted = spec.evaluations
    out = []
    runs = []
    for run_id in tracker.trained_runs(spec.experiment):
        run = tracker.run(run_id)
        if run.data.tags.get(TAG_HASH) not in planned:   # another preset's run, or an old one
            continue
        params = run.data.params
        kind = params.get("model.kind")
        setting = "lm" if kind == "lm" else params.get(spec.factor) if kind == spec.family else \
            f"{kind}: {params.get(spec.factor)}"   # a comparison row: never one of the grid's settings
        runs.append((run_id, setting, int(params.get("train.seed", -1)), params))

    def chosen(settings):
        return [(r, p) for r, setting, seed, p in runs if seed == FP32_SEED and any(same_setting(setting, v) for v in settings)]

    def own(p):   # a run's final validation protocol, as its config set it
        return {"split": "valid", "iw_samples": int(p["eval.iw_samples"]),
                "max_sequences": None if p.get("eval.max_sequences") in (None, "None") else int(p["eval.max_sequences"])}

    # every run's own validation table, completed where it was logged before a column existed (no-op otherwise)
    out += [{"kind": "complete", "run_id": r, **own(p)} for r, _, _, p in runs]
    if wanted.get("whole_valid"):   # the same K on every validation sentence: what the paper's comparisons read
        out += [{"kind": "whole_valid", "run_id": r, **own(p), "max_sequences": None} for r, _, _, p in runs]
    if wanted.get("test"):
        out += [{"kind": "test", "run_id": r, **TEST_PROTOCOL} for r, *_ in runs]
    out += [{"kind": "k_sweep", "run_id": r, **KSWEEP_PROTOCOL} for r, _ in chosen(wanted.get("k_sweep", []))]
    out += [{"kind": "fp32", "run_id": r, **own(p)} for r, p in chosen(wanted.get("fp32", []))]
    return out


def same_setting(logged, wanted) -> bool:
    """A logged param against a wanted value: numbers as numbers ("1.0" is 1), the rest as text."""
    try:
        return float(logged) == float(wanted)
    except (TypeError, ValueError):
        return str(logged) == str(wanted)


def run_evaluation(item: dict, tracker: Tracker):
    """Carry out one row of spec_evaluations."""
    if item["kind"] == "k_sweep":
        return k_sweep_logged_run(item["run_id"], split=item["split"], ks=item["ks"],
                                  max_sequences=item["max_sequences"], tracker=tracker)
    return evaluate_logged_run(item["run_id"], split=item["split"], iw_samples=item["iw_samples"],
                               max_sequences=item["max_sequences"], fp32=item["kind"] == "fp32", tracker=tracker)


@torch.no_grad()
def sample_from_run(run: str, *, n: int = 8, reference: str | None = None, prior: bool = True,
                    temperature: float = 1.0, seed: int = 0) -> list[str]:
    """Decoded samples: from the prior, from a reference sentence's posterior mean, or without a latent."""
    require(isinstance(n, int) and n >= 1, "--n", n, "a number of samples >= 1")
    require(math.isfinite(temperature) and temperature >= 0, "--temperature", temperature,
            "a finite number >= 0 (0 decodes greedily)")
    require(reference is None or bool(reference.split()), "--reference", reference, "a non-empty sentence")
    model, corpus, cfg, _ = load_run(run)
    device = model_device(model)
    torch.manual_seed(seed)
    vocab = corpus.vocab
    prompts = torch.full((n, 1), BOS, dtype=torch.long, device=device)
    kwargs = dict(max_new_tokens=cfg.model.max_seq_len - 1, temperature=temperature)
    with autocast_context(device, False):
        if reference is not None:
            x = torch.tensor([[BOS, *vocab.encode(reference), EOS]], device=device)
            out = model.generate(prompts, reference=x.expand(n, -1), **kwargs)
        else:
            out = model.generate(prompts, prior=prior, **kwargs)
    return [vocab.decode(s) for s in out]


__all__ = ["decode_examples", "evaluate_logged_run", "final_evaluation", "load_run", "posterior_means",
           "sample_from_run", "samples_text"]
