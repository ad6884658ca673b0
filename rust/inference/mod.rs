//! Exact inference (docs/design.md §3, §5): the marginal log-likelihood, the posterior over regions
//! and the E-step statistics of a DGN `z ~ N(0, I)`, `x | z ~ N(g(z), Psi)`, `Psi` diagonal.
//!
//! Inside region q the joint density is `kappa_q(x) N(z; mu_q(x), Sigma_q)`, so
//! `p(x) = sum_q kappa_q(x) Phi_q(x)` with `Phi_q` the mass of `N(mu_q, Sigma_q)` on the region.
//! Everything independent of x (Sigma_q, its Cholesky factor, the whitened constraints) is
//! prepared once per region; the x-dependent parts for a batch of points are two matrix
//! products. Regions are visited best bound first, and a region is skipped where
//! `log kappa_q + B_q < best log(kappa Phi) - PRUNE_GAP`, `B_q >= log Phi_q` a Gaussian tail
//! bound: the skipped terms change `log p(x)` by less than `R exp(-PRUNE_GAP)`. For S = 1 the
//! terms are computed in linear space along the chain of intervals (`interval.rs`).

pub mod integrator;
pub mod interval;
pub mod posterior;
pub mod region_sums;
pub mod elbo;
pub mod sampling;

pub use crate::gauss::normal::log_sum_exp;
pub use integrator::GaussIntegrator;

use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use nalgebra::{DMatrix, DMatrixView};

use crate::cancel::Cancel;
use crate::error::{invalid, Result};
use crate::gauss::normal_batch::{with_wide_vectors, MulAdd, VectorKernel};
use crate::partition::Partition;

/// Regions whose `log kappa` is this far below the best `log(kappa Phi)` are skipped.
pub const PRUNE_GAP: f64 = 40.0;

pub(crate) const LOG_2PI: f64 = 1.837_877_066_409_345_5;

/// The probability and moments of a Gaussian restricted to one region, as the polytope engine
/// reports them for `N(mean, Sigma_q)`.
#[derive(Clone, Debug)]
pub struct RegionMoments {
    pub log_mass: f64,
    /// `E[z | z in region]`, length S.
    pub mean: Vec<f64>,
    /// `E[z z^T | z in region]`, S x S row-major.
    pub second: Vec<f64>,
}

/// How inference integrates a Gaussian over a region. `region` indexes the partition; the
/// implementation owns whatever it prepared for the region's covariance `Sigma_q`.
pub trait RegionIntegrator: Send + Sync {
    fn log_mass(&self, region: usize, mean: &[f64]) -> f64;
    /// Writes `E[z | region]` (S) and `E[z z^T | region]` (S x S row-major) and returns the
    /// log mass.
    fn moments_into(&self, region: usize, mean: &[f64], cond_mean: &mut [f64], cond_second: &mut [f64]) -> f64;
    /// A cheap, certain upper bound on `log_mass` (0 is always one): it lets inference skip
    /// regions whose terms cannot matter without integrating over them.
    fn log_mass_bound(&self, _region: usize, _mean: &[f64]) -> f64 {
        0.0
    }

    /// Whether a looser accuracy makes the integrals cheaper: if not, inference does not
    /// track what each region may be given (two exponentials per region).
    fn uses_looseness(&self) -> bool {
        false
    }

    /// As [`Self::log_mass`], where `looseness >= 1` times the integrator's relative error is
    /// enough: the region's term is known to be that much below the sum of the terms so far,
    /// so its absolute error stays that accuracy of `p(x)`. Exact integrators ignore it.
    fn log_mass_loose(&self, region: usize, mean: &[f64], _looseness: f64) -> f64 {
        self.log_mass(region, mean)
    }

    /// As [`Self::moments_into`], with `looseness` as in [`Self::log_mass_loose`].
    fn moments_into_loose(&self, region: usize, mean: &[f64], cond_mean: &mut [f64], cond_second: &mut [f64], _looseness: f64) -> f64 {
        self.moments_into(region, mean, cond_mean, cond_second)
    }

    /// For S = 1, the regions as intervals, for inference's linear-space path (see
    /// `interval.rs`); `None` sends every point through the per-region methods above.
    fn intervals(&self) -> Option<&interval::Intervals> {
        None
    }

    fn moments(&self, region: usize, mean: &[f64]) -> RegionMoments {
        let s = mean.len();
        let mut out = RegionMoments { log_mass: 0.0, mean: vec![0.0; s], second: vec![0.0; s * s] };
        out.log_mass = self.moments_into(region, mean, &mut out.mean, &mut out.second);
        out
    }
}

/// Where the completed-square form of `log kappa` may be off by more than this, relative to
/// `max(1, |log kappa|)` (by the bound of [`RegionAlgebra::cheap_form_error`]), the region's
/// `log kappa` is formed again from the residual at its posterior mean (docs/design.md §3). A tenth
/// of the 1e-9 relative accuracy promised for `log p`; the bound is worst-case (typical errors
/// are ~sqrt(D) times smaller), and a tighter threshold sent S = 1 points at noise 1e-5 (where
/// the completed square is good to ~1e-11) through the slower form.
const STABLE_FORM_TOLERANCE: f64 = 1e-10;

/// One region's Gaussian algebra, from the SVD `Psi^{-1/2} A = U diag(s) V^T` (docs/design.md §3):
/// `Sigma = V diag(1 / (1 + s^2)) V^T`, `log det Sigma = -sum log(1 + s^2)` and
/// `Sigma A^T Psi^{-1} = V diag(s / (1 + s^2)) U^T Psi^{-1/2}`. Formed this way rather than by
/// inverting `I + A^T Psi^{-1} A`, which loses the small eigenvalues of `Sigma` (and fails to be
/// positive definite in floating point) where `A^T Psi^{-1} A` is singular or huge against `I`:
/// rank-deficient regions at small noise, large weights.
#[derive(Clone, Debug)]
pub(crate) struct RegionFactor {
    /// `Sigma`, S x S row-major.
    pub sigma: Vec<f64>,
    /// A lower triangular `L` with `L L^T = Sigma` (row-major).
    pub chol: Vec<f64>,
    pub log_det_sigma: f64,
    /// `Sigma A^T Psi^{-1}`, S x D row-major.
    pub gain: Vec<f64>,
    /// `V` (S x S row-major, the right singular vectors as columns) and `1 / (1 + s^2)`.
    pub basis: Vec<f64>,
    pub shrink: Vec<f64>,
}

/// [`RegionFactor`] of a region with linear part `a` (D x S row-major) under noise with
/// `1 / sqrt(psi_i) = inv_sd[i]`.
pub(crate) fn factor_region(a: &[f64], inv_sd: &[f64], s: usize) -> RegionFactor {
    let d = inv_sd.len();
    // Zero rows up to S where D < S: they change no singular value, and keep V square.
    let rows = d.max(s);
    let mut whitened = DMatrix::<f64>::zeros(rows, s);
    for i in 0..d {
        for j in 0..s {
            whitened[(i, j)] = a[i * s + j] * inv_sd[i];
        }
    }
    let svd = whitened.svd(true, true);
    let (u, v_t) = (svd.u.expect("U was asked for"), svd.v_t.expect("V was asked for"));
    let singular = &svd.singular_values;
    // 1 / (1 + s^2) and log(1 + s^2) without overflow for large s.
    let root: Vec<f64> = singular.iter().map(|v| 1.0f64.hypot(*v)).collect();
    let shrink: Vec<f64> = root.iter().map(|h| (1.0 / h) * (1.0 / h)).collect();
    let log_det_sigma = -2.0 * root.iter().map(|h| h.ln()).sum::<f64>();
    let basis: Vec<f64> = (0..s * s).map(|k| v_t[(k % s, k / s)]).collect();
    let mut sigma = vec![0.0; s * s];
    for j in 0..s {
        for l in 0..=j {
            let v: f64 = (0..s).map(|k| basis[j * s + k] * shrink[k] * basis[l * s + k]).sum();
            sigma[j * s + l] = v;
            sigma[l * s + j] = v;
        }
    }
    let mut gain = vec![0.0; s * d];
    for k in 0..s {
        let coefficient = singular[k] * shrink[k];
        for i in 0..d {
            let ui = coefficient * u[(i, k)] * inv_sd[i];
            for j in 0..s {
                gain[j * d + i] += basis[j * s + k] * ui;
            }
        }
    }
    // Sigma = M M^T with M = V diag(1 / sqrt(1 + s^2)); the QR factorisation M^T = Q R gives
    // Sigma = R^T R, so L = R^T (rows signed for a positive diagonal). Factoring M rather than
    // the formed Sigma keeps the small directions to rounding relative to their own size; the
    // rows of M^T go largest first (Householder QR is then accurate row by row).
    let mut order: Vec<usize> = (0..s).collect();
    order.sort_by(|&x, &y| shrink[y].total_cmp(&shrink[x]));
    let mut mt = DMatrix::<f64>::zeros(s, s);
    for (row, &k) in order.iter().enumerate() {
        for j in 0..s {
            mt[(row, j)] = shrink[k].sqrt() * basis[j * s + k];
        }
    }
    let r = mt.qr().r();
    let mut chol = vec![0.0; s * s];
    for j in 0..s {
        let sign = if r[(j, j)] < 0.0 { -1.0 } else { 1.0 };
        for i in j..s {
            chol[i * s + j] = sign * r[(j, i)];
        }
    }
    RegionFactor { sigma, chol, log_det_sigma, gain, basis, shrink }
}

