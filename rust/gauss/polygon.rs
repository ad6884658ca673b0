//! S = 2: the mass and moments of `N(mu, Sigma_q)` on a convex polygon, to near machine
//! precision and tail-safe.
//!
//! In whitened coordinates `w = L^{-1}(z - mu)` the region is a polygon `{w : f_i . w <= e_i}`
//! under the standard normal, and moving `mu` only translates it, so its combinatorics (edge
//! order, vertices at `mu = 0`) are prepared once per region. The mass is a one-dimensional
//! integral `int phi(x) (Phi(U(x)) - Phi(L(x))) dx` along the direction of the polygon's point
//! nearest the origin; `U` and `L` are linear between vertices, so the integrand is analytic on
//! each piece and Gauss-Legendre converges geometrically. It is evaluated in log space, so a
//! polygon 40 standard deviations away (mass ~1e-350) keeps its relative accuracy. The moments
//! come from the divergence theorem (docs/design.md §4): each edge contributes one-dimensional
//! normal masses in closed form.

use super::normal::{
    gauss_legendre, log_diff_ndtr, truncated_normal_central, GL12_HALF, GL20_HALF, GL8_HALF, GL_NODES, GL_WEIGHTS,
    LN_SQRT_2PI,
};
use super::normal_batch::{exp_or_zero, with_wide_vectors, MulAdd, VectorKernel};
use super::polygon_series::PolygonSeries;
use crate::linalg::dot2 as dot;
use std::sync::OnceLock;

#[inline]
fn log_pdf(x: f64) -> f64 {
    -0.5 * x * x - LN_SQRT_2PI
}

#[inline]
fn rot90(v: [f64; 2]) -> [f64; 2] {
    [-v[1], v[0]]
}

/// Length of a point in whitened units (far from overflow, so without `hypot`'s slow care).
#[inline]
fn norm2(p: [f64; 2]) -> f64 {
    dot(p, p).sqrt()
}

/// Angular gaps at least this close to pi mean the polygon is open between two edges. Two
/// antiparallel edges (the open end of a strip) have a gap of pi up to rounding in either
/// direction; a gap short of pi by 1e-7 puts the vertex ~1e7 standard deviations out, where
/// treating the end as open changes no mass.
const OPEN_GAP: f64 = std::f64::consts::PI - 1e-7;

/// Where the closed forms cannot decide, polygons at least this far from the mean (whitened
/// units) go to the latent frame's fan (`polygon_latent.rs`) before the whitened quadrature.
const LATENT_FIRST_DISTANCE: f64 = 100.0;

/// A polygon's mean from its edges' fluxes is used where the fluxes' sizes sum to at most this
/// many times the mean's scale `|mean| + 1`: each flux carries ~1e-14 of itself (the fan's
/// accuracy, [`FLUX_ACCURACY`] with a margin), so the mean keeps ~1e-10 of its scale.
const MAX_FLUX_CANCELLATION: f64 = 1e3;

/// The relative accuracy of each edge flux the fan gives, with a margin of ten.
const FLUX_ACCURACY: f64 = 1e-13;

/// The fan formula is kept when its estimated relative error (its terms' errors over the
/// mass they cancel down to) is at most this, or the accuracy asked if looser; otherwise the
/// quadrature decides. Ordinary polygons estimate 1e-15 to 1e-12; small polygons far from the
/// mean, whose terms cancel a thousandfold, more.
const FAN_MAX_ERROR: f64 = 1e-10;

/// Two integrals along an edge at distance `h > 0` from the mean, over `y` in `[a, b]` from the
/// foot point, of `g(y) = exp(-(h^2 + y^2 - d^2) / 2)`: `[(h / 2 pi) int g / (h^2 + y^2),
/// int g]`. The first is the part of a fan triangle's mass that the Gaussian removes, the second
/// the edge's Gaussian flux (the divergence theorem's term of the moments). Every point of the
/// edge is at least `d` from the mean, so the exponent is at most 0: the scaling by `e^{d^2/2}`
/// keeps edges far from the mean at their relative accuracy. `g` is even, with Gaussian tails;
/// the first integrand also has a peak of width `h` at `y = 0`.
fn scaled_edge_integrals(h: f64, a: f64, b: f64, d: f64, accuracy: &EdgeAccuracy) -> [f64; 2] {
    let reach = edge_reach(a, b);
    let (a, b) = (a.max(-reach), b.min(reach));
    if a >= b {
        return [0.0, 0.0];
    }
    let shift = 0.5 * (d * d - h * h);
    let [lorentz, gauss] = if a >= 0.0 {
        edge_integrals_positive(h, a, b, shift, accuracy)
    } else if b <= 0.0 {
        edge_integrals_positive(h, -b, -a, shift, accuracy)
    } else {
        // The foot inside the edge: the integrands are even, so [0, min(-a, b)] counts twice.
        let (near, far) = if -a < b { (-a, b) } else { (b, -a) };
        let both = edge_integrals_positive(h, 0.0, near, shift, accuracy);
        let rest = if far > near { edge_integrals_positive(h, near, far, shift, accuracy) } else { [0.0, 0.0] };
        [2.0 * both[0] + rest[0], 2.0 * both[1] + rest[1]]
    };
    [h / std::f64::consts::TAU * lorentz, gauss]
}

/// How far from the foot an edge `[a, b]` counts: beyond where the Gaussian factor has fallen
/// by e^-40 from its value at the edge's point nearest the foot, nothing does (an end out there,
/// such as a vertex thousands of deviations away, neither adds to the integrals nor, rounded,
/// moves them).
#[inline]
fn edge_reach(a: f64, b: f64) -> f64 {
    let nearest = if a > 0.0 {
        a
    } else if b < 0.0 {
        -b
    } else {
        0.0
    };
    (nearest * nearest + 80.0).sqrt()
}

/// Near the foot (`h^2 + y^2` below this) the pole of the Lorentzian is taken out in closed
/// form; beyond, the pole-free rest `(e^{-u/2} - 1) / u` would cancel the closed form by more
/// than `2 e^{2.25} - 1 ~ 18`.
const POLE_FREE_RADIUS2: f64 = 4.5;

/// `[int g / (h^2 + y^2), int g]` over `[lo, hi]`, `0 <= lo < hi`, `g = exp(shift - y^2 / 2)`.
/// Near the foot, `g / (h^2 + y^2) = e^{shift + h^2/2} (1 / u + (e^{-u/2} - 1) / u)` with
/// `u = h^2 + y^2`: the first term integrates to an arctangent and the second is entire, so no
/// pole limits the quadrature however small `h` is. Beyond, Gauss-Legendre runs on segments
/// cut at `h, 4h, 16h, ...`, which keep the poles at `+-ih` at a distance from each segment
/// (relative to its length) where 20 points still converge to rounding. The rules are chosen
/// for the first integrand; the second, without the poles, is at least as smooth.
fn edge_integrals_positive(h: f64, lo: f64, hi: f64, shift: f64, accuracy: &EdgeAccuracy) -> [f64; 2] {
    let h2 = h * h;
    let mut total = [0.0, 0.0];
    let mut lo = lo;
    // Where the pole leaves the first segment of the cuts below only the 20-point rule (the
    // pole-free form costs an arctangent, and expm1 is dearer than exp); shift + h^2 / 2 =
    // d^2 / 2 keeps the scale finite.
    let first_end = if lo < h { h.min(hi) } else { hi };
    if h2 + lo * lo < POLE_FREE_RADIUS2 && shift + 0.5 * h2 < 600.0 && pole_axis(h2, lo, first_end) < accuracy.gl12[2] {
        let end = (POLE_FREE_RADIUS2 - h2).sqrt().min(hi);
        let scale = (shift + 0.5 * h2).exp();
        // atan(end / h) - atan(lo / h), without cancellation when both are near pi / 2.
        let pole = ((end - lo) * h).atan2(h2 + lo * end) / h;
        let [rest, gauss] = segment_integral(
            lo,
            end,
            0.5 * (end * end - lo * lo),
            f64::INFINITY,
            EdgeIntegrand::PoleFree { h2 },
            accuracy,
        );
        total = [scale * (pole + rest), scale * gauss];
        lo = end;
        if lo >= hi {
            return total;
        }
    }
    let mut cut = h;
    while cut <= lo {
        cut *= 4.0;
    }
    // The pole's distance to each end, shared by the segments on either side of it.
    let (mut start, mut to_start) = (lo, (h2 + lo * lo).sqrt());
    while start < hi {
        let end = cut.min(hi);
        let to_end = (h2 + end * end).sqrt();
        // How much the log integrand changes (the Lorentzian's `ln r`, `r` the ratio of the
        // squared distances, bounded by `(r - 1) / sqrt(r)`: a square root is cheaper than a
        // logarithm, and too large a change only costs points).
        let change = (end * end - start * start) * (0.5 + 1.0 / (to_end * to_start));
        let axis = (to_end + to_start) / (end - start);
        let segment = segment_integral(start, end, change, axis, EdgeIntegrand::Plain { h2, shift }, accuracy);
        total = [total[0] + segment[0], total[1] + segment[1]];
        (start, to_start) = (end, to_end);
        cut *= 4.0;
    }
    total
}

/// The semi-major axis of the Bernstein ellipse of `[lo, hi]` through the pole `i sqrt(h2)`:
/// the sum of the pole's distances to the ends over the segment's length. The ellipse's
/// `rho = axis + sqrt(axis^2 - 1)` grows with it, so the rules' limits are kept as axes.
fn pole_axis(h2: f64, lo: f64, hi: f64) -> f64 {
    ((h2 + hi * hi).sqrt() + (h2 + lo * lo).sqrt()) / (hi - lo)
}

/// The semi-major axis of the Bernstein ellipse `rho` (see [`pole_axis`]).
const fn axis_of_ellipse(rho: f64) -> f64 {
    0.5 * (rho + 1.0 / rho)
}

/// The Gauss-Legendre rules fit for the edge integrals at one relative accuracy. Three things
/// limit n-point Gauss-Legendre on a segment: how much the log integrand changes over it (`c`:
/// `e^{c x / 2}` on [-1, 1] is integrated to `~(c/2)^{2n} (n!)^4 2^{2n+1} / ((2n+1) (2n)!^3)`
/// relative), the curvature of the Gaussian over the half-width `L` (`e^{-L^2 x^2 / 2}`:
/// `~(e L^2 / 8n)^n`, from its growth on Bernstein ellipses) and the poles at `+-ih`
/// (`~rho^{-2n}`, `rho` the ellipse through the pole). Each limit below meets 1/100 of `rtol`.
pub(crate) struct EdgeAccuracy {
    rtol: f64,
    /// Largest `c`, largest `L`, smallest axis of `rho` (see [`axis_of_ellipse`]) for 8 and
    /// for 12 points.
    gl8: [f64; 3],
    gl12: [f64; 3],
    /// Largest `c` and `L` of each piece for 20 points (`rho >= 3.4` holds between the cuts).
    gl20: [f64; 2],
}

/// From the tightest: the loosest level whose `rtol` is at most a tenth of what is asked is
/// used, so that a fan whose terms cancel tenfold still meets the request.
const EDGE_ACCURACY: [EdgeAccuracy; 3] = [
    EdgeAccuracy {
        rtol: 1e-16,
        gl8: [1.8, 0.36, axis_of_ellipse(13.4)],
        gl12: [5.9, 1.05, axis_of_ellipse(5.7)],
        gl20: [17.0, 2.7],
    },
    EdgeAccuracy {
        rtol: 1e-12,
        gl8: [3.0, 0.64, axis_of_ellipse(7.5)],
        gl12: [8.2, 1.55, axis_of_ellipse(3.9)],
        gl20: [21.0, 3.4],
    },
    EdgeAccuracy {
        rtol: 1e-8,
        gl8: [5.1, 1.15, axis_of_ellipse(4.3)],
        gl12: [11.3, 2.27, axis_of_ellipse(2.7)],
        gl20: [25.0, 4.3],
    },
];

/// The integrands of an edge's two integrals (see [`edge_integrals_positive`]) at `y`.
#[derive(Clone, Copy)]
enum EdgeIntegrand {
    /// `[g / (h^2 + y^2), g]`, `g = exp(shift - y^2 / 2) <= 1`.
    Plain { h2: f64, shift: f64 },
    /// `[(e^{-u/2} - 1) / u, e^{-u/2}]`, `u = h^2 + y^2`: the pole-free rest near the foot.
    PoleFree { h2: f64 },
}

impl EdgeIntegrand {
    /// Both integrals over `[centre - half, centre + half]` by the symmetric rule given by its
    /// positive nodes.
    #[inline]
    fn integrate<const K: usize>(self, rule: &[(f64, f64); K], centre: f64, half: f64) -> [f64; 2] {
        match self {
            EdgeIntegrand::Plain { h2, shift } => with_wide_vectors(PlainEdgeRule { rule, centre, half, h2, shift }),
            EdgeIntegrand::PoleFree { h2 } => gauss_legendre(rule, centre, half, |y| {
                let u = h2 + y * y;
                let m = (-0.5 * u).exp_m1();
                [m / u, m + 1.0]
            }),
        }
    }
}

/// [`EdgeIntegrand::Plain`] under one rule, the nodes' exponentials and quotients side by side
/// in vectors: the E-step of a two-dimensional latent space integrates millions of edges, and
/// one `exp` and one division at a time took a third of its time.
struct PlainEdgeRule<'a, const K: usize> {
    rule: &'a [(f64, f64); K],
    centre: f64,
    half: f64,
    h2: f64,
    shift: f64,
}

