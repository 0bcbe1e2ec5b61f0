"""The paper's numbers (varlib.paper): the tables hang together as the paper states them, the helpers return what the
notebooks print, and the sampling settings quoted elsewhere agree with them."""

import pytest

from varlib import paper
from varlib.config import PAPER_SAMPLING


def test_table1_falls_in_fid_and_rises_in_is_with_model_size():
    sizes = [r.params for r in paper.TABLE1]
    assert sizes == sorted(sizes) and [r.model for r in paper.TABLE1] == ["VAR-d16", "VAR-d20", "VAR-d24", "VAR-d30"]
    fids, scores = [r.fid for r in paper.TABLE1], [r.inception_score for r in paper.TABLE1]
    assert fids == sorted(fids, reverse=True) and scores == sorted(scores)
    assert all(0 < r.precision < 1 and 0 < r.recall < 1 for r in paper.TABLE1)


def test_table1_frame_is_labelled_as_the_papers():
    t = paper.table1()
    assert list(t.columns) == ["model", "params", "FID", "IS", "precision", "recall"]
    assert t.model.str.startswith("paper VAR-d").all()
    assert t.iloc[0].to_dict() == {"model": "paper VAR-d16", "params": 310e6, "FID": 3.30, "IS": 274.4,
                                   "precision": 0.84, "recall": 0.51}


def test_table3_improves_at_every_row_and_agrees_with_the_abstract_and_table1():
    fids = [r.fid for r in paper.TABLE3]
    assert all(b < a for a, b in zip(fids, fids[1:], strict=False)), "each row of Table 3 lowers the FID"
    assert paper.TABLE3[0] == paper.AblationRow("AR baseline", paper.HEADLINE.ar_fid, 1.0)
    assert paper.TABLE3[-1].fid == paper.HEADLINE.var_fid  # "+scale up" is the abstract's best VAR
    by_row = {r.row: r for r in paper.TABLE3}
    assert by_row["+attn. norm."].fid == paper.TABLE1[0].fid  # the full d16 recipe is Table 1's VAR-d16
    costs = [r.cost for r in paper.TABLE3[1:]]  # relative to the AR baseline's 1.0
    assert costs == sorted(costs) and costs[-1] < 1 / 10  # each addition costs time; all far below AR


def test_table3_frame_and_sampling_settings():
    t = paper.table3()
    assert list(t.columns) == ["row", "paper_FID", "paper_cost"] and len(t) == 7
    assert t.paper_FID.tolist() == [r.fid for r in paper.TABLE3]
    assert paper.TABLE3_TOP_K_FRACTION == pytest.approx(600 / 4096)
    assert (PAPER_SAMPLING.cfg, PAPER_SAMPLING.top_k) == (paper.TABLE3_CFG, paper.TABLE3_TOP_K)


def test_scaling_laws_are_decreasing_power_laws_of_n_and_c():
    assert {(law.x, law.y) for law in paper.SCALING_LAWS} == {
        (x, y) for x in ("N", "C") for y in ("loss_last", "loss_all", "err_last", "err_all")}
    assert all(law.alpha < 0 for law in paper.SCALING_LAWS)
    assert all((law.beta is not None) == (law.x == "N") for law in paper.SCALING_LAWS)
    assert paper.scaling_law("N", "loss_last") == paper.PaperLaw("N", "loss_last", -0.23, 2.0)
    with pytest.raises(KeyError, match="no scaling law of 'loss' in 'N'"):
        paper.scaling_law("N", "loss")
    t = paper.scaling_laws()
    assert list(t.columns) == ["x", "y", "paper_alpha", "paper_beta"] and len(t) == 8


def test_headline_numbers():
    assert paper.HEADLINE == paper.Headline(18.65, 80.4, 1.73, 350.2, 20.0)
    assert paper.SPEEDUP_OVER_AR == 20.0 and paper.SCALING_PEARSON_R == -0.998