/// Knuth's two-sum: `u + v` and its exact rounding error.
#[inline(always)]
fn two_sum(u: f64, v: f64) -> (f64, f64) {
    let s = u + v;
    let w = s - u;
    (s, (u - (s - w)) + (v - w))
}

/// Dekker's split of `u` into two halves of 26 bits.
#[inline(always)]
fn split(u: f64) -> (f64, f64) {
    let c = 134_217_729.0 * u; // 2^27 + 1
    let hi = c - (c - u);
    (hi, u - hi)
}

/// Dekker's two-product: `u v` and its exact rounding error, without fused multiply-add.
#[inline(always)]
fn two_product(u: f64, v: f64) -> (f64, f64) {
    let p = u * v;
    let ((uh, ul), (vh, vl)) = (split(u), split(v));
    (p, ((uh * vh - p) + uh * vl + ul * vh) + ul * vl)
}

/// `x - b - a . m` to about one rounding of the result: every product and sum carried with its
/// exact rounding error (Knuth's two-sum, Dekker's two-product, no fused multiply-add needed).
#[inline(always)]
fn compensated_residual(x: f64, b: f64, a: &[f64], m: &[f64]) -> f64 {
    let (mut hi, mut lo) = two_sum(x, -b);
    for (aj, mj) in a.iter().zip(m) {
        let (p, p_err) = two_product(*aj, *mj);
        let (sum, sum_err) = two_sum(hi, -p);
        hi = sum;
        lo += sum_err - p_err;
    }
    hi + lo
}

/// Coordinates per step of [`residual_square_sum`]: eight interleaved partial sums.
const SUM_LANES: usize = 8;

/// `sum_i r_i^2 / psi_i` over the residuals `r = x - b - A m` (`a`: A, D x S row-major), each
/// `r_i` rounded plainly or (`COMPENSATED`) as [`compensated_residual`] forms it, in
/// [`SUM_LANES`] interleaved partial sums added pairwise at the end. One running sum is a chain
/// of dependent additions whose latency, not the arithmetic, sets its time: at D = 784 these
/// residual forms of `log kappa`, which many (point, region) pairs take there, were three
/// quarters of the S = 1 E-step. Each `r_i` is the same value as one at a time; each partial
/// sum has at most D / 8 + 1 terms, so the sum rounds no worse than one running sum (the error
/// bounds that use it assume a sum of length D).
#[inline(always)]
fn residual_square_sum<const COMPENSATED: bool>(x: &[f64], b: &[f64], a: &[f64], m: &[f64], inv_psi: &[f64]) -> f64 {
    const K: usize = SUM_LANES;
    let (d, s) = (x.len(), m.len());
    let whole = d - d % K;
    let mut partial = [0.0f64; K];
    // Each step on arrays of K, and S = 1 in a loop of its own (A's column contiguous, no dot
    // product): with slices, or with both cases in one loop, the compiler kept two lanes per
    // vector, not K.
    let chunk = |v: &[f64], start: usize| -> [f64; K] { v[start..start + K].try_into().expect("K entries") };
    if s == 1 {
        let m = m[0];
        for start in (0..whole).step_by(K) {
            let (x, b, a, w) = (chunk(x, start), chunk(b, start), chunk(a, start), chunk(inv_psi, start));
            let mut r = [0.0f64; K];
            for k in 0..K {
                r[k] = if COMPENSATED {
                    let (hi, lo) = two_sum(x[k], -b[k]);
                    let (p, p_err) = two_product(a[k], m);
                    let (sum, sum_err) = two_sum(hi, -p);
                    sum + (lo + (sum_err - p_err))
                } else {
                    x[k] - b[k] - a[k] * m
                };
            }
            for k in 0..K {
                partial[k] += r[k] * r[k] * w[k];
            }
        }
    } else {
        for start in (0..whole).step_by(K) {
            let (x, b, w) = (chunk(x, start), chunk(b, start), chunk(inv_psi, start));
            let a = &a[start * s..(start + K) * s];
            let mut r = [0.0f64; K];
            if COMPENSATED {
                let mut lo = [0.0f64; K];
                for k in 0..K {
                    (r[k], lo[k]) = two_sum(x[k], -b[k]);
                }
                for (j, &mj) in m.iter().enumerate() {
                    for k in 0..K {
                        let (p, p_err) = two_product(a[k * s + j], mj);
                        let (sum, sum_err) = two_sum(r[k], -p);
                        r[k] = sum;
                        lo[k] += sum_err - p_err;
                    }
                }
                for k in 0..K {
                    r[k] += lo[k];
                }
            } else {
                let mut dot = [0.0f64; K];
                for (j, &mj) in m.iter().enumerate() {
                    for k in 0..K {
                        dot[k] += a[k * s + j] * mj;
                    }
                }
                for k in 0..K {
                    r[k] = x[k] - b[k] - dot[k];
                }
            }
            for k in 0..K {
                partial[k] += r[k] * r[k] * w[k];
            }
        }
    }
    let mut rest = 0.0;
    for i in whole..d {
        let ai = &a[i * s..(i + 1) * s];
        let ri = if COMPENSATED { compensated_residual(x[i], b[i], ai, m) } else { x[i] - b[i] - ai.iter().zip(m).map(|(a, m)| a * m).sum::<f64>() };
        rest += ri * ri * inv_psi[i];
    }
    let (low, high) = ((partial[0] + partial[4]) + (partial[2] + partial[6]), (partial[1] + partial[5]) + (partial[3] + partial[7]));
    (low + high) + rest
}

/// The per-region quantities that do not depend on x.
pub struct RegionAlgebra {
    s: usize,
    d: usize,
    /// `[Sigma_1 A_1^T Psi^-1 | ... ]`, `RS x D`: `mu_q = gain_q x - offset_q`.
    gain: DMatrix<f64>,
    /// `Sigma_q A_q^T Psi^-1 b_q`, length S per region.
    offset: Vec<f64>,
    /// `[b_1 | ... | b_R]^T Psi^{-1}`: `R x D` (S = 1's completed-square form).
    bt_psi: DMatrix<f64>,
    /// `Sigma_q`, S x S row-major per region.
    sigma: Vec<f64>,
    /// At S = 1, `1 / Sigma_q = 1 + A^T Psi^-1 A`.
    precision: Vec<f64>,
    /// Lower Cholesky factor `L_q` of `Sigma_q` (S x S row-major) and `log det Sigma_q`.
    chol: Vec<f64>,
    log_det_sigma: Vec<f64>,
    /// `V_q` and `1 / (1 + s^2)` of [`RegionFactor`], for `Sigma_q m` in the refinement of `mu`.
    basis: Vec<f64>,
    shrink: Vec<f64>,
    /// `A_q` (D x S row-major) and `b_q`, for the residual form.
    a: Vec<f64>,
    b: Vec<f64>,
    /// `b_q^T Psi^-1 b_q`, and the largest.
    b_psi_b: Vec<f64>,
    largest_b_psi_b: f64,
    /// `-D/2 log 2pi - 1/2 log det Psi + 1/2 log det Sigma_q`, and that minus `b^T Psi^-1 b / 2`
    /// (the completed-square form's constant).
    base: Vec<f64>,
    constant: Vec<f64>,
    inv_psi: Vec<f64>,
    /// `8 (D + S + 6) u`: the completed-square form's error is below this times
    /// `x^T Psi^-1 x + b^T Psi^-1 b` (see [`Self::cheap_form_error`]).
    error_factor: f64,
}