impl<const K: usize> VectorKernel for PlainEdgeRule<'_, K> {
    type Output = [f64; 2];

    #[inline(always)]
    fn run<M: MulAdd>(self) -> [f64; 2] {
        let PlainEdgeRule { rule, centre, half, h2, shift } = self;
        let (mut lorentz, mut gauss) = ([0.0; K], [0.0; K]);
        for k in 0..K {
            let (x, w) = rule[k];
            let (left, right) = (M::mul_add(-half, x, centre), M::mul_add(half, x, centre));
            let (g_left, g_right) = (
                exp_or_zero::<M>(M::mul_add(-0.5 * left, left, shift)),
                exp_or_zero::<M>(M::mul_add(-0.5 * right, right, shift)),
            );
            lorentz[k] = w * (g_left / M::mul_add(left, left, h2) + g_right / M::mul_add(right, right, h2));
            gauss[k] = w * (g_left + g_right);
        }
        let mut sum = [0.0, 0.0];
        for k in 0..K {
            sum = [sum[0] + lorentz[k], sum[1] + gauss[k]];
        }
        [half * sum[0], half * sum[1]]
    }
}

/// One segment `[lo, hi]` of the edge integrals, over which the log integrand changes by
/// `change` and whose nearest singularity lies on the Bernstein ellipse of semi-major axis
/// `axis`, with as few points as that allows at the accuracy asked (each costs an `exp`, and
/// the E-step integrates millions of edges).
fn segment_integral(
    lo: f64,
    hi: f64,
    change: f64,
    axis: f64,
    integrand: EdgeIntegrand,
    accuracy: &EdgeAccuracy,
) -> [f64; 2] {
    let (centre, half) = (0.5 * (lo + hi), 0.5 * (hi - lo));
    let fits = |[c, l, a]: [f64; 3]| change <= c && half <= l && axis >= a;
    if fits(accuracy.gl8) {
        return integrand.integrate(&GL8_HALF, centre, half);
    }
    if fits(accuracy.gl12) {
        return integrand.integrate(&GL12_HALF, centre, half);
    }
    let [max_change, max_half] = accuracy.gl20;
    let pieces = (change / max_change).max(half / max_half).ceil().max(1.0) as usize;
    let width = (hi - lo) / pieces as f64;
    let mut total = [0.0, 0.0];
    for p in 0..pieces {
        let centre = lo + (p as f64 + 0.5) * width;
        let piece = integrand.integrate(&GL20_HALF, centre, 0.5 * width);
        total = [total[0] + piece[0], total[1] + piece[1]];
    }
    total
}

/// The integrand is dropped where it is this many nats below its largest value.
const NEGLIGIBLE: f64 = 50.0;

/// The rows of `{w : g_i . w <= e_i}` (unit rows) that have an edge of positive length, in
/// order; of two coinciding rows the first. `None` when the polygon is empty or has no
/// interior (two opposite rows on one line, or no edge left of at least one row). An edge is
/// what remains of row i's line under the other rows, so this is exact and O(m^2).
pub fn non_redundant(g: &[[f64; 2]], e: &[f64]) -> Option<Vec<usize>> {
    let mut kept = Vec::new();
    'rows: for (i, gi) in g.iter().enumerate() {
        let along = rot90(*gi);
        let foot = [e[i] * gi[0], e[i] * gi[1]];
        let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
        for (j, gj) in g.iter().enumerate() {
            if j == i {
                continue;
            }
            let rate = dot(*gj, along);
            let slack = e[j] - dot(*gj, foot);
            let tol = 1e-12 * (1.0 + e[j].abs() + e[i].abs());
            if rate.abs() <= 1e-12 {
                let same_way = dot(*gj, *gi) > 0.0;
                if !same_way && slack.abs() <= tol {
                    return None;
                }
                if slack < -tol || (slack <= tol && same_way && j < i) {
                    continue 'rows;
                }
                continue;
            }
            if rate > 0.0 {
                hi = hi.min(slack / rate);
            } else {
                lo = lo.max(slack / rate);
            }
        }
        let scale = if lo.is_finite() && hi.is_finite() { 1.0 + lo.abs().max(hi.abs()) } else { 1.0 };
        if hi - lo > 1e-12 * scale {
            kept.push(i);
        }
    }
    (!kept.is_empty() || g.is_empty()).then_some(kept)
}

#[derive(Clone, Debug)]
pub struct Polygon2 {
    /// The constraints `g_i . z <= h_i` divided by `scale_i = |g_i L|`, so that the whitened
    /// offset for a mean `mu` is `e_i = h_i / scale_i - (g_i / scale_i) . mu`, and the unit
    /// normals `f_i = (g_i L) / scale_i`.
    g_scaled: Vec<[f64; 2]>,
    h_scaled: Vec<f64>,
    f: Vec<[f64; 2]>,
    /// Lower Cholesky factor of Sigma_q, row-major.
    l: [f64; 4],
    /// Edges in counter-clockwise order (increasing angle of the outward normal).
    order: Vec<usize>,
    /// `open[k]`: no vertex between edges `order[k]` and `order[k+1]` (the polygon is unbounded there).
    open: Vec<bool>,
    /// `1 / (f_a x f_b)` for the edges `a = order[k]`, `b = order[k+1]` meeting at vertex `k`.
    inverse_det: Vec<f64>,
    /// The power series of a small bounded polygon, for callers that integrate it against
    /// many means ([`Self::enable_series`]): built at its first use (`None` inside where the
    /// polygon is too large or unbounded for one).
    series: Option<OnceLock<Option<PolygonSeries>>>,
    /// `vertex(k)` for the mean 0 (whitened).
    vertices_at_zero: Vec<Option<[f64; 2]>>,
}

/// The polygon for one mean: offsets and vertices in whitened coordinates.
struct Placed<'a> {
    poly: &'a Polygon2,
    e: Vec<f64>,
    /// `vertex[k]`: between edges `order[k]` and `order[k+1]`, `None` where open.
    vertex: Vec<Option<[f64; 2]>>,
}

impl Polygon2 {
    /// `g` rows of unit length (any orientation), `h` offsets, `l` the Cholesky factor of Sigma.
    pub fn new(g: Vec<[f64; 2]>, h: Vec<f64>, l: [f64; 4]) -> Self {
        let m = g.len();
        let mut f = Vec::with_capacity(m);
        let mut g_scaled = Vec::with_capacity(m);
        let mut h_scaled = Vec::with_capacity(m);
        for (gi, hi) in g.iter().zip(&h) {
            // (g L)_j = sum_k g_k L_kj
            let r = [gi[0] * l[0] + gi[1] * l[2], gi[0] * l[1] + gi[1] * l[3]];
            let s = r[0].hypot(r[1]);
            f.push([r[0] / s, r[1] / s]);
            g_scaled.push([gi[0] / s, gi[1] / s]);
            h_scaled.push(hi / s);
        }
        let angles: Vec<f64> = f.iter().map(|fi| fi[1].atan2(fi[0])).collect();
        let angle = |i: usize| angles[i];
        let mut order: Vec<usize> = (0..m).collect();
        order.sort_by(|&a, &b| angle(a).total_cmp(&angle(b)));
        let open = (0..m)
            .map(|k| {
                if m < 2 {
                    return true;
                }
                let (a, b) = (angle(order[k]), angle(order[(k + 1) % m]));
                let mut gap = b - a;
                if gap <= 0.0 {
                    gap += std::f64::consts::TAU;
                }
                gap >= OPEN_GAP
            })
            .collect();
        let inverse_det = (0..m)
            .map(|k| {
                let (fa, fb) = (f[order[k]], f[order[(k + 1) % m]]);
                1.0 / (fa[0] * fb[1] - fa[1] * fb[0])
            })
            .collect();
        let mut poly =
            Polygon2 { g_scaled, h_scaled, f, l, order, open, inverse_det, series: None, vertices_at_zero: Vec::new() };
        poly.vertices_at_zero = (0..m).map(|k| poly.vertex(k, |i| poly.h_scaled[i])).collect();
        poly
    }

    /// Lets the polygon use its power series in the mean (`polygon_series.rs`) where it is
    /// bounded and small enough: ~10 us at the first mean that asks, after which means near it
    /// cost a polynomial instead of the fan's edge quadratures. The series is the same
    /// whichever thread builds it, so results do not depend on the order of the calls.
    pub fn enable_series(&mut self) {
        self.series = Some(OnceLock::new());
    }

    fn series(&self) -> Option<&PolygonSeries> {
        self.series
            .as_ref()?
            .get_or_init(|| {
                let vertices: Option<Vec<[f64; 2]>> = self.vertices_at_zero.iter().copied().collect();
                vertices.and_then(|v| PolygonSeries::new(&v))
            })
            .as_ref()
    }

    /// `L^{-1} mu`: the polygon for the mean `mu` is the one for 0 moved by minus this, in
    /// whitened coordinates.
    #[inline]
    fn whitened_mean(&self, mu: &[f64]) -> [f64; 2] {
        let l = self.l;
        let m0 = mu[0] / l[0];
        [m0, (mu[1] - l[2] * m0) / l[3]]
    }

    /// The whitened offset of row `i` for the mean `mu`.
    #[inline]
    fn offset(&self, i: usize, mu: &[f64]) -> f64 {
        self.h_scaled[i] - self.g_scaled[i][0] * mu[0] - self.g_scaled[i][1] * mu[1]
    }

