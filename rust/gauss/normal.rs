//! The one-dimensional standard normal in log space: `log Phi`, interval masses without
//! cancellation in either tail, truncated moments, and the inverse CDF (also from a log
//! probability) for sampling truncated normals far in a tail.

use super::normal_batch::{MulAdd, Separate};

pub(crate) const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_8;
pub(crate) const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_677_939_946_059_934;

/// 20-point Gauss-Legendre rule on [-1, 1].
pub const GL_NODES: [f64; 20] = [
    -0.993128599185095,
    -0.9639719272779138,
    -0.912234428251326,
    -0.8391169718222188,
    -0.7463319064601508,
    -0.636053680726515,
    -0.5108670019508271,
    -0.37370608871541955,
    -0.22778585114164507,
    -0.07652652113349734,
    0.07652652113349734,
    0.22778585114164507,
    0.37370608871541955,
    0.5108670019508271,
    0.636053680726515,
    0.7463319064601508,
    0.8391169718222188,
    0.912234428251326,
    0.9639719272779138,
    0.993128599185095,
];
pub const GL_WEIGHTS: [f64; 20] = [
    0.017614007139150893,
    0.040601429800386446,
    0.06267204833410879,
    0.08327674157670471,
    0.1019301198172407,
    0.1181945319615186,
    0.1316886384491769,
    0.1420961093183824,
    0.14917298647260424,
    0.15275338713072628,
    0.15275338713072628,
    0.14917298647260424,
    0.1420961093183824,
    0.1316886384491769,
    0.1181945319615186,
    0.1019301198172407,
    0.08327674157670471,
    0.06267204833410879,
    0.040601429800386446,
    0.017614007139150893,
];

/// Positive nodes and their weights of the 8- and 12-point Gauss-Legendre rules on [-1, 1]
/// (the rules are symmetric), for integrands smooth enough that 20 points would be wasted.
pub const GL8_HALF: [(f64, f64); 4] = [
    (0.18343464249564978, 0.36268378337836166),
    (0.525532409916329, 0.3137066458778869),
    (0.7966664774136267, 0.22238103445337443),
    (0.9602898564975362, 0.10122853629037706),
];
pub const GL12_HALF: [(f64, f64); 6] = [
    (0.1252334085114689, 0.2491470458134027),
    (0.3678314989981802, 0.2334925365383546),
    (0.5873179542866175, 0.20316742672306573),
    (0.7699026741943047, 0.16007832854334642),
    (0.9041172563704748, 0.10693932599531907),
    (0.9815606342467192, 0.04717533638651141),
];
/// The positive half of [`GL_NODES`] with their weights.
pub const GL20_HALF: [(f64, f64); 10] = {
    let mut half = [(0.0, 0.0); 10];
    let mut k = 0;
    while k < 10 {
        half[k] = (GL_NODES[10 + k], GL_WEIGHTS[10 + k]);
        k += 1;
    }
    half
};

/// `int_{centre - half}^{centre + half} f` for `N` integrands at once (they share the nodes),
/// by a symmetric Gauss-Legendre rule given by its positive nodes.
#[inline]
pub fn gauss_legendre<const N: usize>(
    rule: &[(f64, f64)],
    centre: f64,
    half: f64,
    f: impl Fn(f64) -> [f64; N],
) -> [f64; N] {
    let mut sum = [0.0; N];
    for &(x, w) in rule {
        let (left, right) = (f(centre - half * x), f(centre + half * x));
        for j in 0..N {
            sum[j] += w * (left[j] + right[j]);
        }
    }
    sum.map(|v| half * v)
}

/// `log Phi(x)`, the log of the standard normal CDF, accurate in both tails (in the lower tail
/// without forming `Phi(x)`, so also far below the smallest double).
pub fn log_ndtr(x: f64) -> f64 {
    if x > 0.0 {
        (-upper_tail(x)).ln_1p()
    } else {
        log_upper_tail(-x)
    }
}

/// W. J. Cody's rational Chebyshev approximations of the normal CDF (ACM TOMS 715, the
/// algorithm of R's `pnorm`), relative error near the double precision, for `y >= 0`:
/// `Central(t)` with `Phi(y) - 1/2 = t` for `y <= 0.674`, else `Tail(r)` with
/// `Phi(-y) = exp(-y^2 / 2) r`. Cody keeps `exp(-y^2 / 2)` exact with two exponentials; here
/// one does, with the rounding error of `y^2` applied to first order ([`exp_neg_half_square`]).
/// `Phi` costs 12 ns this way against 24 ns through `libm::erfc`, which evaluates two
/// exponentials of its own (`cargo bench --bench gauss -- normal_cdf`).
pub(crate) enum CodyForm {
    Central(f64),
    Tail(f64),
}

/// Cody's coefficients for `y <= 0.674` (`A / B`, in `y^2`), up to `sqrt(32)` (`C / D`) and
/// beyond (`P / Q`, in `1 / y^2`), as published, digit for digit, so that they can be checked
/// against the source.
#[allow(clippy::excessive_precision)]
const CODY_A: [f64; 5] = [
    2.2352520354606839287,
    161.02823106855587881,
    1067.6894854603709582,
    18154.981253343561249,
    0.065682337918207449113,
];
#[allow(clippy::excessive_precision)]
const CODY_B: [f64; 4] = [47.20258190468824187, 976.09855173777669322, 10260.932208618978205, 45507.789335026729956];
#[allow(clippy::excessive_precision)]
const CODY_C: [f64; 9] = [
    0.39894151208813466764,
    8.8831497943883759412,
    93.506656132177855979,
    597.27027639480026226,
    2494.5375852903726711,
    6848.1904505362823326,
    11602.651437647350124,
    9842.7148383839780218,
    1.0765576773720192317e-8,
];
#[allow(clippy::excessive_precision)]
const CODY_P: [f64; 6] = [
    0.21589853405795699,
    0.1274011611602473639,
    0.022235277870649807,
    0.001421619193227893466,
    2.9112874951168792e-5,
    0.02307344176494017303,
];
#[allow(clippy::excessive_precision)]
const CODY_Q: [f64; 5] =
    [1.28426009614491121, 0.468238212480865118, 0.0659881378689285515, 0.00378239633202758244, 7.29751555083966205e-5];
#[allow(clippy::excessive_precision)]
const CODY_D: [f64; 8] = [
    22.266688044328115691,
    235.38790178262499861,
    1519.377599407554805,
    6485.558298266760755,
    18615.571640885098091,
    34900.952721145977266,
    38912.003286093271411,
    19685.429676859990727,
];

