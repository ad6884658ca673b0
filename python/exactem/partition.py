"""The partition of latent space into the regions on which the decoder is affine."""

import numpy as np

from ._validation import as_points


def _read_only(value):
    """A read-only copy of a cached array (or of the arrays of a cached tuple). The copy owns
    its memory, so views of it cannot be made writable again (the engine's arrays are owned by
    a Python object that numpy would let a view write through)."""
    if isinstance(value, np.ndarray):
        value = np.array(value, copy=True)
        value.setflags(write=False)
        return value
    if isinstance(value, tuple):
        return tuple(_read_only(item) for item in value)
    return value


def _view(value):
    """A view of a read-only cached array: the caller cannot make it writable (a view's flag
    cannot be set while its base is read-only), so the cache stays what it was computed as."""
    if isinstance(value, np.ndarray):
        return value.view()
    if isinstance(value, tuple):
        return tuple(_view(item) for item in value)
    return value


class Partition:
    """Every full-dimensional region of a decoder's partition of R^S, in a deterministic order.

    Inside region ``q`` the decoder is ``g(z) = A[q] @ z + b[q]``, and the region is
    ``{z : G z <= h}`` for ``G, h = facets(q)``. Obtain one from :meth:`Decoder.regions`.
    Arrays it returns are read-only views of values computed once and cached.

    Parameters
    ----------
    core : exactem._core.PartitionCore
        The engine's partition (built by :meth:`Decoder.regions`).
    decoder : Decoder
        The decoder it partitions.

    Attributes
    ----------
    decoder : Decoder
        The decoder.
    A : ndarray of shape (R, D, S)
        The decoder's linear part in each region.
    b : ndarray of shape (R, D)
        The decoder's offset in each region.
    patterns : ndarray of shape (R, H), bool
        Each region's activation pattern.
    interior_points : ndarray of shape (R, S)
        A point strictly inside each region.
    bounded : ndarray of shape (R,), bool
        Whether each region is bounded.

    Examples
    --------
    >>> import numpy as np
    >>> import exactem
    >>> part = exactem.Decoder.random([2, 8, 3], seed=0).regions()
    >>> part
    Partition(37 regions of R^2)
    >>> G, h = part.facets(0)
    >>> bool(np.all(G @ part.interior_points[0] < h))
    True
    """

    def __init__(self, core, decoder):
        self._core = core
        self.decoder = decoder
        self._cache = {}

    def __getstate__(self):
        # The engine's partition is not picklable; the decoder defines it. Enumeration is
        # deterministic, so re-enumerating on load gives the same regions in the same order.
        return {"decoder": self.decoder, "n_regions": len(self)}

    def __setstate__(self, state):
        rebuilt = state["decoder"].regions(max_regions=max(state["n_regions"], 1))
        self.__init__(rebuilt._core, state["decoder"])

    def _cached(self, key, compute):
        if key not in self._cache:
            self._cache[key] = _read_only(compute())
        return _view(self._cache[key])

    def __len__(self):
        return len(self._core)

    @property
    def latent_dim(self):
        """int: the latent dimension S."""
        return self.decoder.latent_dim

    @property
    def patterns(self):
        """(R, H) bool: each region's activation pattern (True where the unit is on)."""
        return self._cached("patterns", self._core.patterns)

    def _maps(self):
        return self._cached("maps", self._core.maps)

    @property
    def A(self):
        """(R, D, S): the decoder's linear part in each region."""
        return self._maps()[0]

    @property
    def b(self):
        """(R, D): the decoder's offset in each region."""
        return self._maps()[1]

    @property
    def interior_points(self):
        """(R, S): a point strictly inside each region."""
        return self._cached("interior", self._core.interior_points)

    @property
    def bounded(self):
        """(R,) bool: whether each region is bounded."""
        return self._cached("bounded", self._core.bounded)

    def _facet_data(self, i):
        return self._cached(("facets", int(i)), lambda: self._core.facets(int(i)))

    def facets(self, i):
        """The non-redundant inequalities of region ``i``.

        Parameters
        ----------
        i : int
            Region index, ``0 <= i < len(self)``.

        Returns
        -------
        G : ndarray of shape (m, S)
            Unit-length rows: region ``i`` is ``{z : G z <= h}``.
        h : ndarray of shape (m,)
            Offsets.
        """
        G, h, _, _ = self._facet_data(i)
        return G, h

    def facet_units(self, i):
        """The hidden unit whose zero set carries each facet of region ``i``.

        Parameters
        ----------
        i : int
            Region index.

        Returns
        -------
        units : ndarray of shape (m,)
            Hidden-unit index (counted over all hidden layers) per facet, in the order of :meth:`facets`.
        """
        return self._facet_data(i)[2]

    def facet_points(self, i):
        """A point in the relative interior of each facet of region ``i``.

        Parameters
        ----------
        i : int
            Region index.

        Returns
        -------
        points : ndarray of shape (m, S)
            One point per facet, in the order of :meth:`facets`.
        """
        return self._facet_data(i)[3]

    def neighbors(self, i):
        """The region across each facet of region ``i``.

        Parameters
        ----------
        i : int
            Region index.

        Returns
        -------
        neighbors : ndarray of shape (m,)
            Region index per facet, in the order of :meth:`facets`.
        """
        return self._core.neighbors(int(i))

    def locate(self, Z):
        """The region containing each latent point.

        Parameters
        ----------
        Z : array-like of shape (n, S)
            Latent points.

        Returns
        -------
        regions : ndarray of shape (n,)
            Region index of each point.
        """
        return self._core.locate(as_points(Z, self.latent_dim))

    def __repr__(self):
        return f"Partition({len(self)} regions of R^{self.latent_dim})"
