"""Scaling-law fits (paper Sec. 5, Figs. 5 and 6), by the claims protocol's rules.

The paper writes its laws as L = (beta * x)^alpha, x the parameters N (in billions) or the training compute C: a line
in log-log space, fitted by least squares, with Pearson's r of the log-log points (`PowerLaw`). Beside it the form
with an irreducible loss, L = E + A * x^alpha (Hoffmann et al. 2022, `OffsetPowerLaw`), fitted by bounded least
squares of relative residuals.

A law in N is fitted to the seed means of the model sizes, and alpha's 95% interval comes from a bootstrap over
models: a resample draws sizes with replacement, each bringing all its seeds (hence its seed mean), never single runs
or points; the runs of one size share everything but the seed. The law in C is fitted to the compute-optimal
frontier over every run's checkpoints, and its bootstrap rebuilds the frontier from the resampled sizes' checkpoints:
neighbouring frontier points lie on one model's learning curve and are not independent measurements, so resampling
them one by one would understate the interval.

A size whose final test loss (all scales) exceeds DATA_LIMIT times its minimum over the run has begun to fit its
training images rather than the distribution: it is data-limited (`data_limited`), shown, marked and left out of the
law in N. The paper's own fits are in `varlib.paper.SCALING_LAWS`; the verdicts in `varlib.claims`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import scipy.optimize

from .claims import mean_se

log = logging.getLogger(__name__)

DATA_LIMIT = 1.005  # the claims protocol: final test loss above 1.005 x its minimum over the run = data-limited
CI = 0.95
N_BOOT = 2000
NO_CI = (float("nan"), float("nan"))


def _points(x, y, min_points: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y as float arrays, checked: one length, positive (the fits live in log space), enough distinct x."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D arrays of one length, got {x.shape} and {y.shape}")
    if np.unique(x).size < min_points:
        raise ValueError(f"this law needs at least {min_points} distinct x values, got {np.unique(x).size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()) or (x <= 0).any() or (y <= 0).any():
        raise ValueError("power laws are fitted in log space: every x and y must be finite and positive")
    return x, y


def _interval(alphas: Sequence[float], ci: float) -> tuple[float, float]:
    if not len(alphas):
        return NO_CI
    lo, hi = np.quantile(alphas, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return float(lo), float(hi)


@dataclass(frozen=True)
class PowerLaw:
    """y = (beta * x)^alpha, the paper's form, fitted in log-log space; `alpha_ci` from `fit_over_models` or
    `fit_frontier` (NaN until then)."""

    alpha: float
    beta: float
    pearson_r: float
    n_points: int
    alpha_ci: tuple[float, float] = NO_CI
    min_points: ClassVar[int] = 3  # two parameters and one degree of freedom left

    @classmethod
    def fit(cls, x, y) -> PowerLaw:
        """Least squares of log y = alpha log x + alpha log beta."""
        return cls._fit(*_points(x, y, cls.min_points))

    @classmethod
    def _fit(cls, x: np.ndarray, y: np.ndarray) -> PowerLaw:
        logx, logy = np.log(x), np.log(y)
        dx, dy = logx - logx.mean(), logy - logy.mean()
        alpha = float(dx @ dy / (dx @ dx))
        intercept = float(logy.mean() - alpha * logx.mean())
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # a flat law: no finite beta, no r
            beta, r = np.exp(np.divide(intercept, alpha)), np.divide(dx @ dy, np.sqrt((dx @ dx) * (dy @ dy)))
        return cls(alpha=alpha, beta=float(beta), pearson_r=float(r), n_points=len(x))

    @classmethod
    def unfitted(cls, n_points: int) -> PowerLaw:
        """The law of too few points: every number NaN, so the tables and verdicts still have a row."""
        return cls(alpha=float("nan"), beta=float("nan"), pearson_r=float("nan"), n_points=n_points)

    def __call__(self, x) -> np.ndarray:
        return (self.beta * np.asarray(x, dtype=float)) ** self.alpha

    def formula(self, x_name: str = "N", y_name: str = "L") -> str:
        lo, hi = self.alpha_ci
        return (f"{y_name} = ({self.beta:.3g}·{x_name})^{self.alpha:.4f}  "
                f"[95% CI {lo:.4f}, {hi:.4f}; r = {self.pearson_r:.3f}]")


@dataclass(frozen=True)
class OffsetPowerLaw:
    """y = E + A * x^alpha: a power law above an irreducible loss E (Hoffmann et al. 2022, eq. 2 in one variable)."""

    E: float
    A: float
    alpha: float
    n_points: int
    alpha_ci: tuple[float, float] = NO_CI
    min_points: ClassVar[int] = 4  # three parameters and one degree of freedom left
    ALPHA_BOUNDS: ClassVar[tuple[float, float]] = (-5.0, 0.0)  # a loss that falls with x, no faster than x^-5

    @classmethod
    def fit(cls, x, y) -> OffsetPowerLaw:
        """Least squares of the relative residuals (E + A x^alpha) / y - 1 with E >= 0, A >= 0 and alpha in
        ALPHA_BOUNDS. For a given alpha the law is linear in (E, A), solved by non-negative least squares; alpha is
        found on a grid, then refined by Brent's method between the grid's neighbours of the best (variable
        projection: one parameter searched instead of three)."""
        return cls._fit(*_points(x, y, cls.min_points))

    @classmethod
    def _fit(cls, x: np.ndarray, y: np.ndarray) -> OffsetPowerLaw:
        u = x / np.exp(np.log(x).mean())  # x in units of its geometric mean, so that u^alpha stays near 1
        ones = np.ones_like(y)

        def linear(alpha: float) -> tuple[np.ndarray, float]:
            return scipy.optimize.nnls(np.stack([ones, u ** alpha], 1) / y[:, None], ones)

        grid = np.linspace(*cls.ALPHA_BOUNDS, 41)
        best = int(np.argmin([linear(a)[1] for a in grid]))
        lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
        alpha = float(scipy.optimize.minimize_scalar(lambda a: linear(a)[1], bounds=(lo, hi), method="bounded",
                                                     options={"xatol": 1e-6}).x)
        (E, A_u), _ = linear(alpha)
        if A_u == 0:  # no fall at all (a flat or rising loss): the exponent of a vanished term is 0, not the grid's
            alpha = 0.0
        return cls(E=float(E), A=float(A_u * np.exp(np.log(x).mean()) ** -alpha), alpha=alpha, n_points=len(x))

    @classmethod
    def unfitted(cls, n_points: int) -> OffsetPowerLaw:
        return cls(E=float("nan"), A=float("nan"), alpha=float("nan"), n_points=n_points)

    def __call__(self, x) -> np.ndarray:
        return self.E + self.A * np.asarray(x, dtype=float) ** self.alpha

    def formula(self, x_name: str = "N", y_name: str = "L") -> str:
        lo, hi = self.alpha_ci
        return f"{y_name} = {self.E:.3g} + {self.A:.3g}·{x_name}^{self.alpha:.4f}  [95% CI {lo:.4f}, {hi:.4f}]"


Law = PowerLaw | OffsetPowerLaw


# ----------------------------------------------------------------------------------------------- the law in N

def seed_means(runs: pd.DataFrame, x: str, y: str, model: str = "model") -> pd.DataFrame:
    """One row per model of `runs` (one row per trained run): its `x`, the mean and standard error of `y` over its
    seeds (`y`, `y`_se) and the number of seeds. ValueError when a model's runs disagree in `x`."""
    rows = []
    for name, g in runs.groupby(model, sort=False):
        if g[x].nunique() != 1:
            raise ValueError(f"the runs of model {name!r} disagree in {x}: {sorted(g[x].unique())}")
        mean, se = mean_se(g[y])
        rows.append({model: name, x: g[x].iloc[0], y: mean, f"{y}_se": se, "seeds": len(g)})
    return pd.DataFrame(rows, columns=[model, x, y, f"{y}_se", "seeds"])


