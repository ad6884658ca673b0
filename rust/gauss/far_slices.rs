//! S >= 4 moments far in a tail: `N(0, I)` on a polyhedron `{w : F w <= e}` sliced across the
//! direction `u` of its point nearest the mean, at distance `d`. The polyhedron lies in
//! `u . w >= d`; about the anchor `d u` the density along `u` is `exp(-d s - s^2 / 2)` (exact
//! in `s = u . w - d`), and each slice `{v : F (t u + B v) <= e}` (`B` an orthonormal basis of
//! the complement) brings its mass, mean and central covariance from the engine one dimension
//! down, which slices again where it too is far out. Nothing of size `d` is subtracted, so the
//! moments keep their digits where the divergence theorem's terms (`facet_moments`) cancel.
//!
//! The marginal along `u`, `g(s) = exp(-d s - s^2 / 2) M(d + s)`, is log-concave (a marginal of a
//! log-concave density) and analytic between the projections of the polyhedron's vertices:
//! panels of Gauss-Kronrod 7-15 march out from the anchor, doubling in width and cut at those
//! breakpoints, until log-concavity bounds what lies beyond as negligible, and are bisected
//! where Gauss and Kronrod disagree. The vertices are found by trying every set of S rows (where
//! there are too many sets, bisection alone isolates the kinks, asked a thousand times more).

use super::slices::{kronrod_node, GAUSS_ORDERED, KRONROD_ORDERED};
use super::{integrate_whitened, reduce, sov, IntegrationSettings, Want, WhitenedMoments};
use nalgebra::{DMatrix, DVector};

use crate::error::{Error, Result};
use crate::linalg::dot;
use crate::partition::complement_basis;

/// Panels (15 slice integrals each) before the moments are reported as not converged.
const MAX_PANELS: usize = 96;

/// Of the accuracy asked, what Gauss against Kronrod may leave where the vertices are not known:
/// the marginal has kinks where the slices pass vertices, and on a panel holding one Kronrod's
/// own error is of the size of that difference (not far below it, as on analytic panels), so it
/// is pushed this much further. Bisection halves a kink's panel, and its error falls at least
/// fourfold each time.
const KINKED_SHARE: f64 = 1e-3;

/// The most sets of S rows tried for vertices.
const MAX_ROW_SETS: usize = 200_000;

/// What the slices are asked, as a share of the accuracy asked: their errors add to the
/// moments' and, varying from node to node, to the Gauss-Kronrod difference that steers the
/// panels; a tenth keeps them below it (a hundredth costs 4x more where the slices near the
/// anchor are tiny, as at the apex of a thin cone, and changes no digit checked).
const SLICE_SHARE: f64 = 1e-1;

/// The relative accuracy asked is never below this (the slices' masses carry their own error).
const FLOOR_RTOL: f64 = 1e-12;

/// One Gauss-Kronrod node: where (`s`), its Kronrod and Gauss weights (with the panel's half
/// width), and the slice there: `log g(s)` and the slice's mean and central covariance in the
/// complement's coordinates.
struct Node {
    s: f64,
    kronrod: f64,
    gauss: f64,
    log_g: f64,
    mean: Vec<f64>,
    cov: Vec<f64>,
}

struct Panel {
    a: f64,
    b: f64,
    nodes: Vec<Node>,
}

/// The polyhedron in the slicing frame: each row `f_i = a_i u + B p_i`, its offset less the
/// anchor's share, `e_i - a_i d`.
struct Slicer<'a> {
    along: Vec<f64>,
    across: Vec<f64>,
    offset: Vec<f64>,
    dim: usize,
    d: f64,
    settings: &'a IntegrationSettings<'a>,
}

