"""Paired intervals and the words chosen from them (gptvae.stats), on data whose answer is known."""

import math

import numpy as np
import pandas as pd
import pytest

from gptvae.stats import Interval, drift, level_drift, over_seeds, paired, trend, use, verdict


def frame(values, tokens=None, sentences=None):
    n = len(values)
    return pd.DataFrame({"sentence": np.arange(n) if sentences is None else sentences,
                         "tokens": np.full(n, 10) if tokens is None else tokens, "iw_nll": values})


def test_a_constant_offset_is_recovered_exactly_with_a_zero_width_interval():
    rng = np.random.default_rng(0)
    b = {s: frame(rng.normal(30, 5, 200)) for s in range(3)}
    a = {s: b[s].assign(iw_nll=b[s].iw_nll + 2.0) for s in b}
    diff = paired(a, b, "iw_nll", per_token=False)
    assert diff.estimate == pytest.approx(2.0) and diff.low == pytest.approx(2.0) and diff.high == pytest.approx(2.0)
    per_token = paired(a, b, "iw_nll", per_token=True)
    assert per_token.estimate == pytest.approx(0.2)   # 2 nats over 10 tokens a sentence
    assert verdict(per_token, margin=0.01) == "costs"


def test_pairing_removes_a_shared_seed_effect_that_an_unpaired_spread_would_hide():
    """Seed effects of +-1 nat, a true difference of 0.05: paired, the interval excludes 0 and lies near 0.05
    (within half its width: a single study's 95% interval may just miss; coverage is tested below)."""
    rng = np.random.default_rng(1)
    a, b = {}, {}
    for s in range(3):
        difficulty = rng.normal(30, 5, 500)   # the sentences' own difficulty, shared by both settings
        seed_effect = rng.normal(0, 1.0)      # shared by both settings trained from this seed
        b[s] = frame(difficulty + seed_effect + rng.normal(0, 0.1, 500))
        a[s] = frame(difficulty + seed_effect + 0.05 + rng.normal(0, 0.1, 500))
    diff = paired(a, b, "iw_nll", per_token=False)
    width = diff.high - diff.low
    assert diff.low > 0 and diff.low - width / 2 < 0.05 < diff.high + width / 2
    unpaired_spread = np.std([a[s].iw_nll.mean() for s in a], ddof=1)
    assert unpaired_spread > 10 * (diff.high - diff.low)


def test_sentences_are_paired_by_id_not_by_row_order():
    b = {0: frame([1.0, 2.0, 3.0], sentences=[10, 11, 12])}
    a = {0: frame([3.5, 1.5, 2.5], sentences=[12, 10, 11])}   # each sentence 0.5 worse, rows shuffled
    assert paired(a, b, "iw_nll", per_token=False).estimate == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no sentence in common"):
        paired({0: frame([1.0], sentences=[99])}, b, "iw_nll", per_token=False)


def test_only_seeds_present_in_both_settings_are_paired():
    b = {0: frame([1.0, 1.0]), 1: frame([1.0, 1.0])}
    a = {1: frame([2.0, 2.0]), 2: frame([9.0, 9.0])}
    diff = paired(a, b, "iw_nll", per_token=False)
    assert diff.seeds == 1 and diff.estimate == pytest.approx(1.0)


def test_intervals_are_reproducible():
    rng = np.random.default_rng(2)
    a = {s: frame(rng.normal(0, 1, 50)) for s in range(3)}
    b = {s: frame(rng.normal(0, 1, 50)) for s in range(3)}
    assert paired(a, b, "iw_nll", per_token=True) == paired(a, b, "iw_nll", per_token=True)


def test_seeds_that_agree_exactly_add_nothing_to_the_sentences_interval():
    """Three identical seeds: the spread over seeds is 0, so the interval is the one seed's, not t(2) = 4.30
    times its standard error."""
    rng = np.random.default_rng(5)
    base, other = rng.normal(30, 5, 400), rng.normal(0.2, 1.0, 400)
    one = paired({0: frame(base + other)}, {0: frame(base)}, "iw_nll", per_token=False)
    three = paired({s: frame(base + other) for s in range(3)}, {s: frame(base) for s in range(3)}, "iw_nll",
                   per_token=False)
    assert three.estimate == pytest.approx(one.estimate)
    assert three.high - three.low == pytest.approx(one.high - one.low, rel=1e-9)
    assert (one.high - one.low) / 2 == pytest.approx(1.96 * 1.0 / math.sqrt(400), rel=0.15)


