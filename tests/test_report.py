import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from varlib.report import Report, image_grid, repo_root, start_study  # noqa: E402


def test_report_writes_tables_figures_and_provenance(tmp_path):
    rep = Report("demo", {"profile": "smoke", "seed": 3}, out_dir=tmp_path, seed=3)
    rep.table(pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]}), "numbers")
    fig, ax = plt.subplots()
    image_grid(ax, torch.zeros(4, 1, 8, 8, dtype=torch.uint8), nrow=2, title="zeros")
    rep.figure(fig, "grid")
    rep.note(params=123, extractor="FMNIST-ResNet")  # note keys may shadow argument names
    for folder in (tmp_path / "results" / "demo", tmp_path / "figures" / "demo"):
        prov = json.loads((folder / "provenance.json").read_text())
        assert prov["parameters"] == {"profile": "smoke", "seed": 3} and prov["seed"] == 3
        assert prov["params"] == 123 and prov["extractor"] == "FMNIST-ResNet"
        assert prov["torch"] == torch.__version__ and prov["git_sha"] and prov["wall_time_s"] >= 0
    assert (tmp_path / "results" / "demo" / "numbers.md").read_text().startswith("|")
    assert pd.read_csv(tmp_path / "results" / "demo" / "numbers.csv").shape == (2, 2)
    assert (tmp_path / "figures" / "demo" / "grid.png").stat().st_size > 0


def test_start_study_finds_the_repo_and_adapts_the_profile(tmp_path):
    prof, dev, rep = start_study("demo", "smoke", resolution=32, device="cpu", seed=1, out_dir=str(tmp_path))
    assert prof.name == "smoke" and dev.type == "cpu" and rep.results == tmp_path / "results" / "demo"
    assert (repo_root() / "pyproject.toml").is_file()
