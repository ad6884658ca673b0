//! Exact inference (DESIGN.md §3, §5): the marginal log-likelihood, the posterior over regions
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

/// The per-region quantities that do not depend on x, in a frame centred on the decoder's output
/// at the prior's mode: every `b_q` is stored as `b_q - c` with `c = g(0)`, and the points come in
/// as `x - c` ([`Self::centred`]). `log kappa_q` is formed from the expanded quadratic
/// `x^T Psi^-1 x - 2 b_q^T Psi^-1 x + b_q^T Psi^-1 b_q`, which loses `eps` times its largest term:
/// uncentred, data offset by 1e8 (all of it, and the decoder's output bias) lost everything
/// (`log p(x)` off by tens, NaN for some points). Centred, the terms are of the size of
/// `(x - g(0))^T Psi^-1 (x - g(0))`, and the translation changes no `A_q`, `mu_q` or `kappa_q`.
pub struct RegionAlgebra {
    s: usize,
    d: usize,
    /// `c = g(0)`, the origin of the frame of `b_q` and of the points.
    centre: Vec<f64>,
    /// `Psi^{-1} [A_1 | ... | A_R]`, `D x RS`, transposed for the batched product: `RS x D`.
    at_psi: DMatrix<f64>,
    /// `[b_1 | ... | b_R]^T Psi^{-1}`: `R x D`.
    bt_psi: DMatrix<f64>,
    /// `Sigma_q`, S x S row-major per region.
    sigma: Vec<f64>,
    /// Lower Cholesky factor `L_q` of `Sigma_q` (S x S row-major) and `log det Sigma_q`.
    chol: Vec<f64>,
    log_det_sigma: Vec<f64>,
    /// `A_q^T Psi^{-1} b_q`, length S per region.
    v: Vec<f64>,
    /// `-D/2 log 2pi - 1/2 log det Psi + 1/2 log det Sigma_q - 1/2 b_q^T Psi^{-1} b_q`.
    constant: Vec<f64>,
    inv_psi: Vec<f64>,
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
        let centre: Vec<f64> = dec.forward_batch(DMatrix::<f64>::zeros(s, 1).as_view()).column(0).iter().copied().collect();
        let inv_psi: Vec<f64> = noise_var.iter().map(|v| 1.0 / v).collect();
        let log_det_psi: f64 = noise_var.iter().map(|v| v.ln()).sum();
        let mut at_psi = DMatrix::zeros(r * s, d);
        let mut bt_psi = DMatrix::zeros(r, d);
        let mut sigma = vec![0.0; r * s * s];
        let mut chol_sigma = vec![0.0; r * s * s];
        let mut log_det_sigma = vec![0.0; r];
        let mut v = vec![0.0; r * s];
        let mut constant = vec![0.0; r];
        for q in 0..r {
            let a = partition.a(q);
            let b: Vec<f64> = partition.b(q).iter().zip(&centre).map(|(b, c)| b - c).collect();
            // Precision I + A^T Psi^{-1} A, then Sigma by Cholesky inversion.
            let mut precision = DMatrix::<f64>::identity(s, s);
            for i in 0..d {
                for j in 0..s {
                    at_psi[(q * s + j, i)] = a[i * s + j] * inv_psi[i];
                    for k in 0..s {
                        precision[(j, k)] += a[i * s + j] * inv_psi[i] * a[i * s + k];
                    }
                }
                bt_psi[(q, i)] = b[i] * inv_psi[i];
            }
            let chol = nalgebra::Cholesky::new(precision).expect("I + A^T Psi^-1 A is positive definite");
            let log_det_precision: f64 = 2.0 * chol.l().diagonal().iter().map(|x| x.ln()).sum::<f64>();
            let cov = chol.inverse();
            for j in 0..s {
                for k in 0..s {
                    sigma[q * s * s + j * s + k] = 0.5 * (cov[(j, k)] + cov[(k, j)]);
                }
                v[q * s + j] = (0..d).map(|i| a[i * s + j] * inv_psi[i] * b[i]).sum();
            }
            let l = crate::gauss::lower_cholesky(&sigma[q * s * s..(q + 1) * s * s], s).expect("Sigma_q is positive definite");
            chol_sigma[q * s * s..(q + 1) * s * s].copy_from_slice(&l);
            log_det_sigma[q] = -log_det_precision;
            let b_psi_b: f64 = (0..d).map(|i| b[i] * b[i] * inv_psi[i]).sum();
            constant[q] = -0.5 * d as f64 * LOG_2PI - 0.5 * log_det_psi - 0.5 * log_det_precision - 0.5 * b_psi_b;
        }
        Ok(RegionAlgebra { s, d, centre, at_psi, bt_psi, sigma, chol: chol_sigma, log_det_sigma, v, constant, inv_psi })
    }

    /// The points `x` (`D x n`, a column per point) in the algebra's frame: `x - g(0)`. Every
    /// method taking points takes them centred.
    pub fn centred(&self, x: DMatrixView<f64>) -> DMatrix<f64> {
        let mut out = x.into_owned();
        for mut column in out.column_iter_mut() {
            for (v, c) in column.iter_mut().zip(&self.centre) {
                *v -= c;
            }
        }
        out
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

    /// `log kappa_q(x)` and `mu_q(x)` for every region and every point of a batch
    /// (`x` is `D x n`, a column per point): two matrix products, then O(S^2) per pair.
    pub fn local_gaussians(&self, x: DMatrixView<f64>) -> LocalGaussians {
        let (s, r, n) = (self.s, self.n_regions(), x.ncols());
        let atx = &self.at_psi * x; // RS x n: A_q^T Psi^-1 x
        let btx = &self.bt_psi * x; // R x n: b_q^T Psi^-1 x
        let mut log_kappa = vec![0.0; n * r];
        let mut mu = vec![0.0; n * r * s];
        if s == 1 {
            // For every region of every point, so on the widest vectors.
            let products = (atx, btx);
            with_wide_vectors(LocalGaussiansS1 { algebra: self, x, products: &products, log_kappa: &mut log_kappa, mu: &mut mu, intervals: None });
            return LocalGaussians { s, r, log_kappa, mu };
        }
        for p in 0..n {
            let xpx: f64 = (0..self.d).map(|i| x[(i, p)] * x[(i, p)] * self.inv_psi[i]).sum();
            let (lk, m) = (&mut log_kappa[p * r..(p + 1) * r], &mut mu[p * r * s..(p + 1) * r * s]);
            // Written for any S, inlined for S = 2 so that its loops unroll.
            match s {
                2 => self.local_gaussians_of_point(2, atx.column(p).as_slice(), btx.column(p).as_slice(), xpx, lk, m),
                _ => self.local_gaussians_of_point(s, atx.column(p).as_slice(), btx.column(p).as_slice(), xpx, lk, m),
            }
        }
        LocalGaussians { s, r, log_kappa, mu }
    }

    /// At S = 1, [`Self::local_gaussians`] and each point's region of the largest bound, in one
    /// pass (for many outputs; with a few, the interval path's blocks form the local Gaussians
    /// from the points again, which costs less than gathering them).
    fn local_gaussians_and_best_regions_s1(&self, x: DMatrixView<f64>, intervals: &interval::Intervals) -> (LocalGaussians, Vec<usize>) {
        let (r, n) = (self.n_regions(), x.ncols());
        let products = (&self.at_psi * x, &self.bt_psi * x);
        let (mut log_kappa, mut mu) = (vec![0.0; n * r], vec![0.0; n * r]);
        let kernel = LocalGaussiansS1 { algebra: self, x, products: &products, log_kappa: &mut log_kappa, mu: &mut mu, intervals: Some(intervals) };
        let best = with_wide_vectors(kernel);
        (LocalGaussians { s: 1, r, log_kappa, mu }, best)
    }

    /// At S = 1, what the interval path's blocks form `log kappa_q` and `mu_q` from.
    fn s1_forms<'a>(&'a self, x: DMatrixView<'a, f64>) -> interval::Forms<'a> {
        interval::Forms {
            x,
            at_psi: self.at_psi.as_slice(),
            bt_psi: self.bt_psi.as_slice(),
            v: &self.v,
            sigma: &self.sigma,
            constant: &self.constant,
            inv_psi: &self.inv_psi,
        }
    }

    /// [`Self::local_gaussians_of_point`] for S = 1, as one pass over flat arrays that the
    /// compiler vectorises across regions (at S = 1 this runs for every region of every point).
    #[inline(always)]
    fn local_gaussians_of_point_s1(&self, atx: &[f64], btx: &[f64], xpx: f64, log_kappa: &mut [f64], mu: &mut [f64]) {
        let terms = atx.iter().zip(btx).zip(&self.v).zip(&self.sigma).zip(&self.constant);
        for ((lk, m), ((((a, bx), v), sigma), constant)) in log_kappa.iter_mut().zip(mu.iter_mut()).zip(terms) {
            let u = a - v;
            *m = sigma * u;
            *lk = constant - 0.5 * xpx + bx + 0.5 * u * *m;
        }
    }

    /// One point's `log kappa_q` and `mu_q = Sigma_q u_q`, `u_q = A_q^T Psi^-1 x - v_q`, from
    /// its columns of the two products.
    #[inline(always)]
    fn local_gaussians_of_point(&self, s: usize, atx: &[f64], btx: &[f64], xpx: f64, log_kappa: &mut [f64], mu: &mut [f64]) {
        let mut u = [0.0; crate::gauss::sobol::MAX_DIM];
        let u = &mut u[..s];
        for (q, (lk, m)) in log_kappa.iter_mut().zip(mu.chunks_exact_mut(s)).enumerate() {
            for ((uj, a), v) in u.iter_mut().zip(&atx[q * s..(q + 1) * s]).zip(&self.v[q * s..(q + 1) * s]) {
                *uj = a - v;
            }
            let mut quad = 0.0;
            for (mj, row) in m.iter_mut().zip(self.sigma[q * s * s..(q + 1) * s * s].chunks_exact(s)) {
                let acc: f64 = row.iter().zip(u.iter()).map(|(a, b)| a * b).sum();
                *mj = acc;
            }
            for (uj, mj) in u.iter().zip(m.iter()) {
                quad += uj * mj;
            }
            *lk = self.constant[q] - 0.5 * xpx + btx[q] + 0.5 * quad;
        }
    }
}

