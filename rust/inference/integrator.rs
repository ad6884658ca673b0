//! The region integrals of inference, from the polyhedral Gaussian engine (`crate::gauss`), one
//! [`RegionIntegrator`] per latent dimension, each preparing its regions once:
//! [`IntervalIntegrator`] (S = 1: exact, and its own linear-space path over blocks of points,
//! `interval.rs`), [`PolygonIntegrator`] (S = 2: exact polygon series) and
//! [`PolyhedronIntegrator`] (S >= 3: the engine's facet path without its LP reduction, exact
//! slices for S = 3 and quasi-Monte Carlo above). [`GaussIntegrator`] chooses one by the
//! latent dimension when it is built; inference then runs on that one alone.

use nalgebra::DMatrixView;

use super::interval::Intervals;
use super::{EStep, PointTerms, RegionAlgebra, RegionIntegrator};
use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::gauss::normal::{log_diff_ndtr, truncated_normal, truncated_normal_central};
use crate::gauss::polygon::Polygon2;
use crate::gauss::{GaussMoments, IntegrationSettings, PolytopeShape};
use crate::partition::Partition;

/// The loosest relative accuracy asked of a minor region's integral as a multiple of `rtol`,
/// unless a share `rtol / R` of the sum so far is looser still.
const MAX_LOOSENESS: f64 = 1e3;

/// The relative accuracy asked of a polygon's mass: ~1e-15 for the largest terms, looser in
/// proportion for terms known to be smaller (their absolute error stays ~1e-15 of `p(x)`),
/// but never looser than 1e-6, so that every weight keeps some digits.
fn polygon_rtol(looseness: f64) -> f64 {
    (1e-15 * looseness).min(1e-6)
}

/// S = 1: the regions as intervals with their standard deviations. Exact at one fixed cost;
/// points go through the linear-space blocks of `interval.rs`, and only the points those
/// decline through the per-region methods.
pub struct IntervalIntegrator {
    intervals: Intervals,
}

impl IntervalIntegrator {
    pub fn new(partition: &Partition, algebra: &RegionAlgebra, cancel: &Cancel) -> Result<Self> {
        let mut ends = Vec::with_capacity(partition.len());
        let mut sd = Vec::with_capacity(partition.len());
        for q in 0..partition.len() {
            cancel.check()?;
            let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
            for facet in partition.facets(q) {
                // normal = +-1: z <= offset or -z <= offset.
                if facet.normal[0] > 0.0 {
                    hi = hi.min(facet.offset / facet.normal[0]);
                } else {
                    lo = lo.max(facet.offset / facet.normal[0]);
                }
            }
            ends.push((lo, hi));
            sd.push(algebra.sigma(q)[0].sqrt());
        }
        Ok(IntervalIntegrator { intervals: Intervals::new(&ends, sd) })
    }

    pub(crate) fn intervals(&self) -> &Intervals {
        &self.intervals
    }
}

impl RegionIntegrator for IntervalIntegrator {
    fn log_mass(&self, region: usize, mean: &[f64]) -> f64 {
        let (lo, hi, sd) = self.intervals.interval(region);
        log_diff_ndtr((lo - mean[0]) / sd, (hi - mean[0]) / sd)
    }

    fn moments_into(&self, region: usize, mean: &[f64], cond_mean: &mut [f64], cond_second: &mut [f64]) -> f64 {
        let (lo, hi, sd) = self.intervals.interval(region);
        let (log_mass, m, second) = truncated_normal(mean[0], sd, lo, hi);
        cond_mean[0] = m;
        cond_second[0] = second;
        log_mass
    }

    /// The Gaussian tail bound `Phi(-t) <= exp(-t^2 / 2) / 2` at the distance `t` (in standard
    /// deviations) from the mean to the interval.
    fn log_mass_bound(&self, region: usize, mean: &[f64]) -> f64 {
        self.intervals.log_mass_bound(region, mean[0])
    }

    /// The truncated normal's own variance, accurate also for short and far intervals (where
    /// `E[z^2] - E[z]^2` would keep no digit of it).
    fn central_moments_into(&self, region: usize, mean: &[f64], cond_mean: &mut [f64], cond_cov: &mut [f64]) -> f64 {
        let (lo, hi, sd) = self.intervals.interval(region);
        let (log_mass, m, variance) = truncated_normal_central(mean[0], sd, lo, hi);
        cond_mean[0] = m;
        cond_cov[0] = variance;
        log_mass
    }

