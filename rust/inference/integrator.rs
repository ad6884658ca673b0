//! The region integrals of inference: intervals (S = 1) here, polygons (S = 2) in `polygon.rs`.
//! An interval's Gaussian mass and moments have a closed form, evaluated without cancellation
//! in either tail (a region whose local mean lies 40 standard deviations away has mass ~1e-350,
//! and it still counts).

use super::polygon::Polygon2;
use super::{RegionAlgebra, RegionIntegrator};
use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::partition::Partition;

pub(crate) const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_8;

/// `log Phi(x)`, the log of the standard normal CDF, accurate in both tails.
pub fn log_ndtr(x: f64) -> f64 {
    if x > 5.0 {
        // Phi(x) = 1 - Phi(-x): log1p of a tiny negative number.
        (-0.5 * libm::erfc(x / std::f64::consts::SQRT_2)).ln_1p()
    } else if x > -30.0 {
        (0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)).ln()
    } else if x == f64::NEG_INFINITY {
        f64::NEG_INFINITY
    } else {
        // Mills-ratio asymptotic series: Phi(x) = phi(x)/|x| (1 - 1/x^2 + 3/x^4 - ...); at
        // |x| >= 30 the tenth term is below 1e-20.
        let inv2 = 1.0 / (x * x);
        let (mut term, mut sum) = (1.0, 1.0);
        for k in 1..=10 {
            term *= -((2 * k - 1) as f64) * inv2;
            sum += term;
        }
        -0.5 * x * x - LN_SQRT_2PI - (-x).ln() + sum.ln()
    }
}

/// `log(1 - exp(v))` for `v <= 0`, accurate near both ends.
fn log1m_exp(v: f64) -> f64 {
    if v > -std::f64::consts::LN_2 {
        (-v.exp_m1()).ln()
    } else {
        (-v.exp()).ln_1p()
    }
}

/// `log(Phi(b) - Phi(a))` for `a <= b`, without cancellation.
pub fn log_diff_ndtr(a: f64, b: f64) -> f64 {
    if a >= b {
        return f64::NEG_INFINITY;
    }
    if a > 0.0 {
        // Both in the upper tail: the mirror image is in the lower tail.
        return log_diff_ndtr(-b, -a);
    }
    if b <= 0.0 {
        if b > -30.0 {
            // Where Phi(a) <= Phi(b) / 2 the plain difference loses less than one bit: one
            // logarithm instead of three.
            let (upper, lower) = (libm::erfc(-b / std::f64::consts::SQRT_2), libm::erfc(-a / std::f64::consts::SQRT_2));
            if lower <= 0.5 * upper {
                return (0.5 * (upper - lower)).ln();
            }
        }
        let lb = log_ndtr(b);
        return lb + log1m_exp(log_ndtr(a) - lb);
    }
    // a <= 0 < b: (Phi(b) - 1/2) + (1/2 - Phi(a)), two non-negative terms, no cancellation
    // even for a tiny interval around zero.
    (0.5 * (libm::erf(b / std::f64::consts::SQRT_2) + libm::erf(-a / std::f64::consts::SQRT_2))).ln()
}

fn log_pdf(x: f64) -> f64 {
    -0.5 * x * x - LN_SQRT_2PI
}

/// Mass (log), mean and second moment of `N(mu, sd^2)` restricted to `(lo, hi)`.
pub fn truncated_normal(mu: f64, sd: f64, lo: f64, hi: f64) -> (f64, f64, f64) {
    let (a, b) = ((lo - mu) / sd, (hi - mu) / sd);
    let log_mass = log_diff_ndtr(a, b);
    if log_mass == f64::NEG_INFINITY {
        return (log_mass, f64::NAN, f64::NAN);
    }
    // phi(a) / Z and a phi(a) / Z, zero at an infinite end.
    let ratio = |t: f64| if t.is_finite() { (log_pdf(t) - log_mass).exp() } else { 0.0 };
    let (ra, rb) = (ratio(a), ratio(b));
    let (ara, brb) = (if a.is_finite() { a * ra } else { 0.0 }, if b.is_finite() { b * rb } else { 0.0 });
    let mean_w = ra - rb;
    let var_w = (1.0 + ara - brb - mean_w * mean_w).max(0.0);
    let mean = mu + sd * mean_w;
    (log_mass, mean, mean * mean + sd * sd * var_w)
}

