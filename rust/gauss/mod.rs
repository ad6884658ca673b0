//! Gaussian masses and truncated moments over convex polyhedra (docs/design.md §4): for
//! `Z ~ N(mean, cov)` and `P = {z : G z <= h}`, `log P(Z in P)`, `E[Z | Z in P]` and
//! `Cov[Z | Z in P]`, tail-safe.
//!
//! The polyhedron is whitened once per `(G, cov)` (`z = mean + L w`, rows normalised); each
//! offset or mean then gives `{w : F w <= e}` under `N(0, I)`. Redundant rows are dropped by
//! LP, an empty or lower-dimensional polyhedron has mass zero. S = 1 is an interval in closed
//! form, S = 2 a polygon (`polygon.rs`, exact), S = 3 an adaptive quadrature over exact polygon
//! slices (`slices.rs`), S >= 4 separation of variables with tilted randomised QMC (`sov.rs`).

mod far_slices;
pub mod nearest;
pub mod normal;
pub mod normal_batch;
pub mod orthant;
pub mod polygon;
mod polygon_latent;
mod polygon_series;
pub mod rectangle;
pub mod slices;
pub mod sobol;
pub mod sov;
pub mod vertex_cones;

use rayon::prelude::*;

use crate::cancel::Cancel;
use crate::error::{invalid, Error, Result};
use crate::linalg::{dot, Tolerance};
use crate::partition::complement_basis;
use crate::partition::lp::{chebyshev_ball, Lp, LpOutcome};

/// Point budget of each facet integral in the moment formulas: the moments need less
/// relative accuracy than the mass, and there are many facets.
const FACET_BUDGET: usize = 1 << 15;

/// Radius cap of the emptiness test's Chebyshev LP (whitened units).
const BALL_CAP: f64 = 1.0;

/// How an integral is computed: the relative accuracy asked of its mass (`rtol`, positive), the
/// seed of its quasi-Monte Carlo scramblings (for reproducible results), and the token that
/// interrupts it. The exact paths (S <= 2, intervals, slabs) use only the token.
///
/// `negligible` (zero unless set) is an absolute error also allowed on the mass, as a fraction of
/// a bound on it (the Gaussian tail beyond the polyhedron's point nearest the mean): inference
/// sets it for a term so small against the sum so far that this much error is its share of the
/// accuracy asked of the sum. Where the whole mass is within it, the mass may be reported as
/// zero (the S = 3 vertex cones do; the other paths keep to `rtol`).
#[derive(Clone, Copy, Debug)]
pub struct IntegrationSettings<'a> {
    pub rtol: f64,
    pub seed: u64,
    pub cancel: &'a Cancel,
    pub negligible: f64,
}

impl<'a> IntegrationSettings<'a> {
    pub fn new(rtol: f64, seed: u64, cancel: &'a Cancel) -> Self {
        IntegrationSettings { rtol, seed, cancel, negligible: 0.0 }
    }

    /// The same settings asking relative accuracy `rtol`.
    pub fn with_rtol(self, rtol: f64) -> Self {
        IntegrationSettings { rtol, ..self }
    }

    /// The same settings allowing an absolute error of `negligible` times a bound on the mass.
    pub fn with_negligible(self, negligible: f64) -> Self {
        IntegrationSettings { negligible, ..self }
    }
}

/// `log_mass`, conditional mean and covariance (row-major), and the estimated relative error of
/// the mass (zero where the method is exact).
#[derive(Clone, Debug)]
pub struct GaussMoments {
    pub log_mass: f64,
    pub mean: Vec<f64>,
    pub cov: Vec<f64>,
    pub error: f64,
}

impl GaussMoments {
    fn empty(s: usize) -> Self {
        GaussMoments { log_mass: f64::NEG_INFINITY, mean: vec![f64::NAN; s], cov: vec![f64::NAN; s * s], error: 0.0 }
    }
}

/// Lower Cholesky factor (row-major) of a positive definite matrix (its lower triangle is
/// read), or `None`.
pub(crate) fn lower_cholesky(m: &[f64], s: usize) -> Option<Vec<f64>> {
    let factor = nalgebra::Cholesky::new(nalgebra::DMatrix::from_row_slice(s, s, m))?.l();
    Some((0..s * s).map(|k| factor[(k / s, k % s)]).collect())
}

/// Lower Cholesky factor (row-major) of a symmetric positive definite matrix, or a ValueError
/// saying which of those it is not.
pub fn cholesky(cov: &[f64], s: usize) -> Result<Vec<f64>> {
    if cov.len() != s * s {
        return invalid(format!("cov must be {s} x {s}; got {} entries", cov.len()));
    }
    if cov.iter().any(|v| !v.is_finite()) {
        return invalid("cov contains NaN or infinite values");
    }
    let scale = cov.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    for i in 0..s {
        for j in 0..i {
            if (cov[i * s + j] - cov[j * s + i]).abs() > 1e-10 * scale {
                return invalid(format!(
                    "cov is not symmetric: cov[{i}, {j}] = {} but cov[{j}, {i}] = {}",
                    cov[i * s + j],
                    cov[j * s + i]
                ));
            }
        }
    }
    let not_pd = || invalid("cov is not positive definite (a Gaussian needs a positive definite covariance)");
    let Some(l) = lower_cholesky(cov, s) else { return not_pd() };
    // A pivot below 1e-14 of the scale is singular to working precision.
    if (0..s).any(|i| l[i * s + i] * l[i * s + i] <= 1e-14 * scale) {
        return not_pd();
    }
    Ok(l)
}

