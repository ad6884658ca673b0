import os
import signal
import threading
import time
from math import comb

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import exactem
from reference import facet_is_needed, forward, row_keys


def sample_latents(S, n, seed):
    """Points at several scales, up to |z| ~ 30, as the issue asks."""
    rng = np.random.default_rng(seed)
    scales = np.repeat([0.3, 1.0, 3.0, 10.0, 30.0], n // 5 + 1)[:n, None]
    return rng.uniform(-1, 1, size=(n, S)) * scales


def check_partition(dec, n_samples, seed=0):
    part = dec.regions()
    P = part.patterns
    keys = row_keys(P)
    assert len(set(keys)) == len(keys), "a region was enumerated twice"
    # Every interior point reproduces its pattern and the affine map.
    X, Pin = forward(dec.weights, dec.biases, dec.slopes, part.interior_points)
    np.testing.assert_array_equal(Pin, P)
    affine = np.einsum("rds,rs->rd", part.A, part.interior_points) + part.b
    np.testing.assert_allclose(affine, X, rtol=1e-9, atol=1e-9)
    # Every sampled pattern is enumerated; locate agrees with the patterns.
    Z = sample_latents(dec.latent_dim, n_samples, seed)
    Xs, Ps = forward(dec.weights, dec.biases, dec.slopes, Z)
    index = {k: q for q, k in enumerate(keys)}
    missing = [k for k in set(row_keys(Ps)) if k not in index]
    assert not missing, f"{len(missing)} sampled patterns were not enumerated"
    where = part.locate(Z)
    np.testing.assert_array_equal(where, [index[k] for k in row_keys(Ps)])
    np.testing.assert_allclose(np.einsum("nds,ns->nd", part.A[where], Z) + part.b[where], Xs, rtol=1e-8, atol=1e-8)
    return part


@pytest.mark.parametrize("S", [1, 2, 3, 4])
@pytest.mark.parametrize("H", [2, 5, 12])
def test_single_layer_general_position_matches_zaslavsky(S, H):
    dec = exactem.Decoder.random([S, H, 3], activation="relu", seed=10 * S + H)
    assert len(dec.regions()) == sum(comb(H, i) for i in range(S + 1))


@pytest.mark.parametrize(
    "widths, activation",
    [
        ([1, 16, 16, 16, 3], "leaky_relu"),
        ([1, 24, 24, 2], "abs"),
        ([1, 10, 10, 2], "relu"),
        ([2, 16, 16, 3], "relu"),
        ([2, 12, 12, 12, 2], "abs"),
        ([2, 24, 24, 5], "leaky_relu"),
        ([2, 8, 8, 2], "linear"),
        ([3, 10, 10, 2], "leaky_relu"),
        ([3, 8, 8, 8, 2], "abs"),
        ([3, 12, 8, 2], "relu"),
    ],
)
def test_deep_nets_enumerate_every_sampled_pattern(widths, activation):
    dec = exactem.Decoder.random(widths, activation=activation, alpha=0.1, seed=len(widths) + widths[1])
    check_partition(dec, 100_000)


def test_facets_are_exact_and_neighbours_mutual():
    for widths in ([1, 10, 10, 2], [2, 10, 10, 2], [3, 6, 6, 2]):
        dec = exactem.Decoder.random(widths, seed=4)
        part = dec.regions()
        for i in range(len(part)):
            G, h = part.facets(i)
            z = part.interior_points[i]
            np.testing.assert_allclose(np.linalg.norm(G, axis=1), 1.0, rtol=1e-12)
            assert np.all(G @ z < h)
            pts = part.facet_points(i)
            np.testing.assert_allclose(np.einsum("fs,fs->f", G, pts), h, atol=1e-8 * (1 + np.abs(h).max(initial=0)))
            if i % 7 == 0:  # an independent LP (scipy/HiGHS) confirms every facet is needed
                assert all(facet_is_needed(G, h, k) for k in range(len(h)))
            for k, j in enumerate(part.neighbors(i)):
                assert j != i
                assert i in part.neighbors(j)
                # Just across facet k lies region j.
                step = pts[k] + 1e-7 * G[k]
                assert part.locate(step[None])[0] == j


def test_bounded_matches_far_away_samples():
    dec = exactem.Decoder.random([2, 9, 9, 2], seed=8)
    part = dec.regions()
    angles = np.linspace(0, 2 * np.pi, 20_000, endpoint=False)
    far = part.locate(1e7 * np.stack([np.cos(angles), np.sin(angles)], axis=1))
    reaches_infinity = np.zeros(len(part), dtype=bool)
    reaches_infinity[far] = True
    np.testing.assert_array_equal(part.bounded, ~reaches_infinity)


def single_layer(rows, S):
    """A one-hidden-layer ReLU decoder whose units are the given (w..., b) rows."""
    rows = np.asarray(rows, dtype=float)
    return exactem.Decoder([rows[:, :S], np.ones((1, len(rows)))], [rows[:, S], np.zeros(1)], activation="relu")


@pytest.mark.parametrize(
    "rows, S, count",
    [
        ([[1, 0, 0], [2, 0, 0], [1, 0, 0], [0, 1, 0]], 2, 4),  # duplicate and scaled duplicate
        ([[1, 1, 0.5], [-1, -1, -0.5]], 2, 2),  # same hyperplane, opposite orientation
        ([[1, 0, 0], [1, 0, 1], [-2, 0, 4], [3, 0, -1.5]], 2, 5),  # parallel lines: strips
        ([[1, 0, 0], [1, 0, 1], [0, 1, 0.3]], 2, 6),  # parallel lines crossed by a line
        ([[0, 0, 0], [0, 0, -1], [1, -1, 0]], 2, 2),  # dead units
        ([[np.cos(t), np.sin(t), -np.cos(t) - 2 * np.sin(t)] for t in np.pi * np.arange(5) / 5 + 0.1], 2, 10),
        ([[1, 0], [-3, 0], [1, -1]], 1, 3),  # S = 1 duplicates
        ([[0, 0], [0, 1]], 1, 1),  # S = 1, no breakpoint at all
        ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [2, 0, 0, 0], [0, 0, 0, 0], [0, -1, 0, 0]], 3, 8),
        ([[np.cos(t), np.sin(t), 0, 0] for t in np.pi * np.arange(6) / 6 + 0.2], 3, 12),  # planes through a line
        ([[1, 1, 1, -1], [1, 1, 1, -1.0 - 1e-14]], 3, 2),  # hyperplanes closer than the tolerance
    ],
)
def test_degenerate_arrangements_have_known_counts(rows, S, count):
    dec = single_layer(rows, S)
    part = dec.regions()
    assert len(part) == count
    check_partition(dec, 20_000)


