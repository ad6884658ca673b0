//! Bivariate and trivariate standard normal orthant probabilities `P(X_1 <= h_1, ..., X_n <= h_n)`
//! for a correlation matrix `R`, each with an estimate of its absolute error: the masses of the
//! simplicial cones that [`super::vertex_cones`] sums over a polyhedron's vertices.
//!
//! Both come from Plackett's identity `dP / d rho_ij = phi_2(h_i, h_j; rho_ij) P(rest | X_i = h_i,
//! X_j = h_j)`: along a path of correlations from one where the probability factorises, the
//! change is a one-dimensional integral of smooth terms (Genz 2004, "Numerical computation of
//! rectangular bivariate and trivariate normal and t probabilities", whose paths are used here:
//! `rho = sin(theta)`, which cancels the `1 / sqrt(1 - rho^2)` of the density). The integrals are
//! adaptive Gauss-Kronrod 7-15; the error reported is QUADPACK's estimate of the panels plus the
//! rounding of the terms summed (machine precision times their magnitudes and the exponents
//! taken), so where a probability is far smaller than its terms (a tail with negative
//! correlations) the error says so and the caller can decline.

use std::f64::consts::{FRAC_PI_2, FRAC_PI_4, PI};

use super::normal::{log_diff_ndtr, ndtr};
use super::slices::{kronrod_node, GAUSS_ORDERED, KRONROD_ORDERED};

/// Panels of one adaptive integral before it reports what accuracy it reached.
const MAX_PANELS: usize = 24;

/// The rounding of a sum of terms, relative to their magnitudes: a few dozen roundings of
/// `exp`, `erfc` and the products between (each within a few ulps).
const ROUNDING: f64 = 64.0 * f64::EPSILON;

/// A probability and a bound-like estimate of its absolute error.
#[derive(Clone, Copy, Debug)]
pub struct Estimate {
    pub value: f64,
    pub error: f64,
}

/// `int_a^b g`, adaptive Gauss-Kronrod 7-15 until the estimated error is at most `rtol` times
/// `|base| + int |g|` (the magnitude of what it is added to), or with an infinite error after
/// [`MAX_PANELS`] panels: `(value, error, magnitude)`. `g` returns its value and the condition
/// of its rounding: the size of the exponent it took `exp` of (whose rounding, relative to 1,
/// grows by that factor in the value), so that `magnitude = int |g| (1 + condition)` scales
/// its rounding.
fn integrate(g: impl Fn(f64) -> (f64, f64), a: f64, b: f64, rtol: f64, base: f64) -> (f64, f64, f64) {
    // (a, b, Kronrod, error estimate, Kronrod of |g| (1 + condition))
    let panel = |a: f64, b: f64| {
        let (mid, half) = (0.5 * (a + b), 0.5 * (b - a));
        let (mut kronrod, mut gauss, mut magnitude) = (0.0, 0.0, 0.0);
        let values: [f64; 15] = std::array::from_fn(|k| {
            let (v, condition) = g(mid + half * kronrod_node(k));
            magnitude += KRONROD_ORDERED[k] * v.abs() * (1.0 + condition);
            v
        });
        for (k, v) in values.iter().enumerate() {
            kronrod += KRONROD_ORDERED[k] * v;
            gauss += GAUSS_ORDERED[k] * v;
        }
        // QUADPACK's estimate (qk15): the Kronrod-Gauss difference scaled up by its size
        // against the integrand's spread about its mean, `(200 |K - G| / spread)^1.5` of the
        // spread, so that a panel whose two rules agree by chance on an unresolved peak is not
        // taken as converged.
        let spread: f64 = values.iter().zip(KRONROD_ORDERED).map(|(v, w)| w * (v - 0.5 * kronrod).abs()).sum();
        let difference = (kronrod - gauss).abs();
        let error = if spread > 0.0 && difference > 0.0 {
            spread * (200.0 * difference / spread).powf(1.5).min(1.0)
        } else {
            difference
        };
        (a, b, half * kronrod, half.abs() * error, half.abs() * magnitude)
    };
    let mut panels = vec![panel(a, b)];
    loop {
        let error: f64 = panels.iter().map(|p| p.3).sum();
        let magnitude: f64 = panels.iter().map(|p| p.4).sum();
        // A NaN anywhere makes the error NaN, which no caller accepts.
        if !(error > rtol * (base.abs() + magnitude)) {
            return (panels.iter().map(|p| p.2).sum(), error, magnitude);
        }
        if panels.len() >= MAX_PANELS {
            // Not converged: the panels' estimates miss what they have not resolved (a peak
            // between nodes), so they bound nothing.
            return (panels.iter().map(|p| p.2).sum(), f64::INFINITY, magnitude);
        }
        let worst = (0..panels.len()).max_by(|&i, &j| panels[i].3.total_cmp(&panels[j].3)).expect("one panel at least");
        let (a, b, ..) = panels.swap_remove(worst);
        let mid = 0.5 * (a + b);
        panels.push(panel(a, mid));
        panels.push(panel(mid, b));
    }
}

