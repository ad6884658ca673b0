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

pub mod algebra;
mod batching;
pub mod elbo;
pub mod estep;
pub mod integrator;
pub mod interval;
pub mod posterior;
mod pruned;
pub mod region_sums;
pub mod sampling;

pub use crate::gauss::normal::log_sum_exp;
pub use crate::gauss::IntegrationSettings;
pub use algebra::{LocalGaussians, RegionAlgebra};
pub use estep::{e_step, EStep};
pub use integrator::{GaussIntegrator, IntervalIntegrator, PolygonIntegrator, PolyhedronIntegrator};

use std::sync::Arc;

use nalgebra::DMatrixView;

use crate::cancel::Cancel;
use crate::error::Result;
use crate::partition::Partition;
use batching::{map_batches, map_interval_batches, map_pruned_batches};

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
    fn moments_into_loose(
        &self,
        region: usize,
        mean: &[f64],
        cond_mean: &mut [f64],
        cond_second: &mut [f64],
        _looseness: f64,
    ) -> f64 {
        self.moments_into(region, mean, cond_mean, cond_second)
    }

    /// Writes `E[z | region]` (S) and the central `Cov[z | region]` (S x S row-major) and
    /// returns the log mass. The posterior's covariance sums these: from `E[z z^T | region]` by
    /// subtraction (this default), a region whose mean is far from 0 against its spread would
    /// lose the covariance's digits, so integrators that can form it directly do.
    fn central_moments_into(&self, region: usize, mean: &[f64], cond_mean: &mut [f64], cond_cov: &mut [f64]) -> f64 {
        let log_mass = self.moments_into(region, mean, cond_mean, cond_cov);
        let s = mean.len();
        for a in 0..s {
            for b in 0..s {
                cond_cov[a * s + b] -= cond_mean[a] * cond_mean[b];
            }
        }
        log_mass
    }

    fn moments(&self, region: usize, mean: &[f64]) -> RegionMoments {
        let s = mean.len();
        let mut out = RegionMoments { log_mass: 0.0, mean: vec![0.0; s], second: vec![0.0; s * s] };
        out.log_mass = self.moments_into(region, mean, &mut out.mean, &mut out.second);
        out
    }

    /// `log p(x_n)` for every column of `x` (`D x N`), as [`log_likelihood`] returns it: by
    /// default each point visits its regions through the per-region methods above; an
    /// integrator with a faster way over many points (intervals) overrides it.
    fn log_likelihood_batch(&self, algebra: &RegionAlgebra, x: DMatrixView<f64>, cancel: &Cancel) -> Result<Vec<f64>>
    where
        Self: Sized,
    {
        log_likelihood_through_regions(algebra, self, x, cancel)
    }

    /// The E-step statistics of the columns of `x`, as [`e_step`] returns them; the default and
    /// overrides as for [`Self::log_likelihood_batch`].
    fn e_step_batch(&self, algebra: &RegionAlgebra, x: DMatrixView<f64>, cancel: &Cancel) -> Result<EStep>
    where
        Self: Sized,
    {
        estep::e_step_through_regions(algebra, self, x, cancel)
    }

    /// The posterior terms of one point into `terms`; the default and overrides as for
    /// [`Self::log_likelihood_batch`].
    fn point_terms(&self, terms: &mut PointTerms, log_kappa: &[f64], mu: &[f64], s: usize)
    where
        Self: Sized,
    {
        terms.compute_by_regions(self, log_kappa, mu, s);
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

/// `log p(x)` of one point through the integrator's per-region methods, in log space.
fn log_likelihood_by_regions<I: RegionIntegrator>(
    integrator: &I,
    log_kappa: &[f64],
    mu: &[f64],
    s: usize,
    bounds: &mut Vec<f64>,
) -> f64 {
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
    let out = integrator.log_likelihood_batch(algebra, x, cancel)?;
    no_nan_log_likelihood(&out)?;
    Ok(out)
}

/// [`log_likelihood`] on the S = 1 interval path: blocks of points in linear space, and the
/// points a block declines through the per-region methods.
fn log_likelihood_on_intervals(
    algebra: &RegionAlgebra,
    integrator: &IntervalIntegrator,
    x: DMatrixView<f64>,
    cancel: &Cancel,
) -> Result<Vec<f64>> {
    // Results by position in the batch: the blocks take the points out of order.
    let start = |points| (vec![f64::NAN; points], Vec::new());
    let batches = map_interval_batches::<_, false>(
        algebra,
        integrator.intervals(),
        x,
        cancel,
        start,
        |(out, bounds), block, points, local| {
            for (l, &p) in points.iter().enumerate() {
                out[p] = block.log_likelihood(l).unwrap_or_else(|| {
                    let (lk, mu) = local(p);
                    log_likelihood_by_regions(integrator, &lk, &mu, 1, bounds)
                });
            }
        },
    )?;
    Ok(batches.into_iter().flat_map(|(out, _)| out).collect())
}

/// [`log_likelihood`] through the per-region methods: for S >= 2 by the pruned visit, for S = 1
/// (test integrators) from the forms of `local_gaussians`.
fn log_likelihood_through_regions<I: RegionIntegrator>(
    algebra: &RegionAlgebra,
    integrator: &I,
    x: DMatrixView<f64>,
    cancel: &Cancel,
) -> Result<Vec<f64>> {
    let batches: Vec<Vec<f64>> = if algebra.s == 1 {
        let start = |points| (Vec::with_capacity(points), Vec::new());
        map_batches(algebra, x, cancel, start, |(out, bounds), lk, mu| {
            out.push(log_likelihood_by_regions(integrator, lk, mu, 1, bounds))
        })?
        .into_iter()
        .map(|(out, _)| out)
        .collect()
    } else {
        let forms = pruned::UpperForms::new(algebra);
        let start = |points| (Vec::with_capacity(points), pruned::PointRegions::default());
        map_pruned_batches(algebra, &forms, x, cancel, start, |(out, regions), batch, p| {
            out.push(pruned::log_likelihood_pruned(integrator, batch, p, regions))
        })?
        .into_iter()
        .map(|(out, _)| out)
        .collect()
    };
    Ok(batches.into_iter().flatten().collect())
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
pub struct PointTerms {
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
        integrator.point_terms(self, log_kappa, mu, s);
    }

    /// [`Self::compute`] on the S = 1 interval path: one point is a block of one, and a point
    /// the block declines goes through the per-region methods.
    fn compute_on_intervals(&mut self, integrator: &IntervalIntegrator, log_kappa: &[f64], mu: &[f64], s: usize) {
        let mut block = interval::Block::default();
        block.evaluate::<true>(integrator.intervals(), &interval::Local::Stored { log_kappa, mu }, &[0]);
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
        self.normalise();
    }

    /// Turns the terms `log(kappa_q Phi_q)` in `weight` into posterior weights, and sets the
    /// log-likelihood.
    fn normalise(&mut self) {
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

pub(crate) fn moment_terms<I: RegionIntegrator>(integrator: &I, log_kappa: &[f64], mu: &[f64], s: usize) -> PointTerms {
    let mut terms = PointTerms::default();
    terms.compute(integrator, log_kappa, mu, s);
    terms
}

/// The DGN: a partition of its decoder and the per-region algebra for a noise variance.
pub struct Model {
    pub partition: Arc<Partition>,
    pub algebra: RegionAlgebra,
}

#[cfg(test)]
mod tests;
