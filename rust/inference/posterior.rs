//! The exact posterior `p(z | x)` of one point: a mixture over regions of Gaussians
//! `N(mu_q, Sigma_q)` truncated to the regions, with weights `kappa_q Phi_q / p(x)`.

use nalgebra::DMatrixView;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rand_pcg::Pcg64;

use crate::gauss::nearest::nearest_point;
use crate::gauss::normal::truncated_normal_central;
use super::{moment_terms, RegionAlgebra, RegionIntegrator, LOG_2PI};
use crate::error::{Error, Result};
use crate::partition::Partition;

/// Proposals tried per posterior sample before giving up (the acceptance rate of the tilted
/// proposal is bounded below for regions of positive width; this only guards slivers).
const MAX_PROPOSALS: usize = 1_000_000;

/// The posterior of one point; the partition and the algebra it was built from are passed
/// back to the methods that need them.
#[derive(Clone, Debug)]
pub struct PointPosterior {
    pub log_likelihood: f64,
    /// `log kappa_q(x)` for every region.
    pub log_kappa: Vec<f64>,
    /// `mu_q(x)` for every region, `R x S`.
    pub mu: Vec<f64>,
    /// Posterior probability of every region (zero where pruned).
    pub weights: Vec<f64>,
    /// `E[z | x]` and `Cov[z | x]` (S x S).
    pub mean: Vec<f64>,
    pub cov: Vec<f64>,
}

/// The region's constraints in whitened coordinates `w = L^{-1}(z - mu)`: `F w <= e` with
/// `F = G L`, `e = h - G mu`.
fn whitened_constraints(partition: &Partition, algebra: &RegionAlgebra, q: usize, mu: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let s = algebra.latent_dim();
    let l = algebra.chol(q);
    let facets = partition.facets(q);
    let mut f = Vec::with_capacity(facets.len() * s);
    let mut e = Vec::with_capacity(facets.len());
    for facet in facets {
        for j in 0..s {
            f.push((0..s).map(|k| facet.normal[k] * l[k * s + j]).sum::<f64>());
        }
        e.push(facet.offset - facet.normal.iter().zip(mu).map(|(g, m)| g * m).sum::<f64>());
    }
    (f, e)
}

/// `L^{-1} (z - mu)` by forward substitution.
fn whiten(l: &[f64], s: usize, z: &[f64], mu: &[f64]) -> Vec<f64> {
    let mut w = vec![0.0; s];
    for i in 0..s {
        let mut v = z[i] - mu[i];
        for k in 0..i {
            v -= l[i * s + k] * w[k];
        }
        w[i] = v / l[i * s + i];
    }
    w
}

fn unwhiten(l: &[f64], s: usize, w: &[f64], mu: &[f64]) -> Vec<f64> {
    (0..s).map(|i| mu[i] + (0..=i).map(|k| l[i * s + k] * w[k]).sum::<f64>()).collect()
}

impl PointPosterior {
    pub fn new<I: RegionIntegrator>(algebra: &RegionAlgebra, integrator: &I, x: &[f64]) -> Self {
        let s = algebra.latent_dim();
        let r = algebra.n_regions();
        let x = algebra.centred(DMatrixView::from_slice(x, x.len(), 1));
        let local = algebra.local_gaussians(x.as_view());
        let (lk, mu) = local.point(0);
        let terms = moment_terms(integrator, lk, mu, s);
        let mut weights = vec![0.0; r];
        let mut mean = vec![0.0; s];
        for (k, (&q, &w)) in terms.region.iter().zip(&terms.weight).enumerate() {
            weights[q] = w;
            if w > 0.0 {
                for j in 0..s {
                    mean[j] += w * terms.mean[k * s + j];
                }
            }
        }
        // The law of total variance, sum_q w_q (Cov[z | q] + (m_q - m)(m_q - m)^T), rather than
        // E[z z^T] - m m^T: a posterior narrow against its distance from 0 would lose its digits
        // to that difference. At S = 1 each region's variance comes from the truncated normal's
        // own (accurate also for short and far intervals); elsewhere from the region's moments.
        let mut cov = vec![0.0; s * s];
        for (k, (&q, &w)) in terms.region.iter().zip(&terms.weight).enumerate() {
            if w <= 0.0 {
                continue;
            }
            let m_q = &terms.mean[k * s..(k + 1) * s];
            let region_variance = integrator.intervals().map(|intervals| {
                let (lo, hi, sd) = intervals.interval(q);
                truncated_normal_central(mu[q], sd, lo, hi).2
            });
            for a in 0..s {
                for b in 0..s {
                    let within = match region_variance {
                        Some(variance) => variance,
                        None => terms.second[k * s * s + a * s + b] - m_q[a] * m_q[b],
                    };
                    cov[a * s + b] += w * (within + (m_q[a] - mean[a]) * (m_q[b] - mean[b]));
                }
            }
        }
        let log_likelihood = terms.log_likelihood;
        PointPosterior { log_likelihood, log_kappa: lk.to_vec(), mu: mu.to_vec(), weights, mean, cov }
    }

