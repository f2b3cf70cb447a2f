"""The README examples run: the repository README's Python example prints a CKA; the package
README's statistics and alignment examples print what they say."""

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


def package_example(heading):
    readme = (REPO / "bindings" / "python" / "README.md").read_text()
    section = readme.split(f"## {heading}\n", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    out = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def test_the_cka_statistics_example_runs():
    first, second, third = package_example("How far to trust a CKA value")
    cka, lower, upper, estimate, p_value, null_mean = (float(v.strip("(),")) for v in first.split())
    assert 0 < lower < estimate < upper < 1 and 0 < cka < 1  # the jackknife interval
    assert p_value == 1 / 201  # the dependence is plain: no permutation reaches it
    assert 0 < null_mean < cka
    assert len(second.split("]")[0].strip("[").split()) == 5
    kind, boot_lower, boot_upper = third.split(maxsplit=1)[0], *(float(v.strip("(),")) for v in third.split()[1:])
    assert kind == "percentile" and 0 < boot_lower < boot_upper < 1


def test_the_alignment_example_runs():
    (line,) = package_example("Permutation alignment")
    before, after = (float(v) for v in line.split())
    assert 0 < after < before