def test_sentences_that_agree_exactly_leave_the_seeds_t_interval():
    """Every sentence differs by its seed's constant: no sentence variance, so the interval is the t interval
    over the three per-seed differences, with 2 degrees of freedom."""
    shift = {0: 0.1, 1: 0.3, 2: 0.2}
    base = np.random.default_rng(6).normal(30, 5, 100)
    diff = paired({s: frame(base + shift[s]) for s in shift}, {s: frame(base) for s in shift}, "iw_nll", per_token=False)
    assert diff.estimate == pytest.approx(0.2)
    assert diff.high - 0.2 == pytest.approx(4.302652729911275 * 0.1 / math.sqrt(3))


def test_effective_degrees_of_freedom_are_welch_satterthwaite():
    from gptvae.stats import effective_dof

    assert effective_dof((1.0, 2), (0.0, 999)) == pytest.approx(2)          # the seeds alone
    assert effective_dof((0.0, 2), (1.0, 999)) == pytest.approx(999)        # the sentences alone
    assert effective_dof((1.0, 2), (1.0, 2)) == pytest.approx(4)            # two equal terms: their dof add
    assert effective_dof((1.0, 2), (1.0, 999)) == pytest.approx(4 / (1 / 2 + 1 / 999))
    assert effective_dof((0.0, 0), (0.0, 0)) == math.inf


def test_crossed_variance_is_the_two_way_anova_variance_of_the_grand_mean():
    """Brute force on a 3 x 4 table: the variance of the grand mean under the random-effects model, from its
    expected mean squares, and its degrees of freedom."""
    from gptvae.stats import crossed_variance

    x = np.array([[1.0, 2.0, 4.0, 3.0], [2.0, 2.5, 5.0, 3.5], [0.5, 2.0, 3.0, 3.0]])
    k, n = x.shape
    grand = x.mean()
    ms_seed = n * ((x.mean(1) - grand) ** 2).sum() / (k - 1)
    ms_sent = k * ((x.mean(0) - grand) ** 2).sum() / (n - 1)
    ms_resid = ((x - x.mean(1, keepdims=True) - x.mean(0, keepdims=True) + grand) ** 2).sum() / ((k - 1) * (n - 1))
    assert ms_seed > ms_resid and ms_sent > ms_resid
    expected = (ms_seed - ms_resid) / n / k + (ms_sent - ms_resid) / k / n + ms_resid / (k * n)
    terms = [(ms_seed, k - 1), (ms_sent, n - 1), (-ms_resid, (k - 1) * (n - 1))]
    dof = sum(v for v, _ in terms) ** 2 / sum(v * v / d for v, d in terms)
    variance, got_dof = crossed_variance(x)
    assert variance == pytest.approx(expected) and got_dof == pytest.approx(dof)


def test_seeds_that_agree_by_chance_keep_their_few_degrees_of_freedom():
    """Two seeds whose mean differences agree exactly, closer than their sentence-by-sentence noise would have
    them: the seed term is floored at the noise and keeps its one degree of freedom, so the interval is about
    t(1) = 12.7 standard errors wide on each side, not 1.96 as if two seeds had shown that seeds do not
    matter."""
    from gptvae.stats import crossed_variance

    rng = np.random.default_rng(11)
    x = rng.normal(0, 1, (2, 500))
    x += 0.1 - x.mean(1, keepdims=True)      # both seeds' mean difference exactly 0.1: MS_seed = 0
    resid = x - x.mean(1, keepdims=True) - x.mean(0, keepdims=True) + x.mean()
    ms_resid = (resid ** 2).sum() / 499
    variance, dof = crossed_variance(x)
    assert dof < 1.5
    assert variance >= ms_resid / 1000 * (1 - 1e-9)   # never below the noise's own share
    diff = paired({s: frame(30 + x[s]) for s in range(2)}, {s: frame(np.full(500, 30.0)) for s in range(2)},
                  "iw_nll", per_token=False)
    assert diff.estimate == pytest.approx(0.1)
    assert (diff.high - diff.low) / 2 > 5 * math.sqrt(variance)


