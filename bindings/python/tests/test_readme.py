"""The repository README's Python example runs and prints a CKA."""

import re
import subprocess
import sys

from conftest import REPO


def test_the_readme_python_example_runs():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## From Python", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(example.strip().splitlines()) == 5
    out = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, check=True).stdout
    assert 0.0 < float(out) <= 1.0
