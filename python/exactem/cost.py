"""What an exact EM fit will cost, measured before it is paid: regions, time per iteration, memory."""

import time

import numpy as np

from ._core import default_block_rows
from ._validation import as_count
from .decoder import ACTIVATIONS, Decoder
from .em import CG_THRESHOLD, RegionStats, m_step
from .model import DGN

_FLOAT = 8


class CostEstimate:
    """The predicted cost of exact EM on a decoder shape, with the measurements behind it.

    Attributes
    ----------
    widths : list of int
        ``[S, D_1, ..., D]``.
    n_samples : int
        The number of training rows the prediction is for.
    n_regions : int
        Regions of the decoder's partition (exact: enumerated).
    enumeration_seconds : float
        Time to enumerate them.
    set_up_seconds : float
        Time to set up a model's per-region algebra (once per model, so once per proposal).
    regions_per_point : float
        Mean number of regions an E-step integrates per point (measured on the sample).
    e_step_seconds : float
        Predicted exact E-step time for ``n_samples`` rows (with its per-region sums).
    m_step_seconds : float
        Measured time of one M-step (independent of ``n_samples``: it works on per-region sums).
    iteration_seconds : float
        Predicted time of one EM iteration: the E-step of the proposal (which is the next
        iteration's E-step), its per-region sums, one M-step, and the proposal's region
        enumeration and set-up.
        Iterations whose first proposal is rejected repeat the M-step, the enumeration and the
        E-step: up to a few times this.
    memory_bytes : int
        Predicted peak memory of an iteration: the data, two E-steps' sparse statistics (the
        current one and the proposal's), the per-region sums and the largest layer system.
    sample_size : int
        Rows the E-step and M-step were timed on.
    """

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def __repr__(self):
        return (f"CostEstimate(widths={self.widths}, n_samples={self.n_samples}, n_regions={self.n_regions}, "
                f"iteration_seconds={self.iteration_seconds:.3g}, memory_bytes={self.memory_bytes})")

    def __str__(self):
        rows = [
            ("decoder", f"{self.widths}"),
            ("regions (exact)", f"{self.n_regions} (enumerated in {self.enumeration_seconds * 1e3:.1f} ms)"),
            ("regions per point", f"{self.regions_per_point:.1f} (measured on {self.sample_size} rows)"),
            (f"E-step, {self.n_samples} rows", f"{self.e_step_seconds:.3g} s (predicted)"),
            ("M-step", f"{self.m_step_seconds:.3g} s (measured)"),
            ("EM iteration", f"{self.iteration_seconds:.3g} s (predicted; a rejected proposal adds up to as much)"),
            ("memory", f"{self.memory_bytes / 2**20:.0f} MiB (predicted peak)"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _median_seconds(call, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def estimate_cost(widths=None, n_samples=1000, activation="leaky_relu", alpha=0.1, noise_var=0.1, decoder=None,
                  sample_size=1000, max_regions=1_000_000, repeats=3, seed=0):
    """Predict the cost of exact EM before training: regions, time per iteration and memory.

    Enumerates the regions of a random decoder of the given shape (or of ``decoder``), times an
    exact E-step on ``sample_size`` rows sampled from that model and one M-step, and scales the
    E-step linearly in the number of rows (its cost per (point, region) pair does not depend on
    N; the M-step's does not depend on N at all). A trained decoder can have more or fewer
    regions than a random one of the same shape: pass it as ``decoder`` to measure it.

    Parameters
    ----------
    widths : sequence of int, optional
        ``[S, D_1, ..., D]``; ignored when ``decoder`` is given.
    n_samples : int, default=1000
        The number of training rows to predict for.
    activation : str, default="leaky_relu"
        Hidden activation of the random decoder ("relu", "leaky_relu", "abs", "linear").
    alpha : float, default=0.1
        Negative slope of "leaky_relu".
    noise_var : float, default=0.1
        Noise variance of the model the timing rows are sampled from. Smaller noise means
        narrower posteriors and fewer regions per point (a cheaper E-step).
    decoder : Decoder, optional
        A decoder to measure instead of a random one.
    sample_size : int, default=1000
        Rows timed (at most ``n_samples``).
    max_regions : int, default=1_000_000
        Raise :class:`exactem.RegionLimitError` beyond this many regions, as a fit would.
    repeats : int, default=3
        Timed repetitions of each step (the median is used).
    seed : int, default=0
        Seeds the random decoder and the sampled rows.

    Returns
    -------
    CostEstimate
        Printable; its attributes hold the predictions and the measurements behind them.

    Examples
    --------
    >>> import exactem
    >>> cost = exactem.estimate_cost([1, 16, 16, 2], n_samples=10_000, sample_size=200)
    >>> cost.n_regions == len(exactem.Decoder.random([1, 16, 16, 2], seed=0).regions())
    True
    """
    n_samples = as_count(n_samples, "n_samples")
    sample_size = min(as_count(sample_size, "sample_size"), n_samples)
    repeats = as_count(repeats, "repeats")
    if decoder is None:
        if widths is None:
            raise ValueError("give the decoder's widths, e.g. [1, 16, 16, 2], or a decoder")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        decoder = Decoder.random(list(widths), activation=activation, alpha=alpha, seed=seed)
    elif not isinstance(decoder, Decoder):
        raise ValueError(f"decoder must be an exactem.Decoder; got {type(decoder).__name__}")
    model = DGN(decoder, noise_var, max_regions=max_regions)
    start = time.perf_counter()
    partition = decoder.regions(max_regions=max_regions)
    enumeration = time.perf_counter() - start
    model._regions = partition
    R, S, D = len(partition), decoder.latent_dim, decoder.output_dim
    X, _ = model.sample(sample_size, seed=seed)

    def engine_set_up():  # the per-region algebra, paid once per model (so once per proposal)
        fresh = DGN(decoder, noise_var, max_regions=max_regions)
        fresh._regions = partition
        fresh._engine()

    set_up_seconds = _median_seconds(engine_set_up, repeats)
    es = model.e_step(X)

    def e_step_and_sums():
        RegionStats.by_blocks(model, X)

    e_seconds = _median_seconds(e_step_and_sums, repeats)
    stats = RegionStats(es, X, R)
    noise = np.full(D, float(noise_var))
    m_seconds = _median_seconds(lambda: m_step(decoder, partition.patterns, noise, stats), repeats)
    pairs_per_point = es.m0.nnz / sample_size
    e_step_seconds = e_seconds * n_samples / sample_size
    # Memory: the data; two E-steps' (the current one and a proposal's) blocks of rows, their
    # sparse statistics (m0 + index, m1, m2 per stored pair) and per-row log-likelihoods; the
    # per-region sums; the largest layer system (dense below CG_THRESHOLD unknowns, else the
    # operator's per-region factors).
    entry = (1 + S + S * S) * _FLOAT + 8
    block = min(n_samples, default_block_rows(D, R, S))
    e_step_bytes = block * (pairs_per_point * entry + D * _FLOAT) + n_samples * _FLOAT
    sums_bytes = R * D * (S + 1) * _FLOAT
    layer_bytes = 0
    widths_all = decoder.widths
    for fan_in, fan_out in zip(widths_all[:-1], widths_all[1:]):
        unknowns = fan_out * (fan_in + 1)
        per_region = (fan_in + 1) ** 2 + fan_out * (fan_in + 1) + fan_out * min(fan_out, D)
        dense = unknowns ** 2 if unknowns <= CG_THRESHOLD else 0
        layer_bytes = max(layer_bytes, (dense + R * per_region) * _FLOAT)
    memory = int(n_samples * D * _FLOAT + 2 * e_step_bytes + sums_bytes + layer_bytes)
    return CostEstimate(widths=list(widths_all), n_samples=n_samples, n_regions=R, enumeration_seconds=enumeration,
                        regions_per_point=pairs_per_point, e_step_seconds=e_step_seconds, m_step_seconds=m_seconds,
                        iteration_seconds=e_step_seconds + m_seconds + enumeration + set_up_seconds,
                        set_up_seconds=set_up_seconds, memory_bytes=memory,
                        sample_size=sample_size)