impl Slicer<'_> {
    /// `log g(s)` (the anchor's `-d^2 / 2 - log sqrt(2 pi)` left out) and the slice's moments.
    fn node(&self, s: f64, kronrod: f64, gauss: f64) -> Result<Node> {
        let k = self.dim;
        let (mut f, mut e) = (Vec::new(), Vec::new());
        let empty_node =
            |s| Node { s, kronrod, gauss, log_g: f64::NEG_INFINITY, mean: vec![0.0; k], cov: vec![0.0; k * k] };
        for (i, (&a, &o)) in self.along.iter().zip(&self.offset).enumerate() {
            let p = &self.across[i * k..(i + 1) * k];
            let norm = dot(p, p).sqrt();
            let room = o - a * s;
            if norm <= 1e-12 {
                // A row (nearly) along u: the slice is all or nothing.
                if room < 0.0 {
                    return Ok(empty_node(s));
                }
                continue;
            }
            f.extend(p.iter().map(|v| v / norm));
            e.push(room / norm);
        }
        let log_along = -self.d * s - 0.5 * s * s;
        let slice = match reduce(&f, &e, k) {
            None => return Ok(empty_node(s)),
            Some((_, e, _)) if e.is_empty() => WhitenedMoments::whole_space(k),
            Some((f, e, centre)) => {
                integrate_whitened(&f, &e, k, &centre, Want::MeanAndSecond, sov::MAX_POINTS, self.settings)?
            }
        };
        if slice.log_mass == f64::NEG_INFINITY {
            return Ok(empty_node(s));
        }
        let mean = slice.full_mean();
        if slice.log_mass.is_nan() || mean.iter().chain(&slice.cov).any(|v| !v.is_finite()) {
            return Err(Error::Numerical(format!(
                "a slice of an S = {} polyhedron at distance {:.3e} gave a non-finite mass or moment",
                k + 1,
                self.d
            )));
        }
        Ok(Node { s, kronrod, gauss, log_g: log_along + slice.log_mass, mean, cov: slice.cov })
    }

    fn panel(&self, a: f64, b: f64) -> Result<Panel> {
        let (mid, half) = (0.5 * (a + b), 0.5 * (b - a));
        let nodes = (0..15)
            .map(|j| self.node(mid + half * kronrod_node(j), half * KRONROD_ORDERED[j], half * GAUSS_ORDERED[j]))
            .collect::<Result<Vec<_>>>()?;
        self.settings.cancel.check()?;
        Ok(Panel { a, b, nodes })
    }
}

/// What the panels give: the conditional moments in the slicing frame `(s, v)` (mean, central
/// covariance), `log int g`, and the estimated error of mass and moments, with each panel's
/// share in `scores`.
struct Estimate {
    log_total: f64,
    mean: Vec<f64>,
    cov: Vec<f64>,
    error: f64,
    scores: Vec<f64>,
}

