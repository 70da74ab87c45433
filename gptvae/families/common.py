"""What the families share: helpers, the layer arguments of the decoder, the sequence log-likelihood."""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from gptvae.data import PAD


def exists(v):
    return v is not None


def default(v, d):
    return v if exists(v) else d


def keep_logits(logits, **kwargs):
    """Sample from the model's own distribution (upstream's default truncates to the top 10%)."""
    return logits


def layer_kwargs(config) -> dict:
    """What upstream passes to its Encoder and Decoder; the LM baseline's Decoder gets exactly the same."""
    return dict(attn_dim_head=config.attn_dim_head, heads=config.heads, rotary_pos_emb=config.rotary_pos_emb,
                attn_dropout=config.dropout, ff_dropout=config.dropout)


def sequence_log_prob(logits: Tensor, target: Tensor) -> Tensor:
    """Sum of log p(target_t) over the non-PAD targets of each row. Always in float32."""
    # (B*n, C) keeps the softmax over a contiguous last dim: several times faster on CPU than (B, C, n)
    nll = F.cross_entropy(rearrange(logits.float(), "b n c -> (b n) c"), rearrange(target, "b n -> (b n)"),
                          ignore_index=PAD, reduction="none")
    return -rearrange(nll, "(b n) -> b n", b=target.shape[0]).sum(dim=-1)


class Example(NamedTuple):
    """One decoded example: a section ("prior", "reconstruction", ...), the tokens generated, and
    optionally the sequence they reconstruct and a note ("t=0.25")."""

    section: str
    output: Tensor
    source: Tensor | None = None
    note: str = ""
