"""Benchmarks: training and evaluation speed against upstream-style code and against the machine's peak.

    python -m gptvae bench                          # cpu preset on yelp: ~5 minutes on 2 CPU cores
    python -m gptvae bench --only train --rounds 5
    python -m gptvae bench --preset smoke --dataset synthetic

Three sections, each a side-by-side comparison in one process (timings on shared machines drift, so
only what is measured together is compared; contenders alternate round by round and the median round
is reported):

peak     the bf16 and fp32 matmul throughput of this machine: the best of a few square matmuls.
train    one optimiser step of the preset's model on its dataset, three ways:
         - upstream-style: x-transformers' `GPTVAE.forward` (its AutoregressiveWrapper loss), fp32,
           batches of random sentences padded to the corpus maximum, Adam, gradient clip 0.5 (its
           example script's optimiser; the script itself trains on fixed-length crops of enwik8);
         - textbook: our step with the output layer and cross-entropy of `gptvae.cross_entropy.textbook`
           (logits materialised, log-softmax in float32), which is what our step computed before; it
           differs from ours only in the output layer, so their ratio is the fused layer's gain, and
           upstream-style vs textbook is length bucketing, bf16 autocast and fused AdamW together;
         - ours: `gptvae.train.train_step`, exactly what `gptvae train` runs.
         tokens/s counts predicted tokens (words + EOS, never padding); model FLOPs are
         6 x (parameters - token embeddings) per predicted token, so the output projection counts and
         figures compare across changes; MFU is that FLOP rate over the matmul peak of the precision
         ours runs in (bf16 where autocast is on and fast, else fp32), measured again in every round
         (it drifts by 2x and more on shared CPUs).
iw       importance-weighted NLL: (1) the preset's model on a slice of the test split, fused vs
         the evaluation as it ran before (textbook output layer, decoder calls of eval.batch_tokens
         positions), with the time K = 500 on the whole test split would take; (2) on a
         small synthetic model, batched vs one decoder call per sample, as reference code does, with
         the largest difference between the two numbers.

A benchmark prints figures; it asserts nothing and is not a test.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from gptvae.config import ModelConfig, preset
from gptvae.cross_entropy import textbook
from gptvae.data import BOS, EOS, PAD, Split, Vocab, batch_plan, collate, load_data, synthetic_sample
from gptvae.device import bf16_is_fast, pick_device
from gptvae.families import build_model
from gptvae.families.common import layer_kwargs
from gptvae import metrics
from gptvae.metrics import _log_likelihood, _posterior, evaluate, importance_weighted_nll
from gptvae.objective import beta_at
from gptvae.train import lr_factor, make_optimizer, train_step

SECTIONS = ("peak", "train", "iw")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


# peak

def matmul_peak(dtype: torch.dtype, device: torch.device, *, sizes=(512, 768, 1024, 2048), reps: int = 5,
                slow: float = 0.5) -> float:
    """FLOP/s of the best square matmul n x n x n in `dtype` (2 n^3 FLOPs), median of `reps` per size.

    Several sizes, because the fastest one differs between machines (and, on CPU, between kernels). A dtype
    this machine only emulates (bf16 without AVX512-BF16 or AMX: about 1 GFLOP/s) would take minutes at the
    larger sizes, so the sizes stop once one multiply takes over `slow` seconds: its rate is known by then."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        a @ b   # untimed: a first call pays for kernels and (CUDA) context
        first = timed(lambda: a @ b, device)[1]
        if first > slow:
            return max(best, 2 * n**3 / first)
        times = [timed(lambda: a @ b, device)[1] for _ in range(reps)]
        best = max(best, 2 * n**3 / statistics.median(times))
    return best


# training

def flops_per_token(model: torch.nn.Module) -> int:
    """6 x (parameters - token embeddings): forward 2, backward 4 FLOPs per weight and predicted token."""
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return 6 * (sum(p.numel() for p in model.parameters()) - embeddings)


def predicted_tokens(x: torch.Tensor) -> int:
    return int((x[:, 1:] != PAD).sum())


