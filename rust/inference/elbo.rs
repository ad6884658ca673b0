//! Exact evidence lower bound and posterior gap of Gaussian encoders (docs/design.md §7).
//!
//! For a Gaussian `q(z | x) = N(m, V)` the ELBO is a sum over regions of Gaussian-quadratic
//! integrals: on region `omega` (map `A z + b`, `r = x - b`), with `P`, `c`, `C` q's mass,
//! conditional mean and conditional covariance on `omega`,
//!
//! ```text
//! E_q[1_omega log N(x; A z + b, Psi)] = P (k0 - 1/2 [ |r - A c|^2_Psi + tr(A^T Psi^-1 A C) ])
//! E_q[log p(z)] + H(q)                = -1/2 (m^T m + tr V - S - log det V)
//! ```
//!
//! with `k0 = -D/2 log 2pi - 1/2 log det Psi`. The gap `log p(x) - ELBO = KL(q || p(z | x))` is
//! summed region by region in the same way from `log q(z) - log p(z | x)`, which on `omega` is
//! `log N(z; m, V) - log N(z; mu_q, Sigma_q) - log kappa_q + log p(x)`: a sum of terms of the
//! gap's own size where q is close to the posterior, not the difference of two large numbers.
//!
//! `P`, `c`, `C` come from the polyhedral Gaussian engine (`crate::gauss`) under q's covariance,
//! which differs from point to point, so each (point, region) is whitened anew: intervals in
//! closed form (S = 1), polygons exactly (S = 2), the facet path with relative error `rtol` and
//! an error estimate (S >= 3). Everything is computed relative to q's mean (the region moved by
//! `-m`), so that `C` comes without the cancellation of `E[z z^T] - c c^T` against `|m|^2`.
//!
//! Regions are skipped only by a proven bound on `|E_q[1_omega f]|`, `f` the integrand (a
//! quadratic in z): the region lies in the half-space of its facet farthest from q's mean, at
//! whitened distance `t`, and `|f|` is bounded by a quadratic in `|w|` (whitened), whose
//! expectation over the half-space is closed form, of order `t^2 Phi(-t)`; or, by
//! Cauchy-Schwarz, `sqrt(Phi(-t)) sqrt(E_q[f^2])` with `E_q[f^2]` in closed form under the
//! untruncated q (see `Quadratic::region_bound`). Regions are integrated in decreasing order of
//! that bound until the bounds of all those left sum to at most [`SKIP_RTOL`] of the magnitude
//! already summed.

use nalgebra::DMatrixView;

use super::{RegionAlgebra, LOG_2PI};
use crate::cancel::Cancel;
use crate::error::{invalid, Result};
use crate::gauss::normal::{log_pdf, ndtr, truncated_normal_central};
use crate::gauss::polygon::Polygon2;
use crate::gauss::IntegrationSettings;
use crate::gauss::{cholesky, PolytopeShape};
use crate::linalg::dot;
use crate::partition::Partition;

/// The regions left out of a point's sum are bounded, together, by this fraction of the
/// magnitude of the terms summed (a sum of absolute values, never zero).
pub const SKIP_RTOL: f64 = 1e-17;

/// The loosest relative accuracy asked of a minor region's integrals (S >= 3), as a multiple
/// of `rtol` (as in the log-likelihood's integrator).
const MAX_LOOSENESS: f64 = 1e3;

/// Relative accuracy of the exact methods' masses and moments: the truncated normal of
/// `normal.rs` (S = 1) and the polygon engine asked for all its digits (S = 2, "~1e-14").
fn exact_method_accuracy(s: usize) -> f64 {
    if s == 1 {
        4.0 * f64::EPSILON
    } else {
        1e-14
    }
}

/// The per-point values: `value` and an estimate of its absolute error (the skipped regions'
/// bound, the integrals' relative error times the magnitude of their terms, and rounding).
#[derive(Clone, Debug, Default)]
pub struct Bounded {
    pub value: Vec<f64>,
    pub error: Vec<f64>,
    /// How many regions each point integrated over (the others were bounded).
    pub integrated: Vec<usize>,
}

/// Gaussian encoder outputs for `n` points: means (`n x S`) and full covariances
/// (`n x S x S`, row-major).
#[derive(Clone, Copy)]
pub struct GaussianQ<'a> {
    pub mean: &'a [f64],
    pub cov: &'a [f64],
}

