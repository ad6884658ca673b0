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

use super::normal::{log_sum_exp, LN_SQRT_2PI};
use super::polygon::{non_redundant, Polygon2};
use crate::cancel::Cancel;
use crate::error::Result;
use crate::linalg::{cross, dot, solve3};
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

/// The `k`-th of the 15 Kronrod nodes on [-1, 1], from left to right.
pub(super) fn kronrod_node(k: usize) -> f64 {
    if k < 8 {
        -KRONROD_NODES[k]
    } else {
        KRONROD_NODES[14 - k]
    }
}

/// The Kronrod and Gauss weights of the 15 nodes from left to right (Gauss's zero where a
/// node is Kronrod's only).
pub(super) const KRONROD_ORDERED: [f64; 15] = [
    KRONROD_WEIGHTS[0],
    KRONROD_WEIGHTS[1],
    KRONROD_WEIGHTS[2],
    KRONROD_WEIGHTS[3],
    KRONROD_WEIGHTS[4],
    KRONROD_WEIGHTS[5],
    KRONROD_WEIGHTS[6],
    KRONROD_WEIGHTS[7],
    KRONROD_WEIGHTS[6],
    KRONROD_WEIGHTS[5],
    KRONROD_WEIGHTS[4],
    KRONROD_WEIGHTS[3],
    KRONROD_WEIGHTS[2],
    KRONROD_WEIGHTS[1],
    KRONROD_WEIGHTS[0],
];
pub(super) const GAUSS_ORDERED: [f64; 15] = [
    0.0,
    GAUSS_WEIGHTS[0],
    0.0,
    GAUSS_WEIGHTS[1],
    0.0,
    GAUSS_WEIGHTS[2],
    0.0,
    GAUSS_WEIGHTS[3],
    0.0,
    GAUSS_WEIGHTS[2],
    0.0,
    GAUSS_WEIGHTS[1],
    0.0,
    GAUSS_WEIGHTS[0],
    0.0,
];

/// Panels (each 15 polygon masses) before the integral reports what accuracy it reached.
const MAX_PANELS: usize = 400;

/// The accuracy asked of the quadrature is never below this (the polygon masses themselves are
/// good to ~1e-14).
const FLOOR_RTOL: f64 = 1e-13;

/// `(log mass, estimated relative error)`; `Err(Interrupted)` once `cancel` is set (checked
/// at every panel: 15 polygon masses, microseconds).
pub fn log_mass(f: &[f64], e: &[f64], nearest: &[f64], rtol: f64, cancel: &Cancel) -> Result<(f64, f64)> {
    let found = integrate(f, e, nearest, rtol, false, cancel)?;
    Ok((found.log_mass, found.error))
}

/// The mass and the conditional moments of `N(0, I)` on the polyhedron, from the slices' own
/// central moments: the conditional mean is `anchor + offset` (the anchor of the size of the
/// distance to the mean, the offset small; add them last), the covariance central (row-major).
/// `error` bounds the relative error of the mass, and that of the moments relative to the
/// conditional standard deviations (mean) and their products (covariance).
#[derive(Clone, Debug)]
pub struct SliceMoments {
    pub log_mass: f64,
    pub error: f64,
    pub anchor: [f64; 3],
    pub offset: [f64; 3],
    pub cov: [f64; 9],
}

/// Moments by slicing (see [`SliceMoments`]), the moments to the same relative accuracy
/// `rtol` as the mass.
///
/// Far in a tail the divergence theorem's moments (`facet_moments` in `mod.rs`) are sums of
/// terms of size `d` (mean) and `d^2` (second moments) that cancel down to `1/d` and `1/d^2`.
/// Here nothing of size `d` is subtracted: the slicing coordinate is carried as `s = t - t0`
/// about an anchor `t0` at the mass (the nearest point's distance), the density along it as
/// `exp(-t0 s - s^2 / 2)` (exact in `s`), each slice brings its mass, mean and central
/// covariance (`Polygon2::central_moments`, accurate far out and on tiny slices), and the
/// covariance is summed from deviations about the mean (law of total covariance:
/// `Cov = E[Cov(y | s)] + Cov(E[(s, y) | s])`).
pub fn moments(f: &[f64], e: &[f64], nearest: &[f64], rtol: f64, cancel: &Cancel) -> Result<SliceMoments> {
    let found = integrate(f, e, nearest, rtol, true, cancel)?;
    let Some((offset, cov)) = found.moments else {
        return Ok(SliceMoments {
            log_mass: found.log_mass,
            error: found.error,
            anchor: [f64::NAN; 3],
            offset: [f64::NAN; 3],
            cov: [f64::NAN; 9],
        });
    };
    Ok(SliceMoments { log_mass: found.log_mass, error: found.error, anchor: found.anchor, offset, cov })
}