def test_layer_two_unit_that_never_changes_sign():
    # u2 = relu(z1) + relu(-z1) + 1 = |z1| + 1 > 0: it never splits a cell.
    dec = exactem.Decoder([np.array([[1.0, 0], [-1.0, 0]]), np.array([[1.0, 1.0]]), np.ones((1, 1))],
                          [np.zeros(2), np.ones(1), np.zeros(1)], activation="relu")
    part = dec.regions()
    assert len(part) == 2 and part.patterns[:, 2].all()


def test_abs_net_where_downstream_unit_vanishes_on_a_facet():
    # u2 = |z1| - |z1| = 0 identically: constant sign (on) everywhere, two regions.
    dec = exactem.Decoder([np.array([[1.0, 0.0]]), np.array([[1.0], [-1.0]]), np.ones((1, 2))],
                          [np.zeros(1), np.zeros(2), np.zeros(1)], activation="abs")
    part = check_partition(dec, 10_000)
    assert len(part) == 2


def test_region_limit_raises_before_running_out_of_memory():
    dec = exactem.Decoder.random([3, 64, 64, 64, 2], seed=0)
    with pytest.raises(exactem.RegionLimitError, match="max_regions=1000"):
        dec.regions(max_regions=1000)


def test_ctrl_c_interrupts_a_long_enumeration():
    # Python's own handler, even where the suite was started with SIGINT ignored (in the
    # background), which let the enumeration run away (+1 GB/min); and a region limit that
    # caps its memory (~1 GB) should the signal still go unheard.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        dec = exactem.Decoder.random([4, 48, 48, 48, 2], seed=0)
        timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
        start = time.perf_counter()
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            dec.regions(max_regions=1_000_000)
        assert time.perf_counter() - start < 10
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)


def test_enumeration_releases_the_gil():
    dec = exactem.Decoder.random([3, 32, 32, 2], seed=0)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (dec.regions(), done.set()))
    ticks = 0
    worker.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    worker.join()
    assert ticks > 20


def test_deterministic_order():
    dec = exactem.Decoder.random([2, 24, 24, 2], seed=3)
    first, second = dec.regions(), dec.regions()
    np.testing.assert_array_equal(first.patterns, second.patterns)
    np.testing.assert_array_equal(first.interior_points, second.interior_points)


def test_bad_region_index():
    part = exactem.Decoder.random([2, 4, 1]).regions()
    with pytest.raises(IndexError):
        part.facets(len(part))


@st.composite
def networks(draw):
    S = draw(st.integers(1, 3))
    depth = draw(st.integers(1, 3))
    width = draw(st.integers(1, {1: 12, 2: 8, 3: 5}[S]))
    widths = [S] + [width] * depth + [draw(st.integers(1, 3))]
    activation = draw(st.sampled_from(["relu", "leaky_relu", "abs", "linear"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    weights = [rng.normal(size=(o, i)) * scale for i, o in zip(widths[:-1], widths[1:])]
    biases = [rng.normal(size=o) * scale for o in widths[1:]]
    # Degeneracies: duplicated, scaled-duplicate, zeroed and bias-free units.
    for w, b in zip(weights[:-1], biases[:-1]):
        kind = draw(st.sampled_from(["none", "duplicate", "scaled", "dead", "through_origin"]))
        if len(w) >= 2 and kind == "duplicate":
            w[1], b[1] = w[0], b[0]
        elif len(w) >= 2 and kind == "scaled":
            w[1], b[1] = 2.5 * w[0], 2.5 * b[0]
        elif kind == "dead":
            w[0] = 0
        elif kind == "through_origin":
            b[:] = 0
    return exactem.Decoder(weights, biases, activation=activation, alpha=0.2)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(networks(), st.integers(0, 1000))
def test_property_random_networks(dec, seed):
    part = dec.regions()
    # The latent scale of the breakpoints; a dead layer (all-zero weights) has none, and
    # dividing by its zeros would send the samples to overflow.
    scale = max(1.0, *(np.abs(b).max() / np.abs(w).max() for w, b in zip(dec.weights, dec.biases) if np.abs(w).max() > 0))
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(4000, dec.latent_dim)) * scale * rng.choice([0.1, 1, 10], size=(4000, 1))
    _, Ps = forward(dec.weights, dec.biases, dec.slopes, Z)
    keys = row_keys(part.patterns)
    assert len(set(keys)) == len(keys)
    index = {k: q for q, k in enumerate(keys)}
    sampled = row_keys(Ps)
    assert all(k in index for k in sampled)
    np.testing.assert_array_equal(part.locate(Z), [index[k] for k in sampled])
    _, Pin = forward(dec.weights, dec.biases, dec.slopes, part.interior_points)
    np.testing.assert_array_equal(Pin, part.patterns)