/// Where Cody's central form of `Phi(-y)` ends and his middle one starts.
pub(crate) const CODY_CENTRAL_END: f64 = 0.67448975;
/// Where AS 241's central form of `Phi^{-1}(p)` ends (`|p - 1/2|`).
pub(crate) const AS241_CENTRAL_END: f64 = 0.425;

/// Beyond this `y` Cody's far range takes `Phi(-y)`.
pub(crate) const SQRT_32: f64 = 5.656854249492380195206754896838;

#[inline(always)]
pub(crate) fn cody(y: f64) -> CodyForm {
    if y <= CODY_CENTRAL_END {
        let (num, den) = cody_central::<Separate>(y);
        CodyForm::Central(num / den)
    } else if y <= SQRT_32 {
        let (num, den) = cody_middle::<Separate>(y);
        CodyForm::Tail(num / den)
    } else {
        CodyForm::Tail(cody_far(y))
    }
}

/// Cody's central range, `y <= 0.674`: `Phi(y) - 1/2 = num / den`, as `(num, den)` (the batch
/// functions divide once for whichever range an argument takes).
#[inline(always)]
pub(crate) fn cody_central<M: MulAdd>(y: f64) -> (f64, f64) {
    // Horner's scheme: with separate operations it rounds exactly as Cody's `(num + a_i) z`.
    let z = y * y;
    let (mut num, mut den) = (CODY_A[4], z + CODY_B[0]);
    for &a in &CODY_A[..4] {
        num = M::mul_add(num, z, a);
    }
    for &b in &CODY_B[1..4] {
        den = M::mul_add(den, z, b);
    }
    (y * num, den)
}

/// Cody's middle range, `0.674 < y <= sqrt(32)`: `Phi(-y) = exp(-y^2 / 2) num / den`.
#[inline(always)]
pub(crate) fn cody_middle<M: MulAdd>(y: f64) -> (f64, f64) {
    let (mut num, mut den) = (CODY_C[8], y + CODY_D[0]);
    for &c in &CODY_C[..8] {
        num = M::mul_add(num, y, c);
    }
    for &d in &CODY_D[1..8] {
        den = M::mul_add(den, y, d);
    }
    (num, den)
}

/// Cody's far range, `y > sqrt(32)` (also beyond Cody's 37.5, where the value underflows but
/// its logarithm does not): `Phi(-y) = exp(-y^2 / 2) r`, returning `r`.
#[inline(always)]
pub(crate) fn cody_far(y: f64) -> f64 {
    let z = 1.0 / (y * y);
    let (mut num, mut den) = (CODY_P[5] * z, z);
    for i in 0..4 {
        num = (num + CODY_P[i]) * z;
        den = (den + CODY_Q[i]) * z;
    }
    (FRAC_1_SQRT_2PI - z * (num + CODY_P[4]) / (den + CODY_Q[4])) / y
}

/// [`cody_far`] with one division instead of three, for vector loops: with `w = y^2`, Cody's
/// `N(1/w) / D(1/w)` is `N'(w) / D'(w)` after multiplying both by `w^5`, so
/// `r = (w D' / sqrt(2 pi) - N') / (w D' y)`; the difference loses at most `1 / w <= 1/32` of
/// its leading term. `w` is capped at `1e30` (`y` beyond `1e15`, where `exp(-y^2 / 2) r` is 0
/// anyway), so that `w^5` stays finite; `r` may underflow to 0 far beyond.
#[inline(always)]
pub(crate) fn cody_far_one_division<M: MulAdd>(y: f64) -> f64 {
    const NUMERATOR: [f64; 6] = [CODY_P[5], CODY_P[0], CODY_P[1], CODY_P[2], CODY_P[3], CODY_P[4]];
    const DENOMINATOR: [f64; 6] = [1.0, CODY_Q[0], CODY_Q[1], CODY_Q[2], CODY_Q[3], CODY_Q[4]];
    let square = y * y;
    let w = if square < 1e30 { square } else { 1e30 };
    let wd = w * polynomial::<M>(&DENOMINATOR, w);
    M::mul_add(wd, FRAC_1_SQRT_2PI, -polynomial::<M>(&NUMERATOR, w)) / (wd * y)
}

/// `(hi, lo)` with `hi = fl(y^2)` and `hi + lo = y^2` exactly (Dekker's product; `lo = 0` where
/// `y^2` overflows).
/// A select rather than a branch, so that batch loops over it vectorise.
#[inline(always)]
pub(crate) fn square_with_error(y: f64) -> (f64, f64) {
    let hi = y * y;
    let c = 134_217_729.0 * y; // 2^27 + 1 splits y into two halves of 26 bits
    let high = c - (c - y);
    let low = y - high;
    let lo = ((high * high - hi) + 2.0 * high * low) + low * low;
    (hi, if hi < 1e300 { lo } else { 0.0 })
}

/// `exp(-y^2 / 2)` to the accuracy of `exp`: the rounding error of `y^2` (relative error up to
/// 1e-13 at `y = 37` if it entered the argument) is applied as the factor `1 - lo / 2`.
#[inline(always)]
fn exp_neg_half_square(y: f64) -> f64 {
    let (hi, lo) = square_with_error(y);
    (-0.5 * hi).exp() * (1.0 - 0.5 * lo)
}

/// `Phi(-y)` for `y >= 0`, accurate relative to itself.
#[inline]
pub fn upper_tail(y: f64) -> f64 {
    split_at::<false>(y).1
}

/// `Phi(y) - 1/2` for `y >= 0`, accurate relative to itself (also for tiny `y`).
#[inline]
fn central_half(y: f64) -> f64 {
    split_at::<false>(y).0
}

/// `log Phi(-y)` for `y >= 0`, without an exponential.
#[inline]
fn log_upper_tail(y: f64) -> f64 {
    match cody(y) {
        CodyForm::Central(t) => (0.5 - t).ln(),
        CodyForm::Tail(r) => {
            let (hi, lo) = square_with_error(y);
            -0.5 * hi - 0.5 * lo + r.ln()
        }
    }
}

/// `log(1 - exp(v))` for `v <= 0`, accurate near both ends.
pub fn log1m_exp(v: f64) -> f64 {
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
    match linear_interval_mass::<false>(a, b) {
        Some((mass, ..)) => mass.ln(),
        None => log_diff_ndtr_by_logs(a, b),
    }
}