/// What [`integrate`] found: the moments (offset from `anchor`, covariance) in the whitened
/// frame when asked for and the mass is positive.
struct Integral {
    log_mass: f64,
    error: f64,
    anchor: [f64; 3],
    moments: Option<([f64; 3], [f64; 9])>,
}

fn integrate(
    f: &[f64],
    e: &[f64],
    nearest: &[f64],
    rtol: f64,
    want_moments: bool,
    cancel: &Cancel,
) -> Result<Integral> {
    let m = e.len();
    if m == 0 {
        let mut cov = [0.0; 9];
        (0..3).for_each(|i| cov[4 * i] = 1.0);
        return Ok(Integral { log_mass: 0.0, error: 0.0, anchor: [0.0; 3], moments: Some(([0.0; 3], cov)) });
    }
    let rows: Vec<[f64; 3]> = (0..m).map(|i| [f[3 * i], f[3 * i + 1], f[3 * i + 2]]).collect();
    if let Some(lineality) = lineality_direction(&rows) {
        return Ok(lower_dimensional(&rows, e, lineality, want_moments));
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
    let mut slicer = Slicer::new(&rotated, e, 0.01 * rtol, want_moments);
    let t0 = if d > 1e-12 { d } else { 0.0 };
    let t0 = t0.clamp(slicer.range.0, slicer.range.1);
    // From here on the slicing coordinate is `s = t - t0`.
    slicer.shift(t0);
    if d > 1e-12 && slicer.range.0 < 0.0 {
        // The polyhedron lies in `t >= d`: a vertex found below it by less than the rows'
        // rounding at this distance is that rounding, and the slices there (as small as the
        // rounding of their offsets) would be noise, open polygons with spurious mass.
        let rounding = 64.0 * f64::EPSILON * (t0 + e.iter().fold(0.0f64, |a, v| a.max(v.abs())));
        if slicer.range.0 >= -rounding {
            slicer.range.0 = 0.0;
        }
    }
    let (lo, hi) = slicer.range;
    let scale = 1.0 / d.max(1.0);
    let anchor = [t0 * frame[0][0], t0 * frame[0][1], t0 * frame[0][2]];
    // The log integrand is anchored: `log phi(t0 + s) = -t0 s - s^2 / 2 + this`.
    let log_anchor = -0.5 * t0 * t0 - LN_SQRT_2PI;

    let mut panels: Vec<Panel> = Vec::new();
    // Outwards from t0 on each side, panels doubling in width and cut at breakpoints, until the
    // side ends or log-concavity bounds what is left beyond the last panel as negligible (for
    // the mass here; for the moments, which weigh the tail by its distance, in the loop below).
    let mut sides = [Side::new(1.0, hi, scale), Side::new(-1.0, lo, scale)];
    for side in &mut sides {
        while side.open() && panels.len() < MAX_PANELS {
            cancel.check()?;
            side.extend(&slicer, t0, &mut panels);
            let total = log_sum_exp(panels.iter().map(|p| p.log_value));
            if side.tail.is_some_and(|tail| tail.log_mass < total + (1e-3 * rtol).ln()) {
                break;
            }
        }
    }
    // Refine where the Gauss and Kronrod estimates disagree most, in the mass and, when asked
    // for, in the moments; extend a side whose tail weighs too much in the moments.
    loop {
        let total = log_sum_exp(panels.iter().map(|p| p.log_value));
        if total == f64::NEG_INFINITY {
            return Ok(Integral { log_mass: f64::NEG_INFINITY, error: 0.0, anchor, moments: None });
        }
        let log_panel_error = log_sum_exp(panels.iter().map(|p| p.log_error));
        let tail_mass: [f64; 2] =
            std::array::from_fn(|k| sides[k].tail.map_or(0.0, |tail| (tail.log_mass - total).exp()));
        let mass_error = (log_panel_error - total).exp() + tail_mass.iter().sum::<f64>();
        let mut scores: Vec<f64> = panels.iter().map(|p| (p.log_error - total).exp()).collect();
        let mut side_scores = tail_mass;
        let mut moments = None;
        let mut moment_error = 0.0;
        let mut tails_converged = true;
        if want_moments {
            let (mean, cov, panel_error) = panel_moments(&panels, &mut scores);
            let sd = (0..3).map(|j| cov[4 * j].sqrt()).fold(f64::INFINITY, f64::min).max(f64::MIN_POSITIVE);
            moment_error = panel_error;
            for (side, score) in sides.iter().zip(side_scores.iter_mut()) {
                if let Some(tail) = side.tail {
                    // Tails cost a few panels (their widths double): they are pushed until their
                    // bound is a thousandth of the accuracy asked, as for the mass.
                    let error = tail.moment_error(total, mean[0], sd);
                    moment_error += error;
                    *score = score.max(1e3 * error);
                    tails_converged &= error <= 1e-3 * rtol;
                }
            }
            moments = Some((mean, cov));
        }
        let converged = mass_error <= rtol && moment_error <= rtol && tails_converged;
        if converged || panels.len() >= MAX_PANELS {
            let error = mass_error.max(moment_error) + slicer.slice_rtol;
            let moments = moments.map(|(mean, cov)| to_whitened(&frame, mean, cov));
            return Ok(Integral { log_mass: total + log_anchor, error, anchor, moments });
        }
        cancel.check()?;
        let worst = (0..panels.len()).max_by(|&i, &j| scores[i].total_cmp(&scores[j])).unwrap();
        let worst_side = if side_scores[0] >= side_scores[1] { 0 } else { 1 };
        if side_scores[worst_side] > scores[worst] && sides[worst_side].open() {
            sides[worst_side].extend(&slicer, t0, &mut panels);
            continue;
        }
        let Panel { a, b, .. } = panels.swap_remove(worst);
        let mid = 0.5 * (a + b);
        panels.push(slicer.panel(a, mid, t0));
        panels.push(slicer.panel(mid, b, t0));
    }
}

/// One side's outward march from the anchor.
struct Side {
    /// +1 or -1.
    direction: f64,
    end: f64,
    at: f64,
    width: f64,
    scale: f64,
    /// What may lie beyond `at`, once a panel has been laid (`None` where nothing does).
    tail: Option<Tail>,
}

/// A bound on the integrand beyond a side's last panel by log-concavity: at most
/// `exp(log_mass)` in all, decaying at least at `rate` from `edge` outwards.
#[derive(Clone, Copy)]
struct Tail {
    log_mass: f64,
    rate: f64,
    edge: f64,
}

impl Tail {
    /// A bound on the tail's share in the moments, relative to `sd` (the mean) and its square
    /// (the covariance): the integrand beyond is at most an exponential from the edge, whose
    /// mass lies on average `1 / rate` beyond it, with standard deviation `1 / rate`.
    fn moment_error(&self, log_total: f64, mean: f64, sd: f64) -> f64 {
        let share = (self.log_mass - log_total).exp();
        if share == 0.0 {
            return 0.0;
        }
        if !(self.rate > 0.0) {
            return f64::INFINITY;
        }
        let reach = ((self.edge - mean).abs() + 1.0 / self.rate) / sd;
        let spread = 1.0 / (self.rate * sd);
        share * (reach + reach * reach + spread * spread)
    }
}

impl Side {
    fn new(direction: f64, end: f64, scale: f64) -> Self {
        // An infinite tail until a panel bounds it.
        let tail = Some(Tail { log_mass: f64::INFINITY, rate: 0.0, edge: 0.0 });
        Side { direction, end, at: 0.0, width: 1.5 * scale, scale, tail: if end == 0.0 { None } else { tail } }
    }

    /// Whether the side may be extended: it has not reached its end, and something may lie beyond.
    fn open(&self) -> bool {
        (self.end - self.at) * self.direction > 0.0 && self.tail.is_some()
    }

    /// Lays the next panel.
    fn extend(&mut self, slicer: &Slicer, t0: f64, panels: &mut Vec<Panel>) {
        let side = self.direction;
        let mut next = self.at + side * self.width;
        if (next - self.end) * side > 0.0 {
            next = self.end;
        }
        if let Some(b) = slicer.next_breakpoint(self.at, side) {
            if (next - b) * side > 0.0 {
                next = b;
            }
        }
        let (a, b) = if side > 0.0 { (self.at, next) } else { (next, self.at) };
        let panel = slicer.panel(a, b, t0);
        let (log_mass, rate) = panel.log_tail_bound(side);
        panels.push(panel);
        // Growth from the panel just done: a jump past a run of close breakpoints must not
        // land in one wide panel whose nodes all miss the mass near its end.
        self.width = (2.0 * (next - self.at).abs()).max(0.1 * self.scale);
        self.at = next;
        let ended = (self.end - self.at) * side <= 0.0;
        self.tail = (!ended && log_mass > f64::NEG_INFINITY).then_some(Tail { log_mass, rate, edge: next });
    }
}

/// Frame moments `(s, y1, y2)` (mean offset from the anchor, covariance) to whitened ones.
fn to_whitened(frame: &[[f64; 3]; 3], mean: [f64; 3], cov: [f64; 9]) -> ([f64; 3], [f64; 9]) {
    let mut w_mean = [0.0; 3];
    let mut w_cov = [0.0; 9];
    for i in 0..3 {
        w_mean[i] = (0..3).map(|a| frame[a][i] * mean[a]).sum();
    }
    for i in 0..3 {
        for j in 0..=i {
            let v: f64 = (0..3).map(|a| (0..3).map(|b| frame[a][i] * cov[3 * a + b] * frame[b][j]).sum::<f64>()).sum();
            w_cov[3 * i + j] = v;
            w_cov[3 * j + i] = v;
        }
    }
    (w_mean, w_cov)
}

/// The conditional mean `(s, y1, y2)` (`s` from the anchor) and covariance of the panels'
/// Kronrod estimates, and the estimated error of those moments (Gauss against Kronrod, the
/// mean relative to the standard deviations, the covariance to their products), each panel's
/// share added to its refinement score in `scores`.
fn panel_moments(panels: &[Panel], scores: &mut [f64]) -> ([f64; 3], [f64; 9], f64) {
    // Weights relative to the largest node's.
    let top = panels
        .iter()
        .flat_map(|p| p.nodes.iter().map(move |n| p.log_half + n.log_integrand))
        .fold(f64::NEG_INFINITY, f64::max);
    let reference = panels
        .iter()
        .flat_map(|p| p.nodes.iter().map(move |n| (p.log_half + n.log_integrand, n)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, n)| [n.s, n.mean[0], n.mean[1]])
        .unwrap_or([0.0; 3]);
    // A first pass about the largest node, a second about the mean it gives.
    let total = |centre: [f64; 3], gauss: bool, p: &Panel| p.sums(top, centre, gauss);
    let add = |a: [f64; 10], b: [f64; 10]| std::array::from_fn::<f64, 10, _>(|k| a[k] + b[k]);
    let first = panels.iter().fold([0.0; 10], |acc, p| add(acc, total(reference, false, p)));
    let mean: [f64; 3] = std::array::from_fn(|j| reference[j] + first[1 + j] / first[0]);
    let per_panel: Vec<([f64; 10], [f64; 10])> =
        panels.iter().map(|p| (total(mean, false, p), total(mean, true, p))).collect();
    let sums = per_panel.iter().fold([0.0; 10], |acc, (k, _)| add(acc, *k));
    let delta: [f64; 3] = std::array::from_fn(|j| sums[1 + j] / sums[0]);
    let mean: [f64; 3] = std::array::from_fn(|j| mean[j] + delta[j]);
    let mut cov = [0.0; 9];
    for j in 0..3 {
        for k in 0..=j {
            let v = sums[second_index(j, k)] / sums[0] - delta[j] * delta[k];
            cov[3 * j + k] = v;
            cov[3 * k + j] = v;
        }
    }
    let sd: [f64; 3] = std::array::from_fn(|j| cov[4 * j].max(f64::MIN_POSITIVE).sqrt());
    let mut error = 0.0;
    for ((kronrod, gauss), score) in per_panel.iter().zip(scores.iter_mut()) {
        let diff: [f64; 10] = std::array::from_fn(|k| kronrod[k] - gauss[k]);
        let mut worst = 0.0f64;
        for j in 0..3 {
            worst = worst.max((diff[1 + j] - delta[j] * diff[0]).abs() / (sums[0] * sd[j]));
            for k in 0..=j {
                let c = cov[3 * j + k];
                worst = worst.max((diff[second_index(j, k)] - c * diff[0]).abs() / (sums[0] * sd[j] * sd[k]));
            }
        }
        error += worst;
        *score = score.max(worst);
    }
    (mean, cov, error)
}

/// Where the second moment `(j, k)`, `k <= j`, sits in a panel's sums.
fn second_index(j: usize, k: usize) -> usize {
    4 + j * (j + 1) / 2 + k
}

/// One quadrature node: `s`, the anchored log integrand, and the slice's mean and central covariance `[c11, c12, c22]` (NaN
/// when only the mass was asked for).
#[derive(Clone, Copy)]
struct Node {
    s: f64,
    log_integrand: f64,
    mean: [f64; 2],
    cov: [f64; 3],
}

/// One panel's nodes, left to right, its Kronrod estimate and the size of its disagreement
/// with Gauss.
struct Panel {
    a: f64,
    b: f64,
    log_half: f64,
    log_value: f64,
    log_error: f64,
    nodes: [Node; 15],
}

impl Panel {
    /// A bound on the log of the integral beyond the panel on `side`, from the secant through
    /// its two outermost nodes (log-concavity), and the rate of decay it assumes; `+inf` while
    /// the integrand still rises.
    fn log_tail_bound(&self, side: f64) -> (f64, f64) {
        let (out, inside) =
            if side > 0.0 { (&self.nodes[14], &self.nodes[13]) } else { (&self.nodes[0], &self.nodes[1]) };
        let (t_out, v_out, t_in, v_in) = (out.s, out.log_integrand, inside.s, inside.log_integrand);
        if v_out == f64::NEG_INFINITY {
            return (f64::NEG_INFINITY, f64::INFINITY);
        }
        let slope = (v_out - v_in) / (t_out - t_in) * side;
        if !(slope < 0.0) {
            return (f64::INFINITY, 0.0);
        }
        let edge = if side > 0.0 { self.b } else { self.a };
        (v_out + slope * (edge - t_out).abs() - (-slope).ln(), -slope)
    }

    /// Sums over the nodes with Kronrod (or Gauss) weights, relative to `exp(top)`: the mass,
    /// the first moments of `(s, y1, y2) - centre` and the second moments (with the slices'
    /// covariances), `(j, k)` at [`second_index`].
    fn sums(&self, top: f64, centre: [f64; 3], gauss: bool) -> [f64; 10] {
        let mut out = [0.0; 10];
        for (k, n) in self.nodes.iter().enumerate() {
            if n.log_integrand == f64::NEG_INFINITY {
                continue;
            }
            let weight = if gauss { GAUSS_ORDERED[k] } else { KRONROD_ORDERED[k] };
            if weight == 0.0 {
                continue;
            }
            let w = weight * (self.log_half + n.log_integrand - top).exp();
            let a = [n.s - centre[0], n.mean[0] - centre[1], n.mean[1] - centre[2]];
            out[0] += w;
            for j in 0..3 {
                out[1 + j] += w * a[j];
                for i in 0..=j {
                    // The slice's own covariance across (y only).
                    let c = match (j, i) {
                        (1, 1) => n.cov[0],
                        (2, 1) => n.cov[1],
                        (2, 2) => n.cov[2],
                        _ => 0.0,
                    };
                    out[second_index(j, i)] += w * (a[j] * a[i] + c);
                }
            }
        }
        out
    }
}
struct SliceRow {
    /// In the slice at `s` the row reads `g . y <= c - k s` (`g` unit).
    g: [f64; 2],
    c: f64,
    k: f64,
}

struct Slicer {
    rows: Vec<SliceRow>,
    /// Projections of the vertices on the slicing axis, increasing.
    breakpoints: Vec<f64>,
    range: (f64, f64),
    /// The relative accuracy of each slice's mass.
    slice_rtol: f64,
    /// Whether each node brings its slice's moments besides its mass.
    want_moments: bool,
}

impl Slicer {
    /// Rows in the slicing frame (first coordinate across the slices), pointed polyhedron.
    fn new(rows: &[[f64; 3]], e: &[f64], slice_rtol: f64, want_moments: bool) -> Self {
        let m = rows.len();
        let mut slice_rows = Vec::with_capacity(m);
        for (r, &ei) in rows.iter().zip(e) {
            let n = r[1].hypot(r[2]);
            // Rows normal to the slicing axis bound t only, and are met at the vertices.
            if n > 1e-12 {
                slice_rows.push(SliceRow { g: [r[1] / n, r[2] / n], c: ei / n, k: r[0] / n });
            }
        }
        let mut breakpoints = Vec::new();
        for i in 0..m {
            for j in i + 1..m {
                for k in j + 1..m {
                    // Planes meeting in one point (their unit normals' determinant above 1e-12).
                    if let Some(v) = solve3(&rows[i], &rows[j], &rows[k], [e[i], e[j], e[k]], 1e-12) {
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
        Slicer { rows: slice_rows, breakpoints, range: (lo, hi), slice_rtol, want_moments }
    }

    /// Moves the slicing coordinate to `s = t - t0`: the rows' offsets take `t0` in once, so
    /// that nodes near the mass are small numbers, exact to their own scale.
    fn shift(&mut self, t0: f64) {
        for row in &mut self.rows {
            row.c -= row.k * t0;
        }
        self.breakpoints.iter_mut().for_each(|b| *b -= t0);
        self.range = (self.range.0 - t0, self.range.1 - t0);
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

    /// The rows with an edge of positive length in the slice at `s`; `None` for an empty slice.
    fn edges_at(&self, s: f64) -> Option<Vec<usize>> {
        let g: Vec<[f64; 2]> = self.rows.iter().map(|r| r.g).collect();
        let offsets: Vec<f64> = self.rows.iter().map(|r| r.c - r.k * s).collect();
        non_redundant(&g, &offsets)
    }

    /// The panel `[a, b]` (in `s`) for the anchor `t0`.
    fn panel(&self, a: f64, b: f64, t0: f64) -> Panel {
        let (centre, half) = (0.5 * (a + b), 0.5 * (b - a));
        // The panel's slices are empty (no edges) or all have these edges.
        let edges = self.edges_at(centre);
        let polygon = edges.as_ref().map(|edges| {
            Polygon2::new(edges.iter().map(|&i| self.rows[i].g).collect(), vec![0.0; edges.len()], [1.0, 0.0, 0.0, 1.0])
        });
        let empty = Node { s: 0.0, log_integrand: f64::NEG_INFINITY, mean: [f64::NAN; 2], cov: [f64::NAN; 3] };
        let node = |s: f64| {
            let (Some(edges), Some(polygon)) = (&edges, &polygon) else { return Node { s, ..empty } };
            let offsets: Vec<f64> = edges.iter().map(|&i| self.rows[i].c - self.rows[i].k * s).collect();
            // log phi(t0 + s) less its value at t0: exact in s.
            let density = -s * (t0 + 0.5 * s);
            if !self.want_moments {
                let log_integrand = density + polygon.log_mass_whitened(offsets, self.slice_rtol);
                return Node { s, log_integrand, ..empty };
            }
            let g: Vec<[f64; 2]> = edges.iter().map(|&i| self.rows[i].g).collect();
            let (mut mean, mut cov) = ([0.0; 2], [0.0; 4]);
            let log_mass =
                Polygon2::new(g, offsets, [1.0, 0.0, 0.0, 1.0]).central_moments(&[0.0, 0.0], &mut mean, &mut cov);
            if log_mass == f64::NEG_INFINITY {
                return Node { s, ..empty };
            }
            Node { s, log_integrand: density + log_mass, mean, cov: [cov[0], 0.5 * (cov[1] + cov[2]), cov[3]] }
        };
        let nodes: [Node; 15] = std::array::from_fn(|k| node(centre + half * kronrod_node(k)));
        let log_half = half.ln();
        let kronrod = log_half + log_sum_exp(nodes.iter().zip(KRONROD_ORDERED).map(|(n, w)| w.ln() + n.log_integrand));
        let gauss = log_half
            + log_sum_exp(
                nodes.iter().zip(GAUSS_ORDERED).filter(|(_, w)| *w > 0.0).map(|(n, w)| w.ln() + n.log_integrand),
            );
        let log_error = if kronrod == f64::NEG_INFINITY {
            f64::NEG_INFINITY
        } else {
            kronrod + (gauss - kronrod).exp_m1().abs().ln()
        };
        Panel { a, b, log_half, log_value: kronrod, log_error, nodes }
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

/// A polyhedron invariant along `lineality`: a polygon in the plane orthogonal to it, times a
/// standard normal along it (its moments, when asked for, from the polygon's central ones).
fn lower_dimensional(rows: &[[f64; 3]], e: &[f64], lineality: [f64; 3], want_moments: bool) -> Integral {
    let b = complement_basis(&lineality);
    let basis = [[b[0][0], b[0][1], b[0][2]], [b[1][0], b[1][1], b[1][2]], lineality];
    let planar = polygon_rows(rows, &basis);
    // Parallel rows (a half-space or a slab) are a half-plane or strip, which the polygon
    // integrates along their common normal.
    if !want_moments {
        let log_mass =
            Polygon2::new(planar, vec![0.0; e.len()], [1.0, 0.0, 0.0, 1.0]).log_mass_whitened(e.to_vec(), 0.0);
        return Integral { log_mass, error: 0.0, anchor: [0.0; 3], moments: None };
    }
    let polygon = Polygon2::new(planar, e.to_vec(), [1.0, 0.0, 0.0, 1.0]);
    let (mut mean, mut cov) = ([0.0; 2], [0.0; 4]);
    let log_mass = polygon.central_moments(&[0.0, 0.0], &mut mean, &mut cov);
    if log_mass == f64::NEG_INFINITY {
        return Integral { log_mass, error: 0.0, anchor: [0.0; 3], moments: None };
    }
    let off = 0.5 * (cov[1] + cov[2]);
    let frame_cov = [cov[0], off, 0.0, off, cov[3], 0.0, 0.0, 0.0, 1.0];
    let moments = to_whitened(&basis, [mean[0], mean[1], 0.0], frame_cov);
    Integral { log_mass, error: 0.0, anchor: [0.0; 3], moments: Some(moments) }
}

/// The rows seen in the plane of `basis[0]`, `basis[1]` (unit: the rows lie in that plane).
fn polygon_rows(rows: &[[f64; 3]], basis: &[[f64; 3]; 3]) -> Vec<[f64; 2]> {
    rows.iter()
        .map(|r| {
            let p = [dot(r, &basis[0]), dot(r, &basis[1])];
            let n = p[0].hypot(p[1]);
            [p[0] / n, p[1] / n]
        })
        .collect()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
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

    /// A box `[d, d+1] x [-1, 2] x [0, 0.5]` far out: the slices' moments are the product of
    /// one-dimensional truncated normals (closed form, `truncated_normal_central`), the mean to
    /// its rounding (`eps |m|` beside a standard deviation of `1/d`), the variances to 1e-9.
    #[test]
    fn far_box_moments_are_products_of_truncated_normals() {
        let f = [1.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, -1.0];
        for d in [0.5, 10.0, 1e3, 1e6] {
            let (lo, hi) = ([d, -1.0, 0.0], [d + 1.0, 2.0, 0.5]);
            let e = [hi[0], -lo[0], hi[1], -lo[1], hi[2], -lo[2]];
            let found = moments(&f, &e, &[d, 0.0, 0.0], 1e-8, &Cancel::new()).unwrap();
            for k in 0..3 {
                let (_, mean, variance) = crate::gauss::normal::truncated_normal_central(0.0, 1.0, lo[k], hi[k]);
                let got = found.anchor[k] + found.offset[k];
                let sd = variance.sqrt();
                assert!(
                    (got - mean).abs() <= 1e-9 * sd + 4.0 * f64::EPSILON * mean.abs(),
                    "d {d}, axis {k}: {got} vs {mean}"
                );
                let var = found.cov[4 * k];
                assert!((var - variance).abs() <= 1e-9 * variance, "d {d}, axis {k}: variance {var} vs {variance}");
            }
        }
    }
}