/// One point's q = N(m, V), factorised.
struct PointQ {
    mean: Vec<f64>,
    cov: Vec<f64>,
    /// Lower Cholesky factor of V (row-major).
    chol: Vec<f64>,
    /// V^-1 (row-major).
    inverse: Vec<f64>,
    log_det: f64,
}

impl PointQ {
    fn new(mean: &[f64], cov: &[f64], s: usize) -> Result<Self> {
        let chol = cholesky(cov, s)?;
        let log_det = 2.0 * (0..s).map(|i| chol[i * s + i].ln()).sum::<f64>();
        // V^-1 = L^-T L^-1, from the triangular inverse.
        let mut l_inv = vec![0.0; s * s];
        for j in 0..s {
            for i in j..s {
                let rhs = if i == j { 1.0 } else { 0.0 };
                let acc: f64 = (j..i).map(|k| chol[i * s + k] * l_inv[k * s + j]).sum();
                l_inv[i * s + j] = (rhs - acc) / chol[i * s + i];
            }
        }
        let mut inverse = vec![0.0; s * s];
        for i in 0..s {
            for j in 0..=i {
                let v: f64 = (i..s).map(|k| l_inv[k * s + i] * l_inv[k * s + j]).sum();
                inverse[i * s + j] = v;
                inverse[j * s + i] = v;
            }
        }
        Ok(PointQ { mean: mean.to_vec(), cov: cov.to_vec(), chol, inverse, log_det })
    }
}

/// q's mass on a region, its conditional mean relative to q's mean (`c - m`), its conditional
/// covariance (row-major) and the relative error of the mass (0 where the method is exact).
#[derive(Clone, Debug)]
pub struct Truncated {
    pub log_mass: f64,
    pub shift: Vec<f64>,
    pub cov: Vec<f64>,
    pub error: f64,
}

/// A quadratic `a + l^T y + y^T M y` in `y = z - m`, with room to work in (a point fills one
/// for region after region).
struct Quadratic {
    a: f64,
    l: Vec<f64>,
    m: Vec<f64>,
    work: Vec<f64>,
}

impl Quadratic {
    fn new(s: usize) -> Self {
        Quadratic { a: 0.0, l: vec![0.0; s], m: vec![0.0; s * s], work: vec![0.0; s * s] }
    }

    /// `E[f^2]` for `y ~ N(0, V)`: `(a + tr(M V))^2 + l^T V l + 2 tr(M V M V)`.
    fn second_moment(&mut self, v: &[f64], s: usize) -> f64 {
        let mv = &mut self.work;
        for i in 0..s {
            for j in 0..s {
                mv[i * s + j] = (0..s).map(|k| self.m[i * s + k] * v[k * s + j]).sum();
            }
        }
        let trace: f64 = (0..s).map(|i| mv[i * s + i]).sum();
        let trace_sq: f64 =
            (0..s).flat_map(|i| (0..s).map(move |j| (i, j))).map(|(i, j)| mv[i * s + j] * mv[j * s + i]).sum();
        let lvl: f64 =
            (0..s).flat_map(|i| (0..s).map(move |j| (i, j))).map(|(i, j)| self.l[i] * v[i * s + j] * self.l[j]).sum();
        let mean = self.a + trace;
        mean * mean + lvl + 2.0 * trace_sq
    }