def fit_over_models(runs: pd.DataFrame, x: str, y: str, law: type[Law] = PowerLaw, model: str = "model",
                    n_boot: int = N_BOOT, seed: int = 0, ci: float = CI) -> Law:
    """`law` fitted to the seed means of `runs` (one row per trained run: its `model`, `x` and `y`), with alpha's
    `ci` interval from the model-level bootstrap: each resample draws models with replacement, each with the mean
    of all its seeds. Fewer models than the law needs: the unfitted law (NaNs, logged); exactly as many: the fit
    without an interval (NaN), since no resample with enough distinct models differs from the data."""
    means = seed_means(runs, x, y, model)
    if len(means) < law.min_points:
        log.warning("%s of %s in %s: %d models, the law needs %d; not fitted", law.__name__, y, x, len(means),
                    law.min_points)
        return law.unfitted(len(means))
    x_M, y_M = means[x].to_numpy(float), means[y].to_numpy(float)
    fitted = law.fit(x_M, y_M)
    if len(means) == law.min_points:  # every resample that determines the law is the data itself: no interval
        log.warning("%s of %s in %s: %d models, as few as the law needs; no bootstrap interval", law.__name__, y, x,
                    len(means))
        return fitted
    rng = np.random.default_rng(seed)
    alphas = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(x_M), len(x_M))
        if np.unique(pick).size >= law.min_points:  # fewer distinct models determine no law of this form
            alphas.append(law._fit(x_M[pick], y_M[pick]).alpha)
    return dataclasses.replace(fitted, alpha_ci=_interval(alphas, ci))


