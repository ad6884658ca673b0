//! Rectangle probabilities `P(a <= X <= b)`, `X ~ N(0, Sigma)`, for `mvn_cdf` in S >= 4
//! dimensions: Genz's separation of variables in linear space on a randomly shifted embedded
//! lattice rule with the tent transform.
//!
//! The general polyhedron path (`sov.rs`) pays for generality a rectangle does not need: an LP
//! reduction, a nearest-point problem and log-space weights. Here the variables are ordered and
//! factored once (Genz-Bretz: the least probable interval first, given the earlier variables at
//! their conditional means), each path costs one `Phi^-1` and two `Phi` per variable, and a
//! lattice rule made periodic by the tent transform `x -> 1 - |2x - 1|` (Dick, Nuyens &
//! Pillichshammer 2014) converges faster than the Sobol points there: 2.5-8.5x less time at
//! rtol 1e-7 for S = 4..6 (`BENCHMARKS.md`). Without a tilt, though, its variance grows in the
//! tails and with the dimension, so tail rectangles and S > [`MAX_DIM`] go to the tilted path.
//! The paths run in batches on the processor's vectors (`normal_batch.rs`).

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

use super::normal::{log_diff_ndtr, ndtr, toward_lower_tail, truncated_normal};
use super::normal_batch::{ndtr_into, ndtri_into, with_wide_vectors, MulAdd, VectorKernel, LANES};
use super::sov::{RoundErrors, SovResult};
use super::IntegrationSettings;
use crate::error::Result;

/// Generating vector of the embedded lattice: every prefix of `2^m` points (m = 6..18) is a
/// good rank-1 lattice rule, so doubling rounds reuse the points done. From
/// `tools/lattice_generator.py`: component by component, candidates shortlisted by the Korobov
/// worst-case error and chosen by how well they integrate training rectangles of the dimension
/// they serve. The previous vector, chosen by the worst-case error alone, was 2-13x less
/// accurate at some `m` and lost to the tilted Sobol path at S = 7, 8; this one is 1.5-2.2x
/// faster at rtol 1e-5 for S = 4..8 at the same accuracy (`BENCHMARKS.md`).
const GENERATOR: [u64; 7] = [1, 70517, 112957, 15151, 26049, 81007, 89629];
/// Independent random shifts of the lattice; their spread estimates the error. Few: the
/// shifts' average gains only `sqrt(SHIFTS)` on one shift's error, while a shift with twice
/// the points gains 2-4x. Against 8 shifts (as on the Sobol path) 3 reach the same median
/// error in about half the time, S = 5..8 (`BENCHMARKS.md`); their error estimate is the
/// rougher, which [`ERROR_SCALE`] and the floor of [`RoundErrors`] (a doubling gains at most
/// 2x) pay for: with that floor at 4x instead, 97.6% of 1800 equicorrelated rectangles had their
/// error covered, at 2x 98.7%, at the same cost for the same median error.
const SHIFTS: usize = 3;
/// The reported error is this many standard errors of the mean over the shifts: with two
/// degrees of freedom, the ~97.5% quantile of Student's t.
const ERROR_SCALE: f64 = 6.0;
/// Nets of up to `2^LATTICE_BITS` points per shift.
const LATTICE_BITS: u32 = 18;
/// The first round's net: `2^FIRST_BITS` points per shift.
const FIRST_BITS: u32 = 6;
const _: () = assert!((1usize << FIRST_BITS).is_multiple_of(LANES), "every round is whole batches of paths");
/// Rectangles whose probability, guessed from the ordering, is below `exp(S *` this`)` are left
/// to the tilted path: untilted weights of a tail rectangle vary over orders of magnitude, while
/// the tilted path's cost grows with S. Measured crossovers (equicorrelated boxes moved out along
/// the diagonal, rtol 1e-5): log p ~ -9 for S = 4, below -20 for S = 6.
const TAIL_LOG_MASS_PER_DIM: f64 = -2.5;
/// The most dimensions this path integrates (one more than the lattice's coordinates: the last
/// variable needs no point); more go to the tilted path.
pub const MAX_DIM: usize = GENERATOR.len() + 1;

