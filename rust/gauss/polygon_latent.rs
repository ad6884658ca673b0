//! S = 2: the mass and moments of `N(mu, Sigma)` on a convex polygon in the polygon's own
//! (latent) frame, centred on the polygon's point nearest the mean, for where the whitened
//! frame of `polygon.rs` fails: a near-singular `Sigma` (a rank-one map at tiny noise)
//! stretches one direction by ~1e8, so the edges become nearly antiparallel in whitened
//! units, and a mean 1e10 standard deviations out puts the mass within ~1e-18 of a vertex,
//! below the rounding of the whitened offsets.
//!
//! Here the polygon is described by its rows relative to the nearest point `z*` (the rows
//! through it get offset exactly 0, so the vertex there is exactly the origin), clipped to a
//! box outside which the Gaussian is below `e^-800` of its value at `z*`, and integrated as a
//! fan of triangles from the origin: `y = rho ((1 - s) a + s b)`, `rho, s in [0, 1]`, where the
//! exponent is `-(d^2 / 2 + rho c(s) + rho^2 q(s) / 2)` with `c(s) = m(s)^T Sigma^-1 (z* - mu)`
//! (linear in `s`, non-negative since `z*` is nearest) and `q(s) = m(s)^T Sigma^-1 m(s)`.
//! Both one-dimensional integrals are composite Gauss-Legendre rules graded toward their
//! peaks, at the scales `1 / c` and `1 / sqrt(q)` the exponent sets. Only a fallback: slower
//! than the whitened fan (tens of thousands of exponentials per triangle).

use super::normal::{gauss_legendre, GL20_HALF};
use crate::linalg::dot2;

/// The box's half-width is `sqrt(2 * BOX_EXPONENT * lambda_max(Sigma))`: beyond, the
/// Gaussian is below `e^-BOX_EXPONENT` of its largest value on the polygon.
const BOX_EXPONENT: f64 = 800.0;

#[inline]
fn cross(a: [f64; 2], b: [f64; 2]) -> f64 {
    a[0] * b[1] - a[1] * b[0]
}

/// `L^{-1} v` for the lower Cholesky factor `l` (row-major).
#[inline]
fn whiten(l: [f64; 4], v: [f64; 2]) -> [f64; 2] {
    let w0 = v[0] / l[0];
    [w0, (v[1] - l[2] * w0) / l[3]]
}

/// The point of `{z : n_i . z <= o_i}` nearest `mu` in the metric `Sigma^-1`, with the rows
/// through it: along each row's line the one-dimensional minimiser clamped to the row's
/// segment, the best over the rows; a clamped end is the exact intersection with the row
/// that clamped it. `None` when `mu` is inside or no row has a segment.
fn nearest(n: &[[f64; 2]], o: &[f64], l: [f64; 4], mu: [f64; 2]) -> Option<([f64; 2], Vec<usize>)> {
    if n.iter().zip(o).all(|(ni, oi)| dot2(*ni, mu) <= *oi) {
        return None;
    }
    let mut best: Option<(f64, [f64; 2], Vec<usize>)> = None;
    for (i, (&ni, &oi)) in n.iter().zip(o).enumerate() {
        let nn = dot2(ni, ni);
        if !(nn > 0.0) {
            continue;
        }
        let u = [-ni[1] / nn.sqrt(), ni[0] / nn.sqrt()];
        let p = [ni[0] * oi / nn, ni[1] * oi / nn];
        let (mut lo, mut hi) = ((f64::NEG_INFINITY, None), (f64::INFINITY, None));
        let mut feasible = true;
        for (j, (&nj, &oj)) in n.iter().zip(o).enumerate() {
            if j == i {
                continue;
            }
            let rate = dot2(nj, u);
            let room = oj - dot2(nj, p);
            if rate > 0.0 {
                if room / rate < hi.0 {
                    hi = (room / rate, Some(j));
                }
            } else if rate < 0.0 {
                if room / rate > lo.0 {
                    lo = (room / rate, Some(j));
                }
            } else if room < 0.0 {
                feasible = false;
            }
        }
        if !feasible || lo.0 > hi.0 {
            continue;
        }
        let (wu, wp) = (whiten(l, u), whiten(l, [p[0] - mu[0], p[1] - mu[1]]));
        let t = -dot2(wu, wp) / dot2(wu, wu);
        if !t.is_finite() {
            continue;
        }
        let (z, active) = if t <= lo.0 {
            vertex(n, o, i, lo.1)
        } else if t >= hi.0 {
            vertex(n, o, i, hi.1)
        } else {
            ([p[0] + t * u[0], p[1] + t * u[1]], vec![i])
        };
        let w = whiten(l, [z[0] - mu[0], z[1] - mu[1]]);
        let d2 = dot2(w, w);
        if d2.is_finite() && best.as_ref().is_none_or(|b| d2 < b.0) {
            best = Some((d2, z, active));
        }
    }
    best.map(|(_, z, active)| (z, active))
}

