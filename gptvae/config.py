"""Run configuration: one dataclass per concern, presets, command-line overrides and a stable hash.

    cfg = preset("cpu", dataset="yelp")
    cfg = apply_overrides(cfg, ["model.dim_latent=16", "objective.free_bits=0.5"])
    config_hash(cfg)   # identifies the setting (everything but the seed) in MLflow and on disk
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace

from gptvae.data import DATASETS
from gptvae.model import ModelConfig
from gptvae.objective import ObjectiveConfig


class ConfigError(ValueError):
    """A bad preset, override or config value. The message names the value and what is allowed."""


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "yelp"            # synthetic | yelp | ptb | shakespeare
    max_len: int | None = None       # drop longer sequences (symbols, before BOS/EOS); None keeps all
    chunk_len: int = 64              # shakespeare: characters per example
    synthetic_train: int = 20_000    # synthetic: sequences per split
    synthetic_eval: int = 1_000

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(f"data.dataset={self.dataset!r} is unknown; allowed: {', '.join(DATASETS)}")
        if self.max_len is not None and self.max_len < 1:
            raise ConfigError(f"data.max_len={self.max_len} must be >= 1 or None")
        for name in ("chunk_len", "synthetic_train", "synthetic_eval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name}={getattr(self, name)} must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2_000               # optimiser steps
    batch_tokens: int = 4_096        # padded tokens per batch (length-bucketed, so padding is small)
    lr: float = 1e-3                 # peak learning rate (AdamW)
    min_lr_ratio: float = 0.1        # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100          # linear learning-rate warm-up
    weight_decay: float = 0.01       # on matrices only
    grad_clip: float = 1.0           # max global gradient norm; 0 disables
    seed: int = 0
    autocast: bool = True            # bf16 autocast where the hardware runs it fast (CUDA, CPU with AMX)
    compile: bool = False            # torch.compile the model (pays off on long runs only)
    log_every: int = 10              # steps between training-metric points
    eval_every: int = 200            # steps between validation points (and checkpoints)
    val_sequences: int = 2_000       # validation sequences for the periodic curves

    def validate(self) -> None:
        positive = ("steps", "batch_tokens", "log_every", "eval_every", "val_sequences")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 1")
        if not self.lr > 0:
            raise ConfigError(f"train.lr={self.lr} must be > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"train.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        for name in ("warmup_steps", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 0")


@dataclass(frozen=True)
class EvalConfig:
    iw_samples: int = 500            # K for IW-NLL (He et al. 2019 report K = 500)
    mc_samples: int = 1              # posterior samples for Rec
    max_sequences: int | None = None  # evaluate on the first N sequences of a split; None = all
    splits: tuple[str, ...] = ("valid",)  # evaluated at the end of training
    batch_tokens: int = 8_192
    num_samples: int = 8             # decoded samples and reconstructions saved as artifacts

    def validate(self) -> None:
        for name in ("iw_samples", "mc_samples", "batch_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"eval.{name}={getattr(self, name)} must be >= 1")
        if self.max_sequences is not None and self.max_sequences < 2:
            raise ConfigError(f"eval.max_sequences={self.max_sequences} must be >= 2 or None")
        bad = [s for s in self.splits if s not in ("train", "valid", "test")]
        if bad or not self.splits:
            raise ConfigError(f"eval.splits={self.splits!r} is invalid; allowed: a non-empty subset of train, valid, test")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> "Config":
        for section in fields(self):
            try:
                getattr(self, section.name).validate()
            except ConfigError:
                raise
            except ValueError as err:
                raise ConfigError(str(err)) from None
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def flat(self) -> dict[str, object]:
        """{'model.dim': 256, ...}: MLflow params and the keys of --set."""
        return {f"{s}.{k}": v for s, sub in self.to_dict().items() for k, v in sub.items()}


# Presets: overrides on top of the defaults above.
# smoke: seconds, for tests. cpu: a real ~3 minute run on 2 cores. gpu: paper scale.
PRESETS: dict[str, dict[str, object]] = {
    "smoke": {
        "model.dim": 32, "model.depth": 1, "model.enc_depth": 1, "model.heads": 2, "model.attn_dim_head": 16,
        "model.dim_latent": 4,
        "train.steps": 30, "train.batch_tokens": 1_024, "train.warmup_steps": 5, "train.log_every": 5,
        "train.eval_every": 10, "train.val_sequences": 128, "train.autocast": False,
        "eval.iw_samples": 8, "eval.max_sequences": 64, "eval.batch_tokens": 2_048, "eval.num_samples": 4,
        "data.synthetic_train": 2_000, "data.synthetic_eval": 200,
    },
    "cpu": {
        "model.dim": 128, "model.depth": 3, "model.enc_depth": 2, "model.heads": 2, "model.attn_dim_head": 64,
        "model.dim_latent": 32,
        "train.steps": 400, "train.batch_tokens": 4_096, "train.lr": 2e-3, "train.warmup_steps": 40,
        "train.log_every": 10, "train.eval_every": 100, "train.val_sequences": 1_000,
        "eval.iw_samples": 64, "eval.max_sequences": 1_000, "eval.batch_tokens": 8_192,
    },
    "gpu": {
        "model.dim": 512, "model.depth": 8, "model.enc_depth": 4, "model.heads": 8, "model.attn_dim_head": 64,
        "model.dim_latent": 32, "model.dropout": 0.1,
        "train.steps": 30_000, "train.batch_tokens": 32_768, "train.lr": 6e-4, "train.warmup_steps": 1_000,
        "train.log_every": 50, "train.eval_every": 1_000, "train.val_sequences": 9_611,
        "eval.iw_samples": 500, "eval.max_sequences": None, "eval.splits": ("valid", "test"),
        "eval.batch_tokens": 65_536,
    },
}


def preset(name: str, *, dataset: str | None = None) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"preset {name!r} is unknown; allowed: {', '.join(PRESETS)}")
    cfg = apply_overrides(Config(), PRESETS[name])
    if dataset is not None:
        cfg = apply_overrides(cfg, {"data.dataset": dataset})
    return cfg


def _parse(text: str, annotation, key: str):
    """Turn the text of `--set key=text` into a value of the field's declared type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse(text, inner, key)
    if origin is tuple:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if annotation is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}={text!r}: expected a boolean (true/false)")
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r}: expected an integer") from None
    if annotation is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r}: expected a number") from None
    return text


