//! S = 1 in linear space. The regions are intervals, and two neighbours share their common end
//! exactly (the partition cuts both at one breakpoint value). In region q the joint density is
//! `f(z) = p(x | z) p(z) = kappa_q N(z; mu_q, sd_q^2)`, and `f` is continuous across the ends.
//! So a region's term `kappa_q (Phi(b) - Phi(a))` (standardised ends `a`, `b`) is a combination
//! of `f` at its ends times Cody's rational tail factors, and its moments `E[z 1_q]`,
//! `E[z^2 1_q]` follow by parts from the same values. One exponential per end, shared by the
//! two regions that meet there, replaces two per region for the CDF, a logarithm for the term
//! and an exponential to add it up (and two more for the moments).
//!
//! Everything is scaled by `e^{-M}`, `M` the largest bound `log kappa_q + log_mass_bound_q` of
//! the point, which no term exceeds; a point whose terms all lie far below it falls back to
//! the log-space path.

use super::PRUNE_GAP;
use crate::gauss::normal::{cody, log_diff_ndtr, truncated_normal, CentredSeries, CodyForm, FRAC_1_SQRT_2PI};

/// An infinite end.
const NO_END: usize = usize::MAX;

/// Below this the scaled sum of a point's terms keeps too few digits (or underflows): the
/// caller uses the log-space path instead.
const MIN_SCALED_TOTAL: f64 = 1e-250;

/// `b^2 - a^2` beyond which the far end `b` of an interval on one side of the mean counts
/// nothing: its tail and density are below `2 e^{-50}` (2e-22) of the near end's.
const NEGLIGIBLE_SPREAD: f64 = 100.0;

/// A standardised end beyond this, with the mean inside the interval, counts nothing: the
/// mass is at least `kappa / 2` there, against `kappa Phi(-9) = 1.1e-19 kappa` for the tail
/// and `y phi(y) <= 1e-17` (relative to the scale of `z^2`) for the moments' end terms.
const NEGLIGIBLE_END: f64 = 9.0;

/// `log2(x)` rounded down, times `ln 2`: within `ln 2` below `ln x` for a positive normal
/// double, and the pruning only needs a lower bound (a region visited in excess costs time,
/// not accuracy), without a logarithm per new best term.
#[inline]
fn log_lower_bound(x: f64) -> f64 {
    ((x.to_bits() >> 52) as f64 - 1023.0) * std::f64::consts::LN_2
}

/// `log` of the Gaussian tail bound `Phi(-t) <= exp(-t^2 / 2) / 2`, `t` the distance in standard
/// deviations from the mean `mu` to `[lo, hi]`; 0 for a mean inside.
#[inline(always)]
fn tail_bound(lo: f64, hi: f64, inv_sd: f64, mu: f64) -> f64 {
    // Plain comparisons rather than `f64::max` (no NaN here) and a select of constants, so
    // that the compiler keeps the passes over all regions free of branches.
    let (below, above) = (lo - mu, mu - hi);
    let distance = if below > above { below } else { above };
    let outside = distance > 0.0;
    let t = if outside { distance } else { 0.0 } * inv_sd;
    -0.5 * t * t - if outside { std::f64::consts::LN_2 } else { 0.0 }
}

/// The largest of `values` (at least one, none NaN), with four running maxima: one chain of
/// dependent comparisons would cost their latency per region.
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
    n_ends: usize,
    /// Midpoint and half-width, standardised by `sd`, of each region; the centred series of
    /// each region short enough to take it (NaN coefficients otherwise: never read, since
    /// `half` is beyond the series' reach).
    mid: Vec<f64>,
    half: Vec<f64>,
    series: Vec<CentredSeries>,
    sd: Vec<f64>,
    /// `1 / sd`: the bounds of every region, for every point, would otherwise divide.
    inv_sd: Vec<f64>,
    log_sd: Vec<f64>,
}

