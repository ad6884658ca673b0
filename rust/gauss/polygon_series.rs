//! S = 2, polygons small against the distance over which the Gaussian changes: their mass and
//! moments as power series in the position of the mean.
//!
//! In whitened coordinates the polygon for the mean `mu` is `P0 - m`, `m = L^{-1} mu`, under
//! `N(0, I)`. With `c` a point of `P0` (the vertices' average) and `g = m - c`,
//! `phi(c + u - m) = phi(g) e^{g . u} e^{-|u|^2 / 2}`, so the mass is
//! `phi(g) sum_alpha g^alpha K_alpha / alpha!` with the polygon's Gaussian moments
//! `K_ij = int_{P0 - c} u1^i u2^j e^{-|u|^2 / 2} du`, which depend on the region alone; the
//! moments are the same sums with `K` shifted by one or two degrees. Computing `K` once per
//! region (~10 us) replaces, for every point that meets the region, the fan's edge quadratures
//! (~50 exponentials) by one exponential and a polynomial.
//!
//! The terms of degree `n` add up to at most `(|g| r)^n / n!` of `int_{P0} e^{-|u|^2/2}` (`r` the
//! largest distance from `c` to a vertex), and the sum is at least `e^{-|g| r}` of it, so
//! truncated after degree `n` it errs by at most `2 e^t t^{n+1} / (n+1)!`, `t = |g| r`. The
//! series is used for `t <= MAX_REACH` only, where its terms cancel at most `e^{2t}`-fold, and
//! always runs to degree `MAX_DEGREE + 2`, beyond the `n` that puts that bound under 1e-17 at
//! `t = MAX_REACH`.

use super::normal::{GL12_HALF, GL_NODES, GL_WEIGHTS, INV_FACTORIALS, LN_SQRT_2PI};
use super::normal_batch::{with_wide_vectors, MulAdd, VectorKernel};

/// The degree of the series in `g` that `t = MAX_REACH` needs.
const MAX_DEGREE: usize = 19;
/// `K_ij` is kept for `i + j <= MAX_DEGREE + 2` (the second moments need two degrees more).
const K_SIZE: usize = MAX_DEGREE + 3;
/// The series serves means with `|g| r` up to this.
const MAX_REACH: f64 = 1.0;
/// Polygons with a vertex farther than this from their centre get no series: `K` is computed
/// by power series that converge fast only for `|u| <= 1`, and such polygons would meet
/// `|g| r <= 1` only for means close to their centre.
const MAX_RADIUS: f64 = 1.0;

#[derive(Clone, Debug)]
pub(crate) struct PolygonSeries {
    /// The vertices' average `c` (whitened, for the mean 0) and their largest distance `r` from it.
    pub(crate) centre: [f64; 2],
    pub(crate) radius: f64,
    /// `K_ij` for `i + j < K_SIZE`, row by row: row `i` holds `j = 0 .. K_SIZE - i` (see
    /// [`Self::row`]); half the square's memory, which matters with tens of thousands of regions.
    k: Box<[f64]>,
}

/// Polygons whose edge terms cancel more than this many times over (slivers: long edges around
/// a small area) get no series, whose rounding would exceed ~1e-14 of their mass; the fan
/// estimates its own cancellation and takes them.
const MAX_CANCELLATION: f64 = 64.0;

/// Edges up to this long take a 12-point Gauss-Legendre rule in [`PolygonSeries::new`].
const SHORT_EDGE: f64 = 0.5;

/// The 12- and 20-point Gauss-Legendre rules on [-1, 1] as `(node, weight)` pairs.
const GL12: [(f64, f64); 12] = {
    let mut rule = [(0.0, 0.0); 12];
    let mut k = 0;
    while k < 6 {
        rule[k] = (-GL12_HALF[k].0, GL12_HALF[k].1);
        rule[6 + k] = GL12_HALF[k];
        k += 1;
    }
    rule
};
const GL20: [(f64, f64); 20] = {
    let mut rule = [(0.0, 0.0); 20];
    let mut k = 0;
    while k < 20 {
        rule[k] = (GL_NODES[k], GL_WEIGHTS[k]);
        k += 1;
    }
    rule
};

/// Terms of the series of [`gaussian_antiderivatives`]: `(1/2)^k / k!` is below 1e-18 of the
/// first at `k = 16` for `|x| <= 1`.
const ANTIDERIVATIVE_TERMS: usize = 17;