/// A polyhedron's rows `G` and a covariance, whitened once; [`PolytopeShape::moments`] then
/// integrates for any offsets `h` and mean.
#[derive(Clone, Debug)]
pub struct PolytopeShape {
    s: usize,
    /// `G` with each row scaled by a power of two to a largest entry in [1, 2), and that
    /// scale's inverse (the offsets are divided by it).
    g: Vec<f64>,
    row_norm: Vec<f64>,
    l: Vec<f64>,
    /// `G L` with unit rows (rows of `G` that are zero have a zero row here).
    f: Vec<f64>,
    scale: Vec<f64>,
}

impl PolytopeShape {
    /// `g` row-major `m x s`, `cov` row-major `s x s`.
    pub fn new(g: &[f64], s: usize, cov: &[f64]) -> Result<Self> {
        if s == 0 {
            return invalid("the dimension must be at least 1");
        }
        if !g.len().is_multiple_of(s) {
            return invalid(format!("G must have {s} columns"));
        }
        if g.iter().any(|v| !v.is_finite()) {
            return invalid("G contains NaN or infinite values");
        }
        let l = cholesky(cov, s)?;
        Ok(Self::with_factor(g, s, l))
    }

    /// As [`Self::new`] from a lower triangular factor `l` (row-major, positive diagonal) of
    /// the covariance, `L L^T = cov`: inference factors its covariances itself, accurately
    /// also where they are too ill-conditioned for a Cholesky factorisation of the formed
    /// matrix (tiny noise). `g` must be finite with S columns.
    pub(crate) fn with_factor(g: &[f64], s: usize, l: Vec<f64>) -> Self {
        let m = g.len() / s;
        // Each row (and later its offset) scaled by the power of two that brings its largest
        // entry into [1, 2): rows of any scale (1e-300 to 1e300) describe the same polyhedron,
        // and neither their squares nor those of `G L` may underflow or overflow. A power of
        // two scales exactly, so rows of ordinary size give the same bits as unscaled. A zero
        // row stays zero.
        let mut row_norm = vec![1.0; m];
        let mut g = g.to_vec();
        for (row, norm) in g.chunks_exact_mut(s).zip(row_norm.iter_mut()) {
            let largest = row.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            if largest > 0.0 {
                let exponent = largest.log2().floor() as i32;
                // Two halves: 2^-exponent alone overflows for subnormal rows.
                let (first, second) = (2f64.powi(-exponent / 2), 2f64.powi(-exponent + exponent / 2));
                row.iter_mut().for_each(|v| *v = *v * first * second);
                *norm = 1.0 / (first * second);
            }
        }
        let mut f = vec![0.0; m * s];
        let mut scale = vec![0.0; m];
        for i in 0..m {
            let row = &g[i * s..(i + 1) * s];
            let fl: Vec<f64> = (0..s).map(|j| (j..s).map(|k| row[k] * l[k * s + j]).sum()).collect();
            let n = dot(&fl, &fl).sqrt();
            scale[i] = n;
            if n > 0.0 {
                for j in 0..s {
                    f[i * s + j] = fl[j] / n;
                }
            }
        }
        PolytopeShape { s, g, row_norm, l, f, scale }
    }

    pub fn dim(&self) -> usize {
        self.s
    }

    pub fn n_rows(&self) -> usize {
        self.scale.len()
    }

    /// The mass and moments for offsets `h` (one per row; `+inf` drops a row, `-inf` empties
    /// the polyhedron) and `mean`.
    pub fn moments(
        &self,
        h: &[f64],
        mean: &[f64],
        want_moments: bool,
        settings: &IntegrationSettings,
    ) -> Result<GaussMoments> {
        let s = self.s;
        if h.len() != self.n_rows() {
            return invalid(format!("h must have one entry per row of G ({}); got {}", self.n_rows(), h.len()));
        }
        if mean.len() != s {
            return invalid(format!("mean must have {s} entries; got {}", mean.len()));
        }
        if h.iter().any(|v| v.is_nan()) || mean.iter().any(|v| !v.is_finite()) {
            return invalid("h or mean contains NaN (or mean an infinite value)");
        }
        let Some((f, e)) = self.whitened(h, mean) else { return Ok(GaussMoments::empty(s)) };
        let whitened = match reduce(&f, &e, s) {
            None => return Ok(GaussMoments::empty(s)),
            Some((_, e, _)) if e.is_empty() => WhitenedMoments::whole_space(s),
            Some((f, e, center)) => {
                let want = if want_moments { Want::MeanAndSecond } else { Want::Mass };
                checked(integrate_whitened(&f, &e, s, &center, want, sov::MAX_POINTS, settings)?, s, e.len(), want)?
            }
        };
        Ok(self.unwhiten(whitened, mean))
    }

    /// As [`Self::moments`] for rows known to be non-redundant (a region's facets: whitening
    /// and moving the mean keep them so) with `inside` an interior point: no LP reduction.
    pub fn moments_of_facets(
        &self,
        h: &[f64],
        mean: &[f64],
        inside: &[f64],
        want_moments: bool,
        settings: &IntegrationSettings,
    ) -> Result<GaussMoments> {
        let s = self.s;
        let Some((f, e)) = self.whitened(h, mean) else { return Ok(GaussMoments::empty(s)) };
        let whitened = if e.is_empty() {
            WhitenedMoments::whole_space(s)
        } else {
            let want = if want_moments { Want::MeanAndSecond } else { Want::Mass };
            checked(
                integrate_whitened(&f, &e, s, &self.whiten_point(inside, mean), want, sov::MAX_POINTS, settings)?,
                s,
                e.len(),
                want,
            )?
        };
        Ok(self.unwhiten(whitened, mean))
    }