    fn place(&self, mu: &[f64]) -> Placed<'_> {
        let e: Vec<f64> = (0..self.f.len()).map(|i| self.offset(i, mu)).collect();
        self.place_whitened(e)
    }

    /// The polygon `{w : f_i . w <= e_i}` in whitened coordinates: the same edges (and so the
    /// same combinatorics) with offsets given directly.
    fn place_whitened(&self, e: Vec<f64>) -> Placed<'_> {
        let vertex = (0..self.f.len()).map(|k| self.vertex(k, |i| e[i])).collect();
        Placed { poly: self, e, vertex }
    }

    /// The vertex between edges `order[k]` and `order[k + 1]` for offsets `e(i)`; `None` where
    /// the polygon is open between them.
    fn vertex(&self, k: usize, e: impl Fn(usize) -> f64) -> Option<[f64; 2]> {
        if self.open[k] {
            return None;
        }
        let (a, b) = (self.order[k], self.order[(k + 1) % self.order.len()]);
        let (fa, fb) = (self.f[a], self.f[b]);
        let (ea, eb) = (e(a), e(b));
        let inverse_det = self.inverse_det[k];
        Some([(ea * fb[1] - eb * fa[1]) * inverse_det, (fa[0] * eb - fb[0] * ea) * inverse_det])
    }

    /// The point nearest the origin of `{w : f_i . w <= e(i)}`, whose vertices are `vertex(k)`.
    /// From outside, it lies on an edge whose constraint the origin violates (at a vertex, the
    /// direction to the origin is in the normal cone, so it has a positive component along one
    /// of the two normals), so only those edges are searched, and only their vertices asked
    /// for; none violated (to rounding) means the origin is inside.
    fn nearest_point_with(&self, e: impl Fn(usize) -> f64, vertex: impl Fn(usize) -> Option<[f64; 2]>) -> [f64; 2] {
        let m = self.order.len();
        let mut best = [0.0, 0.0];
        // Squared distances: a square root per edge would hold up each comparison.
        let mut best_d2 = f64::INFINITY;
        for k in 0..m {
            let i = self.order[k];
            let ei = e(i);
            if ei >= -1e-12 * (1.0 + ei.abs()) {
                continue;
            }
            // Violated, so not inside: without any edge found, the polygon is empty.
            if best_d2 == f64::INFINITY {
                best = [f64::INFINITY, f64::INFINITY];
            }
            let (f, t) = (self.f[i], rot90(self.f[i]));
            let start = vertex((k + m - 1) % m).map_or(f64::NEG_INFINITY, |v| dot(t, v));
            let end = vertex(k).map_or(f64::INFINITY, |v| dot(t, v));
            if start > end {
                continue;
            }
            let y = 0.0f64.clamp(start, end);
            let p = [ei * f[0] + y * t[0], ei * f[1] + y * t[1]];
            let d2 = dot(p, p);
            if d2 < best_d2 {
                best_d2 = d2;
                best = p;
            }
        }
        best
    }

    /// An upper bound on the log mass: `Phi(-d) <= exp(-d^2 / 2) / 2` at the distance `d` from
    /// the mean to the region, in whitened coordinates. Inference bounds every region for every
    /// point, so only the offsets and the vertices next to violated edges are computed.
    pub fn log_mass_bound(&self, mu: &[f64]) -> f64 {
        let e = |i: usize| self.offset(i, mu);
        // The vertices for the mean 0, moved by -L^{-1} mu: two subtractions where solving for
        // each from the offsets costs a dozen operations (this is for pruning, and rounding
        // of the order of the mean's distance does not matter to it).
        let m = self.whitened_mean(mu);
        let p = self.nearest_point_with(e, |k| self.vertices_at_zero[k].map(|v| [v[0] - m[0], v[1] - m[1]]));
        let bound = crate::linalg::log_tail_bound(norm2(p));
        if bound == f64::NEG_INFINITY {
            // Crossed edges in whitened units; the polygon itself is not empty (see
            // `Self::latent_moments`): its distance from the latent frame.
            if let Some(d) = super::polygon_latent::distance(&self.g_scaled, &self.h_scaled, self.l, [mu[0], mu[1]]) {
                return crate::linalg::log_tail_bound(d);
            }
        }
        bound
    }

    /// `(log mass, mean, central covariance)` written as [`Self::integrate`]'s mean and second
    /// moments.
    fn write_moments(moments: (f64, [f64; 2], [f64; 4]), cond_mean: &mut [f64], cond_second: &mut [f64]) -> f64 {
        let (log_mass, mean, cov) = moments;
        cond_mean.copy_from_slice(&mean);
        cond_second.copy_from_slice(&Self::second_from_central(mean, cov));
        log_mass
    }

    /// [`Self::latent_moments`] written into `cond_mean` and `cond_cov` (they are in the latent
    /// frame already), and their log mass.
    fn latent_central_moments_into(&self, mu: &[f64], cond_mean: &mut [f64], cond_cov: &mut [f64]) -> Option<f64> {
        let (log_mass, mean, cov) = self.latent_moments(mu)?;
        cond_mean.copy_from_slice(&mean);
        cond_cov.copy_from_slice(&cov);
        Some(log_mass)
    }

    /// The latent frame's fan from the nearest point (`polygon_latent.rs`): where the whitened
    /// frame finds no mass (edges nearly antiparallel in whitened units taken as open or
    /// crossed, a vertex's mass below the rounding of the whitened offsets), which a polygon
    /// with an interior never has.
    fn latent_moments(&self, mu: &[f64]) -> Option<(f64, [f64; 2], [f64; 4])> {
        super::polygon_latent::moments(&self.g_scaled, &self.h_scaled, self.l, [mu[0], mu[1]])
    }

    /// The log mass for `z ~ N(mu, Sigma)`, to relative error `rtol` (0 asks for all the
    /// digits the method has: ~1e-14).
    pub fn log_mass(&self, mu: &[f64], rtol: f64) -> f64 {
        if let Some((log_mass, ..)) = self.series().and_then(|series| series.moments::<false>(self.whitened_mean(mu))) {
            return log_mass;
        }
        let placed = self.place(mu);
        match placed.log_mass_and_fluxes_by_fan(rtol, None) {
            Some((log_mass, ..)) if log_mass > f64::NEG_INFINITY => log_mass,
            found => match (self.latent_moments(mu), found) {
                (Some((log_mass, ..)), _) => log_mass,
                (None, Some((log_mass, ..))) => log_mass,
                (None, None) => placed.log_mass_by_quadrature().0,
            },
        }
    }

    /// The log mass under `N(0, I)` of `{w : f_i . w <= e_i}`: offsets in whitened units, for
    /// callers that move edges independently (slices of a polyhedron). The rows must stay
    /// non-redundant for these offsets.
    pub fn log_mass_whitened(&self, e: Vec<f64>, rtol: f64) -> f64 {
        self.place_whitened(e).log_mass(rtol)
    }

    /// `E[w w^T]` from the mean and central covariance.
    fn second_from_central(m: [f64; 2], c: [f64; 4]) -> [f64; 4] {
        [c[0] + m[0] * m[0], c[1] + m[0] * m[1], c[2] + m[1] * m[0], c[3] + m[1] * m[1]]
    }

    /// `(log mass, E[z | region], E[z z^T | region])` for `z ~ N(mu, Sigma)`; the mass to
    /// relative error `rtol` as in [`Self::log_mass`], the moments in closed form given it.
    pub fn integrate(&self, mu: &[f64], rtol: f64, cond_mean: &mut [f64], cond_second: &mut [f64]) -> f64 {
        let (log_mass, wm, ws) = match self.series().and_then(|series| series.moments::<true>(self.whitened_mean(mu))) {
            Some(moments) => moments,
            None => {
                let placed = self.place(mu);
                if let Some(moments) = placed.lineal_moments() {
                    moments
                } else {
                    let mut fluxes = vec![f64::NAN; placed.m()];
                    let found = match placed.log_mass_and_fluxes_by_fan(rtol, Some(&mut fluxes)) {
                        Some(found) if found.0 > f64::NEG_INFINITY => Some(found),
                        found => {
                            // Where the fan cannot decide (or finds nothing), the latent
                            // frame's fan when the mean is outside, else the quadrature.
                            if let Some(moments) = self.latent_moments(mu) {
                                return Self::write_moments(moments, cond_mean, cond_second);
                            }
                            fluxes.fill(f64::NAN);
                            if found.is_some() {
                                None
                            } else {
                                Some(placed.log_mass_by_quadrature())
                            }
                        }
                    };
                    match found {
                        Some((log_mass, d, _)) if log_mass > f64::NEG_INFINITY && d >= FAR_MOMENTS => {
                            // Far out the divergence theorem's mean is a sum of terms of size
                            // d whose ratios keep ~eps d^2 relative accuracy: an error of
                            // ~eps d^3 against a spread of ~1/d. The posterior's central
                            // moments instead (checked divergence, the latent frame's fan or
                            // the central quadrature), so that both agree; the mass stays the
                            // fan's (the E-step's likelihood is log_likelihood's, to the bit).
                            let (mut mean, mut cov) = ([0.0; 2], [0.0; 4]);
                            if self.central_moments(mu, &mut mean, &mut cov) > f64::NEG_INFINITY {
                                return Self::write_moments((log_mass, mean, cov), cond_mean, cond_second);
                            }
                            (log_mass, [f64::NAN; 2], [f64::NAN; 4])
                        }
                        Some((log_mass, d, scaled)) if log_mass > f64::NEG_INFINITY => {
                            let (wm, ws) = placed.whitened_moments(log_mass, d, scaled, &fluxes);
                            (log_mass, wm, ws)
                        }
                        _ => (f64::NEG_INFINITY, [f64::NAN; 2], [f64::NAN; 4]),
                    }
                }
            }
        };
        let (mut log_mass, mut wm, mut ws) = (log_mass, wm, ws);
        if log_mass > f64::NEG_INFINITY && !wm.iter().chain(&ws).all(|v| v.is_finite()) {
            // The divergence theorem's moments far out (fluxes over a mass that the fan kept
            // but the closed-form fluxes lose): the latent frame's fan, or the central
            // quadrature, as for the posterior's central moments.
            if let Some(moments) = self.latent_moments(mu) {
                return Self::write_moments(moments, cond_mean, cond_second);
            }
            if let Some((central_log_mass, m, c)) = self.place(mu).central_moments_quadrature() {
                (log_mass, wm, ws) = (central_log_mass, m, Self::second_from_central(m, c));
            }
        }
        if log_mass == f64::NEG_INFINITY || log_mass.is_nan() {
            if let Some(moments) = self.latent_moments(mu) {
                return Self::write_moments(moments, cond_mean, cond_second);
            }
            cond_mean.iter_mut().for_each(|v| *v = f64::NAN);
            cond_second.iter_mut().for_each(|v| *v = f64::NAN);
            return log_mass;
        }
        // z = mu + L w.
        let l = self.l;
        let lm = [l[0] * wm[0], l[2] * wm[0] + l[3] * wm[1]];
        let mean = [mu[0] + lm[0], mu[1] + lm[1]];
        // L E[w w^T] L^T
        let lw = [l[0] * ws[0], l[0] * ws[1], l[2] * ws[0] + l[3] * ws[2], l[2] * ws[1] + l[3] * ws[3]];
        let lwl = [lw[0] * l[0], lw[0] * l[2] + lw[1] * l[3], lw[2] * l[0], lw[2] * l[2] + lw[3] * l[3]];
        cond_mean[0] = mean[0];
        cond_mean[1] = mean[1];
        for a in 0..2 {
            for b in 0..2 {
                cond_second[2 * a + b] = mu[a] * mu[b] + mu[a] * lm[b] + lm[a] * mu[b] + lwl[2 * a + b];
            }
        }
        let sym = 0.5 * (cond_second[1] + cond_second[2]);
        cond_second[1] = sym;
        cond_second[2] = sym;
        log_mass
    }

    /// The log mass and `E[z | P]` for `z ~ N(mu, Sigma)` from the edges' fluxes, and a bound
    /// on that mean's absolute error in whitened units, where the fluxes do not cancel (see
    /// `Placed::mean_by_fluxes`); `None` where they do: [`Self::central_moments`] then.
    pub fn mean_by_fluxes(&self, mu: &[f64], cond_mean: &mut [f64]) -> Option<(f64, f64)> {
        let (log_mass, wm, error) = self.place(mu).mean_by_fluxes()?;
        cond_mean.copy_from_slice(&self.unwhitened_mean(mu, wm));
        Some((log_mass, error))
    }

    /// `mu + L w`: a whitened mean in the latent frame.
    fn unwhitened_mean(&self, mu: &[f64], wm: [f64; 2]) -> [f64; 2] {
        let l = self.l;
        [mu[0] + l[0] * wm[0], mu[1] + l[2] * wm[0] + l[3] * wm[1]]
    }

    /// `(log mass, E[z | region], Cov[z | region])` for `z ~ N(mu, Sigma)`, the covariance
    /// central (row-major) and accurate relative to itself: for the posterior's covariance,
    /// which the second moments of [`Self::integrate`] lose to cancellation far from the mean
    /// and on tiny polygons. Those moments are kept where the subtraction loses at most three
    /// digits; otherwise a quadrature in a frame centred on the polygon decides (see
    /// [`Placed::central_moments_quadrature`]).
    pub fn central_moments(&self, mu: &[f64], cond_mean: &mut [f64], cond_cov: &mut [f64]) -> f64 {
        let placed = self.place(mu);
        let moments = if placed.m() > 0 && placed.vertex.iter().all(Option::is_none) {
            // Half-planes and strips: the truncated normal along the normal n, standard across.
            let n = self.f[0];
            let (lo, hi) = placed.lineal_interval();
            let (log_mass, along, variance) = truncated_normal_central(0.0, 1.0, lo, hi);
            let t = rot90(n);
            let entry = |i: usize, j: usize| variance * n[i] * n[j] + t[i] * t[j];
            let cov = [entry(0, 0), entry(0, 1), entry(1, 0), entry(1, 1)];
            (log_mass > f64::NEG_INFINITY).then_some((log_mass, [along * n[0], along * n[1]], cov))
        } else {
            // Far out (where thin wedges' sections fall below the whitened offsets' rounding)
            // the latent frame's fan before the whitened quadrature; near the mean the
            // quadrature, which keeps slivers' means to ~1e-12 of their spread (the latent
            // fan, ~1e-10).
            match placed.central_moments_by_divergence() {
                Some(moments) => Some(moments),
                None => {
                    if norm2(placed.nearest_point()) > LATENT_FIRST_DISTANCE {
                        if let Some(log_mass) = self.latent_central_moments_into(mu, cond_mean, cond_cov) {
                            return log_mass;
                        }
                    }
                    placed.central_moments_quadrature()
                }
            }
        };
        let Some((log_mass, wm, wc)) = moments.filter(|m| m.0 > f64::NEG_INFINITY) else {
            if let Some(log_mass) = self.latent_central_moments_into(mu, cond_mean, cond_cov) {
                return log_mass;
            }
            cond_mean.iter_mut().for_each(|v| *v = f64::NAN);
            cond_cov.iter_mut().for_each(|v| *v = f64::NAN);
            return f64::NEG_INFINITY;
        };
        cond_mean.copy_from_slice(&self.unwhitened_mean(mu, wm));
        let l = self.l;
        // L C L^T
        let lc = [l[0] * wc[0], l[0] * wc[1], l[2] * wc[0] + l[3] * wc[2], l[2] * wc[1] + l[3] * wc[3]];
        cond_cov[0] = lc[0] * l[0];
        cond_cov[3] = lc[2] * l[2] + lc[3] * l[3];
        let off = 0.5 * (lc[0] * l[2] + lc[1] * l[3] + lc[2] * l[0]);
        cond_cov[1] = off;
        cond_cov[2] = off;
        log_mass
    }
}

/// The interval of `s` where `-s (c + s / 2) >= level` (`level <= c^2 / 2`), its roots
/// `-c -+ sqrt(c^2 - 2 level)` taken without cancellation (their product is `2 level`).
pub(crate) fn level_interval(c: f64, level: f64) -> (f64, f64) {
    let root = (c * c - 2.0 * level).max(0.0).sqrt();
    if c == 0.0 || root == 0.0 {
        return (-c - root, -c + root);
    }
    let far = -c - c.signum() * root;
    let near = if far != 0.0 { 2.0 * level / far } else { -c };
    if far < near {
        (far, near)
    } else {
        (near, far)
    }
}

/// The whitened distance from the mean beyond which a polygon's E-step moments come from the
/// central quadrature rather than the divergence theorem: there the latter's mean is off by
/// ~eps d^3 against a spread of ~1/d, eps d^4 / 2 = 1.2e-10 of the spread at d = 32.
const FAR_MOMENTS: f64 = 32.0;

