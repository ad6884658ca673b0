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


def paired_median_times(fns, repeats):
    """Median wall times of several functions called in turn, repeat by repeat, so that each
    sees the same phases of the machine (its speed drifts by tens of percent over seconds, and
    timing one side's repeats before the other's turned that drift into the ratio); and each
    function's last result."""
    times = [[] for _ in fns]
    outs = [None] * len(fns)
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            start = time.perf_counter()
            outs[k] = fn()
            times[k].append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times], outs