fn estimate(panels: &[Panel], k: usize) -> Estimate {
    let n = k + 1;
    let top = panels.iter().flat_map(|p| &p.nodes).map(|x| x.log_g).fold(f64::NEG_INFINITY, f64::max);
    let weight = |x: &Node| if x.log_g == f64::NEG_INFINITY { 0.0 } else { (x.log_g - top).exp() };
    let total: f64 = panels.iter().flat_map(|p| &p.nodes).map(|x| x.kronrod * weight(x)).sum();
    let (mut mean, mut cov) = (vec![0.0; n], vec![0.0; n * n]);
    if !(total > 0.0) {
        return Estimate { log_total: f64::NEG_INFINITY, mean, cov, error: 0.0, scores: vec![0.0; panels.len()] };
    }
    for x in panels.iter().flat_map(|p| &p.nodes) {
        let w = x.kronrod * weight(x) / total;
        mean[0] += w * x.s;
        for j in 0..k {
            mean[j + 1] += w * x.mean[j];
        }
    }
    // Law of total covariance: the slices' own covariances plus the spread of their means.
    for x in panels.iter().flat_map(|p| &p.nodes) {
        let w = x.kronrod * weight(x) / total;
        if w == 0.0 {
            continue;
        }
        let deviation: Vec<f64> =
            std::iter::once(x.s - mean[0]).chain((0..k).map(|j| x.mean[j] - mean[j + 1])).collect();
        for a in 0..n {
            for b in 0..n {
                let within = if a > 0 && b > 0 { x.cov[(a - 1) * k + (b - 1)] } else { 0.0 };
                cov[a * n + b] += w * (within + deviation[a] * deviation[b]);
            }
        }
    }
    // Gauss against Kronrod per panel, in the mass and in the moments along u (the mean against
    // the standard deviation along u, the variance against itself).
    let sd = cov[0].sqrt().max(f64::MIN_POSITIVE);
    let scores: Vec<f64> = panels
        .iter()
        .map(|p| {
            let (mut m0, mut m1, mut m2) = (0.0, 0.0, 0.0);
            for x in &p.nodes {
                let diff = (x.kronrod - x.gauss) * weight(x) / total;
                let y = (x.s - mean[0]) / sd;
                m0 += diff;
                m1 += diff * y;
                m2 += diff * y * y;
            }
            m0.abs() + m1.abs() + m2.abs()
        })
        .collect();
    Estimate { log_total: top + total.ln(), mean, cov, error: scores.iter().sum(), scores }
}

/// A bound on the integral of `g` beyond the last panel, relative to the total, and on its share
/// in the moments along u: by log-concavity `log g` decays past the last node at least at the
/// slope from the node before, and in any case as the Gaussian factor `exp(-d s - s^2 / 2)`
/// times the largest slice mass, 1.
fn tail_error(last: &Panel, log_total: f64, mean: f64, sd: f64, d: f64) -> f64 {
    let (x0, x1) = (&last.nodes[13], &last.nodes[14]);
    let b = last.b;
    let gaussian = {
        let rate = d + b;
        let log_bound = -d * b - 0.5 * b * b - rate.max(1e-300).ln();
        (log_bound, rate)
    };
    let concave = (x1.log_g > f64::NEG_INFINITY && x0.log_g > x1.log_g).then(|| {
        let rate = (x0.log_g - x1.log_g) / (x1.s - x0.s);
        (x1.log_g - rate.ln(), rate)
    });
    let (log_mass, rate) = match concave {
        Some(c) if c.0 < gaussian.0 => c,
        _ => gaussian,
    };
    let share = (log_mass - log_total).exp();
    if share == 0.0 {
        return 0.0;
    }
    if !(rate > 0.0) {
        return f64::INFINITY;
    }
    let reach = ((b - mean).abs() + 1.0 / rate) / sd;
    let spread = 1.0 / (rate * sd);
    share * (1.0 + reach + reach * reach + spread * spread)
}

/// The slicing coordinates `u . w - d > 0` of the polyhedron's vertices, sorted; `None` where
/// there are more than [`MAX_ROW_SETS`] sets of S rows to try.
fn breakpoints(f: &[f64], e: &[f64], s: usize, u: &[f64], d: f64) -> Option<Vec<f64>> {
    let m = e.len();
    let mut sets = 1.0f64;
    for k in 0..s.min(m) {
        sets *= (m - k) as f64 / (k + 1) as f64;
    }
    if sets > MAX_ROW_SETS as f64 {
        return None;
    }
    let mut found = Vec::new();
    let mut set: Vec<usize> = (0..s).collect();
    if m < s {
        return Some(found);
    }
    loop {
        let rows: Vec<f64> = set.iter().flat_map(|&i| f[i * s..(i + 1) * s].iter().copied()).collect();
        let rhs: Vec<f64> = set.iter().map(|&i| e[i]).collect();
        let vertex = DMatrix::from_row_slice(s, s, &rows).lu().solve(&DVector::from_column_slice(&rhs));
        if let Some(w) = vertex.filter(|w| w.iter().all(|v| v.is_finite())) {
            let w = w.as_slice();
            let size = dot(w, w).sqrt();
            let inside = (0..m).all(|j| dot(&f[j * s..(j + 1) * s], w) <= e[j] + 1e-9 * (1.0 + e[j].abs() + size));
            // A vertex within the rows' rounding of the anchor is the anchor (a panel that
            // thin would cost fifteen slices for nothing).
            let t = dot(u, w) - d;
            if inside && t > 64.0 * f64::EPSILON * (d + size) {
                found.push(t);
            }
        }
        // The next set in lexicographic order.
        let Some(k) = (0..s).rev().find(|&k| set[k] < m - s + k) else { break };
        set[k] += 1;
        for j in k + 1..s {
            set[j] = set[j - 1] + 1;
        }
    }
    found.sort_by(f64::total_cmp);
    found.dedup();
    Some(found)
}