@pytest.mark.parametrize("seeds, seed_sd, low, high", [
    (3, 0.0, 0.95, 1.0),    # no seed effect: two or three seeds that agree are not read as proof of it
    (3, 0.05, 0.95, 1.0),   # a seed effect below the sentence noise: conservative, never below 95%
    (3, 0.3, 0.91, 0.98),   # the seeds dominate: about 95%, the seed-by-sentence noise counted once, not twice
    (2, 0.0, 0.95, 1.0),    # two seeds: t(1) wherever the seeds' mean square counts, so conservative throughout
    (2, 0.05, 0.95, 1.0),
    (2, 0.3, 0.95, 1.0),
])
@pytest.mark.parametrize("per_token", [False, True])
def test_intervals_are_not_anticonservative(seeds, seed_sd, low, high, per_token):
    """Differences that are mostly seed-by-sentence noise (separately trained models disagree sentence by
    sentence), with a seed effect of three sizes: 95% intervals of two or three seeds cover the true 0 at least
    95% of the time, also for the per-token ratio through its linearisation. Dropping the seed term whenever its
    mean square fell below the noise's covered 90-92% with a small seed effect. Adding the spread over seeds to a
    sentence bootstrap counts the noise twice and covers about 99% even where the seeds dominate."""
    rng = np.random.default_rng(7)
    covered, studies = 0, 300
    for _ in range(studies):
        sentence = rng.normal(0, 0.3, 200)
        b = {s: frame(rng.normal(30, 5, 200), tokens=rng.integers(5, 15, 200)) for s in range(seeds)}
        a = {s: b[s].assign(iw_nll=b[s].iw_nll + sentence + rng.normal(0, seed_sd) + rng.normal(0, 1.0, 200))
             for s in b}
        diff = paired(a, b, "iw_nll", per_token=per_token)
        covered += diff.low <= 0 <= diff.high
    assert low <= covered / studies <= high


def test_interval_covers_a_true_zero_difference_most_of_the_time():
    """Many seeds, so the two-level bootstrap is in its regime: 95% intervals cover 0 in most of 60 studies."""
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(60):
        a, b = {}, {}
        for s in range(8):
            base = rng.normal(20, 3, 80) + rng.normal(0, 0.5)
            a[s], b[s] = frame(base + rng.normal(0, 0.3, 80) + rng.normal(0, 0.05)), frame(base + rng.normal(0, 0.3, 80))
        diff = paired(a, b, "iw_nll", per_token=False)
        covered += diff.low <= 0 <= diff.high
    assert covered >= 52


@pytest.mark.parametrize("low, high, word", [
    (0.01, 0.03, "costs"), (-0.03, -0.01, "buys"), (-0.004, 0.004, "ties"), (-0.02, 0.003, "not resolved"),
])
def test_verdicts(low, high, word):
    assert verdict(Interval((low + high) / 2, low, high, 3, 100), margin=0.005) == word


def test_verdict_for_a_metric_where_higher_is_better():
    assert verdict(Interval(0.1, 0.05, 0.15, 3, 0), margin=0.01, higher_is_worse=False) == "buys"


def test_trend_words():
    up, down, flat = Interval(1, 0.5, 1.5, 3, 0), Interval(-1, -1.5, -0.5, 3, 0), Interval(0, -1, 1, 3, 0)
    assert trend([up, up]) == "rises monotonically"
    assert trend([down, down]) == "falls monotonically"
    assert trend([up, flat]) == "not resolved"
    assert trend([up, down]) == "not monotonic"


def _curve(values, start=100):
    return pd.Series(values, index=range(start, start + 100 * len(values), 100), dtype=float)


def test_a_difference_that_no_longer_moves_has_settled_while_both_runs_still_improve():
    steps = np.arange(10)
    a = {0: _curve(4.0 - 0.02 * steps), 1: _curve(4.1 - 0.02 * steps)}            # both still falling
    wobble = np.array([0] * 7 + [0.004, -0.004, 0.0])
    b = {0: _curve(3.9 - 0.02 * steps), 1: _curve(4.0 - 0.02 * steps + wobble)}
    d = drift(a, b, window=3, tolerance=0.01)
    # the seeds' mean difference over the last 4 points: 0.1, 0.098, 0.102, 0.1; its trend moves 0.0012
    assert d.word == "settled" and d.seeds == 2 and d.move == pytest.approx(0.0012)


def test_noise_about_a_flat_difference_is_not_movement_but_a_trend_is():
    flat = {0: _curve([3.0] * 10)}
    noisy = {0: _curve([5.0] * 6 + [5.0, 5.03, 5.03, 5.0])}   # a range of 0.03, no trend
    assert drift(noisy, flat, window=3, tolerance=0.01).move == pytest.approx(0.0)
    steps = np.arange(10.0)
    early = np.where(steps < 3, 1.0, 0.0)   # a large early gap that has long closed does not count
    a = {0: _curve(4.0 - 0.01 * steps + early)}
    b = {0: _curve(3.9 - 0.01 * steps + np.where(steps >= 6, -0.01 * (steps - 6), 0.0))}
    d = drift(a, b, window=3, tolerance=0.01)
    assert d.word == "still moving" and d.move == pytest.approx(0.03)
    assert drift(a, b, window=3, tolerance=0.031).word == "settled"


