"""The study's verdict rules, fixed before the runs (the claims protocol), and the claims table every notebook writes.

A claim compares what this study measured with what the paper reports and gets one verdict by a stated rule:

  reproduced        the paper's direction, by the rule's test (one-sided p < ALPHA for comparisons)
  reversed          the opposite direction, by the opposite one-sided test (p < ALPHA)
  inconclusive      neither test reaches ALPHA
  partly            only for rules that say so (the scaling law in N)
  not reproduced    a rule's criterion fails outright (a threshold, a hard condition)
  not enough seeds  a comparison between trained models with fewer than MIN_SEEDS seeds a side: the numbers are
                    shown, no verdict is drawn (smoke and quick runs)
  not measured      the rule's setting was not run here (e.g. a GPU-only measurement on a CPU run)

Comparisons between trained models use one value per training seed: a one-sided Welch t-test, or a paired t-test
where both rows use the same trained models and differ only in sampling (`paired=True`). Every claim row carries
the paper's value, ours as mean ± standard error over seeds, the number of seeds, the test, its p-value, the verdict
and the rule's text, and `claims_table` turns a list of them into the `claims.csv` of a notebook.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import scipy.stats

ALPHA = 0.05
MIN_SEEDS = 3

REPRODUCED, REVERSED, INCONCLUSIVE = "reproduced", "reversed", "inconclusive"
PARTLY, NOT_REPRODUCED, FEW_SEEDS = "partly", "not reproduced", "not enough seeds"
NOT_MEASURED = "not measured"
VERDICTS = (REPRODUCED, REVERSED, INCONCLUSIVE, PARTLY, NOT_REPRODUCED, FEW_SEEDS, NOT_MEASURED)


@dataclass(frozen=True)
class Claim:
    """One row of a claims table."""

    claim: str
    paper: str  # the paper's value as it reports it (text: "18.65 -> 5.22", "~20x", "qualitative")
    ours_mean: float
    ours_se: float  # standard error over seeds; nan for one measurement
    seeds: int
    test: str
    p_value: float  # nan where the rule has no test
    verdict: str
    rule: str

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r}: must be one of {VERDICTS}")

    @property
    def ours(self) -> str:
        """ours as "mean ± se" (just the mean for a single measurement)."""
        if math.isnan(self.ours_se):
            return f"{self.ours_mean:.4g}"
        return f"{self.ours_mean:.4g} ± {self.ours_se:.2g}"


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std / sqrt(n)); the error is nan for fewer than two values."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("mean_se of no values")
    if x.size < 2:
        return float(x.mean()), float("nan")
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))


def one_sided_p(a: Sequence[float], b: Sequence[float], alternative: str, paired: bool = False) -> float:
    """p-value of the one-sided test that mean(b) is `alternative` ("less" | "greater") than mean(a): Welch's
    unequal-variance t-test, or the paired t-test on b - a (same models, different sampling). nan when a side has
    fewer than two values, or when there is no variation at all."""
    if alternative not in ("less", "greater"):
        raise ValueError(f"alternative {alternative!r}: 'less' or 'greater'")
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if paired and a.shape != b.shape:
        raise ValueError(f"a paired test needs one value per model on both sides, got {a.size} and {b.size}")
    if min(a.size, b.size) < 2:
        return float("nan")
    if paired:
        result = scipy.stats.ttest_rel(b, a, alternative=alternative)
    else:
        result = scipy.stats.ttest_ind(b, a, equal_var=False, alternative=alternative)
    return float(result.pvalue)


def compare(claim: str, paper: str, before: Sequence[float], after: Sequence[float], better: str = "lower",
            paired: bool = False, rule: str | None = None) -> Claim:
    """The claim that `after` improves on `before` in the paper's direction (`better`: "lower" for FID and losses,
    "higher" for IS or accuracy). Ours is the change after - before (mean ± se; paired: of the per-model
    differences). Reproduced when the one-sided test in the paper's direction gives p < ALPHA, reversed when the
    opposite one does, inconclusive otherwise; not enough seeds below MIN_SEEDS a side."""
    if better not in ("lower", "higher"):
        raise ValueError(f"better {better!r}: 'lower' or 'higher'")
    a, b = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    forward, backward = ("less", "greater") if better == "lower" else ("greater", "less")
    p_forward = one_sided_p(a, b, forward, paired)
    p_backward = one_sided_p(a, b, backward, paired)
    if paired:
        change, change_se = mean_se(b - a)
    else:
        (ma, sa), (mb, sb) = mean_se(a), mean_se(b)
        change, change_se = mb - ma, math.hypot(sa, sb)
    seeds = int(min(a.size, b.size))
    test = f"one-sided {'paired' if paired else 'Welch'} t-test, {better} is better"
    if seeds < MIN_SEEDS:
        verdict = FEW_SEEDS
    elif p_forward < ALPHA:
        verdict = REPRODUCED
    elif p_backward < ALPHA:
        verdict = REVERSED
    else:
        verdict = INCONCLUSIVE
    rule = rule or (f"{REPRODUCED} when the {test.split(',')[0]} over {MIN_SEEDS}+ seeds gives p < {ALPHA} in the "
                    f"paper's direction ({better} after), {REVERSED} when the opposite test does, else {INCONCLUSIVE}")
    return Claim(claim, paper, change, change_se, seeds, test, p_forward, verdict, rule)


def threshold(claim: str, paper: str, values: Sequence[float], at_least: float, rule: str) -> Claim:
    """A measured quantity against a fixed bar (e.g. a speed-up of at least 15x): reproduced when its mean reaches
    `at_least`, not reproduced otherwise (a timing, not a comparison between trained models: no seeds needed)."""
    mean, se = mean_se(values)
    verdict = REPRODUCED if mean >= at_least else NOT_REPRODUCED
    return Claim(claim, paper, mean, se, len(values), f"mean >= {at_least:g}", float("nan"), verdict, rule)


def not_measured(claim: str, paper: str, rule: str, why: str) -> Claim:
    """A claim whose rule's setting was not run here: shown with its rule, no number, no verdict."""
    return Claim(claim, paper, float("nan"), float("nan"), 0, why, float("nan"), NOT_MEASURED, rule)