/// `1 / n` for the series' denominators `i + 2k + 1` (a division per term was the cost of
/// building a polygon's series).
const RECIPROCALS: [f64; K_SIZE + 2 * ANTIDERIVATIVE_TERMS] = {
    let mut r = [0.0; K_SIZE + 2 * ANTIDERIVATIVE_TERMS];
    let mut n = 1;
    while n < r.len() {
        r[n] = 1.0 / n as f64;
        n += 1;
    }
    r
};

/// `Phi_i(x) = int_0^x s^i e^{-s^2/2} ds` for `i < K_SIZE`, `|x| <= MAX_RADIUS`, from
/// `e^{-s^2/2} = sum_k (-1/2)^k s^{2k} / k!`: `Phi_i(x) = x^{i+1} sum_k q_k / (i + 2k + 1)` with
/// `q_k = (-x^2/2)^k / k!`, alternating, each term at most half the one before.
fn gaussian_antiderivatives(x: f64) -> [f64; K_SIZE] {
    let mut q = [0.0; ANTIDERIVATIVE_TERMS];
    q[0] = 1.0;
    for k in 1..ANTIDERIVATIVE_TERMS {
        q[k] = q[k - 1] * (-0.5 * x * x) * RECIPROCALS[k];
    }
    let mut out = [0.0; K_SIZE];
    let mut power = x; // x^{i+1}
    for (i, slot) in out.iter_mut().enumerate() {
        let sum: f64 = q.iter().enumerate().rev().map(|(k, qk)| qk * RECIPROCALS[i + 2 * k + 1]).sum();
        *slot = power * sum;
        power *= x;
    }
    out
}

/// `K`'s rows padded to whole vectors of eight (`K_SIZE` is 22).
const PADDED: usize = 24;

/// `x^i / i!` for `i < K_SIZE` (zero beyond): four chains `x^{i+4} = x^i x^4`, each a quarter
/// of the length of one chain through all the powers.
#[inline(always)]
fn scaled_powers(x: f64) -> [f64; PADDED] {
    let x2 = x * x;
    let mut p = [0.0; PADDED];
    p[..4].copy_from_slice(&[1.0, x, x2, x2 * x]);
    let x4 = x2 * x2;
    for i in 4..K_SIZE {
        p[i] = p[i - 4] * x4;
    }
    for i in 2..K_SIZE {
        p[i] *= INV_FACTORIALS[i];
    }
    p
}

/// `v` moved `by` places up (zeros in front).
#[inline(always)]
fn shifted(v: &[f64; PADDED], by: usize) -> [f64; PADDED] {
    let mut out = [0.0; PADDED];
    out[by..].copy_from_slice(&v[..PADDED - by]);
    out
}

/// `sum_j v_j w_j` (the vector kernel of `crate::linalg::dot` for the series) in eight running
/// sums (as one vector of them), added pairwise at the end: one chain of 22 dependent additions
/// would cost their latency.
#[inline(always)]
fn dot_padded(v: &[f64; PADDED], w: &[f64; PADDED]) -> f64 {
    let mut sums = [0.0; 8];
    for j in 0..PADDED {
        sums[j % 8] += v[j] * w[j];
    }
    ((sums[0] + sums[4]) + (sums[2] + sums[6])) + ((sums[1] + sums[5]) + (sums[3] + sums[7]))
}

