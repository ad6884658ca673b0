import numpy as np
import pytest

import exactem
from reference import forward


def test_forward_and_patterns_match_numpy_reference():
    rng = np.random.default_rng(0)
    for activation, slope in [("relu", 0.0), ("leaky_relu", 0.2), ("abs", -1.0), ("linear", 1.0)]:
        dec = exactem.Decoder.random([3, 7, 5, 4], activation=activation, alpha=0.2, seed=1)
        Z = rng.normal(size=(500, 3)) * 3
        X, P = forward(dec.weights, dec.biases, [slope, slope], Z)
        np.testing.assert_allclose(dec(Z), X, rtol=1e-13, atol=1e-13)
        np.testing.assert_array_equal(dec.patterns(Z), P)


def test_per_layer_activations_and_properties():
    dec = exactem.Decoder.random([2, 4, 3, 5], activation=["abs", "relu"], seed=3)
    assert dec.slopes == [-1.0, 0.0]
    assert dec.widths == [2, 4, 3, 5]
    assert (dec.latent_dim, dec.output_dim, dec.n_hidden) == (2, 5, 7)
    Z = np.random.default_rng(1).normal(size=(50, 2))
    X, _ = forward(dec.weights, dec.biases, [-1.0, 0.0], Z)
    np.testing.assert_allclose(dec(Z), X, rtol=1e-13)


def test_random_uses_torch_default_bounds_and_is_seeded():
    dec = exactem.Decoder.random([4, 100, 3], seed=5)
    w0, w1 = dec.weights
    assert np.abs(w0).max() <= 0.5 and np.abs(w0).max() > 0.45
    assert np.abs(w1).max() <= 0.1
    again = exactem.Decoder.random([4, 100, 3], seed=5)
    np.testing.assert_array_equal(again.weights[0], w0)
    other = exactem.Decoder.random([4, 100, 3], seed=6)
    assert not np.array_equal(other.weights[0], w0)


def test_random_takes_a_generator_and_rejects_bad_seeds():
    # The draws come from the engine (PCG64); a numpy Generator gives it a seed.
    first = exactem.Decoder.random([2, 5, 3], seed=np.random.default_rng(7))
    second = exactem.Decoder.random([2, 5, 3], seed=np.random.default_rng(7))
    np.testing.assert_array_equal(first.weights[0], second.weights[0])
    np.testing.assert_array_equal(first.biases[1], second.biases[1])
    for bad in (-1, 2**64, 1.5, True):
        with pytest.raises(ValueError):
            exactem.Decoder.random([2, 5, 3], seed=bad)


def test_save_load_roundtrip(tmp_path):
    dec = exactem.Decoder.random([2, 6, 6, 3], activation=["abs", "leaky_relu"], alpha=0.3, seed=2)
    path = tmp_path / "dec.npz"
    dec.save(path)
    back = exactem.Decoder.load(path)
    assert back.activations == ["abs", "leaky_relu"] and back.alpha == 0.3
    Z = np.random.default_rng(0).normal(size=(20, 2))
    np.testing.assert_array_equal(back(Z), dec(Z))


def test_weights_are_copies():
    dec = exactem.Decoder.random([2, 3, 1])
    w = dec.weights[0]
    w[:] = 0
    assert np.any(dec.weights[0] != 0)


@pytest.mark.parametrize(
    "weights, biases, kwargs, message",
    [
        ([np.ones((3, 2)), np.ones((1, 4))], [np.ones(3), np.ones(1)], {}, "layer 1"),
        ([np.ones((3, 2))], [np.ones(4)], {}, "biases\\[0\\]"),
        ([np.ones((3, 2)), np.ones((1, 3))], [np.ones(3)], {}, "bias vectors"),
        ([np.full((3, 2), np.nan), np.ones((1, 3))], [np.ones(3), np.ones(1)], {}, "NaN"),
        ([np.ones((3, 2)), np.ones((1, 3))], [np.ones(3), np.array([np.inf])], {}, "layer 1"),
        ([np.ones((3, 2)), np.ones((1, 3))], [np.ones(3), np.ones(1)], {"activation": "tanh"}, "unknown activation"),
        ([np.ones((3, 2)), np.ones((1, 3))], [np.ones(3), np.ones(1)], {"activation": ["relu", "relu"]}, "hidden layers"),
        ([], [], {}, "at least one layer"),
        ([np.ones(3)], [np.ones(3)], {}, "2-D"),
    ],
)
def test_malformed_networks_raise_value_error(weights, biases, kwargs, message):
    with pytest.raises(ValueError, match=message):
        exactem.Decoder(weights, biases, **kwargs)


def test_bad_latent_points_raise_value_error():
    dec = exactem.Decoder.random([2, 3, 1])
    with pytest.raises(ValueError, match="shape \\(n, 2\\)"):
        dec(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="2-D"):
        dec(np.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        dec.patterns(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="max_regions"):
        dec.regions(max_regions=0)
