//! S >= 3: the mass of the standard normal on a polyhedron `{w : F w <= e}` by
//! Genz's separation of variables with randomised quasi-Monte Carlo and exponential tilting.
//!
//! Separation of variables needs each constraint to involve only the first k variables for
//! some k. The standard normal is rotation invariant, so the polyhedron is rotated (`w = Q v`)
//! to make that so: the columns of Q are Gram-Schmidt directions of S pivot rows, most binding
//! first (Genz-Bretz ordering), so each pivot row bounds one new variable and every other row
//! bounds the variable of its last nonzero coefficient. Sampling `v_k` from its conditional
//! truncated normal leaves the product of the interval probabilities as an unbiased weight.
//! Each variable is also bounded by the rows of the polyhedron's projection onto the variables
//! so far (Fourier-Motzkin, `project`), so that every interval is the exact set of values from
//! which the path can go on: paths never die, and the integrand has no jumps to zero.
//!
//! Far-tail polyhedra (mass 1e-100 and less) need tilting: `v_k` is drawn from `N(mu_k, 1)`
//! truncated to its interval and the weight carries the likelihood ratio
//! `exp(mu_k^2/2 - mu_k v_k)`. The shift `mu` is Botev's (2017) minimax choice, the saddle
//! point of the log weight, which keeps the relative error bounded in the tail. (Shifting to
//! the polyhedron's most probable point instead is worse: at a corner it wastes half of each
//! proposal and the ratio varies by `exp(-d x)`, so the relative variance grows with the
//! distance `d`.) Any shift gives an unbiased estimate; the saddle point only lowers the variance.
//!
//! The points are Owen-scrambled Sobol nets (`sobol.rs`), `SHIFTS` independent scramblings;
//! the spread of their estimates gives the error. A box in whitened coordinates (orthogonal
//! rows) is integrated exactly: each variable is then bounded by its own pair of rows, the
//! saddle point has no shift, and the weight is constant.

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

use super::normal::{log_diff_ndtr, log_pdf};
use super::normal_batch::{truncated_draws_into, with_wide_vectors, Lanes, MulAdd, VectorKernel, LANES};
use super::sobol::{self, ScrambledSobol};
use super::IntegrationSettings;
use crate::error::{Error, Result};
use crate::linalg::{dot, Tolerance};

/// Independent scramblings of the Sobol net; their spread estimates the error.
const SHIFTS: usize = 8;
/// Points per scrambling in the first round; doubled each round (nets want powers of two).
const FIRST_ROUND: usize = 64;
const _: () = assert!(FIRST_ROUND.is_multiple_of(LANES), "rounds are whole batches of paths");
/// The default budget: points over all scramblings.
pub const MAX_POINTS: usize = 1 << 19;
/// Non-zero-weight paths each scrambling needs before its spread is trusted.
const MIN_HITS: usize = 16;
/// Points after which a starved integral gives up.
const STARVED_BUDGET: usize = 1 << 14;
/// The reported error is this many standard errors of the mean over the shifts.
const ERROR_SCALE: f64 = 3.0;

/// A round's error is taken as at least the previous round's spread (half the points) over
/// this, the gain of a doubling at the plain QMC rate `n^-1`: randomisations that happen to
/// agree closely would otherwise end the integral early. (Smooth integrands gain more, and then
/// the reported error is conservative.) Measured on the Sobol path, 98 S = 4 polyhedra at rtol
/// 1e-4: the error covered 91% of the true errors without this, 98% with it, for 5-10% more
/// time; on the rectangles' lattice, see `rectangle::SHIFTS`.
const ASSUMED_DECAY: f64 = 2.0;

/// The estimate of a randomised QMC integral and its relative error, round after round of
/// doubling the points.
pub(crate) struct RoundErrors {
    /// Standard errors of the mean reported as the error.
    scale: f64,
    previous_spread: f64,
}

impl RoundErrors {
    pub(crate) fn new(scale: f64) -> Self {
        RoundErrors { scale, previous_spread: 0.0 }
    }

    /// The mean of `N` randomisations' estimates and its relative error: `scale` standard
    /// errors of their spread, but at least the previous round's over [`ASSUMED_DECAY`];
    /// infinite unless the mean is positive. The spread is taken relative to the mean:
    /// estimates kept relative to a far-off scale can be so small that their squares
    /// underflow, which would report an error of 0.
    pub(crate) fn update<const N: usize>(&mut self, means: &[f64; N]) -> (f64, f64) {
        let estimate = means.iter().sum::<f64>() / N as f64;
        if estimate.is_nan() || estimate <= 0.0 {
            return (estimate, f64::INFINITY);
        }
        let relative_var = means.iter().map(|x| (x / estimate - 1.0).powi(2)).sum::<f64>() / ((N - 1) * N) as f64;
        let spread = self.scale * relative_var.sqrt();
        let error = spread.max(self.previous_spread / ASSUMED_DECAY);
        self.previous_spread = spread;
        (estimate, error)
    }
}

