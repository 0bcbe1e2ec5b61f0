import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {r.strip() for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    env_lines = (ROOT / "environment.yml").read_text().splitlines()
    pip = {ln.strip()[2:].strip() for ln in env_lines
           if ln.startswith("      - ") and not ln.strip().startswith("- -e")}
    assert pip == wanted, f"environment.yml pip section differs from pyproject.toml: {sorted(pip ^ wanted)}"
    assert "  - python=3.11" in env_lines


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme.split("\n## ")[0], "README must open with the test command"
    assert re.search(r"^make test$", ci, re.M), ".ci/run must call exactly the README's test command"
