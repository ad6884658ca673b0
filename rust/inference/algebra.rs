//! The per-region Gaussian algebra of inference (docs/design.md §3): everything about region q
//! that does not depend on x (`Sigma_q`, its factors, the gain `Sigma_q A_q^T Psi^-1`), and the
//! local Gaussians `kappa_q(x) N(z; mu_q(x), Sigma_q)` of a batch of points.

use nalgebra::{DMatrix, DMatrixView};

use super::{interval, LOG_2PI};
use crate::error::{invalid, Result};
use crate::gauss::normal_batch::{with_wide_vectors, MulAdd, VectorKernel};
use crate::partition::Partition;

/// Where the completed-square form of `log kappa` may be off by more than this, relative to
/// `max(1, |log kappa|)` (by the bound of [`RegionAlgebra::cheap_form_error`]), the region's
/// `log kappa` is formed again from the residual at its posterior mean (docs/design.md §3). A tenth
/// of the 1e-9 relative accuracy promised for `log p`; the bound is worst-case (typical errors
/// are ~sqrt(D) times smaller), and a tighter threshold sent S = 1 points at noise 1e-5 (where
/// the completed square is good to ~1e-11) through the slower form.
pub(super) const STABLE_FORM_TOLERANCE: f64 = 1e-10;

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
/// The engine forms it eight coordinates at a time ([`residuals`]); this one-at-a-time form is
/// the tests' statement of it.
#[cfg(test)]
pub(super) fn compensated_residual(x: f64, b: f64, a: &[f64], m: &[f64]) -> f64 {
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
/// `r_i` rounded plainly or (`COMPENSATED`) carried in double-double arithmetic ([`two_sum`],
/// [`two_product`]: about one rounding of the result however large `x`, `b` and `A m`), in
/// [`SUM_LANES`] interleaved partial sums added pairwise at the end. One running sum is a chain
/// of dependent additions whose latency, not the arithmetic, sets its time: at D = 784 these
/// residual forms of `log kappa`, which many (point, region) pairs take there, were three
/// quarters of the S = 1 E-step. Each `r_i` is the same value as one at a time; each partial
/// sum has at most D / 8 + 1 terms, so the sum rounds no worse than one running sum (the error
/// bounds that use it assume a sum of length D). The last coordinates go through the same steps,
/// padded with zeros (which add exact zeros): a scalar loop for them beside the vector one made
/// the compiler keep two lanes per vector in both.
#[inline(always)]
fn residual_square_sum<const COMPENSATED: bool>(x: &[f64], b: &[f64], a: &[f64], m: &[f64], inv_psi: &[f64]) -> f64 {
    const K: usize = SUM_LANES;
    const MAX_S: usize = crate::gauss::sobol::MAX_DIM;
    let (d, s) = (x.len(), m.len());
    let whole = d - d % K;
    let mut partial = [0.0f64; K];
    let chunk = |v: &[f64], start: usize| -> [f64; K] { v[start..start + K].try_into().expect("K entries") };
    // The tail's values, zero-padded to K (and A's rows to K x S).
    let tail = |v: &[f64]| -> [f64; K] {
        let mut out = [0.0; K];
        out[..d - whole].copy_from_slice(&v[whole..d]);
        out
    };
    // Each step on arrays of K, and S = 1 in loops of its own (A's column contiguous, no dot
    // product): with slices, or with both cases in one loop, the compiler kept two lanes per
    // vector, not K.
    if s == 1 {
        let m = m[0];
        for start in (0..whole).step_by(K) {
            let r = residuals_s1::<COMPENSATED>(&chunk(x, start), &chunk(b, start), &chunk(a, start), m);
            add_squares(&mut partial, &r, &chunk(inv_psi, start));
        }
        if whole < d {
            let r = residuals_s1::<COMPENSATED>(&tail(x), &tail(b), &tail(a), m);
            add_squares(&mut partial, &r, &tail(inv_psi));
        }
    } else {
        for start in (0..whole).step_by(K) {
            let r = residuals::<COMPENSATED>(&chunk(x, start), &chunk(b, start), &a[start * s..(start + K) * s], m);
            add_squares(&mut partial, &r, &chunk(inv_psi, start));
        }
        if whole < d {
            let mut rows = [0.0; K * MAX_S];
            rows[..(d - whole) * s].copy_from_slice(&a[whole * s..d * s]);
            let r = residuals::<COMPENSATED>(&tail(x), &tail(b), &rows[..K * s], m);
            add_squares(&mut partial, &r, &tail(inv_psi));
        }
    }
    let (low, high) =
        ((partial[0] + partial[4]) + (partial[2] + partial[6]), (partial[1] + partial[5]) + (partial[3] + partial[7]));
    low + high
}

/// [`residual_square_sum`] in double-double arithmetic, as a kernel of its own.
struct CompensatedSquares<'a> {
    x: &'a [f64],
    b: &'a [f64],
    a: &'a [f64],
    m: &'a [f64],
    inv_psi: &'a [f64],
}