    /// `w = L^{-1} (z - mean)`.
    fn whiten_point(&self, z: &[f64], mean: &[f64]) -> Vec<f64> {
        let s = self.s;
        let mut w = vec![0.0; s];
        for i in 0..s {
            let r: f64 = (0..i).map(|k| self.l[i * s + k] * w[k]).sum();
            w[i] = (z[i] - mean[i] - r) / self.l[i * s + i];
        }
        w
    }

    /// A certain upper bound on the log mass for offsets `h` and `mean`: `Phi(-d) <=
    /// exp(-d^2/2)/2` at the whitened distance `d` from the mean to the polyhedron, found by
    /// the nearest-point QP from `inside`, a point of the polyhedron.
    pub fn log_mass_bound(&self, h: &[f64], mean: &[f64], inside: &[f64]) -> f64 {
        let s = self.s;
        let Some((f, e)) = self.whitened(h, mean) else { return f64::NEG_INFINITY };
        let start = self.whiten_point(inside, mean);
        let nearest = nearest::nearest_point(&f, &e, s, &vec![0.0; s], &start);
        crate::linalg::log_tail_bound(dot(&nearest, &nearest).sqrt())
    }

    /// The rows and offsets in whitened coordinates `w = L^{-1}(z - mean)`, without the rows
    /// that constrain nothing (`h = +inf`, or a zero row with `h >= 0`); `None` when a row
    /// empties the polyhedron (`h = -inf`, or a zero row with `h < 0`).
    fn whitened(&self, h: &[f64], mean: &[f64]) -> Option<(Vec<f64>, Vec<f64>)> {
        let s = self.s;
        let (mut f, mut e) = (Vec::new(), Vec::new());
        for i in 0..self.n_rows() {
            if h[i] == f64::INFINITY {
                continue;
            }
            if self.scale[i] == 0.0 {
                if h[i] < 0.0 {
                    return None;
                }
                continue;
            }
            if h[i] == f64::NEG_INFINITY {
                return None;
            }
            // An offset beyond the range of doubles once over a tiny row's length: a row that
            // constrains nothing, or one that empties the polyhedron.
            let offset = h[i] / self.row_norm[i];
            if offset == f64::INFINITY {
                continue;
            }
            if offset == f64::NEG_INFINITY {
                return None;
            }
            f.extend_from_slice(&self.f[i * s..(i + 1) * s]);
            e.push((offset - dot(&self.g[i * s..(i + 1) * s], mean)) / self.scale[i]);
        }
        Some((f, e))
    }

    /// `z = mean + L w`: moments of w to moments of z.
    fn unwhiten(&self, w: WhitenedMoments, mean: &[f64]) -> GaussMoments {
        let s = self.s;
        if w.log_mass == f64::NEG_INFINITY {
            // Zero mass: exact (0) for an empty polyhedron, unknown (infinite) where the
            // integrator found none in one that has an interior.
            return GaussMoments { error: w.error, ..GaussMoments::empty(s) };
        }
        let l = &self.l;
        // mean + L anchor, then + L offset: the small part last.
        let z_mean: Vec<f64> = (0..s)
            .map(|i| {
                let row = &l[i * s..i * s + i + 1];
                let at = w.anchor.as_ref().map_or(0.0, |a| dot(row, &a[..i + 1]));
                mean[i] + at + dot(row, &w.mean[..i + 1])
            })
            .collect();
        // Cov[z] = L Cov[w] L^T.
        let cw = &w.cov;
        let mut lc = vec![0.0; s * s];
        for i in 0..s {
            for j in 0..s {
                lc[i * s + j] = (0..=i).map(|k| l[i * s + k] * cw[k * s + j]).sum();
            }
        }
        let mut cov = vec![0.0; s * s];
        for i in 0..s {
            for j in 0..=i {
                let v: f64 = (0..=j).map(|k| lc[i * s + k] * l[j * s + k]).sum();
                cov[i * s + j] = v;
                cov[j * s + i] = v;
            }
        }
        GaussMoments { log_mass: w.log_mass, mean: z_mean, cov, error: w.error }
    }
}

/// Moments under `N(0, I)`: log mass, `E[w]`, `Cov[w]` (row-major), relative error.
#[derive(Clone)]
struct WhitenedMoments {
    log_mass: f64,
    /// `E[w]`, less `anchor` where there is one: far in a tail the mean is a point of size
    /// `d` plus an offset known to its own (much smaller) scale, added last.
    mean: Vec<f64>,
    anchor: Option<Vec<f64>>,
    /// `Cov[w]`, carried as such: forming it as `E[w w^T] - E[w] E[w]^T` at the end loses its
    /// digits for a polyhedron narrow against its distance from the mean.
    cov: Vec<f64>,
    error: f64,
}

impl WhitenedMoments {
    fn whole_space(s: usize) -> Self {
        let mut cov = vec![0.0; s * s];
        (0..s).for_each(|i| cov[i * s + i] = 1.0);
        WhitenedMoments { log_mass: 0.0, mean: vec![0.0; s], anchor: None, cov, error: 0.0 }
    }

    /// `E[w]`, anchor and offset added.
    fn full_mean(&self) -> Vec<f64> {
        match &self.anchor {
            Some(anchor) => anchor.iter().zip(&self.mean).map(|(a, m)| a + m).collect(),
            None => self.mean.clone(),
        }
    }
}

