//! S = 1 in linear space, sixteen points at a time. The regions are intervals, and two neighbours
//! share their common end exactly (the partition cuts both at one breakpoint value). In region q
//! the joint density is `f(z) = p(x | z) p(z) = kappa_q N(z; mu_q, sd_q^2)`, and `f` is continuous
//! across the ends. So a region's term `kappa_q (Phi(b) - Phi(a))` (standardised ends `a`, `b`)
//! is a combination of `f` at its ends times Cody's rational tail factors, and its moments
//! `E[z 1_q]`, `E[z^2 1_q]` follow by parts from the same values. One exponential per end,
//! shared by the two regions that meet there, replaces two per region for the CDF, a logarithm
//! for the term and an exponential to add it up (and two more for the moments).
//!
//! The points of a block take one vector lane each, and every formula is written without
//! branches per lane (both forms and a select where a lane may need either), so that a region's
//! terms for sixteen points cost about what one point's would. Everything is scaled by `e^{-M}`,
//! `M` the point's largest bound `log kappa_q + log_mass_bound_q`, which no term exceeds. A lane
//! counts a region where its bound is within [`PRUNE_GAP`] of `M` or of the sum of those terms;
//! a region is computed where any lane counts it, and a lane's result depends only on its own
//! point (not on the block's other points). A point whose terms all lie far below `M` is
//! declined, for the log-space path. Products and sums go through the kernel's `MulAdd`:
//! fused on the wide vectors, which took 11-16% off the log-likelihood at N = 4000 (one core),
//! so a lane's bits depend on whether the processor has fused multiply-add (not on anything
//! else).

use nalgebra::DMatrixView;

use super::{RegionAlgebra, PRUNE_GAP};
use crate::gauss::normal::{
    cody_central, cody_far_one_division, cody_middle, log_diff_ndtr, truncated_normal, CentredSeries, CODY_CENTRAL_END,
    FRAC_1_SQRT_2PI, SQRT_32,
};
use crate::gauss::normal_batch::{exp_or_zero, ln, with_wide_vectors, MulAdd, Separate, VectorKernel};

/// An infinite end.
const NO_END: usize = usize::MAX;

/// Points evaluated together: two AVX-512 vectors of doubles, so that each chain of dependent
/// products has a second beside it (eight lanes and thirty-two were both slower).
pub(crate) const LANES: usize = 16;
/// A value per lane, aligned to a cache line: vectors that straddle two lines load and store
/// slower, and where the compiler places unaligned arrays on the stack changed with unrelated
/// edits.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Lanes([f64; LANES]);

impl Lanes {
    const fn splat(value: f64) -> Self {
        Lanes([value; LANES])
    }
}

impl std::ops::Deref for Lanes {
    type Target = [f64; LANES];

    #[inline(always)]
    fn deref(&self) -> &[f64; LANES] {
        &self.0
    }
}

impl std::ops::DerefMut for Lanes {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut [f64; LANES] {
        &mut self.0
    }
}

/// Below this the scaled sum of a point's terms keeps too few digits (or underflows): the
/// caller uses the log-space path instead.
const MIN_SCALED_TOTAL: f64 = 1e-250;

/// `log` of the Gaussian tail bound `Phi(-t) <= exp(-t^2 / 2) / 2`, `t` the distance in standard
/// deviations from the mean `mu` to `[lo, hi]`; 0 for a mean inside: [`crate::linalg::log_tail_bound`]
/// in the branch-free form of the blocks' vector lanes (with the kernel's multiply-add).
#[inline(always)]
fn tail_bound<M: MulAdd>(lo: f64, hi: f64, inv_sd: f64, mu: f64) -> f64 {
    // Plain comparisons rather than `f64::max` (no NaN here) and a select of constants, so
    // that the compiler keeps the passes over all regions free of branches.
    let (below, above) = (lo - mu, mu - hi);
    let distance = if below > above { below } else { above };
    let outside = distance > 0.0;
    let t = if outside { distance } else { 0.0 } * inv_sd;
    M::mul_add(-0.5 * t, t, -if outside { std::f64::consts::LN_2 } else { 0.0 })
}