/// The rectangle's variables reordered and factored: `X = L Y`, `Y ~ N(0, I)`, with variable
/// `k` bounded by `lower[k] <= (L Y)_k <= upper[k]`. Trailing variables without bounds are
/// dropped (their factor is 1 whatever the others do).
struct Ordered {
    s: usize,
    dim: usize,
    chol: Vec<f64>,
    lower: Vec<f64>,
    upper: Vec<f64>,
    /// The product of the ordered intervals' probabilities at the conditional means: a cheap
    /// guess of the log probability, used only to route far-tail rectangles.
    log_guess: f64,
}

/// Genz-Bretz ordering during the Cholesky factorisation. `None` if the covariance is not
/// positive definite to working precision.
fn order(lower: &[f64], upper: &[f64], cov: &[f64], s: usize) -> Option<Ordered> {
    let mut cov = cov.to_vec();
    let (mut lower, mut upper) = (lower.to_vec(), upper.to_vec());
    let mut chol = vec![0.0f64; s * s];
    let mut centre = vec![0.0; s];
    let mut log_guess = 0.0;
    for k in 0..s {
        // (score, candidate, its conditional deviation and mean given the earlier variables)
        let mut best: Option<(f64, usize, f64, f64)> = None;
        for i in k..s {
            let var = cov[i * s + i] - (0..k).map(|j| chol[i * s + j].powi(2)).sum::<f64>();
            if !(var > 1e-14 * cov[i * s + i]) {
                return None;
            }
            let (sd, mean) = (var.sqrt(), (0..k).map(|j| chol[i * s + j] * centre[j]).sum::<f64>());
            let score = log_diff_ndtr((lower[i] - mean) / sd, (upper[i] - mean) / sd);
            if best.is_none_or(|(b, ..)| score < b) {
                best = Some((score, i, sd, mean));
            }
        }
        let (score, i, diagonal, mean) = best?;
        log_guess += score;
        if i != k {
            lower.swap(i, k);
            upper.swap(i, k);
            for j in 0..s {
                cov.swap(i * s + j, k * s + j);
            }
            for j in 0..s {
                cov.swap(j * s + i, j * s + k);
            }
            for j in 0..k {
                chol.swap(i * s + j, k * s + j);
            }
        }
        chol[k * s + k] = diagonal;
        for i in k + 1..s {
            chol[i * s + k] =
                (cov[i * s + k] - (0..k).map(|j| chol[i * s + j] * chol[k * s + j]).sum::<f64>()) / diagonal;
        }
        centre[k] = truncated_normal(0.0, 1.0, (lower[k] - mean) / diagonal, (upper[k] - mean) / diagonal).1;
    }
    let dim = (0..s).rev().find(|&k| lower[k] > f64::NEG_INFINITY || upper[k] < f64::INFINITY).map_or(0, |k| k + 1);
    Some(Ordered { s, dim, chol, lower, upper, log_guess })
}

/// `(start, width, flipped)`: the interval `[a, b]` of a standard normal as a stretch of
/// cumulative probability, taken from the upper tail when the interval lies mostly above 0
/// ([`toward_lower_tail`]).
#[inline]
fn interval(a: f64, b: f64) -> (f64, f64, bool) {
    let (lo, hi, flipped) = toward_lower_tail(a, b);
    let start = ndtr(lo);
    (start, ndtr(hi) - start, flipped)
}

