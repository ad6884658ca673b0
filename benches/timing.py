"""The timing rule shared by the Python benchmarks: the median wall time over repeated calls
(the machine is noisy; medians resist its spikes), and the last call's result."""

import time

import numpy as np


def median_time(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def paired_median_times(fns, repeats, block=1):
    """Median wall times of several functions called in turn, `block` calls of one and then of
    the next, until each has been called at least `repeats` times, so that all see the same
    phases of the machine (its speed drifts by tens of percent over seconds, and timing one
    side's repeats before the other's turned that drift into the ratio); and each function's
    last result. With `block` > 1 the median is that of calls following a call of the same
    function: on this virtual machine the first call after another program's work runs up to
    1.5x slower (exactem's worker threads wake on a core that sat idle meanwhile), and
    `block` = 1 measures that cold start instead of the throughput."""
    times = [[] for _ in fns]
    outs = [None] * len(fns)
    for _ in range(-(-repeats // block)):
        for k, fn in enumerate(fns):
            for _ in range(block):
                start = time.perf_counter()
                outs[k] = fn()
                times[k].append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times], outs