/// The distance in whitened units from `mu` to the polygon (`None` inside or empty).
pub(crate) fn distance(n: &[[f64; 2]], o: &[f64], l: [f64; 4], mu: [f64; 2]) -> Option<f64> {
    let (z, _) = nearest(n, o, l, mu)?;
    let w = whiten(l, [z[0] - mu[0], z[1] - mu[1]]);
    Some(dot2(w, w).sqrt())
}

/// The intersection of rows `i` and `j` (by Cramer's rule), or the foot of row `i` if `j` is
/// absent (an unbounded end: never the clamped side of a finite minimiser).
fn vertex(n: &[[f64; 2]], o: &[f64], i: usize, j: Option<usize>) -> ([f64; 2], Vec<usize>) {
    let Some(j) = j else {
        let nn = dot2(n[i], n[i]);
        return ([n[i][0] * o[i] / nn, n[i][1] * o[i] / nn], vec![i]);
    };
    (intersect((n[i], o[i]), (n[j], o[j])), vec![i, j])
}

fn intersect(a: ([f64; 2], f64), b: ([f64; 2], f64)) -> [f64; 2] {
    let ((na, sa), (nb, sb)) = (a, b);
    let det = cross(na, nb);
    [(sa * nb[1] - sb * na[1]) / det, (na[0] * sb - nb[0] * sa) / det]
}

/// A convex polygon as the cyclic list of its edges' lines `(normal, offset)`, counter-
/// clockwise; vertex `k` is the intersection of lines `k` and `k + 1`, computed from the two
/// lines (so lines through the origin meet exactly there).
struct Clipped {
    lines: Vec<([f64; 2], f64)>,
}

impl Clipped {
    fn square(half: f64) -> Self {
        Clipped { lines: vec![([1.0, 0.0], half), ([0.0, 1.0], half), ([-1.0, 0.0], half), ([0.0, -1.0], half)] }
    }

    fn vertex(&self, k: usize) -> [f64; 2] {
        let m = self.lines.len();
        intersect(self.lines[k % m], self.lines[(k + 1) % m])
    }

    /// Cuts by `{y : n . y <= s}`; false if nothing is left.
    fn clip(&mut self, n: [f64; 2], s: f64) -> bool {
        let m = self.lines.len();
        let outside: Vec<bool> = (0..m).map(|k| dot2(n, self.vertex(k)) > s).collect();
        if !outside.iter().any(|&v| v) {
            return true;
        }
        if outside.iter().all(|&v| v) {
            return false;
        }
        // The first outside vertex after an inside one, and the last of that run.
        let first = (0..m).find(|&k| outside[k] && !outside[(k + m - 1) % m]).unwrap_or(0);
        let mut last = first;
        while outside[(last + 1) % m] {
            last = (last + 1) % m;
        }
        // Line `first` (inside vertex `first - 1` to outside vertex `first`) and line
        // `last + 1` (outside `last` to inside `last + 1`) are cut; the lines between, both
        // of whose ends are outside, go; the new line goes in between.
        let mut lines = Vec::with_capacity(m + 1);
        let mut k = (last + 1) % m;
        loop {
            lines.push(self.lines[k]);
            if k == first {
                break;
            }
            k = (k + 1) % m;
        }
        lines.push((n, s));
        self.lines = lines;
        true
    }
}

/// `(log mass, mean, central covariance)` of `N(mu, Sigma)` (`Sigma = L L^T`, `l` row-major
/// lower) on `{z : n_i . z <= o_i}` by the fan from the nearest point; `None` when `mu` is
/// inside (the whitened methods have no trouble there) or the polygon is empty.
pub(crate) fn moments(n: &[[f64; 2]], o: &[f64], l: [f64; 4], mu: [f64; 2]) -> Option<(f64, [f64; 2], [f64; 4])> {
    let (z, active) = nearest(n, o, l, mu)?;
    let w_star = whiten(l, [z[0] - mu[0], z[1] - mu[1]]);
    let d2 = dot2(w_star, w_star);
    let half = (2.0 * BOX_EXPONENT * (l[0] * l[0] + l[2] * l[2] + l[3] * l[3])).sqrt();
    let mut poly = Clipped::square(half);
    let rows = active.iter().copied().chain((0..n.len()).filter(|i| !active.contains(i)));
    for i in rows {
        let slack = if active.contains(&i) { 0.0 } else { (o[i] - dot2(n[i], z)).max(0.0) };
        if !poly.clip(n[i], slack) {
            return None;
        }
    }
    // The fan: each edge not through the origin is a triangle (0, a, b).
    let m = poly.lines.len();
    let mut sums = [0.0; 6];
    for k in 0..m {
        let (line, slack) = poly.lines[k];
        if slack == 0.0 || dot2(line, line) == 0.0 {
            continue;
        }
        let (a, b) = (poly.vertex(k + m - 1), poly.vertex(k));
        let jacobian = cross(a, b);
        if !(jacobian > 0.0) {
            continue;
        }
        let (wa, wb) = (whiten(l, a), whiten(l, b));
        let (ca, cb) = (dot2(wa, w_star).max(0.0), dot2(wb, w_star).max(0.0));
        let q = |s: f64| {
            let w = [wa[0] + s * (wb[0] - wa[0]), wa[1] + s * (wb[1] - wa[1])];
            dot2(w, w)
        };
        let triangle = fan_triangle(a, b, ca, cb, q, [dot2(wa, wa), dot2(wa, wb), dot2(wb, wb)]);
        for (total, v) in sums.iter_mut().zip(triangle) {
            *total += jacobian * v;
        }
    }
    if !(sums[0] > 0.0) || !sums.iter().all(|v| v.is_finite()) {
        return None;
    }
    let log_mass = -0.5 * d2 - (2.0 * std::f64::consts::PI).ln() - (l[0] * l[3]).abs().ln() + sums[0].ln();
    let mean = [sums[1] / sums[0], sums[2] / sums[0]];
    let cov = [
        sums[3] / sums[0] - mean[0] * mean[0],
        sums[4] / sums[0] - mean[0] * mean[1],
        sums[4] / sums[0] - mean[0] * mean[1],
        sums[5] / sums[0] - mean[1] * mean[1],
    ];
    Some((log_mass, [z[0] + mean[0], z[1] + mean[1]], cov))
}