impl Ordered {
    /// The sum of the separation-of-variables weights at the lattice points `first_index`,
    /// `first_index + step`, ... below `n` (a multiple of [`LANES`] of them), each moved by
    /// `shift` and folded by the tent transform. `first` is the first variable's interval,
    /// the same for every path.
    #[inline(always)]
    fn shift_sum(&self, first: (f64, f64, bool), shift: &[f64], n: u64, first_index: u64, step: u64) -> f64 {
        let s = self.s;
        let d = self.dim - 1;
        debug_assert!((n - first_index).div_ceil(step).is_multiple_of(LANES as u64));
        let scale = 1.0 / n as f64;
        // Products modulo n <= 2^32 are exact in wrapping 32-bit arithmetic, which vectorises.
        let mask = (n - 1) as u32;
        let mut u = [[0.0; LANES]; MAX_DIM - 1];
        let mut y = [[0.0; LANES]; MAX_DIM - 1];
        let (mut lo, mut hi) = ([0.0; LANES], [0.0; LANES]);
        let mut total = 0.0;
        let mut base = first_index;
        while base < n {
            for k in 0..d {
                let generator = GENERATOR[k] as u32;
                for (l, u) in u[k].iter_mut().enumerate() {
                    let j = (base + l as u64 * step) as u32;
                    let x = (j.wrapping_mul(generator) & mask) as f64 * scale + shift[k];
                    let x = if x >= 1.0 { x - 1.0 } else { x };
                    *u = 1.0 - (2.0 * x - 1.0).abs();
                }
            }
            let (mut start, mut width, mut flipped) = ([first.0; LANES], [first.1; LANES], [first.2; LANES]);
            let mut weight = width;
            for k in 1..self.dim {
                // The same map u -> y on either side (y increasing in u): a map that reversed
                // with the side would make y jump where an interval crosses the middle, and
                // lattice rules need a smooth integrand.
                let u = &u[k - 1];
                for l in 0..LANES {
                    let along = if flipped[l] { 1.0 - u[l] } else { u[l] };
                    // Comparisons rather than `clamp`, whose NaN handling kept this loop scalar.
                    let p = start[l] + along * width[l];
                    let p = if p > f64::MIN_POSITIVE { p } else { f64::MIN_POSITIVE };
                    lo[l] = if p < 1.0 - f64::EPSILON { p } else { 1.0 - f64::EPSILON };
                }
                let y_k = &mut y[k - 1];
                ndtri_into(&lo, y_k);
                for l in 0..LANES {
                    y_k[l] = if flipped[l] { -y_k[l] } else { y_k[l] };
                }
                let mut mean = [0.0; LANES];
                for (coefficient, y) in self.chol[k * s..k * s + k].iter().zip(&y) {
                    for l in 0..LANES {
                        mean[l] += coefficient * y[l];
                    }
                }
                let (lower, upper, diagonal) = (self.lower[k], self.upper[k], self.chol[k * s + k]);
                for l in 0..LANES {
                    let (a, b) = ((lower - mean[l]) / diagonal, (upper - mean[l]) / diagonal);
                    // As in `interval`: from the upper tail when mostly above 0.
                    (lo[l], hi[l], flipped[l]) = toward_lower_tail(a, b);
                }
                ndtr_into(&lo, &mut start);
                ndtr_into(&hi, &mut width);
                for l in 0..LANES {
                    width[l] -= start[l];
                    weight[l] *= width[l];
                }
            }
            for w in weight {
                total += w;
            }
            base += LANES as u64 * step;
        }
        total
    }
}

/// [`Ordered::shift_sum`] as a kernel for the widest vectors.
struct ShiftSum<'a> {
    ordered: &'a Ordered,
    first: (f64, f64, bool),
    shift: &'a [f64],
    n: u64,
    first_index: u64,
    step: u64,
}

impl VectorKernel for ShiftSum<'_> {
    type Output = f64;
    #[inline(always)]
    fn run<M: MulAdd>(self) -> f64 {
        self.ordered.shift_sum(self.first, self.shift, self.n, self.first_index, self.step)
    }
}