/// The nodes of the polygons' slicing quadratures: `visit(s, log weight)` for 20-point
/// Gauss-Legendre on sub-intervals of the pieces between consecutive `breaks` over which the log
/// integrand changes by at most ~6 (there the rule is exact to ~1e-17 relative: the error of
/// `e^{kt}` is ~`k^40 / 40!`). The rate of change on a piece is bounded from the Gaussian along
/// the slicing coordinate (`centre + s` its distance from the mean) and from the edges active at
/// the piece's midpoint (`(y0, slope)`: `y = y0 + slope s` bounds the slice from above in
/// `upper`, from below in `lower`), through the lower tail of the normal across.
fn for_each_slice_node(
    breaks: &[f64],
    upper: &[(f64, f64)],
    lower: &[(f64, f64)],
    centre: f64,
    mut visit: impl FnMut(f64, f64),
) {
    // The edge bounding y on a piece: the one active at its midpoint.
    let active = |edges: &[(f64, f64)], s: f64, upper: bool| {
        edges.iter().copied().fold(None, |best: Option<(f64, f64)>, edge| match best {
            Some(b) if (edge.0 + edge.1 * s < b.0 + b.1 * s) != upper => Some(b),
            _ => Some(edge),
        })
    };
    // How fast log Phi(t) changes per unit of t: ~|t| in the lower tail, at most ~1 elsewhere.
    let tail_rate = |t: f64| if t < 0.0 { 1.0 - t } else { 1.0 };
    for pair in breaks.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b <= a {
            continue;
        }
        let mid = 0.5 * (a + b);
        let mut rate = 1.0 + (centre + a).abs().max((centre + b).abs());
        if let Some((y0, slope)) = active(upper, mid, true) {
            rate += slope.abs() * tail_rate((y0 + slope * a).min(y0 + slope * b));
        }
        if let Some((y0, slope)) = active(lower, mid, false) {
            rate += slope.abs() * tail_rate(-(y0 + slope * a).max(y0 + slope * b));
        }
        let pieces = ((b - a) * rate / 6.0).ceil().clamp(1.0, 400.0) as usize;
        let width = (b - a) / pieces as f64;
        for piece in 0..pieces {
            let middle = a + (piece as f64 + 0.5) * width;
            for (node, weight) in GL_NODES.iter().zip(GL_WEIGHTS) {
                visit(middle + 0.5 * width * node, (0.5 * width * weight).ln());
            }
        }
    }
}

/// The largest value of a log-concave `f` on `[lo, hi]` (to within its change over a
/// millionth of the interval, or 1e-9 of the position) by golden-section search, and where it
/// was found; `-inf` for an empty interval. `f` may be `-inf` outside its support, an interval.
fn log_concave_maximum(f: &impl Fn(f64) -> f64, lo: f64, hi: f64) -> (f64, f64) {
    if !(lo <= hi) {
        return (f64::NEG_INFINITY, lo);
    }
    const SHRINK: f64 = 0.618_033_988_749_895;
    let (mut a, mut b) = (lo, hi);
    let (mut c, mut e) = (b - SHRINK * (b - a), a + SHRINK * (b - a));
    let (mut fc, mut fe) = (f(c), f(e));
    let mut best = [(f(lo), lo), (f(hi), hi), (fc, c), (fe, e)]
        .into_iter()
        .fold((f64::NEG_INFINITY, lo), |best, probe| if probe.0 > best.0 { probe } else { best });
    for _ in 0..100 {
        if b - a <= 1e-6 * (hi - lo) + crate::linalg::Tolerance::DEFAULT.at(a.abs()) {
            break;
        }
        if fc >= fe {
            (b, e, fe) = (e, c, fc);
            c = b - SHRINK * (b - a);
            fc = f(c);
            if fc > best.0 {
                best = (fc, c);
            }
        } else {
            (a, c, fc) = (c, e, fe);
            e = a + SHRINK * (b - a);
            fe = f(e);
            if fe > best.0 {
                best = (fe, e);
            }
        }
    }
    best
}

/// An interval `[a, b]` within `[lo, hi]` outside which the log-concave `f` stays below
/// `level`, given a point `at` where it is at least `level`: each end is bisected between `at`
/// and the outer end until it is known to within a quarter of its distance from `at` (the
/// end returned is the outer side of the bracket, so nothing above `level` is cut). Slicing
/// quadratures are cut to it: the Gaussian along the slicing direction bounds the integrand
/// only loosely when the slices' own masses decay faster (a thin wedge sliced along an edge,
/// far out), and pieces spread over that loose range leave the bulk with a few nodes.
fn superlevel_interval(f: &impl Fn(f64) -> f64, at: f64, level: f64, lo: f64, hi: f64) -> (f64, f64) {
    let end = |outer: f64| {
        if !outer.is_finite() || f(outer) >= level {
            return outer;
        }
        let (mut inside, mut outside) = (at, outer);
        for _ in 0..64 {
            if (outside - inside).abs() <= 0.25 * (outside - at).abs() {
                break;
            }
            let mid = 0.5 * (inside + outside);
            if f(mid) >= level {
                inside = mid;
            } else {
                outside = mid;
            }
        }
        outside
    };
    (end(lo), end(hi))
}