impl RegionAlgebra {
    pub fn new(partition: &Partition, noise_var: &[f64]) -> Result<Self> {
        let dec = partition.decoder();
        let (s, d, r) = (dec.latent_dim(), dec.output_dim(), partition.len());
        if noise_var.len() != d {
            return invalid(format!("noise_var has {} entries but the decoder outputs {d}", noise_var.len()));
        }
        if noise_var.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return invalid("noise_var must be positive and finite");
        }
        if noise_var.iter().any(|v| !(1.0 / v).is_finite()) {
            return invalid("noise_var entries must be at least 1e-308 (their reciprocals must be finite)");
        }
        let inv_psi: Vec<f64> = noise_var.iter().map(|v| 1.0 / v).collect();
        let inv_sd: Vec<f64> = noise_var.iter().map(|v| 1.0 / v.sqrt()).collect();
        let log_det_psi: f64 = noise_var.iter().map(|v| v.ln()).sum();
        let mut gain = DMatrix::zeros(r * s, d);
        let mut bt_psi = DMatrix::zeros(r, d);
        let (mut sigma, mut chol, mut basis) = (Vec::with_capacity(r * s * s), Vec::with_capacity(r * s * s), Vec::with_capacity(r * s * s));
        let (mut shrink, mut offset) = (Vec::with_capacity(r * s), Vec::with_capacity(r * s));
        let (mut a_all, mut b_all) = (Vec::with_capacity(r * d * s), Vec::with_capacity(r * d));
        let (mut log_det_sigma, mut b_psi_b, mut base, mut constant, mut precision) = (vec![0.0; r], vec![0.0; r], vec![0.0; r], vec![0.0; r], Vec::new());
        for q in 0..r {
            let (a, b) = (partition.a(q), partition.b(q));
            let factor = factor_region(a, &inv_sd, s);
            for j in 0..s {
                let row = &factor.gain[j * d..(j + 1) * d];
                for (i, g) in row.iter().enumerate() {
                    gain[(q * s + j, i)] = *g;
                }
                offset.push(row.iter().zip(b).map(|(g, b)| g * b).sum());
            }
            for i in 0..d {
                bt_psi[(q, i)] = b[i] * inv_psi[i];
            }
            if s == 1 {
                precision.push(1.0 / factor.shrink[0]);
            }
            sigma.extend_from_slice(&factor.sigma);
            chol.extend_from_slice(&factor.chol);
            basis.extend_from_slice(&factor.basis);
            shrink.extend_from_slice(&factor.shrink);
            a_all.extend_from_slice(a);
            b_all.extend_from_slice(b);
            log_det_sigma[q] = factor.log_det_sigma;
            b_psi_b[q] = (0..d).map(|i| b[i] * b[i] * inv_psi[i]).sum();
            base[q] = -0.5 * d as f64 * LOG_2PI - 0.5 * log_det_psi + 0.5 * factor.log_det_sigma;
            constant[q] = base[q] - 0.5 * b_psi_b[q];
        }
        let error_factor = 8.0 * (d + s + 6) as f64 * f64::EPSILON;
        let largest_b_psi_b = b_psi_b.iter().fold(0.0f64, |a, v| a.max(*v));
        Ok(RegionAlgebra {
            s,
            d,
            gain,
            offset,
            bt_psi,
            sigma,
            precision,
            chol,
            log_det_sigma,
            basis,
            shrink,
            a: a_all,
            b: b_all,
            b_psi_b,
            largest_b_psi_b,
            base,
            constant,
            inv_psi,
            error_factor,
        })
    }

    pub fn sigma(&self, q: usize) -> &[f64] {
        &self.sigma[q * self.s * self.s..(q + 1) * self.s * self.s]
    }

    pub fn chol(&self, q: usize) -> &[f64] {
        &self.chol[q * self.s * self.s..(q + 1) * self.s * self.s]
    }

    pub fn log_det_sigma(&self, q: usize) -> f64 {
        self.log_det_sigma[q]
    }

    pub fn latent_dim(&self) -> usize {
        self.s
    }

    pub fn n_regions(&self) -> usize {
        self.constant.len()
    }

    /// A bound on the error of S = 1's completed-square form of `log kappa_q` at a point with
    /// `x^T Psi^-1 x = xpx`. Every product and sum there is a dot product of length at most D
    /// (error `gamma = (D + 2) u` relative to the sum of absolute values), and by
    /// Cauchy-Schwarz each such sum is at most `xpx + b^T Psi^-1 b`: `x^T Psi^-1 x`,
    /// `b^T Psi^-1 x`, `b^T Psi^-1 b` and `A^T Psi^-1 (x - b)`, whose error `delta u` enters
    /// `u Sigma u` as `2 |mu| delta u <= 2 (s^2 / (1 + s^2)) (sqrt(xpx) + sqrt(bpb))^2`. Summed,
    /// less than `5 gamma (xpx + bpb)` plus `Sigma`'s own rounding; [`Self::error_factor`]
    /// takes 8 with `gamma = (D + S + 6) u`.
    #[inline(always)]
    fn cheap_form_error(&self, q: usize, xpx: f64) -> f64 {
        self.error_factor * (xpx + self.b_psi_b[q])
    }

    /// A bound on the error of the residual form with a plainly rounded residual `r`
    /// (`quad = r^T Psi^-1 r`, `mean_square = m^T m`): each `r_i` is off by at most
    /// `gamma (|x_i| + |b_i| + |a_i . m|)`, so `quad` by `2 sqrt(quad) gamma sqrt(3 W)` plus
    /// the square of that error, `W = x^T Psi^-1 x + b^T Psi^-1 b + m^T A^T Psi^-1 A m`
    /// (Cauchy-Schwarz; `m^T A^T Psi^-1 A m <= |Sigma^-1| |m|^2`, with the largest eigenvalue
    /// `1 / min shrink`); `m`'s own error enters only to second order, below the same square.
    /// Of order `gamma sqrt(x^T Psi^-1 x)` where the completed square's is `gamma x^T Psi^-1 x`.
    #[inline(always)]
    fn residual_form_error(&self, q: usize, xpx: f64, quad: f64, mean_square: f64) -> f64 {
        let s = self.s;
        let largest = self.shrink[q * s..(q + 1) * s].iter().fold(f64::INFINITY, |a, v| a.min(*v));
        let w = 3.0 * (xpx + self.b_psi_b[q] + mean_square / largest);
        let gamma = self.error_factor / 8.0;
        2.0 * gamma * (quad * w).sqrt() + 2.0 * gamma * gamma * w
    }

    /// At S = 1, the residual form's `log kappa` of region q for the lanes of a block whose
    /// completed square is too rough (`m` their means, `x` their coordinates by output), with a
    /// plainly rounded residual, on the vectors; `needs` says which lanes must still take
    /// [`Self::stable_log_kappa`] (its bound is too loose there).
    #[inline(always)]
    pub(crate) fn s1_residual_form<M: MulAdd, const LANES: usize, X: std::ops::Deref<Target = [f64; LANES]>>(
        &self,
        q: usize,
        x: &[X],
        xpx: &[f64; LANES],
        m: &[f64; LANES],
        log_kappa: &mut [f64; LANES],
        needs: &mut [bool; LANES],
    ) {
        let d = self.d;
        let (a, b) = (&self.a[q * d..(q + 1) * d], &self.b[q * d..(q + 1) * d]);
        let mut quad = [0.0; LANES];
        for (i, xi) in x.iter().enumerate() {
            for l in 0..LANES {
                let r = M::mul_add(-a[i], m[l], xi[l] - b[i]);
                quad[l] = M::mul_add(r * r, self.inv_psi[i], quad[l]);
            }
        }
        for l in 0..LANES {
            let mean_square = m[l] * m[l];
            log_kappa[l] = self.base[q] - 0.5 * (quad[l] + mean_square);
            needs[l] = Self::needs_stable_form(log_kappa[l], self.residual_form_error(q, xpx[l], quad[l], mean_square));
        }
    }

    /// Whether `log_kappa`, with its error bound `error`, must be formed again.
    #[inline(always)]
    fn needs_stable_form(log_kappa: f64, error: f64) -> bool {
        // Also where the form overflowed or cancelled to NaN.
        !(error <= STABLE_FORM_TOLERANCE * (log_kappa.abs() - error).max(1.0))
    }

    /// `log kappa_q(x)` as `base_q - ((x - b - A m)^T Psi^-1 (x - b - A m) + m^T m) / 2` at
    /// `m = mu_q` (docs/design.md §3): a sum of non-negative terms, without the completed square's
    /// cancellation. `m` holds `mu_q` on entry, from the products; the form is stationary there,
    /// so an error `delta` in `m` moves it by only `delta^T Sigma^-1 delta`. Where that could
    /// matter (points very far in noise units), `m` is refined first by one Newton step
    /// `m += Sigma A^T Psi^-1 r - Sigma m` from the residual `r`, and left refined.
    pub(crate) fn stable_log_kappa(&self, q: usize, x: &[f64], xpx: f64, m: &mut [f64]) -> f64 {
        self.stable_log_kappa_inline(q, x, xpx, m)
    }

    /// [`Self::stable_log_kappa`], inlined: a kernel of [`with_wide_vectors`] that calls it for
    /// many pairs gets its sums on the widest vectors (the same bits: no product is fused).
    #[inline(always)]
    fn stable_log_kappa_inline(&self, q: usize, x: &[f64], xpx: f64, m: &mut [f64]) -> f64 {
        let (s, d) = (self.s, self.d);
        let a = &self.a[q * d * s..(q + 1) * d * s];
        let b = &self.b[q * d..(q + 1) * d];
        let residual = |i: usize, m: &[f64]| x[i] - b[i] - a[i * s..(i + 1) * s].iter().zip(m).map(|(a, m)| a * m).sum::<f64>();
        let rough = self.cheap_form_error(q, xpx);
        // An error delta ~ gamma |mu| in m moves the form by delta^T Sigma^-1 delta, of order
        // gamma^2 (xpx + bpb): refine where that is not negligible.
        if rough * self.error_factor > 1e-3 * STABLE_FORM_TOLERANCE {
            let mut step = [0.0; crate::gauss::sobol::MAX_DIM];
            let r_s = self.n_regions() * s;
            for i in 0..d {
                let ri = residual(i, m);
                for (j, st) in step[..s].iter_mut().enumerate() {
                    *st += self.gain[(q * s + j) + i * r_s] * ri;
                }
            }
            // - Sigma m = - V diag(shrink) V^T m, in the basis so that small directions keep
            // their own scale.
            let basis = &self.basis[q * s * s..(q + 1) * s * s];
            let shrink = &self.shrink[q * s..(q + 1) * s];
            for k in 0..s {
                let along: f64 = (0..s).map(|j| basis[j * s + k] * m[j]).sum::<f64>() * shrink[k];
                for j in 0..s {
                    step[j] -= basis[j * s + k] * along;
                }
            }
            for (mj, st) in m.iter_mut().zip(&step[..s]) {
                *mj += st;
            }
        }
        let mean_square: f64 = m.iter().map(|v| v * v).sum();
        let plain = residual_square_sum::<false>(x, b, a, m, &self.inv_psi);
        let value = self.base[q] - 0.5 * (plain + mean_square);
        // Where x, b and A m are large against their difference, the residual is formed again
        // in double-double arithmetic: rounded once, it keeps its own relative accuracy however
        // far the point is (m is exact input here, the form being stationary in it).
        if !Self::needs_stable_form(value, self.residual_form_error(q, xpx, plain, mean_square)) {
            return value;
        }
        let quad = residual_square_sum::<true>(x, b, a, m, &self.inv_psi);
        self.base[q] - 0.5 * (quad + mean_square)
    }

    /// `log kappa_q(x)` and `mu_q(x)` for every region and every point of a batch
    /// (`x` is `D x n`, a column per point): one matrix product for the means, then O(DS) per
    /// pair for the residual form of `log kappa` (S >= 2), or at S = 1 a second product and
    /// O(1) per pair for the completed-square form where its error bound allows.
    pub fn local_gaussians(&self, x: DMatrixView<f64>) -> LocalGaussians {
        let (s, r, n) = (self.s, self.n_regions(), x.ncols());
        let mut log_kappa = vec![0.0; n * r];
        if s == 1 {
            // For every region of every point, so on the widest vectors.
            let products = (&self.gain * x, &self.bt_psi * x);
            let mut mu = vec![0.0; n * r];
            with_wide_vectors(LocalGaussiansS1 { algebra: self, x, products: &products, log_kappa: &mut log_kappa, mu: &mut mu, intervals: None });
            return LocalGaussians { s, r, log_kappa, mu };
        }
        // mu_q = gain_q x - offset_q, written in place of the products.
        let mut mu = (&self.gain * x).as_slice().to_vec();
        let mut column = vec![0.0; self.d];
        for p in 0..n {
            column.iter_mut().zip(x.column(p).iter()).for_each(|(c, v)| *c = *v);
            let xpx: f64 = column.iter().zip(&self.inv_psi).map(|(v, w)| v * v * w).sum();
            let (lk, m) = (&mut log_kappa[p * r..(p + 1) * r], &mut mu[p * r * s..(p + 1) * r * s]);
            for (q, (lk, m)) in lk.iter_mut().zip(m.chunks_exact_mut(s)).enumerate() {
                m.iter_mut().zip(&self.offset[q * s..(q + 1) * s]).for_each(|(m, o)| *m -= o);
                *lk = self.stable_log_kappa(q, &column, xpx, m);
            }
        }
        LocalGaussians { s, r, log_kappa, mu }
    }

    /// At S = 1, [`Self::local_gaussians`] and each point's region of the largest bound, in one
    /// pass (for many outputs; with a few, the interval path's blocks form the local Gaussians
    /// from the points again, which costs less than gathering them).
    fn local_gaussians_and_best_regions_s1(&self, x: DMatrixView<f64>, intervals: &interval::Intervals) -> (LocalGaussians, Vec<usize>) {
        let (r, n) = (self.n_regions(), x.ncols());
        let products = (&self.gain * x, &self.bt_psi * x);
        let (mut log_kappa, mut mu) = (vec![0.0; n * r], vec![0.0; n * r]);
        let kernel = LocalGaussiansS1 { algebra: self, x, products: &products, log_kappa: &mut log_kappa, mu: &mut mu, intervals: Some(intervals) };
        let best = with_wide_vectors(kernel);
        (LocalGaussians { s: 1, r, log_kappa, mu }, best)
    }

    /// At S = 1, what the interval path's blocks form `log kappa_q` and `mu_q` from.
    fn s1_forms<'a>(&'a self, x: DMatrixView<'a, f64>) -> interval::Forms<'a> {
        interval::Forms { x, algebra: self }
    }

    /// At S = 1, region q's completed-square `(log kappa_q, mu_q)` from `(gain_q x, b_q^T Psi^-1 x)`
    /// and `x^T Psi^-1 x`, and whether its error bound asks for the residual form.
    #[inline(always)]
    pub(crate) fn s1_form<M: MulAdd>(&self, q: usize, gx: f64, bx: f64, xpx: f64) -> (f64, f64, bool) {
        let m = gx - self.offset[q];
        let lk = M::mul_add(0.5 * m * m, self.precision[q], self.constant[q] - 0.5 * xpx + bx);
        let error = self.cheap_form_error(q, xpx);
        (lk, m, Self::needs_stable_form(lk, error))
    }

    /// Whether some point with `x^T Psi^-1 x <= largest_xpx` may need the residual form in some
    /// region.
    #[inline(always)]
    pub(crate) fn completed_square_may_be_rough_anywhere(&self, largest_xpx: f64) -> bool {
        !(self.error_factor * (largest_xpx + self.largest_b_psi_b) <= STABLE_FORM_TOLERANCE)
    }

    /// The bound of [`Self::cheap_form_error`], for the interval path.
    #[inline(always)]
    pub(crate) fn completed_square_error(&self, q: usize, xpx: f64) -> f64 {
        self.cheap_form_error(q, xpx)
    }

    /// Whether some point with `x^T Psi^-1 x <= largest_xpx` may need the residual form in
    /// region q: the bound at the largest is above the tolerance of `|log kappa| <= 1`.
    #[inline(always)]
    pub(crate) fn completed_square_may_be_rough(&self, q: usize, largest_xpx: f64) -> bool {
        !(self.cheap_form_error(q, largest_xpx) <= STABLE_FORM_TOLERANCE)
    }

    /// Whether S = 1's completed-square `log_kappa` of region q at a point with
    /// `x^T Psi^-1 x = xpx` must be formed again (as in [`Self::s1_form`]).
    #[inline]
    pub(crate) fn completed_square_too_rough(&self, q: usize, log_kappa: f64, xpx: f64) -> bool {
        Self::needs_stable_form(log_kappa, self.cheap_form_error(q, xpx))
    }

    /// `(gain_q, b_q^T Psi^-1)` entries of output i, for the blocks that form S = 1's values.
    #[inline(always)]
    pub(crate) fn s1_coefficients(&self, q: usize, i: usize) -> (f64, f64) {
        let r = self.n_regions();
        (self.gain.as_slice()[i * r + q], self.bt_psi.as_slice()[i * r + q])
    }

    pub(crate) fn inv_psi(&self) -> &[f64] {
        &self.inv_psi
    }

    /// [`Self::local_gaussians`] for S = 1 at one point, as one pass over flat arrays that the
    /// compiler vectorises across regions (at S = 1 this runs for every region of every point),
    /// then the residual form for the regions whose bound asks for it (points far in noise
    /// units: large weights, unscaled data, tiny noise).
    #[inline(always)]
    fn local_gaussians_of_point_s1<M: MulAdd>(&self, x: &[f64], gx: &[f64], bx: &[f64], xpx: f64, log_kappa: &mut [f64], mu: &mut [f64]) {
        for (q, ((lk, m), (g, b))) in log_kappa.iter_mut().zip(mu.iter_mut()).zip(gx.iter().zip(bx)).enumerate() {
            (*lk, *m, _) = self.s1_form::<M>(q, *g, *b, xpx);
        }
        // Region by region only where the bound at the largest b^T Psi^-1 b may be too rough.
        if !(self.error_factor * (xpx + self.largest_b_psi_b) <= STABLE_FORM_TOLERANCE) {
            for q in 0..log_kappa.len() {
                if self.completed_square_too_rough(q, log_kappa[q], xpx) {
                    log_kappa[q] = self.stable_log_kappa_inline(q, x, xpx, &mut mu[q..q + 1]);
                }
            }
        }
    }
}