/// `(Phi(b) - Phi(a), phi(a), phi(b))` for `a < b` (the densities only if `DENSITIES`, else 0),
/// where the plain difference of doubles keeps all but one bit of the mass, one exponential per
/// finite end; `None` for short (and empty) intervals and where `Phi` underflows.
#[inline(always)]
fn linear_interval_mass<const DENSITIES: bool>(a: f64, b: f64) -> Option<(f64, f64, f64)> {
    if is_short_interval(a, b) {
        return None;
    }
    // Both in the upper tail: the mirror image is in the lower tail (the densities swap ends).
    let mirrored = a > 0.0;
    let (a, b) = if mirrored { (-b, -a) } else { (a, b) };
    let (mass, density_a, density_b) = if b <= 0.0 {
        if b <= -37.0 {
            return None;
        }
        let ((_, upper, density_b), (_, lower, density_a)) = (split_at::<DENSITIES>(-b), split_at::<DENSITIES>(-a));
        // Where Phi(a) <= Phi(b) / 2 the difference loses less than one bit.
        if lower > 0.5 * upper {
            return None;
        }
        (upper - lower, density_a, density_b)
    } else {
        // a <= 0 < b: (Phi(b) - 1/2) + (1/2 - Phi(a)), two non-negative terms, no cancellation
        // even for a tiny interval around zero.
        let ((central_b, _, density_b), (central_a, _, density_a)) =
            (split_at::<DENSITIES>(b), split_at::<DENSITIES>(-a));
        (central_b + central_a, density_a, density_b)
    };
    Some(if mirrored { (mass, density_b, density_a) } else { (mass, density_a, density_b) })
}

/// For `y >= 0`: `(Phi(y) - 1/2, Phi(-y), phi(y))`, each accurate relative to itself (the
/// density only if `DENSITY`, else 0). Where `Phi(-y)` has its exponential, the density shares it.
#[inline(always)]
fn split_at<const DENSITY: bool>(y: f64) -> (f64, f64, f64) {
    match cody(y) {
        CodyForm::Central(t) => (t, 0.5 - t, if DENSITY { log_pdf(y).exp() } else { 0.0 }),
        CodyForm::Tail(r) => {
            let e = exp_neg_half_square(y);
            let tail = e * r;
            (0.5 - tail, tail, if DENSITY { e * FRAC_1_SQRT_2PI } else { 0.0 })
        }
    }
}

/// Short enough that any difference of CDFs cancels, while the density varies by less than a
/// factor e^0.5 over it.
#[inline(always)]
fn is_short_interval(a: f64, b: f64) -> bool {
    (b - a) * (1.0 + a.abs().max(b.abs())) < 0.5
}

/// [`log_diff_ndtr`] where the linear-space difference would lose digits or underflow.
fn log_diff_ndtr_by_logs(a: f64, b: f64) -> f64 {
    if is_short_interval(a, b) {
        let (centre, half) = (0.5 * (a + b), 0.5 * (b - a));
        // log phi changes by at most 0.5 over the interval: the 8-point rule's error for such
        // an integrand is ~1e-25 relative.
        let reference = log_pdf(if a > 0.0 {
            a
        } else if b < 0.0 {
            b
        } else {
            0.0
        });
        let [integral] = gauss_legendre(&GL8_HALF, centre, half, |x| [(log_pdf(x) - reference).exp()]);
        return reference + integral.ln();
    }
    let (a, b) = if a > 0.0 { (-b, -a) } else { (a, b) };
    // Now b <= 0 (the linear path takes every interval around zero that is not short).
    let lb = log_upper_tail(-b);
    lb + log1m_exp(log_upper_tail(-a) - lb)
}

pub fn log_pdf(x: f64) -> f64 {
    -0.5 * x * x - LN_SQRT_2PI
}

/// Intervals with `half (1 + |centre|)` (standardised) up to this take the centred series
/// ([`CentredSeries`]).
pub(crate) const SERIES_REACH: f64 = 0.5;

/// Coefficients of each centred series: powers `c^0, c^2, ..., c^16`. Within [`SERIES_REACH`],
/// `|c| h <= 1/2` and the integrand is at least `e^{-5/8}` on the interval, so the `k`-th term
/// is at most `e^{5/8} 2^{-2k} / (2k)!` of the sum's first term: 9e-17 at `k = 7`, 4e-20 at
/// `k = 8`.
const SERIES_TERMS: usize = 9;

/// `1 / n!` for `n < 32`.
pub(crate) const INV_FACTORIALS: [f64; 32] = {
    let mut f = [1.0; 32];
    let mut n = 1;
    while n < f.len() {
        f[n] = f[n - 1] / n as f64;
        n += 1;
    }
    f
};

/// `int_{-h}^{h} s^{2k} e^{-s^2/2} ds` for `k = 0 ..= SERIES_TERMS + 1`, `h <= 1/2`. The
/// highest from the series `e^{-s^2/2} = sum_j (-1/2)^j s^{2j} / j!` ([`even_gaussian_moment`]);
/// the others downwards by `mu_{2k} = (mu_{2k+2} + 2 h^{2k+1} e^{-h^2/2}) / (2k+1)`, the
/// integral of `d/ds (s^{2k+1} e^{-s^2/2})`. Both terms are positive, and the error carried
/// from `mu_{2k+2}` shrinks by `mu_{2k+2} / ((2k+1) mu_{2k}) <= h^2 / (2k+1) <= 1/4` a step, so
/// every moment keeps the series' accuracy to a few roundings, at one series instead of one
/// per moment (a slice quadrature builds a series at every node).
fn even_gaussian_moments(h: f64) -> [f64; SERIES_TERMS + 2] {
    let top = SERIES_TERMS + 1;
    let h2 = h * h;
    // h^{2k+1}, upwards: no division meets a power that underflowed.
    let mut powers = [h; SERIES_TERMS + 2];
    for k in 1..=top {
        powers[k] = powers[k - 1] * h2;
    }
    let mut moments = [0.0; SERIES_TERMS + 2];
    moments[top] = even_gaussian_moment(h, top);
    let edge = 2.0 * (-0.5 * h2).exp();
    for k in (0..top).rev() {
        moments[k] = (moments[k + 1] + edge * powers[k]) / (2 * k + 1) as f64;
    }
    moments
}