/// One point's visited regions and their scaled terms `[kappa_q Phi_q, E[z 1_q], E[z^2 1_q]]`
/// (the moments under the joint density, zero unless asked for), in the order visited: the
/// region with the best bound first, then the others by index. The buffers are reused from
/// point to point.
#[derive(Default)]
pub(crate) struct IntervalTerms {
    pub region: Vec<usize>,
    pub term: Vec<[f64; 3]>,
    /// `M`: every term above is `e^{-M}` times its true value.
    pub scale: f64,
    /// The sum of the scaled masses.
    pub total: f64,
    bounds: Vec<f64>,
    /// `f(t) sqrt(2 pi) e^{-M}` at each finite end `t`, NaN until computed for this point.
    density: Vec<f64>,
}

impl IntervalTerms {
    /// `log p(x)` of the point.
    pub(crate) fn log_likelihood(&self) -> f64 {
        self.scale + self.total.ln()
    }
}

impl Intervals {
    pub(crate) fn new(ends: &[(f64, f64)], sd: Vec<f64>) -> Self {
        let mut finite: Vec<f64> = ends.iter().flat_map(|&(lo, hi)| [lo, hi]).filter(|t| t.is_finite()).collect();
        finite.sort_by(f64::total_cmp);
        finite.dedup();
        let half: Vec<f64> = ends.iter().zip(&sd).map(|(e, sd)| 0.5 * (e.1 - e.0) / sd).collect();
        let index = |t: f64| if t.is_finite() { finite.binary_search_by(|v| v.total_cmp(&t)).unwrap_or(NO_END) } else { NO_END };
        Intervals {
            lo: ends.iter().map(|e| e.0).collect(),
            hi: ends.iter().map(|e| e.1).collect(),
            lo_end: ends.iter().map(|e| index(e.0)).collect(),
            hi_end: ends.iter().map(|e| index(e.1)).collect(),
            n_ends: finite.len(),
            log_sd: sd.iter().map(|v| v.ln()).collect(),
            inv_sd: sd.iter().map(|v| 1.0 / v).collect(),
            mid: ends.iter().map(|e| 0.5 * (e.0 + e.1)).collect(),
            series: half.iter().map(|&h| CentredSeries::new(h)).collect(),
            half,
            sd,
        }
    }

    /// Region q's `(lo, hi, sd)`.
    pub(crate) fn interval(&self, q: usize) -> (f64, f64, f64) {
        (self.lo[q], self.hi[q], self.sd[q])
    }

    /// The Gaussian tail bound `Phi(-t) <= exp(-t^2 / 2) / 2` at the distance `t` (in standard
    /// deviations) from the mean to the interval; also the log-space path's bound.
    #[inline]
    pub(crate) fn log_mass_bound(&self, q: usize, mu: f64) -> f64 {
        tail_bound(self.lo[q], self.hi[q], self.inv_sd[q], mu)
    }

    /// `log kappa_q + log_mass_bound(q, mu_q)` for every region, into `bounds`: one pass over
    /// flat arrays without branches, which the compiler vectorises (this runs for every region
    /// at every point, visited or not).
    fn bounds_into(&self, log_kappa: &[f64], mu: &[f64], bounds: &mut Vec<f64>) {
        let r = log_kappa.len();
        bounds.resize(r, 0.0);
        let (bounds, mu, lo, hi, inv_sd) = (&mut bounds[..r], &mu[..r], &self.lo[..r], &self.hi[..r], &self.inv_sd[..r]);
        for q in 0..r {
            bounds[q] = log_kappa[q] + tail_bound(lo[q], hi[q], inv_sd[q], mu[q]);
        }
    }