/// [`RegionAlgebra::local_gaussians`] at S = 1 from the two products, and with `intervals`
/// each point's region of the largest bound.
struct LocalGaussiansS1<'a> {
    algebra: &'a RegionAlgebra,
    x: DMatrixView<'a, f64>,
    /// `gain X` and `B^T Psi^-1 X`.
    products: &'a (DMatrix<f64>, DMatrix<f64>),
    log_kappa: &'a mut [f64],
    mu: &'a mut [f64],
    intervals: Option<&'a interval::Intervals>,
}

impl VectorKernel for LocalGaussiansS1<'_> {
    type Output = Vec<usize>;

    #[inline(always)]
    fn run<M: MulAdd>(self) -> Vec<usize> {
        let LocalGaussiansS1 { algebra, x, products: (gx, btx), log_kappa, mu, intervals } = self;
        let r = algebra.n_regions();
        let mut bounds = vec![0.0; r];
        let mut best = Vec::with_capacity(if intervals.is_some() { x.ncols() } else { 0 });
        let mut column = vec![0.0; algebra.d];
        for (p, (lk, m)) in log_kappa.chunks_exact_mut(r).zip(mu.chunks_exact_mut(r)).enumerate() {
            column.iter_mut().zip(x.column(p).iter()).for_each(|(c, v)| *c = *v);
            let xpx: f64 = column.iter().zip(&algebra.inv_psi).map(|(v, w)| v * v * w).sum();
            algebra.local_gaussians_of_point_s1::<M>(&column, &gx.as_slice()[p * r..(p + 1) * r], &btx.as_slice()[p * r..(p + 1) * r], xpx, lk, m);
            if let Some(intervals) = intervals {
                best.push(intervals.best_region::<M>(lk, m, &mut bounds));
            }
        }
        best
    }
}