/// `int_{-h}^{h} s^{2k} e^{-s^2/2} ds`, `h <= 1/2`, by the series of `e^{-s^2/2}`: alternating,
/// each term at most 1/8 of the one before, so the sum keeps its digits.
fn even_gaussian_moment(h: f64, k: usize) -> f64 {
    let (mut term, mut sum) = (2.0 * h.powi(2 * k as i32 + 1), 0.0);
    for j in 0..30 {
        let piece = term / (2 * k + 2 * j + 1) as f64;
        sum += piece;
        if piece.abs() <= 1e-18 * sum {
            break;
        }
        term *= -0.5 * h * h / (j + 1) as f64;
    }
    sum
}

/// A short interval's integrals `I_j(c) = int_{-h}^{h} s^j phi(c + s) / phi(c) ds`, `j = 0, 1, 2`,
/// as polynomials in `c^2` whose coefficients depend only on the interval's standardised
/// half-width `h`, which is the region's own: `phi(c + s) / phi(c) = e^{-c s} e^{-s^2/2}`, and
/// expanding `e^{-c s}` gives `I_j = sum_n (-c)^n / n! mu_{n+j}` with the region's constants
/// `mu_m = int_{-h}^{h} s^m e^{-s^2/2} ds` (zero for odd m). So a point pays a polynomial, not
/// the recurrence of the Taylor series of `phi` around `c`, and the terms of `I_0` and `I_2` are
/// all positive, those of `I_1 / c` too: no cancellation.
#[derive(Clone, Copy)]
pub(crate) struct CentredSeries {
    /// `I_0 = sum_k c^{2k} mu_{2k} / (2k)!`.
    mass: [f64; SERIES_TERMS],
    /// `I_1 = -c sum_k c^{2k} mu_{2k+2} / (2k+1)!`.
    first: [f64; SERIES_TERMS],
    /// `I_2 = sum_k c^{2k} mu_{2k+2} / (2k)!`.
    second: [f64; SERIES_TERMS],
}

impl CentredSeries {
    /// The series of an interval of standardised half-width `h`; NaN coefficients beyond
    /// [`SERIES_REACH`], where the series is not to be used.
    pub(crate) fn new(h: f64) -> Self {
        if h.is_nan() || h > SERIES_REACH {
            return CentredSeries {
                mass: [f64::NAN; SERIES_TERMS],
                first: [f64::NAN; SERIES_TERMS],
                second: [f64::NAN; SERIES_TERMS],
            };
        }
        let mu = even_gaussian_moments(h);
        let mut series =
            CentredSeries { mass: [0.0; SERIES_TERMS], first: [0.0; SERIES_TERMS], second: [0.0; SERIES_TERMS] };
        for k in 0..SERIES_TERMS {
            series.mass[k] = mu[k] * INV_FACTORIALS[2 * k];
            series.first[k] = mu[k + 1] * INV_FACTORIALS[2 * k + 1];
            series.second[k] = mu[k + 1] * INV_FACTORIALS[2 * k];
        }
        series
    }

    /// Whether an interval of standardised half-width `half` whose centre lies `centre` from
    /// the mean is within [`SERIES_REACH`], where the series takes it.
    #[inline(always)]
    pub(crate) fn reaches(half: f64, centre: f64) -> bool {
        half * (1.0 + centre.abs()) <= SERIES_REACH
    }

    /// `[I_0, I_1, I_2]` at `c` (only `I_0` unless `MOMENTS`).
    #[inline(always)]
    pub(crate) fn at<const MOMENTS: bool, M: MulAdd>(&self, c: f64) -> [f64; 3] {
        let c2 = c * c;
        if !MOMENTS {
            return [estrin::<M>(c2, &self.mass), 0.0, 0.0];
        }
        [estrin::<M>(c2, &self.mass), -c * estrin::<M>(c2, &self.first), estrin::<M>(c2, &self.second)]
    }
}

/// `sum_k p[k] x^k` by Estrin's scheme: four multiply-add levels instead of Horner's eight
/// dependent steps.
#[inline(always)]
fn estrin<M: MulAdd>(x: f64, p: &[f64; SERIES_TERMS]) -> f64 {
    let x2 = x * x;
    let x4 = x2 * x2;
    let low = M::mul_add(x2, M::mul_add(p[3], x, p[2]), M::mul_add(p[1], x, p[0]));
    let high = M::mul_add(x2, M::mul_add(p[7], x, p[6]), M::mul_add(p[5], x, p[4]));
    M::mul_add(x4, M::mul_add(x4, p[8], high), low)
}

/// Standardised ends beyond this take [`far_tail_moments`]: the closed form's variance would
/// lose ~`a^4` of its relative accuracy (3e-10 at `a = 40`, and more through the tail
/// factors' own rounding), below it at most ~2e-13.
const FAR_TAIL: f64 = 4.0;

/// `(lambda, v)`: the mean and the variance of a standard normal conditioned on `[a, inf)`,
/// `a >= FAR_TAIL`, from the continued fraction of the Mills ratio
/// `R(a) = 1 / (a + 1 / (a + 2 / (a + 3 / ...)))`: with `D = a + 2 / E` and
/// `E = a + 3 / (a + 4 / ...)`, `lambda = 1 / R = a + 1 / D` and
/// `v = 1 + a lambda - lambda^2 = (2D - E) / (E D^2)`, where no term cancels (`v ~ 1 / a^2`).
/// 40 levels reach rounding for `a >= 4`, 20 for `a >= 8`.
fn one_sided_tail_moments(a: f64) -> (f64, f64) {
    let depth = if a >= 8.0 { 20 } else { 40 };
    let (mut x, mut previous) = (a, a);
    for k in (1..depth).rev() {
        previous = x;
        x = a + (k + 1) as f64 / x;
    }
    let (d, e) = (x, previous);
    (a + 1.0 / d, (2.0 * d - e) / (e * d * d))
}

