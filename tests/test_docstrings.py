"""The Examples sections of the package's docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = ["exactem.decoder", "exactem.partition", "exactem.model", "exactem.estimator", "exactem.gauss",
           "exactem.datasets", "exactem.plots", "exactem.cli", "exactem.em"]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0
