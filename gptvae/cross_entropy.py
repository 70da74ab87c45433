"""The output projection and the cross-entropy in one pass, chunked so that logits never fill memory.

The textbook way to score a batch of N tokens over a vocabulary of C words materialises the (N, C)
logits, copies them to float32 and runs log-softmax over them, forward and backward: at yelp's C =
7,297 that is several passes over a 100 MB tensor per step, and it took about half of a `cpu`-preset
training step. `linear_log_prob` computes the same numbers chunk by chunk, one chunk of logits at a
time (256 rows: a few MB, where the whole batch's logits are a hundred):

    log p(target_t) = h_t . w_target - logsumexp_c (h_t . w_c)

It computes what the textbook path computes, in the same precisions: the matmul in the autocast dtype
when autocast is on (its result rounded to that dtype, as `F.linear` under autocast rounds it), the
log-sum-exp in float32, the gradient of the logits rounded back to the matmul dtype. In float32 the
results agree to float32 rounding; under bf16 the loss agrees and the gradients agree to bf16 rounding
(the weight gradient is rounded once per chunk rather than once). The tests check the loss and both
gradients against `F.linear` + `F.cross_entropy`, and bf16 gradients against the float64 answer.

Backward. The gradient of the loss with respect to the logits is g_t (softmax_t - onehot_t). In
training every token has the same weight g (the loss is a sum of token log-probabilities divided by
their count), so while it has the softmax in cache the forward pass also computes the gradients for
g = 1, and backward only scales them: the output layer then costs the 6NCD FLOPs of the textbook path
instead of 8NCD. When backward brings weights that differ between tokens, it recomputes the logits
chunk by chunk and weights each row: equally exact, at twice the textbook FLOPs (no caller of ours
does this; it is there so that the function is right for any loss).

Without gradients (validation, IW-NLL) only log p(target) is needed: a small torch.compile'd kernel
reads each chunk of logits once for its max, its sum of exponentials and the target's logit.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

# rows of logits per chunk: 256 x 7,297 float32 is 7 MB, the size at which a 2-core CPU ran fastest
CHUNK_ROWS = 256


def _compute_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype F.linear would multiply in here: the autocast dtype when autocast is on."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _log_softmax(h: Tensor, wt: Tensor) -> Tensor:
    """log_softmax(h @ wt) in float32 from logits rounded to the matmul dtype, as F.linear rounds them."""
    return torch.log_softmax(h @ wt, dim=-1, dtype=torch.float32)


def _target_log_prob_eager(logits: Tensor, target: Tensor) -> Tensor:
    return torch.log_softmax(logits, dim=-1, dtype=torch.float32).gather(1, target[:, None])[:, 0]


def _target_log_prob_fused(logits: Tensor, target: Tensor) -> Tensor:
    """The same numbers in one pass over the logits once compiled: max, sum of exp, gather."""
    x = logits.float()
    m = x.amax(dim=-1, keepdim=True)
    lse = (x - m).exp().sum(dim=-1).log() + m[:, 0]
    return x.gather(1, target[:, None])[:, 0] - lse


_compiled_target_log_prob = None
_compile_failed = False


def _target_log_prob(logits: Tensor, target: Tensor) -> Tensor:
    """log_softmax(logits)[target] in float32, (n, C) -> (n,): the forward pass when no gradient is needed.

    Compiled by torch.compile on first use (about 10 s once; inductor caches it on disk), because eager
    log-softmax makes three passes over the logits and this is most of an IW-NLL evaluation. Where
    compiling fails (no C++ compiler, an unsupported device) the eager version is used from then on.
    """
    global _compiled_target_log_prob, _compile_failed
    if not _compile_failed:
        try:
            if _compiled_target_log_prob is None:
                _compiled_target_log_prob = torch.compile(_target_log_prob_fused, dynamic=True)
            return _compiled_target_log_prob(logits, target)
        except Exception as err:   # noqa: BLE001 - any compiler failure leaves the eager path, which is exact
            _compile_failed = True
            warnings.warn(f"torch.compile of the output layer failed ({type(err).__name__}: {err}); "
                          "using eager log-softmax, which is slower and as exact", stacklevel=2)
    return _target_log_prob_eager(logits, target)


def _softmax_minus_onehot(log_p: Tensor, rows: Tensor, target: Tensor, log_p_target: Tensor, *, into: Tensor,
                          weight: Tensor | None = None) -> Tensor:
    """(softmax - onehot(target)) [* weight per row], rounded into `into` (the matmul dtype).

    The target entries are computed in float32 before rounding, as the textbook backward computes them.
    """
    if weight is None:
        torch.exp(log_p, out=into)
        into[rows, target] = (log_p_target.exp() - 1).to(into.dtype)
    else:
        torch.mul(log_p.exp_(), weight[:, None], out=into)
        into[rows, target] = ((log_p_target.exp() - 1) * weight).to(into.dtype)
    return into


class _LinearLogProb(torch.autograd.Function):
    """(N, D) hidden, (C, D) weight, (N,) target -> (N,) float32 log p(target)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, target: Tensor, compute_dtype: torch.dtype,
                chunk_rows: int, grads_ahead: bool) -> Tensor:
        h, w = hidden.to(compute_dtype), weight.to(compute_dtype)
        wt = w.T.contiguous()   # (D, C): h @ wt runs several times faster than h @ w.T on CPU
        n = h.shape[0]
        rows = torch.arange(min(n, chunk_rows), device=h.device)
        out = torch.empty(n, dtype=torch.float32, device=h.device)
        if grads_ahead:   # the gradients of -out.sum(), scaled in backward
            grad_h = torch.empty(n, h.shape[1], dtype=torch.float32, device=h.device)
            grad_w = torch.zeros(w.shape, dtype=torch.float32, device=h.device)
            d = torch.empty(min(n, chunk_rows), w.shape[0], dtype=compute_dtype, device=h.device)

        for part in _chunks(n, chunk_rows):
            t = target[part]
            r = rows[: t.shape[0]]
            if not grads_ahead:
                out[part] = _target_log_prob(h[part] @ wt, t)
                continue
            log_p = _log_softmax(h[part], wt)                     # (n_c, C) float32, in cache
            out[part] = log_p[r, t]
            _softmax_minus_onehot(log_p, r, t, out[part], into=d[: t.shape[0]])
            grad_h[part] = d[: t.shape[0]] @ w
            grad_w += d[: t.shape[0]].T @ h[part]

        ctx.compute_dtype, ctx.chunk_rows = compute_dtype, chunk_rows
        ctx.hidden_dtype, ctx.weight_dtype = hidden.dtype, weight.dtype
        ctx.save_for_backward(h, w, target, out, *((grad_h, grad_w) if grads_ahead else ()))
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        with torch.autocast(grad_out.device.type, enabled=False):   # dtypes are the forward's, not the caller's
            return _LinearLogProb._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out: Tensor):
        h, w, target, out, *ahead = ctx.saved_tensors
        # d out_t / d logits_t = onehot_t - softmax_t: the loss weights row t by grad_out_t
        if ahead and grad_out.numel() and bool((grad_out == grad_out[:1]).all()):
            g = -grad_out[:1].float()
            grad_h, grad_w = ahead[0] * g, ahead[1] * g
        else:
            grad_h = torch.empty(h.shape, dtype=torch.float32, device=h.device)
            grad_w = torch.zeros(w.shape, dtype=torch.float32, device=h.device)
            wt = w.T.contiguous()
            rows = torch.arange(min(h.shape[0], ctx.chunk_rows), device=h.device)
            for part in _chunks(h.shape[0], ctx.chunk_rows):
                t = target[part]
                r = rows[: t.shape[0]]
                d = _softmax_minus_onehot(_log_softmax(h[part], wt), r, t, out[part], weight=-grad_out[part].float(),
                                          into=torch.empty(t.shape[0], w.shape[0], dtype=ctx.compute_dtype,
                                                           device=h.device))
                grad_h[part] = d @ w
                grad_w += d.T @ h[part]
        grad_h = grad_h.to(ctx.hidden_dtype) if ctx.needs_input_grad[0] else None
        grad_w = grad_w.to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return grad_h, grad_w, None, None, None, None