impl Placed<'_> {
    fn m(&self) -> usize {
        self.e.len()
    }

    #[cfg(test)]
    fn inside(&self, w: [f64; 2]) -> bool {
        (0..self.m()).all(|i| dot(self.poly.f[i], w) <= self.e[i] + 1e-12 * (1.0 + self.e[i].abs()))
    }

    /// The edge of `order[k]` as `(start, end)` parameters along `t = rot90(f)` from the foot
    /// point `e f`; infinite where the edge runs to infinity.
    fn edge_span(&self, k: usize) -> (f64, f64) {
        let m = self.m();
        let i = self.poly.order[k];
        let t = rot90(self.poly.f[i]);
        let before = self.vertex[(k + m - 1) % m];
        let after = self.vertex[k];
        let start = before.map_or(f64::NEG_INFINITY, |v| dot(t, v));
        let end = after.map_or(f64::INFINITY, |v| dot(t, v));
        (start, end)
    }

    fn nearest_point(&self) -> [f64; 2] {
        self.poly.nearest_point_with(|i| self.e[i], |k| self.vertex[k])
    }

    fn log_mass(&self, rtol: f64) -> f64 {
        self.log_mass_and_fluxes(rtol, None).0
    }

    /// `(log mass, d, scaled log mass)` by the slicing quadrature alone.
    fn log_mass_by_quadrature(&self) -> (f64, f64, f64) {
        let p = self.nearest_point();
        let d = norm2(p);
        if d == f64::INFINITY {
            return (f64::NEG_INFINITY, d, f64::NEG_INFINITY);
        }
        let log_mass = self.log_mass_quadrature(p, d);
        (log_mass, d, log_mass + 0.5 * d * d)
    }

    /// The log mass, and the distance `d` from the mean to the polygon. Where the fan decides
    /// and `fluxes` is given, `fluxes[k]` is edge `order[k]`'s Gaussian flux scaled by
    /// `e^{d^2/2}` (see [`scaled_edge_integrals`]); NaN where it was not computed.
    /// Also the log mass scaled by `e^{d^2/2}`, as the fan computes it: far from the mean,
    /// `log mass` itself keeps only `eps d^2 / 2` absolute accuracy, which ratios of the mass
    /// to the edges' fluxes (the moments) would inherit.
    fn log_mass_and_fluxes(&self, rtol: f64, mut fluxes: Option<&mut [f64]>) -> (f64, f64, f64) {
        if let Some(found) = self.log_mass_and_fluxes_by_fan(rtol, fluxes.as_deref_mut()) {
            return found;
        }
        if let Some(fluxes) = fluxes {
            fluxes.fill(f64::NAN);
        }
        self.log_mass_by_quadrature()
    }

    /// [`Self::log_mass_and_fluxes`] where the closed forms (half-planes and strips, the
    /// fan) decide, or the polygon is empty in whitened units; `None` where the quadrature
    /// would (`Polygon2` tries the latent frame's fan first there).
    fn log_mass_and_fluxes_by_fan(&self, rtol: f64, mut fluxes: Option<&mut [f64]>) -> Option<(f64, f64, f64)> {
        let m = self.m();
        if let Some(fluxes) = fluxes.as_deref_mut() {
            fluxes.fill(f64::NAN);
        }
        if m == 0 {
            return Some((0.0, 0.0, 0.0));
        }
        if self.vertex.iter().all(Option::is_none) {
            return Some((self.log_mass_lineal(), f64::NAN, f64::NAN));
        }
        let p = self.nearest_point();
        let d = norm2(p);
        if d == f64::INFINITY {
            // Empty: the edges cross. A slice of a polyhedron taken within rounding of a vertex
            // (`slices.rs` fixes a panel's edges at its centre) can be, and its mass is zero;
            // integrating it would slice along `p / d`, NaN.
            return Some((f64::NEG_INFINITY, d, f64::NEG_INFINITY));
        }
        // The fan estimates its own error (its terms' errors over what they cancel down to): a
        // loose level is kept when that meets `rtol`, else the tightest level decides, or the
        // quadrature when even its error is too large.
        let loosest = EDGE_ACCURACY.iter().rposition(|a| 10.0 * a.rtol <= rtol).unwrap_or(0);
        let levels = [loosest, 0];
        for &level in &levels[..if loosest == 0 { 1 } else { 2 }] {
            let accuracy = &EDGE_ACCURACY[level];
            // The tightest level settles for FAN_MAX_ERROR; a looser one must meet `rtol`.
            let enough = if level == 0 { rtol.max(FAN_MAX_ERROR) } else { rtol };
            match self.log_mass_fan(d, accuracy, fluxes.as_deref_mut()) {
                Some((scaled, error)) if error <= enough => return Some((scaled - 0.5 * d * d, d, scaled)),
                // A tighter level helps only if the edge integrals' error is what failed.
                Some((_, error)) if level != 0 && error <= 1e4 * rtol.max(FAN_MAX_ERROR) => {}
                _ => break,
            }
        }
        None
    }

    /// The mass as a fan of triangles from the mean (the origin): each edge at distance `h`
    /// contributes its signed angle minus `(h / 2 pi) int exp(-(h^2 + y^2) / 2) / (h^2 + y^2) dy`
    /// along the edge (Owen's T in the edge's own coordinate), each arc at infinity its angle.
    /// From a mean outside the polygon the angles add up to exactly zero and are left out, so
    /// only the Gaussian terms remain, each scaled by `e^{d^2 / 2}` (`d` the distance from the
    /// mean to the polygon) so that one logarithm at the end puts the sum in log space. Returns
    /// the log mass and its estimated relative error: each term's error (the edge integral's
    /// `rtol`, plus the rounding of the edge's ends, which a short edge magnifies) summed and
    /// divided by the mass the terms cancel down to; `None` when the sum is not positive. The
    /// ends' rounding is what makes a tiny polygon far out go to the quadrature: its terms
    /// cancel a thousandfold and each is only good to `eps |y| / length`.
    fn log_mass_fan(&self, d: f64, accuracy: &EdgeAccuracy, mut fluxes: Option<&mut [f64]>) -> Option<(f64, f64)> {
        let origin_inside = d == 0.0;
        let m = self.m();
        let mut signed = 0.0;
        let mut error = 0.0;
        for k in 0..m {
            let i = self.poly.order[k];
            let (start, end) = self.edge_span(k);
            let e = self.e[i];
            if start < end && e != 0.0 {
                let h = e.abs();
                if origin_inside {
                    let angle = e.signum() * ((end / h).atan() - (start / h).atan()) / std::f64::consts::TAU;
                    signed += angle;
                    error += f64::EPSILON * angle.abs();
                }
                let [term, flux] = scaled_edge_integrals(h, start, end, d, accuracy);
                if let Some(fluxes) = fluxes.as_deref_mut() {
                    fluxes[k] = flux;
                }
                signed -= e.signum() * term;
                // The ends are each edge's own projections of the vertices, rounded
                // independently: a short edge's integral moves by that much relative to its length.
                // Ends beyond the edge's reach are not integrated to, so their rounding (eps
                // times a far vertex's distance) moves nothing.
                let reach = edge_reach(start, end);
                let ends_rounding =
                    f64::EPSILON * [start, end].iter().filter(|y| y.abs() <= reach).map(|y| y.abs() + h).sum::<f64>();
                error += term * (accuracy.rtol + ends_rounding / (end - start).min(1.0));
            }
            if origin_inside && self.vertex[k].is_none() {
                // The arc at infinity between edge k and the next: between outward normals
                // `gap` apart the recession cone spans `gap - pi`, nothing for the open end of
                // a strip, whose two normals are antiparallel up to rounding (an angle
                // difference of the edge directions would jump to 2 pi there).
                let next = self.poly.order[(k + 1) % m];
                let (a, b) = (self.poly.f[i], self.poly.f[next]);
                let mut gap = b[1].atan2(b[0]) - a[1].atan2(a[0]);
                if gap <= 0.0 {
                    gap += std::f64::consts::TAU;
                }
                let arc = (gap - std::f64::consts::PI).max(0.0) / std::f64::consts::TAU;
                signed += arc;
                error += f64::EPSILON * arc;
            }
        }
        (signed > 0.0).then(|| (signed.ln(), error / signed))
    }

    /// How steep the polygon's edges are as bounds `y(x)` when slicing along `u`: the smallest
    /// `|f . v|` over the edges that bound `y` at all (exactly perpendicular ones bound `x`, at
    /// their vertices). Small values mean a bound sweeping across the Gaussian within a short
    /// stretch of `x`, which the quadrature's pieces cannot follow.
    fn slicing_conditioning(&self, u: [f64; 2]) -> f64 {
        let v = rot90(u);
        (0..self.m())
            .filter(|&k| {
                let (start, end) = self.edge_span(k);
                start < end
            })
            .map(|k| dot(self.poly.f[self.poly.order[k]], v).abs())
            .filter(|&fy| fy > 1e-14)
            .fold(f64::INFINITY, f64::min)
    }

    /// The direction to slice along, given the nearest point `p` at distance `d`: along `p`,
    /// where the integrand peaks as the polygon begins; but two nearly antiparallel edges (a
    /// thin wedge) facing that way make steep bounds, and then slicing along an edge, which
    /// makes its bound flat, does better.
    fn slicing_direction(&self, p: [f64; 2], d: f64) -> [f64; 2] {
        let u = if d > 0.0 { [p[0] / d, p[1] / d] } else { [1.0, 0.0] };
        let conditioning = self.slicing_conditioning(u);
        if conditioning < 0.01 {
            let best = (0..self.m())
                .map(|k| rot90(self.poly.f[self.poly.order[k]]))
                .map(|along| (self.slicing_conditioning(along), along))
                .max_by(|a, b| a.0.total_cmp(&b.0));
            if let Some((better, along)) = best {
                if better >= 10.0 * conditioning {
                    return along;
                }
            }
        }
        u
    }

    /// The vertices' coordinates along `u`, less `shift`, sorted without repeats: the
    /// breakpoints of a slicing quadrature along `u`.
    fn breakpoints(&self, u: [f64; 2], shift: f64) -> Vec<f64> {
        let mut xs: Vec<f64> = self.vertex.iter().flatten().map(|w| dot(*w, u) - shift).collect();
        xs.sort_by(f64::total_cmp);
        xs.dedup();
        xs
    }

    /// The range `[lo, hi]` of the polygon along `u`, extended to infinity where a recession
    /// direction (an unbounded edge) points that way.
    fn recession_range(&self, u: [f64; 2], mut lo: f64, mut hi: f64) -> (f64, f64) {
        let m = self.m();
        for k in 0..m {
            if self.vertex[k].is_none() {
                let (a, b) = (self.poly.order[k], self.poly.order[(k + 1) % m]);
                for dir in [rot90(self.poly.f[a]), [-rot90(self.poly.f[b])[0], -rot90(self.poly.f[b])[1]]] {
                    let along = dot(dir, u);
                    if along > 1e-12 {
                        hi = f64::INFINITY;
                    } else if along < -1e-12 {
                        lo = f64::NEG_INFINITY;
                    }
                }
            }
        }
        (lo, hi)
    }

    fn log_mass_quadrature(&self, p: [f64; 2], d: f64) -> f64 {
        let m = self.m();
        let u = self.slicing_direction(p, d);
        let v = rot90(u);
        let d = dot(p, u);
        // Edges bounding y from above (f.v > 0) and below (f.v < 0), as y = (e - f.u x) / f.v.
        let mut upper = Vec::new();
        let mut lower = Vec::new();
        for i in 0..m {
            let (fx, fy) = (dot(self.poly.f[i], u), dot(self.poly.f[i], v));
            if fy > 1e-14 {
                upper.push((self.e[i] / fy, -fx / fy));
            } else if fy < -1e-14 {
                lower.push((self.e[i] / fy, -fx / fy));
            }
        }
        let bounds = |x: f64| {
            let hi = upper.iter().map(|(c, s)| c + s * x).fold(f64::INFINITY, f64::min);
            let lo = lower.iter().map(|(c, s)| c + s * x).fold(f64::NEG_INFINITY, f64::max);
            (lo, hi)
        };
        let log_integrand = |x: f64| {
            let (lo, hi) = bounds(x);
            if lo >= hi {
                f64::NEG_INFINITY
            } else {
                log_pdf(x) + log_diff_ndtr(lo, hi)
            }
        };
        // Breakpoints: the vertices' x; the range extends to infinity along recession directions.
        let xs = self.breakpoints(u, 0.0);
        let (x_lo, x_hi) = self.recession_range(u, xs[0], xs[xs.len() - 1]);
        // Infinite ends are cut where phi(x) alone, an upper bound of the integrand, is
        // negligible against the integrand's value at some interior probe point.
        let (first, last) = (xs[0], xs[xs.len() - 1]);
        let mut probes: Vec<f64> = xs.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
        probes.extend([d.clamp(x_lo, x_hi), first, last]);
        if x_hi == f64::INFINITY {
            probes.extend([last + 0.1, last + 1.0]);
        }
        if x_lo == f64::NEG_INFINITY {
            probes.extend([first - 0.1, first - 1.0]);
        }
        let probed = probes.iter().map(|&x| log_integrand(x)).fold(f64::NEG_INFINITY, f64::max);
        // The probes can all miss the bulk: a thin wedge whose tip is the nearest point and
        // whose other vertices lie thousands of deviations out has zero width at the tip and
        // nothing at the far midpoints, and a reach taken from them left one piece per hundred
        // deviations (a mass 5% off). The integrand is the marginal of a Gaussian restricted to
        // a convex set, so log-concave (Prekopa-Leindler): a golden-section search finds its
        // maximum, which lies where phi(x) still exceeds the best probe.
        let bound = if probed.is_finite() {
            (2.0 * (-probed - LN_SQRT_2PI).max(0.0)).sqrt()
        } else {
            40.0 + first.abs().max(last.abs())
        };
        let (searched, at) = log_concave_maximum(&log_integrand, x_lo.max(-bound), x_hi.min(bound));
        let reference = probed.max(searched);
        let reach = if reference.is_finite() {
            (2.0 * (NEGLIGIBLE - reference - LN_SQRT_2PI).max(0.0)).sqrt()
        } else {
            40.0 + first.abs().max(last.abs())
        };
        let (cut_lo, cut_hi) = if searched.is_finite() && searched >= reference - NEGLIGIBLE {
            superlevel_interval(&log_integrand, at, reference - NEGLIGIBLE, (-reach).max(x_lo), reach.min(x_hi))
        } else {
            (-reach, reach)
        };
        let mut breaks = Vec::with_capacity(xs.len() + 2);
        if x_lo == f64::NEG_INFINITY {
            breaks.push((-reach).min(first - 1.0));
        }
        breaks.extend(&xs);
        if x_hi == f64::INFINITY {
            breaks.push(reach.max(last + 1.0));
        }
        // Beyond the reach nothing counts, finite far vertices included: a nearly parallel pair
        // of edges meeting thousands of deviations out would otherwise stretch one piece across
        // the whole Gaussian.
        if reference.is_finite() {
            for x in &mut breaks {
                *x = x.clamp(cut_lo.max(-reach), cut_hi.min(reach));
            }
        }
        let mut terms: Vec<f64> = Vec::new();
        for_each_slice_node(&breaks, &upper, &lower, 0.0, |x, log_weight| {
            let value = log_integrand(x);
            if value > f64::NEG_INFINITY {
                terms.push(value + log_weight);
            }
        });
        super::normal::log_sum_exp(terms.iter().copied())
    }

    /// The fan's log mass (all the digits it has) and the divergence theorem's `E[w | P]`,
    /// `E[w w^T | P]` and flux size (see [`Self::whitened_moments_and_flux_size`]); `None` where
    /// the fan cannot decide or finds no finite mass.
    fn moments_by_fan(&self) -> Option<(f64, [f64; 2], [f64; 4], f64)> {
        let mut fluxes = vec![f64::NAN; self.m()];
        let (log_mass, d, scaled) = self.log_mass_and_fluxes_by_fan(0.0, Some(&mut fluxes))?;
        if !log_mass.is_finite() {
            return None;
        }
        let (wm, ws, flux_size) = self.whitened_moments_and_flux_size(log_mass, d, scaled, &fluxes);
        Some((log_mass, wm, ws, flux_size))
    }

    /// `(log mass, E[w | P])` and a bound on the mean's absolute error, from the divergence
    /// theorem's edge fluxes (as [`Polygon2::integrate`]) where they do not cancel: `None` where
    /// their sum of sizes exceeds the mean's scale `|E[w | P]| + 1` more than
    /// [`MAX_FLUX_CANCELLATION`] times, or where the fan cannot decide; `None` also for
    /// half-planes and strips. The bound is [`FLUX_ACCURACY`] of that sum.
    fn mean_by_fluxes(&self) -> Option<(f64, [f64; 2], f64)> {
        if self.m() == 0 || self.vertex.iter().all(Option::is_none) {
            return None;
        }
        let (log_mass, wm, _, flux_size) = self.moments_by_fan()?;
        let scale = norm2(wm) + 1.0;
        (wm.iter().all(|v| v.is_finite()) && flux_size <= MAX_FLUX_CANCELLATION * scale).then_some((
            log_mass,
            wm,
            FLUX_ACCURACY * flux_size,
        ))
    }

    /// `(log mass, E[w | P], Cov[w | P])` from the divergence theorem's moments (as
    /// [`Polygon2::integrate`]), where `Cov = E[w w^T] - E[w] E[w]^T` is well conditioned: its
    /// smallest eigenvalue (bounded below by `det / trace`) at least 1e-3 of the largest
    /// second moment, so that the subtraction, and the divergence theorem's own terms (whose
    /// size the second moments share), lose at most three digits. `None` otherwise.
    fn central_moments_by_divergence(&self) -> Option<(f64, [f64; 2], [f64; 4])> {
        let (log_mass, wm, ws, _) = self.moments_by_fan()?;
        let off = 0.5 * (ws[1] + ws[2]) - wm[0] * wm[1];
        let wc = [ws[0] - wm[0] * wm[0], off, off, ws[3] - wm[1] * wm[1]];
        let (det, trace) = (wc[0] * wc[3] - off * off, wc[0] + wc[3]);
        let largest = ws.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        (trace > 0.0 && det > 0.0 && det / trace >= 1e-3 * largest && wm.iter().all(|v| v.is_finite()))
            .then_some((log_mass, wm, wc))
    }

    /// `(log mass, E[w | P], Cov[w | P])` (row-major) by the slicing quadrature of
    /// [`Self::log_mass_quadrature`], carried out in a frame centred on the polygon: at `c`, the
    /// point nearest the mean (the mean itself when inside). Along the slicing direction `u`
    /// the density is `phi(c_u) exp(-s (c_u + s / 2))` in `s = x - c_u`, exact in `s` however
    /// far out `c` is; across `u` each slice is a truncated normal, whose mean and variance
    /// come centred in closed form. The covariance is summed from deviations about the mean
    /// (the law of total variance over the slices), so it keeps its relative accuracy where
    /// the divergence theorem's `E[w w^T] - E[w] E[w]^T` cannot: far from the mean (`d^2`
    /// against a variance `~1 / d^2` along `u`) and on tiny polygons and slivers (terms of
    /// order `1 / size` that cancel down to `size^2`). `None` when the polygon is empty.
    fn central_moments_quadrature(&self) -> Option<(f64, [f64; 2], [f64; 4])> {
        let m = self.m();
        let p = self.nearest_point();
        let d = norm2(p);
        if !d.is_finite() || m == 0 {
            return None;
        }
        // The slicing direction as for the mass (a thin wedge is sliced along an edge).
        let u = self.slicing_direction(p, d);
        let v = rot90(u);
        let c = dot(p, u);
        // Edges bounding y from above and below, y = (e - f.u (c + s)) / f.v.
        let mut upper = Vec::new();
        let mut lower = Vec::new();
        for i in 0..m {
            let (fx, fy) = (dot(self.poly.f[i], u), dot(self.poly.f[i], v));
            let e = self.e[i] - fx * c;
            if fy > 1e-14 {
                upper.push((e / fy, -fx / fy));
            } else if fy < -1e-14 {
                lower.push((e / fy, -fx / fy));
            }
        }
        let bounds = |s: f64| {
            let hi = upper.iter().map(|(a, b)| a + b * s).fold(f64::INFINITY, f64::min);
            let lo = lower.iter().map(|(a, b)| a + b * s).fold(f64::NEG_INFINITY, f64::max);
            (lo, hi)
        };
        // log of the slice's mass over phi(c_u), and the slice's mean and variance across.
        let slice = |s: f64| {
            let (lo, hi) = bounds(s);
            let (log_mass, mean, variance) = truncated_normal_central(0.0, 1.0, lo, hi);
            (log_mass - s * (c + 0.5 * s), mean, variance)
        };
        let log_integrand = |s: f64| slice(s).0;
        // The breakpoints (vertices) and the range, infinite along recession directions.
        let xs = self.breakpoints(u, c);
        if xs.is_empty() {
            return None;
        }
        let (s_lo, s_hi) = self.recession_range(u, xs[0], xs[xs.len() - 1]);
        let (first, last) = (xs[0], xs[xs.len() - 1]);
        let mut probes: Vec<f64> = xs.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
        probes.extend([0.0f64.clamp(s_lo, s_hi), first, last]);
        if s_hi == f64::INFINITY {
            probes.extend([last + 0.1, last + 1.0]);
        }
        if s_lo == f64::NEG_INFINITY {
            probes.extend([first - 0.1, first - 1.0]);
        }
        let probed = probes.iter().map(|&s| log_integrand(s)).fold(f64::NEG_INFINITY, f64::max);
        // The log integrand is at most -s (c + s / 2): where that is below a level, so is it.
        let clamp = |(a, b): (f64, f64)| (a.max(s_lo), b.min(s_hi));
        let search = if probed.is_finite() {
            clamp(level_interval(c, probed))
        } else {
            clamp((first.min(-c) - 40.0, last.max(-c) + 40.0))
        };
        let (searched, at) = log_concave_maximum(&log_integrand, search.0, search.1);
        let reference = probed.max(searched);
        if !reference.is_finite() {
            return None;
        }
        let (mut reach_lo, mut reach_hi) = level_interval(c, reference - NEGLIGIBLE);
        if searched.is_finite() && searched >= reference - NEGLIGIBLE {
            (reach_lo, reach_hi) =
                superlevel_interval(&log_integrand, at, reference - NEGLIGIBLE, reach_lo.max(s_lo), reach_hi.min(s_hi));
        }
        let mut breaks = Vec::with_capacity(xs.len() + 2);
        if s_lo == f64::NEG_INFINITY {
            breaks.push(reach_lo.min(first - 1.0));
        }
        breaks.extend(&xs);
        if s_hi == f64::INFINITY {
            breaks.push(reach_hi.max(last + 1.0));
        }
        for s in &mut breaks {
            *s = s.clamp(reach_lo, reach_hi);
        }
        // (log weight, s, mean across, variance across) per node.
        let mut nodes: Vec<(f64, f64, f64, f64)> = Vec::new();
        for_each_slice_node(&breaks, &upper, &lower, c, |s, log_weight| {
            let (value, mean, variance) = slice(s);
            if value > f64::NEG_INFINITY {
                nodes.push((value + log_weight, s, mean, variance));
            }
        });
        let (top, s_ref, y_ref, _) =
            nodes.iter().copied().max_by(|a, b| a.0.total_cmp(&b.0)).filter(|node| node.0.is_finite())?;
        let (mut total, mut ds, mut dy) = (0.0, 0.0, 0.0);
        for &(value, s, y, _) in &nodes {
            let w = (value - top).exp();
            total += w;
            ds += w * (s - s_ref);
            dy += w * (y - y_ref);
        }
        let (s_mean, y_mean) = (s_ref + ds / total, y_ref + dy / total);
        let (mut css, mut csy, mut cyy) = (0.0, 0.0, 0.0);
        for &(value, s, y, variance) in &nodes {
            let w = (value - top).exp() / total;
            let (a, b) = (s - s_mean, y - y_mean);
            css += w * a * a;
            csy += w * a * b;
            cyy += w * (variance + b * b);
        }
        let log_mass = top + total.ln() - 0.5 * c * c - LN_SQRT_2PI;
        let x_mean = c + s_mean;
        let mean = [x_mean * u[0] + y_mean * v[0], x_mean * u[1] + y_mean * v[1]];
        let entry = |i: usize, j: usize| css * u[i] * u[j] + csy * (u[i] * v[j] + v[i] * u[j]) + cyy * v[i] * v[j];
        let off = entry(0, 1);
        Some((log_mass, mean, [entry(0, 0), off, off, entry(1, 1)]))
    }

    /// Half-planes and strips: `(log mass, E[w], E[w w^T])` from the truncated normal along
    /// the common normal `n` (standard across it), which keeps its accuracy however far the
    /// mean is: `E[w] = m n`, `E[w w^T] = (v + m^2) n n^T + t t^T`. `None` for other polygons
    /// (and the whole plane).
    fn lineal_moments(&self) -> Option<(f64, [f64; 2], [f64; 4])> {
        if self.m() == 0 || !self.vertex.iter().all(Option::is_none) {
            return None;
        }
        let n = self.poly.f[0];
        let (lo, hi) = self.lineal_interval();
        let (log_mass, mean, variance) = super::normal::truncated_normal_central(0.0, 1.0, lo, hi);
        if log_mass == f64::NEG_INFINITY {
            return Some((log_mass, [f64::NAN; 2], [f64::NAN; 4]));
        }
        // E[w w^T] = (v + m^2) n n^T + t t^T, t across n (not I + (v + m^2 - 1) n n^T, which
        // would cancel where v + m^2 is tiny).
        let (along, t) = (variance + mean * mean, rot90(n));
        let second = [
            along * n[0] * n[0] + t[0] * t[0],
            along * n[0] * n[1] + t[0] * t[1],
            along * n[1] * n[0] + t[1] * t[0],
            along * n[1] * n[1] + t[1] * t[1],
        ];
        Some((log_mass, [mean * n[0], mean * n[1]], second))
    }

    /// Half-planes and strips: the interval along the common normal `f[0]`.
    fn lineal_interval(&self) -> (f64, f64) {
        let n = self.poly.f[0];
        let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
        for i in 0..self.m() {
            if dot(self.poly.f[i], n) > 0.0 {
                hi = hi.min(self.e[i]);
            } else {
                lo = lo.max(-self.e[i]);
            }
        }
        (lo, hi)
    }

    /// Half-planes and strips: the mass along the common normal.
    fn log_mass_lineal(&self) -> f64 {
        let n = self.poly.f[0];
        let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
        for i in 0..self.m() {
            if dot(self.poly.f[i], n) > 0.0 {
                hi = hi.min(self.e[i]);
            } else {
                lo = lo.max(-self.e[i]);
            }
        }
        log_diff_ndtr(lo, hi)
    }

    /// `E[w | P]` and `E[w w^T | P]` (row-major) by the divergence theorem. Each edge's
    /// Gaussian flux `phi(e) (Phi(end) - Phi(start))` comes from `fluxes` (scaled by
    /// `e^{d^2/2}`, as the fan computed it) where finite, else in closed form.
    fn whitened_moments(&self, log_mass: f64, d: f64, scaled_log_mass: f64, fluxes: &[f64]) -> ([f64; 2], [f64; 4]) {
        let (mean, second, _) = self.whitened_moments_and_flux_size(log_mass, d, scaled_log_mass, fluxes);
        (mean, second)
    }

    /// [`Self::whitened_moments`] and `sum_k |flux_k| / P`, the size of the terms the mean is
    /// summed from (a mean much smaller has lost that ratio of its digits to cancellation).
    fn whitened_moments_and_flux_size(
        &self,
        log_mass: f64,
        d: f64,
        scaled_log_mass: f64,
        fluxes: &[f64],
    ) -> ([f64; 2], [f64; 4], f64) {
        let mut mean = [0.0; 2];
        let mut flux_size = 0.0;
        let mut second = [1.0, 0.0, 0.0, 1.0];
        let m = self.m();
        // phi(e) phi(y) = exp(-(e^2 + y^2) / 2) / 2 pi, at a vertex exp(-|v|^2 / 2) / 2 pi; the
        // fluxes and the vertex factors are scaled by e^{d^2/2}.
        let scale = (-std::f64::consts::TAU.ln() - scaled_log_mass).exp();
        let at_vertex: Vec<f64> =
            self.vertex.iter().map(|v| v.map_or(0.0, |v| (-0.5 * (dot(v, v) - d * d)).exp() * scale)).collect();
        for k in 0..m {
            let i = self.poly.order[k];
            let (f, t, e) = (self.poly.f[i], rot90(self.poly.f[i]), self.e[i]);
            let (start, end) = self.edge_span(k);
            if start >= end {
                continue;
            }
            let mass_term = if fluxes[k].is_finite() {
                fluxes[k] * scale
            } else {
                (log_pdf(e) - log_mass + log_diff_ndtr(start, end)).exp()
            };
            // phi(e) E[y 1_edge] / P = phi(e) (phi(start) - phi(end)) / P, one factor per vertex
            // (nothing at an open end).
            let edge_mean = at_vertex[(k + m - 1) % m] - at_vertex[k];
            flux_size += mass_term.abs();
            for a in 0..2 {
                mean[a] -= f[a] * mass_term;
                for b in 0..2 {
                    second[2 * a + b] -= (e * f[a] * mass_term + t[a] * edge_mean) * f[b];
                }
            }
        }
        (mean, second, flux_size)
    }
}