/// `log kappa_q(x_n)` (`n x R`) and `mu_q(x_n)` (`n x R x S`) for a batch of points.
pub struct LocalGaussians {
    s: usize,
    r: usize,
    pub log_kappa: Vec<f64>,
    pub mu: Vec<f64>,
}

impl LocalGaussians {
    pub fn point(&self, p: usize) -> (&[f64], &[f64]) {
        (&self.log_kappa[p * self.r..(p + 1) * self.r], &self.mu[p * self.r * self.s..(p + 1) * self.r * self.s])
    }
}

/// Visits the regions whose terms `log(kappa_q Phi_q)` can matter for one point: first the
/// one with the largest bound `log kappa_q + log_mass_bound`, then, in index order, every region
/// whose bound is within [`PRUNE_GAP`] of the best term found so far. `visit(q, mu_q, looseness)`
/// returns the region's term; `looseness >= 1` says how far below the sum of the terms so far the
/// region's bound lies (see [`RegionIntegrator::log_mass_loose`]), so that an error of
/// `looseness` times the integrator's relative accuracy in this term is that accuracy of
/// `p(x)`. Skipped regions change `log p(x)` by less than `R exp(-PRUNE_GAP)` in relative terms.
/// `bounds` is scratch, reused across points.
pub(crate) fn visit_regions<I: RegionIntegrator>(
    integrator: &I,
    log_kappa: &[f64],
    mu: &[f64],
    s: usize,
    bounds: &mut Vec<f64>,
    mut visit: impl FnMut(usize, &[f64], f64) -> f64,
) {
    let r = log_kappa.len();
    bounds.clear();
    bounds.extend((0..r).map(|q| log_kappa[q] + integrator.log_mass_bound(q, &mu[q * s..(q + 1) * s])));
    let Some(first) = (0..r).max_by(|&a, &b| bounds[a].total_cmp(&bounds[b]).then(b.cmp(&a))) else {
        return;
    };
    let mut best = visit(first, &mu[first * s..(first + 1) * s], 1.0);
    // The terms so far, summed only where the integrator uses the looseness (an exp each).
    let track = integrator.uses_looseness();
    let mut terms = RunningLogSumExp::new();
    if track {
        terms.add(best);
    }
    for q in 0..r {
        if q != first && bounds[q] >= best - PRUNE_GAP {
            let looseness = if track { terms.looseness(bounds[q]) } else { 1.0 };
            let term = visit(q, &mu[q * s..(q + 1) * s], looseness);
            best = best.max(term);
            if track {
                terms.add(term);
            }
        }
    }
}

/// `log sum_k exp(t_k)` accumulated one term at a time, without storing the terms.
#[derive(Clone, Copy)]
struct RunningLogSumExp {
    max: f64,
    /// `sum_k exp(t_k - max)`.
    scaled: f64,
}

impl RunningLogSumExp {
    fn new() -> Self {
        RunningLogSumExp { max: f64::NEG_INFINITY, scaled: 0.0 }
    }

    fn add(&mut self, t: f64) {
        // A region of no mass adds nothing; while the sum is still empty, `exp(t - max)` would
        // be `exp(-inf + inf)`, NaN (a rank-1 map whose best-bounded region is a strip
        // crossed out in whitened coordinates gave log p NaN).
        if t == f64::NEG_INFINITY {
            return;
        }
        if t <= self.max {
            self.scaled += (t - self.max).exp();
        } else if t > f64::NEG_INFINITY {
            self.scaled = self.scaled * (self.max - t).exp() + 1.0;
            self.max = t;
        }
    }

    /// How far a term bounded by `bound` lies below the sum so far, as a factor of at least 1.
    fn looseness(&self, bound: f64) -> f64 {
        ((self.max - bound).exp() * self.scaled).max(1.0)
    }