    /// A bound on `|E[1_omega f]|`, `y ~ N(0, V)`, for a region `omega` inside a half-space at
    /// whitened distance `t` from 0. Cauchy-Schwarz gives `sqrt(Phi(-t)) sqrt(E[f^2])`; where
    /// `t > 0`, writing `y = L w`, `|f| <= |a| + |L^T l| |w| + |L^T M L|_F |w|^2`, and with `w_1`
    /// the coordinate across the half-space (`w_1 >= t` on it), `E[1 |w|] <= phi(t) +
    /// sqrt(S - 1) Phi(-t)` and `E[1 |w|^2] = t phi(t) + S Phi(-t)`: a bound of order
    /// `t^2 Phi(-t)` rather than `sqrt(Phi(-t))`. The smaller of the two.
    fn region_bound(&mut self, point: &PointQ, t: f64, s: usize) -> f64 {
        let whole = self.second_moment(&point.cov, s).sqrt();
        if t == f64::NEG_INFINITY || t <= 0.0 {
            return whole;
        }
        let tail = ndtr(-t);
        let density = (log_pdf(t)).exp();
        let l = &point.chol;
        // L^T l and L^T M L.
        let lt_l: f64 =
            (0..s).map(|j| (j..s).map(|k| l[k * s + j] * self.l[k]).sum::<f64>().powi(2)).sum::<f64>().sqrt();
        let ml = &mut self.work;
        for i in 0..s {
            for j in 0..s {
                ml[i * s + j] = (j..s).map(|k| self.m[i * s + k] * l[k * s + j]).sum();
            }
        }
        let mut frobenius = 0.0;
        for i in 0..s {
            for j in 0..s {
                let v: f64 = (i..s).map(|k| l[k * s + i] * ml[k * s + j]).sum();
                frobenius += v * v;
            }
        }
        let direct = self.a.abs() * tail
            + lt_l * (density + ((s - 1) as f64).sqrt() * tail)
            + frobenius.sqrt() * (t * density + s as f64 * tail);
        direct.min(tail.sqrt() * whole)
    }
}

/// `u^T M u` and `tr(M C)` for S x S row-major `M`, `C`.
fn quad_form(m: &[f64], u: &[f64], s: usize) -> f64 {
    (0..s).map(|i| u[i] * (0..s).map(|j| m[i * s + j] * u[j]).sum::<f64>()).sum()
}

fn trace_product(m: &[f64], c: &[f64], s: usize) -> f64 {
    (0..s).flat_map(|i| (0..s).map(move |j| (i, j))).map(|(i, j)| m[i * s + j] * c[j * s + i]).sum()
}

/// The regions' data that the ELBO and the gap need besides the partition and the algebra.
pub struct VariationalEngine<'a> {
    partition: &'a Partition,
    algebra: &'a RegionAlgebra,
    /// `B_q = A_q^T Psi^-1 A_q` per region, S x S row-major.
    curvature: Vec<f64>,
    /// `Sigma_q^-1 = I + B_q` per region.
    precision: Vec<f64>,
    /// `-D/2 log 2pi - 1/2 log det Psi`.
    log_norm: f64,
    rtol: f64,
    seed: u64,
}

impl<'a> VariationalEngine<'a> {
    /// `rtol` and `seed` are those of the region integrals for S >= 3 (as in
    /// [`super::GaussIntegrator`]).
    pub fn new(partition: &'a Partition, algebra: &'a RegionAlgebra, rtol: f64, seed: u64) -> Result<Self> {
        crate::gauss::check_rtol(rtol)?;
        let (s, d) = (algebra.s, algebra.d);
        let r = partition.len();
        let mut curvature = vec![0.0; r * s * s];
        for q in 0..r {
            let a = partition.a(q);
            let b = &mut curvature[q * s * s..(q + 1) * s * s];
            for i in 0..d {
                for j in 0..s {
                    for k in 0..s {
                        b[j * s + k] += a[i * s + j] * algebra.inv_psi[i] * a[i * s + k];
                    }
                }
            }
        }
        let mut precision = curvature.clone();
        for q in 0..r {
            (0..s).for_each(|i| precision[q * s * s + i * s + i] += 1.0);
        }
        let log_det_psi: f64 = algebra.inv_psi.iter().map(|w| -w.ln()).sum();
        let log_norm = -0.5 * d as f64 * LOG_2PI - 0.5 * log_det_psi;
        Ok(VariationalEngine { partition, algebra, curvature, precision, log_norm, rtol, seed })
    }

    fn curvature(&self, q: usize) -> &[f64] {
        let s = self.algebra.s;
        &self.curvature[q * s * s..(q + 1) * s * s]
    }

    /// The largest whitened distance `t = (g_i . m - h_i) / |L^T g_i|` from q's mean to one of
    /// the region's facets' half-spaces (negative where m satisfies every facet): the region
    /// lies in a half-space of q-mass `Phi(-t)`.
    fn facet_distance(&self, q: usize, point: &PointQ) -> f64 {
        let s = self.algebra.s;
        let mut distance = f64::NEG_INFINITY;
        for facet in self.partition.facets(q) {
            let g = &facet.normal;
            // |L^T g|^2 = g^T V g.
            let spread: f64 = (0..s)
                .map(|j| {
                    let col: f64 = (j..s).map(|k| g[k] * point.chol[k * s + j]).sum();
                    col * col
                })
                .sum();
            distance = distance.max((dot(g, &point.mean) - facet.offset) / spread.sqrt());
        }
        distance
    }

