import numpy as np
import pandas as pd
import pytest

from varlib.scaling import compute_frontier, fit_power_law


def test_recovers_a_known_law():
    rng = np.random.default_rng(0)
    n = np.geomspace(0.01, 2.0, 12)  # billions of parameters, as the paper's 12 sizes
    y = (2.0 * n) ** -0.23 * np.exp(rng.normal(0, 0.005, n.size))
    law = fit_power_law(n, y, n_boot=500)
    assert law.alpha == pytest.approx(-0.23, abs=0.01) and law.beta == pytest.approx(2.0, rel=0.1)
    assert law.alpha_ci[0] < -0.23 < law.alpha_ci[1] and law.alpha_ci[1] - law.alpha_ci[0] < 0.02
    assert law.pearson_r < -0.99
    assert np.allclose(law(n), (law.beta * n) ** law.alpha)
    assert "r = -0.99" in law.formula() or "r = -1.00" in law.formula()


def test_noise_widens_the_interval():
    rng = np.random.default_rng(1)
    n = np.geomspace(1, 100, 6)
    clean = fit_power_law(n, n ** -0.5 * np.exp(rng.normal(0, 0.01, 6)), n_boot=300)
    noisy = fit_power_law(n, n ** -0.5 * np.exp(rng.normal(0, 0.3, 6)), n_boot=300)
    assert np.diff(noisy.alpha_ci)[0] > 3 * np.diff(clean.alpha_ci)[0]


@pytest.mark.parametrize("x, y, match", [
    ([1, 2], [1, 2], "at least 3"),
    ([1, 2, -3], [1, 2, 3], "positive"),
    ([1, 2, 3], [1, 2], "one length"),
])
def test_bad_input(x, y, match):
    with pytest.raises(ValueError, match=match):
        fit_power_law(x, y)


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
