//! S = 3: the mass of `N(0, I)` on a polyhedron `{w : F w <= e}` (non-redundant unit rows) as
//! a one-dimensional integral of exact polygon masses, `int phi(t) M(t) dt`, where `M(t)` is
//! the two-dimensional mass of the slice at `t` (`polygon.rs`, near machine precision).
//!
//! Slices keep their edges between the projections of the polyhedron's vertices, so `M` is
//! analytic there and Gauss-Kronrod converges geometrically on panels that respect those
//! breakpoints. The integrand is log-concave (the marginal of a log-concave density), which
//! gives a rigorous bound on every tail not yet integrated. Slices are taken across the
//! direction of the polyhedron's point nearest the mean, at distance `d`: the polyhedron lies
//! in `t >= d`, and far in a tail the integrand decays from there at a rate of about `d`.

use super::normal::{log_pdf, log_sum_exp};
use super::polygon::{non_redundant, Polygon2};
use crate::cancel::Cancel;
use crate::error::Result;
use crate::linalg::dot;
use crate::partition::complement_basis;

/// Gauss-Kronrod 7-15 on [-1, 1] (QUADPACK's qk15): the non-negative Kronrod nodes, largest
/// first, and their weights; nodes 1, 3, 5 and 7 (zero) are the 7-point Gauss nodes.
const KRONROD_NODES: [f64; 8] = [
    0.991_455_371_120_812_6,
    0.949_107_912_342_758_5,
    0.864_864_423_359_769_1,
    0.741_531_185_599_394_4,
    0.586_087_235_467_691_1,
    0.405_845_151_377_397_2,
    0.207_784_955_007_898_5,
    0.0,
];
const KRONROD_WEIGHTS: [f64; 8] = [
    0.022_935_322_010_529_225,
    0.063_092_092_629_978_55,
    0.104_790_010_322_250_18,
    0.140_653_259_715_525_92,
    0.169_004_726_639_267_9,
    0.190_350_578_064_785_4,
    0.204_432_940_075_298_9,
    0.209_482_141_084_727_83,
];
const GAUSS_WEIGHTS: [f64; 4] =
    [0.129_484_966_168_869_7, 0.279_705_391_489_276_7, 0.381_830_050_505_118_9, 0.417_959_183_673_469_4];

/// Panels (each 15 polygon masses) before the integral reports what accuracy it reached.
const MAX_PANELS: usize = 400;

/// The accuracy asked of the quadrature is never below this (the polygon masses themselves are
/// good to ~1e-14).
const FLOOR_RTOL: f64 = 1e-13;

