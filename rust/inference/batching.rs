//! Batching of points for inference: the columns of `x` cut into batches that run in parallel
//! and share their matrix products, and for S = 1 the batches' points grouped into blocks of
//! vector lanes by the region of their largest bound.

use nalgebra::DMatrixView;

use super::{interval, pruned, RegionAlgebra};
use crate::cancel::Cancel;
use crate::error::Result;

/// Up to this many outputs, the S = 1 path's blocks form their points' local Gaussians from the
/// points (`A^T Psi^-1 x` as `D` products per region) rather than gathering them from matrix
/// products computed and stored for the batch.
const FEW_OUTPUTS: usize = 16;

/// Points per batch of the matrix products: at most tens of megabytes of `n x R x S` buffers,
/// and enough batches (four per thread) to keep every thread busy.
fn batch_size(n: usize, r: usize, s: usize) -> usize {
    let memory_bound = (2_000_000 / (r * (s + 1)).max(1)).max(1);
    let balance_bound = n.div_ceil(4 * crate::parallel::current_num_threads()).max(16);
    memory_bound.min(balance_bound).min(4096)
}

/// Runs `per_batch(points)` for the columns of `x` (`D x N`) in parallel batches, and returns
/// the batches' results in point order. Each batch is copied into the engine's frame
/// ([`RegionAlgebra::centred`]) first.
pub(super) fn over_batches<T: Send + 'static>(
    x: DMatrixView<f64>,
    algebra: &RegionAlgebra,
    cancel: &Cancel,
    per_batch: impl Fn(DMatrixView<f64>) -> T + Sync,
) -> Result<Vec<T>> {
    let n = x.ncols();
    let batch = batch_size(n, algebra.n_regions(), algebra.s);
    let chunks: Vec<(usize, usize)> = (0..n).step_by(batch).map(|a| (a, (a + batch).min(n))).collect();
    crate::parallel::map(chunks.len(), |i| {
        let (first, end) = chunks[i];
        cancel.check()?;
        // The region integrals check the token as the call's current one, and record their
        // failures in it; a batch they cut short is discarded here.
        let points = algebra.centred(x.columns(first, end - first));
        let out = cancel.enter(|| per_batch(points.as_view()));
        cancel.check()?;
        Ok(out)
    })
    .into_iter()
    .collect()
}

/// Runs `per_point(state, log_kappa, mu)` for every column of `x` (`D x N`), in parallel
/// batches that share their matrix products; each batch starts from `start(points)` (its results
/// and scratch buffers, reused across its points), and the batches come back in point order.
pub(super) fn map_batches<T: Send + 'static>(
    algebra: &RegionAlgebra,
    x: DMatrixView<f64>,
    cancel: &Cancel,
    start: impl Fn(usize) -> T + Sync,
    per_point: impl Fn(&mut T, &[f64], &[f64]) + Sync,
) -> Result<Vec<T>> {
    over_batches(x, algebra, cancel, |points| {
        let local = algebra.local_gaussians(points);
        let mut state = start(points.ncols());
        let cancel = Cancel::current();
        for p in 0..points.ncols() {
            // Stopped: the batch is discarded (`over_batches`), so the rest is not computed.
            if cancel.is_cancelled() {
                break;
            }
            let (lk, mu) = local.point(p);
            per_point(&mut state, lk, mu);
        }
        state
    })
}

/// As [`map_batches`] for S >= 2, through [`pruned`] (which forms `log kappa` as
/// `local_gaussians` does there): `per_point(state, batch, p)` for every point `p` of each
/// batch, whose regions it visits with `pruned::visit_regions_pruned`.
pub(super) fn map_pruned_batches<T: Send + 'static>(
    algebra: &RegionAlgebra,
    forms: &pruned::UpperForms,
    x: DMatrixView<f64>,
    cancel: &Cancel,
    start: impl Fn(usize) -> T + Sync,
    per_point: impl Fn(&mut T, &mut pruned::PrunedBatch, usize) + Sync,
) -> Result<Vec<T>> {
    over_batches(x, algebra, cancel, |points| {
        let mut batch = pruned::PrunedBatch::new(algebra, forms, points);
        let mut state = start(points.ncols());
        let cancel = Cancel::current();
        for p in 0..batch.len() {
            // Stopped: the batch is discarded (`over_batches`), so the rest is not computed.
            if cancel.is_cancelled() {
                break;
            }
            per_point(&mut state, &mut batch, p);
        }
        state
    })
}