    fn value(&self) -> f64 {
        if self.max == f64::NEG_INFINITY {
            self.max
        } else {
            self.max + self.scaled.ln()
        }
    }
}

/// Up to this many outputs, the S = 1 path's blocks form their points' local Gaussians from the
/// points (`A^T Psi^-1 x` as `D` products per region) rather than gathering them from matrix
/// products computed and stored for the batch.
const FEW_OUTPUTS: usize = 16;

/// Points per batch of the matrix products: at most tens of megabytes of `n x R x S` buffers,
/// and enough batches (four per thread) to keep every thread busy.
fn batch_size(n: usize, r: usize, s: usize) -> usize {
    let memory_bound = (2_000_000 / (r * (s + 1)).max(1)).max(1);
    let balance_bound = n.div_ceil(4 * crate::parallel::current_num_threads()).max(16);
    memory_bound.min(balance_bound).min(4096)
}

/// Runs `per_batch(points)` for the columns of `x` (`D x N`) in parallel batches, and returns
/// the batches' results in point order.
fn over_batches<T: Send + 'static>(x: DMatrixView<f64>, algebra: &RegionAlgebra, cancel: &Cancel, per_batch: impl Fn(DMatrixView<f64>) -> T + Sync) -> Result<Vec<T>> {
    let n = x.ncols();
    let batch = batch_size(n, algebra.n_regions(), algebra.s);
    let chunks: Vec<(usize, usize)> = (0..n).step_by(batch).map(|a| (a, (a + batch).min(n))).collect();
    crate::parallel::map(chunks.len(), |i| {
        let (first, end) = chunks[i];
        cancel.check()?;
        // The region integrals check the token as the call's current one, and record their
        // failures in it; a batch they cut short is discarded here.
        let out = cancel.enter(|| per_batch(x.columns(first, end - first)));
        cancel.check()?;
        Ok(out)
    })
    .into_iter()
    .collect()
}

/// Runs `per_point(state, log_kappa, mu)` for every column of `x` (`D x N`), in parallel
/// batches that share their matrix products; each batch starts from `start(points)` (its results
/// and scratch buffers, reused across its points), and the batches come back in point order.
fn map_batches<T: Send + 'static>(
    algebra: &RegionAlgebra,
    x: DMatrixView<f64>,
    cancel: &Cancel,
    start: impl Fn(usize) -> T + Sync,
    per_point: impl Fn(&mut T, &[f64], &[f64]) + Sync,
) -> Result<Vec<T>> {
    over_batches(x, algebra, cancel, |points| {
        let local = algebra.local_gaussians(points);
        let mut state = start(points.ncols());
        let cancel = Cancel::current();
        for p in 0..points.ncols() {
            // Stopped: the batch is discarded (`over_batches`), so the rest is not computed.
            if cancel.is_cancelled() {
                break;
            }
            let (lk, mu) = local.point(p);
            per_point(&mut state, lk, mu);
        }
        state
    })
}

/// Where the points of a batch's first block count this fraction of the regions on average,
/// the S = 1 path leaves the batch's points in their order (see [`map_interval_batches`]).
const UNORDERED_FRACTION: f64 = 0.9;

/// `offset + p` for the points `p` ordered by `best[p]`, their regions (a counting sort: by
/// index within one region).
fn by_region(best: &[usize], offset: usize, regions: usize) -> Vec<usize> {
    let mut start = vec![0; regions + 1];
    for &q in best {
        start[q + 1] += 1;
    }
    for q in 0..regions {
        start[q + 1] += start[q];
    }
    let mut order = vec![0; best.len()];
    for (p, &q) in best.iter().enumerate() {
        order[start[q]] = offset + p;
        start[q] += 1;
    }
    order
}

/// As [`map_batches`] for the S = 1 interval path: each batch's points go through
/// [`interval::Block`]s, points whose best bounds lie in the same region together (they visit
/// about the same regions, and their ends fall in the same ranges of the tail forms), and
/// `per_block(state, block, points, local)` takes the results of the block's `points` (indices
/// into the batch), with the batch's values for the points the block declines. With a few
/// outputs the batch's first block takes its first points as they come, and where they counted
/// nearly every region ([`UNORDERED_FRACTION`]: posteriors wide against the regions), the rest
/// follow as they come too: ordering them would save a block little, and costs a tenth of the
/// time where the outputs are few.
fn map_interval_batches<T: Send + 'static, const MOMENTS: bool>(
    algebra: &RegionAlgebra,
    intervals: &interval::Intervals,
    x: DMatrixView<f64>,
    cancel: &Cancel,
    start: impl Fn(usize) -> T + Sync,
    per_block: impl Fn(&mut T, &interval::Block, &[usize], &dyn Fn(usize) -> (Vec<f64>, Vec<f64>)) + Sync,
) -> Result<Vec<T>> {
    over_batches(x, algebra, cancel, |points| {
        let (n, r) = (points.ncols(), algebra.n_regions());
        let (stored, best) = if algebra.d > FEW_OUTPUTS {
            let (stored, best) = algebra.local_gaussians_and_best_regions_s1(points, intervals);
            (Some(stored), Some(best))
        } else {
            (None, None)
        };
        let local = match &stored {
            Some(stored) => interval::Local::Stored { log_kappa: &stored.log_kappa, mu: &stored.mu },
            None => interval::Local::Formed(algebra.s1_forms(points)),
        };
        // A point's values for the log-space path, where a block declines it (rare).
        let point = |p: usize| match &stored {
            Some(stored) => {
                let (lk, mu) = stored.point(p);
                (lk.to_vec(), mu.to_vec())
            }
            None => {
                let one = algebra.local_gaussians(points.columns(p, 1));
                (one.log_kappa, one.mu)
            }
        };
        let mut state = start(n);
        let mut block = interval::Block::default();
        let order = match best {
            Some(best) => by_region(&best, 0, r),
            None => {
                let first: Vec<usize> = (0..n.min(interval::LANES)).collect();
                block.evaluate::<MOMENTS>(intervals, &local, &first);
                per_block(&mut state, &block, &first, &point);
                let rest = first.len()..n;
                if block.counted_fraction() >= UNORDERED_FRACTION {
                    rest.collect()
                } else {
                    by_region(&intervals.best_regions(&algebra.s1_forms(points.columns(rest.start, rest.len()))), rest.start, r)
                }
            }
        };
        for chunk in order.chunks(interval::LANES) {
            block.evaluate::<MOMENTS>(intervals, &local, chunk);
            per_block(&mut state, &block, chunk, &point);
        }
        state
    })
}

/// `log p(x)` of one point through the integrator's per-region methods, in log space.
fn log_likelihood_by_regions<I: RegionIntegrator>(integrator: &I, log_kappa: &[f64], mu: &[f64], s: usize, bounds: &mut Vec<f64>) -> f64 {
    let mut total = RunningLogSumExp::new();
    visit_regions(integrator, log_kappa, mu, s, bounds, |q, m, looseness| {
        let t = log_kappa[q] + integrator.log_mass_loose(q, m, looseness);
        total.add(t);
        t
    });
    total.value()
}

/// `log p(x_n)` for every column of `x` (`D x N`).
pub fn log_likelihood<I: RegionIntegrator>(
    algebra: &RegionAlgebra,
    integrator: &I,
    x: DMatrixView<f64>,
    cancel: &Cancel,
) -> Result<Vec<f64>> {
    let batches = if let Some(intervals) = integrator.intervals() {
        // Results by position in the batch: the blocks take the points out of order.
        let start = |points| (vec![f64::NAN; points], Vec::new());
        map_interval_batches::<_, false>(algebra, intervals, x, cancel, start, |(out, bounds), block, points, local| {
            for (l, &p) in points.iter().enumerate() {
                out[p] = block.log_likelihood(l).unwrap_or_else(|| {
                    let (lk, mu) = local(p);
                    log_likelihood_by_regions(integrator, &lk, &mu, 1, bounds)
                });
            }
        })?
    } else {
        let start = |points| (Vec::with_capacity(points), Vec::new());
        map_batches(algebra, x, cancel, start, |(out, bounds), lk, mu| out.push(log_likelihood_by_regions(integrator, lk, mu, algebra.s, bounds)))?
    };
    let out: Vec<f64> = batches.into_iter().flat_map(|(out, _)| out).collect();
    no_nan_log_likelihood(&out)?;
    Ok(out)
}

