"""Every ```python block of README.md runs as it is, each in a fresh namespace (as if pasted into
a new Python session), in the order of the README. The blocks print what they compute; the
assertions here are that they run without error or warning, and that the numbers they print as
checks agree (exact against Monte Carlo within its standard error, a closed form)."""

import contextlib
import io
import pathlib
import re
import warnings

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    out = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a README example should not warn
        with contextlib.redirect_stdout(out):
            exec(compile(BLOCKS[index], f"README.md python block {index + 1}", "exec"), {"__name__": "__main__"})
    assert out.getvalue().strip(), "every README block prints something"
    # Where a block prints an exact value next to its independent check, they must agree.
    text = out.getvalue()
    monte_carlo = re.findall(r"exact (-?[\d.]+), Monte Carlo (-?[\d.]+) \+- ([\d.]+)", text)
    closed_forms = re.findall(r"= ([\d.]+) \+- ([\d.e-]+); closed form ([\d.]+)", text)
    assert len(monte_carlo) == text.count("Monte Carlo") and len(closed_forms) == text.count("closed form")
    for exact, check, err in monte_carlo:
        assert abs(float(exact) - float(check)) <= 4 * float(err) + 1e-6
    for p, err, closed in closed_forms:
        assert abs(float(p) - float(closed)) <= max(4 * float(err), 1e-9) + 1e-9