class Upstream:
    """x-transformers' GPTVAE as plainly as it trains: its own forward and loss, fp32, batches padded to the
    corpus maximum, Adam with its example's gradient clip."""

    name = "upstream-style"

    def __init__(self, cfg, corpus, device):
        from x_transformers.gpt_vae import GPTVAE

        torch.manual_seed(cfg.train.seed)
        m = cfg.model
        self.model = GPTVAE(num_tokens=len(corpus.vocab), dim=m.dim, depth=m.depth, enc_depth=m.enc_depth,
                            max_seq_len=m.max_seq_len, dim_latent=m.dim_latent, pad_id=PAD,
                            latents_dropout_prob=cfg.objective.latent_dropout, vae_kl_div_floor=cfg.objective.free_bits,
                            **layer_kwargs(m)).to(device).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr)
        self.split = corpus.splits["train"]
        self.longest = int(max(s.lengths.max() for s in corpus.splits.values())) + 2   # BOS ... EOS
        batch = max(1, cfg.train.batch_tokens // self.longest)
        order = torch.randperm(len(self.split), generator=torch.Generator().manual_seed(cfg.train.seed))
        self.batches = list(order[: len(order) // batch * batch].split(batch))
        self.device, self.i = device, 0

    def step(self) -> int:
        x = collate(self.split, self.batches[self.i % len(self.batches)])   # collated per step, as we train
        x = F.pad(x, (0, self.longest - x.shape[1]), value=PAD).to(self.device)
        self.i += 1
        loss = self.model(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.5)
        self.optimizer.step()
        self.optimizer.zero_grad()
        return predicted_tokens(x)


class Ours:
    """`gptvae.train.train_step` on the length-bucketed batches `gptvae train` draws."""

    def __init__(self, cfg, corpus, device, *, name="ours", reference=False):
        torch.manual_seed(cfg.train.seed)
        self.name, self.cfg, self.device, self.reference = name, cfg, device, reference
        self.model = build_model(cfg.model, num_tokens=len(corpus.vocab)).to(device).train()
        self.optimizer = make_optimizer(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        self.autocast = cfg.train.autocast and bf16_is_fast(device)
        self.split = corpus.splits["train"]
        self.batches = batch_plan(self.split.lengths, max_tokens=cfg.train.batch_tokens, shuffle=True,
                                  seed=cfg.train.seed)
        self.i = 0

    def step(self) -> int:
        x = collate(self.split, self.batches[self.i % len(self.batches)]).to(self.device)
        beta = beta_at(self.cfg.objective, self.i, self.cfg.train.steps)
        self.i += 1
        with textbook() if self.reference else nullcontext():
            train_step(self.model, self.optimizer, self.scheduler, x, self.cfg, beta=beta, device=self.device,
                       autocast=self.autocast)
        return predicted_tokens(x)


def race(contenders, *, steps: int, rounds: int, warmup: int, device, peak_dtype=torch.bfloat16) -> tuple[dict, dict]:
    """Per contender, the median over `rounds` rounds of `steps` steps of tokens/s and of tokens/s over
    the `peak_dtype` matmul peak measured in the same round. Contenders alternate, so drift hits all alike."""
    for c in contenders:
        for _ in range(warmup):
            c.step()
    rates = {c.name: [] for c in contenders}
    per_peak = {c.name: [] for c in contenders}
    for r in range(rounds):
        peak = matmul_peak(peak_dtype, device)
        for c in (contenders if r % 2 == 0 else contenders[::-1]):
            tokens, seconds = timed(lambda: sum(c.step() for _ in range(steps)), device)
            rates[c.name].append(tokens / seconds)
            per_peak[c.name].append(tokens / seconds / peak)
    median = lambda d: {name: statistics.median(values) for name, values in d.items()}   # noqa: E731
    return median(rates), median(per_peak)


def bench_train(cfg, corpus, device, args) -> None:
    contenders = [Upstream(cfg, corpus, device),
                  Ours(cfg, corpus, device, name="textbook", reference=True),
                  Ours(cfg, corpus, device)]
    flops = flops_per_token(contenders[-1].model)
    autocast = contenders[-1].autocast
    # MFU against the peak of the precision our step multiplies in: bf16 where autocast runs, else fp32 (a CPU
    # without AVX512-BF16 or AMX emulates bf16 matmuls at a small fraction of its fp32 rate, so training stays fp32)
    peak_dtype, peak_name = (torch.bfloat16, "bf16") if autocast else (torch.float32, "fp32")
    print(f"\n[train] {args.preset} preset on {cfg.data.dataset}: {cfg.model.dim} wide, {cfg.model.depth} + "
          f"{cfg.model.enc_depth} layers, {len(corpus.vocab):,} words, {flops / 6 / 1e6:.2f}M non-embedding "
          f"parameters, {cfg.train.batch_tokens:,} padded tokens per step; ours in "
          f"{'bf16 autocast' if autocast else 'fp32'}; median of {args.rounds} rounds of {args.steps} steps; "
          f"MFU against the {peak_name} peak measured in the same round")
    rates, per_peak = race(contenders, steps=args.steps, rounds=args.rounds, warmup=args.warmup, device=device,
                           peak_dtype=peak_dtype)
    base = rates["upstream-style"]
    for name, rate in rates.items():
        print(f"  {name:15s} {rate:9,.0f} tokens/s  {rate / base:5.2f}x upstream-style  "
              f"{rate * flops / 1e9:7.1f} GFLOP/s  MFU {per_peak[name] * flops:6.1%} of {peak_name} peak")


# evaluation

@torch.no_grad()
def bench_eval(cfg, corpus, device, args) -> None:
    """IW-NLL of the preset's (untrained) model on a slice of the test split: fused vs textbook."""
    torch.manual_seed(0)
    model = build_model(cfg.model, num_tokens=len(corpus.vocab)).to(device).eval()
    autocast = cfg.train.autocast and bf16_is_fast(device)
    test = corpus.splits["test"]
    index = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:args.eval_sequences]
    part = Split([test.sequences[i] for i in index.tolist()], {})
    n_tokens = int(sum(len(s) - 1 for s in part.sequences))
    whole = int(sum(len(s) - 1 for s in test.sequences))
    k = args.eval_k
    print(f"\n[iw] IW-NLL of the {args.preset} preset's model, K = {k}, on {len(part):,} test sequences "
          f"({n_tokens:,} tokens); {'bf16 autocast' if autocast else 'fp32'}; projected: K = 500 on all "
          f"{len(test):,} test sequences ({whole:,} tokens)")

    def run(reference):
        # the textbook contender is the evaluation as it ran before: materialised logits, and decoder
        # calls of eval.batch_tokens positions (larger ones make it slower: its logits are GBs)
        if reference:
            before, metrics.IW_CHUNK_TOKENS = metrics.IW_CHUNK_TOKENS, cfg.eval.batch_tokens
        try:
            with textbook() if reference else nullcontext():
                return evaluate(model, part, iw_samples=k, max_tokens=cfg.eval.batch_tokens, autocast=autocast,
                                seed=0)
        finally:
            if reference:
                metrics.IW_CHUNK_TOKENS = before

    run(False)   # warm-up
    times = {"textbook": [], "ours": []}
    results = {}
    for r in range(args.rounds):
        for name in (("textbook", "ours") if r % 2 == 0 else ("ours", "textbook")):
            results[name], dt = timed(lambda: run(name == "textbook"), device)
            times[name].append(dt)
    reference = statistics.median(times["textbook"])
    for name in ("textbook", "ours"):
        dt = statistics.median(times[name])
        rate = n_tokens * k / dt
        print(f"  {name:15s} {rate:9,.0f} token-samples/s  {reference / dt:5.2f}x textbook   "
              f"K = 500 on the test split: {whole * 500 / rate / 60:5.1f} min")
    diff = abs(results["ours"]["iw_nll_per_token"] - results["textbook"]["iw_nll_per_token"])
    print(f"  IW-NLL per token: ours {results['ours']['iw_nll_per_token']:.5f}, textbook "
          f"{results['textbook']['iw_nll_per_token']:.5f}, |diff| {diff:.1e} nats")


def make_tokens(num_sequences: int, *, seed: int) -> tuple[torch.Tensor, int]:
    """(N, L) BOS ... EOS token matrix of synthetic-task sequences, and the vocabulary size."""
    texts, _, _ = synthetic_sample(num_sequences, seed=seed)
    vocab = Vocab.build([list(t) for t in texts], unit="char")
    tokens = torch.tensor([[BOS, *vocab.encode(t), EOS] for t in texts])
    return tokens, len(vocab)


def iw_nll_batched(model, tokens, *, num_samples, chunk_size, seed, autocast):
    return importance_weighted_nll(model, tokens, num_samples, chunk_size=chunk_size,
                                   generator=torch.Generator().manual_seed(seed), autocast=autocast)


def iw_nll_one_at_a_time(model, tokens, *, num_samples, seed, autocast):
    """The reference-code loop: per sequence, per sample, one decoder call of batch size 1.

    The z are drawn exactly as the batched path draws them, so the two results must agree.
    """
    generator = torch.Generator().manual_seed(seed)
    z_all = _posterior(model, tokens, autocast=autocast).sample(num_samples, generator=generator)  # (K, N, D)

    out = []
    for i in range(tokens.shape[0]):
        x = tokens[i:i + 1]
        posterior = _posterior(model, x, autocast=autocast).to(torch.float64)  # the encoder once per sequence
        log_w = []
        for k in range(num_samples):
            z = z_all[k, i:i + 1]
            ll = _log_likelihood(model, x, z, autocast=autocast).double()
            z = z.double()
            log_w.append(ll + model.prior.log_prob(z) - posterior.log_prob(z))
        out.append(-(torch.logsumexp(torch.cat(log_w), 0) - math.log(num_samples)))
    return torch.stack(out)


@torch.no_grad()
def bench_batching(device, args) -> None:
    """The synthetic model of the earlier benchmark: batched IW-NLL vs one decoder call per sample."""
    tokens, num_tokens = make_tokens(16, seed=0)
    config = ModelConfig(dim=128, depth=2, enc_depth=1, heads=2, attn_dim_head=64, dim_latent=16,
                         max_seq_len=tokens.shape[1] + 8)
    torch.manual_seed(0)
    model = build_model(config, num_tokens=num_tokens).to(device).eval()
    tokens = tokens.to(device)
    n_tokens = int(((tokens != PAD).sum(-1) - 1).sum())
    k = 64
    print(f"\n[iw] batching, on a synthetic-task model (dim 128, 2 layers): {tokens.shape[0]} sequences, K = {k}")
    for autocast in (False, True) if bf16_is_fast(device) else (False,):
        common = dict(num_samples=k, seed=0, autocast=autocast)
        iw_nll_batched(model, tokens[:2], chunk_size=512, **{**common, "num_samples": 2})
        iw_nll_one_at_a_time(model, tokens[:1], **{**common, "num_samples": 2})
        batched, t_batched = timed(lambda: iw_nll_batched(model, tokens, chunk_size=512, **common), device)
        looped, t_looped = timed(lambda: iw_nll_one_at_a_time(model, tokens, **common), device)
        print(f"  {'bf16 autocast' if autocast else 'fp32':13s}  one sample at a time {n_tokens / t_looped:8.1f} "
              f"tokens/s, batched {n_tokens / t_batched:8.1f} tokens/s: {t_looped / t_batched:5.1f}x; "
              f"max |diff| {(batched - looped).abs().max().item():.1e} nats")


def parse_args(argv=None):
    if argv and argv[0] == "--":  # `python -m gptvae bench -- --rounds 3`: the separator reaches us
        argv = argv[1:]
    p = argparse.ArgumentParser(prog="gptvae bench", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[6:]))
    p.add_argument("--preset", default="cpu", help="whose model shape and batch size (default: cpu)")
    p.add_argument("--dataset", default="yelp", help="whose vocabulary and sentences (default: yelp)")
    p.add_argument("--only", choices=SECTIONS, action="append", help="run only this section (repeatable)")
    p.add_argument("--steps", type=int, default=10, help="training steps per contender and round (default: 10)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; the median round is reported (default: 3)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per contender first (default: 3)")
    p.add_argument("--eval-sequences", type=int, default=300, help="test sequences the IW-NLL bench scores")
    p.add_argument("--eval-k", type=int, default=100, help="importance samples in the IW-NLL bench (default: 100)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = p.parse_args(argv)
    for name in ("steps", "rounds", "eval_sequences", "eval_k"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)} is invalid; allowed: an integer >= 1")
    if args.warmup < 0:
        p.error(f"--warmup={args.warmup} is invalid; allowed: an integer >= 0")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    sections = args.only or SECTIONS
    cfg = preset(args.preset, dataset=args.dataset)
    corpus = load_data(cfg.data) if {"train", "iw"} & set(sections) else None
    print(f"gptvae bench: device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}")

    if "peak" in sections:
        peak_bf16, peak_fp32 = matmul_peak(torch.bfloat16, device), matmul_peak(torch.float32, device)
        print(f"\n[peak] matmul: bf16 {peak_bf16 / 1e9:,.0f} GFLOP/s, fp32 {peak_fp32 / 1e9:,.0f} GFLOP/s "
              f"(best square n x n x n over n = 512 to 2,048, up to the first size slower than 0.5 s; median of 5 "
              f"each); bf16 autocast "
              f"{'runs' if bf16_is_fast(device) else 'stays off'} here")
    if "train" in sections:
        bench_train(cfg, corpus, device, args)
    if "iw" in sections:
        bench_eval(cfg, corpus, device, args)
        bench_batching(device, args)


if __name__ == "__main__":
    main()