/// The minimal H-representation of `{w : F w <= e}` (unit rows) with a point well inside (for
/// S >= 3, where it starts the nearest-point search), or `None` when the polyhedron is empty or
/// lower-dimensional (for S >= 3: it has no ball of radius above `Tolerance::DEFAULT` at its centre, so its
/// Gaussian mass is zero to that precision). Polygons are reduced exactly by their edges, S >= 3
/// by one LP per row.
pub(crate) fn reduce(f: &[f64], e: &[f64], s: usize) -> Option<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let m = e.len();
    if m == 0 {
        return Some((Vec::new(), Vec::new(), vec![0.0; s]));
    }
    if s == 1 {
        // Intervals: the tightest bound on each side.
        let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
        for i in 0..m {
            if f[i] > 0.0 {
                hi = hi.min(e[i]);
            } else {
                lo = lo.max(-e[i]);
            }
        }
        let centre = if lo.is_finite() && hi.is_finite() {
            0.5 * (lo + hi)
        } else if lo.is_finite() {
            lo + 1.0
        } else if hi.is_finite() {
            hi - 1.0
        } else {
            0.0
        };
        if hi - lo <= 2e-9 * (1.0 + centre.abs()) {
            return None;
        }
        let (mut rf, mut re) = (Vec::new(), Vec::new());
        if hi.is_finite() {
            rf.push(1.0);
            re.push(hi);
        }
        if lo.is_finite() {
            rf.push(-1.0);
            re.push(-lo);
        }
        return Some((rf, re, vec![centre]));
    }
    if s == 2 {
        let rows: Vec<[f64; 2]> = (0..m).map(|i| [f[2 * i], f[2 * i + 1]]).collect();
        let kept = polygon::non_redundant(&rows, e)?;
        let rf = kept.iter().flat_map(|&i| rows[i]).collect();
        let re = kept.iter().map(|&i| e[i]).collect();
        // Polygons are integrated without a start point.
        return Some((rf, re, vec![0.0; 2]));
    }
    let ball = chebyshev_ball(s, f, e, &vec![0.0; s], BALL_CAP);
    if ball.radius <= Tolerance::DEFAULT.at(dot(&ball.center, &ball.center).sqrt()) {
        return None;
    }
    // Row i is redundant if the other remaining rows already keep f_i . w below e_i. Rows are
    // tested in order and dropped as found, so of two identical rows the first goes.
    let mut keep = vec![true; m];
    for i in 0..m {
        let (mut a, mut b) = (Vec::with_capacity(m * s), Vec::with_capacity(m));
        for j in (0..m).filter(|&j| keep[j] && j != i) {
            a.extend_from_slice(&f[j * s..(j + 1) * s]);
            b.push(e[j]);
        }
        // The row itself, loosened by one unit, keeps the LP bounded.
        a.extend_from_slice(&f[i * s..(i + 1) * s]);
        b.push(e[i] + 1.0);
        let lp = Lp { n: s, a: &a, b: &b, c: &f[i * s..(i + 1) * s] };
        if let LpOutcome::Optimal { value, .. } = lp.solve(&ball.center) {
            if value <= e[i] + Tolerance::DEFAULT.at(e[i].abs()) {
                keep[i] = false;
            }
        }
    }
    let (mut rf, mut re) = (Vec::new(), Vec::new());
    for i in (0..m).filter(|&i| keep[i]) {
        rf.extend_from_slice(&f[i * s..(i + 1) * s]);
        re.push(e[i]);
    }
    Some((rf, re, ball.center))
}

/// What an integral must return besides the mass.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Want {
    Mass,
    Mean,
    MeanAndSecond,
}

/// `w` if its numbers are numbers: a NaN log mass (or `+inf`), or a NaN or infinite moment
/// beside a positive mass, is a failure of the integral, reported with its context instead of
/// passed on to sums that would hide where it came from.
fn checked(w: WhitenedMoments, s: usize, m: usize, want: Want) -> Result<WhitenedMoments> {
    let bad_mass = w.log_mass.is_nan() || w.log_mass == f64::INFINITY;
    let bad_moments =
        want > Want::Mass && w.log_mass > f64::NEG_INFINITY && w.mean.iter().chain(&w.cov).any(|v| !v.is_finite());
    if bad_mass || bad_moments {
        let what = if bad_mass {
            format!("log mass {}", w.log_mass)
        } else {
            format!("log mass {} but mean {:?}, covariance {:?}", w.log_mass, w.mean, w.cov)
        };
        let method = match s {
            1 => "interval",
            2 => "polygon",
            3 => "slice quadrature",
            _ => "quasi-Monte Carlo",
        };
        return Err(Error::Numerical(format!(
            "the S = {s} Gaussian integral ({method}) over a polyhedron with {m} facets gave {what}"
        )));
    }
    Ok(w)
}

