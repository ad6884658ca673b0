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
    /// The point `x - g(0)` ([`RegionAlgebra::centred`]), for the residual form of the joint
    /// density (`Self::map`).
    pub x: Vec<f64>,
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

/// `J_q(z) = |z|^2 + sum_i (x_i - (A_q z)_i - b_qi)^2 / psi_i`: `-2 log p(z, x)` on region `q`
/// up to the constant `S log 2pi + D log 2pi + log det Psi`.
fn residual_objective(algebra: &RegionAlgebra, q: usize, x: &[f64], z: &[f64]) -> f64 {
    let (s, d) = (algebra.s, algebra.d);
    let a = &algebra.a[q * d * s..(q + 1) * d * s];
    let b = &algebra.b[q * d..(q + 1) * d];
    let mut total: f64 = z.iter().map(|v| v * v).sum();
    for i in 0..d {
        let g: f64 = a[i * s..(i + 1) * s].iter().zip(z).map(|(u, v)| u * v).sum::<f64>() + b[i];
        total += (x[i] - g) * (x[i] - g) * algebra.inv_psi[i];
    }
    total
}

/// The point of the S = 2 region `q` minimising `J_q` (`residual_objective`), and that minimum,
/// all in the latent frame: the best over the facets of the one-dimensional minimiser along
/// the facet's line clamped to the facet's segment, or an interior stationary point (`mu_q`,
/// tried by the caller's active-set search). The minimiser of a convex quadratic over a convex
/// polygon lies inside or on an edge, where it is that clamped point. Each facet's line is
/// parametrised from the facet's relative-interior point `p`, so the segment's ends come from
/// slacks that are non-negative up to rounding, and along it `J_q(p + t u) = J_q(p) - 2 t g + t^2 c`
/// with `g = -p . u + (x - A p - b)^T Psi^-1 A u`, `c = |u|^2 + |A u|^2_Psi`: residuals, no
/// `Sigma_q` and no whitening. A candidate that violates another facet by more than rounding
/// is dropped.
fn latent_nearest_s2(partition: &Partition, algebra: &RegionAlgebra, q: usize, x: &[f64]) -> Option<(Vec<f64>, f64)> {
    let (s, d) = (2, algebra.d);
    let a = &algebra.a[q * d * s..(q + 1) * d * s];
    let b = &algebra.b[q * d..(q + 1) * d];
    let facets = partition.facets(q);
    let dot = |u: &[f64], v: &[f64]| u[0] * v[0] + u[1] * v[1];
    let mut best: Option<(Vec<f64>, f64)> = None;
    for (i, facet) in facets.iter().enumerate() {
        let n = &facet.normal;
        let norm = n[0].hypot(n[1]);
        if !(norm > 0.0) || facet.point.len() != 2 {
            continue;
        }
        let u = [-n[1] / norm, n[0] / norm];
        let p = &facet.point;
        let (mut g, mut c) = (-dot(p, &u), 1.0);
        for k in 0..d {
            let row = &a[k * s..(k + 1) * s];
            let au = dot(row, &u);
            let residual = x[k] - dot(row, p) - b[k];
            g += residual * au * algebra.inv_psi[k];
            c += au * au * algebra.inv_psi[k];
        }
        let mut t = g / c;
        if !t.is_finite() {
            continue;
        }
        let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
        for (j, other) in facets.iter().enumerate() {
            let rate = dot(&other.normal, &u);
            if j == i || rate == 0.0 {
                continue;
            }
            let room = (other.offset - dot(&other.normal, p)).max(0.0);
            if rate > 0.0 {
                hi = hi.min(room / rate);
            } else {
                lo = lo.max(room / rate);
            }
        }
        t = t.max(lo).min(hi);
        let z = vec![p[0] + t * u[0], p[1] + t * u[1]];
        let inside = facets.iter().all(|f| {
            let scale = f.normal[0].hypot(f.normal[1]) * (1.0 + z[0].hypot(z[1])) + f.offset.abs();
            dot(&f.normal, &z) - f.offset <= 1e-9 * scale
        });
        let value = residual_objective(algebra, q, x, &z);
        if inside && value.is_finite() && best.as_ref().is_none_or(|b| value < b.1) {
            best = Some((z, value));
        }
    }
    best
}