def rises_at_every_step(claim: str, paper: str, values: Sequence[float], rule: str) -> Claim:
    """A sequence that must rise at every step (PSNR with every added scale of one tokenizer): reproduced when it
    does, not reproduced otherwise; ours is the smallest rise."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        raise ValueError(f"{claim}: a rising sequence needs at least two values, got {x.size}")
    steps = np.diff(x)
    verdict = REPRODUCED if (steps > 0).all() else NOT_REPRODUCED
    return Claim(claim, paper, float(steps.min()), float("nan"), 1, "every step > 0", float("nan"), verdict, rule)


def size_trend(claim: str, paper: str, params: Sequence[float], fid_by_seed: Sequence[Sequence[float]],
               min_sizes: int = 5) -> list[Claim]:
    """FID falls with model size (Table 1): Spearman's rho between parameters and the seed-mean FID over at least
    `min_sizes` sizes (reproduced when rho < 0 with one-sided p < ALPHA), and the largest size against the smallest
    by `compare`. `fid_by_seed[i]` holds one FID per seed of size i."""
    means = [mean_se(f)[0] for f in fid_by_seed]
    n_sizes, seeds = len(means), min(len(f) for f in fid_by_seed)
    rho, p = scipy.stats.spearmanr(params, means, alternative="less") if n_sizes >= 3 else (float("nan"),) * 2
    rule = (f"{REPRODUCED} when Spearman's rho between parameters and the seed-mean FID over >= {min_sizes} sizes "
            f"is negative with one-sided p < {ALPHA}; {REVERSED} when positive with p < {ALPHA}")
    if seeds < MIN_SEEDS:
        verdict = FEW_SEEDS
    elif n_sizes < min_sizes:
        verdict = NOT_REPRODUCED
    elif p < ALPHA:
        verdict = REPRODUCED
    elif scipy.stats.spearmanr(params, means, alternative="greater")[1] < ALPHA:
        verdict = REVERSED
    else:
        verdict = INCONCLUSIVE
    order = np.argsort(params)
    trend = Claim(f"{claim}: Spearman rho(params, FID)", paper, float(rho), float("nan"), seeds,
                  "one-sided Spearman rank correlation", float(p), verdict, rule)
    ends = compare(f"{claim}: largest against smallest", paper, fid_by_seed[order[0]], fid_by_seed[order[-1]])
    return [trend, ends]


def scaling_in_n(claim: str, paper: str, sizes_passing: int, alpha_ci: tuple[float, float], pearson_r: float,
                 seeds: int) -> Claim:
    """Sec. 5's law in N: reproduced when at least 5 sizes pass the data-limit check, alpha's 95% interval excludes
    0 and r <= -0.98 on the log-log seed means; partly when the interval excludes 0 but one of the other two fails;
    not reproduced otherwise."""
    excludes_zero = alpha_ci[0] > 0 or alpha_ci[1] < 0
    others = [sizes_passing >= 5, pearson_r <= -0.98]
    if seeds < MIN_SEEDS:
        verdict = FEW_SEEDS
    elif excludes_zero and all(others):
        verdict = REPRODUCED
    elif excludes_zero and sum(others) == 1:
        verdict = PARTLY
    else:
        verdict = NOT_REPRODUCED
    rule = (f"{REPRODUCED} when >= 5 sizes pass the data-limit check, alpha's 95% interval excludes 0 and r <= -0.98 "
            f"on the log-log seed means; {PARTLY} when the interval excludes 0 but one of the other two fails")
    return Claim(claim, paper, float(pearson_r), float("nan"), seeds,
                 f"model-level bootstrap: alpha in [{alpha_ci[0]:.3g}, {alpha_ci[1]:.3g}], {sizes_passing} sizes",
                 float("nan"), verdict, rule)


def scaling_in_c(claim: str, paper: str, alpha_ci: tuple[float, float], frontier_sizes: int, pearson_r: float,
                 seeds: int) -> Claim:
    """Sec. 5's law in C: reproduced when alpha's 95% interval excludes 0 and the compute frontier holds points of
    at least 4 sizes (r is reported, not used)."""
    excludes_zero = alpha_ci[0] > 0 or alpha_ci[1] < 0
    if seeds < MIN_SEEDS:
        verdict = FEW_SEEDS
    else:
        verdict = REPRODUCED if excludes_zero and frontier_sizes >= 4 else NOT_REPRODUCED
    rule = (f"{REPRODUCED} when alpha's 95% interval (model-level bootstrap) excludes 0 and the frontier holds "
            f"points of >= 4 sizes; r is reported, not used")
    return Claim(claim, paper, float(pearson_r), float("nan"), seeds,
                 f"model-level bootstrap: alpha in [{alpha_ci[0]:.3g}, {alpha_ci[1]:.3g}], {frontier_sizes} sizes on "
                 f"the frontier", float("nan"), verdict, rule)


def claims_table(claims: Sequence[Claim]) -> pd.DataFrame:
    """The claims.csv of a notebook: one row per claim, with `ours` formatted as mean ± se."""
    rows = [{**asdict(c), "ours": c.ours} for c in claims]
    columns = ["claim", "paper", "ours", "ours_mean", "ours_se", "seeds", "test", "p_value", "verdict", "rule"]
    return pd.DataFrame(rows, columns=columns)


def summary(claims: Sequence[Claim] | pd.DataFrame) -> str:
    """The verdict counts in a fixed order, e.g. "2 of 6 reproduced, 1 reversed, 3 inconclusive"."""
    verdicts = list(claims["verdict"]) if isinstance(claims, pd.DataFrame) else [c.verdict for c in claims]
    counts = [f"{verdicts.count(v)} {v}" for v in VERDICTS if verdicts.count(v)]
    if not counts:
        return "no claims"
    first, *rest = counts
    n, word = first.split(" ", 1)
    return ", ".join([f"{n} of {len(verdicts)} {word}", *rest])
