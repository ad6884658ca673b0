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
use crate::gauss::normal::{cody, log_diff_ndtr, truncated_normal, CodyForm, FRAC_1_SQRT_2PI};

/// An infinite end.
const NO_END: usize = usize::MAX;

/// Below this the scaled sum of a point's terms keeps too few digits (or underflows): the
/// caller uses the log-space path instead.
const MIN_SCALED_TOTAL: f64 = 1e-250;

/// Intervals with `half (1 + |centre|)` (standardised) up to this take the centred series:
/// ~20 terms of it reach rounding.
const SERIES_REACH: f64 = 0.5;

/// Most pairs of terms of the centred series; it converges well before (see [`SERIES_REACH`]).
const SERIES_PAIRS: usize = 30;

/// `1 / (i + 1)`: the series' divisions as products (a division in its recurrence would be
/// its slowest step).
const RECIPROCALS: [f64; 2 * SERIES_PAIRS + 3] = {
    let mut r = [0.0; 2 * SERIES_PAIRS + 3];
    let mut i = 0;
    while i < r.len() {
        r[i] = 1.0 / (i + 1) as f64;
        i += 1;
    }
    r
};

/// `int_{-h}^{h} s^k phi(c + s) / phi(c) ds` for `k = 0, 1, 2` (only `k = 0` unless `MOMENTS`),
/// from the Taylor series of `phi(c + s) / phi(c) = exp(-c s - s^2 / 2) = sum_n t_n s^n`:
/// `t_0 = 1`, `t_1 = -c`, `n t_n = -c t_{n-1} - t_{n-2}`. Even terms give `k = 0, 2`, odd ones
/// `k = 1`. Within [`SERIES_REACH`] the integrand is at least `e^{-5/8}` on the interval, so
/// the `k = 0` integral is at least `h`: terms below `1e-17 h` are negligible.
fn centred_moments<const MOMENTS: bool>(c: f64, h: f64) -> [f64; 3] {
    let h2 = h * h;
    let (mut even, mut odd) = (1.0, -c);
    // 2 h^{n+1} for the even n of the pair.
    let mut power = 2.0 * h;
    let mut sums = [0.0; 3];
    for k in 0..SERIES_PAIRS {
        let n = 2 * k;
        let (even_term, odd_term) = (even * power, odd * power * h);
        sums[0] += even_term * RECIPROCALS[n];
        if MOMENTS {
            sums[1] += odd_term * h * RECIPROCALS[n + 2];
            sums[2] += even_term * h2 * RECIPROCALS[n + 2];
        }
        if even_term.abs() + odd_term.abs() <= 1e-17 * h {
            break;
        }
        even = (-c * odd - even) * RECIPROCALS[n + 1];
        odd = (-c * even - odd) * RECIPROCALS[n + 2];
        power *= h2;
    }
    sums
}

/// `log2(x)` rounded down, times `ln 2`: within `ln 2` below `ln x` for a positive normal
/// double, and the pruning only needs a lower bound (a region visited in excess costs time,
/// not accuracy), without a logarithm per new best term.
#[inline]
fn log_lower_bound(x: f64) -> f64 {
    ((x.to_bits() >> 52) as f64 - 1023.0) * std::f64::consts::LN_2
}

/// The regions of a one-dimensional latent space with their local standard deviations.
pub struct Intervals {
    lo: Vec<f64>,
    hi: Vec<f64>,
    /// Indices of each region's ends among the distinct finite ends (`NO_END` if infinite).
    lo_end: Vec<usize>,
    hi_end: Vec<usize>,
    n_ends: usize,
    sd: Vec<f64>,
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
        let index = |t: f64| if t.is_finite() { finite.binary_search_by(|v| v.total_cmp(&t)).unwrap_or(NO_END) } else { NO_END };
        Intervals {
            lo: ends.iter().map(|e| e.0).collect(),
            hi: ends.iter().map(|e| e.1).collect(),
            lo_end: ends.iter().map(|e| index(e.0)).collect(),
            hi_end: ends.iter().map(|e| index(e.1)).collect(),
            n_ends: finite.len(),
            log_sd: sd.iter().map(|v| v.ln()).collect(),
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
        let distance = (self.lo[q] - mu).max(mu - self.hi[q]);
        if distance <= 0.0 {
            return 0.0;
        }
        let t = distance / self.sd[q];
        -0.5 * t * t - std::f64::consts::LN_2
    }