impl PointPosterior {
    pub fn new<I: RegionIntegrator>(algebra: &RegionAlgebra, integrator: &I, x: &[f64]) -> Self {
        let s = algebra.latent_dim();
        let r = algebra.n_regions();
        // In the engine's frame from here on: `self.x` is the centred point.
        let x = algebra.centred(DMatrixView::from_slice(x, x.len(), 1)).as_slice().to_vec();
        let local = algebra.local_gaussians(DMatrixView::from_slice(&x, x.len(), 1));
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
        PointPosterior { log_likelihood, log_kappa: lk.to_vec(), mu: mu.to_vec(), weights, mean, cov, x }
    }

    fn mu(&self, algebra: &RegionAlgebra, q: usize) -> &[f64] {
        let s = algebra.latent_dim();
        &self.mu[q * s..(q + 1) * s]
    }

    /// `log p(z | x)` at a latent point, from the residual form `J_q(z)` of the region it lies
    /// in (`residual_objective`): `log N(z; 0, I) + log N(x; A_q z + b_q, Psi) - log p(x)`,
    /// computed from `x` with a relative error of a few `eps` of `J`. The completed-square form
    /// `log kappa_q + log N(z; mu_q, Sigma_q)` subtracts two numbers of the size of `J` with
    /// errors beyond that far out in whitened units (1e8 where the budget was 1e6).
    pub fn log_density(&self, partition: &Partition, algebra: &RegionAlgebra, z: &[f64]) -> f64 {
        let (s, d) = (algebra.latent_dim(), self.x.len());
        let q = partition.locate(z);
        let log_det_psi: f64 = -algebra.inv_psi.iter().map(|v| v.ln()).sum::<f64>();
        let constant = -0.5 * ((s + d) as f64 * LOG_2PI + log_det_psi);
        constant - 0.5 * residual_objective(algebra, q, &self.x, z) - self.log_likelihood
    }

    /// The most probable latent point: each region's constrained maximum, visiting regions in
    /// decreasing order of their unconstrained peak and stopping when no peak can win.
    ///
    /// Every candidate is judged by the residual form `J_q(z) = |z|^2 + |x - A_q z - b_q|^2_Psi`
    /// (`-2 log p(z, x)` up to a constant shared by all regions), computed from `x`, `A_q` and
    /// `b_q` with a relative error of a few `eps`: the completed-square form `log kappa_q -
    /// |w|^2 / 2` differs from it by two numbers of the size of `J` each carrying `eps J` and
    /// more (the posterior far out in whitened units, a near rank-deficient `A_q`), enough to
    /// pick the wrong region. Each region's candidates: the whitened active-set search
    /// (`nearest_point`) and, at S = 2, the exact minimiser of `J_q` in the latent frame
    /// (`latent_nearest_s2`); the better kept. Last, the posterior mean, which a failed search
    /// cannot be allowed to lose to.
    pub fn map(&self, partition: &Partition, algebra: &RegionAlgebra) -> Vec<f64> {
        let s = algebra.latent_dim();
        let r = algebra.n_regions();
        // Each region's unconstrained minimum J_q(mu_q): J_q is stationary there, so mu_q's
        // rounding enters only quadratically.
        let floor: Vec<f64> = (0..r).map(|q| residual_objective(algebra, q, &self.x, self.mu(algebra, q))).collect();
        let mut order: Vec<usize> = (0..r).filter(|&q| !floor[q].is_nan()).collect();
        order.sort_unstable_by(|&a, &b| floor[a].total_cmp(&floor[b]).then(a.cmp(&b)));
        let mut best = (f64::INFINITY, vec![0.0; s]);
        for q in order {
            if floor[q] >= best.0 {
                break;
            }
            let mu = self.mu(algebra, q);
            let (f, e) = whitened_constraints(partition, algebra, q, mu);
            let l = algebra.chol(q);
            let start = whiten(l, s, partition.interior_point(q), mu);
            let w = nearest_point(&f, &e, s, &vec![0.0; s], &start);
            // Each candidate judged where it lies: the whitened search's point can land outside
            // region q (by its whitening's rounding, far out), where q's affine extension would
            // flatter it.
            let judge = |z: &[f64]| residual_objective(algebra, partition.locate(z), &self.x, z);
            let mut z = unwhiten(l, s, &w, mu);
            let mut value = judge(&z);
            if s == 2 {
                if let Some((y, _)) = latent_nearest_s2(partition, algebra, q, &self.x) {
                    let v = judge(&y);
                    if v < value || value.is_nan() {
                        (z, value) = (y, v);
                    }
                }
            }
            if value < best.0 {
                best = (value, z);
            }
        }
        let at_mean = residual_objective(algebra, partition.locate(&self.mean), &self.x, &self.mean);
        if at_mean < best.0 || best.0.is_nan() {
            best = (at_mean, self.mean.clone());
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