def test_a_run_that_stopped_early_is_compared_by_its_final_model():
    a = {0: _curve([5.0, 4.0, 3.0, 2.0, 1.0])}                 # stopped at step 500, on its plateau
    b = {0: _curve([5.0, 4.0, 3.0, 2.0, 1.0, 1.0, 1.0])}       # the same curve, to step 700
    assert drift(a, b, window=3, tolerance=0.01).move == pytest.approx(0.0)
    c = {0: _curve([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.0])}       # still falling after a stopped
    assert drift(a, c, window=3, tolerance=0.01).word == "still moving"
    assert drift(a, b, window=0, tolerance=0.01).word == "not judged"
    assert drift(a, b, window=7, tolerance=0.01).word == "not judged"           # 7 points, not 8
    assert drift(a, {1: b[0]}, window=3, tolerance=0.01).word == "not judged"   # no seed in common
    assert str(drift(a, {1: b[0]}, window=3, tolerance=0.01)) == "n/a"


def test_a_rate_still_trading_against_distortion_is_named_by_its_direction():
    """A bound can plateau while its KL still falls (a cyclical schedule's last β = 1 stretch): the rate's own
    trend over the plateau window says so, with its direction; a level KL with noise has settled."""
    steps = np.arange(10.0)
    falling = {0: _curve(0.7 - 0.01 * steps), 1: _curve(0.8 - 0.01 * steps)}   # 0.01 per 100 steps
    d = level_drift(falling, window=3, tolerance=0.01)
    assert d.word == "still falling" and d.seeds == 2 and d.move == pytest.approx(0.03)
    rising = {0: _curve(0.1 + 0.01 * steps)}
    assert level_drift(rising, window=3, tolerance=0.01).word == "still rising"
    assert level_drift(rising, window=3, tolerance=0.031).word == "settled"
    level = {0: _curve([0.3] * 6 + [0.3, 0.33, 0.33, 0.3])}                 # noise, no trend
    assert level_drift(level, window=3, tolerance=0.01).move == pytest.approx(0.0)
    stopped = {0: _curve([0.5, 0.4, 0.3]), 1: _curve(0.1 * np.ones(10))}   # held at its last value
    assert level_drift(stopped, window=3, tolerance=0.01).word == "settled"
    assert level_drift({0: _curve([0.3, 0.2, 0.1])}, window=3, tolerance=0.01).word == "not judged"


def test_an_interval_over_seeds_stays_within_what_the_quantity_can_take():
    """Two seeds' probe accuracies 0.95 and 0.99: t(1) reaches 1.097, which no accuracy can; the interval is
    clipped to [0, 1], and so is a KL's at 0. The catalogue knows the bounds on every split."""
    from gptvae.catalog import bounds

    iv = over_seeds([0.95, 0.99], bounds("test.probe_z_acc_sentiment"))
    assert iv.estimate == pytest.approx(0.97) and iv.high == 1.0 and iv.low == pytest.approx(0.97 - 0.254, abs=1e-3)
    assert over_seeds([0.01, 0.2], bounds("valid.kl")).low == 0.0
    assert over_seeds([0.01, 0.2]).low < 0                       # unbounded: the plain t interval
    assert bounds("valid_k64_n9611.recon_bleu") == (0.0, 100.0)


def test_over_seeds_is_a_t_interval_and_one_seed_has_none():
    iv = over_seeds([1.0, 2.0, 3.0])
    assert iv.estimate == pytest.approx(2.0)
    assert iv.high - 2.0 == pytest.approx(4.302652729911275 * 1.0 / math.sqrt(3))
    single = over_seeds([1.0])
    assert math.isnan(single.low) and single.format(2) == "1.00"


