//! `Phi` and `Phi^{-1}` over batches of arguments, written without branches per argument so
//! that the compiler turns each batch into vector instructions.
//!
//! Quasi-Monte Carlo paths call these two functions for every variable of every point, with
//! arguments that jump between the approximations' ranges from one path to the next: the
//! scalar versions in `normal.rs` spend much of their time in mispredicted branches and in
//! `libm` calls a loop cannot vectorise. Here the arguments go in groups of 8: a group within one
//! of the common ranges (W. J. Cody's for `Phi`, Wichura's AS 241 for `Phi^{-1}`, the same
//! coefficients) evaluates that approximation, a group that straddles them evaluates both and
//! keeps the right one by a select; `exp` and `log` are inline polynomials.
//! The rare arguments beyond those ranges (`|x| > sqrt(32)`, probabilities below `1.4e-11`)
//! are redone by the scalar functions in a second pass. Only adds, multiplies, divisions and
//! square roots are used, never a fused multiply-add, so a batch gives the same bits with or
//! without the wider instructions of [`with_wide_vectors`]. (Kernels may instead take their
//! products and sums through `MulAdd`, fused where the processor can: see there.)
//!
//! `EXACTEM_SIMD=baseline|avx2|avx512|auto` (read once) forces the kernels every computation
//! uses, never beyond what the processor has ([`Vectors::selected`]): `baseline` gives the
//! bits of a processor without fused multiply-add, whichever runs it.

use super::normal::{
    cody_central, cody_far, cody_middle, ndtr, ndtri, polynomial, square_with_error, toward_lower_tail, truncated_draw,
    AS241_A, AS241_B, AS241_C, AS241_CENTRAL_END, AS241_D, CODY_CENTRAL_END, SQRT_32,
};

/// The smallest tail probability AS 241's middle range covers (`r <= 5`: `exp(-25)`).
const NDTRI_MIDDLE_LIMIT: f64 = 1.388_794_386_496_402e-11;

/// `log 2` split as fdlibm does: `n LN2_HI` is exact for the exponents of a double.
#[allow(clippy::excessive_precision)]
const LN2_HI: f64 = 6.931_471_803_691_238_164_90e-1;
#[allow(clippy::excessive_precision)]
const LN2_LO: f64 = 1.908_214_929_270_587_700_02e-10;

/// How a kernel forms `a * b + c`. A fused multiply-add rounds once and is one instruction
/// (polynomials take half the operations and half the dependent latency), but the baseline
/// x86-64 processor has none, and a library call per operation would cost more than it saves:
/// [`with_wide_vectors`] runs a kernel with [`Fused`] where the processor has the instruction
/// and [`Separate`] elsewhere. A kernel that uses `M` is deterministic on one machine but may
/// differ in the last bits from one machine to another; kernels that must give the same bits
/// on every width call [`Separate`] whatever `M` is.
pub(crate) trait MulAdd {
    fn mul_add(a: f64, b: f64, c: f64) -> f64;
}

/// `a * b + c` with two roundings: the same bits everywhere.
pub(crate) enum Separate {}

/// `a * b + c` with one rounding, for code compiled with the `fma` target feature only.
pub(crate) enum Fused {}

impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f64, b: f64, c: f64) -> f64 {
        a * b + c
    }
}

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f64, b: f64, c: f64) -> f64 {
        a.mul_add(b, c)
    }
}

/// [`exp_with`] with separate products and sums.
#[inline(always)]
pub(crate) fn exp(x: f64) -> f64 {
    exp_with::<Separate>(x)
}

/// `exp(x)` for `-700 <= x <= 700` (clamped to that range), ~1 ulp: `x = n log 2 + r` with
/// `|r| <= log 2 / 2`, a degree-13 Taylor polynomial of `e^r` (truncation 4e-18) and `2^n` put
/// into the exponent bits.
#[inline(always)]
pub(crate) fn exp_with<M: MulAdd>(x: f64) -> f64 {
    const INVERSE_FACTORIALS: [f64; 14] = {
        let mut c = [1.0; 14];
        let mut k = 1;
        while k < 14 {
            c[k] = c[k - 1] / k as f64;
            k += 1;
        }
        c
    };
    const SHIFTER: f64 = 6755399441055744.0; // 1.5 * 2^52: adding it rounds to an integer
    let x = x.clamp(-700.0, 700.0);
    let shifted = M::mul_add(x, std::f64::consts::LOG2_E, SHIFTER);
    let n = shifted - SHIFTER;
    // `n LN2_HI` is exact, so the first step gives the same `x - n LN2_HI` fused or not; the
    // small correction `n LN2_LO` rounds once fused, twice not.
    let r = M::mul_add(-n, LN2_LO, M::mul_add(-n, LN2_HI, x));
    // Estrin's scheme: four levels of dependent products instead of Horner's thirteen, for
    // the loops whose one vector of lanes has nothing else to do meanwhile.
    // `1 + r q(r)`, the leading 1 added last, keeps Horner's rounding.
    let c = &INVERSE_FACTORIALS;
    let (r2, r4) = (r * r, (r * r) * (r * r));
    let pair = |k: usize| M::mul_add(c[2 * k + 2], r, c[2 * k + 1]);
    let low = M::mul_add(M::mul_add(pair(3), r2, pair(2)), r4, M::mul_add(pair(1), r2, pair(0)));
    let high = M::mul_add(c[13], r4, M::mul_add(pair(5), r2, pair(4)));
    let p = M::mul_add(r, M::mul_add(high, r4 * r4, low), 1.0);
    let exponent = shifted.to_bits().wrapping_sub(SHIFTER.to_bits()).wrapping_add(1023) << 52;
    p * f64::from_bits(exponent)
}