/// The mean and the variance of a standard normal conditioned on `[a, b]`,
/// `FAR_TAIL <= a < b <= inf`: `[a, inf)` is the mixture of `[a, b]` and `[b, inf)` with weights
/// `1 - rho` and `rho = Phi(-b) / Phi(-a)`, so with the one-sided moments `(l_a, v_a)`,
/// `(l_b, v_b)` and `delta = l_b - l_a`, the mean is `l_a - rho delta / (1 - rho)` and the
/// variance `(v_a - rho v_b) / (1 - rho) - rho delta^2 / (1 - rho)^2`: the `a^2`-sized parts
/// cancel in closed form, not in rounding.
fn far_tail_moments(a: f64, b: f64) -> (f64, f64) {
    let (lambda_a, v_a) = one_sided_tail_moments(a);
    // Phi(-b) / Phi(-a) = e^{-(b^2 - a^2)/2} lambda_a / lambda_b; beyond e^{-50} it is nothing.
    let exponent = 0.5 * (b - a) * (b + a);
    if exponent.is_nan() || exponent >= 50.0 {
        return (lambda_a, v_a);
    }
    let (lambda_b, v_b) = one_sided_tail_moments(b);
    let log_rho = -exponent + (lambda_a / lambda_b).ln();
    let (rho, rest) = (log_rho.exp(), -log_rho.exp_m1());
    let delta = lambda_b - lambda_a;
    (lambda_a - rho * delta / rest, (v_a - rho * v_b) / rest - rho * delta * delta / (rest * rest))
}

/// Mass (log), mean and second moment of `N(mu, sd^2)` restricted to `(lo, hi)`.
pub fn truncated_normal(mu: f64, sd: f64, lo: f64, hi: f64) -> (f64, f64, f64) {
    let (log_mass, mean, variance) = truncated_normal_central(mu, sd, lo, hi);
    (log_mass, mean, mean * mean + variance)
}

/// Mass (log), mean and variance of `N(mu, sd^2)` restricted to `(lo, hi)`. An interval short
/// against `sd` takes the centred series, which gives the variance without cancellation; the
/// closed form `sd^2 (1 + a r_a - b r_b - (r_a - r_b)^2)` would lose it to terms of order
/// `1 / width^2` (relative error ~1e-3 for `[12, 12.001]` under `N(0, 1)`).
pub fn truncated_normal_central(mu: f64, sd: f64, lo: f64, hi: f64) -> (f64, f64, f64) {
    // An empty interval (a strip whose sides cross, as a nearly antiparallel pair of a polygon
    // treated as parallel can) has no mass; the centred series would take the log of a
    // negative width's integral, NaN.
    if lo >= hi {
        return (f64::NEG_INFINITY, f64::NAN, f64::NAN);
    }
    let (centre, half) = ((0.5 * (lo + hi) - mu) / sd, 0.5 * (hi - lo) / sd);
    if CentredSeries::reaches(half, centre) {
        let [i0, i1, i2] = CentredSeries::new(half).at::<true, Separate>(centre);
        let shift = i1 / i0;
        return (i0.ln() + log_pdf(centre), 0.5 * (lo + hi) + sd * shift, sd * sd * (i2 / i0 - shift * shift));
    }
    let (a, b) = ((lo - mu) / sd, (hi - mu) / sd);
    if a >= FAR_TAIL || b <= -FAR_TAIL {
        let log_mass = log_diff_ndtr(a, b);
        if log_mass == f64::NEG_INFINITY {
            return (log_mass, f64::NAN, f64::NAN);
        }
        let (mean_w, var_w) = if a >= FAR_TAIL {
            far_tail_moments(a, b)
        } else {
            let (m, v) = far_tail_moments(-b, -a);
            (-m, v)
        };
        return (log_mass, mu + sd * mean_w, sd * sd * var_w);
    }
    // phi(a) / Z and phi(b) / Z (zero at an infinite end): from the mass's own exponentials
    // where it is computed in linear space, else in log space.
    let (log_mass, ra, rb) = match linear_interval_mass::<true>(a, b) {
        Some((mass, density_a, density_b)) => (mass.ln(), density_a / mass, density_b / mass),
        None => {
            let log_mass = log_diff_ndtr(a, b);
            if log_mass == f64::NEG_INFINITY {
                return (log_mass, f64::NAN, f64::NAN);
            }
            let ratio = |t: f64| if t.is_finite() { (log_pdf(t) - log_mass).exp() } else { 0.0 };
            (log_mass, ratio(a), ratio(b))
        }
    };
    let (ara, brb) = (if a.is_finite() { a * ra } else { 0.0 }, if b.is_finite() { b * rb } else { 0.0 });
    let mean_w = ra - rb;
    let var_w = (1.0 + ara - brb - mean_w * mean_w).max(0.0);
    (log_mass, mu + sd * mean_w, sd * sd * var_w)
}

pub fn log_sum_exp(values: impl Iterator<Item = f64> + Clone) -> f64 {
    let max = values.clone().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + values.map(|v| (v - max).exp()).sum::<f64>().ln()
}

/// `log(exp(a) + exp(b))`.
pub fn log_add_exp(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}

#[inline(always)]
pub(crate) fn polynomial<M: MulAdd>(coefficients: &[f64], x: f64) -> f64 {
    coefficients.iter().rev().fold(0.0, |acc, &c| M::mul_add(acc, x, c))
}

/// Wichura's AS 241 (PPND16) coefficients as published: the central range `|p - 1/2| <= 0.425`
/// (`A / B`), then `r = sqrt(-log(min(p, 1 - p)))` up to 5 (`C / D`) and beyond (`E / F`).
#[allow(clippy::excessive_precision)]
pub(crate) const AS241_A: [f64; 8] = [
    3.387132872796366608,
    133.14166789178437745,
    1971.5909503065514427,
    13731.693765509461125,
    45921.953931549871457,
    67265.770927008700853,
    33430.575583588128105,
    2509.0809287301226727,
];
#[allow(clippy::excessive_precision)]
pub(crate) const AS241_B: [f64; 8] = [
    1.0,
    42.313330701600911252,
    687.1870074920579083,
    5394.1960214247511077,
    21213.794301586595867,
    39307.89580009271061,
    28729.085735721942674,
    5226.495278852545925,
];
#[allow(clippy::excessive_precision)]
pub(crate) const AS241_C: [f64; 8] = [
    1.42343711074968357734,
    4.6303378461565452959,
    5.7694972214606914055,
    3.64784832476320460504,
    1.27045825245236838258,
    0.24178072517745061177,
    0.0227238449892691845833,
    7.7454501427834140764e-4,
];
#[allow(clippy::excessive_precision)]
pub(crate) const AS241_D: [f64; 8] = [
    1.0,
    2.05319162663775882187,
    1.6763848301838038494,
    0.68976733498510000455,
    0.14810397642748007459,
    0.0151986665636164571966,
    5.475938084995344946e-4,
    1.05075007164441684324e-9,
];
#[allow(clippy::excessive_precision)]
pub(crate) const AS241_E: [f64; 8] = [
    6.6579046435011037772,
    5.4637849111641143699,
    1.7848265399172913358,
    0.29656057182850489123,
    0.026532189526576123093,
    0.0012426609473880784386,
    2.71155556874348757815e-5,
    2.01033439929228813265e-7,
];
#[allow(clippy::excessive_precision)]
pub(crate) const AS241_F: [f64; 8] = [
    1.0,
    0.59983220655588793769,
    0.13692988092273580531,
    0.0148753612908506148525,
    7.868691311456132591e-4,
    1.8463183175100546818e-5,
    1.4215117583164458887e-7,
    2.04426310338993978564e-15,
];