impl PolygonSeries {
    /// The series of the bounded polygon with these whitened vertices, in counter-clockwise
    /// order; `None` when a vertex lies farther than [`MAX_RADIUS`] from their average, or for a
    /// sliver ([`MAX_CANCELLATION`]).
    pub(crate) fn new(vertices: &[[f64; 2]]) -> Option<Self> {
        let n = vertices.len();
        if n < 3 {
            return None;
        }
        let centre = [
            vertices.iter().map(|v| v[0]).sum::<f64>() / n as f64,
            vertices.iter().map(|v| v[1]).sum::<f64>() / n as f64,
        ];
        let radius = vertices.iter().map(|v| (v[0] - centre[0]).hypot(v[1] - centre[1])).fold(0.0, f64::max);
        if radius.is_nan() || radius > MAX_RADIUS {
            return None;
        }
        // Green's theorem: int_P dQ/dx = oint Q dy (counter-clockwise) with
        // Q = Phi_i(x) y^j e^{-y^2/2}; along each edge a Gauss-Legendre rule exact for the
        // polynomial parts (degree <= K_SIZE = 22): 12 points (degree 23) on edges up to
        // SHORT_EDGE long, over which the Gaussian factors' higher terms stay below rounding
        // (against the 20-point rule on 2000 random polygons: the same errors against a brute-
        // force cubature), 20 points on longer ones (at most 2).
        // Accumulated as `transposed[j][i]`, so that the innermost loop runs along memory.
        let mut transposed = [[0.0; K_SIZE]; K_SIZE];
        // What the edges' terms of K_00 add up to in magnitude: over the area they cancel down
        // to, the factor by which rounding is magnified.
        let mut magnitude = 0.0;
        for e in 0..n {
            let (a, b) = (vertices[e], vertices[(e + 1) % n]);
            let (a, b) = ([a[0] - centre[0], a[1] - centre[1]], [b[0] - centre[0], b[1] - centre[1]]);
            let dy = b[1] - a[1];
            if dy == 0.0 {
                continue;
            }
            let short = (b[0] - a[0]).hypot(dy) <= SHORT_EDGE;
            let rule = if short { &GL12[..] } else { &GL20[..] };
            for &(node, weight) in rule {
                let t = 0.5 * (1.0 + node);
                let (x, y) = (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]));
                let phi = gaussian_antiderivatives(x);
                let mut y_power = 0.5 * weight * dy * (-0.5 * y * y).exp();
                magnitude += (phi[0] * y_power).abs();
                for (j, column) in transposed.iter_mut().enumerate() {
                    for (kij, phi_i) in column[..K_SIZE - j].iter_mut().zip(&phi) {
                        *kij += phi_i * y_power;
                    }
                    y_power *= y;
                }
            }
        }
        let k: Box<[f64]> = (0..K_SIZE)
            .flat_map(|i| (0..K_SIZE - i).map(move |j| (i, j)))
            .map(|(i, j)| transposed[j][i])
            .chain([0.0; PADDED])
            .collect();
        (k[0] > 0.0 && magnitude <= MAX_CANCELLATION * k[0]).then_some(PolygonSeries { centre, radius, k })
    }

    /// `K_ij` for `j = 0 .. K_SIZE - i`.
    #[cfg(test)]
    fn row(&self, i: usize) -> &[f64] {
        &self.padded_row(i)[..K_SIZE - i]
    }

    /// Row `i` of `K` and what follows it in memory, `PADDED` entries in all.
    #[inline(always)]
    fn padded_row(&self, i: usize) -> &[f64; PADDED] {
        // Rows 0 .. i hold K_SIZE, K_SIZE - 1, ... entries: i K_SIZE - i (i - 1) / 2 in all.
        let start = i * (2 * K_SIZE + 1 - i) / 2;
        self.k[start..start + PADDED].try_into().expect("K is padded by PADDED entries")
    }

    /// Under `N(0, I)`, for the polygon moved by `-m` (whitened): `(log mass, E[w | P],
    /// E[w w^T | P])`, the moments only if `MOMENTS` (else NaN); `None` where the mean is too
    /// far for the series.
    pub(crate) fn moments<const MOMENTS: bool>(&self, m: [f64; 2]) -> Option<(f64, [f64; 2], [f64; 4])> {
        with_wide_vectors(SeriesAt::<MOMENTS> { series: self, m })
    }
}

/// [`PolygonSeries::moments`] compiled for the widest vectors (the compiler unrolls the fixed
/// rows with the sums in registers; rows written for vector lanes, masked by a product, were
/// slower: one of the moments' sums was kept in memory). Products and sums are separate
/// operations, so the bits are the same on every width.
struct SeriesAt<'a, const MOMENTS: bool> {
    series: &'a PolygonSeries,
    m: [f64; 2],
}

impl<const MOMENTS: bool> VectorKernel for SeriesAt<'_, MOMENTS> {
    type Output = Option<(f64, [f64; 2], [f64; 4])>;

    #[inline(always)]
    fn run<M: MulAdd>(self) -> Self::Output {
        let SeriesAt { series: this, m } = self;
        this.moments_here::<MOMENTS>(m)
    }
}