/// Arguments of [`exp_or_zero`] below this give 0: [`exp_with`] clamps at -700. Callers scale
/// their terms so that this far below the scale nothing counts (a term of an interval's sum is
/// then below `1e-54` of any total that path accepts; an edge integrand is at most 1).
const EXP_FLOOR: f64 = -700.0;

/// `exp(x)`, zero below [`EXP_FLOOR`].
#[inline(always)]
pub(crate) fn exp_or_zero<M: MulAdd>(x: f64) -> f64 {
    let e = exp_with::<M>(x);
    if x < EXP_FLOOR {
        0.0
    } else {
        e
    }
}

/// `log(x)` for positive normal `x`, ~1 ulp: `x = 2^e m` with `m` in `[sqrt(1/2), sqrt(2))`,
/// then fdlibm's minimax series of `log(1 + f)` in `s = f / (2 + f)`.
#[inline(always)]
pub(crate) fn ln(x: f64) -> f64 {
    #[allow(clippy::excessive_precision)]
    const LG: [f64; 7] = [
        6.666666666666735130e-01,
        3.999999999940941908e-01,
        2.857142874366239149e-01,
        2.222219843214978396e-01,
        1.818357216161805012e-01,
        1.531383769920937332e-01,
        1.479819860511658591e-01,
    ];
    const MANTISSA: u64 = (1 << 52) - 1;
    let bits = x.to_bits();
    let m = f64::from_bits((bits & MANTISSA) | 1.0f64.to_bits()); // in [1, 2)
    let big = m > std::f64::consts::SQRT_2;
    let m = if big { 0.5 * m } else { m };
    let e = ((bits >> 52) as i64 - 1023 + big as i64) as f64;
    let f = m - 1.0;
    let s = f / (2.0 + f);
    let z = s * s;
    let mut r = LG[6];
    for c in LG[..6].iter().rev() {
        r = r * z + c;
    }
    let r = r * z;
    let half_square = 0.5 * f * f;
    e * LN2_HI - ((half_square - (s * (half_square + r) + e * LN2_LO)) - f)
}

/// The batch functions work through their arguments in groups of this many, and a group whose
/// arguments all take one of the approximations evaluates that one alone: in the rectangles'
/// paths 70% of the groups of `Phi` arguments lie beyond Cody's central range and 15% within
/// it, and 78% of the groups of `Phi^{-1}` arguments within AS 241's. Eight doubles are one
/// AVX-512 vector, two AVX2 ones; results do not depend on the grouping.
const GROUP: usize = 8;

/// `Phi(-y)` for `0 <= y <= 0.674` by Cody's central form.
#[inline(always)]
fn upper_tail_central(y: f64) -> f64 {
    let (num, den) = cody_central::<Separate>(y);
    0.5 - num / den
}

/// `Phi(-y)` for `0.674 < y <= sqrt(32)` by Cody's middle form.
#[inline(always)]
fn upper_tail_middle(y: f64) -> f64 {
    let (num, den) = cody_middle::<Separate>(y);
    // exp(-y^2 / 2) with the rounding error of y^2 applied to first order.
    let (square, error) = square_with_error(y);
    exp(-0.5 * square) * (1.0 - 0.5 * error) * (num / den)
}

/// `Phi(-y)` for `0 <= y <= sqrt(32)` (anything else gives garbage, not a trap): both of Cody's
/// forms evaluated and one kept, with the same bits as [`upper_tail_central`] or
/// [`upper_tail_middle`]. Beyond `sqrt(32)` (`Phi(-y) < 7.8e-9`) the callers redo the argument
/// with the scalar `Phi`.
#[inline(always)]
fn upper_tail_near(y: f64) -> f64 {
    let (central_num, central_den) = cody_central::<Separate>(y);
    let (middle_num, middle_den) = cody_middle::<Separate>(y);
    let (square, error) = square_with_error(y);
    let density = exp(-0.5 * square) * (1.0 - 0.5 * error);
    // One division for whichever form the argument takes.
    let is_central = y <= CODY_CENTRAL_END;
    let ratio = if is_central { central_num } else { middle_num } / if is_central { central_den } else { middle_den };
    if is_central {
        0.5 - ratio
    } else {
        density * ratio
    }
}

/// `Phi(x)` from the upper tail `Phi(-|x|)`.
#[inline(always)]
fn phi_from_tail(tail: f64, x: f64) -> f64 {
    if x <= 0.0 {
        tail
    } else {
        1.0 - tail
    }
}