/// The largest of `values` (at least one, none NaN), with four running maxima: one chain of
/// dependent comparisons would cost their latency per region.
#[inline(always)]
fn largest(values: &[f64]) -> f64 {
    let mut maxima = [f64::NEG_INFINITY; 4];
    let chunks = values.chunks_exact(4);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (m, &v) in maxima.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    rest.iter().chain(&maxima).fold(f64::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// The regions of a one-dimensional latent space with their local standard deviations.
pub struct Intervals {
    lo: Vec<f64>,
    hi: Vec<f64>,
    /// Indices of each region's ends among the distinct finite ends (`NO_END` if infinite).
    lo_end: Vec<usize>,
    hi_end: Vec<usize>,
    /// The distinct finite ends, and for each the region whose values give the joint density
    /// there (the one on its left where there is one): a fixed choice, so that a lane's density
    /// does not depend on which of the two regions the block computes first.
    ends: Vec<f64>,
    density_region: Vec<usize>,
    /// Midpoint and half-width, standardised by `sd`, of each region; the centred series of
    /// each region short enough to take it (NaN coefficients otherwise: never selected, since
    /// `half` is beyond the series' reach).
    mid: Vec<f64>,
    half: Vec<f64>,
    series: Vec<CentredSeries>,
    sd: Vec<f64>,
    /// `1 / sd`: the bounds of every region, for every point, would otherwise divide.
    inv_sd: Vec<f64>,
    log_sd: Vec<f64>,
}

impl Intervals {
    pub(crate) fn new(intervals: &[(f64, f64)], sd: Vec<f64>) -> Self {
        let mut ends: Vec<f64> = intervals.iter().flat_map(|&(lo, hi)| [lo, hi]).filter(|t| t.is_finite()).collect();
        ends.sort_by(f64::total_cmp);
        ends.dedup();
        let half: Vec<f64> = intervals.iter().zip(&sd).map(|(e, sd)| 0.5 * (e.1 - e.0) / sd).collect();
        let index =
            |t: f64| if t.is_finite() { ends.binary_search_by(|v| v.total_cmp(&t)).unwrap_or(NO_END) } else { NO_END };
        let (lo_end, hi_end): (Vec<usize>, Vec<usize>) = intervals.iter().map(|e| (index(e.0), index(e.1))).unzip();
        let mut density_region = vec![NO_END; ends.len()];
        for (q, &end) in hi_end.iter().enumerate().chain(lo_end.iter().enumerate()) {
            if end != NO_END && density_region[end] == NO_END {
                density_region[end] = q;
            }
        }
        Intervals {
            lo: intervals.iter().map(|e| e.0).collect(),
            hi: intervals.iter().map(|e| e.1).collect(),
            lo_end,
            hi_end,
            ends,
            density_region,
            log_sd: sd.iter().map(|v| v.ln()).collect(),
            inv_sd: sd.iter().map(|v| 1.0 / v).collect(),
            mid: intervals.iter().map(|e| 0.5 * (e.0 + e.1)).collect(),
            series: half.iter().map(|&h| CentredSeries::new(h)).collect(),
            half,
            sd,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.lo.len()
    }

    /// Region q's `(lo, hi, sd)`.
    pub(crate) fn interval(&self, q: usize) -> (f64, f64, f64) {
        (self.lo[q], self.hi[q], self.sd[q])
    }

    /// The Gaussian tail bound `Phi(-t) <= exp(-t^2 / 2) / 2` at the distance `t` (in standard
    /// deviations) from the mean to the interval; also the log-space path's bound.
    #[inline]
    pub(crate) fn log_mass_bound(&self, q: usize, mu: f64) -> f64 {
        tail_bound::<Separate>(self.lo[q], self.hi[q], self.inv_sd[q], mu)
    }

    /// The region of the largest bound `log kappa_q + log_mass_bound_q` of a point (the first
    /// of equal ones), `bounds` scratch of one entry per region.
    #[inline(always)]
    pub(crate) fn best_region<M: MulAdd>(&self, log_kappa: &[f64], mu: &[f64], bounds: &mut [f64]) -> usize {
        let constants = self.lo.iter().zip(&self.hi).zip(&self.inv_sd);
        for ((bound, (lk, m)), ((lo, hi), inv_sd)) in bounds.iter_mut().zip(log_kappa.iter().zip(mu)).zip(constants) {
            *bound = lk + tail_bound::<M>(*lo, *hi, *inv_sd, *m);
        }
        let top = largest(bounds);
        bounds.iter().position(|&b| b == top).unwrap_or(0)
    }

    /// Region q's constants, for a loop over lanes.
    #[inline(always)]
    fn region(&self, q: usize) -> Region {
        Region {
            lo: self.lo[q],
            hi: self.hi[q],
            sd: self.sd[q],
            inv_sd: self.inv_sd[q],
            mid: self.mid[q],
            half: self.half[q],
            series: self.series[q],
        }
    }

    /// Region q's scaled terms in log space, for a lane whose difference of tails cancels.
    fn log_space_terms<const MOMENTS: bool>(&self, q: usize, log_kappa: f64, mu: f64) -> [f64; 3] {
        let (lo, hi, sd) = self.interval(q);
        if MOMENTS {
            let (log_mass, mean, second) = truncated_normal(mu, sd, lo, hi);
            let mass = (log_kappa + log_mass).exp();
            if mass == 0.0 {
                return [0.0; 3];
            }
            [mass, mass * mean, mass * second]
        } else {
            [(log_kappa + log_diff_ndtr((lo - mu) / sd, (hi - mu) / sd)).exp(), 0.0, 0.0]
        }
    }
}

/// One region's constants (see [`Intervals`]).
#[derive(Clone, Copy)]
struct Region {
    lo: f64,
    hi: f64,
    sd: f64,
    inv_sd: f64,
    mid: f64,
    half: f64,
    series: CentredSeries,
}

/// A series lane's scaled `[kappa Phi, E[z 1_q], E[z^2 1_q]]` (`[_, 0, 0]` unless `MOMENTS`)
/// from `e`, `sqrt(2 pi)` times its scaled density at the centre `mid`, and the series'
/// integrals `[I_0, I_1, I_2]` about the centre.
#[inline(always)]
fn series_terms<const MOMENTS: bool, M: MulAdd>(e: f64, integrals: [f64; 3], mid: f64, sd: f64) -> [f64; 3] {
    let density_c = e * FRAC_1_SQRT_2PI;
    let mass = density_c * integrals[0];
    if !MOMENTS {
        return [mass, 0.0, 0.0];
    }
    let (first_c, second_c) = (density_c * integrals[1], density_c * integrals[2]);
    [
        mass,
        M::mul_add(mid, mass, sd * first_c),
        M::mul_add(mid * mid, mass, sd * M::mul_add(2.0 * mid, first_c, sd * second_c)),
    ]
}

/// `(kappa Phi(-y), kappa (Phi(y) - 1/2))` scaled by `e^{-M}` for each lane, `y >= 0`
/// (infinite at an infinite end), from `end = exp(log kappa - M - y^2 / 2)` and
/// `kappa = kappa e^{-M}`: Cody's tail form `end r(y)` beyond his central range,
/// `kappa (1/2 - t(y))` within it. A block evaluates only the forms its arguments take (one,
/// two neighbouring ones, or all three), with the same bits either way.
#[inline(always)]
fn end_tails<M: MulAdd>(y: &Lanes, end: &Lanes, kappa: &Lanes) -> (Lanes, Lanes) {
    // And- and or-reductions of comparisons, which vectorise (counting them did not).
    let (mut all_central, mut any_central, mut all_near, mut any_near) = (true, false, true, false);
    for &y in y.iter() {
        (all_central, any_central) = (all_central & (y <= CODY_CENTRAL_END), any_central | (y <= CODY_CENTRAL_END));
        (all_near, any_near) = (all_near & (y <= SQRT_32), any_near | (y <= SQRT_32));
    }
    let (mut tail, mut upper) = (ZERO_LANES, ZERO_LANES);
    if all_central {
        for l in 0..LANES {
            let (num, den) = cody_central::<M>(y[l]);
            let t = num / den;
            (tail[l], upper[l]) = (kappa[l] * (0.5 - t), kappa[l] * t);
        }
    } else if !any_central && all_near {
        for l in 0..LANES {
            let (num, den) = cody_middle::<M>(y[l]);
            tail[l] = end[l] * (num / den);
            upper[l] = 0.5 * kappa[l] - tail[l];
        }
    } else if !any_near {
        for l in 0..LANES {
            tail[l] = end[l] * cody_far_one_division::<M>(y[l]);
            upper[l] = 0.5 * kappa[l] - tail[l];
        }
    } else if all_near {
        // Central and middle lanes, none far.
        for l in 0..LANES {
            let (central_num, central_den) = cody_central::<M>(y[l]);
            let (middle_num, middle_den) = cody_middle::<M>(y[l]);
            let is_central = y[l] <= CODY_CENTRAL_END;
            let ratio =
                if is_central { central_num } else { middle_num } / if is_central { central_den } else { middle_den };
            let tail_form = end[l] * ratio;
            (tail[l], upper[l]) = if is_central {
                (kappa[l] * (0.5 - ratio), kappa[l] * ratio)
            } else {
                (tail_form, 0.5 * kappa[l] - tail_form)
            };
        }
    } else if !any_central {
        // Middle and far lanes, none central.
        for l in 0..LANES {
            let (num, den) = cody_middle::<M>(y[l]);
            let far = cody_far_one_division::<M>(y[l]);
            tail[l] = end[l] * if y[l] <= SQRT_32 { num / den } else { far };
            upper[l] = 0.5 * kappa[l] - tail[l];
        }
    } else {
        for l in 0..LANES {
            let (central_num, central_den) = cody_central::<M>(y[l]);
            let (middle_num, middle_den) = cody_middle::<M>(y[l]);
            let is_central = y[l] <= CODY_CENTRAL_END;
            let ratio =
                if is_central { central_num } else { middle_num } / if is_central { central_den } else { middle_den };
            let far = cody_far_one_division::<M>(y[l]);
            let tail_form = end[l] * if y[l] <= SQRT_32 { ratio } else { far };
            (tail[l], upper[l]) = if is_central {
                (kappa[l] * (0.5 - ratio), kappa[l] * ratio)
            } else {
                (tail_form, 0.5 * kappa[l] - tail_form)
            };
        }
    }
    (tail, upper)
}

/// A block of up to [`LANES`] points in one batch: their per-region values, one lane each,
/// and the scratch of their evaluation, reused from block to block.
#[derive(Default)]
pub(crate) struct Block {
    /// The points' coordinates, where the block forms their values.
    x: Vec<Lanes>,
    /// Scratch of [`Forms::fix_rough_regions`].
    rough: Vec<bool>,
    upper: Vec<Lanes>,
    fix: Vec<bool>,
    /// `log kappa_q - M` and `mu_q` per region.
    log_kappa: Vec<Lanes>,
    mu: Vec<Lanes>,
    /// `log kappa_q + log_mass_bound_q - M` per region.
    bound: Vec<Lanes>,
    /// `M`.
    scale: Lanes,
    /// A lane counts region q where `bound >= threshold`.
    threshold: Lanes,
    /// The sum of a lane's counted masses.
    total: Lanes,
    declined: [bool; LANES],
    /// The scaled joint density at each finite end, `f(t) sqrt(2 pi) e^{-M}`, once computed.
    density: Vec<Lanes>,
    density_ready: Vec<bool>,
    computed: Vec<bool>,
    /// Scaled `kappa Phi`, `E[z 1_q]`, `E[z^2 1_q]` per region (valid where computed; the
    /// moments only where asked for).
    mass: Vec<Lanes>,
    first: Vec<Lanes>,
    second: Vec<Lanes>,
}

/// The lanes' values at no finite end.
const ZERO_LANES: Lanes = Lanes::splat(0.0);

impl Block {
    /// Evaluates the block of `points` (at most [`LANES`], indices into the batch), one lane
    /// each; the lanes beyond them repeat the last point.
    pub(crate) fn evaluate<const MOMENTS: bool>(&mut self, intervals: &Intervals, local: &Local, points: &[usize]) {
        with_wide_vectors(Evaluation::<MOMENTS> { block: self, intervals, local, points });
    }

    /// `log p(x)` of the block's point `l`, or `None` where it was declined (its terms keep too
    /// few digits in linear space).
    pub(crate) fn log_likelihood(&self, l: usize) -> Option<f64> {
        (!self.declined[l]).then(|| self.scale[l] + self.total[l].ln())
    }

    /// The sum of lane l's scaled masses (`e^{-M} p(x)`).
    pub(crate) fn total(&self, l: usize) -> f64 {
        self.total[l]
    }

    /// Lane l's counted regions in increasing order with their scaled
    /// `[kappa Phi, E[z 1_q], E[z^2 1_q]]` (`e^{-M}` times the true values).
    pub(crate) fn terms(&self, l: usize) -> impl Iterator<Item = (usize, [f64; 3])> + '_ {
        let threshold = self.threshold[l];
        (0..self.bound.len())
            .filter(move |&q| self.bound[q][l] >= threshold)
            .map(move |q| (q, [self.mass[q][l], self.first[q][l], self.second[q][l]]))
    }

    /// The fraction of the regions that a lane counted, on average over the lanes.
    pub(crate) fn counted_fraction(&self) -> f64 {
        let counted: usize = self
            .bound
            .iter()
            .map(|bound| bound.iter().zip(self.threshold.iter()).filter(|(b, t)| b >= t).count())
            .sum();
        counted as f64 / (LANES * self.bound.len()) as f64
    }

    /// Whether the block declined its point `l` (see [`Self::log_likelihood`]).
    pub(crate) fn declined(&self, l: usize) -> bool {
        self.declined[l]
    }

    /// Appends the statistics of the block's first `points` lanes, except the declined ones,
    /// lane after lane: each lane's `log p(x)`, then its counted regions whose weight (mass
    /// over the total) exceeds `min_weight`, in increasing order, with their weights and their
    /// `E[z 1_q]`, `E[z^2 1_q]` over the total, and the end of its entries (to `ends`). The
    /// arrays grow once for the block; every region is written and the next one overwrites it
    /// unless it is kept, so that the loop has no branch.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn append(
        &self,
        points: usize,
        min_weight: f64,
        log_likelihood: &mut Vec<f64>,
        ends: &mut Vec<usize>,
        region: &mut Vec<usize>,
        m0: &mut Vec<f64>,
        m1: &mut Vec<f64>,
        m2: &mut Vec<f64>,
    ) {
        // Only computed regions can be kept.
        let computed: Vec<usize> = (0..self.mass.len()).filter(|&q| self.computed[q]).collect();
        let start = region.len();
        let room = start + points * computed.len();
        region.resize(room, 0);
        m0.resize(room, 0.0);
        m1.resize(room, 0.0);
        m2.resize(room, 0.0);
        let mut k = start;
        for l in (0..points).filter(|&l| !self.declined[l]) {
            log_likelihood.push(self.scale[l] + self.total[l].ln());
            let (inv_total, threshold) = (1.0 / self.total[l], self.threshold[l]);
            for &q in &computed {
                let (mass, first, second, bound) = (&self.mass[q], &self.first[q], &self.second[q], &self.bound[q]);
                let w = mass[l] * inv_total;
                region[k] = q;
                m0[k] = w;
                m1[k] = first[l] * inv_total;
                m2[k] = second[l] * inv_total;
                k += ((bound[l] >= threshold) & (w > min_weight)) as usize;
            }
            ends.push(k);
        }
        region.truncate(k);
        m0.truncate(k);
        m1.truncate(k);
        m2.truncate(k);
    }

    /// Makes sure the joint density at finite end `e` is computed, from its fixed region.
    #[inline(always)]
    fn ensure_density<M: MulAdd>(&mut self, intervals: &Intervals, e: usize) {
        if e == NO_END || self.density_ready[e] {
            return;
        }
        let q = intervals.density_region[e];
        let (t, inv_sd, log_sd) = (intervals.ends[e], intervals.inv_sd[q], intervals.log_sd[q]);
        let (lk, mu) = (self.log_kappa[q], self.mu[q]);
        let mut density = ZERO_LANES;
        for l in 0..LANES {
            let y = (t - mu[l]) * inv_sd;
            density[l] = exp_or_zero::<M>(M::mul_add(-0.5 * y, y, lk[l] - log_sd));
        }
        self.density[e] = density;
        self.density_ready[e] = true;
    }

    /// Region q's scaled `[kappa Phi, E[z 1_q], E[z^2 1_q]]` for every lane.
    #[inline(always)]
    fn compute<const MOMENTS: bool, M: MulAdd>(&mut self, intervals: &Intervals, q: usize) {
        let (lo_end, hi_end) = (intervals.lo_end[q], intervals.hi_end[q]);
        let Region { lo, hi, sd, inv_sd, mid, half, series: centred } = intervals.region(q);
        let (lk, mu) = (self.log_kappa[q], self.mu[q]);
        // Plain loops over lanes, no closures: a closure is compiled on its own, for the
        // baseline processor, where it is not inlined.
        // No arrays of booleans either: the compiler stores them lane by lane; a condition is
        // evaluated again where it is needed.
        let (mut a, mut b, mut c, mut e) = (ZERO_LANES, ZERO_LANES, ZERO_LANES, ZERO_LANES);
        let (mut all_series, mut any_series) = (true, false);
        for l in 0..LANES {
            (a[l], b[l], c[l]) = ((lo - mu[l]) * inv_sd, (hi - mu[l]) * inv_sd, (mid - mu[l]) * inv_sd);
            // Short against the density's scale: around the centre c, phi(c + s) / phi(c) is a
            // fast power series in s, where any difference of CDFs or of end densities would
            // cancel.
            let series = CentredSeries::reaches(half, c[l]);
            (all_series, any_series) = (all_series & series, any_series | series);
            // kappa e^-M, or (with the series) sqrt(2 pi) times the scaled density at the
            // centre: one exponential for either.
            e[l] = exp_or_zero::<M>(lk[l] - if series { 0.5 * c[l] * c[l] } else { 0.0 });
        }
        if all_series {
            // Most regions where posteriors are wide: the series alone, none of the tail forms'
            // arrays and selects.
            let (mut mass, mut first, mut second) = (ZERO_LANES, ZERO_LANES, ZERO_LANES);
            for l in 0..LANES {
                [mass[l], first[l], second[l]] =
                    series_terms::<MOMENTS, M>(e[l], centred.at::<MOMENTS, M>(c[l]), mid, sd);
            }
            self.store::<MOMENTS>(q, mass, first, second);
            return;
        }
        // The tail forms, for the lanes outside the series.
        let ((end_a, tail_a, upper_a), (end_b, tail_b, upper_b)) =
            (self.end_terms::<M>(intervals, lo_end, sd, &a, &e), self.end_terms::<M>(intervals, hi_end, sd, &b, &e));
        let (mut series_0, mut series_1, mut series_2) = (ZERO_LANES, ZERO_LANES, ZERO_LANES);
        if any_series {
            for l in 0..LANES {
                let series = CentredSeries::reaches(half, c[l]);
                [series_0[l], series_1[l], series_2[l]] = centred.at::<MOMENTS, M>(if series { c[l] } else { 0.0 });
            }
        }
        let mut any_cancels = false;
        let (mut mass, mut first, mut second) = (ZERO_LANES, ZERO_LANES, ZERO_LANES);
        for l in 0..LANES {
            let series = CentredSeries::reaches(half, c[l]);
            // Both ends on one side of the mean: a difference of two tails, the nearer first;
            // with the mean inside, kappa (Phi(b) - 1/2) + kappa (1/2 - Phi(a)), both
            // non-negative.
            let (right, left) = (a[l] >= 0.0, b[l] <= 0.0);
            // With both ends on one side, the nearer end has the larger tail: the larger and
            // the smaller of the two rather than a choice by side, which the compiler would
            // turn into a choice of addresses and a gather.
            let (ta, tb) = (tail_a[l], tail_b[l]);
            let (near, far) = (if ta > tb { ta } else { tb }, if ta > tb { tb } else { ta });
            let one_sided = right | left;
            let by_tails = if one_sided { near - far } else { upper_a[l] + upper_b[l] };
            any_cancels |= one_sided & (far > 0.5 * near) & !series;
            let [by_series, first_series, second_series] =
                series_terms::<MOMENTS, M>(e[l], [series_0[l], series_1[l], series_2[l]], mid, sd);
            mass[l] = if series { by_series } else { by_tails };
            if MOMENTS {
                // By parts, int z phi = mu Z + sd (phi(a) - phi(b)), and
                // int z^2 phi = (mu^2 + sd^2) Z + sd ((mu + lo) phi(a) - (mu + hi) phi(b)),
                // with kappa phi e^-M at each end (zero at an infinite one).
                let m = mu[l];
                let (density_a, density_b) = (end_a[l] * FRAC_1_SQRT_2PI, end_b[l] * FRAC_1_SQRT_2PI);
                let moment_a = if density_a > 0.0 { (m + lo) * density_a } else { 0.0 };
                let moment_b = if density_b > 0.0 { (m + hi) * density_b } else { 0.0 };
                let first_tails = m * by_tails + sd * (density_a - density_b);
                let second_tails = (m * m + sd * sd) * by_tails + sd * (moment_a - moment_b);
                first[l] = if series { first_series } else { first_tails };
                second[l] = if series { second_series } else { second_tails };
            }
        }
        if any_cancels {
            for l in 0..LANES {
                let (right, left) = (a[l] >= 0.0, b[l] <= 0.0);
                let (near, far) = if right { (tail_a[l], tail_b[l]) } else { (tail_b[l], tail_a[l]) };
                if !((right | left) & (far > 0.5 * near) & !CentredSeries::reaches(half, c[l])) {
                    continue;
                }
                [mass[l], first[l], second[l]] = intervals.log_space_terms::<MOMENTS>(q, lk[l], mu[l]);
            }
        }
        self.store::<MOMENTS>(q, mass, first, second);
    }

    #[inline(always)]
    fn store<const MOMENTS: bool>(&mut self, q: usize, mass: Lanes, first: Lanes, second: Lanes) {
        self.mass[q] = mass;
        if MOMENTS {
            self.first[q] = first;
            self.second[q] = second;
        }
        self.computed[q] = true;
    }

    /// At a region's end (standardised `y` in each lane), `sd D = exp(log kappa - M - y^2 / 2)`
    /// and the two scaled tails of [`end_tails`] (zero, and `kappa / 2`, at an infinite end).
    #[inline(always)]
    fn end_terms<M: MulAdd>(
        &mut self,
        intervals: &Intervals,
        end: usize,
        sd: f64,
        y: &Lanes,
        kappa: &Lanes,
    ) -> (Lanes, Lanes, Lanes) {
        if end == NO_END {
            let mut upper = ZERO_LANES;
            for l in 0..LANES {
                upper[l] = 0.5 * kappa[l];
            }
            return (ZERO_LANES, ZERO_LANES, upper);
        }
        self.ensure_density::<M>(intervals, end);
        let density = self.density[end];
        let (mut end_value, mut distance) = (ZERO_LANES, ZERO_LANES);
        for l in 0..LANES {
            end_value[l] = sd * density[l];
            distance[l] = y[l].abs();
        }
        let (tail, upper) = end_tails::<M>(&distance, &end_value, kappa);
        (end_value, tail, upper)
    }
}

/// Where a block takes its points' `log kappa_q` and `mu_q` from.
pub(crate) enum Local<'a> {
    /// Given point by point (`[p * R + q]`).
    Stored { log_kappa: &'a [f64], mu: &'a [f64] },
    /// Formed from the points, for a few outputs.
    Formed(Forms<'a>),
}

/// The points (`x`, `D x n`) and the algebra that forms their local Gaussians (see
/// [`RegionAlgebra::s1_form`]): the completed-square form, and the residual form for the lanes
/// whose error bound asks for it.
pub(crate) struct Forms<'a> {
    pub x: DMatrixView<'a, f64>,
    pub algebra: &'a RegionAlgebra,
}

