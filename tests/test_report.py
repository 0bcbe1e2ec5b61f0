import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from varlib.report import Report, default_out_dir, git_sha, image_grid, output_folders  # noqa: E402


def test_report_writes_tables_figures_and_provenance(tmp_path):
    rep = Report("demo", {"profile": "smoke", "seed": 3}, out_dir=tmp_path, seed=3, profile="full")
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


def test_each_profile_writes_to_its_own_folders(tmp_path):
    """A quick or smoke run never writes over the full profile's published results (the README reads those)."""
    folders = {p: output_folders(tmp_path, "04_scaling", p) for p in ("full", "quick", "smoke")}
    assert folders["full"] == (tmp_path / "results" / "04_scaling", tmp_path / "figures" / "04_scaling")
    assert folders["quick"] == (tmp_path / "results" / "04_scaling" / "quick",
                                tmp_path / "figures" / "04_scaling" / "quick")
    assert len({f for pair in folders.values() for f in pair}) == 6
    rep = Report("04_scaling", {}, profile="smoke")  # no out_dir: the checkout varlib was imported from
    assert rep.results == default_out_dir() / "results" / "04_scaling" / "smoke"
    assert (default_out_dir() / "pyproject.toml").is_file()


def test_provenance_names_varlibs_own_commit_whatever_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("VARLIB_GIT_SHA", raising=False)
    here = git_sha()
    monkeypatch.chdir(tmp_path)  # not a git checkout
    assert git_sha() == here and len(here.removesuffix("-dirty")) == 40
    assert git_sha(tmp_path) == "unknown"


def test_image_grid_labels_its_rows():
    fig, ax = plt.subplots()
    image_grid(ax, torch.zeros(6, 1, 8, 8, dtype=torch.uint8), nrow=3, row_labels=["Bag", "Coat"])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Bag", "Coat"]
    plt.close(fig)