/// `Phi(x)` by Cody's central form, middle form, or both and a select (see [`ndtr_into`]).
#[inline(always)]
fn ndtr_central(x: f64) -> f64 {
    phi_from_tail(upper_tail_central(x.abs()), x)
}
#[inline(always)]
fn ndtr_middle(x: f64) -> f64 {
    phi_from_tail(upper_tail_middle(x.abs()), x)
}
#[inline(always)]
fn ndtr_near(x: f64) -> f64 {
    phi_from_tail(upper_tail_near(x.abs()), x)
}

/// `$out[j] = f($x[j])` in groups of [`GROUP`]: `f = $central` for a group whose arguments all
/// pass `$is_central`, `$middle` for one where none does, `$both` (both forms and a select) for
/// the rest and the last, partial group. A macro with plain loops over functions: closures
/// handed to a helper were left out of line, one call per lane.
macro_rules! by_group {
    ($x:expr, $out:expr, $is_central:expr, $central:ident, $middle:ident, $both:ident) => {{
        let is_central = $is_central;
        let (whole, x_rest) = $x.as_chunks::<GROUP>();
        let (out_whole, out_rest) = $out[..$x.len()].as_chunks_mut::<GROUP>();
        for (x, out) in whole.iter().zip(out_whole) {
            let central = x.iter().fold(0, |n, &x| n + is_central(x) as usize);
            if central == GROUP {
                for (o, &x) in out.iter_mut().zip(x) {
                    *o = $central(x);
                }
            } else if central == 0 {
                for (o, &x) in out.iter_mut().zip(x) {
                    *o = $middle(x);
                }
            } else {
                for (o, &x) in out.iter_mut().zip(x) {
                    *o = $both(x);
                }
            }
        }
        for (o, &x) in out_rest.iter_mut().zip(x_rest) {
            *o = $both(x);
        }
    }};
}

/// `out[j] = Phi(x[j])`, relative accuracy ~1e-15 below zero and absolute ~1e-16 above.
#[inline(always)]
pub(crate) fn ndtr_into(x: &[f64], out: &mut [f64]) {
    by_group!(x, out, |x: f64| x.abs() <= CODY_CENTRAL_END, ndtr_central, ndtr_middle, ndtr_near);
    // An or-reduction over the batch vectorises where a loop that branches per lane would not;
    // the scalar pass runs only for the rare batches that need it.
    let beyond_near = |x: f64| x.is_nan() | (x.abs() > SQRT_32);
    if x.iter().fold(false, |any, &x| any | beyond_near(x)) {
        for (o, &x) in out.iter_mut().zip(x) {
            if beyond_near(x) {
                *o = ndtr(x);
            }
        }
    }
}

/// AS 241's central form: `Phi^{-1}(p)` for `|p - 1/2| <= 0.425`.
#[inline(always)]
fn ndtri_central(p: f64) -> f64 {
    let q = p - 0.5;
    let r = 0.180625 - q * q;
    q * polynomial::<Separate>(&AS241_A, r) / polynomial::<Separate>(&AS241_B, r)
}

/// AS 241's middle form: `Phi^{-1}(p)` for `|p - 1/2| > 0.425` down to tail probabilities of
/// [`NDTRI_MIDDLE_LIMIT`] (clamped so that the arguments the second pass redoes stay finite).
#[inline(always)]
fn ndtri_middle(p: f64) -> f64 {
    let q = p - 0.5;
    let small = if q < 0.0 { p } else { 1.0 - p };
    let t = (-ln(small.max(f64::MIN_POSITIVE))).sqrt() - 1.6;
    let ratio = polynomial::<Separate>(&AS241_C, t) / polynomial::<Separate>(&AS241_D, t);
    if q >= 0.0 {
        ratio
    } else {
        -ratio
    }
}

/// Both of AS 241's forms evaluated and one kept, with the same bits as [`ndtri_central`] or
/// [`ndtri_middle`].
#[inline(always)]
fn ndtri_near(p: f64) -> f64 {
    let q = p - 0.5;
    let r = 0.180625 - q * q;
    let small = if q < 0.0 { p } else { 1.0 - p };
    let t = (-ln(small.max(f64::MIN_POSITIVE))).sqrt() - 1.6;
    // One division for whichever form the argument takes.
    let is_central = q.abs() <= AS241_CENTRAL_END;
    let num = if is_central { q * polynomial::<Separate>(&AS241_A, r) } else { polynomial::<Separate>(&AS241_C, t) };
    let ratio =
        num / if is_central { polynomial::<Separate>(&AS241_B, r) } else { polynomial::<Separate>(&AS241_D, t) };
    if is_central || q >= 0.0 {
        ratio
    } else {
        -ratio
    }
}