    /// The relative accuracy asked of a region's integrals (S >= 3): `rtol` where the region's
    /// term may be as large as the magnitude summed so far, looser in proportion where its bound
    /// is smaller (its absolute error stays ~`rtol` of that magnitude), by at most
    /// [`MAX_LOOSENESS`] and never beyond 10%.
    fn region_rtol(&self, reference: f64, bound: f64) -> f64 {
        let looseness = if bound > 0.0 { (reference / bound).clamp(1.0, MAX_LOOSENESS) } else { MAX_LOOSENESS };
        (self.rtol * looseness).min(0.1).max(self.rtol)
    }

    /// q's mass and moments on region `q`, relative to q's mean; `rtol` for S >= 3.
    fn truncated(&self, q: usize, point: &PointQ, rtol: f64, cancel: &Cancel) -> Result<Truncated> {
        let s = self.algebra.s;
        let facets = self.partition.facets(q);
        if facets.is_empty() {
            return Ok(Truncated { log_mass: 0.0, shift: vec![0.0; s], cov: point.cov.clone(), error: 0.0 });
        }
        if s == 1 {
            // The interval moved by -m (normals are +-1).
            let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
            for facet in facets {
                let h = facet.offset - facet.normal[0] * point.mean[0];
                if facet.normal[0] > 0.0 {
                    hi = hi.min(h / facet.normal[0]);
                } else {
                    lo = lo.max(h / facet.normal[0]);
                }
            }
            let (log_mass, shift, var) = truncated_normal_central(0.0, point.chol[0], lo, hi);
            return Ok(Truncated { log_mass, shift: vec![shift], cov: vec![var], error: 0.0 });
        }
        // The region moved by -m: offsets h - g . m, q centred at 0.
        let shifted: Vec<f64> = facets.iter().map(|f| f.offset - dot(&f.normal, &point.mean)).collect();
        match s {
            1 => unreachable!("intervals are handled above"),
            2 => {
                let g = facets.iter().map(|f| [f.normal[0], f.normal[1]]).collect();
                let l = &point.chol;
                let poly = Polygon2::new(g, shifted, [l[0], l[1], l[2], l[3]]);
                let (mut mean, mut second) = ([0.0; 2], [0.0; 4]);
                let log_mass = poly.integrate(&[0.0, 0.0], 0.0, &mut mean, &mut second);
                let cov = (0..4).map(|k| second[k] - mean[k / 2] * mean[k % 2]).collect::<Vec<f64>>();
                // Symmetrise (the two off-diagonal entries differ by rounding).
                let off = 0.5 * (cov[1] + cov[2]);
                Ok(Truncated { log_mass, shift: mean.to_vec(), cov: vec![cov[0], off, off, cov[3]], error: 0.0 })
            }
            _ => {
                let g: Vec<f64> = facets.iter().flat_map(|f| f.normal.iter().copied()).collect();
                let shape = PolytopeShape::new(&g, s, &point.cov)?;
                let inside: Vec<f64> =
                    self.partition.interior_point(q).iter().zip(&point.mean).map(|(z, m)| z - m).collect();
                let out = shape.moments_of_facets(
                    &shifted,
                    &vec![0.0; s],
                    &inside,
                    true,
                    &IntegrationSettings::new(rtol, self.seed, cancel),
                )?;
                Ok(Truncated { log_mass: out.log_mass, shift: out.mean, cov: out.cov, error: out.error })
            }
        }
    }

    /// `u = x - b_q - A_q m` (D), into `u`, in the engine's frame (`x` centred).
    fn residual(&self, q: usize, x: &[f64], mean: &[f64], u: &mut [f64]) {
        let (s, d) = (self.algebra.s, self.algebra.d);
        let (a, b) = (&self.algebra.a[q * d * s..(q + 1) * d * s], &self.algebra.b[q * d..(q + 1) * d]);
        for (i, (ui, (xi, bi))) in u.iter_mut().zip(x.iter().zip(b)).enumerate() {
            *ui = xi - bi - dot(&a[i * s..(i + 1) * s], mean);
        }
    }