impl Forms<'_> {
    /// The coordinates of the lanes' points, into `x_lanes`, their `x^T Psi^-1 x` and its
    /// largest value.
    #[inline(always)]
    fn load<M: MulAdd>(&self, lane_point: &[usize; LANES], x_lanes: &mut Vec<Lanes>) -> (Lanes, f64) {
        let inv_psi = self.algebra.inv_psi();
        x_lanes.resize(inv_psi.len(), ZERO_LANES);
        let mut xpx = ZERO_LANES;
        for (i, lanes) in x_lanes.iter_mut().enumerate() {
            for l in 0..LANES {
                lanes[l] = self.x[(i, lane_point[l])];
                xpx[l] = M::mul_add(lanes[l] * lanes[l], inv_psi[i], xpx[l]);
            }
        }
        (xpx, largest(&xpx[..]))
    }

    /// Region q's `(log kappa_q, mu_q)` for the loaded lanes; with `EXACT` false, the completed
    /// square however rough (for the ordering of points, where it only costs speed).
    #[inline(always)]
    fn region<M: MulAdd, const EXACT: bool>(
        &self,
        q: usize,
        x_lanes: &[Lanes],
        (xpx, largest_xpx): (&Lanes, f64),
    ) -> (Lanes, Lanes) {
        let (mut a, mut bx) = (ZERO_LANES, ZERO_LANES);
        for (i, xi) in x_lanes.iter().enumerate() {
            let (ca, cb) = self.algebra.s1_coefficients(q, i);
            for l in 0..LANES {
                a[l] = M::mul_add(ca, xi[l], a[l]);
                bx[l] = M::mul_add(cb, xi[l], bx[l]);
            }
        }
        let (mut lk, mut m) = (ZERO_LANES, ZERO_LANES);
        for l in 0..LANES {
            (lk[l], m[l], _) = self.algebra.s1_form::<M>(q, a[l], bx[l], xpx[l]);
        }
        // Lane by lane only where some lane's completed square may be too rough.
        if EXACT
            && self.algebra.completed_square_may_be_rough(q, largest_xpx)
            && (0..LANES).any(|l| self.algebra.completed_square_too_rough(q, lk[l], xpx[l]))
        {
            self.stable_lanes(q, x_lanes, xpx, &mut lk, &mut m);
        }
        (lk, m)
    }

    /// The residual form where the block may use a region's values and its completed square
    /// is too rough. A lane counts region q only where its bound lies within
    /// `PRUNE_GAP - ln MIN_SCALED_TOTAL` of the lane's scale (its threshold is never lower
    /// for a lane it does not decline), and computing q reads the joint density at q's ends
    /// from their density regions: with the completed square's values off by at most `err`,
    /// those are the regions fixed, judged by `bound + err` against the largest `bound - err`
    /// (which the lane's scale is at least, once fixed). Where a rough value is not finite,
    /// every rough region is fixed.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn fix_rough_regions<M: MulAdd>(
        &self,
        intervals: &Intervals,
        x_lanes: &[Lanes],
        xpx: &Lanes,
        log_kappa: &mut [Lanes],
        mu: &mut [Lanes],
        rough: &mut Vec<bool>,
        upper: &mut Vec<Lanes>,
        fix: &mut Vec<bool>,
    ) {
        let (algebra, r) = (self.algebra, intervals.len());
        rough.clear();
        rough.resize(r, false);
        upper.resize(r, ZERO_LANES);
        let mut scale = Lanes::splat(f64::NEG_INFINITY);
        let mut unreliable = false;
        for q in 0..r {
            let (lo, hi, inv_sd) = (intervals.lo[q], intervals.hi[q], intervals.inv_sd[q]);
            let (lk, m) = (log_kappa[q], mu[q]);
            let (mut up, mut any, mut finite) = (ZERO_LANES, false, true);
            for l in 0..LANES {
                let error = algebra.completed_square_error(q, xpx[l]);
                let bound = lk[l] + tail_bound::<M>(lo, hi, inv_sd, m[l]);
                let too_rough = algebra.completed_square_too_rough(q, lk[l], xpx[l]);
                any |= too_rough;
                // Finite, as one subtraction in the lanes.
                #[allow(clippy::eq_op)]
                let bound_finite = bound - bound == 0.0;
                finite &= !too_rough | bound_finite;
                up[l] = bound + error;
                let low = bound - error;
                scale[l] = if low > scale[l] { low } else { scale[l] };
            }
            rough[q] = any;
            unreliable |= !finite;
            upper[q] = up;
        }
        let every = unreliable;
        let reach = PRUNE_GAP - MIN_SCALED_TOTAL.ln() + 1.0;
        fix.clear();
        fix.resize(r, false);
        for q in 0..r {
            let up = upper[q];
            if every || (0..LANES).fold(false, |any, l| any | (up[l] >= scale[l] - reach)) {
                fix[q] |= rough[q];
                for end in [intervals.lo_end[q], intervals.hi_end[q]] {
                    if end != NO_END {
                        let neighbour = intervals.density_region[end];
                        fix[neighbour] |= rough[neighbour];
                    }
                }
            }
        }
        for q in (0..r).filter(|&q| fix[q]) {
            self.stable_lanes(q, x_lanes, xpx, &mut log_kappa[q], &mut mu[q]);
        }
    }

    /// The residual form for the lanes whose completed-square form's bound asks for it: on
    /// the vectors for every lane, kept where the completed square was too rough; the lanes
    /// whose plain residual is too rough as well (points extremely far in noise units) take
    /// the compensated one.
    // Kept out of line, so that the passes over regions stay small; compiled apart it runs on
    // the baseline processor, hence plain products and sums (fused ones would be library calls
    // there).
    #[inline(never)]
    fn stable_lanes(&self, q: usize, x_lanes: &[Lanes], xpx: &Lanes, lk: &mut Lanes, m: &mut Lanes) {
        let (mut residual, mut needs) = ([0.0; LANES], [false; LANES]);
        self.algebra.s1_residual_form::<Separate, LANES, Lanes>(q, x_lanes, xpx, m, &mut residual, &mut needs);
        for l in 0..LANES {
            if !self.algebra.completed_square_too_rough(q, lk[l], xpx[l]) {
                continue;
            }
            if needs[l] {
                let point: Vec<f64> = x_lanes.iter().map(|lanes| lanes[l]).collect();
                let mut mean = [m[l]];
                lk[l] = self.algebra.stable_log_kappa(q, &point, xpx[l], &mut mean);
                m[l] = mean[0];
            } else {
                lk[l] = residual[l];
            }
        }
    }
}

