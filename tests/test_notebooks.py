"""Every notebook runs top to bottom under papermill at the `smoke` profile, writing into a temporary folder."""

import json
from pathlib import Path

import papermill as pm
import pytest
from helpers import image_folder

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))


def test_there_are_seven_notebooks():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07"]


@pytest.mark.slow
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_smoke(nb, tmp_path):
    nb_json = json.loads(nb.read_text())
    tagged = [c for c in nb_json["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{nb.name} needs exactly one cell tagged 'parameters'"
    assert all(not c.get("outputs") for c in nb_json["cells"] if c["cell_type"] == "code"), \
        f"{nb.name} is committed with outputs; clear them"
    pm.execute_notebook(str(nb), str(tmp_path / nb.name), parameters={"profile": "smoke", "out_dir": str(tmp_path)},
                        cwd=str(nb.parent), kernel_name="python3", progress_bar=False)
    # a smoke run writes into its own folders, never over the full profile's results/<notebook>/
    results, figures = tmp_path / "results" / nb.stem / "smoke", tmp_path / "figures" / nb.stem / "smoke"
    assert list(results.glob("*.csv")), f"{nb.name} wrote no table"
    assert list(figures.glob("*.png")), f"{nb.name} wrote no figure"
    assert not list((tmp_path / "results" / nb.stem).glob("*.csv"))
    for folder in (results, figures):
        prov = json.loads((folder / "provenance.json").read_text())
        assert prov["parameters"]["profile"] == "smoke" and prov["git_sha"] and prov["torch"]


@pytest.mark.slow
@pytest.mark.parametrize("classes", [2, 11, 12])
def test_train_var_notebook_on_image_folders_of_any_class_count(classes, tmp_path):
    """The transformer gets the data's class count (11 must not make the last class the null class, 12 must not
    crash after the tokenizer has trained) and the sample grid one row per existing class, named."""
    folder = image_folder(tmp_path / "imgs", classes, per_class=4, seed=classes, prefix="kind")
    nb = ROOT / "notebooks" / "02_train_var.ipynb"
    pm.execute_notebook(str(nb), str(tmp_path / nb.name), cwd=str(nb.parent), kernel_name="python3",
                        progress_bar=False, parameters={"profile": "smoke", "out_dir": str(tmp_path),
                                                        "dataset": str(folder), "resolution": 16, "per_class": 2})
    prov = json.loads((tmp_path / "results" / nb.stem / "smoke" / "provenance.json").read_text())
    assert prov["var_config"]["num_classes"] == classes
    assert prov["classes"] == [f"kind{c:02d}" for c in range(classes)]


@pytest.mark.slow
def test_zero_shot_notebook_runs_on_authors_checkpoints(tmp_path):
    """05_zero_shot with `authors_dir`: files named and laid out as the authors' (here a tiny VAR-d1 and a 32 px
    tokenizer over the paper's ten scales, random weights) and an image folder with one sub-folder per class."""
    import numpy as np
    import torch
    from PIL import Image

    from varlib.authors import AUTHORS_VAE_FILE
    from varlib.config import PAPER_SCALES_256, TokenizerConfig, VARConfig
    from varlib.tokenizer import VQVAE
    from varlib.transformer import VAR

    tok = TokenizerConfig(in_channels=3, ch=16, ch_mult=(1, 2), num_res_blocks=1, vocab_size=64,
                          scales=PAPER_SCALES_256)
    torch.manual_seed(0)
    torch.save(VQVAE(tok).state_dict(), tmp_path / AUTHORS_VAE_FILE)
    torch.save(VAR(VARConfig(depth=1, num_classes=1000, vocab_size=64, scales=PAPER_SCALES_256)).state_dict(),
               tmp_path / "var_d1.pth")
    rng = np.random.default_rng(0)
    for cls in ("n01440764", "n01443537"):
        folder = tmp_path / "images" / cls
        folder.mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    nb = ROOT / "notebooks" / "05_zero_shot.ipynb"
    pm.execute_notebook(str(nb), str(tmp_path / nb.name), cwd=str(nb.parent), kernel_name="python3",
                        progress_bar=False,
                        parameters={"profile": "smoke", "out_dir": str(tmp_path), "authors_dir": str(tmp_path),
                                    "authors_depth": 1, "dataset": str(tmp_path / "images"), "resolution": 32,
                                    "n_images": 2, "n_show": 2, "n_seeds": 1})
    results = tmp_path / "results" / "05_zero_shot" / "smoke"
    table = (results / "zero_shot.csv").read_text()
    assert "authors' checkpoint), re-quantized" in table and "authors' checkpoint), authors' procedure" in table
    assert "raster" not in table and not (results / "claims.csv").exists()  # no AR baseline, no classifier
    figures = {p.stem for p in (tmp_path / "figures" / "05_zero_shot" / "smoke").glob("*.png")}
    assert figures == {"in_painting", "out_painting", "class_editing", "known_region_psnr_and_fid"}


@pytest.mark.slow
def test_zero_shot_notebook_writes_its_claims_under_the_fixed_rules(tmp_path):
    """05_zero_shot at smoke: every method and control in the table, and claims.csv with the rules of
    varlib.editing for both VAR procedures (one training seed: no verdict from a t-test)."""
    import pandas as pd

    from varlib import claims, editing

    nb = ROOT / "notebooks" / "05_zero_shot.ipynb"
    pm.execute_notebook(str(nb), str(tmp_path / nb.name), cwd=str(nb.parent), kernel_name="python3",
                        progress_bar=False, parameters={"profile": "smoke", "out_dir": str(tmp_path), "n_images": 4,
                                                        "n_seeds": 1, "n_show": 2})
    results = tmp_path / "results" / "05_zero_shot" / "smoke"
    table = pd.read_csv(results / "zero_shot.csv")
    methods = {"VAR, re-quantized", "VAR, authors' procedure", "AR, every known token", "AR, raster prefix only"}
    assert set(table["method"]) == methods | {editing.UNEDITED}
    assert set(table["task"]) == {task.name for task in editing.TASKS} and (table["edits"] == 4).all()
    rows = pd.read_csv(results / "claims.csv")
    assert len(rows) == 6 and set(rows["verdict"]) <= {claims.FEW_SEEDS, claims.NOT_REPRODUCED}
    assert (rows["rule"] == [editing.FILL_RULE, editing.FILL_RULE, editing.CLASS_RULE] * 2).all()
    assert (results / "class_edit_curve.csv").exists()