    fn log_likelihood_batch(&self, algebra: &RegionAlgebra, x: DMatrixView<f64>, cancel: &Cancel) -> Result<Vec<f64>> {
        super::log_likelihood_on_intervals(algebra, self, x, cancel)
    }

    fn e_step_batch(&self, algebra: &RegionAlgebra, x: DMatrixView<f64>, cancel: &Cancel) -> Result<EStep> {
        super::estep::e_step_on_intervals(algebra, self, x, cancel)
    }

    fn point_terms(&self, terms: &mut PointTerms, log_kappa: &[f64], mu: &[f64], s: usize) {
        terms.compute_on_intervals(self, log_kappa, mu, s);
    }
}

/// A polygon's mass or moments must be numbers (see `crate::gauss::checked`); a NaN stops the
/// call through its token with this context.
fn check_polygon(region: usize, log_mass: f64, moments: &[f64]) {
    let bad_moments = log_mass > f64::NEG_INFINITY && moments.iter().any(|v| !v.is_finite());
    if log_mass.is_nan() || log_mass == f64::INFINITY || bad_moments {
        Cancel::current().fail(Error::Numerical(format!(
            "the S = 2 Gaussian integral over region {region} (a polygon) gave log mass {log_mass}, moments {moments:?}"
        )));
    }
}

/// S = 2: the regions as convex polygons, integrated exactly (to ~1e-15, looser for terms known
/// to be small).
pub struct PolygonIntegrator {
    polygons: Vec<Polygon2>,
}

impl PolygonIntegrator {
    pub fn new(partition: &Partition, algebra: &RegionAlgebra, cancel: &Cancel) -> Result<Self> {
        let mut polygons = Vec::with_capacity(partition.len());
        for q in 0..partition.len() {
            cancel.check()?;
            let facets = partition.facets(q);
            let g = facets.iter().map(|f| [f.normal[0], f.normal[1]]).collect();
            let h = facets.iter().map(|f| f.offset).collect();
            let l = algebra.chol(q);
            let mut poly = Polygon2::new(g, h, [l[0], l[1], l[2], l[3]]);
            // Inference integrates a polygon against many means, so its series, built at the
            // first that asks, pays for itself.
            poly.enable_series();
            polygons.push(poly);
        }
        Ok(PolygonIntegrator { polygons })
    }
}

impl RegionIntegrator for PolygonIntegrator {
    fn log_mass(&self, region: usize, mean: &[f64]) -> f64 {
        self.log_mass_loose(region, mean, 1.0)
    }

    fn moments_into(&self, region: usize, mean: &[f64], cond_mean: &mut [f64], cond_second: &mut [f64]) -> f64 {
        self.moments_into_loose(region, mean, cond_mean, cond_second, 1.0)
    }

    fn log_mass_bound(&self, region: usize, mean: &[f64]) -> f64 {
        self.polygons[region].log_mass_bound(mean)
    }

    fn uses_looseness(&self) -> bool {
        true
    }

    fn log_mass_loose(&self, region: usize, mean: &[f64], looseness: f64) -> f64 {
        let log_mass = self.polygons[region].log_mass(mean, polygon_rtol(looseness));
        check_polygon(region, log_mass, &[]);
        log_mass
    }

    fn moments_into_loose(
        &self,
        region: usize,
        mean: &[f64],
        cond_mean: &mut [f64],
        cond_second: &mut [f64],
        looseness: f64,
    ) -> f64 {
        let log_mass = self.polygons[region].integrate(mean, polygon_rtol(looseness), cond_mean, cond_second);
        check_polygon(region, log_mass, cond_mean);
        check_polygon(region, log_mass, cond_second);
        log_mass
    }

    fn central_moments_into(&self, region: usize, mean: &[f64], cond_mean: &mut [f64], cond_cov: &mut [f64]) -> f64 {
        let log_mass = self.polygons[region].central_moments(mean, cond_mean, cond_cov);
        check_polygon(region, log_mass, cond_mean);
        check_polygon(region, log_mass, cond_cov);
        log_mass
    }
}

/// One region for [`PolyhedronIntegrator`]: its facets under Sigma_q, and its interior point.
struct Facets {
    shape: PolytopeShape,
    h: Vec<f64>,
    inside: Vec<f64>,
}