/// The log mass and its estimated relative error. (The moments come from facet masses, in
/// `gauss::facet_moments`, not from these paths.)
pub struct SovResult {
    pub log_mass: f64,
    pub error: f64,
}

/// The rotated problem: rows `C = F Q` (row-major m x S) with their offsets and the variable
/// each row bounds; after [`project`], also the rows that bound each variable's projection.
struct Rotated {
    s: usize,
    q: Vec<f64>,
    c: Vec<f64>,
    e: Vec<f64>,
    last: Vec<usize>,
}

/// Chooses pivot rows (most binding at the tilting point first) and rotates.
fn rotate(f: &[f64], e: &[f64], s: usize, tilt: &[f64]) -> Rotated {
    let m = e.len();
    let mut residual: Vec<Vec<f64>> = (0..m).map(|i| f[i * s..(i + 1) * s].to_vec()).collect();
    let slack: Vec<f64> = (0..m).map(|i| (e[i] - dot(&f[i * s..(i + 1) * s], tilt)).max(0.0)).collect();
    let mut basis: Vec<Vec<f64>> = Vec::with_capacity(s);
    let mut used = vec![false; m];
    while basis.len() < s {
        // Genz-Bretz ordering after the active rows: the direction whose interval is least
        // probable, with the earlier variables at the tilting point. A candidate row's direction is bounded by
        // every row whose unspanned part is parallel to it (a box's opposite face, say).
        let mut best: Option<(f64, usize)> = None;
        for i in 0..m {
            if used[i] {
                continue;
            }
            let norm = dot(&residual[i], &residual[i]).sqrt();
            if norm <= 1e-8 {
                continue;
            }
            let d: Vec<f64> = residual[i].iter().map(|x| x / norm).collect();
            let along = dot(&d, tilt);
            let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
            for j in (0..m).filter(|&j| !used[j]) {
                let rn = dot(&residual[j], &residual[j]).sqrt();
                let c = dot(&residual[j], &d);
                if rn <= 1e-8 || c.abs() < (1.0 - 1e-9) * rn {
                    continue;
                }
                let t = slack[j] / c;
                if c > 0.0 {
                    hi = hi.min(along + t);
                } else {
                    lo = lo.max(along + t);
                }
            }
            // Rows active at the tilting point come first: they meet at the mode, and as
            // pivots each bounds its own variable there (a far box is then exact).
            let active = slack[i] <= Tolerance::DEFAULT.at(e[i].abs());
            let score = if active { f64::NEG_INFINITY } else { log_diff_ndtr(lo, hi) };
            if best.is_none_or(|(b, _)| score < b) {
                best = Some((score, i));
            }
        }
        let direction = match best {
            Some((_, i)) => {
                used[i] = true;
                let norm = dot(&residual[i], &residual[i]).sqrt();
                residual[i].iter().map(|v| v / norm).collect::<Vec<f64>>()
            }
            None => {
                // The rows span fewer than S directions: complete the basis with coordinate axes.
                let mut fallback = None;
                for axis in 0..s {
                    let mut v = vec![0.0; s];
                    v[axis] = 1.0;
                    for b in &basis {
                        let p = dot(b, &v);
                        v.iter_mut().zip(b).for_each(|(x, bk)| *x -= p * bk);
                    }
                    let n = dot(&v, &v).sqrt();
                    if n > 0.5 {
                        fallback = Some(v.iter().map(|x| x / n).collect());
                        break;
                    }
                }
                fallback.expect("some coordinate axis is outside a proper subspace")
            }
        };
        for r in residual.iter_mut() {
            let p = dot(r, &direction);
            r.iter_mut().zip(&direction).for_each(|(x, d)| *x -= p * d);
        }
        basis.push(direction);
    }
    let mut q = vec![0.0; s * s];
    for (k, b) in basis.iter().enumerate() {
        for j in 0..s {
            q[j * s + k] = b[j];
        }
    }
    let mut c = vec![0.0; m * s];
    let mut last = vec![0; m];
    for i in 0..m {
        let row = &f[i * s..(i + 1) * s];
        for k in 0..s {
            c[i * s + k] = dot(row, &basis[k]);
        }
        // Rows are unit vectors: a coefficient below 1e-10 is rounding from the Gram-Schmidt.
        last[i] = (0..s).rev().find(|&k| c[i * s + k].abs() > 1e-10).unwrap_or(0);
        for k in last[i] + 1..s {
            c[i * s + k] = 0.0;
        }
    }
    Rotated { s, q, c, e: e.to_vec(), last }
}

/// Coefficients below this (rows have unit length) are rounding: the row does not involve the
/// variable.
const ZERO_COEFFICIENT: f64 = 1e-10;