/// The moments of `N(0, I)` on `{w : F w <= e}` (unit rows, `s >= 3` columns) whose point
/// nearest the mean is `nearest`, at a distance `d > 0`: mean as anchor `d u` plus offset,
/// central covariance, with the mass (and its error) of `mass`, as the S = 3 slicer returns
/// them. `Err(Numerical)` where the panels do not converge to `settings.rtol`.
pub(super) fn moments(
    f: &[f64],
    e: &[f64],
    s: usize,
    nearest: &[f64],
    settings: &IntegrationSettings,
    mass: &WhitenedMoments,
) -> Result<WhitenedMoments> {
    let d = dot(nearest, nearest).sqrt();
    let u: Vec<f64> = nearest.iter().map(|v| v / d).collect();
    let basis = complement_basis(&u);
    let k = s - 1;
    let rows = f.chunks_exact(s);
    let along: Vec<f64> = rows.clone().map(|r| dot(r, &u)).collect();
    let across: Vec<f64> = rows.flat_map(|r| basis.iter().map(move |b| dot(r, b))).collect();
    let offset: Vec<f64> = e.iter().zip(&along).map(|(e, a)| e - a * d).collect();
    let rtol = settings.rtol.max(FLOOR_RTOL);
    let slice_settings = settings.with_rtol(SLICE_SHARE * rtol);
    let slicer = Slicer { along, across, offset, dim: k, d, settings: &slice_settings };
    let scale = 1.0 / d.max(1.0);

    let kinks = breakpoints(f, e, s, &u, d);
    let share = if kinks.is_some() { 1.0 } else { KINKED_SHARE };
    let kinks = kinks.unwrap_or_default();
    // The end of a panel from `at` at most `width` wide: the next breakpoint, if nearer.
    let end = |at: f64, width: f64| {
        let next = kinks.iter().copied().find(|&b| b > at * (1.0 + 4.0 * f64::EPSILON) + f64::MIN_POSITIVE);
        next.map_or(at + width, |b| b.min(at + width))
    };
    // March out from the anchor until the tail beyond is negligible for the mass.
    let mut panels = Vec::new();
    let (mut at, mut width) = (0.0, 1.5 * scale);
    loop {
        let next = end(at, width);
        panels.push(slicer.panel(at, next)?);
        // Growth from the panel just done: a jump past a run of close breakpoints must not land
        // in one wide panel whose nodes all miss the mass near its end.
        width = (2.0 * (next - at)).max(0.1 * scale);
        at = next;
        let found = estimate(&panels, k);
        if found.log_total > f64::NEG_INFINITY {
            // The mass's share only (an infinite spread leaves out the moments' terms).
            let tail = tail_error(panels.last().expect("laid"), found.log_total, found.mean[0], f64::INFINITY, d);
            if tail <= 1e-3 * rtol {
                break;
            }
        }
        if panels.len() >= MAX_PANELS / 2 {
            break;
        }
    }
    loop {
        let found = estimate(&panels, k);
        if found.log_total == f64::NEG_INFINITY {
            return Ok(WhitenedMoments {
                mean: vec![f64::NAN; s],
                anchor: None,
                cov: vec![f64::NAN; s * s],
                ..mass.clone()
            });
        }
        let sd = found.cov[0].sqrt().max(f64::MIN_POSITIVE);
        let last = panels.iter().max_by(|p, q| p.b.total_cmp(&q.b)).expect("laid");
        let tail = tail_error(last, found.log_total, found.mean[0], sd, d);
        if found.error <= share * rtol && tail <= 1e-3 * rtol {
            return Ok(finish(&found, &u, &basis, d, mass));
        }
        if panels.len() >= MAX_PANELS {
            return Err(Error::Numerical(format!(
                "the S = {s} conditional moments over a polyhedron at distance {d:.3e} from the mean did not \
                 converge by slicing (estimated error {:.1e} against rtol {rtol:.1e})",
                found.error + tail
            )));
        }
        let worst = (0..panels.len()).max_by(|&i, &j| found.scores[i].total_cmp(&found.scores[j])).expect("laid");
        if 1e3 * tail > found.scores[worst] {
            let b = last.b;
            let next = end(b, 2.0 * (last.b - last.a));
            panels.push(slicer.panel(b, next)?);
            continue;
        }
        let Panel { a, b, .. } = panels.swap_remove(worst);
        let mid = 0.5 * (a + b);
        panels.push(slicer.panel(a, mid)?);
        panels.push(slicer.panel(mid, b)?);
    }
}