/// [`RegionAlgebra::local_gaussians`] at S = 1 from the two products, and with `intervals`
/// each point's region of the largest bound.
struct LocalGaussiansS1<'a> {
    algebra: &'a RegionAlgebra,
    x: DMatrixView<'a, f64>,
    /// `A^T Psi^-1 X` and `B^T Psi^-1 X`.
    products: &'a (DMatrix<f64>, DMatrix<f64>),
    log_kappa: &'a mut [f64],
    mu: &'a mut [f64],
    intervals: Option<&'a interval::Intervals>,
}

impl VectorKernel for LocalGaussiansS1<'_> {
    type Output = Vec<usize>;

    #[inline(always)]
    fn run<M: MulAdd>(self) -> Vec<usize> {
        let LocalGaussiansS1 { algebra, x, products: (atx, btx), log_kappa, mu, intervals } = self;
        let r = algebra.n_regions();
        let mut bounds = vec![0.0; r];
        let mut best = Vec::with_capacity(if intervals.is_some() { x.ncols() } else { 0 });
        for (p, (lk, m)) in log_kappa.chunks_exact_mut(r).zip(mu.chunks_exact_mut(r)).enumerate() {
            let xpx: f64 = x.column(p).iter().zip(&algebra.inv_psi).map(|(v, w)| v * v * w).sum();
            algebra.local_gaussians_of_point_s1(&atx.as_slice()[p * r..(p + 1) * r], &btx.as_slice()[p * r..(p + 1) * r], xpx, lk, m);
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
        Ok(per_batch(x.columns(first, end - first)))
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
        for p in 0..points.ncols() {
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
    let x = algebra.centred(x);
    let x = x.as_view();
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
    Ok(batches.into_iter().flat_map(|(out, _)| out).collect())
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
    fn concat(mut batches: Vec<(EStep, Option<Vec<usize>>)>, s: usize) -> EStep {
        if let [(_, None)] = batches.as_slice() {
            return batches.pop().unwrap().0;
        }
        let points: usize = batches.iter().map(|(b, _)| b.log_likelihood.len()).sum();
        let entries: usize = batches.iter().map(|(b, _)| b.region.len()).sum();
        let mut out = EStep::with_capacity(points, 0, s);
        out.reserve(entries, s);
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
        out
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
    let x = algebra.centred(x);
    let x = x.as_view();
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
    Ok(EStep::concat(batches, s))
}

/// The DGN: a partition of its decoder and the per-region algebra for a noise variance.
pub struct Model {
    pub partition: Arc<Partition>,
    pub algebra: RegionAlgebra,
}

#[cfg(test)]
mod tests;