#[cfg(test)]
mod tests {
    use super::super::normal::truncated_normal;
    use super::*;

    /// A box `lo <= R w <= hi` in whitened coordinates (R a rotation), seen through `z = mu + L w`:
    /// its mass and moments are products of one-dimensional truncated normals.
    fn check_rotated_box(angle: f64, lo: [f64; 2], hi: [f64; 2], l: [f64; 4], mu: [f64; 2], tol: f64) {
        let r = [[angle.cos(), angle.sin()], [-angle.sin(), angle.cos()]];
        // Rows of R L^{-1}: constraint r_j . L^{-1} (z - mu) <= hi_j and >= lo_j.
        let linv = [1.0 / l[0], 0.0, -l[2] / (l[0] * l[3]), 1.0 / l[3]];
        let mut g = Vec::new();
        let mut h = Vec::new();
        for j in 0..2 {
            let row = [r[j][0] * linv[0] + r[j][1] * linv[2], r[j][0] * linv[1] + r[j][1] * linv[3]];
            let n = row[0].hypot(row[1]);
            let unit = [row[0] / n, row[1] / n];
            let shift = dot(unit, mu);
            if hi[j].is_finite() {
                g.push(unit);
                h.push(hi[j] / n + shift);
            }
            if lo[j].is_finite() {
                g.push([-unit[0], -unit[1]]);
                h.push(-lo[j] / n - shift);
            }
        }
        let poly = Polygon2::new(g, h, l);
        let mut mean = [0.0; 2];
        let mut second = [0.0; 4];
        let log_mass = poly.integrate(&mu, 0.0, &mut mean, &mut second);
        let v: Vec<(f64, f64, f64)> = (0..2).map(|j| truncated_normal(0.0, 1.0, lo[j], hi[j])).collect();
        let expected = v[0].0 + v[1].0;
        assert!(
            (log_mass - expected).abs() <= tol * expected.abs().max(1.0),
            "log mass {log_mass} vs {expected}: angle {angle} box {lo:?} {hi:?} L {l:?} mu {mu:?}"
        );
        // E[w] = R^T E[v], E[w w^T] = R^T E[v v^T] R.
        let ev = [v[0].1, v[1].1];
        let evv = [[v[0].2, v[0].1 * v[1].1], [v[0].1 * v[1].1, v[1].2]];
        let ew: Vec<f64> = (0..2).map(|a| r[0][a] * ev[0] + r[1][a] * ev[1]).collect();
        let mut eww = [[0.0; 2]; 2];
        for a in 0..2 {
            for b in 0..2 {
                for j in 0..2 {
                    for k in 0..2 {
                        eww[a][b] += r[j][a] * evv[j][k] * r[k][b];
                    }
                }
            }
        }
        let lm = [l[0] * ew[0], l[2] * ew[0] + l[3] * ew[1]];
        let scale = 1.0 + mean[0].abs().max(mean[1].abs());
        for a in 0..2 {
            assert!(
                (mean[a] - (mu[a] + lm[a])).abs() <= 1e-9 * scale * scale,
                "mean {mean:?} vs {:?}",
                [mu[0] + lm[0], mu[1] + lm[1]]
            );
        }
        let lrow = [[l[0], 0.0], [l[2], l[3]]];
        for a in 0..2 {
            for b in 0..2 {
                let mut lwl = 0.0;
                for j in 0..2 {
                    for k in 0..2 {
                        lwl += lrow[a][j] * eww[j][k] * lrow[b][k];
                    }
                }
                let want = mu[a] * mu[b] + mu[a] * lm[b] + lm[a] * mu[b] + lwl;
                assert!(
                    (second[2 * a + b] - want).abs() <= 1e-9 * scale * scale,
                    "second {second:?}, entry {a}{b} want {want}"
                );
            }
        }
    }

    #[test]
    fn rotated_boxes_are_exact() {
        let inf = f64::INFINITY;
        let ls = [[1.0, 0.0, 0.0, 1.0], [0.7, 0.0, 0.4, 0.3], [2.0, 0.0, -1.5, 0.8]];
        let mus = [[0.0, 0.0], [0.3, -1.2], [5.0, 2.0]];
        let boxes = [
            ([-1.0, -0.5], [2.0, 0.7]),
            ([7.0, 7.0], [8.0, 7.5]),
            ([30.0, -1.0], [30.5, 1.0]),
            ([-40.0, -39.0], [-38.0, -37.0]),
            ([1.0, -inf], [inf, 2.0]),
            ([-inf, -inf], [0.5, -3.0]),
            ([3.0, 3.0], [inf, inf]),
            ([-0.2, -1e-6], [0.3, 1e-6]),
        ];
        for (t, l) in ls.iter().enumerate() {
            for mu in &mus {
                for (k, (lo, hi)) in boxes.iter().enumerate() {
                    let angle = 0.3 + 0.7 * (t * 8 + k) as f64;
                    check_rotated_box(angle, *lo, *hi, *l, *mu, 1e-10);
                }
            }
        }
    }