/// `Err(Numerical)` naming the first point whose log-likelihood is NaN: the region integrals
/// report their own failures, and this catches any other, never passed on silently.
fn no_nan_log_likelihood(values: &[f64]) -> Result<()> {
    match values.iter().position(|v| v.is_nan()) {
        Some(n) => Err(crate::error::Error::Numerical(format!("the log-likelihood of point {n} came out NaN"))),
        None => Ok(()),
    }
}

/// The posterior terms of one point, flat, in the order visited (the first region, then the
/// others by index): for each visited region, its index, its posterior probability,
/// `E[z | q]` (S) and `E[z z^T | q]` (S x S). The buffers are reused from point to point.
#[derive(Default)]
pub(crate) struct PointTerms {
    pub log_likelihood: f64,
    pub region: Vec<usize>,
    pub weight: Vec<f64>,
    pub mean: Vec<f64>,
    pub second: Vec<f64>,
    bounds: Vec<f64>,
}

impl PointTerms {
    /// Visits the regions of one point and integrates over them. The weights are normalised
    /// by their sum rather than by `exp(log p)`, so they sum to one to rounding even where
    /// `log p(x)` is so large in magnitude that its own rounding is not small.
    pub(crate) fn compute<I: RegionIntegrator>(&mut self, integrator: &I, log_kappa: &[f64], mu: &[f64], s: usize) {
        if let Some(intervals) = integrator.intervals() {
            // One point is a block of one.
            let mut block = interval::Block::default();
            block.evaluate::<true>(intervals, &interval::Local::Stored { log_kappa, mu }, &[0]);
            if let Some(log_likelihood) = block.log_likelihood(0) {
                self.clear();
                self.log_likelihood = log_likelihood;
                for (q, [mass, first, second]) in block.terms(0) {
                    self.region.push(q);
                    self.weight.push(mass / block.total(0));
                    // E[z | q] and E[z^2 | q]; a region whose term underflowed has none.
                    let (m, m2) = if mass > 0.0 { (first / mass, second / mass) } else { (f64::NAN, f64::NAN) };
                    self.mean.push(m);
                    self.second.push(m2);
                }
                return;
            }
        }
        self.compute_by_regions(integrator, log_kappa, mu, s);
    }

    fn clear(&mut self) {
        self.region.clear();
        self.weight.clear();
        self.mean.clear();
        self.second.clear();
    }

    /// [`Self::compute`] through the per-region methods of the integrator, in log space.
    fn compute_by_regions<I: RegionIntegrator>(&mut self, integrator: &I, log_kappa: &[f64], mu: &[f64], s: usize) {
        self.clear();
        let PointTerms { region, weight, mean, second, bounds, .. } = self;
        visit_regions(integrator, log_kappa, mu, s, bounds, |q, m, looseness| {
            let k = region.len();
            mean.resize((k + 1) * s, 0.0);
            second.resize((k + 1) * s * s, 0.0);
            let log_mass = integrator.moments_into_loose(q, m, &mut mean[k * s..], &mut second[k * s * s..], looseness);
            let t = log_kappa[q] + log_mass;
            region.push(q);
            weight.push(t);
            t
        });
        let max = self.weight.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if max == f64::NEG_INFINITY {
            self.log_likelihood = max;
            self.weight.iter_mut().for_each(|w| *w = f64::NAN);
            return;
        }
        for w in self.weight.iter_mut() {
            *w = (*w - max).exp();
        }
        let total: f64 = self.weight.iter().sum();
        self.log_likelihood = max + total.ln();
        self.weight.iter_mut().for_each(|w| *w /= total);
    }

}

/// The positions of visited regions (as `visit_regions` orders them) in increasing region
/// order: the first visited is the only one out of order.
fn in_region_order(visited: &[usize]) -> impl Iterator<Item = usize> {
    let n = visited.len();
    let first = visited.first().copied().unwrap_or(0);
    let before = visited.get(1..).map_or(0, |rest| rest.partition_point(|&q| q < first));
    (1..=before).chain((n > 0).then_some(0)).chain(before + 1..n)
}

pub(crate) fn moment_terms<I: RegionIntegrator>(integrator: &I, log_kappa: &[f64], mu: &[f64], s: usize) -> PointTerms {
    let mut terms = PointTerms::default();
    terms.compute(integrator, log_kappa, mu, s);
    terms
}

/// E-step statistics, stored by point (CSR): for point n, entries `indptr[n]..indptr[n+1]`
/// hold the regions q that carry posterior mass, in increasing order, with
/// `m0 = P(q | x_n)`, `m1 = E[z 1_q | x_n]` (S each) and `m2 = E[z z^T 1_q | x_n]`
/// (S x S each, row-major).
#[derive(Clone, Debug)]
pub struct EStep {
    pub log_likelihood: Vec<f64>,
    pub indptr: Vec<usize>,
    pub region: Vec<usize>,
    pub m0: Vec<f64>,
    pub m1: Vec<f64>,
    pub m2: Vec<f64>,
}

/// An E-step batch reserves room for this many stored regions per point at most: enough for
/// the wide posteriors of small decoders, where growing the arrays cost a tenth of the E-step's
/// time in copies, and a bounded bet where posteriors are narrow.
const MAX_RESERVED_REGIONS: usize = 32;

impl EStep {
    fn with_capacity(points: usize, regions_per_point: usize, s: usize) -> Self {
        let entries = points * regions_per_point;
        let mut indptr = Vec::with_capacity(points + 1);
        indptr.push(0);
        EStep {
            log_likelihood: Vec::with_capacity(points),
            indptr,
            region: Vec::with_capacity(entries),
            m0: Vec::with_capacity(entries),
            m1: Vec::with_capacity(entries * s),
            m2: Vec::with_capacity(entries * s * s),
        }
    }

    /// Appends one point's entries whose weight is stored (above [`MIN_WEIGHT`]).
    fn push_point(&mut self, terms: &PointTerms, s: usize) {
        // The arrays grow with the data: a growth the memory cannot take stops the call with
        // `Memory` through its token (the batch is discarded) instead of aborting the process.
        let entries = terms.region.len();
        let room = crate::memory::try_reserve(&mut self.m2, entries * s * s, "the E-step's second moments")
            .and_then(|()| crate::memory::try_reserve(&mut self.m1, entries * s, "the E-step's first moments"))
            .and_then(|()| crate::memory::try_reserve(&mut self.m0, entries, "the E-step's weights"))
            .and_then(|()| crate::memory::try_reserve(&mut self.region, entries, "the E-step's regions"));
        if let Err(err) = room {
            crate::cancel::Cancel::current().fail(err);
            return;
        }
        self.log_likelihood.push(terms.log_likelihood);
        for k in in_region_order(&terms.region) {
            let w = terms.weight[k];
            if w > MIN_WEIGHT {
                self.region.push(terms.region[k]);
                self.m0.push(w);
                self.m1.extend(terms.mean[k * s..(k + 1) * s].iter().map(|v| w * v));
                self.m2.extend(terms.second[k * s * s..(k + 1) * s * s].iter().map(|v| w * v));
            }
        }
        self.indptr.push(self.region.len());
    }

    /// Room for `entries` more stored regions (latent dimension `s`).
    fn reserve(&mut self, entries: usize, s: usize) {
        self.region.reserve(entries);
        self.m0.reserve(entries);
        self.m1.reserve(entries * s);
        self.m2.reserve(entries * s * s);
    }

    /// As [`Self::push_point`] for the points of an S = 1 block (its first `points` lanes)
    /// that it did not decline.
    fn push_block(&mut self, block: &interval::Block, points: usize) {
        block.append(points, MIN_WEIGHT, &mut self.log_likelihood, &mut self.indptr, &mut self.region, &mut self.m0, &mut self.m1, &mut self.m2);
    }