/// `out[j] = Phi^{-1}(p[j])` for `0 < p[j] < 1`, AS 241 (relative accuracy ~1e-16 as published;
/// with the inline `log`, a few ulps).
#[inline(always)]
pub(crate) fn ndtri_into(p: &[f64], out: &mut [f64]) {
    by_group!(p, out, |p: f64| (p - 0.5).abs() <= AS241_CENTRAL_END, ndtri_central, ndtri_middle, ndtri_near);
    let beyond_middle = |p: f64| {
        let small = if p < 0.5 { p } else { 1.0 - p };
        small.is_nan() | (small < NDTRI_MIDDLE_LIMIT)
    };
    if p.iter().fold(false, |any, &p| any | beyond_middle(p)) {
        for (o, &p) in out.iter_mut().zip(p) {
            if beyond_middle(p) {
                *o = ndtri(p);
            }
        }
    }
}

/// Below this `Phi(hi)` a truncated draw is left to the log-space scalar function, so that
/// `u Phi(hi)` (`u >= 2^-33`) stays a normal double for `Phi^{-1}`.
const MIN_LINEAR_MASS: f64 = 1e-280;

/// Paths integrated together (the rectangles' and the tilted path's), each step of the
/// separation of variables one loop over them: long enough for vector instructions, short enough
/// for the scratch to stay in L1.
pub(crate) const LANES: usize = 64;
pub(crate) type Lanes = [f64; LANES];

/// `(log_mass[j], x[j]) = truncated_draw(a[j], b[j], u[j])` for the lanes marked `live`
/// (the others get `-inf` and 0): `log(Phi(b) - Phi(a))` and the standard normal truncated to
/// `[a, b]` drawn by inversion at `u`, on the side of the smaller tail. The lanes where the
/// linear-space difference keeps its digits (the common case) are done here; short intervals
/// and far tails go to the scalar function, in log space.
#[inline(always)]
pub(crate) fn truncated_draws_into(
    a: &Lanes,
    b: &Lanes,
    u: &Lanes,
    live: &[bool; LANES],
    log_mass: &mut Lanes,
    x: &mut Lanes,
) {
    // On the side of the smaller tail: lanes mostly above 0 are drawn as their mirror image.
    let (mut lo, mut hi, mut minus_abs_hi, mut flipped) = ([0.0; LANES], [0.0; LANES], [0.0; LANES], [false; LANES]);
    for l in 0..LANES {
        (lo[l], hi[l], flipped[l]) = toward_lower_tail(a[l], b[l]);
        minus_abs_hi[l] = -hi[l].abs();
    }
    let (mut p_lo, mut tail) = ([0.0; LANES], [0.0; LANES]);
    ndtr_into(&lo, &mut p_lo);
    // Phi(-|hi|) gives both Phi(hi) and Phi(-hi) without cancellation.
    ndtr_into(&minus_abs_hi, &mut tail);
    let (mut p_hi, mut mass, mut argument, mut lower_side) = ([0.0; LANES], [0.0; LANES], [0.0; LANES], [false; LANES]);
    for l in 0..LANES {
        let v = if flipped[l] { 1.0 - u[l] } else { u[l] };
        let q_hi;
        (p_hi[l], q_hi) = if hi[l] <= 0.0 { (tail[l], 1.0 - tail[l]) } else { (1.0 - tail[l], tail[l]) };
        mass[l] = p_hi[l] - p_lo[l];
        let p = p_lo[l] + v * mass[l];
        lower_side[l] = p <= 0.5;
        argument[l] = if lower_side[l] { p } else { q_hi + (1.0 - v) * mass[l] };
    }
    ndtri_into(&argument, x);
    for l in 0..LANES {
        let y = if lower_side[l] { x[l] } else { -x[l] };
        // max / min rather than clamp: a dead lane's ends may be crossed or NaN.
        let y = y.max(lo[l]).min(hi[l]);
        x[l] = if flipped[l] { -y } else { y };
        log_mass[l] = ln(mass[l]);
    }
    // Lanes whose Phi(hi) is too small for every draw's probability to be a normal double go
    // to `far_tail_draws` in gathered groups, unless the interval is short against the tail's
    // scale `1 / |hi|` (there the difference of the tail factors would cancel); those and the
    // lanes where the difference of CDFs would lose digits go to the scalar draw, in log space.
    let mut far = [0usize; LANES];
    let mut n_far = 0;
    for l in 0..LANES {
        if !live[l] {
            (log_mass[l], x[l]) = (f64::NEG_INFINITY, 0.0);
        } else if (p_hi[l].is_nan() || p_hi[l] <= MIN_LINEAR_MASS)
            && hi[l] < -FAR_TAIL_END
            && (hi[l] - lo[l]) * -hi[l] >= 1.0
        {
            far[n_far] = l;
            n_far += 1;
        } else if !(p_hi[l] > MIN_LINEAR_MASS && mass[l] > 1e-3 * p_hi[l]) {
            (log_mass[l], x[l]) = truncated_draw(a[l], b[l], u[l]);
        }
    }
    for group in far[..n_far].chunks(FAR_LANES) {
        let (mut w, mut v, mut width) = ([FAR_TAIL_END; FAR_LANES], [0.5; FAR_LANES], [1.0; FAR_LANES]);
        for (k, &l) in group.iter().enumerate() {
            // In the upper tail's variable y = -x: [w, w + width], drawn at 1 - v.
            (w[k], width[k]) = (-hi[l], hi[l] - lo[l]);
            v[k] = if flipped[l] { u[l] } else { 1.0 - u[l] };
        }
        let (mut group_log_mass, mut y) = ([0.0; FAR_LANES], [0.0; FAR_LANES]);
        far_tail_draws(&w, &width, &v, &mut group_log_mass, &mut y);
        for (k, &l) in group.iter().enumerate() {
            log_mass[l] = group_log_mass[k];
            x[l] = if flipped[l] { y[k] } else { -y[k] };
        }
    }
}