/// Each point's region of the largest bound (the first of equal ones), sixteen points at a
/// time.
struct BestRegions<'a> {
    intervals: &'a Intervals,
    forms: &'a Forms<'a>,
}

impl VectorKernel for BestRegions<'_> {
    type Output = Vec<usize>;

    #[inline(always)]
    fn run<M: MulAdd>(self) -> Vec<usize> {
        let BestRegions { intervals, forms } = self;
        let n = forms.x.ncols();
        let mut best = Vec::with_capacity(n);
        let mut x_lanes = Vec::new();
        for first in (0..n).step_by(LANES) {
            let lane_point: [usize; LANES] = std::array::from_fn(|l| (first + l).min(n - 1));
            let (xpx, largest_xpx) = forms.load::<M>(&lane_point, &mut x_lanes);
            let (mut top, mut region) = (Lanes::splat(f64::NEG_INFINITY), ZERO_LANES);
            for q in 0..intervals.len() {
                let (lk, mu) = forms.region::<M, false>(q, &x_lanes, (&xpx, largest_xpx));
                let (lo, hi, inv_sd) = (intervals.lo[q], intervals.hi[q], intervals.inv_sd[q]);
                for l in 0..LANES {
                    let bound = lk[l] + tail_bound::<M>(lo, hi, inv_sd, mu[l]);
                    let better = bound > top[l];
                    top[l] = if better { bound } else { top[l] };
                    region[l] = if better { q as f64 } else { region[l] };
                }
            }
            best.extend(region[..LANES.min(n - first)].iter().map(|&q| q as usize));
        }
        best
    }
}