def linear_log_prob(hidden: Tensor, weight: Tensor, target: Tensor, *, chunk_rows: int = CHUNK_ROWS) -> Tensor:
    """log softmax(hidden @ weight.T)[target] per row: (N, D), (C, D), (N,) -> (N,) float32."""
    if target.numel():
        low, high = (int(v) for v in target.aminmax())
        if low < 0 or high >= weight.shape[0]:
            raise ValueError(f"targets must lie in [0, {weight.shape[0]}) (the output layer's vocabulary); "
                             f"got [{low}, {high}]")
    compute_dtype = _compute_dtype(hidden.device.type, weight.dtype)
    grads_ahead = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    with torch.autocast(hidden.device.type, enabled=False):
        return _LinearLogProb.apply(hidden, weight, target, compute_dtype, chunk_rows, grads_ahead)


_textbook = False


@contextmanager
def textbook():
    """Inside, `sequence_log_prob` materialises the logits and runs F.cross_entropy: the reference path
    the fused one is tested and benchmarked against."""
    global _textbook
    previous, _textbook = _textbook, True
    try:
        yield
    finally:
        _textbook = previous


def textbook_sequence_log_prob(logits: Tensor, target: Tensor, *, ignore_index: int) -> Tensor:
    """The same sums from materialised (B, n, C) logits, log-softmax in float32."""
    nll = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=ignore_index, reduction="none")
    return -nll.view(target.shape).sum(dim=-1)


def sequence_log_prob(hidden: Tensor, weight: Tensor, target: Tensor, *, ignore_index: int,
                      chunk_rows: int = CHUNK_ROWS) -> Tensor:
    """Sum of log p(target_t) over the targets != ignore_index of each row: (B, n, D), (C, D), (B, n) -> (B,).

    Only the scored positions go through the output layer: padding costs nothing.
    """
    if _textbook:
        return textbook_sequence_log_prob(F.linear(hidden, weight), target, ignore_index=ignore_index)
    keep = target != ignore_index
    log_prob = linear_log_prob(hidden[keep], weight, target[keep], chunk_rows=chunk_rows)
    # scattered back and summed per row: deterministic on every device (index_add_ is not on CUDA)
    return torch.zeros(target.shape, dtype=torch.float32, device=target.device).masked_scatter(keep, log_prob).sum(-1)


__all__ = ["CHUNK_ROWS", "linear_log_prob", "sequence_log_prob", "textbook", "textbook_sequence_log_prob"]