/// `(1 - s, 1 + s)` for `s = sin(theta)`, each accurate also where it is tiny (`theta` near
/// `+-pi/2`): the small one as `cos^2(theta)` over the other.
fn one_minus_plus_sin(theta: f64) -> (f64, f64) {
    let (s, c) = theta.sin_cos();
    if s >= 0.0 {
        let plus = 1.0 + s;
        (c * c / plus, plus)
    } else {
        let minus = 1.0 - s;
        (minus, c * c / minus)
    }
}

/// `P(X <= h, Y <= k)` for standard normals of correlation `rho` (`|rho| <= 1`), to `rtol` of
/// the magnitude of its terms where the quadrature reaches it.
pub fn bivariate(h: f64, k: f64, rho: f64, rtol: f64) -> Estimate {
    if h == f64::NEG_INFINITY || k == f64::NEG_INFINITY {
        return Estimate { value: 0.0, error: 0.0 };
    }
    if h == f64::INFINITY || k == f64::INFINITY {
        return Estimate { value: ndtr(h.min(k)), error: 0.0 };
    }
    let theta = rho.clamp(-1.0, 1.0).asin();
    // d/dtheta at rho = sin(theta): exp(-(h^2 - 2 s h k + k^2) / (2 cos^2)) / (2 pi), with the
    // numerator as (h - k)^2 + 2 h k (1 - s) (or (h + k)^2 - 2 h k (1 + s)), which stays
    // accurate where cos^2 = (1 - s)(1 + s) is tiny.
    let density = |t: f64| {
        let (minus, plus) = one_minus_plus_sin(t);
        let numerator =
            if t >= 0.0 { (h - k) * (h - k) + 2.0 * h * k * minus } else { (h + k) * (h + k) - 2.0 * h * k * plus };
        let cos2 = minus * plus;
        if cos2 <= 0.0 {
            return (0.0, 0.0);
        }
        let exponent = 0.5 * numerator / cos2;
        ((-exponent).exp() / (2.0 * PI), exponent)
    };
    // From the nearest correlation where the probability is closed: 0, +1 or -1.
    let (base, a, b, sign) = if theta.abs() <= FRAC_PI_4 {
        (ndtr(h) * ndtr(k), 0.0, theta, 1.0)
    } else if theta > 0.0 {
        (ndtr(h.min(k)), theta, FRAC_PI_2, -1.0)
    } else {
        // P(-k <= X <= h), accurate relative to itself also where both ends lie in one tail.
        let between = if h > -k { log_diff_ndtr(-k, h).exp() } else { 0.0 };
        (between, -FRAC_PI_2, theta, 1.0)
    };
    let (integral, error, magnitude) = integrate(density, a, b, rtol, base);
    let value = base + sign * integral;
    Estimate { value: value.max(0.0), error: error + ROUNDING * (base.abs() + magnitude) }
}