/// `(log mass, estimated relative error)`; `Err(Interrupted)` once `cancel` is set (checked
/// at every panel: 15 polygon masses, microseconds).
pub fn log_mass(f: &[f64], e: &[f64], nearest: &[f64], rtol: f64, cancel: &Cancel) -> Result<(f64, f64)> {
    let m = e.len();
    if m == 0 {
        return Ok((0.0, 0.0));
    }
    let rows: Vec<[f64; 3]> = (0..m).map(|i| [f[3 * i], f[3 * i + 1], f[3 * i + 2]]).collect();
    if let Some(lineality) = lineality_direction(&rows) {
        return Ok((lower_dimensional_log_mass(&rows, e, lineality), 0.0));
    }
    let d = norm(nearest);
    let frame = if d > 1e-12 {
        let u = [nearest[0] / d, nearest[1] / d, nearest[2] / d];
        let b = complement_basis(&u);
        [u, [b[0][0], b[0][1], b[0][2]], [b[1][0], b[1][1], b[1][2]]]
    } else {
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    };
    let rotated: Vec<[f64; 3]> =
        rows.iter().map(|r| [dot(r, &frame[0]), dot(r, &frame[1]), dot(r, &frame[2])]).collect();
    let rtol = rtol.max(FLOOR_RTOL);
    // The slices' own error is the same in the Gauss and Kronrod estimates, so it is not in
    // their difference: it is kept at a hundredth of the accuracy asked and reported on top.
    let slicer = Slicer::new(&rotated, e, 0.01 * rtol);
    let t0 = if d > 1e-12 { d } else { 0.0 };
    let (lo, hi) = slicer.range;
    let t0 = t0.clamp(lo, hi);
    let scale = 1.0 / d.max(1.0);

    let mut panels: Vec<Panel> = Vec::new();
    // Bounds on the tails left out, part of the reported error.
    let mut log_tails = Vec::new();
    // Outwards from t0 on each side, panels doubling in width and cut at breakpoints, until the
    // side ends or log-concavity bounds what is left beyond the last panel as negligible.
    for side in [1.0, -1.0] {
        let end = if side > 0.0 { hi } else { lo };
        let mut at = t0;
        let mut width = 1.5 * scale;
        while (end - at) * side > 0.0 && panels.len() < MAX_PANELS {
            cancel.check()?;
            let mut next = at + side * width;
            if (next - end) * side > 0.0 {
                next = end;
            }
            if let Some(b) = slicer.next_breakpoint(at, side) {
                if (next - b) * side > 0.0 {
                    next = b;
                }
            }
            let (a, b) = if side > 0.0 { (at, next) } else { (next, at) };
            let panel = slicer.panel(a, b);
            let total = log_sum_exp(panels.iter().map(|p| p.log_value).chain([panel.log_value]));
            let tail = panel.log_tail_bound(side);
            panels.push(panel);
            // Growth from the panel just done: a jump past a run of close breakpoints must not
            // land in one wide panel whose nodes all miss the mass near its end.
            width = (2.0 * (next - at).abs()).max(0.1 * scale);
            at = next;
            if tail < total + (1e-3 * rtol).ln() {
                log_tails.push(tail);
                break;
            }
            if tail == f64::NEG_INFINITY {
                break;
            }
        }
    }
    // Refine where the Gauss and Kronrod estimates disagree most.
    loop {
        let total = log_sum_exp(panels.iter().map(|p| p.log_value));
        let error = log_sum_exp(panels.iter().map(|p| p.log_error).chain(log_tails.iter().copied()));
        if total == f64::NEG_INFINITY {
            return Ok((f64::NEG_INFINITY, 0.0));
        }
        if error <= total + rtol.ln() || panels.len() >= MAX_PANELS {
            return Ok((total, (error - total).exp() + slicer.slice_rtol));
        }
        cancel.check()?;
        let worst = (0..panels.len()).max_by(|&i, &j| panels[i].log_error.total_cmp(&panels[j].log_error)).unwrap();
        let Panel { a, b, .. } = panels.swap_remove(worst);
        let mid = 0.5 * (a + b);
        panels.push(slicer.panel(a, mid));
        panels.push(slicer.panel(mid, b));
    }
}

/// One panel's Kronrod estimate, the size of its disagreement with Gauss, and the log
/// integrand at its two outermost nodes on either side (for tail bounds).
struct Panel {
    a: f64,
    b: f64,
    log_value: f64,
    log_error: f64,
    left: [(f64, f64); 2],
    right: [(f64, f64); 2],
}

impl Panel {
    /// A bound on the log of the integral beyond the panel on `side`, from the secant through
    /// its two outermost nodes (log-concavity); `+inf` while the integrand still rises.
    fn log_tail_bound(&self, side: f64) -> f64 {
        let [(t_out, v_out), (t_in, v_in)] = if side > 0.0 { self.right } else { self.left };
        if v_out == f64::NEG_INFINITY {
            return f64::NEG_INFINITY;
        }
        let slope = (v_out - v_in) / (t_out - t_in) * side;
        if !(slope < 0.0) {
            return f64::INFINITY;
        }
        let edge = if side > 0.0 { self.b } else { self.a };
        v_out + slope * (edge - t_out).abs() - (-slope).ln()
    }
}