/// Upper-tail ends beyond this (standardised) may take [`far_tail_draws`]; every lane sent
/// there is in fact beyond ~36 (where `Phi` falls below [`MIN_LINEAR_MASS`]).
const FAR_TAIL_END: f64 = 8.0;
/// Lanes of [`far_tail_draws`]: a batch's far-tail intervals, gathered.
const FAR_LANES: usize = 8;

/// `(y^2, log(Q(y) e^{y^2/2}))` for `y > sqrt(32)`, `Q` the upper tail: Cody's far-range
/// factor, with the rounding error of `y^2` moved into the second part (Dekker's product), so
/// that `log Q(y) = -y^2 / 2 + second` and differences of `log Q` can leave out the squares.
#[inline(always)]
fn far_tail_factor(y: f64) -> (f64, f64) {
    let (square, error) = square_with_error(y);
    (square, ln(cody_far(y)) - 0.5 * error)
}

/// `log(1 + z)` for `z > -1` without losing a small `z` (Goldberg's correction).
#[inline(always)]
fn ln_1p(z: f64) -> f64 {
    let w = 1.0 + z;
    if w == 1.0 {
        z
    } else {
        ln(w) * z / (w - 1.0)
    }
}

/// `exp(x) - 1` for `x <= 0` without losing a small `x` (Kahan's correction).
#[inline(always)]
fn exp_m1(x: f64) -> f64 {
    let e = exp(x);
    if x < -40.0 {
        -1.0
    } else if e == 1.0 {
        x
    } else {
        (e - 1.0) * x / ln(e)
    }
}

/// Far in the upper tail (`w > 8`, `w width >= 1`): `log(Q(w) - Q(w + width))` and the draw `y` from the
/// standard normal truncated to `[w, w + width]` at the uniform `v`, where
/// `Q(y) = Q(w) - v (Q(w) - Q(w + width))` (`Q` the upper tail), in log space: with
/// `rho = Q(w + width) / Q(w)` from Cody's far-range factors, the mass is `Q(w) (1 - rho)`, and
/// `y` solves `log(Q(y) / Q(w)) = log(1 - v (1 - rho))` by Newton's method (the derivative is
/// `-1 / M(y)`, `M` the Mills ratio) from the exponential tail's solution. The scalar draw
/// reaches the same by Newton's method on `log Phi` differences, at ten times the cost.
#[inline(always)]
fn far_tail_draws(
    w: &[f64; FAR_LANES],
    width: &[f64; FAR_LANES],
    v: &[f64; FAR_LANES],
    log_mass: &mut [f64; FAR_LANES],
    y: &mut [f64; FAR_LANES],
) {
    for l in 0..FAR_LANES {
        let (w, v) = (w[l], v[l]);
        let end = w + width[l];
        let (square_w, factor_w) = far_tail_factor(w);
        // log(Q(y) / Q(w)) for y >= w, the Gaussian part as a product (y^2 - w^2 would cancel).
        let log_ratio = |y: f64| -0.5 * (y - w) * (y + w) + far_tail_factor(y).1 - factor_w;
        let log_rho = if end < f64::INFINITY { log_ratio(end) } else { f64::NEG_INFINITY };
        let one_minus_rho = -exp_m1(log_rho);
        log_mass[l] = (-0.5 * square_w + factor_w) + ln(one_minus_rho);
        let target = ln_1p(-v * one_minus_rho);
        let mut t = w - target / w;
        // From the exponential tail's solution (off by ~1/w^3 relative for w >= 36), two
        // steps reach rounding.
        for _ in 0..2 {
            t = t.max(w).min(end);
            // The Mills ratio M(t) = Q(t) / phi(t) = exp(factor) sqrt(2 pi).
            let mills = exp(far_tail_factor(t).1) * (2.0 * std::f64::consts::PI).sqrt();
            t += (log_ratio(t) - target) * mills;
        }
        y[l] = t.max(w).min(end);
    }
}

/// A loop over batches that [`with_wide_vectors`] compiles for the processor's widest vectors.
pub(crate) trait VectorKernel {
    type Output;
    /// Must be `#[inline(always)]`, as must everything it calls that should use the wider
    /// instructions (a closure would be compiled on its own, for the baseline processor).
    /// `M` is [`Fused`] where the instructions include fused multiply-add.
    fn run<M: MulAdd>(self) -> Self::Output;
}