def synthetic_results(folder, offsets: dict, *, seeds=(0, 1, 2), n=300, ess=50.0):
    """runs.csv and per-sentence files of a made-up kl-floor study: setting value -> offset in nats per
    sentence against the LM (None is the LM), with a shared seed effect and sentence difficulty."""
    from gptvae.files import atomic_write_csv

    rng = np.random.default_rng(0)
    difficulty = rng.normal(30, 6, n)
    tokens = rng.integers(3, 20, n)
    rows = []
    for seed in seeds:
        seed_effect = rng.normal(0, 0.5)
        for value, offset in offsets.items():
            run_id = f"run-{value}-{seed}"
            iw = difficulty + seed_effect + offset + rng.normal(0, 0.05, n)
            atomic_write_csv(folder / "sentences" / f"{run_id}.valid.csv", pd.DataFrame({
                "row": np.arange(n), "sentence": np.arange(n), "tokens": tokens, "rec": iw + 1, "kl": np.full(n, 1.0),
                "iw_nll": iw, "lm_nll": iw + 0.5, "iw_ess": np.full(n, ess), "neg_elbo": iw + 2}))
            rows.append({"experiment": "ablation-kl-floor", "kind": "lm" if value is None else "vae",
                         "value": np.nan if value is None else value, "setting": "" if value is None else str(value),
                         "seed": seed, "run_id": run_id, "valid.iw_ess_median": ess, "valid.iw_samples": 64,
                         "train.converged": 1.0})
    atomic_write_csv(folder / "runs.csv", pd.DataFrame(rows))
    return pd.read_csv(folder / "runs.csv", keep_default_na=False, na_values=[""])


def test_the_comparison_table_words_follow_the_data(tmp_path):
    """The same table, with an effect and with it reversed: the words follow the intervals."""
    from gptvae.report import comparison_table
    from gptvae.sweep import load_spec

    spec = load_spec(__import__("pathlib").Path(__file__).parents[1] / "experiments" / "kl_floor.toml")
    costs = comparison_table(synthetic_results(tmp_path / "a", {0.0: 0.0, 1.0: 3.0, None: 0.0}), spec, tmp_path / "a")
    buys = comparison_table(synthetic_results(tmp_path / "b", {0.0: 0.0, 1.0: -3.0, None: 0.0}), spec, tmp_path / "b")
    row = lambda table, label: next(line for line in table.splitlines() if line.startswith(f"| {label} "))  # noqa: E731
    assert "costs" in row(costs, "λ = 1") and "buys" in row(buys, "λ = 1")
    assert "ties" in row(costs, "λ = 0")   # the reference against the LM: the same model up to noise
    unestimable = comparison_table(synthetic_results(tmp_path / "c", {0.0: 0.0, None: 0.0}, ess=1.2), spec,
                                   tmp_path / "c")
    assert "n/a: ESS 1.2 of 64" in row(unestimable, "λ = 0")


def test_a_spec_sets_the_margin_its_words_use(tmp_path):
    """One difference of about 0.005 nats/token with a tight interval: it ties within yelp's +-0.01 and costs
    within +-0.001, the margin of a task whose entropy is a tenth of yelp's (the synthetic one's spec sets it).
    Table, figure frame and the table's note all follow the spec's margin."""
    from dataclasses import replace

    from gptvae.report import comparison_table, differences
    from gptvae.sweep import MARGIN, load_spec

    root = __import__("pathlib").Path(__file__).parents[1] / "experiments"
    spec = load_spec(root / "kl_floor.toml")
    assert spec.margin == MARGIN == 0.01 and load_spec(root / "kappa.toml").margin == 0.001
    runs = synthetic_results(tmp_path, {0.0: 0.0, 0.1: 0.05, None: 0.0})
    word = lambda s: differences(runs, s, tmp_path).set_index(["value", "against"]).loc[(0.1, "λ = 0"), "word"]  # noqa: E731
    assert word(spec) == "ties" and word(replace(spec, margin=0.001)) == "costs"
    table = comparison_table(runs, replace(spec, margin=0.001), tmp_path)
    assert "costs" in next(line for line in table.splitlines() if line.startswith("| λ = 0.1 "))
    assert "lies within ±0.001 nats/token" in table


def test_the_papers_words_come_from_the_intervals_and_constants_from_the_configs(tmp_path):
    """A sentence of the paper rendered from two made-up studies, the second with the effect reversed."""
    import jinja2

    from gptvae.report import PaperContext
    from gptvae.results import FILES

    template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(
        "A floor of 1 {{ compare('ablation-kl-floor', 1.0).word }} likelihood "
        "({{ compare('ablation-kl-floor', 1.0) }} nats/token); against the LM, λ = 0 "
        "{{ compare('ablation-kl-floor', 0.0, 'lm').word }} it. K = {{ const('valid.iw_samples') }}.")
    texts = []
    for name, offset in (("up", 3.0), ("down", -3.0)):
        folder = tmp_path / name
        runs = synthetic_results(folder, {0.0: 0.0, 1.0: offset, None: 0.0})
        runs.to_csv(folder / "runs.csv", index=False)
        for other in FILES[1:]:
            pd.DataFrame({"run_id": []}).to_csv(folder / other, index=False)
        where = {"results": folder, "tables": folder, "figures": folder,
                 "experiments": __import__("pathlib").Path(__file__).parents[1] / "experiments"}
        ctx = PaperContext(where, folder)
        texts.append(template.render(compare=ctx.compare, const=ctx.const))
    assert texts[0].startswith("A floor of 1 costs likelihood (+0.2") and "λ = 0 ties it. K = 64." in texts[0]
    assert texts[1].startswith("A floor of 1 buys likelihood (-0.2")