/// `P(X_1 <= h_1, X_2 <= h_2, X_3 <= h_3)` for standard normals with correlations `r12`,
/// `r13`, `r23` (a positive definite matrix), to `rtol` of the magnitude of its terms where the
/// quadrature reaches it.
pub fn trivariate(h: [f64; 3], r12: f64, r13: f64, r23: f64, rtol: f64) -> Estimate {
    // The largest correlation kept fixed (as r23), the other two integrated from zero, where
    // the probability is Phi(h1) P(X_2 <= h_2, X_3 <= h_3).
    let (h, r12, r13, r23) = if r23.abs() >= r12.abs() && r23.abs() >= r13.abs() {
        (h, r12, r13, r23)
    } else if r13.abs() >= r12.abs() {
        // Variables (2, 1, 3): the pair (1, 3) becomes (2, 3).
        ([h[1], h[0], h[2]], r12, r23, r13)
    } else {
        // Variables (3, 1, 2): the pair (1, 2) becomes (2, 3).
        ([h[2], h[0], h[1]], r13, r23, r12)
    };
    let [h1, h2, h3] = h;
    if h.contains(&f64::NEG_INFINITY) {
        return Estimate { value: 0.0, error: 0.0 };
    }
    let first = ndtr(h1);
    let rest = bivariate(h2, h3, r23, rtol);
    let base = first * rest.value;
    let (a12, a13) = (r12.clamp(-1.0, 1.0).asin(), r13.clamp(-1.0, 1.0).asin());
    // One pair's term: the angle times the density of (X_1, X_j) at (h1, hj) (its 1/sqrt(1 - r^2)
    // cancelled by dr/dt) times the conditional probability of the third below its limit.
    // `r` pairs X_1 with X_j (whose limit is hj); `ra` pairs X_1 and `rb` X_j with the third.
    let term = |angle: f64, r: f64, rr: f64, hj: f64, hk: f64, ra: f64, rb: f64| -> (f64, f64) {
        if angle == 0.0 {
            return (0.0, 0.0);
        }
        let variance = rr * (rr - (ra - rb) * (ra - rb) - 2.0 * ra * rb * (1.0 - r));
        if !(variance > 0.0) {
            return (f64::NAN, 0.0);
        }
        let exponent = 0.5 * ((h1 - r * hj) * (h1 - r * hj) / rr + hj * hj);
        let conditional = (hk * rr + h1 * (r * rb - ra) + hj * (r * ra - rb)) / variance.sqrt();
        // Phi far below zero is as sensitive to its argument as exp(-x^2 / 2).
        let condition = exponent + 0.5 * conditional.min(0.0).powi(2);
        (angle * (-exponent).exp() * ndtr(conditional) / (2.0 * PI), condition)
    };
    let derivative = |t: f64| {
        let ((s12, c12), (s13, c13)) = ((t * a12).sin_cos(), (t * a13).sin_cos());
        let (rr12, rr13) = (c12 * c12, c13 * c13);
        let (first, first_condition) = term(a12, s12, rr12, h2, h3, s13, r23);
        let (second, second_condition) = term(a13, s13, rr13, h3, h2, s12, r23);
        (first + second, first_condition.max(second_condition))
    };
    let (integral, error, magnitude) = integrate(derivative, 0.0, 1.0, rtol, base);
    let value = base + integral;
    Estimate { value: value.clamp(0.0, 1.0), error: error + first * rest.error + ROUNDING * (base + magnitude) }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::gauss::normal::{GL_NODES, GL_WEIGHTS};

    /// Uniform draws on [0, 1) from a 64-bit linear congruential generator: reproducible test
    /// cases without a dependency.
    pub(crate) fn uniforms(seed: u64) -> impl FnMut() -> f64 {
        let mut state = seed;
        move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// `int_lo^hi g` by composite 20-point Gauss-Legendre on `pieces` equal panels.
    fn legendre(g: impl Fn(f64) -> f64, lo: f64, hi: f64, pieces: usize) -> f64 {
        let width = (hi - lo) / pieces as f64;
        (0..pieces)
            .map(|p| {
                let (mid, half) = (lo + (p as f64 + 0.5) * width, 0.5 * width);
                GL_NODES.iter().zip(GL_WEIGHTS).map(|(x, w)| w * g(mid + half * x)).sum::<f64>() * half
            })
            .sum()
    }

    fn phi(x: f64) -> f64 {
        (-0.5 * x * x).exp() / (2.0 * PI).sqrt()
    }

    /// An independent reference: `P = int_{-inf}^{h} phi(x) Phi((k - rho x) / sqrt(1 - rho^2)) dx`,
    /// conditioning on the first variable, by brute-force quadrature over [-12, h].
    fn bivariate_by_conditioning(h: f64, k: f64, rho: f64) -> f64 {
        let sd = (1.0 - rho * rho).sqrt();
        legendre(|x| phi(x) * ndtr((k - rho * x) / sd), -12.0, h.min(12.0), 200)
    }

    fn trivariate_by_conditioning(h: [f64; 3], r12: f64, r13: f64, r23: f64) -> f64 {
        // Given X_1 = x: (X_2, X_3) has means (r12 x, r13 x), variances 1 - r^2 and
        // correlation (r23 - r12 r13) / sqrt((1 - r12^2)(1 - r13^2)).
        let (s2, s3) = ((1.0 - r12 * r12).sqrt(), (1.0 - r13 * r13).sqrt());
        let partial = (r23 - r12 * r13) / (s2 * s3);
        legendre(
            |x| phi(x) * bivariate_by_conditioning((h[1] - r12 * x) / s2, (h[2] - r13 * x) / s3, partial),
            -12.0,
            h[0].min(12.0),
            40,
        )
    }

    #[test]
    fn bivariate_matches_closed_forms() {
        // At the origin: 1/4 + asin(rho) / (2 pi); uncorrelated: the product.
        for rho in [-0.999999, -0.95, -0.6, -0.2, 0.0, 0.3, 0.8, 0.97, 0.9999999] {
            let got = bivariate(0.0, 0.0, rho, 1e-15);
            let want = 0.25 + rho.asin() / (2.0 * PI);
            assert!((got.value - want).abs() <= 1e-14 && got.error < 1e-13, "rho {rho}: {got:?} vs {want}");
        }
        for (h, k) in [(-3.0, 1.5), (0.7, -8.0), (2.0, 2.5)] {
            let got = bivariate(h, k, 0.0, 1e-15);
            assert!((got.value - ndtr(h) * ndtr(k)).abs() <= 1e-15, "({h}, {k}): {got:?}");
        }
    }

    #[test]
    fn bivariate_matches_conditioning_quadrature() {
        let mut uniform = uniforms(7);
        // Limits far into both tails, where a probability can be far smaller than its terms
        // (one limit far above, the other far below, negative correlation): relative agreement.
        let cases = (0..400).map(|_| (16.0 * uniform() - 8.0, 16.0 * uniform() - 8.0, (2.0 * uniform() - 1.0) * 0.995));
        for (h, k, rho) in cases.chain([(6.878, -6.218, -0.85), (-6.0, 6.5, -0.9), (-7.0, -7.5, 0.3)]) {
            let got = bivariate(h, k, rho, 1e-14);
            let want = bivariate_by_conditioning(h, k, rho);
            // The reference's own error is ~1e-15 of itself (200 panels of 20 nodes on a
            // smooth positive integrand, its part below -12 under 1e-32).
            assert!((got.value - want).abs() <= got.error + 1e-13 * want, "({h}, {k}; {rho}): {got:?} vs {want}");
            assert!(got.error <= 1e-12, "({h}, {k}; {rho}): error {}", got.error);
        }
    }

    #[test]
    fn trivariate_matches_closed_forms() {
        // At the origin: 1/8 + (asin r12 + asin r13 + asin r23) / (4 pi).
        for (r12, r13, r23) in
            [(0.3, -0.2, 0.5), (0.9, 0.85, 0.8), (-0.45, -0.45, -0.05), (0.0, 0.0, 0.99), (-0.7, 0.7, -0.02)]
        {
            let got = trivariate([0.0; 3], r12, r13, r23, 1e-15);
            let want = 0.125 + (f64::asin(r12) + f64::asin(r13) + f64::asin(r23)) / (4.0 * PI);
            assert!((got.value - want).abs() <= 1e-14, "({r12}, {r13}, {r23}): {got:?} vs {want}");
        }
        // Independent: the product.
        let got = trivariate([0.5, -1.0, 2.0], 0.0, 0.0, 0.0, 1e-15);
        let want = ndtr(0.5) * ndtr(-1.0) * ndtr(2.0);
        assert!((got.value - want).abs() <= 1e-15, "{got:?} vs {want}");
    }

    /// A nearly singular cone (a thin far prism's) whose integrand one panel does not resolve:
    /// at every accuracy asked, the estimate must cover the error.
    #[test]
    fn unresolved_panels_do_not_pass_for_converged() {
        let h = [-0.5646855480285872, -1.1983200328027779, 1.2073022950652461];
        let (r12, r13, r23) = (-0.8983379378322438, 0.7218435631497335, -0.9461751894207989);
        let want = trivariate_by_conditioning(h, r12, r13, r23);
        for rtol in [1e-2, 1e-4, 1e-8, 1e-12] {
            let got = trivariate(h, r12, r13, r23, rtol);
            assert!((got.value - want).abs() <= got.error + 1e-6 * want, "rtol {rtol}: {got:?} vs {want}");
        }
    }

    #[test]
    fn trivariate_matches_conditioning_quadrature() {
        let mut uniform = uniforms(11);
        let mut compared = 0;
        while compared < 40 {
            // Correlations of three random unit vectors (a positive definite matrix).
            let v: Vec<[f64; 3]> = (0..3)
                .map(|_| {
                    let w = [2.0 * uniform() - 1.0, 2.0 * uniform() - 1.0, 2.0 * uniform() - 1.0];
                    let n = (w[0] * w[0] + w[1] * w[1] + w[2] * w[2]).sqrt();
                    [w[0] / n, w[1] / n, w[2] / n]
                })
                .collect();
            let dot = |a: &[f64; 3], b: &[f64; 3]| a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
            let (r12, r13, r23) = (dot(&v[0], &v[1]), dot(&v[0], &v[2]), dot(&v[1], &v[2]));
            let det = 1.0 - r12 * r12 - r13 * r13 - r23 * r23 + 2.0 * r12 * r13 * r23;
            if det < 1e-3 || r12.abs().max(r13.abs()) > 0.98 {
                continue; // the conditioning reference needs room for its own quadrature
            }
            compared += 1;
            let h = [6.0 * uniform() - 3.5, 6.0 * uniform() - 3.5, 6.0 * uniform() - 3.5];
            let got = trivariate(h, r12, r13, r23, 1e-14);
            let want = trivariate_by_conditioning(h, r12, r13, r23);
            assert!((got.value - want).abs() <= got.error + 1e-12, "{h:?} ({r12}, {r13}, {r23}): {got:?} vs {want}");
            assert!(got.error <= 1e-11, "{h:?} ({r12}, {r13}, {r23}): error {}", got.error);
        }
    }
}