/// Mass (and moments) of `N(0, I)` on the reduced polyhedron `{w : F w <= e}`.
fn integrate_whitened(
    f: &[f64],
    e: &[f64],
    s: usize,
    centre: &[f64],
    want: Want,
    budget: usize,
    settings: &IntegrationSettings,
) -> Result<WhitenedMoments> {
    match s {
        1 => {
            let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
            for (fi, ei) in f.iter().zip(e) {
                if *fi > 0.0 {
                    hi = *ei;
                } else {
                    lo = -*ei;
                }
            }
            let (log_mass, mean, variance) = normal::truncated_normal_central(0.0, 1.0, lo, hi);
            Ok(WhitenedMoments { log_mass, mean: vec![mean], anchor: None, cov: vec![variance], error: 0.0 })
        }
        _ if s >= 2 && lineal_normal(f, s).is_some() => {
            // A half-space or slab: the truncated normal along its normal, standard across it,
            // which stays accurate however far the mean is (the facet formulas take ratios of
            // masses whose logarithms there keep only `eps d^2` absolute accuracy).
            let n = lineal_normal(f, s).expect("checked");
            let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
            for (row, ei) in f.chunks_exact(s).zip(e) {
                if dot(row, n) > 0.0 {
                    hi = hi.min(*ei);
                } else {
                    lo = lo.max(-*ei);
                }
            }
            let (log_mass, mean, variance) = normal::truncated_normal_central(0.0, 1.0, lo, hi);
            // Variance along n, 1 across it: `v n n^T + sum_b b b^T` over an orthonormal basis
            // of the complement (`I - n n^T` would cancel where v is tiny).
            let across = complement_basis(n);
            let mut cov = vec![0.0; s * s];
            for j in 0..s {
                for k in 0..s {
                    cov[j * s + k] = variance * n[j] * n[k] + across.iter().map(|b| b[j] * b[k]).sum::<f64>();
                }
            }
            Ok(WhitenedMoments { log_mass, mean: n.iter().map(|v| mean * v).collect(), anchor: None, cov, error: 0.0 })
        }
        2 => {
            let rows = (0..e.len()).map(|i| [f[2 * i], f[2 * i + 1]]).collect();
            let poly = polygon::Polygon2::new(rows, e.to_vec(), [1.0, 0.0, 0.0, 1.0]);
            if want == Want::Mass {
                let log_mass = poly.log_mass(&[0.0, 0.0], 0.0);
                return Ok(WhitenedMoments {
                    log_mass,
                    mean: vec![f64::NAN; 2],
                    anchor: None,
                    cov: vec![f64::NAN; 4],
                    error: 0.0,
                });
            }
            if want == Want::Mean {
                // A facet's mean (the facet sums one dimension up need no covariance): from
                // the edges' fluxes where they do not cancel, its error absolute.
                let mut mean = vec![0.0; 2];
                if let Some((log_mass, error)) = poly.mean_by_fluxes(&[0.0, 0.0], &mut mean) {
                    return Ok(WhitenedMoments { log_mass, mean, anchor: None, cov: vec![f64::NAN; 4], error });
                }
            }
            // Central moments: `E[w w^T] - E[w] E[w]^T` would lose the covariance of a polygon
            // far out or tiny against the Gaussian.
            let (mut mean, mut cov) = (vec![0.0; 2], vec![0.0; 4]);
            let log_mass = poly.central_moments(&[0.0, 0.0], &mut mean, &mut cov);
            Ok(WhitenedMoments { log_mass, mean, anchor: None, cov, error: 0.0 })
        }
        3 if want > Want::Mass => slice_mass_and_facet_moments(f, e, &tilt_of(f, e, centre), want, settings),
        _ => {
            let tilt = tilt_of(f, e, centre);
            let (log_mass, error) = if s == 3 {
                log_mass_3d(f, e, &tilt, settings.rtol, settings)?
            } else {
                let mass = sov::integrate(f, e, s, &tilt, centre, budget, settings)?;
                (mass.log_mass, mass.error)
            };
            let mut out =
                WhitenedMoments { log_mass, mean: vec![f64::NAN; s], anchor: None, cov: vec![f64::NAN; s * s], error };
            if want > Want::Mass && log_mass > f64::NEG_INFINITY {
                let sums = facet_moments(f, e, s, &tilt, want, out.log_mass, settings)?;
                if !(sums.finish(s, &tilt, want, 0.0, false, &mut out) <= settings.rtol) {
                    // S >= 4 moments carry the quasi-Monte Carlo masses' errors (as asked) amplified
                    // by the polyhedron's shape; where rounding alone exceeds the accuracy asked
                    // (far in a tail: no accuracy of the masses could make them right), the
                    // moments come from slices one dimension down instead.
                    let rounding = sums.finish(s, &tilt, want, 0.0, true, &mut out.clone());
                    if !(rounding <= settings.rtol) && dot(&tilt, &tilt) > 0.0 {
                        return far_slices::moments(f, e, s, &tilt, settings, &out);
                    }
                }
            }
            Ok(out)
        }
    }
}

/// The point of the polyhedron nearest the mean (the origin), from `centre`, a point inside.
fn tilt_of(f: &[f64], e: &[f64], centre: &[f64]) -> Vec<f64> {
    let s = centre.len();
    nearest::nearest_point(f, e, s, &vec![0.0; s], centre)
}

/// S = 3 mass `(log mass, relative error)` to `rtol` (or within `settings.negligible` of its
/// tail bound): the vertex cones' signed sum of orthant probabilities where it reaches that
/// accuracy (a simple pointed polyhedron whose cones do not cancel too far), else the slices'
/// quadrature. `tilt` is the point nearest the mean.
fn log_mass_3d(f: &[f64], e: &[f64], tilt: &[f64], rtol: f64, settings: &IntegrationSettings) -> Result<(f64, f64)> {
    match vertex_cones::log_mass(f, e, tilt, rtol, settings.negligible) {
        Some(found) => Ok(found),
        None => slices::log_mass(f, e, tilt, rtol, settings.cancel),
    }
}