    /// Fills `out` for one point (`log_kappa`, `mu`: one entry per region). Visits the regions
    /// as [`super::visit_regions`] does: the best bound first, then every region whose bound is
    /// within [`PRUNE_GAP`] of the best term so far. Returns false (and `out` is not to be
    /// used) where the scaled terms would keep too few digits.
    pub(crate) fn point<const MOMENTS: bool>(&self, log_kappa: &[f64], mu: &[f64], out: &mut IntervalTerms) -> bool {
        let r = log_kappa.len();
        out.region.clear();
        out.term.clear();
        self.bounds_into(log_kappa, mu, &mut out.bounds);
        out.density.clear();
        out.density.resize(self.n_ends, f64::NAN);
        if r == 0 {
            out.scale = f64::NEG_INFINITY;
            out.total = 0.0;
            return true;
        }
        // The first of the largest bounds (no NaN: the inputs were checked).
        let scale = largest(&out.bounds);
        if !scale.is_finite() {
            return false;
        }
        let first = out.bounds.iter().position(|&bound| bound == scale).unwrap_or(0);
        out.scale = scale;
        let (mut total, mut best, mut log_best) = (0.0, 0.0, f64::NEG_INFINITY);
        let mut visit = |q: usize, out: &mut IntervalTerms, log_best: &mut f64| {
            let term = self.term::<MOMENTS>(q, log_kappa[q] - scale, mu[q], &mut out.density);
            total += term[0];
            if term[0] > best {
                best = term[0];
                *log_best = log_lower_bound(best);
            }
            out.region.push(q);
            out.term.push(term);
        };
        visit(first, out, &mut log_best);
        for q in 0..r {
            if q != first && out.bounds[q] - scale >= log_best - PRUNE_GAP {
                visit(q, out, &mut log_best);
            }
        }
        out.total = total;
        total > MIN_SCALED_TOTAL && total.is_finite()
    }

    /// Region q's scaled `[kappa Phi, E[z 1_q], E[z^2 1_q]]`, given `log kappa_q - M`.
    #[inline]
    fn term<const MOMENTS: bool>(&self, q: usize, log_kappa: f64, mu: f64, density: &mut [f64]) -> [f64; 3] {
        let (lo, hi, sd) = self.interval(q);
        let centre = (self.mid[q] - mu) * self.inv_sd[q];
        if CentredSeries::reaches(self.half[q], centre) {
            // Short against the density's scale: around the centre c, phi(c + s) / phi(c) is a
            // fast power series in s. Any difference of CDFs or of end densities would cancel.
            let density_c = (log_kappa - 0.5 * centre * centre).exp() * FRAC_1_SQRT_2PI;
            let [s0, s1, s2] = self.series[q].at::<MOMENTS>(centre);
            let mass = density_c * s0;
            if !MOMENTS {
                return [mass, 0.0, 0.0];
            }
            let z = self.mid[q];
            let (first, second) = (density_c * s1, density_c * s2);
            return [mass, z * mass + sd * first, z * z * mass + sd * (2.0 * z * first + sd * second)];
        }
        let (a, b) = ((lo - mu) / sd, (hi - mu) / sd);
        let (lo_end, hi_end) = self.ends_that_count(q, a, b);
        if let Some(mass) = self.linear_mass(q, (lo_end, hi_end), a, b, log_kappa, density) {
            if !MOMENTS {
                return [mass, 0.0, 0.0];
            }
            // kappa phi(a) e^-M at each end (zero at an infinite one); by parts,
            // int z phi = mu Z + sd (phi(a) - phi(b)), and
            // int z^2 phi = (mu^2 + sd^2) Z + sd ((mu + lo) phi(a) - (mu + hi) phi(b)).
            let density_a = self.end_gaussian(q, lo_end, a, log_kappa, density) * FRAC_1_SQRT_2PI;
            let density_b = self.end_gaussian(q, hi_end, b, log_kappa, density) * FRAC_1_SQRT_2PI;
            let moment_a = if density_a > 0.0 { (mu + lo) * density_a } else { 0.0 };
            let moment_b = if density_b > 0.0 { (mu + hi) * density_b } else { 0.0 };
            let first = mu * mass + sd * (density_a - density_b);
            let second = (mu * mu + sd * sd) * mass + sd * (moment_a - moment_b);
            return [mass, first, second];
        }
        // Short intervals and cancelling or underflowing differences: in log space.
        if MOMENTS {
            let (log_mass, mean, second) = truncated_normal(mu, sd, lo, hi);
            let mass = (log_kappa + log_mass).exp();
            if mass == 0.0 {
                return [0.0; 3];
            }
            [mass, mass * mean, mass * second]
        } else {
            [(log_kappa + log_diff_ndtr(a, b)).exp(), 0.0, 0.0]
        }
    }