/// S >= 3: the regions as polyhedra, by the engine's facet path: adaptive quadrature over exact
/// slices to relative error `rtol` for S = 3, quasi-Monte Carlo with relative error `rtol` above.
pub struct PolyhedronIntegrator {
    regions: Vec<Facets>,
    rtol: f64,
    seed: u64,
}

impl PolyhedronIntegrator {
    /// `settings`' accuracy and seed are kept for the integrals; its token interrupts this
    /// preparation (the integrals check the token current at their call).
    pub fn new(partition: &Partition, algebra: &RegionAlgebra, settings: &IntegrationSettings) -> Result<Self> {
        let s = algebra.latent_dim();
        let IntegrationSettings { rtol, seed, cancel, .. } = *settings;
        crate::gauss::check_rtol(rtol)?;
        let mut regions = Vec::with_capacity(partition.len());
        for q in 0..partition.len() {
            cancel.check()?;
            let facets = partition.facets(q);
            let g: Vec<f64> = facets.iter().flat_map(|f| f.normal.iter().copied()).collect();
            regions.push(Facets {
                shape: PolytopeShape::with_factor(&g, s, algebra.chol(q).to_vec()),
                h: facets.iter().map(|f| f.offset).collect(),
                inside: partition.interior_point(q).to_vec(),
            });
        }
        Ok(PolyhedronIntegrator { regions, rtol, seed })
    }