    /// The edge integral against a plain composite 20-point rule on pieces 40x finer than the
    /// production rule's coarsest (log integrand changing by at most 0.3, cuts at `h 2^k`).
    #[test]
    fn edge_integral_matches_a_fine_composite_rule() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_pcg::Pcg64::seed_from_u64(5);
        let fine = |h: f64, lo: f64, hi: f64, d: f64| {
            let mut cuts = vec![lo, hi];
            let mut c = h;
            while c < hi.abs().max(lo.abs()) {
                cuts.extend([c, -c]);
                c *= 2.0;
            }
            cuts.push(0.0);
            cuts.retain(|&c| c >= lo && c <= hi);
            cuts.sort_by(f64::total_cmp);
            let mut total = 0.0;
            for w in cuts.windows(2) {
                let rate = 1.0 + w[0].abs().max(w[1].abs());
                let pieces = ((w[1] - w[0]) * rate / 0.3).ceil().max(1.0) as usize;
                let width = (w[1] - w[0]) / pieces as f64;
                for p in 0..pieces {
                    let centre = w[0] + (p as f64 + 0.5) * width;
                    for (x, wt) in GL_NODES.iter().zip(GL_WEIGHTS) {
                        let y = centre + 0.5 * width * x;
                        total += 0.5 * width * wt * (0.5 * (d * d - h * h) - 0.5 * y * y).exp() / (h * h + y * y);
                    }
                }
            }
            h / std::f64::consts::TAU * total
        };
        let mut worst = [0.0f64; 3];
        for _ in 0..4000 {
            let h = 10f64.powf(rng.random_range(-6.0..1.5));
            let a = rng.random_range(-12.0..12.0) * 10f64.powf(rng.random_range(-3.0..0.0));
            let b = a + rng.random_range(0.0..6.0) * 10f64.powf(rng.random_range(-4.0..0.5));
            let nearest = if a > 0.0 {
                a
            } else if b < 0.0 {
                -b
            } else {
                0.0
            };
            let d = (h * h + nearest * nearest).sqrt() * rng.random_range(0.5..1.0);
            let want = fine(h, a, b.min((nearest * nearest + 80.0).sqrt()), d);
            for (level, accuracy) in EDGE_ACCURACY.iter().enumerate() {
                let got = scaled_edge_integrals(h, a, b, d, accuracy)[0];
                // Both round the exponent `(d^2 - h^2) / 2 - y^2 / 2` at each node to ~eps
                // times its terms' size.
                let far = a.abs().max(b.abs()).min((nearest * nearest + 80.0).sqrt());
                let err = (got - want).abs() / want / (1.0 + 0.1 * (0.5 * (h * h - d * d) + far * far));
                worst[level] = worst[level].max(err);
                assert!(
                    err < 50.0 * accuracy.rtol,
                    "level {level}, h {h} [{a}, {b}] d {d}: {got:e} vs {want:e}, {err:e}"
                );
            }
        }
        eprintln!("worst relative error by level {worst:?}");
    }

    /// `poly` under a random mean up to ~50 deviations from it, if that leaves it any mass.
    fn random_placement<'a>(poly: &'a Polygon2, rng: &mut rand_pcg::Pcg64) -> Option<Placed<'a>> {
        use rand::Rng;
        let reach = [1.0, 3.0, 6.0][rng.random_range(0..3usize)];
        let placed = poly.place(&[reach * rng.random_range(-6.0..6.0), reach * rng.random_range(-6.0..6.0)]);
        exists(&placed).then_some(placed)
    }

    /// A convex polygon through 3-7 points on a circle, minus up to two of its edges (the rest
    /// stay non-redundant), possibly unbounded, under the standard normal.
    fn random_polygon(rng: &mut rand_pcg::Pcg64) -> Option<Polygon2> {
        use rand::Rng;
        let k = rng.random_range(3..8);
        let centre = [rng.random_range(-3.0..3.0), rng.random_range(-3.0..3.0)];
        // Sizes from slivers to polygons wider than the Gaussian.
        let radius = rng.random_range(0.05..4.0) * [1.0, 0.01, 10.0][rng.random_range(0..3usize)];
        let mut angles: Vec<f64> = (0..k).map(|_| rng.random_range(0.0..std::f64::consts::TAU)).collect();
        angles.sort_by(f64::total_cmp);
        let v: Vec<[f64; 2]> =
            angles.iter().map(|t| [centre[0] + radius * t.cos(), centre[1] + radius * t.sin()]).collect();
        let mut g = Vec::new();
        let mut h = Vec::new();
        let drop = rng.random_range(0..3usize);
        for j in drop..k {
            let (a, b) = (v[j], v[(j + 1) % k]);
            let d = [b[0] - a[0], b[1] - a[1]];
            let n = d[0].hypot(d[1]);
            if n < 1e-9 {
                continue;
            }
            let f = [d[1] / n, -d[0] / n];
            g.push(f);
            h.push(dot(f, a));
        }
        (!g.is_empty()).then(|| Polygon2::new(g, h, [1.0, 0.0, 0.0, 1.0]))
    }

    /// The power series of small polygons against a brute-force cubature, under random
    /// covariances, for means out to beyond where the series stops serving (the fan and the
    /// quadrature take over there); and a rotated box, against products of one-dimensional
    /// masses.
    #[test]
    fn series_match_a_brute_force_cubature_near_small_polygons() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_pcg::Pcg64::seed_from_u64(23);
        let (mut served, mut compared) = (0, 0);
        for _ in 0..300 {
            let k = rng.random_range(3..8);
            let centre = [rng.random_range(-2.0..2.0), rng.random_range(-2.0..2.0)];
            let radius = 10f64.powf(rng.random_range(-3.0..0.0));
            let mut angles: Vec<f64> = (0..k).map(|_| rng.random_range(0.0..std::f64::consts::TAU)).collect();
            angles.sort_by(f64::total_cmp);
            let v: Vec<[f64; 2]> =
                angles.iter().map(|t| [centre[0] + radius * t.cos(), centre[1] + radius * t.sin()]).collect();
            let (mut g, mut h) = (Vec::new(), Vec::new());
            for j in 0..k {
                let (a, b) = (v[j], v[(j + 1) % k]);
                let d = [b[0] - a[0], b[1] - a[1]];
                let n = d[0].hypot(d[1]);
                if n < 1e-6 * radius {
                    continue;
                }
                let f = [d[1] / n, -d[0] / n];
                g.push(f);
                h.push(dot(f, a));
            }
            let l = [rng.random_range(0.3..1.5), 0.0, rng.random_range(-0.5..0.5), rng.random_range(0.3..1.5)];
            let mut series = Polygon2::new(g, h, l);
            series.enable_series();
            let Some(s) = series.series() else { continue };
            for _ in 0..6 {
                let reach = rng.random_range(0.0..1.3) / s.radius;
                let angle = rng.random_range(0.0..std::f64::consts::TAU);
                // A whitened mean at distance `reach` from the centre, back in z = L m.
                let m = [s.centre[0] + reach * angle.cos(), s.centre[1] + reach * angle.sin()];
                let mu = [l[0] * m[0], l[2] * m[0] + l[3] * m[1]];
                if s.moments::<false>(series.whitened_mean(&mu)).is_none() {
                    // Beyond the series' reach the fan decides.
                    let (fan, want) = (series.log_mass(&mu, 0.0), brute_force_moments(&series, &mu).0);
                    assert!((fan - want).abs() < 1e-10 * (1.0 + want.abs()), "fan {fan} vs {want}");
                    continue;
                }
                served += 1;
                let (mut mean, mut second) = ([0.0; 2], [0.0; 4]);
                let got = series.integrate(&mu, 0.0, &mut mean, &mut second);
                let (want, want_mean, want_second) = brute_force_moments(&series, &mu);
                let context = format!("radius {radius} whitened {} reach {}", s.radius, reach * s.radius);
                assert!((got - want).abs() < 1e-13 * (1.0 + want.abs()), "log mass {got} vs {want}; {context}");
                assert_eq!(series.log_mass(&mu, 0.0), got);
                // Moments relative to the polygon's size (their spread) and to the distances
                // involved (the mean's position, and the mean of the Gaussian it is moved by).
                let size = 2.0 * radius;
                let scale = 1.0 + want_mean[0].abs().max(want_mean[1].abs()).max(mu[0].abs()).max(mu[1].abs());
                for a in 0..2 {
                    assert!(
                        (mean[a] - want_mean[a]).abs() < 1e-12 * size + 1e-15 * scale,
                        "mean {mean:?} vs {want_mean:?}; {context}"
                    );
                }
                for a in 0..4 {
                    assert!(
                        (second[a] - want_second[a]).abs() < (1e-12 * size + 1e-15 * scale) * scale,
                        "second {second:?} vs {want_second:?}; {context}"
                    );
                }
                compared += 1;
            }
        }
        assert!(served > compared / 2, "the series served {served} of {compared} means");
        // A rotated box whose moments are products of one-dimensional ones.
        let (l, mu) = ([0.8, 0.0, 0.3, 0.5], [0.4, -0.2]);
        check_rotated_box_with_series(0.7, [0.1, -0.2], [0.3, 0.1], l, mu);
    }

    /// `(log mass, E[z | P], E[z z^T | P])` by a 20 x 20-point Gauss-Legendre rule on each
    /// triangle of a fan from the vertices' average (collapsed squares): for a small bounded
    /// polygon, on which the density is smooth, exact to rounding.
    fn brute_force_moments(poly: &Polygon2, mu: &[f64]) -> (f64, [f64; 2], [f64; 4]) {
        let v: Vec<[f64; 2]> = poly.vertices_at_zero.iter().map(|v| v.unwrap()).collect();
        let n = v.len();
        let c = [v.iter().map(|p| p[0]).sum::<f64>() / n as f64, v.iter().map(|p| p[1]).sum::<f64>() / n as f64];
        let m = poly.whitened_mean(mu);
        let base = 0.5 * ((c[0] - m[0]).powi(2) + (c[1] - m[1]).powi(2));
        let mut sums = [0.0; 6];
        for e in 0..n {
            let (a, b) = (v[e], v[(e + 1) % n]);
            let det = ((a[0] - c[0]) * (b[1] - c[1]) - (a[1] - c[1]) * (b[0] - c[0])).abs();
            for (s, ws) in GL_NODES.iter().zip(GL_WEIGHTS) {
                let s = 0.5 * (1.0 + s);
                for (t, wt) in GL_NODES.iter().zip(GL_WEIGHTS) {
                    let t = 0.5 * (1.0 + t);
                    let p = [
                        c[0] + s * (a[0] - c[0]) + s * t * (b[0] - a[0]),
                        c[1] + s * (a[1] - c[1]) + s * t * (b[1] - a[1]),
                    ];
                    let w =
                        0.25 * ws * wt * s * det * (base - 0.5 * ((p[0] - m[0]).powi(2) + (p[1] - m[1]).powi(2))).exp();
                    let terms = [1.0, p[0], p[1], p[0] * p[0], p[0] * p[1], p[1] * p[1]];
                    for (sum, term) in sums.iter_mut().zip(terms) {
                        *sum += w * term;
                    }
                }
            }
        }
        let log_mass = sums[0].ln() - base - std::f64::consts::LN_2 - std::f64::consts::PI.ln();
        let ev = [sums[1] / sums[0], sums[2] / sums[0]];
        let evv = [sums[3] / sums[0], sums[4] / sums[0], sums[4] / sums[0], sums[5] / sums[0]];
        let l = poly.l;
        let mean = [l[0] * ev[0], l[2] * ev[0] + l[3] * ev[1]];
        let lv = [l[0] * evv[0], l[0] * evv[1], l[2] * evv[0] + l[3] * evv[2], l[2] * evv[1] + l[3] * evv[3]];
        let second = [lv[0] * l[0], lv[0] * l[2] + lv[1] * l[3], lv[2] * l[0], lv[2] * l[2] + lv[3] * l[3]];
        (log_mass, mean, second)
    }

    fn check_rotated_box_with_series(angle: f64, lo: [f64; 2], hi: [f64; 2], l: [f64; 4], mu: [f64; 2]) {
        let r = [[angle.cos(), angle.sin()], [-angle.sin(), angle.cos()]];
        let linv = [1.0 / l[0], 0.0, -l[2] / (l[0] * l[3]), 1.0 / l[3]];
        let (mut g, mut h) = (Vec::new(), Vec::new());
        for j in 0..2 {
            let row = [r[j][0] * linv[0] + r[j][1] * linv[2], r[j][0] * linv[1] + r[j][1] * linv[3]];
            let n = row[0].hypot(row[1]);
            let unit = [row[0] / n, row[1] / n];
            let shift = dot(unit, mu);
            g.push(unit);
            h.push(hi[j] / n + shift);
            g.push([-unit[0], -unit[1]]);
            h.push(-lo[j] / n - shift);
        }
        let mut poly = Polygon2::new(g, h, l);
        poly.enable_series();
        assert!(poly.series().is_some());
        let (mut mean, mut second) = ([0.0; 2], [0.0; 4]);
        let got = poly.integrate(&mu, 0.0, &mut mean, &mut second);
        let want: f64 = (0..2).map(|j| log_diff_ndtr(lo[j], hi[j])).sum();
        assert!((got - want).abs() < 1e-13, "{got} vs {want}");
    }

    /// Placed polygons that exist (their constraints are met at some vertex).
    fn exists(placed: &Placed) -> bool {
        placed.vertex.iter().flatten().any(|v| placed.inside(*v))
    }

    #[test]
    fn fan_agrees_with_quadrature_on_random_polygons() {
        use rand::SeedableRng;
        let mut rng = rand_pcg::Pcg64::seed_from_u64(11);
        let mut compared = 0;
        for _ in 0..6000 {
            let Some(poly) = random_polygon(&mut rng) else { continue };
            let Some(placed) = random_placement(&poly, &mut rng) else { continue };
            let p = placed.nearest_point();
            let d = p[0].hypot(p[1]);
            let reference = placed.log_mass_quadrature(p, d);
            if let Some((fan, _)) = placed.log_mass_fan(d, &EDGE_ACCURACY[0], None).filter(|f| f.1 <= FAN_MAX_ERROR) {
                let fan = fan - 0.5 * d * d;
                assert!(
                    (fan - reference).abs() < 1e-10 * (1.0 + reference.abs()),
                    "fan {fan} vs quadrature {reference}: f {:?} e {:?} vertex {:?}",
                    poly.f,
                    placed.e,
                    placed.vertex
                );
                compared += 1;
            }
        }
        assert!(compared > 300, "only {compared} polygons compared");
    }

    /// A polygon's mean from its edges' fluxes, where it is given, against the slicing
    /// quadrature's central moments (a different method, its mean to ~1e-12 of the spread):
    /// within the error it reports plus that quadrature's, on random polygons from slivers to
    /// wide ones, means out to ~50 deviations.
    #[test]
    fn flux_means_agree_with_the_quadrature() {
        use rand::SeedableRng;
        let mut rng = rand_pcg::Pcg64::seed_from_u64(5);
        let (mut compared, mut declined) = (0, 0);
        for _ in 0..4000 {
            let Some(poly) = random_polygon(&mut rng) else { continue };
            let Some(placed) = random_placement(&poly, &mut rng) else { continue };
            let Some((_, mean, cov)) = placed.central_moments_quadrature() else { continue };
            let Some((_, got, error)) = placed.mean_by_fluxes() else {
                declined += 1;
                continue;
            };
            let spread = (cov[0] + cov[3]).sqrt();
            let scale = norm2(mean) + 1.0;
            for a in 0..2 {
                assert!(
                    (got[a] - mean[a]).abs() <= error + 1e-11 * scale + 1e-10 * spread,
                    "flux mean {got:?} vs quadrature {mean:?} (error {error}, spread {spread}): f {:?} e {:?}",
                    poly.f,
                    placed.e
                );
            }
            compared += 1;
        }
        assert!(compared > 1000 && declined > 0, "{compared} compared, {declined} declined");
    }

    /// Two nearly antiparallel edges that meet 15000 deviations out: a strip in all but name.
    /// The quadrature once stretched one piece from that vertex across the whole Gaussian
    /// (error 4e-4). Reference: 30-digit mpmath quadrature of the slices along the first
    /// normal, -0.31936564346500975.
    #[test]
    fn far_vertex_of_a_nearly_parallel_pair() {
        let f = vec![
            [-0.9883627673715276, -0.15211521973062275],
            [-0.20666268547052297, -0.9784122517804608],
            [0.09548201150154383, -0.9954311555700972],
            [0.7964629473294284, -0.6046873353488729],
            [0.9883205741771944, 0.15238911594356314],
        ];
        let e = vec![0.6031754654046728, 4.645974997572819, 4.863019225706089, 4.377981316345192, 3.553972550785887];
        let poly = Polygon2::new(f, e, [1.0, 0.0, 0.0, 1.0]);
        let placed = poly.place(&[0.0, 0.0]);
        let reference = -0.31936564346500975;
        assert!((placed.log_mass_quadrature([0.0, 0.0], 0.0) - reference).abs() < 1e-13);
        assert!((placed.log_mass(0.0) - reference).abs() < 1e-13);
    }

    /// A looser request is met (a loose level only where the fan's error estimate meets it,
    /// else the tight level or the quadrature), and the moments from the fan's own edge fluxes
    /// equal the closed form's.
    #[test]
    fn loose_requests_meet_their_accuracy_and_fan_fluxes_give_the_closed_form_moments() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_pcg::Pcg64::seed_from_u64(12);
        let mut checked = 0;
        for _ in 0..3000 {
            let Some(poly) = random_polygon(&mut rng) else { continue };
            let mu = [rng.random_range(-6.0..6.0), rng.random_range(-6.0..6.0)];
            let placed = poly.place(&mu);
            if !exists(&placed) || placed.vertex.iter().all(Option::is_none) {
                continue;
            }
            let tight = placed.log_mass(0.0);
            for rtol in [1e-13, 1e-10, 1e-7] {
                let loose = placed.log_mass(rtol);
                assert!((loose - tight).abs() <= rtol + 1e-14 * tight.abs(), "rtol {rtol}: {loose} vs {tight}");
            }
            let mut fluxes = vec![f64::NAN; placed.m()];
            let (log_mass, d, scaled) = placed.log_mass_and_fluxes(0.0, Some(&mut fluxes));
            if fluxes.iter().all(|f| f.is_nan()) {
                continue;
            }
            let (mean, second) = placed.whitened_moments(log_mass, d, scaled, &fluxes);
            let (mean_closed, second_closed) =
                placed.whitened_moments(log_mass, d, scaled, &vec![f64::NAN; placed.m()]);
            let scale = 1.0 + mean_closed.iter().chain(&second_closed).fold(0.0f64, |a, v| a.max(v.abs()));
            for (a, b) in mean.iter().chain(&second).zip(mean_closed.iter().chain(&second_closed)) {
                assert!((a - b).abs() < 1e-11 * scale, "moments {a} vs {b} (log mass {log_mass}, d {d})");
            }
            checked += 1;
        }
        assert!(checked > 500, "only {checked} polygons checked");
    }

    #[test]
    fn non_redundant_rows_of_half_planes_strips_and_degenerate_polygons() {
        let (x, y, nx, ny) = ([1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]);
        assert_eq!(non_redundant(&[], &[]), Some(vec![]));
        assert_eq!(non_redundant(&[x], &[0.3]), Some(vec![0]));
        assert_eq!(non_redundant(&[x, nx], &[1.0, 1.0]), Some(vec![0, 1]));
        // A looser copy of a row and a duplicate row go; a corner keeps both rows.
        assert_eq!(non_redundant(&[x, y, x, x], &[1.0, 1.0, 2.0, 1.0]), Some(vec![0, 1]));
        // A row beyond a corner of a triangle goes.
        let d = [std::f64::consts::FRAC_1_SQRT_2, std::f64::consts::FRAC_1_SQRT_2];
        assert_eq!(non_redundant(&[nx, ny, d, x], &[0.0, 0.0, 1.0, 5.0]), Some(vec![0, 1, 2]));
        // Empty strip, a zero-width strip, a single point.
        assert_eq!(non_redundant(&[x, nx], &[-1.0, 0.5]), None);
        assert_eq!(non_redundant(&[x, nx, y], &[0.2, -0.2, 1.0]), None);
        assert_eq!(non_redundant(&[x, y, [-d[0], -d[1]]], &[0.0, 0.0, 0.0]), None);
    }

    #[test]
    fn half_planes_strips_and_the_whole_plane() {
        let inf = f64::INFINITY;
        let l = [1.3, 0.0, 0.2, 0.6];
        check_rotated_box(0.4, [-inf, -inf], [1.5, inf], l, [0.1, 0.2], 1e-12);
        check_rotated_box(1.4, [-2.0, -inf], [1.5, inf], l, [0.1, 0.2], 1e-12);
        check_rotated_box(1.4, [25.0, -inf], [inf, inf], l, [0.1, 0.2], 1e-12);
        let poly = Polygon2::new(vec![], vec![], l);
        let (mut mean, mut second) = ([0.0; 2], [0.0; 4]);
        assert_eq!(poly.integrate(&[1.0, 2.0], 0.0, &mut mean, &mut second), 0.0);
    }

    /// Three edges that cross (the slice of a polyhedron within rounding of its vertex): the
    /// polygon is empty, as `non_redundant` says, and its mass zero, where it panicked.
    #[test]
    fn crossed_edges_have_no_mass() {
        let g = vec![
            [0.8622583483395293, 0.5064686966820229],
            [-0.853763492934684, -0.5206610203692684],
            [-0.8908935388612435, -0.45421217774878075],
        ];
        let e = vec![-1.245115122117113e-13, 7.802092305553288e-13, -2.2388757514590907e-12];
        assert!(non_redundant(&g, &e).is_none());
        let poly = Polygon2::new(g, vec![0.0; 3], [1.0, 0.0, 0.0, 1.0]);
        assert_eq!(poly.log_mass_whitened(e, 1e-5), f64::NEG_INFINITY);
    }

    /// The mass of the open wedge `{f0 . w <= e0, f2 . w <= e2}` under `N(0, I)`, by slices
    /// along `f0`: `int_{x <= e0} phi(x) Phi((e2 - r x) / |s|) dx`, `r = f0 . f2`,
    /// `s = f2 . rot90(f0)`, by 20-point Gauss-Legendre on panels a quarter of the width `|s|`
    /// over which the second factor turns on, from 40 deviations out: exact to rounding.
    fn open_wedge_log_mass(f0: [f64; 2], e0: f64, f2: [f64; 2], e2: f64) -> f64 {
        let (r, s) = (dot(f0, f2), dot(f2, rot90(f0)).abs());
        let lo = (-40.0f64).min(e0 - 1.0);
        let panels = ((e0 - lo) / (0.25 * s.min(1.0))).ceil() as usize;
        let width = (e0 - lo) / panels as f64;
        let mut terms = Vec::with_capacity(20 * panels);
        for p in 0..panels {
            let centre = lo + (p as f64 + 0.5) * width;
            for (node, weight) in GL_NODES.iter().zip(GL_WEIGHTS) {
                let x = centre + 0.5 * width * node;
                terms.push(log_pdf(x) + super::super::normal::log_ndtr((e2 - r * x) / s) + (0.5 * width * weight).ln());
            }
        }
        super::super::normal::log_sum_exp(terms.iter().copied())
    }

    /// A thin wedge near the mean closed by a row thousands of deviations out (a triangle with
    /// two far vertices) has the open wedge's mass: the row moves it by less than
    /// `exp(-1e6)`. The fan once sent such triangles to the quadrature (it counted the far
    /// vertices' rounding, which no edge integral reaches), and the quadrature took its reach
    /// from probes that all missed the bulk (zero width at the tip, nothing far out), one piece
    /// per hundred deviations: 4.6% off for the fuzzed case first below (whitened from
    /// `tests/test_fuzz.py`; reference: 30-digit mpmath quadrature of the open wedge's slices,
    /// -7.27712108481089849537).
    #[test]
    fn wedges_closed_far_away_have_the_open_wedge_mass() {
        use rand::{Rng, SeedableRng};
        let check = |f: [[f64; 2]; 3], e: [f64; 3], reference: f64| {
            let poly = Polygon2::new(f.to_vec(), e.to_vec(), [1.0, 0.0, 0.0, 1.0]);
            let placed = poly.place(&[0.0, 0.0]);
            let p = placed.nearest_point();
            let tol = 1e-11 * (1.0 + reference.abs());
            let quadrature = placed.log_mass_quadrature(p, norm2(p));
            assert!((quadrature - reference).abs() < tol, "quadrature {quadrature} vs {reference}: f {f:?} e {e:?}");
            let (mut mean, mut second) = ([0.0; 2], [0.0; 4]);
            for got in [placed.log_mass(0.0), poly.integrate(&[0.0, 0.0], 0.0, &mut mean, &mut second)] {
                assert!((got - reference).abs() < tol, "log mass {got} vs {reference}: f {f:?} e {e:?}");
            }
            assert!(mean.iter().chain(&second).all(|v| v.is_finite()));
        };
        let f = [
            [-0.9940704370156079, 0.10873806257055645],
            [0.9910827167237839, -0.13324807169863223],
            [0.9981309531222265, -0.06111137716755852],
        ];
        let e = [-0.16503597328090333, 5551.952575638944, 0.09804854781489909];
        let own = open_wedge_log_mass(f[0], e[0], f[2], e[2]);
        assert!((own - -7.27712108481089849537).abs() < 1e-12, "{own}");
        check(f, e, -7.27712108481089849537);
        let mut rng = rand_pcg::Pcg64::seed_from_u64(13);
        for _ in 0..30 {
            let a0 = rng.random_range(0.0..std::f64::consts::TAU);
            let opening = rng.random_range(0.5f64..20.0).to_radians();
            let a2 = a0 + std::f64::consts::PI - opening;
            let (f0, f2) = ([a0.cos(), a0.sin()], [a2.cos(), a2.sin()]);
            // The tip within 3 deviations; the wedge opens along -rot90(f0) or rot90(f0),
            // whichever both normals point away from.
            let tip = [rng.random_range(-2.0..2.0), rng.random_range(-2.0..2.0)];
            let t = rot90(f0);
            let along = if dot(f2, t) < 0.0 { t } else { [-t[0], -t[1]] };
            let tilt = rng.random_range(-0.5..0.5f64);
            let f1 = [along[0] * tilt.cos() - along[1] * tilt.sin(), along[0] * tilt.sin() + along[1] * tilt.cos()];
            let far = 10f64.powf(rng.random_range(3.0..5.0));
            let e = [dot(f0, tip), dot(f1, tip) + far, dot(f2, tip)];
            check([f0, f1, f2], e, open_wedge_log_mass(f0, e[0], f2, e[2]));
        }
    }

    /// Two rows antiparallel to within 5e-8 rad in whitened coordinates (a rank-1 region of
    /// an S = 2 model at |A|^2 / psi ~ 1e9, from the fuzzing) are treated as a strip, and
    /// this one's sides cross: the true region is a wedge whose tip lies ~3e7 deviations out,
    /// mass below exp(-4e14). Its log mass must be -inf (or that small) and its moments must
    /// not be asked for as NaN mass: the truncated normal of the crossed interval once gave NaN.
    #[test]
    fn a_crossed_nearly_parallel_pair_has_no_mass() {
        let f = vec![[-0.9999999998959734, 1.4424051895911272e-5], [0.9999999998966964, -1.43738441382536e-5]];
        let e = vec![-29.89341949629131, 28.414141604286456];
        // The rows' crossing, ~3e7 deviations out, bounds the true log mass.
        let det = f[0][0] * f[1][1] - f[0][1] * f[1][0];
        let tip = [(e[0] * f[1][1] - e[1] * f[0][1]) / det, (f[0][0] * e[1] - f[1][0] * e[0]) / det];
        assert!(norm2(tip) > 1e7);
        let poly = Polygon2::new(f, e, [1.0, 0.0, 0.0, 1.0]);
        assert!(poly.log_mass(&[0.0, 0.0], 0.0) <= -0.25 * dot(tip, tip));
        let (mut mean, mut second) = ([0.0; 2], [0.0; 4]);
        let log_mass = poly.integrate(&[0.0, 0.0], 0.0, &mut mean, &mut second);
        assert!(log_mass <= -0.25 * dot(tip, tip), "{log_mass}");
    }
}