/// How much more accurately than the moments asked the S = 3 mass is sliced for the facets'
/// moments: their ratios to the mass carry its relative error times the terms' size against
/// the spread, which grows with the distance to the mean; a thousandth leaves room for
/// distances of ~10, and the slices converge geometrically, so it costs a few more panels.
const MOMENTS_MASS_RTOL: f64 = 1e-3;

/// S = 3 mass and moments: the mass from the vertex cones or sliced, to [`MOMENTS_MASS_RTOL`]
/// of the accuracy asked, and the moments from the facets (the divergence theorem); where their
/// bound fails with the cones' mass, sliced (as it would have been without them); where it
/// asks a still tighter mass, sliced again to what it asks; where the facets cannot give the moments
/// however accurate the mass (far in a tail, where their terms cancel), the moments from the
/// slices' own central moments. The mass is the most accurate one computed, so it may differ
/// from the mass alone (sliced to the accuracy asked) by about that accuracy.
fn slice_mass_and_facet_moments(
    f: &[f64],
    e: &[f64],
    tilt: &[f64],
    want: Want,
    settings: &IntegrationSettings,
) -> Result<WhitenedMoments> {
    let s = 3;
    let rtol = settings.rtol;
    let mass_rtol = MOMENTS_MASS_RTOL * rtol;
    let cones = vertex_cones::log_mass(f, e, tilt, mass_rtol, settings.negligible);
    let (log_mass, error) = match cones {
        Some(found) => found,
        None => slices::log_mass(f, e, tilt, mass_rtol, settings.cancel)?,
    };
    let mut out =
        WhitenedMoments { log_mass, mean: vec![f64::NAN; s], anchor: None, cov: vec![f64::NAN; s * s], error };
    if log_mass == f64::NEG_INFINITY {
        return Ok(out);
    }
    let sums = facet_moments(f, e, s, tilt, want, log_mass, settings)?;
    let mut bound = sums.finish(s, tilt, want, 0.0, false, &mut out);
    if !(bound <= rtol) && cones.is_some() {
        // The cones' error (their terms' rounding, near the accuracy asked where they cancel)
        // may be what fails the bound; the slices' converges geometrically, mostly far below.
        let (log_mass, error) = slices::log_mass(f, e, tilt, mass_rtol, settings.cancel)?;
        let shift = out.log_mass - log_mass;
        out.log_mass = log_mass;
        out.error = error;
        bound = sums.finish(s, tilt, want, shift, false, &mut out);
    }
    if !(bound <= rtol) {
        // The mass's error enters every facet ratio alike, times the size of the terms against
        // the spread: where the rest of the bound leaves room, a tighter mass saves the slices'
        // moments.
        let rest = sums.finish(s, tilt, want, 0.0, false, &mut WhitenedMoments { error: 0.0, ..out.clone() });
        if rest <= 0.5 * rtol && out.error > 0.0 {
            let sensitivity = (bound - rest) / out.error;
            let (log_mass, error) = slices::log_mass(f, e, tilt, 0.25 * rtol / sensitivity, settings.cancel)?;
            let shift = out.log_mass - log_mass;
            out.log_mass = log_mass;
            out.error = error;
            bound = sums.finish(s, tilt, want, shift, false, &mut out);
        }
    }
    if !(bound <= rtol) {
        // Moments from the slices' own central moments, accurate however far out the
        // polyhedron is.
        return slice_moments(f, e, tilt, settings, &out);
    }
    Ok(out)
}

/// S = 3 moments by slicing (`slices::moments`), the mean carried as anchor and offset, with
/// the mass (and its error) of `mass`.
fn slice_moments(
    f: &[f64],
    e: &[f64],
    tilt: &[f64],
    settings: &IntegrationSettings,
    mass: &WhitenedMoments,
) -> Result<WhitenedMoments> {
    let found = slices::moments(f, e, tilt, settings.rtol, settings.cancel)?;
    if found.log_mass == f64::NEG_INFINITY {
        return Ok(WhitenedMoments { mean: vec![f64::NAN; 3], anchor: None, cov: vec![f64::NAN; 9], ..mass.clone() });
    }
    Ok(WhitenedMoments {
        log_mass: mass.log_mass,
        mean: found.offset.to_vec(),
        anchor: Some(found.anchor.to_vec()),
        cov: found.cov.to_vec(),
        error: mass.error,
    })
}

/// The common normal of unit rows that are all parallel or antiparallel to the first (a
/// half-space or a slab), or `None`.
fn lineal_normal(f: &[f64], s: usize) -> Option<&[f64]> {
    let first = f.get(..s)?;
    f.chunks_exact(s).all(|row| dot(row, first).abs() >= 1.0 - 1e-14).then_some(first)
}