struct SliceRow {
    /// In the slice at `t` the row reads `g . y <= c - s t` (`g` unit).
    g: [f64; 2],
    c: f64,
    s: f64,
}

struct Slicer {
    rows: Vec<SliceRow>,
    /// Projections of the vertices on the slicing axis, increasing.
    breakpoints: Vec<f64>,
    range: (f64, f64),
    /// The relative accuracy of each slice's mass.
    slice_rtol: f64,
}

impl Slicer {
    /// Rows in the slicing frame (first coordinate across the slices), pointed polyhedron.
    fn new(rows: &[[f64; 3]], e: &[f64], slice_rtol: f64) -> Self {
        let m = rows.len();
        let mut slice_rows = Vec::with_capacity(m);
        for (r, &ei) in rows.iter().zip(e) {
            let n = r[1].hypot(r[2]);
            // Rows normal to the slicing axis bound t only, and are met at the vertices.
            if n > 1e-12 {
                slice_rows.push(SliceRow { g: [r[1] / n, r[2] / n], c: ei / n, s: r[0] / n });
            }
        }
        let mut breakpoints = Vec::new();
        for i in 0..m {
            for j in i + 1..m {
                for k in j + 1..m {
                    if let Some(v) = solve3(&rows[i], &rows[j], &rows[k], [e[i], e[j], e[k]]) {
                        if rows
                            .iter()
                            .zip(e)
                            .all(|(r, &el)| dot(r, &v) <= el + crate::linalg::Tolerance::DEFAULT.at(el.abs()))
                        {
                            breakpoints.push(v[0]);
                        }
                    }
                }
            }
        }
        breakpoints.sort_by(f64::total_cmp);
        breakpoints.dedup_by(|x, y| (*x - *y).abs() <= 1e-12 * (1.0 + y.abs()));
        // A pointed polyhedron has a vertex; it runs to infinity along an extreme ray of its
        // recession cone `{r : F r <= 0}`, each on two of the planes `f_i . r = 0`.
        let (mut lo, mut hi) = match (breakpoints.first(), breakpoints.last()) {
            (Some(&first), Some(&last)) => (first, last),
            _ => (f64::NEG_INFINITY, f64::INFINITY),
        };
        for i in 0..m {
            for j in i + 1..m {
                let c = cross(&rows[i], &rows[j]);
                let n = norm(&c);
                if n <= 1e-12 {
                    continue;
                }
                for sign in [1.0, -1.0] {
                    let ray = [sign * c[0] / n, sign * c[1] / n, sign * c[2] / n];
                    if rows.iter().all(|r| dot(r, &ray) <= 1e-12) {
                        if ray[0] > 1e-12 {
                            hi = f64::INFINITY;
                        } else if ray[0] < -1e-12 {
                            lo = f64::NEG_INFINITY;
                        }
                    }
                }
            }
        }
        Slicer { rows: slice_rows, breakpoints, range: (lo, hi), slice_rtol }
    }

    /// The first breakpoint strictly beyond `t` on `side`.
    fn next_breakpoint(&self, t: f64, side: f64) -> Option<f64> {
        let beyond = |b: f64| (b - t) * side > 1e-12 * (1.0 + t.abs());
        if side > 0.0 {
            self.breakpoints.iter().copied().find(|&b| beyond(b))
        } else {
            self.breakpoints.iter().rev().copied().find(|&b| beyond(b))
        }
    }

    /// The rows with an edge of positive length in the slice at `t`; `None` for an empty slice.
    fn edges_at(&self, t: f64) -> Option<Vec<usize>> {
        let g: Vec<[f64; 2]> = self.rows.iter().map(|r| r.g).collect();
        let offsets: Vec<f64> = self.rows.iter().map(|r| r.c - r.s * t).collect();
        non_redundant(&g, &offsets)
    }