def _coerce(value, annotation, key: str):
    """Check a Python value (from a preset or an experiment spec) against the field's type."""
    if isinstance(value, str):
        return _parse(value, annotation, key)
    allowed = typing.get_args(annotation) or (annotation,)
    if value is None and type(None) in allowed:
        return None
    if bool in allowed and isinstance(value, bool):
        return value
    if int in allowed and isinstance(value, int) and not isinstance(value, bool):
        return value
    if float in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(annotation) is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    expected = " or ".join(getattr(a, "__name__", str(a)) for a in allowed)
    raise ConfigError(f"{key}={value!r} has the wrong type: expected {expected}")


def apply_overrides(cfg: Config, overrides) -> Config:
    """Apply {'section.field': value} or ['section.field=value', ...]. Values are type-checked."""
    if not isinstance(overrides, dict):
        pairs = {}
        for item in overrides:
            key, sep, text = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--set {item!r} is malformed: expected section.field=value, e.g. model.dim_latent=16")
            pairs[key.strip()] = text.strip()
        overrides = pairs

    sections = {f.name: f for f in fields(Config)}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section not in sections or not name:
            raise ConfigError(f"{key!r} is not a config key; sections: {', '.join(sections)} (e.g. model.dim_latent)")
        sub = getattr(cfg, section)
        hints = typing.get_type_hints(type(sub))
        if name not in hints:
            raise ConfigError(f"{key!r} is not a config key; {section} has: {', '.join(f.name for f in fields(sub))}")
        cfg = replace(cfg, **{section: replace(sub, **{name: _coerce(value, hints[name], key)})})
    return cfg


def config_from_dict(data: dict) -> Config:
    return apply_overrides(Config(), {f"{s}.{k}": v for s, sub in data.items() for k, v in sub.items()})


def config_hash(cfg: Config) -> str:
    """Identifies a setting: every field except the seed, canonical JSON, sha256 (12 hex)."""
    data = cfg.to_dict()
    data["train"] = {k: v for k, v in data["train"].items() if k != "seed"}
    blob = json.dumps(data, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


__all__ = [
    "Config", "ConfigError", "DataConfig", "EvalConfig", "ModelConfig", "ObjectiveConfig", "TrainConfig",
    "PRESETS", "apply_overrides", "config_from_dict", "config_hash", "preset",
]