    /// Fills `out` for one point (`log_kappa`, `mu`: one entry per region). Visits the regions
    /// as [`super::visit_regions`] does: the best bound first, then every region whose bound is
    /// within [`PRUNE_GAP`] of the best term so far. Returns false (and `out` is not to be
    /// used) where the scaled terms would keep too few digits.
    pub(crate) fn point<const MOMENTS: bool>(&self, log_kappa: &[f64], mu: &[f64], out: &mut IntervalTerms) -> bool {
        let r = log_kappa.len();
        out.region.clear();
        out.term.clear();
        out.bounds.clear();
        out.bounds.extend((0..r).map(|q| log_kappa[q] + self.log_mass_bound(q, mu[q])));
        out.density.clear();
        out.density.resize(self.n_ends, f64::NAN);
        let Some(first) = (0..r).max_by(|&a, &b| out.bounds[a].total_cmp(&out.bounds[b]).then(b.cmp(&a))) else {
            out.scale = f64::NEG_INFINITY;
            out.total = 0.0;
            return true;
        };
        let scale = out.bounds[first];
        if !scale.is_finite() {
            return false;
        }
        out.scale = scale;
        let mut total = 0.0;
        let (mut best, mut log_best) = (0.0, f64::NEG_INFINITY);
        for q in std::iter::once(first).chain((0..r).filter(|&q| q != first)) {
            if q != first && out.bounds[q] - scale < log_best - PRUNE_GAP {
                continue;
            }
            let term = self.term::<MOMENTS>(q, log_kappa[q] - scale, mu[q], &mut out.density);
            total += term[0];
            if term[0] > best {
                best = term[0];
                log_best = log_lower_bound(best);
            }
            out.region.push(q);
            out.term.push(term);
        }
        out.total = total;
        total > MIN_SCALED_TOTAL && total.is_finite()
    }

    /// Region q's scaled `[kappa Phi, E[z 1_q], E[z^2 1_q]]`, given `log kappa_q - M`.
    #[inline]
    fn term<const MOMENTS: bool>(&self, q: usize, log_kappa: f64, mu: f64, density: &mut [f64]) -> [f64; 3] {
        let (lo, hi, sd) = self.interval(q);
        let (a, b) = ((lo - mu) / sd, (hi - mu) / sd);
        let (centre, half) = (0.5 * (a + b), 0.5 * (b - a));
        if half * (1.0 + centre.abs()) <= SERIES_REACH {
            // Short against the density's scale: around the centre c, phi(c + s) / phi(c) is a
            // fast power series in s. Any difference of CDFs or of end densities would cancel.
            let density_c = (log_kappa - 0.5 * centre * centre).exp() * FRAC_1_SQRT_2PI;
            let [s0, s1, s2] = centred_moments::<MOMENTS>(centre, half);
            let mass = density_c * s0;
            if !MOMENTS {
                return [mass, 0.0, 0.0];
            }
            let z = mu + sd * centre;
            let (first, second) = (density_c * s1, density_c * s2);
            return [mass, z * mass + sd * first, z * z * mass + sd * (2.0 * z * first + sd * second)];
        }
        if let Some(mass) = self.linear_mass(q, a, b, log_kappa, density) {
            if !MOMENTS {
                return [mass, 0.0, 0.0];
            }
            // kappa phi(a) e^-M at each end (zero at an infinite one); by parts,
            // int z phi = mu Z + sd (phi(a) - phi(b)), and
            // int z^2 phi = (mu^2 + sd^2) Z + sd ((mu + lo) phi(a) - (mu + hi) phi(b)).
            let density_a = self.end_gaussian(q, self.lo_end[q], a, log_kappa, density) * FRAC_1_SQRT_2PI;
            let density_b = self.end_gaussian(q, self.hi_end[q], b, log_kappa, density) * FRAC_1_SQRT_2PI;
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
    fn linear_mass(&self, q: usize, a: f64, b: f64, log_kappa: f64, density: &mut [f64]) -> Option<f64> {
        let (lo_end, hi_end) = (self.lo_end[q], self.hi_end[q]);
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
