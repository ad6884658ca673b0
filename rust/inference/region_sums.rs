//! Per-region sums of the E-step's statistics: all that the M-step needs from the data
//! (docs/design.md, the M-step), accumulated block of points by block of points so that memory
//! stays bounded whatever N.
//!
//! For region q, with `w = P(q | x_n)`, `e = E[z 1_q | x_n]` (S), `E = E[z z^T 1_q | x_n]` (S x S)
//! and the points taken about a centre `c` (a translation: the M-step's sums lose no digits to a
//! large common offset of the data), the sums over the points are
//! `s0 = sum w`, `s1 = sum e`, `s2 = sum E`, `sx0 = sum w (x - c)` (D), `sx1 = sum (x - c) e^T`
//! (D x S), and per coordinate `sum_x2 = sum (x - c)^2`.
//!
//! A block's (point, region) entries are sorted by region (stably: in point order within one),
//! and each region's sums over the block are formed in registers, [`TILE`] coordinates at a
//! time, then added to the totals once: the totals are read and written once per region and
//! block, not once per entry, and nothing of size N x R x D is formed. The tiles of coordinates
//! run in parallel. Every value is a sum in one fixed order (blocks in order; within a block, a
//! region's entries in point order, added to the total as one term), so the result does not
//! depend on the thread count or the processor's vectors (no product is fused).

use nalgebra::DMatrixView;

use super::EStep;
use crate::gauss::normal_batch::{with_wide_vectors, MulAdd, VectorKernel};

/// Coordinates per task: the sums of one region over one tile are `(1 + S) x TILE` values, kept
/// in registers (eight AVX-512 vectors at S = 1) while the region's entries stream by.
const TILE: usize = 32;

/// Bytes a default block of rows may take, its copy of the rows and its E-step statistics
/// together (see [`default_block_rows`]).
const BLOCK_BYTES: usize = 32 << 20;

/// Rows per block when the caller does not say: about [`BLOCK_BYTES`] for the rows and their
/// statistics (counting at most 256 stored regions per row, a bound that wide posteriors rarely
/// reach), at least 256 rows and at most 65536. Depends only on the shapes, so the sums' order
/// of addition, hence their bits, do not depend on the machine.
pub fn default_block_rows(d: usize, regions: usize, s: usize) -> usize {
    let per_row = 8 * (d + regions.min(256) * (2 + s + s * s));
    (BLOCK_BYTES / per_row.max(1)).clamp(256, 1 << 16)
}

/// The per-region sums of the E-step statistics over the points added so far.
#[derive(Clone, Debug)]
pub struct RegionSums {
    pub regions: usize,
    pub s: usize,
    pub d: usize,
    pub n_points: usize,
    /// `R`.
    pub s0: Vec<f64>,
    /// `R x S`.
    pub s1: Vec<f64>,
    /// `R x S x S`.
    pub s2: Vec<f64>,
    /// `R x D`.
    pub sx0: Vec<f64>,
    /// `R x S x D`: component by component, each a row of D (see [`Self::sx1_by_output`]).
    pub sx1: Vec<f64>,
    /// `D`.
    pub sum_x2: Vec<f64>,
}

/// A block's entries sorted by region: for region q the entries `start[q]..start[q + 1]`, each
/// with its point and its `1 + S` weights `[w, e_1, ..., e_S]`.
struct ByRegion {
    start: Vec<usize>,
    point: Vec<usize>,
    weights: Vec<f64>,
}

impl RegionSums {
    /// Zero sums over `regions` regions, latent dimension `s`, `d` outputs.
    pub fn new(regions: usize, s: usize, d: usize) -> Self {
        RegionSums {
            regions,
            s,
            d,
            n_points: 0,
            s0: vec![0.0; regions],
            s1: vec![0.0; regions * s],
            s2: vec![0.0; regions * s * s],
            sx0: vec![0.0; regions * d],
            sx1: vec![0.0; regions * s * d],
            sum_x2: vec![0.0; d],
        }
    }