/// Instruction sets a kernel can be compiled for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Vectors {
    /// As built (SSE2 on x86-64: two doubles per instruction).
    Baseline,
    /// Four doubles per instruction, and fused multiply-add.
    Avx2,
    /// Eight doubles per instruction and 32 registers, enough for the approximations'
    /// coefficients.
    Avx512,
}

impl Vectors {
    /// The widest this processor has.
    pub(crate) fn widest() -> Vectors {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
                return Vectors::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Vectors::Avx2;
            }
        }
        Vectors::Baseline
    }

    /// Runs `kernel` compiled for these instructions (the baseline if the processor lacks them).
    #[inline(always)]
    pub(crate) fn run<K: VectorKernel>(self, kernel: K) -> K::Output {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,fma")]
            unsafe fn avx512<K: VectorKernel>(kernel: K) -> K::Output {
                kernel.run::<Fused>()
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<K: VectorKernel>(kernel: K) -> K::Output {
                kernel.run::<Fused>()
            }
            let fma = std::arch::is_x86_feature_detected!("fma");
            if self == Vectors::Avx512 && std::arch::is_x86_feature_detected!("avx512f") && fma {
                // SAFETY: the processor supports AVX-512F and FMA, checked just above.
                return unsafe { avx512(kernel) };
            }
            if self != Vectors::Baseline && std::arch::is_x86_feature_detected!("avx2") && fma {
                // SAFETY: the processor supports AVX2 and FMA, checked just above.
                return unsafe { avx2(kernel) };
            }
        }
        kernel.run::<Separate>()
    }
}

/// Runs `kernel` on the processor's widest vectors. Each lane is its own path, so that the
/// results are the same bits on every width, except where a kernel forms products and sums
/// through its [`MulAdd`].
#[inline(always)]
pub(crate) fn with_wide_vectors<K: VectorKernel>(kernel: K) -> K::Output {
    #[cfg(test)]
    if let Some(vectors) = FORCED_VECTORS.with(std::cell::Cell::get) {
        return vectors.run(kernel);
    }
    Vectors::selected().run(kernel)
}

impl Vectors {
    /// The kernels every computation of this process runs: the widest the processor has, or
    /// what the environment variable `EXACTEM_SIMD` asks for (read once, at the first
    /// kernel): `baseline` (SSE2 on x86-64, separate multiplies and adds: the same bits on
    /// every processor), `avx2` (AVX2 and FMA), `avx512` (AVX-512F and FMA) or `auto` (the
    /// default, the widest). A kernel the processor lacks is never run: the request falls back
    /// to the widest below it, with a message on standard error saying so. Results differ
    /// between kernels only in the last bits of fused products (see [`MulAdd`]); the variable
    /// lets tests and users reproduce another processor's results.
    pub(crate) fn selected() -> Vectors {
        static SELECTED: std::sync::OnceLock<Vectors> = std::sync::OnceLock::new();
        *SELECTED.get_or_init(|| {
            let request = std::env::var("EXACTEM_SIMD").unwrap_or_default();
            let (chosen, message) = Vectors::from_request(&request, Vectors::widest());
            if let Some(message) = message {
                eprintln!("exactem: {message}");
            }
            chosen
        })
    }

    /// The kernels for an `EXACTEM_SIMD` value on a processor whose widest are `widest`, and a
    /// message where the request could not be met as asked.
    pub(crate) fn from_request(request: &str, widest: Vectors) -> (Vectors, Option<String>) {
        let rank = |v: Vectors| match v {
            Vectors::Baseline => 0,
            Vectors::Avx2 => 1,
            Vectors::Avx512 => 2,
        };
        let asked = match request.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => return (widest, None),
            "baseline" => Vectors::Baseline,
            "avx2" => Vectors::Avx2,
            "avx512" => Vectors::Avx512,
            other => {
                return (
                    widest,
                    Some(format!(
                        "EXACTEM_SIMD={other:?} is not one of baseline, avx2, avx512, auto; using {widest:?}"
                    )),
                );
            }
        };
        if rank(asked) <= rank(widest) {
            (asked, None)
        } else {
            (
                widest,
                Some(format!("EXACTEM_SIMD asks for {asked:?} kernels, which this processor lacks; using {widest:?}")),
            )
        }
    }
}

