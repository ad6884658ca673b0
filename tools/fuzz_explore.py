"""Explores the ranges of tests/test_fuzz.py beyond the ones it asserts, and counts the failures by
kind, with one model per kind to reproduce it. For widening the test's RANGES once the engine
handles more.

    PYTHONPATH=python python tools/fuzz_explore.py --latent 2 --noise -12 12 --scales -3 3 --outliers 1 6 -n 300
"""

import argparse
import collections
import sys
import traceback
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import test_fuzz as tf  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latent", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--noise", type=float, nargs=2, default=(-12.0, 12.0), help="log10 range of the noise variance")
    parser.add_argument("--scales", type=float, nargs=2, default=(-3.0, 3.0), help="log10 range of the weight scales")
    parser.add_argument("--outliers", type=float, nargs=2, default=(1.0, 6.0), help="log10 range of the outliers' distance")
    parser.add_argument("-n", type=int, default=200, help="models to try")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    tf.note = lambda *a: None

    @st.composite
    def case(draw):
        model = draw(tf.models(latent_dims=tuple(args.latent), noise_exponents=tuple(args.noise), scales=tuple(args.scales)))
        return model, draw(tf.data_for(model, outliers=tuple(args.outliers), max_rows=3))

    counts, examples = collections.Counter(), {}
    for _ in range(args.n):
        model, X = case().example()
        try:
            if tf.documented(lambda: model.regions) is not None:
                tf.check_model_on(model, X)
            counts["ok (or refused with a documented exception)"] += 1
        except Exception as err:  # every other outcome is a finding, InternalError included
            line = [frame.lineno for frame in traceback.extract_tb(err.__traceback__) if "test_fuzz" in frame.filename][-1]
            kind = f"{type(err).__name__} at test_fuzz.py:{line}: {str(err).splitlines()[0][:100]}"
            counts[kind] += 1
            examples.setdefault(kind, f"{tf.describe(model)}\nX = {X.tolist()!r}")
    for kind, count in counts.most_common():
        print(f"{count:6d}  {kind}")
    for kind, example in examples.items():
        print(f"\n== {kind}\n{example}")


if __name__ == "__main__":
    main()