    /// `log N(x; A_q z + b_q, Psi)` as a quadratic in `y = z - m`, into `out`:
    /// `k0 - 1/2 |u|^2_Psi + (A^T Psi^-1 u)^T y - 1/2 y^T B y`.
    fn log_likelihood_quadratic(&self, q: usize, u: &[f64], out: &mut Quadratic) {
        let s = self.algebra.s;
        let a = self.partition.a(q);
        let inv_psi = &self.algebra.inv_psi;
        let upu: f64 = u.iter().zip(inv_psi).map(|(v, w)| v * v * w).sum();
        out.a = self.log_norm - 0.5 * upu;
        for (j, lj) in out.l.iter_mut().enumerate() {
            *lj = u.iter().enumerate().map(|(i, v)| a[i * s + j] * inv_psi[i] * v).sum();
        }
        for (mk, b) in out.m.iter_mut().zip(self.curvature(q)) {
            *mk = -0.5 * b;
        }
    }

    /// Regions by decreasing bound on their terms, and the bounds' suffix sums (`tail[k]` bounds
    /// the regions from the `k`-th on; `tail[R] = 0`).
    fn visiting_order(bounds: &[f64]) -> (Vec<usize>, Vec<f64>) {
        let mut order: Vec<usize> = (0..bounds.len()).collect();
        order.sort_by(|&a, &b| bounds[b].total_cmp(&bounds[a]));
        let mut tail = vec![0.0; bounds.len() + 1];
        for k in (0..bounds.len()).rev() {
            tail[k] = tail[k + 1] + bounds[order[k]];
        }
        (order, tail)
    }

    /// The exact ELBO of one point (as given: moved into the engine's frame here) and its error
    /// estimate.
    fn elbo_point(&self, x: &[f64], point: &PointQ, cancel: &Cancel) -> Result<(f64, f64, usize)> {
        let x = self.algebra.centred(DMatrixView::from_slice(x, x.len(), 1));
        let x = x.as_slice();
        let (s, r) = (self.algebra.s, self.partition.len());
        let m = &point.mean;
        let trace_v: f64 = (0..s).map(|i| point.cov[i * s + i]).sum();
        let mm = dot(m, m);
        // E_q[log p(z)] + H(q).
        let prior_entropy = -0.5 * (mm + trace_v - s as f64 - point.log_det);
        let mut reference = 0.5 * (mm + trace_v + s as f64 + point.log_det.abs());
        let (mut u, mut quadratic) = (vec![0.0; x.len()], Quadratic::new(s));
        let bounds: Vec<f64> = (0..r)
            .map(|q| {
                self.residual(q, x, m, &mut u);
                self.log_likelihood_quadratic(q, &u, &mut quadratic);
                quadratic.region_bound(point, self.facet_distance(q, point), s)
            })
            .collect();
        let (order, tail) = Self::visiting_order(&bounds);
        let inv_psi = &self.algebra.inv_psi;
        let (mut expected, mut error, mut integrated) = (0.0, 0.0, 0);
        for (k, &q) in order.iter().enumerate() {
            if tail[k] <= SKIP_RTOL * reference {
                error += tail[k];
                break;
            }
            integrated += 1;
            cancel.check()?;
            let t = self.truncated(q, point, self.region_rtol(reference, bounds[q]), cancel)?;
            let p = t.log_mass.exp();
            // No mass (to underflow): no term, and moments that may not be numbers.
            if p == 0.0 {
                continue;
            }
            // |r - A c|^2_Psi with r - A c = u - A (c - m).
            let a = self.partition.a(q);
            self.residual(q, x, m, &mut u);
            let quad: f64 = u
                .iter()
                .enumerate()
                .map(|(i, ui)| {
                    let w = ui - dot(&a[i * s..(i + 1) * s], &t.shift);
                    w * w * inv_psi[i]
                })
                .sum();
            let bracket = quad + trace_product(self.curvature(q), &t.cov, s);
            expected += p * (self.log_norm - 0.5 * bracket);
            let magnitude = p * (self.log_norm.abs() + 0.5 * bracket);
            reference += magnitude;
            error += t.error.max(exact_method_accuracy(s)) * magnitude;
        }
        let value = expected + prior_entropy;
        // Rounding of the sums, a few operations per term and per region.
        error += 8.0 * f64::EPSILON * reference;
        Ok((value, error, integrated))
    }

