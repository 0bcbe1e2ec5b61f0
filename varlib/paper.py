"""The paper's published numbers: Tian et al., "Visual Autoregressive Modeling: Scalable Image Generation via
Next-Scale Prediction" (arXiv 2404.02905 v2, NeurIPS 2024), ImageNet 256x256, FID-50k / IS on Inception features.

Quoted for comparison only: they are the paper's, measured on ImageNet with Inception, never this study's (whose
FIDs are on the Fashion-MNIST classifier's features), and every table built here labels them as the paper's.

Checked against the paper's text where it could be read here: the abstract of v2 (AR baseline FID 18.65 and IS 80.4
-> VAR FID 1.73 and IS 350.2, "around 20x faster", linear correlation near -0.998; v1 said 1.80 / 356.4, the
d30-re model of the authors' README). Table 1's VAR-d16 row (3.30 / 274.4 / 0.84 / 0.51) is quoted in
FoundationVision/VAR#83, Table 3's "+top-k" row (4.64 at top-k 600) in #180, and the guidance 2.0 of the paper's
tables in #86; Table 3's "+attn. norm." (3.30) and "+scale up" (1.73) rows equal those verified numbers. Not
verified (as recalled in shared/REFERENCE.md sec. 5; the paper's tables could not be read here): Table 1's d20, d24
and d30 rows; Table 3's FIDs 5.22, 4.95 and 3.60 and every cost but the AR baseline's 1.0; all scaling-law
coefficients.
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd

ARXIV = "2404.02905"


# ----------------------------------------------------------------------------------------------- headline claims

class Headline(NamedTuple):
    """The abstract's comparison of the raster-scan AR baseline with the best VAR."""

    ar_fid: float
    ar_is: float
    var_fid: float
    var_is: float
    speedup: float  # VAR's inference speed over the AR baseline's


HEADLINE = Headline(ar_fid=18.65, ar_is=80.4, var_fid=1.73, var_is=350.2, speedup=20.0)
SPEEDUP_OVER_AR = HEADLINE.speedup  # "around 20x faster inference" (abstract; Sec. 1, 4)
SCALING_PEARSON_R = -0.998  # "linear correlation coefficients near -0.998" of the log-log scaling fits (abstract)


# ----------------------------------------------------------------------------------------------- Table 1

class QualityRow(NamedTuple):
    """A row of Table 1: a released VAR model's generation quality."""

    model: str
    params: float
    fid: float
    inception_score: float
    precision: float
    recall: float


TABLE1 = (
    QualityRow("VAR-d16", 310e6, 3.30, 274.4, 0.84, 0.51),
    QualityRow("VAR-d20", 600e6, 2.57, 302.6, 0.83, 0.56),
    QualityRow("VAR-d24", 1.0e9, 2.09, 312.9, 0.82, 0.59),
    QualityRow("VAR-d30", 2.0e9, 1.92, 323.1, 0.82, 0.59),
)


def table1() -> pd.DataFrame:
    """Table 1 as the notebooks print it beside ours: model ("paper VAR-d16", ...), params, FID, IS, precision,
    recall."""
    return pd.DataFrame([{"model": f"paper {r.model}", "params": r.params, "FID": r.fid, "IS": r.inception_score,
                          "precision": r.precision, "recall": r.recall} for r in TABLE1])


# ----------------------------------------------------------------------------------------------- Table 3

class AblationRow(NamedTuple):
    """A row of Table 3 (the ablation from the raster AR baseline to VAR-d30): FID, and sampling cost per image
    relative to the AR baseline."""

    row: str
    fid: float
    cost: float


TABLE3 = (
    AblationRow("AR baseline", 18.65, 1.0),
    AblationRow("AR → VAR", 5.22, 0.013),
    AblationRow("+AdaLN", 4.95, 0.016),
    AblationRow("+top-k", 4.64, 0.016),
    AblationRow("+CFG", 3.60, 0.022),
    AblationRow("+attn. norm.", 3.30, 0.022),
    AblationRow("+scale up", 1.73, 0.052),
)
TABLE3_CFG = 2.0  # the classifier-free guidance scale of the "+CFG" rows
TABLE3_TOP_K = 600  # top-k of the "+top-k" rows, over the paper's codebook of TABLE3_VOCAB entries
TABLE3_VOCAB = 4096
TABLE3_TOP_K_FRACTION = TABLE3_TOP_K / TABLE3_VOCAB  # the same share of a smaller vocabulary


def table3() -> pd.DataFrame:
    """Table 3 with the columns the ablation notebook joins to its own rows: row, paper_FID, paper_cost."""
    return pd.DataFrame([{"row": r.row, "paper_FID": r.fid, "paper_cost": r.cost} for r in TABLE3])


# ----------------------------------------------------------------------------------------------- scaling laws

class PaperLaw(NamedTuple):
    """A fitted law y = (beta * x)^alpha of Sec. 5: x is "N" (parameters, in billions; Fig. 5) or "C" (training
    compute, Fig. 6, for which the paper's beta is not used here); y one of loss_last, loss_all, err_last, err_all
    (test loss / token error rate on the last scale or on all scales)."""

    x: str
    y: str
    alpha: float
    beta: float | None


SCALING_LAWS = (  # ImageNet 256, 12 model sizes from 18M to 2B parameters
    PaperLaw("N", "loss_last", -0.23, 2.0),
    PaperLaw("N", "loss_all", -0.20, 2.5),
    PaperLaw("N", "err_last", -0.016, 4.9e2),
    PaperLaw("N", "err_all", -0.010, 6.5e2),
    PaperLaw("C", "loss_last", -0.13, None),
    PaperLaw("C", "loss_all", -0.16, None),
    PaperLaw("C", "err_last", -0.0067, None),
    PaperLaw("C", "err_all", -0.011, None),
)


def scaling_law(x: str, y: str) -> PaperLaw:
    """The paper's law of `y` in `x` ("N" or "C")."""
    for law in SCALING_LAWS:
        if (law.x, law.y) == (x, y):
            return law
    known = sorted({(law.x, law.y) for law in SCALING_LAWS})
    raise KeyError(f"the paper has no scaling law of {y!r} in {x!r}; it has {known}")


def scaling_laws() -> pd.DataFrame:
    """The scaling laws as a table: x, y, paper_alpha, paper_beta."""
    return pd.DataFrame([{"x": law.x, "y": law.y, "paper_alpha": law.alpha, "paper_beta": law.beta}
                         for law in SCALING_LAWS])