impl PolygonSeries {
    #[inline(always)]
    fn moments_here<const MOMENTS: bool>(&self, m: [f64; 2]) -> Option<(f64, [f64; 2], [f64; 4])> {
        let g = [m[0] - self.centre[0], m[1] - self.centre[1]];
        let reach = (g[0] * g[0] + g[1] * g[1]).sqrt() * self.radius;
        if reach.is_nan() || reach > MAX_REACH {
            return None;
        }
        // Every term of K, whatever the mean: the degree that the mean's reach needs would vary
        // from call to call, and the loops' lengths with it; fixed, they carry no branch (whose
        // mispredictions, one per row, cost more than the terms they skipped). The terms of
        // degree above what the reach needs only make the sums more accurate; the mass takes
        // them up to degree MAX_DEGREE + 2 like the moments, whose sums shift K by up to two.
        // g1^i / i! and g2^j / j!: the powers by four interleaved chains of products (one
        // chain of twenty cost its latency at every step), the factorials from a table.
        let (p1, p2) = (scaled_powers(g[0]), scaled_powers(g[1]));
        // Column sums over i first (`a[j] = sum_i K_ij p1[i]`, and the same with p1 moved by
        // one and two places for the moments in u1): element-wise over j, one padded row at a
        // time, no chain of dependent additions; then one dot product with p2 (moved the same
        // way) per sum.
        let (mut a, mut b, mut c) = ([0.0; PADDED], [0.0; PADDED], [0.0; PADDED]);
        for i in 0..K_SIZE {
            let row = self.padded_row(i);
            let (w, w1, w2) = (p1[i], if i >= 1 { p1[i - 1] } else { 0.0 }, if i >= 2 { p1[i - 2] } else { 0.0 });
            for j in 0..PADDED {
                // Beyond the row's end lies the next row (or the padding).
                let kij = if j < K_SIZE - i { row[j] } else { 0.0 };
                a[j] += kij * w;
                if MOMENTS {
                    b[j] += kij * w1;
                    c[j] += kij * w2;
                }
            }
        }
        let sums = if MOMENTS {
            let (q1, q2) = (shifted(&p2, 1), shifted(&p2, 2));
            [
                dot_padded(&a, &p2),
                dot_padded(&b, &p2),
                dot_padded(&a, &q1),
                dot_padded(&c, &p2),
                dot_padded(&b, &q1),
                dot_padded(&a, &q2),
            ]
        } else {
            [dot_padded(&a, &p2), 0.0, 0.0, 0.0, 0.0, 0.0]
        };
        let [f, f1, f2, f11, f12, f22] = sums;
        if f.is_nan() || f <= 0.0 {
            return None;
        }
        let log_mass = -2.0 * LN_SQRT_2PI - 0.5 * (g[0] * g[0] + g[1] * g[1]) + f.ln();
        if !MOMENTS {
            return Some((log_mass, [f64::NAN; 2], [f64::NAN; 4]));
        }
        // w = u - g, with E[u | P] = (f1, f2) / f and E[u u^T | P] = (f11, f12; f12, f22) / f.
        let eu = [f1 / f, f2 / f];
        let mean = [eu[0] - g[0], eu[1] - g[1]];
        let euu = [f11 / f, f12 / f, f12 / f, f22 / f];
        let mut second = [0.0; 4];
        for a in 0..2 {
            for b in 0..2 {
                second[2 * a + b] = euu[2 * a + b] - g[a] * eu[b] - eu[a] * g[b] + g[a] * g[b];
            }
        }
        Some((log_mass, mean, second))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slivers_and_large_polygons_get_no_series() {
        // Two edges of length 1.26 around an area of 6e-5: their terms cancel ~1e4-fold.
        let sliver = [
            [-3.5483201631653882, -1.3894553337384317],
            [-2.3626777972856736, -1.8206607798113932],
            [-2.362651441836852, -1.8205615563658146],
        ];
        assert!(PolygonSeries::new(&sliver).is_none());
        let triangle = [[0.0, 0.0], [0.5, 0.0], [0.2, 0.4]];
        let series = PolygonSeries::new(&triangle).unwrap();
        // K_00 is the area (0.1) weighted by e^{-|u|^2/2}, which lies in [e^{-r^2/2}, 1] with
        // r = 0.3 (the moments themselves are checked against a cubature in polygon.rs).
        let ratio = series.row(0)[0] / 0.1;
        assert!(ratio > (-0.045f64).exp() && ratio < 1.0, "{ratio}");
        let large = [[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]];
        assert!(PolygonSeries::new(&large).is_none());
    }
}