/// `P(lower <= X <= upper)` for `X ~ N(0, cov)` (`cov` row-major S x S, positive definite),
/// with its estimated relative error, driven below `rtol` or until `max_points` (over all
/// shifts) are spent. `None` when this path should not be used: a far-tail rectangle, more
/// than [`MAX_DIM`] dimensions, or a covariance singular to working precision.
pub fn probability(
    lower: &[f64],
    upper: &[f64],
    cov: &[f64],
    max_points: usize,
    settings: &IntegrationSettings,
) -> Result<Option<SovResult>> {
    let IntegrationSettings { rtol, seed, cancel, .. } = *settings;
    let s = lower.len();
    if lower.iter().zip(upper).any(|(a, b)| !(a < b)) {
        return Ok(Some(SovResult { log_mass: f64::NEG_INFINITY, error: 0.0 }));
    }
    let Some(ordered) = order(lower, upper, cov, s) else { return Ok(None) };
    if ordered.dim > MAX_DIM || ordered.log_guess < TAIL_LOG_MASS_PER_DIM * s as f64 {
        return Ok(None);
    }
    if ordered.dim == 0 {
        return Ok(Some(SovResult { log_mass: 0.0, error: 0.0 }));
    }
    let diagonal = ordered.chol[0];
    let first = interval(ordered.lower[0] / diagonal, ordered.upper[0] / diagonal);
    let d = ordered.dim - 1;
    if d == 0 {
        return Ok(Some(SovResult { log_mass: first.1.ln(), error: 0.0 }));
    }
    let mut rng = Pcg64::seed_from_u64(seed);
    let shifts: Vec<Vec<f64>> = (0..SHIFTS).map(|_| (0..d).map(|_| rng.random::<f64>()).collect()).collect();
    let mut sums = [0.0; SHIFTS];
    let mut bits = FIRST_BITS;
    let (mut estimate, mut error);
    let mut errors = RoundErrors::new(ERROR_SCALE);
    loop {
        let n = 1u64 << bits;
        let scale = 1.0 / n as f64;
        // After the first round only the odd points of the finer net are new.
        let (first_index, step) = if bits == FIRST_BITS { (0, 1) } else { (1, 2) };
        for (shift, sum) in shifts.iter().zip(sums.iter_mut()) {
            *sum += with_wide_vectors(ShiftSum { ordered: &ordered, first, shift, n, first_index, step });
        }
        cancel.check()?;
        (estimate, error) = errors.update(&sums.map(|total| total * scale));
        if error <= rtol || bits >= LATTICE_BITS || (2 * n) as usize * SHIFTS > max_points {
            break;
        }
        bits += 1;
    }
    if !(estimate > 0.0) {
        // Every path underflowed: a tail the guess did not see; the tilted path handles it.
        return Ok(None);
    }
    Ok(Some(SovResult { log_mass: estimate.ln(), error }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cancel::Cancel;

    /// Equicorrelated normals (`X_i = sqrt(rho) T + sqrt(1 - rho) E_i`) are independent given
    /// `T`: their rectangle probability is a one-dimensional integral, here by a fine
    /// composite Gauss-Legendre rule over T in [-12, 12].
    fn equicorrelated_reference(lower: &[f64], upper: &[f64], rho: f64) -> f64 {
        let (a, b) = (rho.sqrt(), (1.0 - rho).sqrt());
        let pieces = 400;
        let h = 24.0 / pieces as f64;
        let mut total = 0.0;
        for piece in 0..pieces {
            let centre = -12.0 + (piece as f64 + 0.5) * h;
            total += crate::gauss::normal::gauss_legendre(&crate::gauss::normal::GL20_HALF, centre, 0.5 * h, |t| {
                let density = (-0.5 * t * t).exp() / (2.0 * std::f64::consts::PI).sqrt();
                [density
                    * lower
                        .iter()
                        .zip(upper)
                        .map(|(l, u)| ndtr((u - a * t) / b) - ndtr((l - a * t) / b))
                        .product::<f64>()]
            })[0];
        }
        total
    }

    #[test]
    fn equicorrelated_rectangles_match_a_one_dimensional_quadrature() {
        let mut rng = Pcg64::seed_from_u64(7);
        let (mut covered, mut total) = (0, 0);
        for s in 4..=MAX_DIM {
            for _ in 0..12 {
                let rho: f64 = rng.random_range(0.05..0.9);
                let cov: Vec<f64> = (0..s * s).map(|k| if k / s == k % s { 1.0 } else { rho }).collect();
                let lower: Vec<f64> = (0..s)
                    .map(|_| if rng.random::<f64>() < 0.2 { f64::NEG_INFINITY } else { -rng.random_range(0.2..2.0) })
                    .collect();
                let upper: Vec<f64> = (0..s).map(|_| rng.random_range(0.2..2.0)).collect();
                let want = equicorrelated_reference(&lower, &upper, rho);
                let got = probability(
                    &lower,
                    &upper,
                    &cov,
                    1 << 20,
                    &IntegrationSettings::new(1e-6, total as u64, &Cancel::new()),
                )
                .unwrap()
                .unwrap();
                let relative = (got.log_mass.exp() / want - 1.0).abs();
                // A half-infinite interval before the last variable gives the integrand an
                // endpoint singularity (y -> -inf as u -> 0) that slows convergence, so the
                // error may stay above rtol; it must still cover the true error (nearly
                // always: at most two misses in 60).
                assert!(
                    relative < 1e-5 && got.error <= 1e-5,
                    "S={s} rho={rho}: {} vs {want}, error {}",
                    got.log_mass.exp(),
                    got.error
                );
                covered += usize::from(relative <= got.error);
                total += 1;
            }
        }
        assert!(covered + 2 >= total, "the error covered the true error in {covered} of {total} cases");
    }

    #[test]
    fn independent_variables_are_exact_and_far_tails_are_declined() {
        let s = 5;
        let cov: Vec<f64> = (0..s * s).map(|k| f64::from(u8::from(k / s == k % s)) * (1.0 + (k / s) as f64)).collect();
        let lower = [-1.0, f64::NEG_INFINITY, -0.5, 0.3, -2.0];
        let upper = [0.5, 1.0, f64::INFINITY, 2.0, 2.0];
        let got = probability(&lower, &upper, &cov, 1 << 19, &IntegrationSettings::new(1e-6, 0, &Cancel::new()))
            .unwrap()
            .unwrap();
        let want: f64 =
            (0..s).map(|k| log_diff_ndtr(lower[k] / cov[k * s + k].sqrt(), upper[k] / cov[k * s + k].sqrt())).sum();
        assert!(
            (got.log_mass - want).abs() < 1e-13 && got.error < 1e-13,
            "{} vs {want}, error {}",
            got.log_mass,
            got.error
        );
        let far = probability(
            &[7.0; 5],
            &[f64::INFINITY; 5],
            &cov,
            1 << 19,
            &IntegrationSettings::new(1e-6, 0, &Cancel::new()),
        )
        .unwrap();
        assert!(far.is_none());
        let empty = probability(
            &[0.0, 0.0, 0.0, 1.0, 0.0],
            &[1.0, 1.0, 1.0, 1.0, 1.0],
            &cov,
            1 << 19,
            &IntegrationSettings::new(1e-6, 0, &Cancel::new()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(empty.log_mass, f64::NEG_INFINITY);
    }

    /// The lanes of a batch are independent paths and the kernel uses no fused multiply-add,
    /// so a probability does not depend on the processor's vector width.
    #[test]
    fn every_vector_width_gives_the_same_sums() {
        use crate::gauss::normal_batch::Vectors;
        let s = 7;
        let mut rng = Pcg64::seed_from_u64(3);
        let factor: Vec<f64> = (0..s * s).map(|_| rng.random_range(-1.0..1.0)).collect();
        let cov: Vec<f64> = (0..s * s)
            .map(|k| {
                (0..s).map(|j| factor[k / s * s + j] * factor[k % s * s + j]).sum::<f64>()
                    + if k / s == k % s { 0.5 } else { 0.0 }
            })
            .collect();
        let lower: Vec<f64> = (0..s).map(|_| -rng.random_range(0.2..2.0)).collect();
        let upper: Vec<f64> = (0..s).map(|_| rng.random_range(0.2..2.0)).collect();
        let ordered = order(&lower, &upper, &cov, s).unwrap();
        let first = interval(ordered.lower[0] / ordered.chol[0], ordered.upper[0] / ordered.chol[0]);
        let shift: Vec<f64> = (0..s).map(|_| rng.random()).collect();
        let sum = |vectors: Vectors| {
            vectors.run(ShiftSum { ordered: &ordered, first, shift: &shift, n: 1 << 10, first_index: 1, step: 2 })
        };
        let baseline = sum(Vectors::Baseline);
        assert!(baseline > 0.0);
        for vectors in [Vectors::Avx2, Vectors::Avx512] {
            assert_eq!(sum(vectors).to_bits(), baseline.to_bits(), "{vectors:?}");
        }
    }
}