impl VectorKernel for CompensatedSquares<'_> {
    type Output = f64;

    #[inline(always)]
    fn run<M: MulAdd>(self) -> f64 {
        residual_square_sum::<true>(self.x, self.b, self.a, self.m, self.inv_psi)
    }
}

/// `partial[k] += r_k^2 w_k`.
#[inline(always)]
fn add_squares(partial: &mut [f64; SUM_LANES], r: &[f64; SUM_LANES], w: &[f64; SUM_LANES]) {
    for k in 0..SUM_LANES {
        partial[k] += r[k] * r[k] * w[k];
    }
}

/// `x_k - b_k - a_k m` for S = 1, plainly or in double-double arithmetic.
#[inline(always)]
fn residuals_s1<const COMPENSATED: bool>(
    x: &[f64; SUM_LANES],
    b: &[f64; SUM_LANES],
    a: &[f64; SUM_LANES],
    m: f64,
) -> [f64; SUM_LANES] {
    let mut r = [0.0f64; SUM_LANES];
    for k in 0..SUM_LANES {
        r[k] = if COMPENSATED {
            let (hi, lo) = two_sum(x[k], -b[k]);
            let (p, p_err) = two_product(a[k], m);
            let (sum, sum_err) = two_sum(hi, -p);
            sum + (lo + (sum_err - p_err))
        } else {
            x[k] - b[k] - a[k] * m
        };
    }
    r
}

/// `x_k - b_k - a_k . m` (`a`: K rows of S), plainly or in double-double arithmetic.
#[inline(always)]
fn residuals<const COMPENSATED: bool>(
    x: &[f64; SUM_LANES],
    b: &[f64; SUM_LANES],
    a: &[f64],
    m: &[f64],
) -> [f64; SUM_LANES] {
    const K: usize = SUM_LANES;
    let s = m.len();
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
    r
}

