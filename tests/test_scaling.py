"""Scaling-law fits: both forms recover known laws, the bootstrap resamples whole models (never a model's seeds or
frontier points one by one), the data-limit check and the learning-rate check say what the protocol says."""

import itertools

import numpy as np
import pandas as pd
import pytest

from varlib.scaling import (
    OffsetPowerLaw,
    PowerLaw,
    compute_frontier,
    data_limited,
    fit_frontier,
    fit_over_models,
    rate_check,
    seed_means,
)


def runs_of(x, means, spread, seeds=3):
    """One row per run: model i at x[i] with `seeds` seeds scattered around means[i] by +-spread (relative),
    symmetrically, so that the seed mean is means[i] exactly (up to rounding)."""
    offsets = np.linspace(-spread, spread, seeds)
    return pd.DataFrame([{"model": f"m{i}", "seed": s, "N": xi, "L": mi * (1 + offsets[s])}
                         for i, (xi, mi) in enumerate(zip(x, means, strict=True)) for s in range(seeds)])


def test_the_papers_form_recovers_a_known_law():
    rng = np.random.default_rng(0)
    n = np.geomspace(0.01, 2.0, 12)  # billions of parameters, as the paper's 12 sizes
    y = (2.0 * n) ** -0.23 * np.exp(rng.normal(0, 0.005, n.size))
    law = PowerLaw.fit(n, y)
    assert law.alpha == pytest.approx(-0.23, abs=0.01) and law.beta == pytest.approx(2.0, rel=0.1)
    assert law.pearson_r < -0.99 and law.n_points == 12 and np.isnan(law.alpha_ci).all()
    assert np.allclose(law(n), (law.beta * n) ** law.alpha)
    assert law.alpha == pytest.approx(np.polyfit(np.log(n), np.log(y), 1)[0], rel=1e-12)
    assert "r = -0.99" in law.formula() or "r = -1.00" in law.formula()


def test_the_offset_form_recovers_a_known_irreducible_loss():
    rng = np.random.default_rng(0)
    n = np.geomspace(1e-3, 4e-2, 7)  # the study's range of N, in billions
    E, A, alpha = 2.8, 0.06, -0.35
    y = (E + A * n ** alpha) * np.exp(rng.normal(0, 1e-4, n.size))
    law = OffsetPowerLaw.fit(n, y)
    assert law.E == pytest.approx(E, abs=0.02) and law.alpha == pytest.approx(alpha, abs=0.01)
    assert law.A == pytest.approx(A, rel=0.05)
    assert np.allclose(law(n), y, rtol=1e-3)
    assert law.formula().startswith("L = 2.8")
    # where the data has no floor the fit says so (E near 0) and falls back on the plain power law's slope
    pure = OffsetPowerLaw.fit(n, (2.0 * n) ** -0.2)
    assert pure.E == pytest.approx(0, abs=1e-3) and pure.alpha == pytest.approx(-0.2, abs=1e-3)
    # a loss that rises with N is outside the form: no falling term (A = 0, alpha = 0), E the level
    rising = OffsetPowerLaw.fit(n, 3.0 + n)
    assert rising.A == 0 and rising.alpha == 0 and rising.E == pytest.approx(3.0 + n.mean(), abs=0.01)


@pytest.mark.parametrize("law", [PowerLaw, OffsetPowerLaw])
@pytest.mark.parametrize("x, y, match", [
    ([1, 2], [1, 2], "at least"),
    ([1, 2, 2, 2, 2], [1, 2, 2, 2, 2], "distinct"),
    ([1, 2, -3, 4], [1, 2, 3, 4], "positive"),
    ([1, 2, 3, 4], [1, 2, 3], "one length"),
])
def test_bad_input(law, x, y, match):
    with pytest.raises(ValueError, match=match):
        law.fit(x, y)