    /// Region q's ends as indices into the cached densities, with an end whose tail and
    /// density are below the rounding of the other end's taken as infinite (`NO_END`): at a
    /// far end `b` of an interval beyond the mean (`0 <= a < b`), `Phi(-b) / Phi(-a)` and
    /// `phi(b) / phi(a)` are below `2 e^{-(b^2 - a^2) / 2}`; with the mean inside, a
    /// standardised end beyond [`NEGLIGIBLE_END`] leaves `Phi(b) - 1/2` and the moments' end
    /// terms unchanged to rounding. Narrow posteriors meet such ends at most regions they
    /// visit, and skip an exponential and a tail factor for each.
    #[inline(always)]
    fn ends_that_count(&self, q: usize, a: f64, b: f64) -> (usize, usize) {
        let (mut lo_end, mut hi_end) = (self.lo_end[q], self.hi_end[q]);
        if a >= 0.0 {
            if (b - a) * (b + a) > NEGLIGIBLE_SPREAD {
                hi_end = NO_END;
            }
        } else if b <= 0.0 {
            if (b - a) * -(b + a) > NEGLIGIBLE_SPREAD {
                lo_end = NO_END;
            }
        } else {
            if b > NEGLIGIBLE_END {
                hi_end = NO_END;
            }
            if -a > NEGLIGIBLE_END {
                lo_end = NO_END;
            }
        }
        (lo_end, hi_end)
    }

    /// `E = exp(log kappa - M - y^2 / 2) = sd_q f(t) sqrt(2 pi) e^-M` at region q's end `t`
    /// (standardised `y`), zero at an infinite end. `f(t) sqrt(2 pi) e^-M` is cached per end:
    /// the neighbour that shares the end reuses it.
    #[inline(always)]
    fn end_gaussian(&self, q: usize, end: usize, y: f64, log_kappa: f64, density: &mut [f64]) -> f64 {
        if end == NO_END {
            return 0.0;
        }
        if density[end].is_nan() {
            density[end] = (log_kappa - 0.5 * y * y - self.log_sd[q]).exp();
        }
        self.sd[q] * density[end]
    }

    /// `kappa (Phi(b) - Phi(a)) e^-M` where the difference keeps all but a bit, else `None`.
    /// (Short intervals took the series before.)
    /// Each tail `kappa Phi(-y) e^-M` (`y >= 0`) is `E(y) r(y)` in Cody's tail form
    /// ([`Self::end_gaussian`]), or `K (1/2 - t(y))` near zero, `K = kappa e^-M`.
    #[inline(always)]
    fn linear_mass(&self, q: usize, (lo_end, hi_end): (usize, usize), a: f64, b: f64, log_kappa: f64, density: &mut [f64]) -> Option<f64> {
        // kappa Phi(-y) e^-M for y >= 0 (none beyond an infinite end).
        let mut tail = |end: usize, y: f64| {
            if end == NO_END {
                return 0.0;
            }
            match cody(y) {
                CodyForm::Tail(r) => self.end_gaussian(q, end, y, log_kappa, density) * r,
                CodyForm::Central(t) => log_kappa.exp() * (0.5 - t),
            }
        };
        if a >= 0.0 || b <= 0.0 {
            // Both ends on one side of the mean: a difference of two tails, the nearer first.
            let (near, far) = if a >= 0.0 { (tail(lo_end, a), tail(hi_end, b)) } else { (tail(hi_end, -b), tail(lo_end, -a)) };
            return (far <= 0.5 * near).then_some(near - far);
        }
        // a < 0 < b: kappa (Phi(b) - 1/2) + kappa (1/2 - Phi(a)), both non-negative.
        let kappa = log_kappa.exp();
        let mut half = |end: usize, y: f64| {
            if end == NO_END {
                return 0.5 * kappa;
            }
            match cody(y) {
                CodyForm::Tail(r) => 0.5 * kappa - self.end_gaussian(q, end, y, log_kappa, density) * r,
                CodyForm::Central(t) => kappa * t,
            }
        };
        Some(half(hi_end, b) + half(lo_end, -a))
    }
}