def test_a_sentence_effect_shared_by_all_seeds_is_resampled_as_one():
    """Each sentence helps or hurts B by its own amount, the same in every seed (as it does: all runs read
    the same sentences). Resampling sentences separately per seed would shrink that spread by the number
    of seeds and cover 0 in about half the studies; resampled once for all seeds, intervals cover."""
    rng = np.random.default_rng(4)
    covered = 0
    for _ in range(40):
        effect = rng.normal(0, 1.0, 200)                  # per sentence, shared by the seeds; mean 0 in the population
        b = {s: frame(rng.normal(30, 5, 200)) for s in range(8)}
        a = {s: b[s].assign(iw_nll=b[s].iw_nll + effect + rng.normal(0, 0.05, 200)) for s in b}
        diff = paired(a, b, "iw_nll", per_token=False)
        covered += diff.low <= 0 <= diff.high
    assert covered >= 34


def test_a_table_reads_the_widest_evaluation_all_its_runs_share():
    """Final evaluations on 100 sentences, then `evaluate` on all 300 at the same K. In table x both runs have
    the 300, and both read them; in table y only one has, and both read the 100 they share, so that a number
    measured once per run never mixes sentence sets within a table. A protocol at another K, in fp32 or with
    another seed is never taken for the run's own."""
    from gptvae.results import widest_evaluations

    runs = pd.DataFrame({
        "run_id": ["a", "b", "c", "d", "e"], "experiment": ["x", "y", "y", "x", "y"],
        "valid.n_sequences": [100, 100, None, 100, 100], "valid.iw_samples": [64, 64, None, 64, 64],
        "valid.iw_nll": [3.0, 3.0, None, 3.1, 3.2],
        "valid_k64_n300.n_sequences": [300, None, None, 300, 300], "valid_k64_n300.iw_nll": [2.9, None, None, 2.8, 2.7],
        "valid_k500_n900.n_sequences": [None, 900, None, None, None], "valid_k500_n900.iw_nll": [None, 2.5, None, None, None],
        "valid_k64_n900_fp32.n_sequences": [None, 900, None, None, None],
        "valid_k64_n900_s1.n_sequences": [None, 900, None, None, None],
    })
    wide = widest_evaluations(runs)
    protocol = dict(zip(wide.run_id, wide["valid.protocol"]))
    assert [protocol[r] for r in "adbe"] == ["valid_k64_n300", "valid_k64_n300", "valid", "valid"], protocol
    assert pd.isna(protocol["c"])
    assert list(wide["valid.n_sequences"].fillna(-1)) == [300, 100, -1, 300, 100]
    assert list(wide["valid.iw_nll"].fillna(-1)) == [2.9, 3.0, -1, 2.8, 3.2]
    assert runs["valid.iw_nll"].iloc[0] == 3.0   # the input is left as it was
    alone = widest_evaluations(runs[runs.run_id == "e"])   # a table of one run reads its widest
    assert list(alone["valid.protocol"]) == ["valid_k64_n300"]


