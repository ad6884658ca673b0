"""The partition of latent space into the regions on which the decoder is affine."""

import numpy as np

from ._validation import as_points


class Partition:
    """Every full-dimensional region of a decoder's partition of R^S, in a deterministic order.

    Inside region ``q`` the decoder is ``g(z) = A[q] @ z + b[q]``, and the region is
    ``{z : G z <= h}`` for ``G, h = facets(q)``. Obtain one from :meth:`Decoder.regions`.
    """

    def __init__(self, core, decoder):
        self._core = core
        self.decoder = decoder
        self._cache = {}

    def _cached(self, key, compute):
        if key not in self._cache:
            value = compute()
            if isinstance(value, np.ndarray):
                value.setflags(write=False)
            self._cache[key] = value
        return self._cache[key]

    def __len__(self):
        return len(self._core)

    @property
    def latent_dim(self):
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
        """``(G, h)``: the non-redundant inequalities of region i = {z : G z <= h}, rows of unit length."""
        G, h, _, _ = self._facet_data(i)
        return G, h

    def facet_units(self, i):
        """The hidden unit whose zero set carries each facet of region i."""
        return self._facet_data(i)[2]

    def facet_points(self, i):
        """A point in the relative interior of each facet of region i."""
        return self._facet_data(i)[3]

    def neighbors(self, i):
        """The region across each facet of region i, in the order of :meth:`facets`."""
        return self._core.neighbors(int(i))

    def locate(self, Z):
        """(n,) index of the region containing each latent point."""
        return self._core.locate(as_points(Z, self.latent_dim))

    def __repr__(self):
        return f"Partition({len(self)} regions of R^{self.latent_dim})"