    fn integrate(&self, region: usize, mean: &[f64], want_moments: bool, looseness: f64) -> GaussMoments {
        let Facets { shape, h, inside } = &self.regions[region];
        // A term `t` at most `b` while the terms before it sum to `T` (`looseness = T / b`)
        // is asked `rtol` times the looseness of itself, up to a thousand times `rtol`, or
        // `rtol T / (b R)` where that is looser: an absolute error of at most `rtol T / R`, so
        // that the tiny terms of the R regions together stay within `rtol` of the sum. Never
        // looser than 10% relative: the moments and the weights keep a digit.
        let share = looseness.min(MAX_LOOSENESS).max(looseness / self.regions.len() as f64);
        let rtol = (self.rtol * share).min(0.1).max(self.rtol);
        // That absolute error, `rtol T / R`, is also `rtol looseness / R` times the bound `b`'s
        // mass part (the tail beyond the nearest point): where the integral shows the whole
        // mass within it (a sliver near the mean, whose bound is far above its mass), the term
        // is dropped rather than computed to 10%.
        let negligible = self.rtol * looseness / self.regions.len() as f64;
        // The trait has no error channel: the call's token (`Cancel::current`, set by
        // inference's batches) interrupts the integral and carries its failure, which stops
        // the call and becomes its error; the value returned meanwhile is never used.
        let cancel = Cancel::current();
        match shape.moments_of_facets(
            h,
            mean,
            inside,
            want_moments,
            &IntegrationSettings::new(rtol, self.seed, &cancel).with_negligible(negligible),
        ) {
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
}

impl RegionIntegrator for PolyhedronIntegrator {
    fn log_mass(&self, region: usize, mean: &[f64]) -> f64 {
        self.log_mass_loose(region, mean, 1.0)
    }

    fn moments_into(&self, region: usize, mean: &[f64], cond_mean: &mut [f64], cond_second: &mut [f64]) -> f64 {
        self.moments_into_loose(region, mean, cond_mean, cond_second, 1.0)
    }

    /// The Gaussian tail bound at the whitened distance from the mean to the polyhedron.
    fn log_mass_bound(&self, region: usize, mean: &[f64]) -> f64 {
        let Facets { shape, h, inside } = &self.regions[region];
        shape.log_mass_bound(h, mean, inside)
    }

    fn uses_looseness(&self) -> bool {
        true
    }

    fn log_mass_loose(&self, region: usize, mean: &[f64], looseness: f64) -> f64 {
        self.integrate(region, mean, false, looseness).log_mass
    }

    fn moments_into_loose(
        &self,
        region: usize,
        mean: &[f64],
        cond_mean: &mut [f64],
        cond_second: &mut [f64],
        looseness: f64,
    ) -> f64 {
        let out = self.integrate(region, mean, true, looseness);
        let s = mean.len();
        cond_mean.copy_from_slice(&out.mean);
        for i in 0..s {
            for j in 0..s {
                cond_second[i * s + j] = out.cov[i * s + j] + out.mean[i] * out.mean[j];
            }
        }
        out.log_mass
    }

    fn central_moments_into(&self, region: usize, mean: &[f64], cond_mean: &mut [f64], cond_cov: &mut [f64]) -> f64 {
        let out = self.integrate(region, mean, true, 1.0);
        cond_mean.copy_from_slice(&out.mean);
        cond_cov.copy_from_slice(&out.cov);
        out.log_mass
    }
}

/// The region integrator for a model's latent dimension, chosen once when built: inference
/// dispatches on it once per call, and then runs on the chosen integrator alone.
pub enum GaussIntegrator {
    /// Boxed: the intervals' tables are larger than the other variants.
    Interval(Box<IntervalIntegrator>),
    Polygon(PolygonIntegrator),
    Polyhedron(PolyhedronIntegrator),
}

/// `$body` with `$i` bound to the integrator inside `$self`.
macro_rules! dispatch {
    ($self:expr, $i:ident => $body:expr) => {
        match $self {
            GaussIntegrator::Interval($i) => $body,
            GaussIntegrator::Polygon($i) => $body,
            GaussIntegrator::Polyhedron($i) => $body,
        }
    };
}

impl GaussIntegrator {
    /// Region integrals: exact for latent dimensions 1 and 2, adaptive quadrature over exact
    /// slices to relative error `settings.rtol` for 3, quasi-Monte Carlo with relative error
    /// `settings.rtol` above.
    pub fn new(partition: &Partition, algebra: &RegionAlgebra, settings: &IntegrationSettings) -> Result<Self> {
        let (s, cancel) = (algebra.latent_dim(), settings.cancel);
        crate::gauss::check_rtol(settings.rtol)?;
        if s > crate::gauss::sobol::MAX_DIM {
            return Err(Error::InvalidInput(format!(
                "inference supports latent dimensions up to {}; this decoder has {s}",
                crate::gauss::sobol::MAX_DIM
            )));
        }
        Ok(match s {
            1 => GaussIntegrator::Interval(Box::new(IntervalIntegrator::new(partition, algebra, cancel)?)),
            2 => GaussIntegrator::Polygon(PolygonIntegrator::new(partition, algebra, cancel)?),
            _ => GaussIntegrator::Polyhedron(PolyhedronIntegrator::new(partition, algebra, settings)?),
        })
    }
}

impl RegionIntegrator for GaussIntegrator {
    fn log_mass(&self, region: usize, mean: &[f64]) -> f64 {
        dispatch!(self, i => i.log_mass(region, mean))
    }

    fn moments_into(&self, region: usize, mean: &[f64], cond_mean: &mut [f64], cond_second: &mut [f64]) -> f64 {
        dispatch!(self, i => i.moments_into(region, mean, cond_mean, cond_second))
    }

    fn log_mass_bound(&self, region: usize, mean: &[f64]) -> f64 {
        dispatch!(self, i => i.log_mass_bound(region, mean))
    }

    fn uses_looseness(&self) -> bool {
        dispatch!(self, i => i.uses_looseness())
    }

    fn log_mass_loose(&self, region: usize, mean: &[f64], looseness: f64) -> f64 {
        dispatch!(self, i => i.log_mass_loose(region, mean, looseness))
    }

    fn moments_into_loose(
        &self,
        region: usize,
        mean: &[f64],
        cond_mean: &mut [f64],
        cond_second: &mut [f64],
        looseness: f64,
    ) -> f64 {
        dispatch!(self, i => i.moments_into_loose(region, mean, cond_mean, cond_second, looseness))
    }

    fn central_moments_into(&self, region: usize, mean: &[f64], cond_mean: &mut [f64], cond_cov: &mut [f64]) -> f64 {
        dispatch!(self, i => i.central_moments_into(region, mean, cond_mean, cond_cov))
    }

    fn log_likelihood_batch(&self, algebra: &RegionAlgebra, x: DMatrixView<f64>, cancel: &Cancel) -> Result<Vec<f64>> {
        dispatch!(self, i => i.log_likelihood_batch(algebra, x, cancel))
    }

    fn e_step_batch(&self, algebra: &RegionAlgebra, x: DMatrixView<f64>, cancel: &Cancel) -> Result<EStep> {
        dispatch!(self, i => i.e_step_batch(algebra, x, cancel))
    }

    fn point_terms(&self, terms: &mut PointTerms, log_kappa: &[f64], mu: &[f64], s: usize) {
        dispatch!(self, i => i.point_terms(terms, log_kappa, mu, s))
    }
}