/// `Phi^{-1}(p)` for `0 < p < 1`: Wichura's algorithm AS 241 (PPND16), relative accuracy ~1e-16.
pub fn ndtri(p: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    let q = p - 0.5;
    if q.abs() <= AS241_CENTRAL_END {
        let r = 0.180625 - q * q;
        return q * polynomial::<Separate>(&AS241_A, r) / polynomial::<Separate>(&AS241_B, r);
    }
    let r = (-(if q < 0.0 { p } else { 1.0 - p }).ln()).sqrt();
    let value = if r <= 5.0 {
        let r = r - 1.6;
        polynomial::<Separate>(&AS241_C, r) / polynomial::<Separate>(&AS241_D, r)
    } else {
        let r = r - 5.0;
        polynomial::<Separate>(&AS241_E, r) / polynomial::<Separate>(&AS241_F, r)
    };
    if q < 0.0 {
        -value
    } else {
        value
    }
}

/// `Phi^{-1}(exp(log_p))` for `log_p <= log(1/2)`, including probabilities far below the
/// smallest double: AS 241 where `exp(log_p)` is representable, else Newton's method on
/// `log Phi(x) = log_p` from the asymptotic start.
pub fn ndtri_log(log_p: f64) -> f64 {
    if log_p == f64::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    if log_p > -700.0 {
        return ndtri(log_p.exp());
    }
    // Phi(x) ~ phi(x) / |x|: -log_p ~ x^2 / 2 + log|x| + log sqrt(2 pi).
    let t = -2.0 * log_p;
    let mut x = -(t - (t.ln() + std::f64::consts::TAU.ln())).sqrt();
    for _ in 0..50 {
        let lx = log_ndtr(x);
        // d log Phi / dx = phi(x) / Phi(x).
        let step = (lx - log_p) / (log_pdf(x) - lx).exp();
        x -= step;
        if step.abs() <= 1e-15 * x.abs() {
            break;
        }
    }
    x
}

/// A draw of the standard normal truncated to `[a, b]` by inversion at the uniform `u`,
/// accurate in both tails (the inversion happens on the side of the smaller tail).
pub fn truncated_standard_normal_at(a: f64, b: f64, u: f64) -> f64 {
    if a + b > 0.0 {
        return -truncated_standard_normal_at(-b, -a, 1.0 - u);
    }
    // Here a <= -|b|: Phi(a) is the small side.
    let log_mass = log_diff_ndtr(a, b);
    let target = u.ln() + log_mass;
    let log_a = log_ndtr(a);
    if target < log_a - 2.0 && a.is_finite() && b.is_finite() {
        // A short interval: Phi(a) + u (Phi(b) - Phi(a)) would lose the draw's position to
        // rounding. Solve log(Phi(x) - Phi(a)) = log u + log_mass by Newton instead, from the
        // exponential approximation of the density on [a, b].
        let w = b - a;
        let t = if (a * w).abs() < 1e-12 { u * w } else { -(u * (-a * w).exp_m1()).ln_1p() / a };
        let mut x = (a + t).clamp(a, b);
        for _ in 0..30 {
            let log_part = log_diff_ndtr(a, x);
            if log_part == f64::NEG_INFINITY {
                x = a + 0.5 * (x - a).max(f64::EPSILON * (1.0 + a.abs()));
                continue;
            }
            let step = (log_part - target) / (log_pdf(x) - log_part).exp();
            let next = (x - step).clamp(a, b);
            let done = (next - x).abs() <= 1e-15 * (1.0 + x.abs());
            x = next;
            if done {
                break;
            }
        }
        return x;
    }
    let log_p = log_add_exp(log_a, target);
    let x = if log_p <= -std::f64::consts::LN_2 {
        ndtri_log(log_p)
    } else {
        // 1 - p = Phi(-b) + (1 - u) (Phi(b) - Phi(a)), without the cancellation of 1 - p.
        -ndtri_log(log_add_exp(log_ndtr(-b), (1.0 - u).ln() + log_mass))
    };
    x.clamp(a, b)
}

/// `Phi(x)` in linear space (accurate relative to itself below 0; above, use `1 - Phi(-x)`).
#[inline]
pub fn ndtr(x: f64) -> f64 {
    if x <= 0.0 {
        upper_tail(-x)
    } else {
        0.5 + central_half(x)
    }
}

/// `(lo, hi, mirrored)`: the interval `[a, b]` of a standard normal, or its mirror image
/// `[-b, -a]` where it lies mostly above 0, so that its smaller tail is the lower one
/// (`lo <= -|hi|`) and neither end's probability loses its digits to `1 - tiny`.
#[inline(always)]
pub(crate) fn toward_lower_tail(a: f64, b: f64) -> (f64, f64, bool) {
    let mirrored = a + b > 0.0;
    let (lo, hi) = if mirrored { (-b, -a) } else { (a, b) };
    (lo, hi, mirrored)
}