/// The most dimensions whose polyhedra get the projection rows (and the saddle search its
/// retries). Measured gains are for S = 4..6; above, the rows multiply with each elimination:
/// an S = 12 polyhedron with 24 random rows took 4.6x longer with them at rtol 1e-2, while
/// S = 8 and 10 moved within this machine's noise (`BENCHMARKS.md`).
const MAX_PROJECTED_DIM: usize = 6;

/// Rows the projections may add before the elimination stops (a polyhedron whose projections
/// have that many facets keeps the rows found so far: they are valid, only not complete).
const MAX_PROJECTION_ROWS: usize = 512;

/// Adds, for every k, the rows of the polyhedron's projection onto the first k variables, by
/// Fourier-Motzkin elimination of the later ones (redundant rows dropped at each step). Then
/// the interval each row set gives `v_k` given `v_1..v_{k-1}` is exactly the set of values
/// from which the path can still be completed, so no path dies: without them a path leaves
/// the polyhedron's shadow whenever a row that bounds a later variable cuts it off, its
/// weight drops to zero there, and quasi-Monte Carlo on such a discontinuous integrand
/// converges slowly or, on a thin polyhedron seen from a bad angle, never hits it. Derived rows
/// are implied by the polyhedron, so any subset keeps the estimate unbiased.
fn project(rot: &mut Rotated) {
    let s = rot.s;
    // The rows of the polyhedron in the first k + 1 variables (its projection there).
    let mut current: Vec<(Vec<f64>, f64)> =
        (0..rot.e.len()).map(|i| (rot.c[i * s..(i + 1) * s].to_vec(), rot.e[i])).collect();
    let mut rows: Vec<(Vec<f64>, f64)> = Vec::new();
    for k in (0..s).rev() {
        let (with_k, without_k): (Vec<_>, Vec<_>) =
            current.into_iter().partition(|(c, _)| c[k].abs() > ZERO_COEFFICIENT);
        if k == 0 {
            rows.extend(with_k);
            rows.extend(without_k);
            break;
        }
        let mut next = without_k;
        let kept = next.len();
        for (ci, ei) in with_k.iter().filter(|(c, _)| c[k] > 0.0) {
            for (cj, ej) in with_k.iter().filter(|(c, _)| c[k] < 0.0) {
                let (a, b) = (1.0 / ci[k], -1.0 / cj[k]);
                let mut row: Vec<f64> = (0..s).map(|j| if j < k { a * ci[j] + b * cj[j] } else { 0.0 }).collect();
                let offset = a * ei + b * ej;
                let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt();
                // A pair of opposite faces (a slab in v_k) implies nothing about the others.
                if norm <= Tolerance::DEFAULT.at(offset.abs()) {
                    continue;
                }
                row.iter_mut().for_each(|x| *x = if x.abs() > ZERO_COEFFICIENT * norm { *x / norm } else { 0.0 });
                next.push((row, offset / norm));
            }
        }
        rows.extend(with_k);
        // Rows that do not involve v_k stay non-redundant in the projection (the derived ones
        // do not use them), so without derived rows there is nothing to drop.
        current = if next.len() == kept || next.len() > MAX_PROJECTION_ROWS {
            next
        } else {
            let flat: Vec<f64> = next.iter().flat_map(|(c, _)| c[..k].iter().copied()).collect();
            let offsets: Vec<f64> = next.iter().map(|(_, e)| *e).collect();
            match super::reduce(&flat, &offsets, k) {
                Some((f, e, _)) => e
                    .iter()
                    .enumerate()
                    .map(|(i, &ei)| {
                        let mut row = f[i * k..(i + 1) * k].to_vec();
                        row.resize(s, 0.0);
                        (row, ei)
                    })
                    .collect(),
                // Too thin to reduce (the polyhedron itself was not): keep every row.
                None => next,
            }
        };
        if current.len() > MAX_PROJECTION_ROWS {
            // Stop deriving: the remaining rows bound their own variables as they are.
            rows.extend(current);
            break;
        }
    }
    rot.c = rows.iter().flat_map(|(c, _)| c.iter().copied()).collect();
    rot.e = rows.iter().map(|(_, e)| *e).collect();
    rot.last = rows.iter().map(|(c, _)| (0..s).rev().find(|&k| c[k].abs() > ZERO_COEFFICIENT).unwrap_or(0)).collect();
}

/// Sums over the points of one scrambling.
struct Sums {
    weight: f64,
    /// Paths with a non-zero weight.
    hits: usize,
}

