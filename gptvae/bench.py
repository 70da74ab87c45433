"""Benchmark: importance-weighted NLL, batched (ours) vs one sample at a time (reference code).

Reference implementations evaluate IW-NLL with a loop: for every sequence, for every one of the K
samples, one decoder call on a batch of one. `gptvae.metrics.importance_weighted_nll` repeats x along
the batch instead, so the K samples of many sequences go through the decoder together. Both paths
see the same model, the same sequences, the same K and the very same z, so they must also agree on
the numbers: the largest difference is printed beside the speeds.

    python -m gptvae bench                       # ~30-60 s on 2 CPU cores
    python -m gptvae bench -k 100 --sequences 32 --dim 256 --depth 4

It is a benchmark, not a test: it prints, it asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from gptvae.config import ModelConfig
from gptvae.data import BOS, EOS, PAD, Vocab, synthetic_sample
from gptvae.families import build_model
from gptvae.metrics import _log_likelihood, _posterior, importance_weighted_nll


def make_tokens(num_sequences: int, *, seed: int) -> tuple[torch.Tensor, int]:
    """(N, L) BOS ... EOS token matrix of synthetic-task sequences, and the vocabulary size."""
    texts, _, _ = synthetic_sample(num_sequences, seed=seed)
    vocab = Vocab.build([list(t) for t in texts], unit="char")
    tokens = torch.tensor([[BOS, *vocab.encode(t), EOS] for t in texts])
    return tokens, len(vocab)


def make_model(args, num_tokens: int, max_seq_len: int):
    config = ModelConfig(dim=args.dim, depth=args.depth, enc_depth=args.enc_depth, heads=args.heads,
                         attn_dim_head=args.dim_head, dim_latent=args.dim_latent, max_seq_len=max_seq_len)
    return build_model(config, num_tokens=num_tokens)


# the two ways of computing IW-NLL

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


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


@torch.no_grad()
def compare(model, tokens, args, *, autocast: bool):
    device = tokens.device
    n_tokens = int(((tokens != PAD).sum(-1) - 1).sum())
    common = dict(num_samples=args.k, seed=args.seed, autocast=autocast)

    # warm-up: first calls pay for allocation and kernel selection
    iw_nll_batched(model, tokens[:2], chunk_size=args.chunk_size, **{**common, "num_samples": 2})
    iw_nll_one_at_a_time(model, tokens[:1], **{**common, "num_samples": 2})

    batched, t_batched = timed(lambda: iw_nll_batched(model, tokens, chunk_size=args.chunk_size, **common), device)
    looped, t_looped = timed(lambda: iw_nll_one_at_a_time(model, tokens, **common), device)

    label = "bf16 autocast" if autocast else "fp32"
    print(f"[{label}]")
    print(f"  one sample at a time : {n_tokens / t_looped:10.1f} tokens/s  ({t_looped:7.2f} s, "
          f"{tokens.shape[0] * args.k} decoder calls of batch 1)")
    print(f"  batched (ours)       : {n_tokens / t_batched:10.1f} tokens/s  ({t_batched:7.2f} s, chunk {args.chunk_size})")
    print(f"  speedup              : {t_looped / t_batched:10.1f}x")
    print(f"  IW-NLL per sequence  : batched {batched.mean().item():.4f}, looped {looped.mean().item():.4f}, "
          f"max |diff| {(batched - looped).abs().max().item():.2e} nats")
    return t_looped / t_batched


def parse_args(argv=None):
    if argv and argv[0] == "--":  # `python -m gptvae bench -- -k 100`: the separator reaches us
        argv = argv[1:]
    p = argparse.ArgumentParser(prog="gptvae bench", description=__doc__.split("\n")[0])
    p.add_argument("-k", "--k", type=int, default=64, help="importance samples K per sequence")
    p.add_argument("--sequences", type=int, default=16, help="number of evaluated sequences")
    p.add_argument("--chunk-size", type=int, default=512, help="(x, z) pairs per decoder call in the batched path")
    p.add_argument("--dim", type=int, default=128, help="model width")
    p.add_argument("--depth", type=int, default=2, help="decoder layers")
    p.add_argument("--enc-depth", type=int, default=1, help="encoder layers")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--dim-head", type=int, default=64, help="attention head size (x-transformers warns when rotary gets < 32 dims)")
    p.add_argument("--dim-latent", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast comparison")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    tokens, num_tokens = make_tokens(args.sequences, seed=args.seed)
    model = make_model(args, num_tokens, max_seq_len=tokens.shape[1] + 8).to(device).eval()
    tokens = tokens.to(device)

    n_params = sum(p.numel() for p in model.parameters())
    print(f"IW-NLL benchmark: {type(model).__name__} ({n_params / 1e6:.2f}M parameters), {tokens.shape[0]} sequences "
          f"of length {tokens.shape[1]}, K = {args.k}, device {device}, {torch.get_num_threads()} threads")
    print("tokens/s = predicted tokens of the evaluated sequences per second, each scored with K samples")

    compare(model, tokens, args, autocast=False)
    if not args.no_bf16 and torch.amp.is_autocast_available(device.type):
        compare(model, tokens, args, autocast=True)


if __name__ == "__main__":
    main()