/// Moments from facet masses (docs/design.md §4). The divergence theorem with `grad phi = -w phi`
/// gives `E[w 1_P] = -sum_i f_i phi(e_i) P_i` (`P_i` the (S-1)-dimensional mass of facet i) and,
/// with `(w_k - t_k) phi` for a centre `t` (the tilting point, which keeps the cancellation in
/// the covariance small far out in a tail),
/// `E[w_j (w_k - t_k) 1_P] = delta_jk P - sum_i f_ij phi(e_i) int_{F_i} (w_k - t_k)`.
/// Facets are integrated by the same engine one dimension down, exactly once that is 2.
///
/// Returns the sums, whose [`FacetSums::finish`] gives the moments and a bound on their relative
/// error: the mean's against the smallest conditional standard deviation, the covariance's
/// against its smallest eigenvalue (infinite where the covariance is not positive definite),
/// for the mass `exp(log_mass)`. Each ratio `r_i = phi(e_i) P_i / P` carries the
/// masses' relative errors and the rounding of its logarithms (`eps` times their size, `~d^2`
/// at a distance `d`); far in a tail the terms, of size `d` (mean) and `d^2` (second moments),
/// cancel down to `1/d` and `1/d^2`, which the bound measures.
fn facet_moments(
    f: &[f64],
    e: &[f64],
    s: usize,
    tilt: &[f64],
    want: Want,
    log_mass: f64,
    settings: &IntegrationSettings,
) -> Result<FacetSums> {
    let m = e.len();
    let mut mean = vec![0.0; s];
    // sum_i f_ij r_i (int_{F_i} (w_k - t_k)) / P_i, with r_i = phi(e_i) P_i / P.
    let mut cross = vec![0.0; s * s];
    // Absolute error bounds on the mean and on `cross` (a norm), the mass's error apart: it is
    // common to every ratio.
    let (mut mean_error, mut cross_error) = (0.0, 0.0);
    // The same from rounding alone (the masses taken as exact).
    let (mut mean_rounding, mut cross_rounding) = (0.0, 0.0);
    let rounding = 8.0 * f64::EPSILON;
    for i in 0..m {
        let fi = &f[i * s..(i + 1) * s];
        let basis = complement_basis(fi);
        // On the facet w = e_i f_i + B u; the other rows become rows in u.
        let (mut pf, mut pe) = (Vec::new(), Vec::new());
        let mut empty = false;
        for j in (0..m).filter(|&j| j != i) {
            let fj = &f[j * s..(j + 1) * s];
            let projected: Vec<f64> = basis.iter().map(|b| dot(b, fj)).collect();
            let norm = dot(&projected, &projected).sqrt();
            let offset = e[j] - e[i] * dot(fi, fj);
            if norm <= 1e-12 {
                empty |= offset < 0.0;
                continue;
            }
            pf.extend(projected.iter().map(|v| v / norm));
            pe.push(offset / norm);
        }
        if empty {
            continue;
        }
        let Some((rf, re, centre)) = reduce(&pf, &pe, s - 1) else { continue };
        let inner = if want == Want::MeanAndSecond { Want::Mean } else { Want::Mass };
        let facet = if re.is_empty() {
            WhitenedMoments::whole_space(s - 1)
        } else {
            integrate_whitened(&rf, &re, s - 1, &centre, inner, FACET_BUDGET, settings)?
        };
        let log_r = normal::log_pdf(e[i]) + facet.log_mass - log_mass;
        let r = log_r.exp();
        if r == 0.0 {
            continue;
        }
        // The ratio's relative error: the facet's mass, and the rounding of the logarithms
        // (the exponential turns their absolute error into a relative one).
        let log_size = 0.5 * e[i] * e[i] + facet.log_mass.abs() + log_mass.abs() + 1.0;
        let delta = facet.error + rounding * log_size;
        for k in 0..s {
            mean[k] -= fi[k] * r;
        }
        mean_error += r * delta;
        mean_rounding += r * rounding * log_size;
        if want == Want::MeanAndSecond {
            // E over the facet of w - t = e_i f_i + B u - t.
            let facet_mean = facet.full_mean();
            let centred: Vec<f64> = (0..s)
                .map(|k| e[i] * fi[k] + basis.iter().zip(&facet_mean).map(|(b, u)| b[k] * u).sum::<f64>() - tilt[k])
                .collect();
            for j in 0..s {
                for k in 0..s {
                    cross[j * s + k] += fi[j] * r * centred[k];
                }
            }
            // The facet's mean is known to its own error (relative to its size, or absolute
            // for a polygon's mean from its fluxes: at least 1 counts as a size), plus
            // rounding of the terms of `centred`.
            let size = e[i].abs() + dot(&facet_mean, &facet_mean).sqrt() + dot(tilt, tilt).sqrt();
            cross_error += r * (delta * dot(&centred, &centred).sqrt() + facet.error * size.max(1.0) + rounding * size);
            cross_rounding += r * rounding * (log_size * dot(&centred, &centred).sqrt() + size);
        }
    }
    Ok(FacetSums { mean, cross, mean_error, cross_error, mean_rounding, cross_rounding })
}

/// The divergence theorem's sums for a mass `P` (see [`facet_moments`]), with absolute error
/// bounds apart from the mass's own error.
struct FacetSums {
    mean: Vec<f64>,
    cross: Vec<f64>,
    mean_error: f64,
    cross_error: f64,
    mean_rounding: f64,
    cross_rounding: f64,
}