/// The polyhedron `{w : F w <= e}` (rows of unit length, `m x S` row-major) under `N(0, I)`;
/// `tilt` is its point nearest the origin (it orders the variables and starts the saddle
/// search), `inside` a point of its interior. The mass's relative error is driven below
/// `rtol` or `max_points` (over all scramblings) are spent.
pub fn integrate(
    f: &[f64],
    e: &[f64],
    s: usize,
    tilt: &[f64],
    inside: &[f64],
    max_points: usize,
    settings: &IntegrationSettings,
) -> Result<SovResult> {
    let IntegrationSettings { rtol, seed, cancel, .. } = *settings;
    if s > sobol::MAX_DIM {
        return Err(Error::InvalidInput(format!(
            "quasi-Monte Carlo integration supports up to {} dimensions; got {s}",
            sobol::MAX_DIM
        )));
    }
    let mut rot = rotate(f, e, s, tilt);
    if s <= MAX_PROJECTED_DIM {
        project(&mut rot);
    }
    let m = rot.e.len();
    let rows_of: Vec<Vec<usize>> = (0..s).map(|k| (0..m).filter(|&i| rot.last[i] == k).collect()).collect();
    let rotated = |w: &[f64]| -> Vec<f64> { (0..s).map(|k| (0..s).map(|j| rot.q[j * s + k] * w[j]).sum()).collect() };
    let (mode, interior) = (rotated(tilt), rotated(inside));
    // Botev's minimax tilt; if the saddle point is not found, the shift to the mode, whose
    // likelihood ratio is at most exp(-|mode|^2/2) on the polyhedron (bounded relative error,
    // though a larger variance than the saddle point's). Weights are kept relative to
    // exp(reference), the saddle value or the weight of the path through the mode, so that
    // they neither underflow nor overflow.
    let mut v = vec![0.0; s];
    let (nu, mut reference) = match minimax_tilt(&rot, &rows_of, &mode, &interior) {
        Some(found) => found,
        None => {
            let reference = path_log_weight(&rot, &rows_of, &mode, &mut v);
            (mode.clone(), if reference.is_finite() { reference } else { -0.5 * dot(&mode, &mode) })
        }
    };

    let mut rng = Pcg64::seed_from_u64(seed);
    let nets: Vec<ScrambledSobol> =
        (0..SHIFTS).map(|_| ScrambledSobol::new((0..s).map(|_| rng.random::<u32>()).collect())).collect();
    let mut sums: Vec<Sums> = (0..SHIFTS).map(|_| Sums { weight: 0.0, hits: 0 }).collect();
    let mut done = 0usize;
    let mut target = FIRST_ROUND;
    let mut u = vec![[0.0; LANES]; s];
    let mut drawn = vec![[0.0; LANES]; s];
    let mut log_weights = [0.0; LANES];
    let (mut estimate, mut error);
    let mut errors = RoundErrors::new(ERROR_SCALE);
    loop {
        for shift in 0..SHIFTS {
            // Rounds add multiples of LANES points (FIRST_ROUND, then doublings).
            for batch in (done..target).step_by(LANES) {
                // Rounds grow to 2^19 points: Ctrl-C is heard every 64 batches (4096 paths, ~1 ms).
                if batch.is_multiple_of(64 * LANES) {
                    cancel.check()?;
                }
                nets[shift].gray_points_into(batch as u32, &mut u);
                with_wide_vectors(PathBatch {
                    rot: &rot,
                    rows_of: &rows_of,
                    nu: &nu,
                    u: &u,
                    v: &mut drawn,
                    log_weight: &mut log_weights,
                });
                for &lw in &log_weights {
                    if lw == f64::NEG_INFINITY {
                        continue;
                    }
                    if lw > reference + 300.0 {
                        // The reference is only a bound where the saddle point is exact; when a
                        // weight exceeds it by far, move the common scale before anything overflows.
                        let factor = (reference - lw).exp();
                        sums.iter_mut().for_each(|acc| acc.weight *= factor);
                        reference = lw;
                    }
                    let w = (lw - reference).exp();
                    let acc = &mut sums[shift];
                    acc.weight += w;
                    acc.hits += 1;
                }
            }
        }
        cancel.check()?;
        done = target;
        (estimate, error) = errors.update::<SHIFTS>(&std::array::from_fn(|k| sums[k].weight / done as f64));
        // The spread of a handful of non-zero paths says nothing: the estimate is unreliable
        // until every scrambling has a fair number of them.
        let starved = sums.iter().any(|acc| acc.hits < MIN_HITS);
        if starved {
            error = error.max(1.0);
            // Almost every path dies (only where the projections were cut short at
            // MAX_PROJECTION_ROWS): more points would barely help, so stop early and let the
            // error say so.
            if target * SHIFTS >= STARVED_BUDGET {
                break;
            }
        }
        if error <= rtol || target * SHIFTS >= max_points {
            break;
        }
        target *= 2;
    }
    if !(estimate > 0.0) {
        // The polyhedron has an interior (the caller checked), so no path finding it is a
        // failure, not a zero: the error says so.
        return Ok(SovResult { log_mass: f64::NEG_INFINITY, error: f64::INFINITY });
    }
    Ok(SovResult { log_mass: estimate.ln() + reference, error })
}

