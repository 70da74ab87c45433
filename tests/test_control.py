"""What the latent controls on the synthetic task: reading texts the way the task writes them, and the
agreement rates of samples that share a latent, on a model whose latent fixes the position by design."""

import math

import pytest
import torch

from gptvae.control import chance_rates, latent_control, pair_rates
from gptvae.data import (BOS, EOS, PAD, SYN_LETTERS, SYN_POSITIONS, SYN_SYMBOLS, Vocab, read_synthetic,
                         synthetic_exact_nll, synthetic_sample)
from gptvae.latents import UniformBits


def test_reading_task_texts_recovers_their_letter_position_and_noise():
    texts, letters, positions = synthetic_sample(500, seed=3)
    for text, letter, position in zip(texts, letters, positions):
        r = read_synthetic(text)
        assert r.well_formed and r.letter == SYN_LETTERS[letter] and position in r.positions
        assert r.noise == {i for i, ch in enumerate(text[2:]) if ch == "!"}
        assert r.well_formed == math.isfinite(synthetic_exact_nll(text))


@pytest.mark.parametrize("text", [
    "A>" + "_" * 64,                                  # no run of letters
    "A>" + "B" * 8 + "_" * 56,                        # another letter
    "A>" + "A" * 8 + "_" * 55,                        # one column short
    "A>" + "A" * 4 + "_" * 4 + "A" * 4 + "_" * 52,    # two runs of four
    "Ab" + "A" * 8 + "_" * 56,                        # no header
])
def test_texts_the_task_cannot_produce_are_not_well_formed(text):
    assert not read_synthetic(text).well_formed


def test_pair_rates_count_pairs_of_well_formed_samples_only():
    a = read_synthetic("A>" + "A" * 8 + "_" * 55 + "!")
    b = read_synthetic("A>" + "A" * 8 + "_" * 54 + "!_")
    c = read_synthetic("B>" + "_" * 10 + "B" * 8 + "_" * 46)
    bad = read_synthetic("A>___")
    rates, pairs = pair_rates([[a, b, bad], [a, c]])
    assert pairs == 2
    assert rates["position"] == 0.5 and rates["letter"] == 0.5
    assert rates["noise"] == pytest.approx((0.0 + 0.0) / 2)   # a and b: "!" in different columns; a and c: a's only


def test_chance_rates_are_the_tasks_own():
    chance = chance_rates()
    assert chance["letter"] == pytest.approx(1 / 26, abs=0.01)
    assert chance["position"] == pytest.approx(1 / SYN_POSITIONS, abs=0.01)
    assert chance["noise"] == pytest.approx((1 / 16) / (2 - 1 / 16), abs=0.01)


class PositionFromLatent:
    """A model whose latent fixes the target position and nothing else (letter and noise are fresh)."""

    def __init__(self, vocab):
        self.vocab, self.prior = vocab, UniformBits(6)

    def parameters(self):
        return iter([torch.zeros(1)])

    def generate(self, prompts, *, max_new_tokens, z=None, prior=False):
        out = []
        for _ in range(len(prompts)):
            code = z[0] if z is not None else self.prior.sample(1, 1)[0, 0]
            position = int(code) % SYN_POSITIONS
            letter = SYN_LETTERS[int(torch.randint(26, ()))]
            body = ["_"] * 64
            body[position:position + 8] = letter * 8
            body = ["!" if torch.rand(()) < 1 / 16 else ch for ch in body]
            out.append(torch.tensor(self.vocab.encode(f"{letter}>{''.join(body)}") + [EOS]))
        return torch.nn.utils.rnn.pad_sequence(out, batch_first=True, padding_value=PAD)


def test_a_latent_that_fixes_the_position_shows_in_the_shared_rate_only():
    vocab = Vocab.build([list(SYN_SYMBOLS)], unit="char")
    out = latent_control(PositionFromLatent(vocab), vocab, groups=40, per_group=4, seed=0)
    assert out["control_well_formed"] == 1.0 and out["control_pairs_shared"] == 40 * 6
    assert out["control_position_shared"] == 1.0
    assert out["control_position_independent"] < 0.1
    assert out["control_letter_shared"] < 0.15 and out["control_noise_shared"] < 0.15


def test_a_real_free_transformer_goes_through():
    from gptvae.config import ModelConfig
    from gptvae.families.freetransformer import Model

    vocab = Vocab.build([list(SYN_SYMBOLS)], unit="char")
    torch.manual_seed(0)
    model = Model(ModelConfig(kind="freetransformer", dim=16, depth=2, enc_depth=1, heads=1, attn_dim_head=16,
                              latent_bits=2), num_tokens=len(vocab))
    out = latent_control(model, vocab, groups=2, per_group=2, seed=0)
    assert set(out) >= {"control_well_formed", "control_pairs_shared", "control_noise_chance"}
    assert 0.0 <= out["control_well_formed"] <= 1.0
    assert all(v == v for v in out.values())   # no NaN: a rate over no well-formed pair is absent
    if out["control_pairs_shared"] == 0:
        assert "control_position_shared" not in out