def test_seed_means_are_one_row_per_model():
    runs = runs_of([1.0, 2.0, 4.0], [3.0, 2.5, 2.0], spread=0.1)
    means = seed_means(runs, "N", "L")
    assert list(means.model) == ["m0", "m1", "m2"] and list(means.seeds) == [3, 3, 3]
    assert means.L.to_numpy() == pytest.approx([3.0, 2.5, 2.0])
    assert means.L_se.iloc[0] == pytest.approx(np.std([2.7, 3.0, 3.3], ddof=1) / np.sqrt(3))
    runs.loc[0, "N"] = 1.5
    with pytest.raises(ValueError, match="m0.*disagree in N"):
        seed_means(runs, "N", "L")


@pytest.mark.parametrize("law", [PowerLaw, OffsetPowerLaw])
def test_the_bootstrap_resamples_models_with_all_their_seeds(law):
    """Seed means exactly on a law, seeds scattered by +-20% around them: every resample of whole models fits the
    same law (an interval of width 0), while resampling the runs one by one, as if each seed were a size of its own,
    gives a wide interval."""
    n = np.geomspace(1e-3, 4e-2, 6)
    means = 2.0 + 0.05 * n ** -0.3 if law is OffsetPowerLaw else (2.0 * n) ** -0.1
    runs = runs_of(n, means, spread=0.2)
    fitted = fit_over_models(runs, "N", "L", law, n_boot=300)
    assert fitted.alpha == pytest.approx(-0.3 if law is OffsetPowerLaw else -0.1, abs=1e-4)
    assert fitted.alpha_ci[1] - fitted.alpha_ci[0] < 1e-4
    assert fitted.alpha_ci[0] <= fitted.alpha + 1e-9 and fitted.alpha - 1e-9 <= fitted.alpha_ci[1]

    rng = np.random.default_rng(0)
    by_run = []
    for _ in range(300):
        pick = runs.iloc[rng.integers(0, len(runs), len(runs))]
        if pick.N.nunique() >= law.min_points:
            by_run.append(law.fit(pick.N, pick.L).alpha)
    lo, hi = np.quantile(by_run, [0.025, 0.975])
    assert hi - lo > 0.02


def test_scattered_seed_means_widen_the_interval():
    rng = np.random.default_rng(1)
    n = np.geomspace(1e-3, 4e-2, 6)
    clean = fit_over_models(runs_of(n, (2 * n) ** -0.1 * np.exp(rng.normal(0, 0.002, 6)), 0.01), "N", "L",
                            n_boot=500)
    noisy = fit_over_models(runs_of(n, (2 * n) ** -0.1 * np.exp(rng.normal(0, 0.05, 6)), 0.01), "N", "L",
                            n_boot=500)
    assert clean.alpha_ci[0] < -0.1 < clean.alpha_ci[1]
    assert np.diff(noisy.alpha_ci)[0] > 5 * np.diff(clean.alpha_ci)[0]
    runs = runs_of(n, (2 * n) ** -0.1 * np.exp(rng.normal(0, 0.05, 6)), 0.01)
    assert fit_over_models(runs, "N", "L", n_boot=200, seed=3) == fit_over_models(runs, "N", "L", n_boot=200, seed=3)
    assert fit_over_models(runs, "N", "L", n_boot=200, seed=4) != fit_over_models(runs, "N", "L", n_boot=200, seed=3)


def test_too_few_models_give_an_unfitted_law():
    runs = runs_of([1.0, 2.0, 4.0], [3.0, 2.5, 2.0], spread=0.1)
    offset = fit_over_models(runs, "N", "L", OffsetPowerLaw)
    assert offset.n_points == 3 and np.isnan([offset.alpha, offset.E, *offset.alpha_ci]).all()
    power = fit_over_models(runs[runs.model != "m2"], "N", "L")
    assert power.n_points == 2 and np.isnan([power.alpha, power.pearson_r, *power.alpha_ci]).all()
    just_enough = fit_over_models(runs, "N", "L")  # three models: every usable resample is the data itself
    assert just_enough.alpha == PowerLaw.fit([1.0, 2.0, 4.0], [3.0, 2.5, 2.0]).alpha
    assert np.isnan(just_enough.alpha_ci).all()


