"""The figure of :func:`exactem.compare.compare` (matplotlib, imported lazily)."""

import textwrap

import numpy as np

from .plots import _pyplot

_N_POSTERIOR_POINTS = 3


def _label(method):
    from .compare import _LABELS

    return _LABELS[method]


def _colour(method):
    from .compare import _COLOURS

    return _COLOURS[method]


def _by_iteration(curves, key):
    """Mean over seeds of the time and of the value at each iteration every seed reached, and the
    lowest and highest value: a mean curve that never extends a finished run, and is not blurred
    by runs that were slower or faster on the clock."""
    n = min(len(c["time"]) for c in curves)
    times = np.array([c["time"][:n] for c in curves])
    values = np.array([np.asarray(c[key][:n], dtype=float) for c in curves])
    return times.mean(axis=0), values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def _curves_panel(ax, result):
    methods, seeds = result.methods, sorted({s for _, s in result.curves})
    plotted = []
    for m in methods:
        curves = [result.curves[m, s] for s in seeds]
        for key, style, what in [("loglik", "-", "exact log-likelihood"), ("elbo", "--", "exact ELBO")]:
            if curves[0][key] is None:
                continue
            for c in curves:  # every seed, thin
                ax.step(c["time"], c[key], style, where="post", color=_colour(m),
                        lw=0.7 if len(seeds) > 1 else 1.6, alpha=0.5 if len(seeds) > 1 else 0.9)
                plotted.append(np.asarray(c[key], dtype=float))
            if len(seeds) > 1:
                t, mean, low, high = _by_iteration(curves, key)
                ax.fill_between(t, low, high, step="post", color=_colour(m), alpha=0.15 if key == "loglik" else 0.08, lw=0)
                ax.step(t, mean, style, where="post", color=_colour(m), lw=2.0,
                        label=f"{_label(m)}: held-out {what}, mean over {len(seeds)} seeds (thin: each seed)")
            else:
                ax.plot([], [], style, color=_colour(m), lw=1.5, label=f"{_label(m)}: held-out {what}")
        # The model each run returned (its best held-out iterate under early stopping), where the run ended.
        ends = [(result.curves[m, r["seed"]]["time"][-1], r["test_loglik"]) for r in result.rows if r["method"] == m]
        ax.plot(*zip(*ends), "o", color=_colour(m), mfc="white", ms=6, mew=1.5)
    ax.plot([], [], "o", color="grey", mfc="white", label="model returned (best validation iterate), at the end of its run")
    ax.set_xscale("log")
    ax.set_xlabel("training wall time (s, log scale; the exact evaluations drawn here are not counted)")
    ax.set_ylabel("held-out mean log p(x) (nats/point)")
    # Overfitting runs can fall by orders of magnitude; keep the axis on the interesting range.
    values = np.concatenate(plotted)
    values = values[np.isfinite(values)]
    top = values.max()
    floor = min(min(r["test_loglik"] for r in result.rows), np.median(values))
    span = max(top - floor, 1e-3)
    clipped = values.min() < floor - 0.6 * span
    bottom = max(values.min(), floor - 0.6 * span) - 0.05 * span
    ax.set_ylim(bottom, top + 0.08 * span)
    # Start the time axis where the first visible iterate is, not at cut-off early ones.
    visible = [t for c in result.curves.values() for t, v in zip(c["time"], c["loglik"]) if v >= bottom and t > 0]
    times = [t for c in result.curves.values() for t in c["time"] if t > 0]
    if visible:
        ax.set_xlim(min(visible) / 1.3, max(times) * 1.3)
    spread = ("; thick: mean over seeds at each iteration all seeds reached, at their mean time; band: lowest to "
              "highest seed" if len(seeds) > 1 else "")
    title = (f"(a) held-out exact log-likelihood of every iterate against training time{spread}"
             + ("; lower values cut off" if clipped else ""))
    ax.set_title("\n".join(textwrap.wrap(title, 120) + textwrap.wrap(result.verdict(), 120)), fontsize=9.5)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)


