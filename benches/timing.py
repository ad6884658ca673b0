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