#[cfg(test)]
thread_local! {
    static FORCED_VECTORS: std::cell::Cell<Option<Vectors>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with the kernels that this thread starts compiled for `vectors` (or the widest the
/// processor has below them), for tests of code that calls [`with_wide_vectors`].
#[cfg(test)]
pub(crate) fn with_vectors<T>(vectors: Vectors, f: impl FnOnce() -> T) -> T {
    FORCED_VECTORS.with(|forced| forced.set(Some(vectors)));
    let result = f();
    FORCED_VECTORS.with(|forced| forced.set(None));
    result
}

struct Many<'a, const INVERSE: bool>(&'a [f64], &'a mut [f64]);

impl<const INVERSE: bool> VectorKernel for Many<'_, INVERSE> {
    type Output = ();
    #[inline(always)]
    fn run<M: MulAdd>(self) {
        if INVERSE {
            ndtri_into(self.0, self.1)
        } else {
            ndtr_into(self.0, self.1)
        }
    }
}

/// `out[j] = Phi(x[j])` on the widest vectors (the batch functions on their own, as the
/// benchmarks and tests call them).
pub fn ndtr_many(x: &[f64], out: &mut [f64]) {
    with_wide_vectors(Many::<false>(x, out))
}

/// `out[j] = Phi^{-1}(p[j])` on the widest vectors.
pub fn ndtri_many(p: &[f64], out: &mut [f64]) {
    with_wide_vectors(Many::<true>(p, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_pcg::Pcg64;

    fn relative(a: f64, b: f64) -> f64 {
        if a == b {
            0.0
        } else {
            ((a - b) / b).abs()
        }
    }

    #[test]
    fn exp_and_log_match_the_standard_library_to_a_few_ulps() {
        let mut rng = Pcg64::seed_from_u64(1);
        for _ in 0..200_000 {
            let x: f64 = rng.random_range(-700.0..700.0);
            assert!(relative(exp(x), x.exp()) < 4e-16, "exp({x}) = {} against {}", exp(x), x.exp());
            let y = f64::from_bits(rng.random_range(f64::MIN_POSITIVE.to_bits()..f64::MAX.to_bits()));
            assert!(
                (ln(y) - y.ln()).abs() <= 2.3e-16 * y.ln().abs().max(1e-300),
                "ln({y}) = {} against {}",
                ln(y),
                y.ln()
            );
        }
        for x in [-700.0, -1e-300, 0.0, 1e-17, 0.5 * std::f64::consts::LN_2, 700.0] {
            assert!(relative(exp(x), x.exp()) < 4e-16);
        }
        for y in [1.0, std::f64::consts::SQRT_2, 1.0 + f64::EPSILON, 1.0 - f64::EPSILON / 2.0, 0.5, f64::MIN_POSITIVE] {
            assert!(
                (ln(y) - y.ln()).abs() <= 2.3e-16 * y.ln().abs().max(1e-300),
                "ln({y}) = {} against {}",
                ln(y),
                y.ln()
            );
        }
    }

    /// Against the scalar functions, which the module's tests check against quadrature.
    #[test]
    fn batches_match_the_scalar_functions_in_every_range() {
        let mut rng = Pcg64::seed_from_u64(2);
        let mut x: Vec<f64> =
            (0..50_000).map(|_| rng.random_range(-40.0..40.0) * rng.random::<f64>().powi(3)).collect();
        x.extend([
            0.0,
            -0.0,
            0.67448975,
            -0.67448975,
            SQRT_32,
            -SQRT_32,
            38.0,
            -38.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ]);
        let mut out = vec![0.0; x.len()];
        ndtr_into(&x, &mut out);
        for (&x, &o) in x.iter().zip(&out) {
            let exact = ndtr(x);
            let error = if x <= 0.0 { relative(o, exact) } else { (o - exact).abs() };
            assert!(error < 2e-15, "Phi({x}) = {o} against {exact}");
        }
        let mut p: Vec<f64> = (0..50_000).map(|_| (-rng.random_range(0.0f64..700.0)).exp()).collect();
        p.extend(p.clone().iter().map(|p| 1.0 - p));
        p.extend([0.5, 0.075, 0.925, 0.0751, 1e-11, 1.4e-11, f64::MIN_POSITIVE, 1.0 - f64::EPSILON]);
        let mut out = vec![0.0; p.len()];
        ndtri_into(&p, &mut out);
        for (&p, &o) in p.iter().zip(&out) {
            let exact = ndtri(p);
            assert!(
                o == exact || (o - exact).abs() <= 4e-15 * exact.abs().max(1e-3),
                "Phi^-1({p}) = {o} against {exact}"
            );
        }
    }

    /// A group whose arguments all take one approximation evaluates that one alone: the same
    /// bits as in a group that evaluates both. Sorted, nearly every group is of one kind;
    /// interleaved with arguments of the other range, none is.
    #[test]
    fn results_do_not_depend_on_the_grouping() {
        let mut rng = Pcg64::seed_from_u64(6);
        let check = |values: Vec<f64>, f: fn(&[f64], &mut [f64])| {
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            let (low, high) = sorted.split_at(sorted.len() / 2);
            // Every group mixes the lower and the upper half of the values.
            let mixed: Vec<f64> = low.iter().zip(high).flat_map(|(&a, &b)| [a, b]).collect();
            let (mut from_sorted, mut from_mixed) = (vec![0.0; sorted.len()], vec![0.0; mixed.len()]);
            f(&sorted, &mut from_sorted);
            f(&mixed, &mut from_mixed);
            for (k, (&a, &b)) in low.iter().zip(high).enumerate() {
                assert_eq!(from_sorted[k].to_bits(), from_mixed[2 * k].to_bits(), "at {a}");
                assert_eq!(from_sorted[low.len() + k].to_bits(), from_mixed[2 * k + 1].to_bits(), "at {b}");
            }
        };
        let near_zero = |rng: &mut Pcg64| rng.random_range(-0.6..0.6);
        let middle = |rng: &mut Pcg64| rng.random_range(0.7..5.6) * if rng.random::<bool>() { 1.0 } else { -1.0 };
        check((0..4096).map(|k| if k % 2 == 0 { near_zero(&mut rng) } else { middle(&mut rng) }).collect(), ndtr_into);
        let central = |rng: &mut Pcg64| rng.random_range(0.08..0.92);
        let tail = |rng: &mut Pcg64| {
            let small = (-rng.random_range(3.0..25.0f64)).exp();
            if rng.random::<bool>() {
                small
            } else {
                1.0 - small
            }
        };
        check((0..4096).map(|k| if k % 2 == 0 { central(&mut rng) } else { tail(&mut rng) }).collect(), ndtri_into);
    }

    /// Against the scalar draws (which `normal.rs` tests against quadrature), over intervals of
    /// every kind: long and short, infinite on either side, far in either tail, and dead lanes.
    #[test]
    fn truncated_draws_match_the_scalar_ones() {
        let mut rng = Pcg64::seed_from_u64(4);
        let mut mismatches = 0;
        for round in 0..400 {
            let (mut a, mut b, mut u) = ([0.0; LANES], [0.0; LANES], [0.0; LANES]);
            let mut live = [true; LANES];
            for l in 0..LANES {
                // A quarter far in a tail (up to 600 standard deviations out), where Phi underflows.
                let centre: f64 = if rng.random::<f64>() < 0.25 {
                    rng.random_range(30.0..600.0) * if rng.random::<bool>() { 1.0 } else { -1.0 }
                } else {
                    rng.random_range(-40.0..40.0) * rng.random::<f64>().powi(2)
                };
                let width = 10f64.powf(rng.random_range(-12.0..1.5));
                (a[l], b[l]) = (centre - width * rng.random::<f64>(), centre + width * rng.random::<f64>());
                match rng.random_range(0..8) {
                    0 => a[l] = f64::NEG_INFINITY,
                    1 => b[l] = f64::INFINITY,
                    2 => (a[l], b[l]) = (f64::NEG_INFINITY, f64::INFINITY),
                    _ => {}
                }
                u[l] = (f64::from(rng.random::<u32>()) + 0.5) / 4_294_967_296.0;
                if round % 4 == 0 && l % 7 == 0 {
                    live[l] = false;
                    b[l] = a[l] - 1.0;
                }
            }
            let (mut log_mass, mut x) = ([0.0; LANES], [0.0; LANES]);
            truncated_draws_into(&a, &b, &u, &live, &mut log_mass, &mut x);
            for l in 0..LANES {
                if !live[l] {
                    assert_eq!((log_mass[l], x[l]), (f64::NEG_INFINITY, 0.0));
                    continue;
                }
                let (want_log_mass, want_x) = truncated_draw(a[l], b[l], u[l]);
                let close = (log_mass[l] - want_log_mass).abs() <= 1e-13 * (1.0 + want_log_mass.abs())
                    && (x[l] - want_x).abs() <= 1e-10 * (1.0 + want_x.abs()) * (b[l] - a[l]).min(1.0);
                assert!(x[l] >= a[l] && x[l] <= b[l], "x = {} outside [{}, {}]", x[l], a[l], b[l]);
                if !close {
                    mismatches += 1;
                    eprintln!(
                        "[{}, {}] at u = {}: ({}, {}) against ({want_log_mass}, {want_x})",
                        a[l], b[l], u[l], log_mass[l], x[l]
                    );
                }
            }
        }
        assert_eq!(mismatches, 0);
    }

    #[test]
    fn every_vector_width_gives_the_same_bits() {
        let x: Vec<f64> = (0..1000).map(|i| -7.0 + 0.014 * i as f64).collect();
        let p: Vec<f64> = (1..1000).map(|i| (-0.03 * i as f64).exp()).collect();
        let run = |vectors: Vectors| {
            let (mut phi, mut inverse) = (vec![0.0; x.len()], vec![0.0; p.len()]);
            vectors.run(Many::<false>(&x, &mut phi));
            vectors.run(Many::<true>(&p, &mut inverse));
            (phi, inverse)
        };
        let baseline = run(Vectors::Baseline);
        for vectors in [Vectors::Avx2, Vectors::Avx512] {
            assert_eq!(run(vectors), baseline, "{vectors:?}");
        }
    }

    #[test]
    fn simd_requests_never_exceed_the_processor() {
        use Vectors::*;
        assert_eq!(Vectors::from_request("", Avx2), (Avx2, None));
        assert_eq!(Vectors::from_request("auto", Avx512), (Avx512, None));
        assert_eq!(Vectors::from_request("baseline", Avx512), (Baseline, None));
        assert_eq!(Vectors::from_request(" AVX2 ", Avx512), (Avx2, None));
        let (chosen, message) = Vectors::from_request("avx512", Avx2);
        assert_eq!(chosen, Avx2);
        assert!(message.unwrap().contains("lacks"));
        let (chosen, message) = Vectors::from_request("sse9", Baseline);
        assert_eq!(chosen, Baseline);
        assert!(message.unwrap().contains("not one of"));
    }
}