/// [`path_log_weight`] for [`LANES`] paths at once, at the uniforms `u[k][lane]`, with the
/// draws into `v[k][lane]`: each step of the separation of variables one loop over the paths,
/// for the processor's vectors.
struct PathBatch<'a> {
    rot: &'a Rotated,
    rows_of: &'a [Vec<usize>],
    nu: &'a [f64],
    u: &'a [Lanes],
    v: &'a mut [Lanes],
    log_weight: &'a mut Lanes,
}

impl VectorKernel for PathBatch<'_> {
    type Output = ();

    #[inline(always)]
    fn run<M: MulAdd>(self) {
        let PathBatch { rot, rows_of, nu, u, v, log_weight } = self;
        let s = rot.s;
        *log_weight = [0.0; LANES];
        let mut live = [true; LANES];
        let (mut a, mut b, mut log_mass, mut x) = ([0.0; LANES], [0.0; LANES], [0.0; LANES], [0.0; LANES]);
        for k in 0..s {
            let (mut lo, mut hi) = ([f64::NEG_INFINITY; LANES], [f64::INFINITY; LANES]);
            for &i in &rows_of[k] {
                let row = &rot.c[i * s..(i + 1) * s];
                let mut sum = [0.0; LANES];
                for (coefficient, v) in row[..k].iter().zip(v.iter()) {
                    for l in 0..LANES {
                        sum[l] += coefficient * v[l];
                    }
                }
                let coef = row[k];
                for l in 0..LANES {
                    let bound = (rot.e[i] - sum[l]) / coef;
                    if coef > 0.0 {
                        hi[l] = hi[l].min(bound);
                    } else {
                        lo[l] = lo[l].max(bound);
                    }
                }
            }
            for l in 0..LANES {
                // A path whose interval closes is dead (weight zero); its lane runs on unused.
                live[l] &= lo[l] < hi[l];
                (a[l], b[l]) = (lo[l] - nu[k], hi[l] - nu[k]);
            }
            truncated_draws_into(&a, &b, &u[k], &live, &mut log_mass, &mut x);
            for l in 0..LANES {
                v[k][l] = nu[k] + x[l];
                // Likelihood ratio of N(0, 1) to N(nu_k, 1) at v_k.
                log_weight[l] += log_mass[l];
                log_weight[l] += -nu[k] * v[k][l] + 0.5 * nu[k] * nu[k];
            }
        }
        for l in 0..LANES {
            if !live[l] {
                log_weight[l] = f64::NEG_INFINITY;
            }
        }
    }
}

/// The log weight of the separation-of-variables path that takes each `v_k` (into `v`) at the
/// point of its interval nearest `nu_k` (the sampled paths are [`PathBatch`]'s).
fn path_log_weight(rot: &Rotated, rows_of: &[Vec<usize>], nu: &[f64], v: &mut [f64]) -> f64 {
    let s = rot.s;
    let mut log_weight = 0.0;
    let (mut d_lo, mut d_hi) = (vec![0.0; s], vec![0.0; s]);
    for k in 0..s {
        let (lo, hi) = bounds(rot, &rows_of[k], k, v, 0.0, (&mut d_lo[..k], &mut d_hi[..k]), None);
        if !(lo < hi) {
            return f64::NEG_INFINITY;
        }
        let (a, b) = (lo - nu[k], hi - nu[k]);
        let (log_mass, x) = (log_diff_ndtr(a, b), 0.0f64.clamp(a, b));
        log_weight += log_mass;
        v[k] = nu[k] + x;
        // Likelihood ratio of N(0, 1) to N(nu_k, 1) at v_k.
        log_weight += -nu[k] * v[k] + 0.5 * nu[k] * nu[k];
    }
    log_weight
}

