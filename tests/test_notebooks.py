"""Every notebook runs top to bottom under papermill at the `smoke` profile, writing into a temporary folder."""

import json
from pathlib import Path

import papermill as pm
import pytest

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
    results, figures = tmp_path / "results" / nb.stem, tmp_path / "figures" / nb.stem
    assert list(results.glob("*.csv")), f"{nb.name} wrote no table"
    assert list(figures.glob("*.png")), f"{nb.name} wrote no figure"
    for folder in (results, figures):
        prov = json.loads((folder / "provenance.json").read_text())
        assert prov["parameters"]["profile"] == "smoke" and prov["git_sha"] and prov["torch"]
    assert not (ROOT / "results" / nb.stem / "provenance.json").exists() or \
        json.loads((ROOT / "results" / nb.stem / "provenance.json").read_text())["parameters"]["profile"] != "smoke"
