//! The exact posterior `p(z | x)` of one point: a mixture over regions of Gaussians
//! `N(mu_q, Sigma_q)` truncated to the regions, with weights `kappa_q Phi_q / p(x)`.

use nalgebra::DMatrixView;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rand_pcg::Pcg64;

use super::sampling::Exact;
use super::{moment_terms, RegionAlgebra, RegionIntegrator, LOG_2PI};
use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::gauss::nearest::nearest_point;
use crate::partition::Partition;

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
        let local = algebra.local_gaussians(DMatrixView::from_slice(x, x.len(), 1));
        let (lk, mu) = local.point(0);
        let terms = moment_terms(integrator, lk, mu, s);
        // At S >= 2 each region's mean and central covariance come from the integrator's
        // central moments: `E[z z^T | q] - m_q m_q^T` loses the covariance where the region's
        // mean is far from 0 against its spread (a far outlier's posterior) or the region is
        // tiny against Sigma_q. At S = 1 the truncated normal's own variance (accurate also for
        // short and far intervals).
        let central: Vec<(Vec<f64>, Vec<f64>)> = terms
            .region
            .iter()
            .zip(&terms.weight)
            .enumerate()
            .map(|(k, (&q, &w))| {
                let (mut m_q, mut c_q) = (terms.mean[k * s..(k + 1) * s].to_vec(), vec![0.0; s * s]);
                if w <= 0.0 {
                    return (m_q, c_q);
                }
                integrator.central_moments_into(q, &mu[q * s..(q + 1) * s], &mut m_q, &mut c_q);
                (m_q, c_q)
            })
            .collect();
        let mut weights = vec![0.0; r];
        let mut mean = vec![0.0; s];
        for ((&q, &w), (m_q, _)) in terms.region.iter().zip(&terms.weight).zip(&central) {
            weights[q] = w;
            if w > 0.0 {
                for j in 0..s {
                    mean[j] += w * m_q[j];
                }
            }
        }
        // The law of total variance, sum_q w_q (Cov[z | q] + (m_q - m)(m_q - m)^T), rather than
        // E[z z^T] - m m^T: a posterior narrow against its distance from 0 would lose its digits
        // to that difference.
        let mut cov = vec![0.0; s * s];
        for (&w, (m_q, c_q)) in terms.weight.iter().zip(&central) {
            if w <= 0.0 {
                continue;
            }
            for a in 0..s {
                for b in 0..s {
                    cov[a * s + b] += w * (c_q[a * s + b] + (m_q[a] - mean[a]) * (m_q[b] - mean[b]));
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
    /// then the truncated Gaussian in it (`RegionSampler`). Deterministic given `seed`;
    /// `cancel` is checked between samples.
    pub fn sample(
        &self,
        partition: &Partition,
        algebra: &RegionAlgebra,
        n: usize,
        seed: u64,
        cancel: &Cancel,
    ) -> Result<Vec<f64>> {
        let s = algebra.latent_dim();
        let mut rng = Pcg64::seed_from_u64(seed);
        let mut cumulative = Vec::with_capacity(self.weights.len());
        let mut total = 0.0;
        for w in &self.weights {
            total += w;
            cumulative.push(total);
        }
        let last = self.weights.iter().rposition(|&w| w > 0.0).unwrap_or(0);
        let mut out = crate::memory::try_with_capacity(n.saturating_mul(s), &format!("{n} samples of dimension {s}"))?;
        let mut prepared: std::collections::HashMap<usize, RegionSampler> = Default::default();
        for i in 0..n {
            if i % 256 == 0 {
                cancel.check()?;
            }
            // The first region whose cumulative weight exceeds u: one of positive weight.
            let u = rng.random::<f64>() * total;
            let q = cumulative.partition_point(|&c| c <= u).min(last);
            let sampler = prepared.entry(q).or_insert_with(|| self.region_sampler(partition, algebra, q));
            let w = sampler.draw(&mut rng, q, cancel)?;
            out.extend(unwhiten(algebra.chol(q), s, &w, self.mu(algebra, q)));
        }
        Ok(out)
    }

    fn region_sampler(&self, partition: &Partition, algebra: &RegionAlgebra, q: usize) -> RegionSampler {
        let s = algebra.latent_dim();
        let (f, e) = whitened_constraints(partition, algebra, q, self.mu(algebra, q));
        let inside = whiten(algebra.chol(q), s, partition.interior_point(q), self.mu(algebra, q));
        let centre = nearest_point(&f, &e, s, &vec![0.0; s], &inside);
        // The tilted proposal's acceptance is the region's mass under N(0, I) (from its weight:
        // w_q = kappa_q Phi_q / p(x)) times exp(|w*|^2 / 2).
        let log_mass = self.weights[q].ln() + self.log_likelihood - self.log_kappa[q];
        let tilted_acceptance = (log_mass + 0.5 * centre.iter().map(|c| c * c).sum::<f64>()).exp().min(1.0);
        RegionSampler { f, e, centre, inside, tilted_acceptance, exact: std::cell::OnceCell::new() }
    }
}

/// The tilted proposal is used where its acceptance probability is at least this (indexed by
/// S); below, the exact sequential sampler (`sampling.rs`), whose acceptance is at least
/// `sampling::TARGET_ACCEPTANCE` but whose draws cost more: at S = 2 a few tilted proposals'
/// worth plus its preparation per region (~20 us), at S = 3 a polygon sampler per draw
/// (~100 us, a thousand tilted proposals), at S = 4 a slice integral per proposal and an S = 3
/// sampler per draw (~1 ms). Measured by `benches/bench_sampling.py`.
const TILTED_MIN_ACCEPTANCE: [f64; 5] = [0.0, 0.0, 0.1, 1e-3, 1e-4];

/// The proposals the tilted sampler makes at acceptance `a` before handing the region to the
/// exact sampler: `(1 - a)^(60 / a) < e^-60`, so only a wrong estimate of `a` gets there.
const TILTED_PATIENCE: f64 = 60.0;

/// The truncated Gaussian `N(0, I)` on one region `{w : F w <= e}` in whitened coordinates.
struct RegionSampler {
    f: Vec<f64>,
    e: Vec<f64>,
    /// The region's point nearest the origin.
    centre: Vec<f64>,
    inside: Vec<f64>,
    tilted_acceptance: f64,
    exact: std::cell::OnceCell<Option<Exact>>,
}

impl RegionSampler {
    fn exact(&self) -> Option<&Exact> {
        let s = self.centre.len();
        self.exact.get_or_init(|| Exact::new(&self.f, &self.e, s, &self.inside)).as_ref()
    }

    fn draw(&self, rng: &mut Pcg64, q: usize, cancel: &Cancel) -> Result<Vec<f64>> {
        let s = self.centre.len();
        let threshold = TILTED_MIN_ACCEPTANCE.get(s).copied().unwrap_or(0.0);
        if s == 1 || (s <= 4 && self.tilted_acceptance < threshold) {
            if let Some(w) = self.draw_exact(rng) {
                return Ok(w);
            }
        }
        let patience = TILTED_PATIENCE / self.tilted_acceptance.max(threshold).max(1e-300);
        if let Some(w) = self.draw_tilted(rng, patience.min(1e9) as usize, cancel)? {
            return Ok(w);
        }
        // Only a wrong estimate of the acceptance gets here: the exact sampler if there is one
        // (S <= 4), else the tilted proposal for as long as it takes, up to a billion proposals.
        // Where an exact sampler exists and failed (a region whose mass lies within rounding of
        // a far vertex, thinner than its own geometry's rounding), ten million tilted proposals
        // (~0.3 s) before the error, not a billion (~30 s per draw, a hang to the caller).
        if let Some(w) = self.draw_exact(rng) {
            return Ok(w);
        }
        let last_resort = if s <= 4 { 10_000_000 } else { 1_000_000_000 };
        if let Some(w) = self.draw_tilted(rng, last_resort, cancel)? {
            return Ok(w);
        }
        Err(Error::Numerical(format!(
            "could not sample region {q}: {last_resort} proposals were rejected (its estimated acceptance is {:.3e}); \
             the exact sampler for thin regions covers S <= 4 only",
            self.tilted_acceptance
        )))
    }

    fn draw_exact(&self, rng: &mut Pcg64) -> Option<Vec<f64>> {
        self.exact()?.draw(rng)
    }

    /// Accept-reject from `N(w*, I)`, `w*` the region's point nearest the mean: the acceptance
    /// probability `exp(-(y - w*) . w*)` is at most one on the region, which is convex.
    fn draw_tilted(&self, rng: &mut Pcg64, patience: usize, cancel: &Cancel) -> Result<Option<Vec<f64>>> {
        let (f, e, centre) = (&self.f, &self.e, &self.centre);
        let s = centre.len();
        let m = e.len();
        let mut y = vec![0.0; s];
        for k in 0..patience {
            if k % 65_536 == 65_535 {
                cancel.check()?;
            }
            for (yi, c) in y.iter_mut().zip(centre) {
                *yi = c + rng.sample::<f64, _>(StandardNormal);
            }
            let inside = (0..m).all(|i| (0..s).map(|j| f[i * s + j] * y[j]).sum::<f64>() <= e[i]);
            if !inside {
                continue;
            }
            let tilt: f64 = y.iter().zip(centre.iter()).map(|(yi, ci)| (yi - ci) * ci).sum();
            if rng.random::<f64>() < (-tilt).exp() {
                return Ok(Some(y));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::{GaussIntegrator, IntegrationSettings};
    use crate::model::Decoder;
    use nalgebra::DMatrix;
    use std::sync::Arc;

    /// On every region of real weight of S = 2, 3 and 4 posteriors, the exact sequential
    /// sampler and the tilted accept-reject (two different exact methods) agree: the means of
    /// their draws within 5 standard errors of their difference.
    #[test]
    fn exact_and_tilted_samplers_agree_on_real_regions() {
        for (widths, seed, n) in [(vec![2, 12, 12, 3], 3, 4000), (vec![3, 8, 8, 3], 4, 4000), (vec![4, 5, 3], 5, 300)] {
            let s = widths[0];
            let dec = Arc::new(Decoder::random_uniform(&widths, -1.0, seed).unwrap());
            let cancel = Cancel::new();
            let part = Partition::enumerate(dec.clone(), 100_000, &cancel).unwrap();
            let algebra = RegionAlgebra::new(&part, &vec![0.05; widths[widths.len() - 1]]).unwrap();
            let integrator =
                GaussIntegrator::new(&part, &algebra, &IntegrationSettings::new(1e-8, 0, &cancel)).unwrap();
            let z = DMatrix::from_element(s, 1, 0.3);
            let x = dec.forward_batch(z.as_view()).column(0).into_owned();
            let post = PointPosterior::new(&algebra, &integrator, x.as_slice());
            let mut checked = 0;
            for q in (0..post.weights.len()).filter(|&q| post.weights[q] > 0.02) {
                let sampler = post.region_sampler(&part, &algebra, q);
                let exact = sampler.exact().expect("an exact sampler for every region of S <= 4");
                assert!(exact.acceptance_bound() >= crate::inference::sampling::TARGET_ACCEPTANCE);
                let mut rng = Pcg64::seed_from_u64(q as u64);
                let a: Vec<Vec<f64>> = (0..n).map(|_| exact.draw(&mut rng).unwrap()).collect();
                let b: Vec<Vec<f64>> =
                    (0..n).map(|_| sampler.draw_tilted(&mut rng, 1 << 30, &cancel).unwrap().unwrap()).collect();
                for j in 0..s {
                    let mean = |v: &[Vec<f64>]| v.iter().map(|w| w[j]).sum::<f64>() / n as f64;
                    let var =
                        |v: &[Vec<f64>], m: f64| v.iter().map(|w| (w[j] - m).powi(2)).sum::<f64>() / (n - 1) as f64;
                    let (ma, mb) = (mean(&a), mean(&b));
                    let se = ((var(&a, ma) + var(&b, mb)) / n as f64).sqrt();
                    assert!(
                        (ma - mb).abs() < 5.0 * se,
                        "S = {s}, region {q}, coordinate {j}: exact {ma} vs tilted {mb} (se {se})"
                    );
                }
                checked += 1;
            }
            assert!(checked >= 2, "S = {s}: only {checked} regions checked");
        }
    }

    #[test]
    fn sampling_stops_when_cancelled() {
        let dec = Arc::new(Decoder::random_uniform(&[2, 6, 2], -1.0, 1).unwrap());
        let part = Partition::enumerate(dec.clone(), 1000, &Cancel::new()).unwrap();
        let algebra = RegionAlgebra::new(&part, &[0.1, 0.1]).unwrap();
        let integrator =
            GaussIntegrator::new(&part, &algebra, &IntegrationSettings::new(1e-8, 0, &Cancel::new())).unwrap();
        let post = PointPosterior::new(&algebra, &integrator, &[0.2, -0.1]);
        let cancel = Cancel::new();
        cancel.cancel();
        assert_eq!(post.sample(&part, &algebra, 10, 0, &cancel), Err(Error::Interrupted));
        assert_eq!(post.sample(&part, &algebra, 10, 0, &Cancel::new()).unwrap().len(), 20);
    }
}