/// A region prepared for integration against `N(mu, Sigma_q)` with any `mu`.
enum PreparedRegion {
    /// S = 1: the interval and the standard deviation.
    Interval { lo: f64, hi: f64, sd: f64 },
    /// S = 2: a convex polygon.
    Polygon(Polygon2),
}

/// Exact region integrals for latent dimensions 1 and 2.
pub struct GaussIntegrator {
    regions: Vec<PreparedRegion>,
}

impl GaussIntegrator {
    pub fn new(partition: &Partition, algebra: &RegionAlgebra, _rtol: f64, _seed: u64, cancel: &Cancel) -> Result<Self> {
        let s = algebra.latent_dim();
        if s > 2 {
            return Err(Error::InvalidInput(format!(
                "exact inference is implemented for latent dimensions 1 and 2 so far; this decoder has latent_dim={s} \
                 (Gaussian integrals over polyhedra in S >= 3 are not in this build yet)"
            )));
        }
        let mut regions = Vec::with_capacity(partition.len());
        for q in 0..partition.len() {
            cancel.check()?;
            let facets = partition.facets(q);
            let region = if s == 1 {
                let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
                for facet in facets {
                    // normal = +-1: z <= offset or -z <= offset.
                    if facet.normal[0] > 0.0 {
                        hi = hi.min(facet.offset / facet.normal[0]);
                    } else {
                        lo = lo.max(facet.offset / facet.normal[0]);
                    }
                }
                PreparedRegion::Interval { lo, hi, sd: algebra.sigma(q)[0].sqrt() }
            } else {
                let g = facets.iter().map(|f| [f.normal[0], f.normal[1]]).collect();
                let h = facets.iter().map(|f| f.offset).collect();
                let l = algebra.chol(q);
                PreparedRegion::Polygon(Polygon2::new(g, h, [l[0], l[1], l[2], l[3]]))
            };
            regions.push(region);
        }
        Ok(GaussIntegrator { regions })
    }
}

impl RegionIntegrator for GaussIntegrator {
    fn log_mass(&self, region: usize, mean: &[f64]) -> f64 {
        match &self.regions[region] {
            PreparedRegion::Interval { lo, hi, sd } => log_diff_ndtr((lo - mean[0]) / sd, (hi - mean[0]) / sd),
            PreparedRegion::Polygon(poly) => poly.log_mass(mean),
        }
    }

    fn moments_into(&self, region: usize, mean: &[f64], cond_mean: &mut [f64], cond_second: &mut [f64]) -> f64 {
        match &self.regions[region] {
            PreparedRegion::Interval { lo, hi, sd } => {
                let (log_mass, m, second) = truncated_normal(mean[0], *sd, *lo, *hi);
                cond_mean[0] = m;
                cond_second[0] = second;
                log_mass
            }
            PreparedRegion::Polygon(poly) => poly.integrate(mean, cond_mean, cond_second),
        }
    }