/// The bounds `(lo, hi)` of variable `k` given `x_1..x_{k-1}`, with their gradients in
/// `x_1..x_{k-1}` into `d_lo`, `d_hi` (length `k`). With `smoothing > 0` the min / max over rows is replaced by a soft
/// one (`-t log sum exp(-bound / t)`), which has no kinks where rows tie; `curvature`, if given,
/// receives the soft bounds' Hessians (`k x k` each, lower then upper; zero without smoothing,
/// where the bounds are affine between kinks).
fn bounds(
    rot: &Rotated,
    rows: &[usize],
    k: usize,
    x: &[f64],
    smoothing: f64,
    (d_lo, d_hi): (&mut [f64], &mut [f64]),
    curvature: Option<(&mut [f64], &mut [f64])>,
) -> (f64, f64) {
    let s = rot.s;
    let bound = |i: usize| (rot.e[i] - dot(&rot.c[i * s..i * s + k], &x[..k])) / rot.c[i * s + k];
    // sign +1: the smallest upper bound; -1: the largest lower bound. Two passes over the rows
    // rather than a list of candidates: the saddle search calls this for every gradient, and
    // allocations were a fifth of its time.
    let side = |sign: f64, gradient: &mut [f64], hessian: Option<&mut [f64]>| -> f64 {
        gradient.fill(0.0);
        let on_side = |i: &&usize| rot.c[*i * s + k] * sign > 0.0;
        // The first of the tightest rows.
        let mut tightest: Option<(usize, f64)> = None;
        for &i in rows.iter().filter(on_side) {
            let b = bound(i);
            if tightest.is_none_or(|(_, best)| (sign * b).total_cmp(&(sign * best)).is_lt()) {
                tightest = Some((i, b));
            }
        }
        let row_gradient = |i: usize, j: usize| -rot.c[i * s + j] / rot.c[i * s + k];
        let mut hessian = hessian;
        if let Some(h) = hessian.as_deref_mut() {
            h.fill(0.0);
        }
        let Some((first, best)) = tightest else {
            return sign * f64::INFINITY;
        };
        if smoothing > 0.0 {
            // Soft-min weights exp(-(b - best) / t) (for the upper side), summing to `total`.
            let weight = |i: usize| (-(sign * (bound(i) - best)) / smoothing).exp();
            let total: f64 = rows.iter().filter(on_side).map(|&i| weight(i)).sum();
            for &i in rows.iter().filter(on_side) {
                let w = weight(i) / total;
                for (j, g) in gradient.iter_mut().enumerate() {
                    *g += w * row_gradient(i, j);
                }
                // The soft bound's Hessian is -sign / t (sum_i w_i g_i g_i^T - g g^T).
                if let Some(h) = hessian.as_deref_mut() {
                    for a in 0..k {
                        for b in 0..k {
                            h[a * k + b] -= sign / smoothing * w * row_gradient(i, a) * row_gradient(i, b);
                        }
                    }
                }
            }
            if let Some(h) = hessian {
                for a in 0..k {
                    for b in 0..k {
                        h[a * k + b] += sign / smoothing * gradient[a] * gradient[b];
                    }
                }
            }
            best - sign * smoothing * total.ln()
        } else {
            for (j, g) in gradient.iter_mut().enumerate() {
                *g = row_gradient(first, j);
            }
            best
        }
    };
    let (lo_curvature, hi_curvature) = match curvature {
        Some((lo, hi)) => (Some(lo), Some(hi)),
        None => (None, None),
    };
    let hi = side(1.0, d_hi, hi_curvature);
    let lo = side(-1.0, d_lo, lo_curvature);
    (lo, hi)
}

/// `(gradient, psi)` of [`minimax_tilt`]'s `psi` at `y = [x; mu]`, with the bounds' kinks
/// smoothed by `smoothing` (see [`bounds`]), and its Hessian (row-major `2S x 2S`) into
/// `hessian` if given. `None` where a variable's interval has no mass.
fn psi_derivatives(
    rot: &Rotated,
    rows_of: &[Vec<usize>],
    y: &[f64],
    smoothing: f64,
    mut hessian: Option<&mut [f64]>,
) -> Option<(Vec<f64>, f64)> {
    let s = rot.s;
    let n = 2 * s;
    let phi_ratio = |t: f64, log_z: f64| if t.is_finite() { (log_pdf(t) - log_z).exp() } else { 0.0 };
    let (x, mu) = y.split_at(s);
    let mut grad = vec![0.0; n];
    let mut psi = 0.0;
    let (mut d_lo, mut d_hi) = (vec![0.0; s], vec![0.0; s]);
    let (mut lo_curvature, mut hi_curvature) = (vec![0.0; s * s], vec![0.0; s * s]);
    if let Some(h) = hessian.as_deref_mut() {
        h.fill(0.0);
    }
    for k in 0..s {
        let (d_lo, d_hi) = (&mut d_lo[..k], &mut d_hi[..k]);
        let curvature =
            (hessian.is_some() && smoothing > 0.0).then(|| (&mut lo_curvature[..k * k], &mut hi_curvature[..k * k]));
        let (lo, hi) = bounds(rot, &rows_of[k], k, x, smoothing, (d_lo, d_hi), curvature);
        let (a, b) = (lo - mu[k], hi - mu[k]);
        let log_z = log_diff_ndtr(a, b);
        if !log_z.is_finite() {
            return None;
        }
        psi += 0.5 * mu[k] * mu[k] - mu[k] * x[k] + log_z;
        let (ra, rb) = (phi_ratio(a, log_z), phi_ratio(b, log_z));
        grad[s + k] = mu[k] - x[k] + (ra - rb);
        grad[k] -= mu[k];
        // d log Z_k / d x_j through the bounds.
        for j in 0..k {
            grad[j] += rb * d_hi[j] - ra * d_lo[j];
        }
        let Some(h) = hessian.as_deref_mut() else { continue };
        // Second derivatives of log Z in (a, b); an infinite end contributes nothing.
        let a_ra = if a.is_finite() { a * ra } else { 0.0 };
        let b_rb = if b.is_finite() { b * rb } else { 0.0 };
        let (l_aa, l_ab, l_bb) = (a_ra - ra * ra, ra * rb, -b_rb - rb * rb);
        let m = s + k;
        // a = lo(x) - mu_k, b = hi(x) - mu_k.
        h[m * n + m] += 1.0 + l_aa + 2.0 * l_ab + l_bb;
        h[m * n + k] -= 1.0;
        h[k * n + m] -= 1.0;
        for i in 0..k {
            let mixed = -((l_aa + l_ab) * d_lo[i] + (l_ab + l_bb) * d_hi[i]);
            h[m * n + i] += mixed;
            h[i * n + m] += mixed;
            for j in 0..k {
                h[i * n + j] += l_aa * d_lo[i] * d_lo[j]
                    + l_ab * (d_lo[i] * d_hi[j] + d_hi[i] * d_lo[j])
                    + l_bb * d_hi[i] * d_hi[j];
                if smoothing > 0.0 {
                    h[i * n + j] += rb * hi_curvature[i * k + j] - ra * lo_curvature[i * k + j];
                }
            }
        }
    }
    Some((grad, psi))
}