def test_the_differences_figure_draws_the_tables_numbers(tmp_path):
    """The paired-differences figure reads the very intervals and words the likelihood table prints, and a
    setting the estimator cannot support keeps its place on the axis, marked n/a, with no number drawn."""
    from gptvae import plots
    from gptvae.report import comparison_table, differences
    from gptvae.sweep import load_spec

    spec = load_spec(__import__("pathlib").Path(__file__).parents[1] / "experiments" / "kl_floor.toml")
    runs = synthetic_results(tmp_path, {0.0: 0.0, 0.1: 0.05, 1.0: 3.0, None: 0.0})
    frame = differences(runs, spec, tmp_path)
    table = comparison_table(runs, spec, tmp_path)
    for row in frame.itertuples():
        line = next(line for line in table.splitlines() if line.startswith(f"| {spec.setting(row.value)} "))
        cell = line.split(" | ")[5 if row.against == "LM baseline" else 4]
        assert cell == f"{row.estimate:+.3f} [{row.low:.3f}, {row.high:.3f}] {row.word}"
    assert set(frame.against) == {"LM baseline", "λ = 0"} and len(frame) == 5   # λ = 0 against itself: none
    assert frame.set_index(["value", "against"]).loc[(1.0, "LM baseline"), "word"] == "costs"
    fig = plots.paired_differences(frame, factor_label=spec.label, margin=0.01)
    # λ = 1's large cost would flatten the small differences on a linear axis: it is drawn beyond the axis's
    # window, its interval printed as the table prints it; the small ones keep a linear axis (no log scale)
    big = frame.set_index(["value", "against"]).loc[(1.0, "LM baseline")]
    ax = fig.axes[0]
    assert ax.get_yscale() == "linear" and max(ax.get_yticks()) < big.low
    assert any(f"{big.estimate:+.3f} [{big.low:.3f}, {big.high:.3f}]" in t.get_text() for t in ax.texts)
    plots.save(fig, "d", tmp_path)
    assert (tmp_path / "d.png").stat().st_size > 10_000
    runs["valid.iw_ess_median"] = runs["valid.iw_ess_median"].astype(float)
    runs.loc[runs.value == 1.0, "valid.iw_ess_median"] = 1.2
    frame = differences(runs, spec, tmp_path).set_index(["value", "against"])
    unsupported = frame.loc[(1.0, "LM baseline")]   # keeps its place on the axis, with no number drawn
    assert unsupported.word == "n/a (ESS)" and pd.isna(unsupported.estimate)
    fig = plots.paired_differences(frame.reset_index(), factor_label=spec.label, margin=0.01)
    assert any(t.get_text() == "n/a (ESS)" for t in fig.axes[0].texts)
    assert 1.0 in fig.axes[0].get_xticks()


def test_the_comparison_table_reads_each_runs_widest_evaluation(tmp_path):
    from gptvae.files import atomic_write_csv
    from gptvae.report import comparison_table
    from gptvae.results import load_results
    from gptvae.sweep import load_spec

    spec = load_spec(__import__("pathlib").Path(__file__).parents[1] / "experiments" / "kl_floor.toml")
    runs = synthetic_results(tmp_path, {0.0: 0.0, 1.0: 3.0, None: 0.0}, n=300)
    for run_id in runs.run_id:   # the final evaluation on the first 100 of the 300, shifted so it is told apart
        whole = pd.read_csv(tmp_path / "sentences" / f"{run_id}.valid.csv")
        atomic_write_csv(tmp_path / "sentences" / f"{run_id}.valid_k64_n300.csv", whole)
        atomic_write_csv(tmp_path / "sentences" / f"{run_id}.valid.csv", whole.head(100).assign(iw_nll=whole.iw_nll + 50))
    runs = runs.assign(**{"valid.n_sequences": 100, "valid_k64_n300.n_sequences": 300,
                          "setting": runs.value.map(lambda v: "" if pd.isna(v) else str(v))})   # as exported: text
    atomic_write_csv(tmp_path / "runs.csv", runs)
    for name in ("history.csv", "units.csv", "posterior_means.csv", "samples.csv"):
        atomic_write_csv(tmp_path / name, pd.DataFrame({"run_id": []}))
    table = comparison_table(load_results(tmp_path)["runs"], spec, tmp_path)
    assert "300 sentences per run" in table, table
    assert "costs" in next(line for line in table.splitlines() if line.startswith("| λ = 1 "))


def test_use_by_length_reads_a_fixed_gain_per_sentence_as_falling_per_token(tmp_path):
    """A latent worth 6 nats to every sentence: per sentence the gain is 6.0 in every length group, per token
    it falls with length, and the table gives no word for either."""
    from gptvae.report import use_by_length_table
    from gptvae.sweep import load_spec

    spec = load_spec(__import__("pathlib").Path(__file__).parents[1] / "experiments" / "kl_floor.toml")
    runs = synthetic_results(tmp_path, {0.1: 0.0, None: 0.0}, n=300)
    for run_id in runs.run_id:
        path = tmp_path / "sentences" / f"{run_id}.valid.csv"
        sentences = pd.read_csv(path)
        sentences.assign(rec=sentences.iw_nll - 6.0).to_csv(path, index=False)
    table = use_by_length_table(runs, spec, tmp_path)
    row = next(line for line in table.splitlines() if line.startswith("| λ = 0.1 "))
    cells = [c.strip() for c in row.strip("|").split("|")][2:]
    assert len(cells) == 3 and all(c.endswith("+6.0 [6.0, 6.0] per sentence") for c in cells)
    per_token = [float(c.split(" ")[0]) for c in cells]
    assert per_token[0] > per_token[1] > per_token[2] > 0
    assert "uses z" not in table and "ignores z" not in table and "LM" not in row


