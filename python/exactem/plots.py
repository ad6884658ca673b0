"""Pictures of partitions and models (matplotlib, imported lazily)."""

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_partition(partition, ax=None, extent=4.0, resolution=500, seed=0):
    """Draw the regions of a 2-D latent space on ``[-extent, extent]^2``.

    Each region gets a random colour; black dots are the regions' interior points.
    """
    if partition.latent_dim != 2:
        raise ValueError(f"plot_partition draws 2-D latent spaces; this partition is in R^{partition.latent_dim}")
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    grid = np.linspace(-extent, extent, resolution)
    zz = np.stack(np.meshgrid(grid, grid), axis=-1).reshape(-1, 2)
    labels = partition.locate(zz).reshape(resolution, resolution)
    colours = np.random.default_rng(seed).uniform(0.25, 1.0, size=(len(partition), 3))
    ax.imshow(colours[labels], origin="lower", extent=(-extent, extent, -extent, extent), interpolation="nearest")
    # Region boundaries: where the label changes between neighbouring pixels.
    edge = np.zeros_like(labels, dtype=bool)
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    ax.imshow(np.where(edge[..., None], 0.0, np.nan) * np.ones(3), origin="lower",
              extent=(-extent, extent, -extent, extent), interpolation="nearest")
    pts = partition.interior_points
    inside = np.all(np.abs(pts) <= extent, axis=1)
    ax.plot(pts[inside, 0], pts[inside, 1], "k.", markersize=1.5)
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_title(f"{len(partition)} regions of {partition.decoder.widths}")
    return ax