/// The per-region quantities that do not depend on x.
pub struct RegionAlgebra {
    pub(super) s: usize,
    pub(super) d: usize,
    /// `[Sigma_1 A_1^T Psi^-1 | ... ]`, `RS x D`: `mu_q = gain_q x - offset_q`.
    pub(super) gain: DMatrix<f64>,
    /// `Sigma_q A_q^T Psi^-1 b_q`, length S per region.
    pub(super) offset: Vec<f64>,
    /// `[b_1 | ... | b_R]^T Psi^{-1}`: `R x D` (S = 1's completed-square form).
    pub(super) bt_psi: DMatrix<f64>,
    /// `Sigma_q`, S x S row-major per region.
    pub(super) sigma: Vec<f64>,
    /// At S = 1, `1 / Sigma_q = 1 + A^T Psi^-1 A`.
    pub(super) precision: Vec<f64>,
    /// Lower Cholesky factor `L_q` of `Sigma_q` (S x S row-major) and `log det Sigma_q`.
    pub(super) chol: Vec<f64>,
    pub(super) log_det_sigma: Vec<f64>,
    /// `V_q` and `1 / (1 + s^2)` of [`RegionFactor`], for `Sigma_q m` in the refinement of `mu`.
    pub(super) basis: Vec<f64>,
    pub(super) shrink: Vec<f64>,
    /// `A_q` (D x S row-major) and `b_q - centre`, for the residual form.
    pub(super) a: Vec<f64>,
    pub(super) b: Vec<f64>,
    /// `g(0)`: the engine works with `x - g(0)` and `b_q - g(0)` (see [`Self::centred`]).
    pub(super) centre: Vec<f64>,
    /// `b_q^T Psi^-1 b_q`, and the largest.
    pub(super) b_psi_b: Vec<f64>,
    pub(super) largest_b_psi_b: f64,
    /// `-D/2 log 2pi - 1/2 log det Psi + 1/2 log det Sigma_q`, and that minus `b^T Psi^-1 b / 2`
    /// (the completed-square form's constant).
    pub(super) base: Vec<f64>,
    pub(super) constant: Vec<f64>,
    pub(super) inv_psi: Vec<f64>,
    /// `8 (D + S + 6) u`: the completed-square form's error is below this times
    /// `x^T Psi^-1 x + b^T Psi^-1 b` (see [`Self::cheap_form_error`]).
    pub(super) error_factor: f64,
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
        let (mut sigma, mut chol, mut basis) =
            (Vec::with_capacity(r * s * s), Vec::with_capacity(r * s * s), Vec::with_capacity(r * s * s));
        let (mut shrink, mut offset) = (Vec::with_capacity(r * s), Vec::with_capacity(r * s));
        let (mut a_all, mut b_all) = (Vec::with_capacity(r * d * s), Vec::with_capacity(r * d));
        let (mut log_det_sigma, mut b_psi_b, mut base, mut constant, mut precision) =
            (vec![0.0; r], vec![0.0; r], vec![0.0; r], vec![0.0; r], Vec::new());
        let centre: Vec<f64> = dec.forward_batch(DMatrix::zeros(s, 1).as_view()).as_slice().to_vec();
        for q in 0..r {
            let a = partition.a(q);
            let b: Vec<f64> = partition.b(q).iter().zip(&centre).map(|(b, c)| b - c).collect();
            let b = b.as_slice();
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
            centre,
            b_psi_b,
            largest_b_psi_b,
            base,
            constant,
            inv_psi,
            error_factor,
        })
    }

    /// The columns of `x` (`D x N`) less `g(0)`. Data and decoder far from the origin (an
    /// offset of 1e8 and spreads of 1) would otherwise carry `|x|^2 / psi` into every quadratic
    /// form and lose their digits to cancellation; in this frame the forms are as small as the
    /// data's spread, and the one rounding left is that of `x - g(0)` itself (`eps |x|`, the
    /// data's own). Every entry point taking points moves them here first.
    pub fn centred(&self, x: DMatrixView<f64>) -> DMatrix<f64> {
        let mut moved = x.clone_owned();
        for mut column in moved.column_iter_mut() {
            column.iter_mut().zip(&self.centre).for_each(|(v, c)| *v -= c);
        }
        moved
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
    pub(super) fn cheap_form_error(&self, q: usize, xpx: f64) -> f64 {
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
        let residual =
            |i: usize, m: &[f64]| x[i] - b[i] - a[i * s..(i + 1) * s].iter().zip(m).map(|(a, m)| a * m).sum::<f64>();
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
        // Compiled on its own for the widest vectors: inlined into the S = 1 pass, the compiler
        // kept two lanes per vector in it.
        let quad = with_wide_vectors(CompensatedSquares { x, b, a, m, inv_psi: &self.inv_psi });
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
            with_wide_vectors(LocalGaussiansS1 {
                algebra: self,
                x,
                products: &products,
                log_kappa: &mut log_kappa,
                mu: &mut mu,
                intervals: None,
            });
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
    pub(super) fn local_gaussians_and_best_regions_s1(
        &self,
        x: DMatrixView<f64>,
        intervals: &interval::Intervals,
    ) -> (LocalGaussians, Vec<usize>) {
        let (r, n) = (self.n_regions(), x.ncols());
        let products = (&self.gain * x, &self.bt_psi * x);
        let (mut log_kappa, mut mu) = (vec![0.0; n * r], vec![0.0; n * r]);
        let kernel = LocalGaussiansS1 {
            algebra: self,
            x,
            products: &products,
            log_kappa: &mut log_kappa,
            mu: &mut mu,
            intervals: Some(intervals),
        };
        let best = with_wide_vectors(kernel);
        (LocalGaussians { s: 1, r, log_kappa, mu }, best)
    }

    /// At S = 1, what the interval path's blocks form `log kappa_q` and `mu_q` from.
    pub(super) fn s1_forms<'a>(&'a self, x: DMatrixView<'a, f64>) -> interval::Forms<'a> {
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
    fn local_gaussians_of_point_s1<M: MulAdd>(
        &self,
        x: &[f64],
        gx: &[f64],
        bx: &[f64],
        xpx: f64,
        log_kappa: &mut [f64],
        mu: &mut [f64],
    ) {
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
            algebra.local_gaussians_of_point_s1::<M>(
                &column,
                &gx.as_slice()[p * r..(p + 1) * r],
                &btx.as_slice()[p * r..(p + 1) * r],
                xpx,
                lk,
                m,
            );
            if let Some(intervals) = intervals {
                best.push(intervals.best_region::<M>(lk, m, &mut bounds));
            }
        }
        best
    }
}

/// `log kappa_q(x_n)` (`n x R`) and `mu_q(x_n)` (`n x R x S`) for a batch of points.
pub struct LocalGaussians {
    pub(super) s: usize,
    pub(super) r: usize,
    pub log_kappa: Vec<f64>,
    pub mu: Vec<f64>,
}

impl LocalGaussians {
    pub fn point(&self, p: usize) -> (&[f64], &[f64]) {
        (&self.log_kappa[p * self.r..(p + 1) * self.r], &self.mu[p * self.r * self.s..(p + 1) * self.r * self.s])
    }
}

#[cfg(test)]
mod residual_sum_tests {
    use super::*;

    #[test]
    fn interleaved_residual_sums_agree_with_one_coordinate_at_a_time() {
        // D around multiples of the eight lanes (tails of every length), S = 1 and 3; values
        // with a large common offset, where the plain residual cancels and the double-double
        // one does not. Each r_i is formed as one at a time would form it, so the sums differ
        // only in the order of addition: within (2 D u) times the sum of the (positive) terms.
        for s in [1usize, 3] {
            for d in [1usize, 7, 8, 9, 16, 23, 784] {
                let x: Vec<f64> = (0..d).map(|i| 1e8 + ((i * 37) % 11) as f64 * 0.25).collect();
                let b: Vec<f64> = (0..d).map(|i| 1e8 - ((i * 13) % 7) as f64 * 0.5).collect();
                let a: Vec<f64> = (0..d * s).map(|k| ((k * 29) % 17) as f64 * 0.01 - 0.08).collect();
                let m: Vec<f64> = (0..s).map(|j| 0.3 + j as f64).collect();
                let w: Vec<f64> = (0..d).map(|i| 1.0 + (i % 3) as f64).collect();
                let reference: f64 = (0..d)
                    .map(|i| {
                        let r = compensated_residual(x[i], b[i], &a[i * s..(i + 1) * s], &m);
                        r * r * w[i]
                    })
                    .sum();
                let sum = residual_square_sum::<true>(&x, &b, &a, &m, &w);
                assert!(
                    (sum - reference).abs() <= 2.0 * d as f64 * f64::EPSILON * reference,
                    "{s} {d} {sum} {reference}"
                );
                // The plain form rounds x - b once (exact here: both within a factor 2 of each
                // other) and the product a m once more per term.
                let plain = residual_square_sum::<false>(&x, &b, &a, &m, &w);
                assert!((plain - reference).abs() <= 1e-12 * reference, "{s} {d} {plain} {reference}");
            }
        }
    }
}