/// The frame's moments `(s, v)` turned to whitened coordinates `w = (d + s) u + B v`.
fn finish(found: &Estimate, u: &[f64], basis: &[Vec<f64>], d: f64, mass: &WhitenedMoments) -> WhitenedMoments {
    let s = u.len();
    let axis = |a: usize, i: usize| if a == 0 { u[i] } else { basis[a - 1][i] };
    let offset: Vec<f64> = (0..s).map(|i| (0..s).map(|a| axis(a, i) * found.mean[a]).sum()).collect();
    let mut cov = vec![0.0; s * s];
    for i in 0..s {
        for j in 0..=i {
            let v: f64 =
                (0..s).map(|a| (0..s).map(|b| axis(a, i) * found.cov[a * s + b] * axis(b, j)).sum::<f64>()).sum();
            cov[i * s + j] = v;
            cov[j * s + i] = v;
        }
    }
    WhitenedMoments {
        log_mass: mass.log_mass,
        mean: offset,
        anchor: Some(u.iter().map(|v| d * v).collect()),
        cov,
        error: mass.error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[d, d + 1] x [-1, 1]^3`: nearest point `d e_1`, vertices at slicing coordinates 0 (the
    /// anchor's face, not a breakpoint) and 1; with more row sets than tried, none.
    #[test]
    fn breakpoints_of_a_box_are_its_far_face() {
        let (s, d) = (4, 50.0);
        let mut f = Vec::new();
        let mut e = Vec::new();
        for k in 0..s {
            for sign in [1.0, -1.0] {
                let mut row = vec![0.0; s];
                row[k] = sign;
                f.extend(row);
                e.push(match (k, sign > 0.0) {
                    (0, true) => d + 1.0,
                    (0, false) => -d,
                    _ => 1.0,
                });
            }
        }
        let u = [1.0, 0.0, 0.0, 0.0];
        assert_eq!(breakpoints(&f, &e, s, &u, d), Some(vec![1.0]));
        // C(40, 4) = 91,390 sets are tried; C(64, 4) = 635,376 are not.
        let many = |m: usize| (f.repeat(m / 8), e.repeat(m / 8));
        let (f40, e40) = many(40);
        assert!(breakpoints(&f40, &e40, s, &u, d).is_some());
        let (f64_, e64) = many(64);
        assert_eq!(breakpoints(&f64_, &e64, s, &u, d), None);
    }
}