    /// `sx1` as `R x D x S` (the statistic's own layout, `sum (x - c) e^T` per region).
    pub fn sx1_by_output(&self) -> Vec<f64> {
        let (r, s, d) = (self.regions, self.s, self.d);
        let mut out = vec![0.0; r * d * s];
        for q in 0..r {
            for j in 0..s {
                for i in 0..d {
                    out[(q * d + i) * s + j] = self.sx1[(q * s + j) * d + i];
                }
            }
        }
        out
    }

    /// Adds the statistics `estep` of the points `x` (`D x n`, a column per point, in the
    /// E-step's order) about `centre`.
    ///
    /// # Panics
    /// If the shapes disagree (the E-step of other points, another model or another centre's
    /// length): a caller's error, not the data's.
    pub fn add(&mut self, estep: &EStep, x: DMatrixView<f64>, centre: &[f64]) {
        let (r, s, d, n) = (self.regions, self.s, self.d, x.ncols());
        assert_eq!(x.nrows(), d, "the points have D rows");
        assert_eq!(centre.len(), d, "the centre has D entries");
        assert_eq!(estep.indptr.len(), n + 1, "the E-step is of these points");
        // The latent statistics' sums over the block, each region's in point order (the
        // E-step's layout), then added to the totals.
        let (mut m0, mut m1, mut m2) = (vec![0.0; r], vec![0.0; r * s], vec![0.0; r * s * s]);
        for (k, &q) in estep.region.iter().enumerate() {
            m0[q] += estep.m0[k];
            for (t, v) in m1[q * s..(q + 1) * s].iter_mut().zip(&estep.m1[k * s..(k + 1) * s]) {
                *t += v;
            }
            for (t, v) in m2[q * s * s..(q + 1) * s * s].iter_mut().zip(&estep.m2[k * s * s..(k + 1) * s * s]) {
                *t += v;
            }
        }
        for (total, part) in [(&mut self.s0, &m0), (&mut self.s1, &m1), (&mut self.s2, &m2)] {
            for (t, v) in total.iter_mut().zip(part) {
                *t += v;
            }
        }
        let sorted = Self::by_region(estep, r, s);
        let tiles = d.div_ceil(TILE);
        let parts = crate::parallel::map(tiles, |t| {
            let first = t * TILE;
            let width = TILE.min(d - first);
            with_wide_vectors(TileSums { x, centre, first, width, sorted: &sorted, regions: r, s })
        });
        for (t, (sums, squares)) in parts.into_iter().enumerate() {
            let first = t * TILE;
            let width = TILE.min(d - first);
            for (total, v) in self.sum_x2[first..first + width].iter_mut().zip(&squares) {
                *total += v;
            }
            for q in 0..r {
                let region = &sums[q * (1 + s) * TILE..(q + 1) * (1 + s) * TILE];
                for (total, v) in self.sx0[q * d + first..q * d + first + width].iter_mut().zip(&region[..TILE]) {
                    *total += v;
                }
                for j in 0..s {
                    let row = (q * s + j) * d + first;
                    for (total, v) in self.sx1[row..row + width].iter_mut().zip(&region[(1 + j) * TILE..(2 + j) * TILE])
                    {
                        *total += v;
                    }
                }
            }
        }
        self.n_points += n;
    }

    /// A counting sort of the entries by region, stable.
    fn by_region(estep: &EStep, r: usize, s: usize) -> ByRegion {
        let entries = estep.region.len();
        let mut start = vec![0usize; r + 1];
        for &q in &estep.region {
            start[q + 1] += 1;
        }
        for q in 0..r {
            start[q + 1] += start[q];
        }
        let mut next = start.clone();
        let (mut point, mut weights) = (vec![0usize; entries], vec![0.0; entries * (1 + s)]);
        for p in 0..estep.indptr.len() - 1 {
            for k in estep.indptr[p]..estep.indptr[p + 1] {
                let q = estep.region[k];
                let slot = next[q];
                next[q] += 1;
                point[slot] = p;
                weights[slot * (1 + s)] = estep.m0[k];
                weights[slot * (1 + s) + 1..(slot + 1) * (1 + s)].copy_from_slice(&estep.m1[k * s..(k + 1) * s]);
            }
        }
        ByRegion { start, point, weights }
    }
}