    fn panel(&self, a: f64, b: f64) -> Panel {
        let (centre, half) = (0.5 * (a + b), 0.5 * (b - a));
        // The panel's slices are empty (no edges) or all have these edges.
        let edges = self.edges_at(centre);
        let polygon = edges.as_ref().map(|edges| {
            Polygon2::new(edges.iter().map(|&i| self.rows[i].g).collect(), vec![0.0; edges.len()], [1.0, 0.0, 0.0, 1.0])
        });
        let log_integrand = |t: f64| {
            let (Some(edges), Some(polygon)) = (&edges, &polygon) else { return f64::NEG_INFINITY };
            let offsets = edges.iter().map(|&i| self.rows[i].c - self.rows[i].s * t).collect();
            log_pdf(t) + polygon.log_mass_whitened(offsets, self.slice_rtol)
        };
        // Nodes from the left end to the right, with their Kronrod and Gauss weights.
        let mut nodes = [(0.0, 0.0, 0.0, 0.0); 15];
        for k in 0..8 {
            let gauss = if k % 2 == 1 { GAUSS_WEIGHTS[k / 2] } else { 0.0 };
            let x = KRONROD_NODES[k];
            nodes[k] = (centre - half * x, KRONROD_WEIGHTS[k], gauss, 0.0);
            nodes[14 - k] = (centre + half * x, KRONROD_WEIGHTS[k], gauss, 0.0);
        }
        for node in nodes.iter_mut() {
            node.3 = log_integrand(node.0);
        }
        let log_half = half.ln();
        let kronrod = log_half + log_sum_exp(nodes.iter().map(|n| n.1.ln() + n.3));
        let gauss = log_half + log_sum_exp(nodes.iter().filter(|n| n.2 > 0.0).map(|n| n.2.ln() + n.3));
        let log_error = if kronrod == f64::NEG_INFINITY {
            f64::NEG_INFINITY
        } else {
            kronrod + (gauss - kronrod).exp_m1().abs().ln()
        };
        Panel {
            a,
            b,
            log_value: kronrod,
            log_error,
            left: [(nodes[0].0, nodes[0].3), (nodes[1].0, nodes[1].3)],
            right: [(nodes[14].0, nodes[14].3), (nodes[13].0, nodes[13].3)],
        }
    }
}

/// A direction along which the polyhedron is invariant (all rows orthogonal to it), if any.
fn lineality_direction(rows: &[[f64; 3]]) -> Option<[f64; 3]> {
    let mut best = ([0.0; 3], 0.0);
    for i in 0..rows.len() {
        for j in i + 1..rows.len() {
            let c = cross(&rows[i], &rows[j]);
            let n = norm(&c);
            if n > best.1 {
                best = ([c[0] / n, c[1] / n, c[2] / n], n);
            }
        }
    }
    if best.1 <= 1e-10 {
        // All rows parallel: any direction orthogonal to them.
        let b = complement_basis(&rows[0]);
        return Some([b[0][0], b[0][1], b[0][2]]);
    }
    rows.iter().all(|r| dot(r, &best.0).abs() <= 1e-10).then_some(best.0)
}