def test_once_per_run_numbers_print_as_what_they_are():
    """AU is a count (a range where seeds differ); an MI within log 2 of log N is a lower bound; the share of
    sentences whose importance weights are degenerate."""
    from gptvae.report import _low_ess_share, count_text, mi_text

    assert count_text(pd.Series([32.0, 32.0, 32.0])) == "32"
    assert count_text(pd.Series([12.0, 30.0, 31.0, np.nan])) == "12–31"
    ceiling = math.log(9611)
    at = pd.DataFrame({"valid.mi": [8.7, 8.66], "valid.mi_ceiling": [ceiling, ceiling]})
    assert mi_text(at, "valid", note="noise 0.08") == "≥ 8.68 (at ceiling; noise 0.08)"
    below = pd.DataFrame({"valid.mi": [4.0, 4.2, 4.1], "valid.mi_ceiling": [ceiling] * 3})
    assert mi_text(below, "valid").startswith("4.10 [") and "≥" not in mi_text(below, "valid")
    seeds = {0: pd.DataFrame({"iw_ess": [1.0, 1.5, 30.0, 64.0]}), 1: pd.DataFrame({"iw_ess": [1.0, 3.0, 30.0, 64.0]})}
    assert _low_ess_share(seeds) == "38%"   # 50% and 25%


def test_uses_z_reads_the_swap_penalty_so_a_loose_bound_cannot_make_use():
    """IW-NLL - Rec over-states the decoder's gain by the bound's looseness: a large gain with a swap penalty
    that does not clear the margin is not resolved, a small gain is *ignores z* whatever the swap penalty's
    spread, and the gain licenses *uses z* only where no swap penalty was measured."""
    def iv(low, high, seeds=3):
        return Interval((low + high) / 2, low, high, seeds, 100)

    big, small, clear, unclear = iv(4.8, 5.4), iv(-0.004, 0.006), iv(0.3, 1.4), iv(-1.4, 4.0)
    assert use(big, unclear, margin=0.01) == "not resolved"
    assert use(big, clear, margin=0.01) == "uses z"
    assert use(big, None, margin=0.01) == "uses z"
    assert use(None, clear, margin=0.01) == "uses z"
    assert use(small, iv(-0.014, 0.028), margin=0.01) == "ignores z"
    assert use(None, iv(-0.002, 0.003), margin=0.01) == "ignores z"
    assert use(iv(-0.03, 0.2), iv(-0.02, 0.5), margin=0.01) == "not resolved"
    assert use(big, iv(0.3, 1.4, seeds=1), margin=0.01) == "no word (1 seed)"
    assert use(None, None, margin=0.01) == "not resolved"


def test_a_metrics_panel_draws_a_far_setting_beyond_its_axis_with_its_numbers():
    """κ = 8 bits at 8.1 nats/token beside a bulk within 0.3 of the LM's 3.46 would flatten the panel: the axis
    stops above the bulk (and the LM's band), the far setting is an arrow in a grey band with its mean and
    interval printed. A panel without such a setting keeps every point on its own scale."""
    from gptvae import plots

    rows = [{"experiment": "ablation-x", "kind": "vae", "value": v, "setting": str(v), "seed": s,
             "valid.iw_nll_per_token": m + 0.01 * s, "valid.kl": k + s}
            for v, m, k in ((0.0, 3.50, 0.0), (1.0, 3.52, 6.0), (8.0, 8.10, 9.0)) for s in range(3)]
    rows += [{"experiment": "ablation-x", "kind": "lm", "value": np.nan, "setting": "", "seed": s,
              "valid.iw_nll_per_token": 3.46} for s in range(3)]
    runs = pd.DataFrame(rows)
    fig = plots.metrics_vs_factor(runs, "ablation-x", factor_label="κ", metrics=["valid.iw_nll_per_token", "valid.kl"])
    likelihood, rate = fig.axes[:2]
    assert likelihood.get_ylim()[1] < 4.0 < 8.1   # the bulk's scale, and the arrow drawn inside it
    assert any(t.get_text() == "8.110 [8.085, 8.135]" for t in likelihood.texts)
    assert max(likelihood.get_yticks()) < likelihood.get_ylim()[1]   # no tick in the grey band
    assert rate.get_ylim()[1] > 9.0 and not rate.texts   # 0, 6 and 9: nothing is far, every point on the axis
    assert "arrow in the grey band" in fig._suptitle.get_text()