    /// The batches' points one after the other, in point order: each array allocated once and
    /// each entry written once, the batches in parallel. A batch that comes with `computed` has
    /// its statistics in the order computed, `computed[i]` the point of the `i`-th.
    fn concat(mut batches: Vec<(EStep, Option<Vec<usize>>)>, s: usize) -> Result<EStep> {
        if let [(_, None)] = batches.as_slice() {
            return Ok(batches.pop().unwrap().0);
        }
        let points: usize = batches.iter().map(|(b, _)| b.log_likelihood.len()).sum();
        let entries: usize = batches.iter().map(|(b, _)| b.region.len()).sum();
        // The batches' arrays are held while these are filled: both must fit.
        let per_entry = (std::mem::size_of::<usize>() + 8 * (1 + s + s * s)) as u128;
        crate::memory::check(entries as u128 * per_entry + points as u128 * 24, &format!("the E-step's statistics of {points} points ({entries} region terms)"))?;
        let mut out = EStep::with_capacity(points, 0, s);
        crate::memory::try_reserve(&mut out.region, entries, "the E-step's regions")?;
        crate::memory::try_reserve(&mut out.m0, entries, "the E-step's weights")?;
        crate::memory::try_reserve(&mut out.m1, entries * s, "the E-step's first moments")?;
        crate::memory::try_reserve(&mut out.m2, entries * s * s, "the E-step's second moments")?;
        {
            let mut rest = Destination {
                entry_offset: 0,
                log_likelihood: &mut out.log_likelihood.spare_capacity_mut()[..points],
                indptr: &mut out.indptr.spare_capacity_mut()[..points],
                region: &mut out.region.spare_capacity_mut()[..entries],
                m0: &mut out.m0.spare_capacity_mut()[..entries],
                m1: &mut out.m1.spare_capacity_mut()[..entries * s],
                m2: &mut out.m2.spare_capacity_mut()[..entries * s * s],
            };
            // Each destination taken once, by whichever thread fills that batch.
            let mut destinations = Vec::with_capacity(batches.len());
            for (batch, _) in &batches {
                let (head, tail) = rest.split(batch.log_likelihood.len(), batch.region.len(), s);
                destinations.push(Mutex::new(Some(head)));
                rest = tail;
            }
            crate::parallel::map(batches.len(), |i| {
                let destination = destinations[i].lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
                let (batch, computed) = &batches[i];
                destination.expect("each destination filled once").fill(batch, computed.as_deref(), s);
            });
        }
        // SAFETY: the batches' destinations tile the first `points`, `entries`, ... slots of
        // the spare capacities, and `fill` writes every slot of its destination.
        unsafe {
            out.log_likelihood.set_len(points);
            out.indptr.set_len(points + 1);
            out.region.set_len(entries);
            out.m0.set_len(entries);
            out.m1.set_len(entries * s);
            out.m2.set_len(entries * s * s);
        }
        Ok(out)
    }
}

/// Where one batch's statistics go in [`EStep::concat`]'s arrays: its points' and its entries'
/// slots, and the number of entries before them.
struct Destination<'a> {
    entry_offset: usize,
    log_likelihood: &'a mut [MaybeUninit<f64>],
    indptr: &'a mut [MaybeUninit<usize>],
    region: &'a mut [MaybeUninit<usize>],
    m0: &'a mut [MaybeUninit<f64>],
    m1: &'a mut [MaybeUninit<f64>],
    m2: &'a mut [MaybeUninit<f64>],
}

impl<'a> Destination<'a> {
    /// The slots of the first `points` points holding `entries` entries, and the rest.
    fn split(self, points: usize, entries: usize, s: usize) -> (Self, Self) {
        let (log_likelihood, rest_ll) = self.log_likelihood.split_at_mut(points);
        let (indptr, rest_indptr) = self.indptr.split_at_mut(points);
        let (region, rest_region) = self.region.split_at_mut(entries);
        let (m0, rest_m0) = self.m0.split_at_mut(entries);
        let (m1, rest_m1) = self.m1.split_at_mut(entries * s);
        let (m2, rest_m2) = self.m2.split_at_mut(entries * s * s);
        let head = Destination { entry_offset: self.entry_offset, log_likelihood, indptr, region, m0, m1, m2 };
        let rest = Destination {
            entry_offset: self.entry_offset + entries,
            log_likelihood: rest_ll,
            indptr: rest_indptr,
            region: rest_region,
            m0: rest_m0,
            m1: rest_m1,
            m2: rest_m2,
        };
        (head, rest)
    }

    /// Writes `batch` (in the order `computed`, if given) in point order: every slot.
    fn fill(self, batch: &EStep, computed: Option<&[usize]>, s: usize) {
        let n = batch.log_likelihood.len();
        let mut position: Vec<usize> = (0..n).collect();
        if let Some(computed) = computed {
            for (i, &p) in computed.iter().enumerate() {
                position[p] = i;
            }
        }
        let mut cursor = 0;
        for (p, &i) in position.iter().enumerate() {
            let (first, end) = (batch.indptr[i], batch.indptr[i + 1]);
            let next = cursor + end - first;
            self.log_likelihood[p].write(batch.log_likelihood[i]);
            write_all(&mut self.region[cursor..next], &batch.region[first..end]);
            write_all(&mut self.m0[cursor..next], &batch.m0[first..end]);
            write_all(&mut self.m1[cursor * s..next * s], &batch.m1[first * s..end * s]);
            write_all(&mut self.m2[cursor * s * s..next * s * s], &batch.m2[first * s * s..end * s * s]);
            self.indptr[p].write(self.entry_offset + next);
            cursor = next;
        }
        assert_eq!(cursor, self.region.len(), "a batch's entries fill its slots");
    }
}

/// Copies `source` into `destination` (`write_copy_of_slice`, which needs Rust 1.93).
fn write_all<T: Copy>(destination: &mut [MaybeUninit<T>], source: &[T]) {
    for (slot, &value) in destination.iter_mut().zip(source) {
        slot.write(value);
    }
}

/// Posterior weights below this are not stored (they are below `exp(-PRUNE_GAP)` relative to
/// the largest term, or underflow).
const MIN_WEIGHT: f64 = 1e-300;

pub fn e_step<I: RegionIntegrator>(
    algebra: &RegionAlgebra,
    integrator: &I,
    x: DMatrixView<f64>,
    cancel: &Cancel,
) -> Result<EStep> {
    let s = algebra.s;
    let start = |points| (EStep::with_capacity(points, algebra.n_regions().min(MAX_RESERVED_REGIONS), s), PointTerms::default());
    // Region by region, in log space, where the interval path declined or does not apply.
    let by_regions = |(out, terms): &mut (EStep, PointTerms), lk: &[f64], mu: &[f64]| {
        terms.compute_by_regions(integrator, lk, mu, s);
        out.push_point(terms, s);
    };
    let batches = if let Some(intervals) = integrator.intervals() {
        // The blocks take the points out of order: each batch's statistics are stored in the
        // order computed, with the point of each, and put in point order at the end.
        // Room for one more block: a block grows the arrays by all its computed regions before
        // it keeps some, and growing them at the last block of a batch would copy the batch.
        let start = |points| {
            let (mut stats, terms) = start(points);
            stats.reserve(interval::LANES * algebra.n_regions(), 1);
            ((stats, terms), Vec::with_capacity(points))
        };
        let batches = map_interval_batches::<_, true>(algebra, intervals, x, cancel, start, |(state, computed), block, points, local| {
            state.0.push_block(block, points.len());
            computed.extend(points.iter().enumerate().filter(|&(l, _)| !block.declined(l)).map(|(_, &p)| p));
            // The declined points after the others, in the log-space path.
            for (_, &p) in points.iter().enumerate().filter(|&(l, _)| block.declined(l)) {
                let (lk, mu) = local(p);
                by_regions(state, &lk, &mu);
                computed.push(p);
            }
        })?;
        batches.into_iter().map(|((stats, _), computed)| (stats, Some(computed))).collect()
    } else {
        map_batches(algebra, x, cancel, start, by_regions)?.into_iter().map(|(stats, _)| (stats, None)).collect()
    };
    let out = EStep::concat(batches, s)?;
    no_nan_log_likelihood(&out.log_likelihood)?;
    Ok(out)
}

/// The DGN: a partition of its decoder and the per-region algebra for a noise variance.
pub struct Model {
    pub partition: Arc<Partition>,
    pub algebra: RegionAlgebra,
}

#[cfg(test)]
mod tests;