impl Intervals {
    /// Each point's region of the largest bound, for points whose local Gaussians are formed.
    pub(crate) fn best_regions(&self, forms: &Forms) -> Vec<usize> {
        with_wide_vectors(BestRegions { intervals: self, forms })
    }
}

struct Evaluation<'a, const MOMENTS: bool> {
    block: &'a mut Block,
    intervals: &'a Intervals,
    local: &'a Local<'a>,
    points: &'a [usize],
}

impl<const MOMENTS: bool> VectorKernel for Evaluation<'_, MOMENTS> {
    type Output = ();

    #[inline(always)]
    fn run<M: MulAdd>(self) {
        let Evaluation { block, intervals, local, points } = self;
        let r = intervals.len();
        block.log_kappa.resize(r, ZERO_LANES);
        block.mu.resize(r, ZERO_LANES);
        let lane_point: [usize; LANES] = std::array::from_fn(|l| points[l.min(points.len() - 1)]);
        match *local {
            Local::Stored { log_kappa, mu } => {
                for (l, &p) in lane_point.iter().enumerate() {
                    for (lanes, &value) in block.log_kappa.iter_mut().zip(&log_kappa[p * r..(p + 1) * r]) {
                        lanes[l] = value;
                    }
                    for (lanes, &value) in block.mu.iter_mut().zip(&mu[p * r..(p + 1) * r]) {
                        lanes[l] = value;
                    }
                }
            }
            Local::Formed(ref forms) => {
                let (xpx, largest_xpx) = forms.load::<M>(&lane_point, &mut block.x);
                for q in 0..r {
                    (block.log_kappa[q], block.mu[q]) = forms.region::<M, false>(q, &block.x, (&xpx, largest_xpx));
                }
                if forms.algebra.completed_square_may_be_rough_anywhere(largest_xpx) {
                    forms.fix_rough_regions::<M>(
                        intervals,
                        &block.x,
                        &xpx,
                        &mut block.log_kappa,
                        &mut block.mu,
                        &mut block.rough,
                        &mut block.upper,
                        &mut block.fix,
                    );
                }
            }
        }
        block.bound.resize(r, ZERO_LANES);
        block.mass.resize(r, ZERO_LANES);
        if MOMENTS {
            block.first.resize(r, ZERO_LANES);
            block.second.resize(r, ZERO_LANES);
        }
        block.computed.clear();
        block.computed.resize(r, false);
        block.density.resize(intervals.ends.len(), ZERO_LANES);
        block.density_ready.clear();
        block.density_ready.resize(intervals.ends.len(), false);
        // Lanes are copied in and out of the block's arrays: the compiler cannot tell that
        // two of them do not overlap, and would not vectorise a loop that reads one and writes
        // another.
        let mut scale = Lanes::splat(f64::NEG_INFINITY);
        for q in 0..r {
            let (lo, hi, inv_sd) = (intervals.lo[q], intervals.hi[q], intervals.inv_sd[q]);
            let (lk, mu) = (block.log_kappa[q], block.mu[q]);
            let mut bound = ZERO_LANES;
            for l in 0..LANES {
                bound[l] = lk[l] + tail_bound::<M>(lo, hi, inv_sd, mu[l]);
                scale[l] = if bound[l] > scale[l] { bound[l] } else { scale[l] };
            }
            block.bound[q] = bound;
        }
        for q in 0..r {
            let (mut bound, mut lk) = (block.bound[q], block.log_kappa[q]);
            for l in 0..LANES {
                bound[l] -= scale[l];
                lk[l] -= scale[l];
            }
            (block.bound[q], block.log_kappa[q]) = (bound, lk);
        }
        block.scale = scale;
        // First the regions within PRUNE_GAP of the scale, which bounds every term.
        let mut total = ZERO_LANES;
        for q in 0..r {
            let bound = block.bound[q];
            if bound.iter().fold(false, |any, &b| any | (b >= -PRUNE_GAP)) {
                block.compute::<MOMENTS, M>(intervals, q);
                let mass = block.mass[q];
                for l in 0..LANES {
                    total[l] += if bound[l] >= -PRUNE_GAP { mass[l] } else { 0.0 };
                }
            }
        }
        // Then those within PRUNE_GAP of that sum, where it is below the scale's.
        for ((declined, threshold), &total) in
            block.declined.iter_mut().zip(block.threshold.iter_mut()).zip(total.iter())
        {
            let usable = total > MIN_SCALED_TOTAL && total < f64::INFINITY;
            *declined = !usable;
            let below_sum = ln(if usable { total } else { 1.0 }) - PRUNE_GAP;
            *threshold = if below_sum < -PRUNE_GAP { below_sum } else { -PRUNE_GAP };
        }
        let threshold = block.threshold;
        for q in 0..r {
            let bound = block.bound[q];
            let mut any = false;
            for l in 0..LANES {
                any |= (bound[l] < -PRUNE_GAP) & (bound[l] >= threshold[l]);
            }
            if any {
                if !block.computed[q] {
                    block.compute::<MOMENTS, M>(intervals, q);
                }
                let mass = block.mass[q];
                for l in 0..LANES {
                    total[l] += if (bound[l] < -PRUNE_GAP) & (bound[l] >= threshold[l]) { mass[l] } else { 0.0 };
                }
            }
        }
        block.total = total;
    }
}