    /// The Gaussian tail bound `Phi(-t) <= exp(-t^2 / 2) / 2` at the distance `t` (in standard
    /// deviations, whitened) from the mean to the region.
    fn log_mass_bound(&self, region: usize, mean: &[f64]) -> f64 {
        match &self.regions[region] {
            PreparedRegion::Interval { lo, hi, sd } => {
                let distance = (lo - mean[0]).max(mean[0] - hi);
                if distance <= 0.0 {
                    return 0.0;
                }
                let t = distance / sd;
                -0.5 * t * t - std::f64::consts::LN_2
            }
            PreparedRegion::Polygon(poly) => poly.log_mass_bound(mean),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `log Phi(x)` by direct quadrature of the density in log space (Simpson, shifted).
    fn reference_log_ndtr(x: f64) -> f64 {
        let lo = x - 40.0;
        let n = 200_000;
        let h = (x - lo) / n as f64;
        let mut acc = 0.0;
        for i in 0..=n {
            let t = lo + i as f64 * h;
            let w = if i == 0 || i == n { 1.0 } else if i % 2 == 1 { 4.0 } else { 2.0 };
            acc += w * (log_pdf(t) - log_pdf(x)).exp();
        }
        (acc * h / 3.0).ln() + log_pdf(x)
    }

    #[test]
    fn log_ndtr_is_accurate_in_both_tails() {
        for x in [-200.0, -45.0, -30.5, -29.5, -10.0, -1.0, 0.0, 0.5, 3.0] {
            let (got, want) = (log_ndtr(x), reference_log_ndtr(x));
            assert!((got - want).abs() <= 1e-11 * want.abs().max(1e-300) + 1e-13, "x={x}: {got} vs {want}");
        }
        // Upper tail: log Phi(x) ~ -Phi(-x).
        let x: f64 = 9.0;
        let want = -(0.5 * libm::erfc(x / std::f64::consts::SQRT_2));
        assert!((log_ndtr(x) / want - 1.0).abs() < 1e-12);
    }

    #[test]
    fn interval_masses_have_no_cancellation() {
        // [40, 41]: mass ~ phi(40)/40, far beyond double precision of 1 - Phi.
        let got = log_diff_ndtr(40.0, 41.0);
        let want = log_ndtr(-40.0) + log1m_exp(log_ndtr(-41.0) - log_ndtr(-40.0));
        assert!((got - want).abs() < 1e-12 * want.abs());
        assert!((got - (-800.0 - LN_SQRT_2PI - 40f64.ln())).abs() < 1e-3);
        // A tiny central interval: Phi(b) - Phi(a) ~ phi(0) (b - a).
        let got = log_diff_ndtr(-1e-9, 1e-9);
        assert!((got - (2e-9f64).ln() + LN_SQRT_2PI).abs() < 1e-9);
        assert_eq!(log_diff_ndtr(f64::NEG_INFINITY, f64::INFINITY), 0.0);
    }

    #[test]
    fn truncated_moments_match_quadrature() {
        for (mu, sd, lo, hi) in [(0.3, 1.2, -0.5, 2.0), (0.0, 1.0, 3.0, f64::INFINITY), (5.0, 0.5, f64::NEG_INFINITY, -1.0), (0.0, 2.0, -1.0, 1.0)] {
            let (log_mass, mean, second) = truncated_normal(mu, sd, lo, hi);
            let (a, b) = (lo.max(mu - 40.0 * sd), hi.min(mu + 40.0 * sd));
            let n = 400_000;
            let h = (b - a) / n as f64;
            let mut m = [0.0; 3];
            let shift = if mu < a { a } else if mu > b { b } else { mu };
            for i in 0..=n {
                let z = a + i as f64 * h;
                let w = if i == 0 || i == n { 1.0 } else if i % 2 == 1 { 4.0 } else { 2.0 };
                let d = (log_pdf((z - mu) / sd) - log_pdf((shift - mu) / sd)).exp();
                m[0] += w * d;
                m[1] += w * d * z;
                m[2] += w * d * z * z;
            }
            let ref_log_mass = (m[0] * h / 3.0 / sd).ln() + log_pdf((shift - mu) / sd);
            assert!((log_mass - ref_log_mass).abs() < 1e-9, "{log_mass} vs {ref_log_mass}");
            assert!((mean - m[1] / m[0]).abs() < 1e-9 * (1.0 + mean.abs()));
            assert!((second - m[2] / m[0]).abs() < 1e-9 * (1.0 + second.abs()));
        }
    }
}
