//! The region integrals of inference, from the polyhedral Gaussian engine (`crate::gauss`):
//! intervals (S = 1) and polygons (S = 2) exactly, prepared once per region; polyhedra
//! (S >= 3) through the engine's facet path, without its LP reduction.

use super::interval::Intervals;
use super::{RegionAlgebra, RegionIntegrator};
use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::gauss::normal::{log_diff_ndtr, truncated_normal, truncated_normal_central};
use crate::gauss::polygon::Polygon2;
use crate::gauss::{GaussMoments, PolytopeShape};
use crate::partition::Partition;

/// The loosest relative accuracy asked of a minor region's QMC integral, as a multiple of
/// `rtol`.
const MAX_LOOSENESS: f64 = 1e3;

/// The relative accuracy asked of a polygon's mass: ~1e-15 for the largest terms, looser in
/// proportion for terms known to be smaller (their absolute error stays ~1e-15 of `p(x)`),
/// but never looser than 1e-6, so that every weight keeps some digits.
fn polygon_rtol(looseness: f64) -> f64 {
    (1e-15 * looseness).min(1e-6)
}

/// A region prepared for integration against `N(mu, Sigma_q)` with any `mu`.
enum PreparedRegion {
    /// S = 1: an interval, held with its standard deviation in `GaussIntegrator::intervals`.
    Interval,
    /// S = 2: a convex polygon.
    Polygon(Polygon2),
    /// S >= 3: the region's facets under Sigma_q, and its interior point.
    Polyhedron { shape: PolytopeShape, h: Vec<f64>, inside: Vec<f64> },
}

/// Region integrals: exact for latent dimensions 1 and 2, adaptive quadrature over exact
/// slices to relative error `rtol` for 3, quasi-Monte Carlo with relative error `rtol` above.
pub struct GaussIntegrator {
    regions: Vec<PreparedRegion>,
    /// S = 1: the intervals and their standard deviations.
    intervals: Option<Intervals>,
    rtol: f64,
    seed: u64,
}

impl GaussIntegrator {
    pub fn new(partition: &Partition, algebra: &RegionAlgebra, rtol: f64, seed: u64, cancel: &Cancel) -> Result<Self> {
        let s = algebra.latent_dim();
        crate::gauss::check_rtol(rtol)?;
        if s > crate::gauss::sobol::MAX_DIM {
            return Err(Error::InvalidInput(format!(
                "inference supports latent dimensions up to {}; this decoder has {s}",
                crate::gauss::sobol::MAX_DIM
            )));
        }
        let mut regions = Vec::with_capacity(partition.len());
        let (mut ends, mut sd) = (Vec::new(), Vec::new());
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
                ends.push((lo, hi));
                sd.push(algebra.sigma(q)[0].sqrt());
                PreparedRegion::Interval
            } else if s >= 3 {
                let g: Vec<f64> = facets.iter().flat_map(|f| f.normal.iter().copied()).collect();
                PreparedRegion::Polyhedron {
                    shape: PolytopeShape::with_factor(&g, s, algebra.chol(q).to_vec()),
                    h: facets.iter().map(|f| f.offset).collect(),
                    inside: partition.interior_point(q).to_vec(),
                }
            } else {
                let g = facets.iter().map(|f| [f.normal[0], f.normal[1]]).collect();
                let h = facets.iter().map(|f| f.offset).collect();
                let l = algebra.chol(q);
                let mut poly = Polygon2::new(g, h, [l[0], l[1], l[2], l[3]]);
                // Inference integrates a polygon against many means, so its series, built at the
                // first that asks, pays for itself.
                poly.enable_series();
                PreparedRegion::Polygon(poly)
            };
            regions.push(region);
        }
        let intervals = (s == 1).then(|| Intervals::new(&ends, sd));
        Ok(GaussIntegrator { regions, intervals, rtol, seed })
    }

    fn s1_intervals(&self) -> &Intervals {
        self.intervals.as_ref().expect("an S = 1 integrator holds its intervals")
    }

    #[allow(clippy::too_many_arguments)]
    fn polyhedron(
        &self,
        shape: &PolytopeShape,
        h: &[f64],
        inside: &[f64],
        mean: &[f64],
        want_moments: bool,
        looseness: f64,
    ) -> GaussMoments {
        // Never looser than 10% relative, nor than a thousand times `rtol`: the moments and
        // the weights still need some digits.
        let rtol = (self.rtol * looseness.min(MAX_LOOSENESS)).min(0.1).max(self.rtol);
        // The trait has no error channel: the call's token (`Cancel::current`, set by
        // inference's batches) interrupts the integral and carries its failure, which stops
        // the call and becomes its error; the value returned meanwhile is never used.
        let cancel = Cancel::current();
        match shape.moments_of_facets(h, mean, inside, rtol, self.seed, want_moments, &cancel) {
            Ok(moments) => moments,
            Err(err) => {
                if err != Error::Interrupted {
                    cancel.fail(err);
                }
                GaussMoments {
                    log_mass: f64::NAN,
                    mean: vec![f64::NAN; mean.len()],
                    cov: vec![f64::NAN; mean.len() * mean.len()],
                    error: f64::INFINITY,
                }
            }
        }
    }

    /// A polygon's mass or moments must be numbers (see `crate::gauss::checked`); a NaN stops
    /// the call through its token with this context.
    fn check_polygon(region: usize, log_mass: f64, moments: &[f64]) {
        let bad_moments = log_mass > f64::NEG_INFINITY && moments.iter().any(|v| !v.is_finite());
        if log_mass.is_nan() || log_mass == f64::INFINITY || bad_moments {
            Cancel::current().fail(Error::Numerical(format!(
                "the S = 2 Gaussian integral over region {region} (a polygon) gave log mass {log_mass}, moments {moments:?}"
            )));
        }
    }
}