def curve(model, losses, seed=0):
    return pd.DataFrame({"model": model, "seed": seed, "step": np.arange(1, len(losses) + 1) * 100,
                         "test_loss_all": losses})


def test_data_limit_check_on_the_seed_mean_curve():
    curves = pd.concat([
        curve("falling", [4.0, 3.5, 3.2, 3.1]),
        curve("overfits", [4.0, 3.2, 3.0, 3.1]),  # final 3.1 > 1.005 * 3.0
        curve("within", [4.0, 3.2, 3.0, 3.014]),  # final 1.0047 x its minimum: not data-limited
        curve("one seed rises", [4.0, 3.2, 3.0, 3.06], seed=0),
        curve("one seed rises", [4.0, 3.3, 3.1, 3.0], seed=1),  # the mean curve: 3.05, 3.03: within the tolerance
    ])
    limited = data_limited(curves)
    assert limited.to_dict() == {"falling": False, "overfits": True, "within": False, "one seed rises": False}
    shuffled = data_limited(curves.sample(frac=1, random_state=0))  # the order of the rows does not matter
    assert shuffled.sort_index().equals(limited.sort_index())


def test_rate_check_compares_with_the_seeds_standard_error():
    default = [3.0, 3.1, 3.2]  # mean 3.1, standard error 0.0577
    table = rate_check(default, {0.5: 3.08, 2.0: 3.0})
    assert list(table.lr_factor) == [0.5, 2.0] and list(table.beats_default) == [False, True]
    assert table.default_se.iloc[0] == pytest.approx(0.1 / np.sqrt(3))
    assert table.improvement.to_numpy() == pytest.approx([0.02, 0.1])
    assert not rate_check([3.1], {2.0: 2.0}).beats_default.any()  # one seed: no error to beat


def test_frontier_is_the_lower_envelope():
    rows = []
    for model, (scale, speed) in {"small": (1.0, 1.0), "large": (0.6, 4.0)}.items():
        for c in np.geomspace(1, 1000, 30):
            rows.append({"model": model, "flops": c * speed, "loss": scale + 1.0 / np.sqrt(c)})
    curves = pd.DataFrame(rows)
    f = compute_frontier(curves, "loss")
    assert (np.diff(f["loss"]) < 0).all()
    assert f["model"].iloc[0] == "small" and f["model"].iloc[-1] == "large"
    for _, r in f.iterrows():  # no model does better with the same or less compute
        assert curves[curves.flops <= r.flops + 1e-9]["loss"].min() == pytest.approx(r.loss)


def test_frontier_bootstrap_rebuilds_the_frontier_from_whole_models():
    """Three sizes, three seeds each: every resample's frontier is the frontier of a subset of whole sizes, so both
    ends of the interval are alphas of such subsets (seven of them), never of a resample of frontier points."""
    rows = []
    for model, (floor, speed) in {"d2": (1.0, 1.0), "d4": (0.7, 3.0), "d8": (0.5, 9.0)}.items():
        for seed, c in itertools.product(range(3), np.geomspace(1, 1000, 9)):
            rows.append({"model": model, "seed": seed, "flops": c * speed,
                         "loss": floor + 1.0 / np.sqrt(c) + 0.01 * seed})
    curves = pd.DataFrame(rows)
    law, frontier = fit_frontier(curves, "loss", n_boot=401)  # 401: the 2.5% and 97.5% quantiles are draws
    assert frontier.model.nunique() == 3 and law.n_points == len(frontier)
    assert law.alpha == pytest.approx(PowerLaw.fit(frontier.flops, frontier.loss).alpha)
    subsets = [s for k in (1, 2, 3) for s in itertools.combinations(["d2", "d4", "d8"], k)]
    alphas = [PowerLaw.fit(*compute_frontier(curves[curves.model.isin(s)], "loss")[["flops", "loss"]].T.to_numpy())
              .alpha for s in subsets]
    for end in law.alpha_ci:
        assert min(abs(end - a) for a in alphas) < 1e-9