/// The sums of one tile of coordinates `first..first + width` over a block: per region, `1 + S`
/// rows of [`TILE`] values (`sum w (x - c)`, then `sum e_j (x - c)`), and per coordinate
/// `sum (x - c)^2`.
struct TileSums<'a> {
    x: DMatrixView<'a, f64>,
    centre: &'a [f64],
    first: usize,
    width: usize,
    sorted: &'a ByRegion,
    regions: usize,
    s: usize,
}

impl VectorKernel for TileSums<'_> {
    type Output = (Vec<f64>, Vec<f64>);

    #[inline(always)]
    fn run<M: MulAdd>(self) -> (Vec<f64>, Vec<f64>) {
        let TileSums { x, centre, first, width, sorted, regions, s } = self;
        let n = x.ncols();
        // The tile's centred coordinates, point by point (zero beyond D), and their squares'
        // sums in point order.
        let mut tile = vec![Row([0.0; TILE]); n];
        let mut squares = vec![0.0; width];
        for (p, row) in tile.iter_mut().enumerate() {
            let column = &x.column(p);
            for l in 0..width {
                let v = column[first + l] - centre[first + l];
                row.0[l] = v;
                squares[l] += v * v;
            }
        }
        let mut sums = vec![0.0; regions * (1 + s) * TILE];
        for q in 0..regions {
            let entries = sorted.start[q]..sorted.start[q + 1];
            let out = &mut sums[q * (1 + s) * TILE..(q + 1) * (1 + s) * TILE];
            match s {
                1 => region_tile::<2>(&tile, sorted, entries, out),
                2 => region_tile::<3>(&tile, sorted, entries, out),
                3 => region_tile::<4>(&tile, sorted, entries, out),
                _ => {
                    for k in entries {
                        let row = &tile[sorted.point[k]];
                        for (c, &w) in sorted.weights[k * (1 + s)..(k + 1) * (1 + s)].iter().enumerate() {
                            for l in 0..TILE {
                                out[c * TILE + l] += w * row.0[l];
                            }
                        }
                    }
                }
            }
        }
        (sums, squares)
    }
}

/// One region's `C = 1 + S` rows of sums over its entries of a tile, in registers: plain
/// products and sums (the same bits on every processor).
#[inline(always)]
fn region_tile<const C: usize>(tile: &[Row], sorted: &ByRegion, entries: std::ops::Range<usize>, out: &mut [f64]) {
    let mut acc = [Row([0.0; TILE]); C];
    for k in entries {
        let row = tile[sorted.point[k]];
        let w: [f64; C] = std::array::from_fn(|c| sorted.weights[k * C + c]);
        for c in 0..C {
            for l in 0..TILE {
                acc[c].0[l] += w[c] * row.0[l];
            }
        }
    }
    for c in 0..C {
        out[c * TILE..(c + 1) * TILE].copy_from_slice(&acc[c].0);
    }
}

/// A tile's coordinates of one point, aligned to cache lines (whole vectors).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Row([f64; TILE]);

#[cfg(test)]
mod tests {
    use super::*;