impl RegionIntegrator for GaussIntegrator {
    fn log_mass(&self, region: usize, mean: &[f64]) -> f64 {
        self.log_mass_loose(region, mean, 1.0)
    }

    /// Intervals are exact at one fixed cost; polygons and polyhedra get cheaper when looser.
    fn uses_looseness(&self) -> bool {
        !matches!(self.regions.first(), Some(PreparedRegion::Interval))
    }

    fn moments_into(&self, region: usize, mean: &[f64], cond_mean: &mut [f64], cond_second: &mut [f64]) -> f64 {
        self.moments_into_loose(region, mean, cond_mean, cond_second, 1.0)
    }

    fn intervals(&self) -> Option<&Intervals> {
        self.intervals.as_ref()
    }

    fn log_mass_loose(&self, region: usize, mean: &[f64], looseness: f64) -> f64 {
        match &self.regions[region] {
            PreparedRegion::Interval => {
                let (lo, hi, sd) = self.s1_intervals().interval(region);
                log_diff_ndtr((lo - mean[0]) / sd, (hi - mean[0]) / sd)
            }
            PreparedRegion::Polygon(poly) => {
                let log_mass = poly.log_mass(mean, polygon_rtol(looseness));
                Self::check_polygon(region, log_mass, &[]);
                log_mass
            }
            PreparedRegion::Polyhedron { shape, h, inside } => {
                self.polyhedron(shape, h, inside, mean, false, looseness).log_mass
            }
        }
    }

    fn moments_into_loose(
        &self,
        region: usize,
        mean: &[f64],
        cond_mean: &mut [f64],
        cond_second: &mut [f64],
        looseness: f64,
    ) -> f64 {
        match &self.regions[region] {
            PreparedRegion::Interval => {
                let (lo, hi, sd) = self.s1_intervals().interval(region);
                let (log_mass, m, second) = truncated_normal(mean[0], sd, lo, hi);
                cond_mean[0] = m;
                cond_second[0] = second;
                log_mass
            }
            PreparedRegion::Polygon(poly) => {
                let log_mass = poly.integrate(mean, polygon_rtol(looseness), cond_mean, cond_second);
                Self::check_polygon(region, log_mass, cond_mean);
                Self::check_polygon(region, log_mass, cond_second);
                log_mass
            }
            PreparedRegion::Polyhedron { shape, h, inside } => {
                let out = self.polyhedron(shape, h, inside, mean, true, looseness);
                let s = mean.len();
                cond_mean.copy_from_slice(&out.mean);
                for i in 0..s {
                    for j in 0..s {
                        cond_second[i * s + j] = out.cov[i * s + j] + out.mean[i] * out.mean[j];
                    }
                }
                out.log_mass
            }
        }
    }

    fn central_moments_into(&self, region: usize, mean: &[f64], cond_mean: &mut [f64], cond_cov: &mut [f64]) -> f64 {
        match &self.regions[region] {
            PreparedRegion::Interval => {
                let (lo, hi, sd) = self.s1_intervals().interval(region);
                let (log_mass, m, variance) = truncated_normal_central(mean[0], sd, lo, hi);
                cond_mean[0] = m;
                cond_cov[0] = variance;
                log_mass
            }
            PreparedRegion::Polygon(poly) => {
                let log_mass = poly.central_moments(mean, cond_mean, cond_cov);
                Self::check_polygon(region, log_mass, cond_mean);
                Self::check_polygon(region, log_mass, cond_cov);
                log_mass
            }
            PreparedRegion::Polyhedron { shape, h, inside } => {
                let out = self.polyhedron(shape, h, inside, mean, true, 1.0);
                cond_mean.copy_from_slice(&out.mean);
                cond_cov.copy_from_slice(&out.cov);
                out.log_mass
            }
        }
    }

    /// The Gaussian tail bound `Phi(-t) <= exp(-t^2 / 2) / 2` at the distance `t` (in standard
    /// deviations, whitened) from the mean to the region.
    fn log_mass_bound(&self, region: usize, mean: &[f64]) -> f64 {
        match &self.regions[region] {
            PreparedRegion::Interval => self.s1_intervals().log_mass_bound(region, mean[0]),
            PreparedRegion::Polygon(poly) => poly.log_mass_bound(mean),
            PreparedRegion::Polyhedron { shape, h, inside } => shape.log_mass_bound(h, mean, inside),
        }
    }
}