    fn mu(&self, algebra: &RegionAlgebra, q: usize) -> &[f64] {
        let s = algebra.latent_dim();
        &self.mu[q * s..(q + 1) * s]
    }

    /// `log p(z | x)` at a latent point.
    pub fn log_density(&self, partition: &Partition, algebra: &RegionAlgebra, z: &[f64]) -> f64 {
        let s = algebra.latent_dim();
        let q = partition.locate(z);
        let w = whiten(algebra.chol(q), s, z, self.mu(algebra, q));
        let log_normal = -0.5 * (s as f64 * LOG_2PI + algebra.log_det_sigma(q) + w.iter().map(|v| v * v).sum::<f64>());
        self.log_kappa[q] + log_normal - self.log_likelihood
    }

    /// The most probable latent point: each region's constrained maximum, visiting regions in
    /// decreasing order of their unconstrained peak and stopping when no peak can win.
    pub fn map(&self, partition: &Partition, algebra: &RegionAlgebra) -> Vec<f64> {
        let s = algebra.latent_dim();
        let r = algebra.n_regions();
        let peak = |q: usize| self.log_kappa[q] - 0.5 * (s as f64 * LOG_2PI + algebra.log_det_sigma(q));
        let mut order: Vec<usize> = (0..r).collect();
        order.sort_unstable_by(|&a, &b| peak(b).total_cmp(&peak(a)).then(a.cmp(&b)));
        let mut best = (f64::NEG_INFINITY, vec![0.0; s]);
        for q in order {
            if peak(q) <= best.0 {
                break;
            }
            let (f, e) = whitened_constraints(partition, algebra, q, self.mu(algebra, q));
            let l = algebra.chol(q);
            let start = whiten(l, s, partition.interior_point(q), self.mu(algebra, q));
            let w = nearest_point(&f, &e, s, &vec![0.0; s], &start);
            let value = peak(q) - 0.5 * w.iter().map(|v| v * v).sum::<f64>();
            if value > best.0 {
                best = (value, unwhiten(l, s, &w, self.mu(algebra, q)));
            }
        }
        best.1
    }

    /// `n` exact independent samples (`n x S` row-major): a region drawn by posterior weight,
    /// then the truncated Gaussian in it by accept-reject from `N(w*, I)` in whitened
    /// coordinates, `w*` the region's point nearest the mean; the acceptance probability
    /// `exp(-(y - w*) . w*)` is at most one on the region, which is convex.
    pub fn sample(&self, partition: &Partition, algebra: &RegionAlgebra, n: usize, seed: u64) -> Result<Vec<f64>> {
        let s = algebra.latent_dim();
        let mut rng = Pcg64::seed_from_u64(seed);
        let total: f64 = self.weights.iter().sum();
        let mut out = Vec::with_capacity(n * s);
        let mut prepared: std::collections::HashMap<usize, (Vec<f64>, Vec<f64>, Vec<f64>)> = Default::default();
        for _ in 0..n {
            let mut u = rng.random::<f64>() * total;
            let mut q = self.weights.iter().rposition(|&w| w > 0.0).unwrap_or(0);
            for (i, w) in self.weights.iter().enumerate() {
                if u < *w {
                    q = i;
                    break;
                }
                u -= w;
            }
            let (f, e, centre) = prepared.entry(q).or_insert_with(|| {
                let (f, e) = whitened_constraints(partition, algebra, q, self.mu(algebra, q));
                let start = whiten(algebra.chol(q), s, partition.interior_point(q), self.mu(algebra, q));
                let centre = nearest_point(&f, &e, s, &vec![0.0; s], &start);
                (f, e, centre)
            });
            let m = e.len();
            let mut accepted = None;
            for _ in 0..MAX_PROPOSALS {
                let y: Vec<f64> = centre.iter().map(|c| c + rng.sample::<f64, _>(StandardNormal)).collect();
                let inside = (0..m).all(|i| (0..s).map(|j| f[i * s + j] * y[j]).sum::<f64>() <= e[i]);
                if !inside {
                    continue;
                }
                let tilt: f64 = y.iter().zip(centre.iter()).map(|(yi, ci)| (yi - ci) * ci).sum();
                if rng.random::<f64>() < (-tilt).exp() {
                    accepted = Some(y);
                    break;
                }
            }
            let y = accepted.ok_or_else(|| {
                Error::Numerical(format!("could not sample region {q}: it is too thin for the rejection sampler"))
            })?;
            out.extend(unwhiten(algebra.chol(q), s, &y, self.mu(algebra, q)));
        }
        Ok(out)
    }
}
