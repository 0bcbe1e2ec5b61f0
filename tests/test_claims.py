"""The verdict rules on synthetic numbers whose answer is known."""

import math

import numpy as np
import pytest
import scipy.stats

from varlib import claims
from varlib.claims import Claim, claims_table, compare, mean_se, one_sided_p, summary


def test_mean_and_standard_error():
    assert mean_se([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0 / math.sqrt(3)))
    mean, se = mean_se([4.0])
    assert mean == 4.0 and math.isnan(se)
    with pytest.raises(ValueError):
        mean_se([])


def test_one_sided_welch_and_paired_tests_match_their_definitions():
    a, b = [10.0, 10.5, 9.8], [8.0, 8.4, 8.1]
    t = (np.mean(b) - np.mean(a)) / math.sqrt(np.var(a, ddof=1) / 3 + np.var(b, ddof=1) / 3)
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 3
    dof = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)  # Welch-Satterthwaite
    assert one_sided_p(a, b, "less") == pytest.approx(scipy.stats.t.cdf(t, dof))
    d = np.array(b) - np.array(a)
    t_paired = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    assert one_sided_p(a, b, "less", paired=True) == pytest.approx(scipy.stats.t.cdf(t_paired, 2))
    assert math.isnan(one_sided_p([1.0], [2.0, 3.0], "less"))
    with pytest.raises(ValueError, match="paired"):
        one_sided_p([1.0, 2.0], [1.0, 2.0, 3.0], "less", paired=True)


@pytest.mark.parametrize("after, verdict", [
    ([8.0, 8.2, 7.9], claims.REPRODUCED),  # FID clearly lower
    ([12.0, 12.3, 11.8], claims.REVERSED),  # clearly higher
    ([10.4, 9.6, 10.1], claims.INCONCLUSIVE),  # within the noise
    ([8.0, 8.2], claims.FEW_SEEDS),  # two seeds: shown, not judged
])
def test_compare_gives_the_verdict_the_rule_says(after, verdict):
    c = compare("+AdaLN", "5.22 -> 4.95", [10.0, 10.2, 9.9], after)
    assert c.verdict == verdict
    assert c.ours_mean == pytest.approx(np.mean(after) - 10.033333, abs=1e-5)
    assert c.seeds == min(3, len(after)) and "Welch" in c.test and "p < 0.05" in c.rule


def test_compare_in_the_higher_is_better_direction_and_paired():
    assert compare("IS", "", [5.0, 5.1, 4.9], [6.0, 6.1, 5.9], better="higher").verdict == claims.REPRODUCED
    # same models, different sampling: a small but consistent gain is detected only by the paired test
    before, after = [10.0, 12.0, 14.0], [9.8, 11.7, 13.8]
    assert compare("+CFG", "", before, after).verdict == claims.INCONCLUSIVE
    paired = compare("+CFG", "", before, after, paired=True)
    assert paired.verdict == claims.REPRODUCED and "paired" in paired.test
    assert paired.ours_mean == pytest.approx(-0.2333333) and paired.p_value < 0.05


def test_threshold_and_rising_sequence():
    assert claims.threshold("speed", "~20x", [16.0], 15, "at least 15x").verdict == claims.REPRODUCED
    assert claims.threshold("speed", "~20x", [12.8], 15, "at least 15x").verdict == claims.NOT_REPRODUCED
    rising = claims.rises_at_every_step("PSNR", "qualitative", [12.3, 14.3, 15.8], "rises")
    assert rising.verdict == claims.REPRODUCED and rising.ours_mean == pytest.approx(1.5)
    assert claims.rises_at_every_step("PSNR", "", [12.3, 14.3, 14.3], "").verdict == claims.NOT_REPRODUCED


def test_size_trend_needs_five_sizes_and_three_seeds():
    params = [1e6, 2e6, 5e6, 1e7, 2e7]
    falling = [[12 - i + 0.1 * s for s in range(3)] for i in range(5)]
    trend, ends = claims.size_trend("FID by size", "3.30 -> 1.92", params, falling)
    assert trend.verdict == claims.REPRODUCED and trend.ours_mean == pytest.approx(-1.0)
    assert ends.verdict == claims.REPRODUCED and ends.ours_mean == pytest.approx(-4.0)
    assert claims.size_trend("", "", params[:4], falling[:4])[0].verdict == claims.NOT_REPRODUCED
    assert claims.size_trend("", "", params, [f[:2] for f in falling])[0].verdict == claims.FEW_SEEDS
    rising = [list(reversed(f)) for f in reversed(falling)]
    assert claims.size_trend("", "", params, rising)[0].verdict == claims.REVERSED


@pytest.mark.parametrize("sizes, ci, r, verdict", [
    (6, (-0.06, -0.02), -0.99, claims.REPRODUCED),
    (6, (-0.06, -0.02), -0.93, claims.PARTLY),
    (4, (-0.06, -0.02), -0.99, claims.PARTLY),
    (4, (-0.06, -0.02), -0.93, claims.NOT_REPRODUCED),
    (6, (-0.06, 0.01), -0.99, claims.NOT_REPRODUCED),
])
def test_scaling_law_in_n(sizes, ci, r, verdict):
    assert claims.scaling_in_n("L(N)", "-0.23", sizes, ci, r, seeds=3).verdict == verdict
    assert claims.scaling_in_n("L(N)", "-0.23", sizes, ci, r, seeds=1).verdict == claims.FEW_SEEDS


def test_scaling_law_in_c():
    assert claims.scaling_in_c("L(C)", "-0.13", (-0.06, -0.05), 4, -0.9, 3).verdict == claims.REPRODUCED
    assert claims.scaling_in_c("L(C)", "-0.13", (-0.06, -0.05), 3, -0.99, 3).verdict == claims.NOT_REPRODUCED


def test_table_and_summary():
    rows = [compare(f"row {i}", "", [10.0, 10.1, 9.9], after) for i, after in
            enumerate(([8.0, 8.1, 7.9], [8.0, 8.1, 7.9], [12.0, 12.1, 11.9], [10.0, 10.2, 9.9]))]
    assert summary(rows) == "2 of 4 reproduced, 1 reversed, 1 inconclusive"
    table = claims_table(rows)
    assert list(table.columns) == ["claim", "paper", "ours", "ours_mean", "ours_se", "seeds", "test", "p_value",
                                   "verdict", "rule"]
    assert summary(table) == summary(rows) and table.ours.iloc[0].count("±") == 1
    with pytest.raises(ValueError, match="verdict"):
        Claim("x", "", 0.0, 0.0, 3, "", 0.0, "probably", "")


def test_a_claim_whose_setting_was_not_run_says_so():
    c = claims.not_measured("speed", "~20x", "at least 15x at d16, 16x16, B=64", "no GPU benchmark")
    assert c.verdict == claims.NOT_MEASURED and math.isnan(c.ours_mean) and c.test == "no GPU benchmark"
    assert summary([c]) == "1 of 1 not measured"
