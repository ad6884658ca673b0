"""The E-step over row blocks ("shards") of the data, on this machine or on a Dask cluster.

Everything exact EM needs from the data is a sum over points (the per-region sums of the E-step
statistics, :class:`exactem.em.RegionStats`, and the log-likelihood), so each shard is reduced
to sums whose size depends on the number of regions, not on its rows, and the sums are added in
shard order. The same shards give the same bits whether they are computed here or on workers:
the engine's result for a point does not depend on the other points, the thread count or the
machine's scheduling, and the additions happen in one fixed order on the client. (Against an
unsharded fit the sums differ only by floating-point summation order: relative differences of
a few units in the last place per addition, ~1e-16 x number of shards.)

Dask is imported only when a client or a dask array is given.
"""

import numpy as np

from .decoder import Decoder

#: The PCA initialisation reads at most this many rows, evenly spaced: all of them below it.
INIT_ROWS = 20000


def is_dask_array(X):
    """True for a ``dask.array.Array``, without importing dask."""
    return type(X).__module__.startswith("dask.") and hasattr(X, "chunks")


def model_spec(decoder, noise_var, max_regions, rtol=1e-6, seed=0, centre=None):
    """The model as plain arrays, to send to workers (a few kilobytes for typical decoders);
    ``centre``, the origin every shard's sums are taken about (:class:`exactem.em.RegionStats`)."""
    return dict(weights=decoder.weights, biases=decoder.biases, activations=decoder.activations,
                alpha=decoder.alpha, noise_var=noise_var, max_regions=max_regions, rtol=rtol, seed=seed,
                centre=centre)


def _model_of(spec):
    from .model import DGN  # model.py imports this module

    decoder = Decoder(spec["weights"], spec["biases"], activation=spec["activations"], alpha=spec["alpha"])
    return DGN(decoder, spec["noise_var"], max_regions=spec["max_regions"], rtol=spec.get("rtol", 1e-6),
               seed=spec.get("seed", 0))


def _same(value):
    return value


def block_log_likelihood(X, spec):
    """log p(x) of one block's rows (a dask array's ``map_blocks`` function)."""
    return _model_of(spec).log_likelihood(X)


def block_e_step(X, spec):
    """The E-step of one block's rows."""
    return _model_of(spec).e_step(X)


def _check_shard(X, index, start):
    X = np.require(np.asarray(X, dtype=np.float64), requirements=["C", "A"])
    bad = np.flatnonzero(~np.all(np.isfinite(X), axis=1))
    if bad.size:
        raise ValueError(f"shard {index} (rows {start} to {start + len(X) - 1}) has NaN or infinite values, "
                         f"first in row {start + bad[0]}; remove or impute those rows")
    return X


def shard_sums(spec, X, index=0, start=0):
    """The per-region E-step sums and the summed exact log-likelihood of one shard's rows.

    Runs wherever the shard is (a Dask worker, or here); ``spec`` from :func:`model_spec`.
    Returns ``(RegionStats, sum of log p(x) over the rows)``.
    """
    from .em import RegionStats

    X = _check_shard(X, index, start)
    stats, log_likelihood = RegionStats.by_blocks(_model_of(spec), X, centre=spec["centre"])
    return stats, float(np.sum(log_likelihood))


class Shards:
    """Row blocks of the training data, and their E-step sums computed here or on a cluster.

    Parameters
    ----------
    X : ndarray or dask.array.Array of shape (n_samples, n_features)
        A dask array is split along its row chunks (which must not split the columns); a
        numpy array into ``n_shards`` blocks as ``numpy.array_split`` does.
    n_shards : int, optional
        Blocks of a numpy array (default: two per worker with a client, else one).
    client : dask.distributed.Client, optional
        Where to compute; None computes here (a dask array's blocks are then computed one at
        a time, so the data never has to fit in memory at once).
    """

    def __init__(self, X, n_shards=None, client=None):
        self.client = client
        if is_dask_array(X):
            if X.ndim != 2 or len(X.chunks[1]) != 1:
                raise ValueError(f"a dask array X must be 2-D and chunked by rows only; got chunks {X.chunks}")
            self._blocks = list(X.to_delayed().ravel())
            sizes = list(X.chunks[0])
            self._array = X
        else:
            if n_shards is None:
                n_shards = 2 * len(client.scheduler_info()["workers"]) if client is not None else 1
            X = np.asarray(X)
            n_shards = max(1, min(int(n_shards), len(X)))
            parts = np.array_split(X, n_shards)
            sizes = [len(p) for p in parts]
            self._blocks = parts
            self._array = X
        self.starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
        self.sizes = sizes
        self.n_samples = int(sum(sizes))
        self.n_features = int(X.shape[1])
        self._init_rows = None
        self._futures = None
        if client is not None:
            # Each shard lives on a worker as the result of a task: if the worker is lost, the
            # scheduler recomputes it from the task (a numpy block travels inside its task, a dask
            # block from its graph), where scattered data would be lost with the worker.
            if is_dask_array(X):
                self._futures = client.compute(self._blocks)
            else:
                self._futures = [client.submit(np.asarray, block, pure=False) for block in self._blocks]

    def __len__(self):
        return len(self.sizes)

    @property
    def centre(self):
        """The origin of every shard's sums (they are added, so it is one): the mean of
        :meth:`init_rows`, computed alike from a numpy or a dask array."""
        return self.init_rows().mean(axis=0)

    def init_rows(self, limit=INIT_ROWS):
        """At most ``limit`` evenly spaced rows, for the initialisation (all rows below it)."""
        if self._init_rows is None or len(self._init_rows) != min(limit, self.n_samples):
            self._init_rows = self._read_init_rows(limit)
        return self._init_rows

    def _read_init_rows(self, limit):
        n = self.n_samples
        idx = np.arange(n) if n <= limit else (np.arange(limit) * n) // limit
        rows = self._array[idx]
        rows = np.asarray(rows.compute() if is_dask_array(rows) else rows, dtype=np.float64)
        bad = np.flatnonzero(~np.all(np.isfinite(rows), axis=1))
        if bad.size:
            row = int(idx[bad[0]])
            shard = int(np.searchsorted(self.starts, row, side="right") - 1)
            start = int(self.starts[shard])
            raise ValueError(f"shard {shard} (rows {start} to {start + self.sizes[shard] - 1}) has NaN or infinite "
                             f"values, first in row {row}; remove or impute those rows")
        return rows

    def statistics(self, decoder, noise_var, max_regions):
        """The per-region sums over all rows and the mean exact log-likelihood, shards added in order."""
        spec = model_spec(decoder, noise_var, max_regions, centre=self.centre)
        if self.client is None:
            parts = [shard_sums(spec, block.compute() if hasattr(block, "compute") else block, i, int(start))
                     for i, (block, start) in enumerate(zip(self._blocks, self.starts))]
        else:
            # The model travels once per proposal, as a task's result: a lost worker's copy is
            # recomputed from the task (scattered data would be lost with the worker).
            spec_future = self.client.submit(_same, spec, pure=False)
            futures = [self.client.submit(shard_sums, spec_future, shard, i, int(start), pure=False)
                       for i, (shard, start) in enumerate(zip(self._futures, self.starts))]
            parts = self.client.gather(futures)
        from .em import RegionStats

        stats = RegionStats.combine([stats for stats, _ in parts])
        total = 0.0
        for _, log_likelihood in parts:
            total += log_likelihood
        return stats, total / self.n_samples

    def close(self):
        """Releases the shards held on the cluster."""
        if self._futures is not None:
            self.client.cancel(self._futures)
            self._futures = None
