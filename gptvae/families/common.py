"""What the families share: helpers, the layer arguments of the decoder, decoded examples."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


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


class Example(NamedTuple):
    """One decoded example: a section ("prior", "reconstruction", ...), the tokens generated, and
    optionally the sequence they reconstruct and a note ("t=0.25")."""

    section: str
    output: Tensor
    source: Tensor | None = None
    note: str = ""