    /// A made-up E-step of `n` points: each stores a few regions, increasing, with weights and
    /// moments of either sign.
    fn made_up(n: usize, r: usize, s: usize, seed: u64) -> EStep {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut es =
            EStep { log_likelihood: vec![], indptr: vec![0], region: vec![], m0: vec![], m1: vec![], m2: vec![] };
        for _ in 0..n {
            for q in 0..r {
                if next() < 0.4 {
                    es.region.push(q);
                    es.m0.push(next());
                    es.m1.extend((0..s).map(|_| next() - 0.5));
                    es.m2.extend((0..s * s).map(|_| next()));
                }
            }
            es.indptr.push(es.region.len());
            es.log_likelihood.push(-next());
        }
        es
    }

    #[test]
    fn sums_match_the_sums_written_out_and_do_not_depend_on_the_threads() {
        for (s, d) in [(1, 3), (1, 70), (2, 33), (3, 5), (4, 40)] {
            let (n, r) = (57, 9);
            let es = made_up(n, r, s, 7 + s as u64);
            let x: Vec<f64> = (0..n * d).map(|k| ((k * 37 % 101) as f64 - 50.0) * 0.37 + 1e3).collect();
            let centre: Vec<f64> = (0..d).map(|i| 1e3 + i as f64 * 0.01).collect();
            let view = DMatrixView::from_slice(&x, d, n);
            let mut sums = RegionSums::new(r, s, d);
            sums.add(&es, view, &centre);
            // Written out: every entry's terms added one at a time, with the scale of each sum
            // (the sum of absolute values) for the tolerance: a sum of n terms in another order
            // differs by at most ~n u times that scale.
            let (mut sx0, mut sx1, mut scale0, mut scale1) =
                (vec![0.0; r * d], vec![0.0; r * d * s], vec![0.0; r * d], vec![0.0; r * d * s]);
            let (mut s2, mut scale2) = (vec![0.0; r * s * s], vec![0.0; r * s * s]);
            for p in 0..n {
                for k in es.indptr[p]..es.indptr[p + 1] {
                    let q = es.region[k];
                    for t in 0..s * s {
                        s2[q * s * s + t] += es.m2[k * s * s + t];
                        scale2[q * s * s + t] += es.m2[k * s * s + t].abs();
                    }
                    for i in 0..d {
                        let xc = x[p * d + i] - centre[i];
                        sx0[q * d + i] += es.m0[k] * xc;
                        scale0[q * d + i] += (es.m0[k] * xc).abs();
                        for j in 0..s {
                            sx1[(q * d + i) * s + j] += es.m1[k * s + j] * xc;
                            scale1[(q * d + i) * s + j] += (es.m1[k * s + j] * xc).abs();
                        }
                    }
                }
            }
            let tolerance = 4.0 * n as f64 * f64::EPSILON;
            for ((a, b), c) in sums.sx0.iter().zip(&sx0).zip(&scale0) {
                assert!((a - b).abs() <= tolerance * c, "{a} {b}");
            }
            for ((a, b), c) in sums.sx1_by_output().iter().zip(&sx1).zip(&scale1) {
                assert!((a - b).abs() <= tolerance * c, "{a} {b}");
            }
            for ((a, b), c) in sums.s2.iter().zip(&s2).zip(&scale2) {
                assert!((a - b).abs() <= tolerance * c, "{a} {b}");
            }
            let s0: f64 = es.m0.iter().sum();
            assert!((sums.s0.iter().sum::<f64>() - s0).abs() <= tolerance * s0);
            for i in 0..d {
                let squares: f64 = (0..n).map(|p| (x[p * d + i] - centre[i]).powi(2)).sum();
                assert!((sums.sum_x2[i] - squares).abs() <= tolerance * squares);
            }
            assert_eq!(sums.n_points, n);
            // The same sums on one thread: the same bits.
            let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            let mut alone = RegionSums::new(r, s, d);
            pool.install(|| alone.add(&es, view, &centre));
            assert_eq!(alone.sx0, sums.sx0);
            assert_eq!(alone.sx1, sums.sx1);
            assert_eq!(alone.s2, sums.s2);
            assert_eq!(alone.sum_x2, sums.sum_x2);
        }
    }
}
