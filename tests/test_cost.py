import subprocess
import sys

import numpy as np
import pytest

import exactem


@pytest.mark.parametrize("widths", [[1, 16, 16, 2], [2, 8, 8, 3]])
def test_cost_counts_the_regions_exactly_and_predicts_in_proportion(widths):
    cost = exactem.estimate_cost(widths, n_samples=5000, sample_size=200, repeats=1, seed=3)
    assert cost.n_regions == len(exactem.Decoder.random(widths, seed=3).regions())
    assert 1 <= cost.regions_per_point <= cost.n_regions
    assert cost.e_step_seconds > 0 and cost.m_step_seconds > 0
    assert cost.iteration_seconds >= cost.e_step_seconds + cost.m_step_seconds
    # The data alone: 5000 rows of D floats.
    assert cost.memory_bytes > 5000 * widths[-1] * 8
    text = str(cost)
    assert f"{cost.n_regions}" in text and "EM iteration" in text


def test_cost_of_a_given_decoder_and_bad_input():
    dec = exactem.Decoder.random([1, 8, 2], seed=1)
    cost = exactem.estimate_cost(decoder=dec, n_samples=100, sample_size=50, repeats=1)
    assert cost.n_regions == len(dec.regions()) and cost.sample_size == 50
    with pytest.raises(ValueError, match="widths"):
        exactem.estimate_cost(n_samples=10)
    with pytest.raises(ValueError, match="n_samples"):
        exactem.estimate_cost([1, 4, 2], n_samples=0)
    with pytest.raises(ValueError, match="decoder"):
        exactem.estimate_cost(decoder="not a decoder")
    with pytest.raises(exactem.RegionLimitError):
        exactem.estimate_cost([2, 16, 16, 2], max_regions=10)


def test_cost_command_prints_the_prediction():
    out = subprocess.run([sys.executable, "-m", "exactem", "cost", "--widths", "1,8,8,2", "--n", "1000",
                          "--sample-size", "100"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "regions (exact)" in out.stdout and "EM iteration" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "exactem", "cost", "--widths", "1,8,2", "--n", "-5"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "positive integer" in bad.stderr