/// Botev's (2017) minimax exponential tilting: the saddle point of
/// `psi(x, mu) = sum_k mu_k^2/2 - mu_k x_k + log(Phi(hi_k(x) - mu_k) - Phi(lo_k(x) - mu_k))`
/// by damped Newton on its gradient, with the Hessian in closed form. With several rows per
/// variable the bounds are a min / max of affine functions; the derivatives use the active row
/// (or a soft min / max, see [`bounds`]). Returns `(mu, psi(x*, mu*))`, which bounds the log
/// weights. Newton starts at the mode and, where it fails from there, again from points towards
/// `interior`.
fn minimax_tilt(rot: &Rotated, rows_of: &[Vec<usize>], mode: &[f64], interior: &[f64]) -> Option<(Vec<f64>, f64)> {
    let s = rot.s;
    let n = 2 * s;
    let norm = |g: &[f64]| dot(g, g).sqrt();
    // Newton from the mode, else from points towards the interior: the gradient has kinks
    // where rows tie, and a start on one can send Newton astray.
    let start = |t: f64| -> Vec<f64> {
        mode.iter().zip(interior).map(|(m, c)| m + t * (c - m)).chain(std::iter::repeat_n(0.0, s)).collect()
    };
    let newton = |mut y: Vec<f64>, smoothing: f64| -> Option<(Vec<f64>, f64)> {
        let mut hessian = vec![0.0; n * n];
        let (mut g, mut psi) = psi_derivatives(rot, rows_of, &y, smoothing, Some(&mut hessian))?;
        for _ in 0..100 {
            if norm(&g) <= 1e-10 * (1.0 + norm(&y)) {
                return Some((y[s..].to_vec(), psi));
            }
            let step = solve_dense(&mut hessian, g.clone(), n)?;
            let mut t = 1.0;
            let current = norm(&g);
            loop {
                let trial: Vec<f64> = y.iter().zip(&step).map(|(yi, di)| yi - t * di).collect();
                if let Some((gt, pt)) = psi_derivatives(rot, rows_of, &trial, smoothing, Some(&mut hessian)) {
                    if norm(&gt) < current {
                        (y, g, psi) = (trial, gt, pt);
                        break;
                    }
                }
                t *= 0.5;
                if t < 1e-6 {
                    return None;
                }
            }
        }
        None
    };
    // Above MAX_PROJECTED_DIM the retries are not worth their cost (measured with the
    // projections: a smoothed saddle point did worse there than the shift to the mode).
    let (smoothings, starts): (&[f64], &[f64]) =
        if s <= MAX_PROJECTED_DIM { (&[0.0, 0.1, 1.0], &[0.0, 1e-2, 0.1, 0.5, 1.0]) } else { (&[0.0], &[0.0]) };
    smoothings.iter().find_map(|&smoothing| starts.iter().find_map(|&t| newton(start(t), smoothing)))
}