/// Where the points of a batch's first block count this fraction of the regions on average,
/// the S = 1 path leaves the batch's points in their order (see [`map_interval_batches`]).
const UNORDERED_FRACTION: f64 = 0.9;

/// `offset + p` for the points `p` ordered by `best[p]`, their regions (a counting sort: by
/// index within one region).
fn by_region(best: &[usize], offset: usize, regions: usize) -> Vec<usize> {
    let mut start = vec![0; regions + 1];
    for &q in best {
        start[q + 1] += 1;
    }
    for q in 0..regions {
        start[q + 1] += start[q];
    }
    let mut order = vec![0; best.len()];
    for (p, &q) in best.iter().enumerate() {
        order[start[q]] = offset + p;
        start[q] += 1;
    }
    order
}

/// As [`map_batches`] for the S = 1 interval path: each batch's points go through
/// [`interval::Block`]s, points whose best bounds lie in the same region together (they visit
/// about the same regions, and their ends fall in the same ranges of the tail forms), and
/// `per_block(state, block, points, local)` takes the results of the block's `points` (indices
/// into the batch), with the batch's values for the points the block declines. With a few
/// outputs the batch's first block takes its first points as they come, and where they counted
/// nearly every region ([`UNORDERED_FRACTION`]: posteriors wide against the regions), the rest
/// follow as they come too: ordering them would save a block little, and costs a tenth of the
/// time where the outputs are few.
pub(super) fn map_interval_batches<T: Send + 'static, const MOMENTS: bool>(
    algebra: &RegionAlgebra,
    intervals: &interval::Intervals,
    x: DMatrixView<f64>,
    cancel: &Cancel,
    start: impl Fn(usize) -> T + Sync,
    per_block: impl Fn(&mut T, &interval::Block, &[usize], &dyn Fn(usize) -> (Vec<f64>, Vec<f64>)) + Sync,
) -> Result<Vec<T>> {
    over_batches(x, algebra, cancel, |points| {
        let (n, r) = (points.ncols(), algebra.n_regions());
        let (stored, best) = if algebra.d > FEW_OUTPUTS {
            let (stored, best) = algebra.local_gaussians_and_best_regions_s1(points, intervals);
            (Some(stored), Some(best))
        } else {
            (None, None)
        };
        let local = match &stored {
            Some(stored) => interval::Local::Stored { log_kappa: &stored.log_kappa, mu: &stored.mu },
            None => interval::Local::Formed(algebra.s1_forms(points)),
        };
        // A point's values for the log-space path, where a block declines it (rare).
        let point = |p: usize| match &stored {
            Some(stored) => {
                let (lk, mu) = stored.point(p);
                (lk.to_vec(), mu.to_vec())
            }
            None => {
                let one = algebra.local_gaussians(points.columns(p, 1));
                (one.log_kappa, one.mu)
            }
        };
        let mut state = start(n);
        let mut block = interval::Block::default();
        let order = match best {
            Some(best) => by_region(&best, 0, r),
            None => {
                let first: Vec<usize> = (0..n.min(interval::LANES)).collect();
                block.evaluate::<MOMENTS>(intervals, &local, &first);
                per_block(&mut state, &block, &first, &point);
                let rest = first.len()..n;
                if block.counted_fraction() >= UNORDERED_FRACTION {
                    rest.collect()
                } else {
                    by_region(
                        &intervals.best_regions(&algebra.s1_forms(points.columns(rest.start, rest.len()))),
                        rest.start,
                        r,
                    )
                }
            }
        };
        for chunk in order.chunks(interval::LANES) {
            block.evaluate::<MOMENTS>(intervals, &local, chunk);
            per_block(&mut state, &block, chunk, &point);
        }
        state
    })
}