impl FacetSums {
    /// The moments into `out` for its mass `out.log_mass = log P - shift` (every ratio scales
    /// by `exp(shift)`) and its error `out.error`, and the bound on their relative error; with
    /// `rounding_only`, the part of that bound that rounding alone causes (masses taken as
    /// exact), which far in a tail grows like `eps d^6` whatever accuracy was asked.
    fn finish(
        &self,
        s: usize,
        tilt: &[f64],
        want: Want,
        shift: f64,
        rounding_only: bool,
        out: &mut WhitenedMoments,
    ) -> f64 {
        let rounding = 8.0 * f64::EPSILON;
        let scale = shift.exp();
        let norm = |v: &[f64]| dot(v, v).sqrt();
        let mean: Vec<f64> = self.mean.iter().map(|v| v * scale).collect();
        let cross: Vec<f64> = self.cross.iter().map(|v| v * scale).collect();
        // The mass's error scales every ratio alike.
        let mass_error = if rounding_only { 0.0 } else { out.error };
        let (mean_error, cross_error) =
            if rounding_only { (self.mean_rounding, self.cross_rounding) } else { (self.mean_error, self.cross_error) };
        let mean_error = mean_error * scale + mass_error * norm(&mean);
        let cross_error = cross_error * scale;
        out.mean = mean;
        if want != Want::MeanAndSecond {
            // The mean alone (a facet's, one dimension up): against a unit standard deviation,
            // the scale of the facet's extent at which its error counts.
            return mean_error;
        }
        // Cov_jk = E[w_j (w_k - t_k) | P] - m_j (m_k - t_k), symmetrised.
        let m_ = &out.mean;
        let mut cov = vec![0.0; s * s];
        for j in 0..s {
            for k in 0..=j {
                let c_jk = f64::from(u8::from(j == k)) - cross[j * s + k] - m_[j] * (m_[k] - tilt[k]);
                let c_kj = f64::from(u8::from(j == k)) - cross[k * s + j] - m_[k] * (m_[j] - tilt[j]);
                let v = 0.5 * (c_jk + c_kj);
                cov[j * s + k] = v;
                cov[k * s + j] = v;
            }
        }
        let offset: Vec<f64> = (0..s).map(|k| m_[k] - tilt[k]).collect();
        let cov_error = cross_error
            + mass_error * norm(&cross)
            + mean_error * (norm(&offset) + norm(m_))
            + rounding * (1.0 + norm(&cross) + norm(m_) * norm(&offset));
        let mut smallest = smallest_eigenvalue(&cov, s);
        out.cov = cov;
        if !(smallest > 0.0) {
            if !rounding_only {
                return f64::INFINITY;
            }
            // Not positive definite from the masses' errors: rounding measured against the
            // variance a tail at this distance has.
            smallest = 1.0 / (1.0 + dot(tilt, tilt));
        }
        (mean_error / smallest.sqrt()).max(cov_error / smallest)
    }
}

/// The smallest eigenvalue of a symmetric matrix (row-major), NaN if not finite.
fn smallest_eigenvalue(a: &[f64], s: usize) -> f64 {
    if a.iter().any(|v| !v.is_finite()) {
        return f64::NAN;
    }
    let eigen = nalgebra::SymmetricEigen::new(nalgebra::DMatrix::from_row_slice(s, s, a));
    eigen.eigenvalues.iter().copied().fold(f64::INFINITY, f64::min)
}

/// The relative accuracy every integrating entry point asks for: positive (and not NaN).
pub(crate) fn check_rtol(rtol: f64) -> Result<()> {
    if !(rtol > 0.0) {
        return invalid(format!("rtol must be positive; got {rtol}"));
    }
    Ok(())
}

/// Many integrals over one shape: row `k` uses offsets `h[k]` (`n x m`) and mean `means[k]`
/// (`n x s`). Parallel over rows; results in row order, each with the same seed.
pub fn moments_batch(
    shape: &PolytopeShape,
    h: &[f64],
    means: &[f64],
    n: usize,
    want_moments: bool,
    settings: &IntegrationSettings,
) -> Result<Vec<GaussMoments>> {
    let (m, s) = (shape.n_rows(), shape.dim());
    if h.len() != n * m || means.len() != n * s {
        return invalid(format!("expected {n} rows of {m} offsets and {n} means of dimension {s}"));
    }
    check_rtol(settings.rtol)?;
    (0..n)
        .into_par_iter()
        .map(|k| shape.moments(&h[k * m..(k + 1) * m], &means[k * s..(k + 1) * s], want_moments, settings))
        .collect()
}

/// Rectangle probabilities `P(lower[k] <= Z <= upper[k])`, `Z ~ N(mean, cov)`, for the `n`
/// rows of `lower` and `upper` (`n x s`): `(log p, relative error)` per row. S = 4 to
/// `rectangle::MAX_DIM` by the lattice path of `rectangle.rs`; S <= 3 (exact or nearly), far
/// tails and more dimensions as the polyhedron `[I; -I] z <= [upper; -lower]`.
pub fn rectangles_batch(
    lower: &[f64],
    upper: &[f64],
    mean: &[f64],
    cov: &[f64],
    n: usize,
    settings: &IntegrationSettings,
) -> Result<Vec<(f64, f64)>> {
    let s = mean.len();
    if lower.len() != n * s || upper.len() != n * s {
        return invalid(format!("expected {n} rows of {s} lower and upper limits"));
    }
    check_rtol(settings.rtol)?;
    let mut g = vec![0.0; 2 * s * s];
    for k in 0..s {
        g[k * s + k] = 1.0;
        g[(s + k) * s + k] = -1.0;
    }
    let shape = PolytopeShape::new(&g, s, cov)?;
    (0..n)
        .into_par_iter()
        .map(|k| {
            let (lo, hi) = (&lower[k * s..(k + 1) * s], &upper[k * s..(k + 1) * s]);
            if s >= 4 {
                let (a, b): (Vec<f64>, Vec<f64>) =
                    lo.iter().zip(hi).zip(mean).map(|((l, u), m)| (l - m, u - m)).unzip();
                if let Some(found) = rectangle::probability(&a, &b, cov, sov::MAX_POINTS, settings)? {
                    return Ok((found.log_mass, found.error));
                }
            }
            let h: Vec<f64> = hi.iter().copied().chain(lo.iter().map(|l| -l)).collect();
            let found = shape.moments(&h, mean, false, settings)?;
            Ok((found.log_mass, found.error))
        })
        .collect()
}

#[cfg(test)]
mod tests;