/// Solves `A x = b` (row-major `n x n`) by Gaussian elimination with partial pivoting.
fn solve_dense(a: &mut [f64], mut b: Vec<f64>, n: usize) -> Option<Vec<f64>> {
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))?;
        if a[pivot * n + col].abs() < 1e-300 {
            return None;
        }
        if pivot != col {
            for k in 0..n {
                a.swap(col * n + k, pivot * n + k);
            }
            b.swap(col, pivot);
        }
        for r in col + 1..n {
            let factor = a[r * n + col] / a[col * n + col];
            if factor != 0.0 {
                for k in col..n {
                    a[r * n + k] -= factor * a[col * n + k];
                }
                b[r] -= factor * b[col];
            }
        }
    }
    for col in (0..n).rev() {
        let tail: f64 = (col + 1..n).map(|k| a[col * n + k] * b[k]).sum();
        b[col] = (b[col] - tail) / a[col * n + col];
    }
    b.iter().all(|v| v.is_finite()).then_some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random polyhedra around the origin: `m` random unit rows at offsets 0.2..1.5, and a
    /// thin slab (two nearly opposite rows) so that rows which do not bound their own variable
    /// cut paths off.
    fn random_polyhedron(rng: &mut Pcg64, s: usize, m: usize) -> (Vec<f64>, Vec<f64>) {
        let mut f = Vec::new();
        let mut e = Vec::new();
        let unit = |rng: &mut Pcg64| -> Vec<f64> {
            let v: Vec<f64> = (0..s).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
            let n = dot(&v, &v).sqrt();
            v.iter().map(|x| x / n).collect()
        };
        for _ in 0..m {
            f.extend(unit(rng));
            e.push(0.2 + 1.3 * rng.random::<f64>());
        }
        let d = unit(rng);
        f.extend(d.iter().copied());
        f.extend(d.iter().map(|x| -x));
        e.extend([0.01, 0.01]);
        (f, e)
    }

    /// The polyhedron rotated (untilted) and projected, with the rows that bound each variable.
    fn projected(f: &[f64], e: &[f64], s: usize) -> (Rotated, Vec<Vec<usize>>) {
        let mut rot = rotate(f, e, s, &vec![0.0; s]);
        project(&mut rot);
        let m = rot.e.len();
        let rows_of = (0..s).map(|k| (0..m).filter(|&i| rot.last[i] == k).collect()).collect();
        (rot, rows_of)
    }

    #[test]
    fn projections_are_valid_and_leave_no_path_dead() {
        let mut rng = Pcg64::seed_from_u64(11);
        for s in [3, 4, 5] {
            for _ in 0..10 {
                let (f, e) = random_polyhedron(&mut rng, s, 2 * s);
                let (rot, rows_of) = projected(&f, &e, s);
                let (original, m) = (e.len(), rot.e.len());
                let nu = vec![0.0; s];
                let (mut u, mut v) = (vec![[0.0; LANES]; s], vec![[0.0; LANES]; s]);
                let mut log_weight = [0.0; LANES];
                // Every path completes.
                for _ in 0..32 {
                    for row in u.iter_mut() {
                        row.iter_mut().for_each(|x| *x = rng.random::<f64>());
                    }
                    PathBatch { rot: &rot, rows_of: &rows_of, nu: &nu, u: &u, v: &mut v, log_weight: &mut log_weight }
                        .run::<crate::gauss::normal_batch::Separate>();
                    for lane in 0..LANES {
                        assert!(
                            log_weight[lane].is_finite(),
                            "S={s}: a path died ({original} rows, {m} with projections)"
                        );
                        // ... and ends inside the polyhedron: the derived rows cut nothing off.
                        for i in 0..original {
                            let w: f64 = (0..s)
                                .map(|j| f[i * s + j] * (0..s).map(|k| rot.q[j * s + k] * v[k][lane]).sum::<f64>())
                                .sum();
                            assert!(w <= e[i] + 1e-9, "S={s}: the path left row {i}");
                        }
                    }
                }
            }
        }
    }

    /// The closed-form Hessian of the saddle search against central differences of the
    /// gradient, with and without smoothing of the bounds' kinks, at random points near the
    /// polyhedron's inside (away from kinks with probability one).
    #[test]
    fn psi_hessian_matches_differences_of_its_gradient() {
        let mut rng = Pcg64::seed_from_u64(5);
        for s in [2, 3, 4] {
            for _ in 0..5 {
                let (f, e) = random_polyhedron(&mut rng, s, 2 * s);
                let (rot, rows_of) = projected(&f, &e, s);
                let n = 2 * s;
                let y: Vec<f64> = (0..n)
                    .map(|j| if j < s { 0.002 * (rng.random::<f64>() - 0.5) } else { rng.random::<f64>() * 2.0 - 1.0 })
                    .collect();
                for smoothing in [0.0, 0.3] {
                    let mut hessian = vec![0.0; n * n];
                    psi_derivatives(&rot, &rows_of, &y, smoothing, Some(&mut hessian)).unwrap();
                    let scale = hessian.iter().fold(1.0f64, |a, h| a.max(h.abs()));
                    for c in 0..n {
                        let h = 1e-5;
                        let (mut yp, mut ym) = (y.clone(), y.clone());
                        yp[c] += h;
                        ym[c] -= h;
                        let (gp, _) = psi_derivatives(&rot, &rows_of, &yp, smoothing, None).unwrap();
                        let (gm, _) = psi_derivatives(&rot, &rows_of, &ym, smoothing, None).unwrap();
                        for r in 0..n {
                            let difference = (gp[r] - gm[r]) / (2.0 * h);
                            assert!(
                                (hessian[r * n + c] - difference).abs() <= 1e-6 * scale,
                                "S={s} smoothing {smoothing}: H[{r}][{c}] = {} against {difference}",
                                hessian[r * n + c]
                            );
                        }
                    }
                }
            }
        }
    }
}
