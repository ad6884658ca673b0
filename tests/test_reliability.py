"""Never panic, never hang, stop when asked, refuse what cannot fit.

Timed checks run in a child process with a timeout, so that a regression makes a test fail
rather than hang the suite; the bounds are generous (a loaded CI machine), yet an order of
magnitude below what the issues measured before the fixes.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import exactem
from exactem import _core


def run_child(code, timeout, env=None):
    """Runs ``code`` in a fresh interpreter (the exactem this process imports: the installed
    package, or whatever PYTHONPATH names) and returns the JSON object it prints last; fails, not
    hangs, past ``timeout`` seconds."""
    child_env = dict(os.environ)
    child_env["RUST_BACKTRACE"] = "0"
    child_env.update(env or {})
    prelude = "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
    try:
        done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                              timeout=timeout, env=child_env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the child did not finish within {timeout} s")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- 1. panics become InternalError, and the process stays usable --------------------------------


def test_a_panic_in_a_worker_is_an_internal_error_and_the_next_call_works():
    # 3000 jobs of 2 ms, one of which panics on whichever thread takes it: before the fix the
    # call ran every other job first (minutes for S = 3 batches).
    for which in [0, 7, 100]:
        start = time.perf_counter()
        with pytest.raises(exactem.InternalError, match="forced panic"):
            _core._force_panic(3000, which)
        assert time.perf_counter() - start < 2.0  # 3000 x 2 ms / 2 threads = 3 s if not stopped
        assert _core._force_panic(64, 64) == 64
    # A real computation afterwards, on the same pool.
    dgn = exactem.DGN(exactem.Decoder.random([2, 6, 2], seed=1), 0.1)
    assert np.isfinite(dgn.log_likelihood(np.zeros((3, 2)))).all()


# -- 3. limits fire before damage -------------------------------------------------------------------


@pytest.mark.parametrize("widths", [[2, 1000, 1000, 10], [3, 300, 300, 2], [5, 100, 100, 2]])
def test_a_region_limit_fires_in_time_proportional_to_it(widths):
    # Each of these has millions of regions or more; 1000 take well under a second.
    out = run_child(f"""
        import json, time, exactem
        dec = exactem.Decoder.random({widths}, seed=0)
        start = time.perf_counter()
        try:
            dec.regions(max_regions=1000)
            outcome = "returned"
        except exactem.RegionLimitError:
            outcome = "limit"
        print(json.dumps({{"outcome": outcome, "seconds": time.perf_counter() - start}}))
    """, timeout=60)
    assert out["outcome"] == "limit"
    assert out["seconds"] < 5.0, out


def test_the_region_count_stops_exactly_at_the_limit():
    dec = exactem.Decoder.random([2, 12, 12, 2], seed=4)
    n = len(dec.regions())
    assert len(dec.regions(max_regions=n)) == n
    with pytest.raises(exactem.RegionLimitError):
        dec.regions(max_regions=n - 1)


# -- 4. Ctrl-C stops any call within a fraction of a second ---------------------------------------

INTERRUPT = """
    import json, os, signal, threading, time
    import numpy as np
    import exactem
    {setup}
    sent = []
    def interrupt():
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)
    threading.Timer(0.5, interrupt).start()
    start = time.perf_counter()
    try:
        {call}
        outcome = "finished"
    except KeyboardInterrupt:
        outcome = "interrupted"
    end = time.perf_counter()
    print(json.dumps({{"outcome": outcome, "delay": end - sent[0] if sent else None, "seconds": end - start}}))
"""


@pytest.mark.parametrize("name, setup, call", [
    ("S = 3 log-likelihood",
     "dgn = exactem.DGN(exactem.Decoder.random([3, 16, 16, 2], seed=0), 0.05); dgn.regions; "
     "X = dgn.sample(200, seed=1)[0]",
     "dgn.log_likelihood(X)"),
    ("S = 3 E-step",
     "dgn = exactem.DGN(exactem.Decoder.random([3, 16, 16, 2], seed=0), 0.05); dgn.regions; "
     "X = dgn.sample(200, seed=1)[0]",
     "dgn.e_step(X)"),
    ("S = 4 log-likelihood",
     "dgn = exactem.DGN(exactem.Decoder.random([4, 10, 10, 2], seed=0), 0.05); dgn.regions; "
     "X = dgn.sample(200, seed=1)[0]",
     "dgn.log_likelihood(X)"),
    ("posterior sampling",
     "dgn = exactem.DGN(exactem.Decoder.random([2, 8, 2], seed=0), 0.1); post = dgn.posterior(np.zeros(2))",
     "post.sample(200_000_000)"),
])
def test_ctrl_c_stops_a_long_call_promptly(name, setup, call):
    out = run_child(INTERRUPT.format(setup=setup, call=call), timeout=120)
    print(name, out)
    assert out["outcome"] == "interrupted", (name, out)
    assert out["delay"] < 2.0, (name, out)


# -- 5. memory: refused with MemoryError, never an abort -------------------------------------------


def test_a_sample_too_large_for_memory_is_a_memory_error():
    dgn = exactem.DGN(exactem.Decoder.random([2, 8, 2], seed=0), 0.1)
    post = dgn.posterior(np.zeros(2))
    with pytest.raises(MemoryError, match="bytes"):
        post.sample(2**62)


def test_memory_errors_under_an_address_space_cap():
    # Each call would need more address space than the cap leaves (32 GB of samples; 3,000,000
    # outputs of 10 numbers, 240 MB, against 128 MB left), and must say so rather than abort.
    out = run_child("""
        import json, resource
        import numpy as np
        import exactem
        dgn = exactem.DGN(exactem.Decoder.random([2, 8, 2], seed=0), 0.1)
        post = dgn.posterior(np.zeros(2))
        dec = exactem.Decoder.random([1, 256, 256, 10], seed=0)
        Z = np.zeros((3_000_000, 1))
        with open("/proc/self/status") as status:
            mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (mapped + (128 << 20), resource.RLIM_INFINITY))
        results = {}
        for name, call in [("sample", lambda: post.sample(2_000_000_000)), ("forward", lambda: dec(Z))]:
            try:
                call()
                results[name] = "returned"
            except MemoryError as err:
                results[name] = str(err)
        print(json.dumps(results))
    """, timeout=120)
    assert "2000000000 samples" in out["sample"], out
    assert "the outputs of 3000000 points" in out["forward"], out


def test_an_enumeration_that_cannot_fit_is_refused_with_a_memory_error():
    # 256 MB of address space beyond what the process maps: [2, 1000, 1000, 10] has millions
    # of regions of ~25 kB each while enumerated; it is refused (MemoryError naming the regions,
    # ~10,000 regions in: seconds) before the allocator would fail and abort the process.
    out = run_child("""
        import json, resource, time
        import exactem
        dec = exactem.Decoder.random([2, 1000, 1000, 10], seed=0)
        exactem.Decoder.random([2, 4, 2], seed=0).regions()  # starts the worker threads before the cap
        with open("/proc/self/status") as status:
            mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (mapped + (1 << 28), resource.RLIM_INFINITY))
        start = time.perf_counter()
        try:
            dec.regions(max_regions=10**9)
            outcome = "returned"
        except exactem.RegionLimitError:
            outcome = "region limit"
        except MemoryError as err:
            outcome = str(err)
        print(json.dumps({"outcome": outcome, "seconds": time.perf_counter() - start}))
    """, timeout=300)
    assert "regions enumerated so far" in out["outcome"], out
    print(out)