    /// `KL(q || p(z | x))` of one point given `log p(x)` and the local Gaussians
    /// (`log kappa_q`, `mu_q` for every region), and its error estimate. A negative sum within
    /// the error estimate is rounding: it is returned as 0.
    fn gap_point(
        &self,
        log_p: f64,
        log_kappa: &[f64],
        mu: &[f64],
        point: &PointQ,
        cancel: &Cancel,
    ) -> Result<(f64, f64, usize)> {
        let (s, r) = (self.algebra.s, self.partition.len());
        let m = &point.mean;
        // Precision of the local posterior: I + B_q.
        let precision = |q: usize| &self.precision[q * s * s..(q + 1) * s * s];
        // The constant of log q(z) - log p(z | x) on region q, and d = mu_q - m.
        let constant = |q: usize| 0.5 * (self.algebra.log_det_sigma(q) - point.log_det) - log_kappa[q] + log_p;
        let offset = |q: usize, d: &mut [f64]| {
            for ((dj, a), b) in d.iter_mut().zip(&mu[q * s..(q + 1) * s]).zip(m) {
                *dj = a - b;
            }
        };
        let (mut d, mut quadratic) = (vec![0.0; s], Quadratic::new(s));
        let bounds: Vec<f64> = (0..r)
            .map(|q| {
                if log_kappa[q] == f64::NEG_INFINITY {
                    // No posterior density on the region: any mass of q there makes the KL
                    // infinite, so the region goes first.
                    return f64::INFINITY;
                }
                let prec = precision(q);
                offset(q, &mut d);
                // 1/2 (y - d)^T Prec (y - d) - 1/2 y^T V^-1 y + constant.
                quadratic.a = constant(q) + 0.5 * quad_form(prec, &d, s);
                for (i, li) in quadratic.l.iter_mut().enumerate() {
                    *li = -(0..s).map(|j| prec[i * s + j] * d[j]).sum::<f64>();
                }
                for (k, mk) in quadratic.m.iter_mut().enumerate() {
                    *mk = 0.5 * (prec[k] - point.inverse[k]);
                }
                quadratic.region_bound(point, self.facet_distance(q, point), s)
            })
            .collect();
        let (order, tail) = Self::visiting_order(&bounds);
        let (mut gap, mut reference, mut skipped, mut integration, mut integrated) = (0.0, 0.0, 0.0, 0.0, 0);
        for (k, &q) in order.iter().enumerate() {
            if reference > 0.0 && tail[k] <= SKIP_RTOL * reference {
                skipped = tail[k];
                break;
            }
            integrated += 1;
            cancel.check()?;
            let t = self.truncated(q, point, self.region_rtol(reference, bounds[q]), cancel)?;
            let p = t.log_mass.exp();
            // No mass (to underflow): no term, and moments that may not be numbers.
            if p == 0.0 {
                continue;
            }
            let prec = precision(q);
            offset(q, &mut d);
            // c - mu = (c - m) - d, in place.
            for (dj, c) in d.iter_mut().zip(&t.shift) {
                *dj = c - *dj;
            }
            let towards_posterior = quad_form(prec, &d, s) + trace_product(prec, &t.cov, s);
            let towards_q = quad_form(&point.inverse, &t.shift, s) + trace_product(&point.inverse, &t.cov, s);
            gap += p * (constant(q) + 0.5 * (towards_posterior - towards_q));
            let magnitude = p
                * (0.5 * (self.algebra.log_det_sigma(q).abs() + point.log_det.abs())
                    + log_kappa[q].abs()
                    + log_p.abs()
                    + 0.5 * (towards_posterior + towards_q));
            reference += magnitude;
            integration += t.error.max(exact_method_accuracy(s)) * magnitude;
        }
        // First-order rounding of the terms (each a few dozen operations of relative error eps)
        // and of log p(x) and log kappa_q themselves (included in the magnitude); and log p(x)'s
        // own accuracy: its region integrals' relative error is an absolute error in log p,
        // carried into the gap with weight sum P = 1.
        let rounding = (s * s + 32) as f64 * f64::EPSILON * reference;
        let log_p_accuracy = if s >= 3 { self.rtol } else { exact_method_accuracy(s) };
        let error = skipped + integration + rounding + log_p_accuracy;
        let gap = if gap < 0.0 && gap >= -error { 0.0 } else { gap };
        Ok((gap, error, integrated))
    }
}