def data_limited(curves: pd.DataFrame, metric: str = "test_loss_all", model: str = "model", step: str = "step",
                 tolerance: float = DATA_LIMIT) -> pd.Series:
    """Per model (the index): True when the final `metric` of its seed-mean learning curve (`curves`: one row per
    evaluation of one run) exceeds `tolerance` times the curve's minimum, i.e. the model got worse on the test split
    before training ended."""
    curve = curves.groupby([model, step], sort=False)[metric].mean()
    limited = {name: bool(g.sort_index(level=step).iloc[-1] > tolerance * g.min())
               for name, g in curve.groupby(level=model, sort=False)}
    return pd.Series(limited, name="data_limited", dtype=bool)


def rate_check(default: Sequence[float], by_factor: dict[float, float]) -> pd.DataFrame:
    """The learning-rate check of one size: the final loss of each other rate (`by_factor`: multiple of the default
    rate -> loss of its one run) against the default's seeds. `beats_default` when it is lower than the default's
    seed mean by more than the seeds' standard error (never with fewer than two seeds: there is no error then)."""
    mean, se = mean_se(default)
    rows = [{"lr_factor": f, "loss": loss, "default_mean": mean, "default_se": se, "seeds": len(default),
             "improvement": mean - loss, "beats_default": bool(mean - loss > se)} for f, loss in by_factor.items()]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------- the law in C

def _frontier(compute: np.ndarray, value: np.ndarray, n_grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Budgets on a log grid and, for each, the index of the checkpoint with the lowest value among those that used
    no more compute (the first to reach it); only budgets where that value falls are kept."""
    order = np.argsort(compute, kind="stable")
    compute, value = compute[order], value[order]
    improves = value < np.minimum.accumulate(np.concatenate([[np.inf], value[:-1]]))
    best = np.maximum.accumulate(np.where(improves, np.arange(len(value)), 0))
    grid = np.geomspace(compute[0], compute[-1], n_grid)
    at = best[np.clip(np.searchsorted(compute, grid, side="right") - 1, 0, None)]
    falls = np.diff(value[at], prepend=np.inf) < 0  # a flat stretch says nothing about the law's slope
    return grid[falls], order[at[falls]]


def compute_frontier(curves: pd.DataFrame, metric: str, compute: str = "flops", n_grid: int = 40,
                     model: str = "model") -> pd.DataFrame:
    """The compute-optimal frontier: at each compute budget, the lowest `metric` any run reached with that compute.

    `curves` has one row per evaluation of one run (columns `model`, `compute`, `metric`). The budgets lie on a
    log-spaced grid between the smallest and largest compute seen; the frontier keeps those where it improves, and
    names the model that attains each.
    """
    c = curves[[compute, metric, model]].dropna()
    c = c[c[compute] > 0]
    budgets, rows = _frontier(c[compute].to_numpy(float), c[metric].to_numpy(float), n_grid)
    return pd.DataFrame({compute: budgets, metric: c[metric].to_numpy(float)[rows],
                         model: c[model].to_numpy()[rows]})


def fit_frontier(curves: pd.DataFrame, metric: str, compute: str = "flops", law: type[Law] = PowerLaw,
                 model: str = "model", n_boot: int = N_BOOT, seed: int = 0, ci: float = CI,
                 n_grid: int = 40) -> tuple[Law, pd.DataFrame]:
    """`law` of `metric` in `compute` fitted to the frontier of every run's checkpoints (`compute_frontier`), and
    the frontier. alpha's interval: each resample draws models with replacement, each with all its runs'
    checkpoints, and rebuilds the frontier from them before fitting."""
    frontier = compute_frontier(curves, metric, compute, n_grid, model)
    if len(frontier) < law.min_points:
        log.warning("%s of %s in %s: %d frontier points, the law needs %d; not fitted", law.__name__, metric,
                    compute, len(frontier), law.min_points)
        return law.unfitted(len(frontier)), frontier
    fitted = law.fit(frontier[compute], frontier[metric])
    c = curves[[compute, metric, model]].dropna()
    c = c[c[compute] > 0]
    names = c[model].unique()
    model_R = pd.Categorical(c[model], categories=names).codes
    compute_R, value_R = c[compute].to_numpy(float), c[metric].to_numpy(float)
    rng = np.random.default_rng(seed)
    alphas = []
    for _ in range(n_boot):
        chosen = np.zeros(len(names), dtype=bool)
        chosen[rng.integers(0, len(names), len(names))] = True  # a model drawn twice adds nothing to a minimum
        drawn = chosen[model_R]
        budgets, rows = _frontier(compute_R[drawn], value_R[drawn], n_grid)
        if len(budgets) >= law.min_points:
            alphas.append(law._fit(budgets, value_R[drawn][rows]).alpha)
    return dataclasses.replace(fitted, alpha_ci=_interval(alphas, ci)), frontier