/// `int_0^1 int_0^1 rho [1, y, y y^T] exp(-rho c(s) - rho^2 q(s) / 2) drho ds` with
/// `y = rho m(s)`, `m(s) = (1 - s) a + s b`, `c` linear from `ca` to `cb`, `q` the quadratic
/// with `q(0), bilinear, q(1)` in `qs`; as `[M0, M1x, M1y, M2xx, M2xy, M2yy]`.
fn fan_triangle(a: [f64; 2], b: [f64; 2], ca: f64, cb: f64, q: impl Fn(f64) -> f64, qs: [f64; 3]) -> [f64; 6] {
    // Breakpoints in s: graded toward the end where c is smaller and toward q's minimum, each
    // down to a tenth of its peak's width.
    let mut cuts = vec![0.0, 1.0];
    let mut grade = |centre: f64, width: f64| {
        let mut step = 0.5;
        while step > 0.1 * width && step > 1e-300 {
            for v in [centre - step, centre + step] {
                if v > 0.0 && v < 1.0 {
                    cuts.push(v);
                }
            }
            step *= 0.5;
        }
    };
    let (c_end, c_small) = if ca <= cb { (0.0, ca) } else { (1.0, cb) };
    // Along s, c changes by |cb - ca| and the scale at the peak is max(c, sqrt(q)).
    let slope = (cb - ca).abs();
    if slope > 0.0 {
        grade(c_end, (c_small + q(c_end).sqrt()) / slope);
    }
    // q(s) = qa (1 - s)^2 + 2 qab s (1 - s) + qb s^2: its minimum and curvature.
    let curvature = qs[0] - 2.0 * qs[1] + qs[2];
    if curvature > 0.0 {
        let s_min = ((qs[0] - qs[1]) / curvature).clamp(0.0, 1.0);
        let q_min = q(s_min).max(0.0);
        grade(s_min, (q_min / curvature).sqrt().max(1e-300));
    }
    cuts.sort_by(f64::total_cmp);
    cuts.dedup();
    let mut total = [0.0; 6];
    for pair in cuts.windows(2) {
        let (lo, hi) = (pair[0], pair[1]);
        let part = gauss_legendre(&GL20_HALF, 0.5 * (lo + hi), 0.5 * (hi - lo), |s| {
            let m = [(1.0 - s) * a[0] + s * b[0], (1.0 - s) * a[1] + s * b[1]];
            let c = (1.0 - s) * ca + s * cb;
            let [r1, r2, r3] = radial(c, q(s));
            [r1, r2 * m[0], r2 * m[1], r3 * m[0] * m[0], r3 * m[0] * m[1], r3 * m[1] * m[1]]
        });
        for (t, v) in total.iter_mut().zip(part) {
            *t += v;
        }
    }
    total
}

/// `int_0^1 rho^k exp(-rho c - rho^2 q / 2) drho` for `k = 1, 2, 3` (`c, q >= 0`): in units of
/// the exponent's scale `sigma = 1 / max(1, c, sqrt(q))`, on panels doubling from `[0, 1]`
/// out to 64 scales (beyond, `e^-64` of the peak) or the end of the segment.
fn radial(c: f64, q: f64) -> [f64; 3] {
    let sigma = 1.0 / c.max(q.sqrt()).max(1.0);
    let end = (1.0 / sigma).min(64.0);
    let mut total = [0.0; 3];
    let (mut lo, mut hi) = (0.0f64, 1.0f64.min(end));
    while lo < end {
        let part = gauss_legendre(&GL20_HALF, 0.5 * (lo + hi), 0.5 * (hi - lo), |x| {
            let rho = sigma * x;
            let f = (-rho * c - 0.5 * rho * rho * q).exp();
            [rho * f, rho * rho * f, rho * rho * rho * f]
        });
        for (t, v) in total.iter_mut().zip(part) {
            *t += sigma * v;
        }
        lo = hi;
        hi = (2.0 * hi).min(end);
    }
    total
}