/// Validates q for `n` points of latent dimension `s` and factorises each covariance.
fn factorise(q: GaussianQ, n: usize, s: usize) -> Result<Vec<PointQ>> {
    if q.mean.len() != n * s {
        return invalid(format!("q_mean must have shape ({n}, {s}); got {} entries", q.mean.len()));
    }
    if q.cov.len() != n * s * s {
        return invalid(format!("q_var must have shape ({n}, {s}, {s}); got {} entries", q.cov.len()));
    }
    if q.mean.iter().any(|v| !v.is_finite()) {
        return invalid("q_mean contains NaN or infinite values");
    }
    (0..n)
        .map(|p| {
            PointQ::new(&q.mean[p * s..(p + 1) * s], &q.cov[p * s * s..(p + 1) * s * s], s).map_err(|err| match err {
                crate::error::Error::InvalidInput(msg) => {
                    crate::error::Error::InvalidInput(format!("q_var[{p}]: {msg}"))
                }
                other => other,
            })
        })
        .collect()
}

/// Points per parallel job: enough of them that a job outweighs its scheduling, and enough
/// jobs (four per thread) to balance.
fn chunks(n: usize) -> Vec<(usize, usize)> {
    let size = n.div_ceil(4 * crate::parallel::current_num_threads()).clamp(1, 256);
    (0..n).step_by(size).map(|a| (a, (a + size).min(n))).collect()
}

/// The exact ELBO `E_q[log p(x, z) - log q(z)]` of each column of `x` (`D x N`) under
/// `q(z | x_n) = N(q.mean[n], q.cov[n])`, and an estimate of each one's absolute error.
pub fn elbo(engine: &VariationalEngine, x: DMatrixView<f64>, q: GaussianQ, cancel: &Cancel) -> Result<Bounded> {
    let (s, d, n) = (engine.algebra.s, engine.algebra.d, x.ncols());
    if x.nrows() != d {
        return invalid(format!("X must have {d} columns; got {}", x.nrows()));
    }
    let points = factorise(q, n, s)?;
    let parts = chunks(n);
    let results = crate::parallel::map(parts.len(), |i| -> Result<Vec<(f64, f64, usize)>> {
        let (first, end) = parts[i];
        (first..end)
            .map(|p| {
                let column: Vec<f64> = x.column(p).iter().copied().collect();
                engine.elbo_point(&column, &points[p], cancel)
            })
            .collect()
    });
    collect(results)
}

/// `log p(x_n) - ELBO_n = KL(q(z | x_n) || p(z | x_n))` for each column of `x`, given
/// `log p(x_n)`, summed region by region; and an estimate of each one's absolute error.
pub fn posterior_gap(
    engine: &VariationalEngine,
    x: DMatrixView<f64>,
    log_likelihood: &[f64],
    q: GaussianQ,
    cancel: &Cancel,
) -> Result<Bounded> {
    let (s, d, n) = (engine.algebra.s, engine.algebra.d, x.ncols());
    if x.nrows() != d || log_likelihood.len() != n {
        return invalid(format!("X must have {d} columns and log_likelihood one entry per point"));
    }
    let points = factorise(q, n, s)?;
    let parts = chunks(n);
    let results = crate::parallel::map(parts.len(), |i| -> Result<Vec<(f64, f64, usize)>> {
        let (first, end) = parts[i];
        cancel.check()?;
        let local = engine.algebra.local_gaussians(engine.algebra.centred(x.columns(first, end - first)).as_view());
        (first..end)
            .map(|p| {
                let (log_kappa, mu) = local.point(p - first);
                engine.gap_point(log_likelihood[p], log_kappa, mu, &points[p], cancel)
            })
            .collect()
    });
    collect(results)
}

fn collect(results: Vec<Result<Vec<(f64, f64, usize)>>>) -> Result<Bounded> {
    let mut out = Bounded::default();
    for part in results {
        for (value, error, integrated) in part? {
            out.value.push(value);
            out.error.push(error);
            out.integrated.push(integrated);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