/// `(log(Phi(b) - Phi(a)), a draw of the standard normal truncated to [a, b] at the uniform
/// u)`. Where both probabilities are plain doubles without cancellation (the common case) the
/// work is two `erfc` and one AS 241; far in a tail it is [`log_diff_ndtr`] and
/// [`truncated_standard_normal_at`], in log space.
pub fn truncated_draw(a: f64, b: f64, u: f64) -> (f64, f64) {
    let (lo, hi, mirrored) = toward_lower_tail(a, b);
    let (v, sign) = if mirrored { (1.0 - u, -1.0) } else { (u, 1.0) };
    // Now lo <= -|hi|, so Phi(lo) <= 1/2.
    if lo > -37.0 {
        let p_lo = ndtr(lo);
        // Phi(hi) directly below zero, else as 1 - Phi(-hi) >= 1/2: no cancellation either way.
        let q_hi = ndtr(-hi);
        let p_hi = if hi <= 0.0 { ndtr(hi) } else { 1.0 - q_hi };
        let mass = p_hi - p_lo;
        // The difference loses digits only when the interval is short; then the slow path.
        if mass > 1e-3 * p_hi {
            let p = p_lo + v * mass;
            let x = if p <= 0.5 { ndtri(p) } else { -ndtri(q_hi + (1.0 - v) * mass) };
            return (mass.ln(), sign * x.clamp(lo, hi));
        }
    }
    (log_diff_ndtr(a, b), truncated_standard_normal_at(a, b, u))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The recurrence's moments against each moment's own series (a different computation:
    /// the series alone, per moment): a few roundings apart at every half-width up to
    /// `SERIES_REACH`, down to half-widths whose high powers underflow.
    #[test]
    fn recurrence_moments_match_their_series() {
        let mut h = SERIES_REACH;
        while h > 1e-200 {
            let moments = even_gaussian_moments(h);
            for (k, got) in moments.iter().enumerate() {
                let want = even_gaussian_moment(h, k);
                // Both are sums of positive terms within a few roundings, each of its exact
                // value (the series' alternation loses less than 1/7 of its first term):
                // 16 eps covers both, relative, or absolute at the subnormal floor.
                assert!((got - want).abs() <= 16.0 * f64::EPSILON * want + 1e-300, "h {h} k {k}: {got} vs {want}");
            }
            h *= 0.37;
        }
    }

    /// `log Phi(x)` by direct quadrature of the density in log space (Simpson, shifted).
    fn reference_log_ndtr(x: f64) -> f64 {
        let lo = x - 40.0;
        let n = 200_000;
        let h = (x - lo) / n as f64;
        let mut acc = 0.0;
        for i in 0..=n {
            let t = lo + i as f64 * h;
            let w = if i == 0 || i == n {
                1.0
            } else if i % 2 == 1 {
                4.0
            } else {
                2.0
            };
            acc += w * (log_pdf(t) - log_pdf(x)).exp();
        }
        (acc * h / 3.0).ln() + log_pdf(x)
    }

    /// Beyond `sqrt(32)`, against the Mills ratio's continued fraction
    /// `R(y) = 1 / (y + 1 / (y + 2 / (y + 3 / ...)))` (`r = R / sqrt(2 pi)`), which 200 levels
    /// take to rounding there.
    #[test]
    fn empty_intervals_have_no_mass_and_nan_stays_nan() {
        for (lo, hi) in [(1.0, 1.0), (-28.41, -29.89), (3.0, -3.0), (0.1, 0.05)] {
            let (log_mass, mean, variance) = truncated_normal_central(0.0, 1.0, lo, hi);
            assert!(log_mass == f64::NEG_INFINITY && mean.is_nan() && variance.is_nan(), "[{lo}, {hi}]");
        }
        assert!(truncated_normal_central(0.0, 1.0, f64::NAN, 1.0).0.is_nan());
    }

    #[test]
    fn far_tail_factor_with_one_division_matches_the_continued_fraction() {
        let mills = |y: f64| 1.0 / (1..200).rev().fold(y, |acc, k| y + k as f64 / acc);
        let mut worst: f64 = 0.0;
        for i in 0..=4000 {
            let y = SQRT_32 * (1.0 + 1e-12) * (1e6f64 / SQRT_32).powf(i as f64 / 4000.0);
            let want = mills(y) * FRAC_1_SQRT_2PI;
            for got in [cody_far(y), cody_far_one_division::<Separate>(y)] {
                worst = worst.max((got / want - 1.0).abs());
            }
        }
        assert!(worst < 1e-15, "{worst}");
        for y in [1e20, 1e300, f64::INFINITY] {
            assert!((0.0..1e-20).contains(&cody_far_one_division::<Separate>(y)), "{y}");
        }
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
    fn cdf_matches_high_precision_values() {
        // Phi(x) to 20 digits (mpmath at 40 digits), on both sides of each of Cody's ranges.
        let table = [
            (-37.5, 4.6053530095819548438e-308),
            (-30.0, 4.9067139271481870595e-198),
            (-12.25, 8.3997960636334176589e-35),
            (-5.657, 7.7020881721776008424e-9),
            (-5.6, 1.071759025831092932e-8),
            (-1.5, 0.066807201268858066004),
            (-0.674, 0.250155656840322577),
            (-0.3, 0.38208857781104736693),
            (-1e-08, 0.49999999601057719599),
            (0.2, 0.57925970943910302738),
            (0.7, 0.75803634777692697138),
            (2.5, 0.99379033467422386483),
            (6.0, 0.99999999901341235496),
        ];
        for (x, want) in table {
            assert!((ndtr(x) / want - 1.0).abs() < 2e-15, "Phi({x}) = {} vs {want}", ndtr(x));
            assert!((log_ndtr(x) - want.ln()).abs() < 2e-15 * want.ln().abs().max(1.0), "log Phi({x})");
            if x < -0.2 {
                // 1/2 - Phi(x) loses at most two bits to cancellation here.
                assert!((central_half(-x) / (0.5 - want) - 1.0).abs() < 1e-14, "Phi({}) - 1/2", -x);
            }
        }
        // Phi(y) - 1/2 = y phi(0) (1 - y^2 / 6 + ...) without cancellation near zero.
        assert!((central_half(1e-8) / (1e-8 * FRAC_1_SQRT_2PI) - 1.0).abs() < 1e-15);
        assert_eq!(ndtr(f64::NEG_INFINITY), 0.0);
        assert_eq!(ndtr(f64::INFINITY), 1.0);
        assert_eq!(log_ndtr(f64::NEG_INFINITY), f64::NEG_INFINITY);
        assert!(ndtr(f64::NAN).is_nan() && log_ndtr(f64::NAN).is_nan());
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
        let cases = [
            (0.3, 1.2, -0.5, 2.0),
            (0.0, 1.0, 3.0, f64::INFINITY),
            (5.0, 0.5, f64::NEG_INFINITY, -1.0),
            (0.0, 2.0, -1.0, 1.0),
            // Short intervals far out (the quadrature path of the mass).
            (0.0, 1.0, 12.0, 12.001),
            (2.0, 0.5, -3.0, -2.9995),
            (0.0, 1.0, 10.0, 10.1),
            // Far tails, one- and two-sided (the continued fraction), and near its threshold.
            (0.0, 1.0, 30.0, f64::INFINITY),
            (0.0, 1.0, 35.0, 36.0),
            (1.0, 0.1, 3.0, 3.5),
            (0.0, 1.0, f64::NEG_INFINITY, -37.0),
            (0.0, 1.0, 4.0, 4.3),
            (0.0, 1.0, 3.9, 4.6),
            (0.0, 1.0, -6.0, -4.5),
        ];
        for (mu, sd, lo, hi) in cases {
            let (log_mass, mean, second) = truncated_normal(mu, sd, lo, hi);
            let (a, b) = (lo.max(mu - 40.0 * sd), hi.min(mu + 40.0 * sd));
            let shift = if mu < a {
                a
            } else if mu > b {
                b
            } else {
                mu
            };
            // Simpson's rule for int d(z) f(z) dz, with d the density relative to its value at `shift`.
            let simpson = |f: &dyn Fn(f64) -> f64| {
                let n = 400_000;
                let h = (b - a) / n as f64;
                let sum: f64 = (0..=n)
                    .map(|i| {
                        let z = a + i as f64 * h;
                        let w = if i == 0 || i == n {
                            1.0
                        } else if i % 2 == 1 {
                            4.0
                        } else {
                            2.0
                        };
                        w * (log_pdf((z - mu) / sd) - log_pdf((shift - mu) / sd)).exp() * f(z)
                    })
                    .sum();
                sum * h / 3.0
            };
            let m0 = simpson(&|_| 1.0);
            let ref_mean = simpson(&|z| z) / m0;
            let ref_variance = simpson(&|z| (z - ref_mean) * (z - ref_mean)) / m0;
            let ref_log_mass = (m0 / sd).ln() + log_pdf((shift - mu) / sd);
            assert!((log_mass - ref_log_mass).abs() < 1e-9, "{log_mass} vs {ref_log_mass}");
            assert!((mean - ref_mean).abs() < 1e-9 * (1.0 + mean.abs()));
            assert!((second - (ref_variance + ref_mean * ref_mean)).abs() < 1e-9 * (1.0 + second.abs()));
            // The variance relative to itself, also where it is tiny against the mean squared.
            let variance = truncated_normal_central(mu, sd, lo, hi).2;
            assert!(
                (variance - ref_variance).abs() < 1e-9 * ref_variance,
                "[{lo}, {hi}]: {variance} vs {ref_variance}"
            );
        }
    }

    #[test]
    fn inverse_cdf_round_trips_in_both_tails() {
        for x in [-38.0, -20.0, -8.0, -3.0, -0.5, 0.0, 0.3, 2.0] {
            let p = (0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)) as f64;
            let back = ndtri(p);
            assert!((back - x).abs() <= 1e-11 * (1.0 + x.abs()), "{x}: {back}");
        }
        for x in [-40.0, -100.0, -1000.0, -30.5] {
            let back = ndtri_log(log_ndtr(x));
            assert!((back - x).abs() <= 1e-12 * x.abs(), "{x}: {back}");
        }
    }

    #[test]
    fn truncated_draws_stay_inside_and_invert_the_cdf() {
        for (a, b) in
            [(-1.0, 2.0), (40.0, 41.0), (-45.0, -44.0), (f64::NEG_INFINITY, -50.0), (3.0, f64::INFINITY), (-1e-9, 1e-9)]
        {
            let lm = log_diff_ndtr(a, b);
            for u in [1e-12, 0.1, 0.5, 0.9, 1.0 - 1e-12] {
                let x = truncated_standard_normal_at(a, b, u);
                assert!(x >= a && x <= b, "[{a}, {b}] u={u}: {x}");
                // P(a < X < x) / P(a < X < b) = u.
                let frac = (log_diff_ndtr(a, x) - lm).exp();
                assert!((frac - u).abs() < 1e-9, "[{a}, {b}] u={u}: x={x} gives {frac}");
            }
        }
    }

    #[test]
    fn fast_truncated_draws_agree_with_the_log_space_path() {
        for (a, b) in
            [(-1.0, 2.0), (-3.0, -2.9), (0.5, f64::INFINITY), (f64::NEG_INFINITY, 0.2), (-40.0, 30.0), (5.0, 5.5)]
        {
            for u in [1e-9, 0.2, 0.5, 0.77, 1.0 - 1e-9] {
                let (lm, x) = truncated_draw(a, b, u);
                assert!((lm - log_diff_ndtr(a, b)).abs() < 1e-12 * (1.0 + lm.abs()), "[{a}, {b}]");
                let reference = truncated_standard_normal_at(a, b, u);
                assert!((x - reference).abs() < 1e-9 * (1.0 + x.abs()), "[{a}, {b}] u={u}: {x} vs {reference}");
            }
        }
    }

    #[test]
    fn centred_series_match_gauss_legendre_over_their_reach() {
        // 20 Gauss-Legendre nodes on each of 8 pieces of [-h, h]: an entire integrand over a
        // short interval, exact to rounding.
        let quadrature = |c: f64, h: f64| {
            let pieces = 8;
            let width = 2.0 * h / pieces as f64;
            let mut sums = [0.0; 3];
            for piece in 0..pieces {
                let centre = -h + (piece as f64 + 0.5) * width;
                let part = gauss_legendre(&GL20_HALF, centre, 0.5 * width, |s| {
                    let f = (-c * s - 0.5 * s * s).exp();
                    [f, s * f, s * s * f]
                });
                for j in 0..3 {
                    sums[j] += part[j];
                }
            }
            sums
        };
        for h in [1e-9, 1e-4, 0.01, 0.1, 0.25, 0.4, 0.5] {
            let series = CentredSeries::new(h);
            let reach = SERIES_REACH / h - 1.0;
            for step in -10..=10 {
                let c = reach * step as f64 / 10.0;
                let got = series.at::<true, Separate>(c);
                let want = quadrature(c, h);
                // I_1 may be near 0 (c ~ 0): measured against h I_0, its natural scale.
                let errors = [
                    (got[0] / want[0] - 1.0).abs(),
                    (got[1] - want[1]).abs() / (h * want[0]),
                    (got[2] / want[2] - 1.0).abs(),
                ];
                assert!(errors.iter().all(|e| *e < 4e-15), "h {h} c {c}: {got:?} vs {want:?} ({errors:?})");
                assert_eq!(series.at::<false, Separate>(c)[0], got[0]);
            }
        }
    }
}
