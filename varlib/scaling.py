"""Power-law fits for the scaling-law study (paper Sec. 5, Figs. 5 and 6).

The paper writes its laws as y = (beta * x)^alpha (x = parameters N in billions, or training compute C). In log-log
space that is a line, log y = alpha * log x + alpha * log beta, fitted here by least squares, with a bootstrap over
the points for confidence intervals and Pearson's r of the log-log data. The paper's own fits are in
`varlib.paper.SCALING_LAWS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class PowerLaw:
    """y = (beta * x)^alpha, fitted in log-log space."""

    alpha: float
    beta: float
    alpha_ci: tuple[float, float]
    pearson_r: float
    n_points: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (self.beta * np.asarray(x, dtype=float)) ** self.alpha

    def formula(self, x_name: str = "N", y_name: str = "L") -> str:
        lo, hi = self.alpha_ci
        return (f"{y_name} = ({self.beta:.3g}·{x_name})^{self.alpha:.4f}  "
                f"[95% CI {lo:.4f}, {hi:.4f}; r = {self.pearson_r:.3f}]")


def _line(logx: np.ndarray, logy: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(logx, logy, 1)
    return float(slope), float(intercept)


def fit_power_law(x, y, n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> PowerLaw:
    """Least-squares fit of log y = alpha log x + alpha log beta, with a bootstrap interval for alpha."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D arrays of one length, got {x.shape} and {y.shape}")
    if len(x) < 3:
        raise ValueError(f"a power-law fit needs at least 3 points, got {len(x)}")
    if (x <= 0).any() or (y <= 0).any():
        raise ValueError("power laws are fitted in log space: every x and y must be positive")
    logx, logy = np.log(x), np.log(y)
    alpha, intercept = _line(logx, logy)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(x), len(x))
        if np.unique(logx[idx]).size < 2:  # a resample of one repeated point has no slope
            continue
        boots.append(_line(logx[idx], logy[idx])[0])
    lo, hi = np.quantile(boots, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    r = float(np.corrcoef(logx, logy)[0, 1])
    return PowerLaw(alpha=alpha, beta=float(np.exp(intercept / alpha)), alpha_ci=(float(lo), float(hi)),
                    pearson_r=r, n_points=len(x))


def compute_frontier(curves: pd.DataFrame, metric: str, compute: str = "flops", n_grid: int = 40) -> pd.DataFrame:
    """The compute-optimal frontier: at each compute budget, the lowest `metric` any model reached with that compute.

    `curves` has one row per evaluation of one model (columns: model, `compute`, `metric`). The frontier is taken on a
    log-spaced grid of budgets between the smallest and largest compute seen, and reports which model attains it.
    """
    c = curves[[compute, metric, "model"]].dropna()
    c = c[c[compute] > 0]
    grid = np.geomspace(c[compute].min(), c[compute].max(), n_grid)
    rows = []
    for budget in grid:
        reached = c[c[compute] <= budget]
        best = reached.loc[reached[metric].idxmin()]
        rows.append({compute: float(budget), metric: float(best[metric]), "model": best["model"]})
    frontier = pd.DataFrame(rows)
    # keep the points where the frontier improves: a flat stretch says nothing about the law's slope
    return frontier[frontier[metric].diff().fillna(-1) < 0].reset_index(drop=True)