/// The mass of a polyhedron invariant along `lineality`: a polygon in the plane orthogonal to it.
fn lower_dimensional_log_mass(rows: &[[f64; 3]], e: &[f64], lineality: [f64; 3]) -> f64 {
    let b = complement_basis(&lineality);
    let planar: Vec<[f64; 2]> = rows
        .iter()
        .map(|r| {
            let p = [dot(r, &[b[0][0], b[0][1], b[0][2]]), dot(r, &[b[1][0], b[1][1], b[1][2]])];
            let n = p[0].hypot(p[1]);
            [p[0] / n, p[1] / n]
        })
        .collect();
    // Parallel rows (a half-space or a slab) are a half-plane or strip, which the polygon
    // integrates along their common normal.
    Polygon2::new(planar, vec![0.0; e.len()], [1.0, 0.0, 0.0, 1.0]).log_mass_whitened(e.to_vec(), 0.0)
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

fn cross(a: &[f64; 3], b: &[f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

/// The point on three planes `r_k . v = e_k`, if they meet in one point.
fn solve3(a: &[f64; 3], b: &[f64; 3], c: &[f64; 3], e: [f64; 3]) -> Option<[f64; 3]> {
    let bc = cross(b, c);
    let det = dot(a, &bc);
    if det.abs() <= 1e-12 {
        return None;
    }
    let (ca, ab) = (cross(c, a), cross(a, b));
    Some([
        (e[0] * bc[0] + e[1] * ca[0] + e[2] * ab[0]) / det,
        (e[0] * bc[1] + e[1] * ca[1] + e[2] * ab[1]) / det,
        (e[0] * bc[2] + e[1] * ca[2] + e[2] * ab[2]) / det,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gauss::IntegrationSettings;

    /// Kronrod's 15 nodes integrate polynomials of degree 22 exactly, Gauss's 7 degree 13.
    #[test]
    fn kronrod_and_gauss_weights_are_exact_for_polynomials() {
        for degree in 0..=22 {
            let exact = if degree % 2 == 1 { 0.0 } else { 2.0 / (degree as f64 + 1.0) };
            let mut kronrod = KRONROD_WEIGHTS[7] * 0f64.powi(degree);
            let mut gauss = GAUSS_WEIGHTS[3] * 0f64.powi(degree);
            for k in 0..7 {
                let x = KRONROD_NODES[k];
                kronrod += KRONROD_WEIGHTS[k] * (x.powi(degree) + (-x).powi(degree));
                if k % 2 == 1 {
                    gauss += GAUSS_WEIGHTS[k / 2] * (x.powi(degree) + (-x).powi(degree));
                }
            }
            assert!((kronrod - exact).abs() < 1e-14, "Kronrod, degree {degree}: {kronrod} vs {exact}");
            if degree <= 13 {
                assert!((gauss - exact).abs() < 1e-14, "Gauss, degree {degree}: {gauss} vs {exact}");
            }
        }
    }

    /// A region met by `ExactEM(latent_dim=3).fit(wave(...))`: a panel one vertex wide (1e-11)
    /// whose edges, fixed at its centre, cross at some of its nodes, an empty slice. It panicked
    /// (NaN slicing direction); the slices' mass agrees with separation of variables (QMC, an
    /// independent method), within both methods' reported errors.
    #[test]
    fn a_panel_at_a_vertex_with_empty_slices() {
        let f = [
            0.6615627988720467,
            0.40990047510527405,
            0.6279460674747908,
            -0.6344768000900206,
            -0.45195105270193325,
            -0.6270402188928094,
            -0.9572956163711301,
            -0.1726357144004794,
            -0.23190949310033507,
            -0.7535572746544926,
            -0.20275495432962581,
            -0.6253334009231275,
        ];
        let e = [-0.12999666140686936, 0.45350098467954564, 0.04799261292761234, -1.3645911440046004];
        let tilt = [2.100658578687103, -6.303618552225146, 1.6946391805924463];
        let (log_mass, error) = log_mass(&f, &e, &tilt, 1e-3, &Cancel::new()).unwrap();
        assert!(log_mass.is_finite() && error.is_finite() && error <= 1e-3, "{log_mass} +- {error}");
        let (_, _, inside) = crate::gauss::reduce(&f, &e, 3).expect("the polyhedron has an interior");
        let qmc = crate::gauss::sov::integrate(
            &f,
            &e,
            3,
            &tilt,
            &inside,
            1 << 19,
            &IntegrationSettings::new(1e-4, 7, &Cancel::new()),
        )
        .unwrap();
        // Relative errors, each at most ~3 standard errors for the QMC estimate.
        let allowed = error + 3.0 * qmc.error + 1e-12;
        assert!(
            (log_mass - qmc.log_mass).abs() <= allowed,
            "slices {log_mass} +- {error}, QMC {} +- {}",
            qmc.log_mass,
            qmc.error
        );
    }
}
