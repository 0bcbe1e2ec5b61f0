"""README.md's Results section is generated from results/ and must match it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_results_section_matches_the_results_files():
    run = subprocess.run([sys.executable, str(ROOT / "scripts/readme_results.py"), "--check"], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