def _median_seed(result, method):
    """The seed of the method's run with the median held-out log-likelihood (the lower middle one
    for an even count): the run drawn in panels (b) and (c), neither the best nor the worst."""
    rows = sorted((r for r in result.rows if r["method"] == method), key=lambda r: r["test_loglik"])
    return rows[(len(rows) - 1) // 2]["seed"]


def _which_run(result, seed):
    n_seeds = len({s for _, s in result.curves})
    return f"seed {seed}" + (f", the median of {n_seeds} seeds" if n_seeds > 2 else "")


def _sample_panels(fig, axes, result):
    D = result.X.shape[1]
    if D == 64:  # 8x8 images (digits)
        for ax, m in zip(axes, result.methods):
            seed = _median_seed(result, m)
            samples, _ = result.estimators[m, seed].sample(36, random_state=seed)
            # Ink dark on white, as the digits are drawn; images framed in light blue.
            mosaic = np.empty((6 * 9 + 1, 6 * 9 + 1, 3))
            mosaic[:] = (0.75, 0.85, 1.0)
            for k, img in enumerate(samples):
                r, c = divmod(k, 6)
                ink = 1.0 - np.clip(img.reshape(8, 8), 0, 1)
                mosaic[1 + 9 * r:9 + 9 * r, 1 + 9 * c:9 + 9 * c] = ink[:, :, None]
            ax.imshow(mosaic, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"(b) {_label(m)}: 36 sampled 8x8 images\n(pixels clipped to [0, 1]; {_which_run(result, seed)})",
                         fontsize=9)
        return
    lo, hi = result.X.min(axis=0), result.X.max(axis=0)
    pad = 0.2 * (hi - lo)
    for ax, m in zip(axes, result.methods):
        seed = _median_seed(result, m)
        X = result.X[result.splits[seed][0]]
        n = min(len(X), 1000)
        samples, _ = result.estimators[m, seed].sample(n, random_state=seed)
        if D == 1:
            bins = np.linspace(lo[0] - pad[0], hi[0] + pad[0], 40)
            ax.hist(X[:, 0], bins=bins, density=True, color="0.6", alpha=0.7, label=f"training data ({len(X)})")
            ax.hist(samples[:, 0], bins=bins, density=True, histtype="step", color=_colour(m), lw=1.5,
                    label=f"{n} model samples")
            ax.set_xlabel("$x$")
            ax.set_ylabel("density")
        else:
            ax.plot(X[:, 0], X[:, 1], ".", color="0.55", ms=2.5, alpha=0.6, label=f"training data ({len(X)} points)")
            ax.plot(samples[:, 0], samples[:, 1], ".", color=_colour(m), ms=2.5, alpha=0.6, label=f"{n} model samples")
            ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
            ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
            ax.set_xlabel("$x_1$")
            ax.set_ylabel("$x_2$")
        where = f"first two of {D} coordinates, " if D > 2 else ""
        ax.set_title(f"(b) {_label(m)}: samples against the training data\n({where}{_which_run(result, seed)})", fontsize=9)
        ax.legend(fontsize=7, loc="best", markerscale=3)


def _posterior_panels(axes, result):
    from .compare import _ENCODER_METHODS

    # The same points in every panel if enough rows are held out under every seed's split.
    common = np.arange(len(result.X))
    for _, test in result.splits.values():
        common = np.intersect1d(common, test)
    shades = ["tab:orange", "tab:cyan", "tab:olive"]
    for ax, m in zip(axes, result.methods):
        seed = _median_seed(result, m)
        rows = common if len(common) >= _N_POSTERIOR_POINTS else result.splits[seed][1]
        chosen = rows[np.linspace(0, len(rows) - 1, _N_POSTERIOR_POINTS).astype(int)]
        points = result.X[chosen]
        est = result.estimators[m, seed]
        posts = [est.model_.posterior(x) for x in points]
        centre = np.array([p.mean[0] for p in posts])
        width = np.array([np.sqrt(max(p.cov[0, 0], 1e-12)) for p in posts])
        encoder = m in _ENCODER_METHODS
        if encoder:
            q_mean, q_var = (np.asarray(a, dtype=float) for a in est.encoder_(points))
            lo = min((centre - 5 * width).min(), (q_mean[:, 0] - 5 * np.sqrt(q_var[:, 0])).min())
            hi = max((centre + 5 * width).max(), (q_mean[:, 0] + 5 * np.sqrt(q_var[:, 0])).max())
        else:
            lo, hi = (centre - 5 * width).min(), (centre + 5 * width).max()
        # A fine grid around each posterior too: some are a thousand times narrower than the range.
        z = np.unique(np.concatenate([np.linspace(lo, hi, 1500)]
                                     + [np.linspace(c - 6 * w, c + 6 * w, 400) for c, w in zip(centre, width)]))
        for k, (x, post) in enumerate(zip(points, posts)):
            which = f"x = ({', '.join(f'{v:.2f}' for v in x)})" if len(x) <= 2 else f"x = row {chosen[k]} of the data"
            ax.plot(z, post.pdf(z[:, None]), "-", color=shades[k], lw=1.6, label=f"exact p(z|x), {which}")
            if encoder:
                q = np.exp(-0.5 * (z - q_mean[k, 0]) ** 2 / q_var[k, 0]) / np.sqrt(2 * np.pi * q_var[k, 0])
                ax.plot(z, q, "--", color=shades[k], lw=1.4,
                        label="dashed: the encoder's Gaussian q(z|x)" if k == len(points) - 1 else None)
        ax.set_xlabel("latent $z$")
        ax.set_ylabel("density (1/unit of z)")
        what = "exact posterior (solid) against the encoder's q (dashed)" if encoder else "exact posterior (no encoder)"
        ax.set_title(f"(c) {_label(m)}: {what}\nof {_N_POSTERIOR_POINTS} held-out points ({_which_run(result, seed)})",
                     fontsize=9)
        ax.legend(fontsize=6.5, loc="upper right")


def comparison_figure(result):
    plt = _pyplot()
    methods = result.methods
    n_cols = max(len(methods), 2)
    with_posteriors = result.settings["latent_dim"] == 1
    n_rows = 3 if with_posteriors else 2
    fig = plt.figure(figsize=(max(5.2 * n_cols, 12), 5.6 + 4.2 * (n_rows - 1)), layout="constrained")
    grid = fig.add_gridspec(n_rows, n_cols, height_ratios=[1.25] + [1.0] * (n_rows - 1))
    _curves_panel(fig.add_subplot(grid[0, :]), result)
    _sample_panels(fig, [fig.add_subplot(grid[1, j]) for j in range(len(methods))], result)
    if with_posteriors:
        _posterior_panels([fig.add_subplot(grid[2, j]) for j in range(len(methods))], result)
    s = result.settings
    first = result.rows[0]
    n_seeds = len(set(r["seed"] for r in result.rows))
    fig.suptitle(f"{', '.join(_label(m) for m in methods)} on {s['data']}: the same decoder {s['widths']} "
                 f"({s['activation']}), {s['noise']} noise\n{first['n_train']} training / {first['n_test']} held-out "
                 f"points, {n_seeds} seed{'s' if n_seeds > 1 else ''}, early stopping on "
                 f"{s['validation_fraction']:.0%} of the training part; all log-likelihoods exact", fontsize=11)
    return fig
