//! The E-step's container: the statistics of every point, stored by point (CSR), filled batch
//! by batch in parallel and put in point order once.

use std::mem::MaybeUninit;
use std::sync::Mutex;

use nalgebra::DMatrixView;

use super::batching::{map_batches, map_interval_batches, map_pruned_batches};
use super::pruned;
use super::{interval, no_nan_log_likelihood, IntervalIntegrator, PointTerms, RegionAlgebra, RegionIntegrator};
use crate::cancel::Cancel;
use crate::error::Result;

/// E-step statistics, stored by point (CSR): for point n, entries `indptr[n]..indptr[n+1]`
/// hold the regions q that carry posterior mass, in increasing order, with
/// `m0 = P(q | x_n)`, `m1 = E[z 1_q | x_n]` (S each) and `m2 = E[z z^T 1_q | x_n]`
/// (S x S each, row-major).
#[derive(Clone, Debug)]
pub struct EStep {
    pub log_likelihood: Vec<f64>,
    pub indptr: Vec<usize>,
    pub region: Vec<usize>,
    pub m0: Vec<f64>,
    pub m1: Vec<f64>,
    pub m2: Vec<f64>,
}

/// An E-step batch reserves room for this many stored regions per point at most: enough for
/// the wide posteriors of small decoders, where growing the arrays cost a tenth of the E-step's
/// time in copies, and a bounded bet where posteriors are narrow.
const MAX_RESERVED_REGIONS: usize = 32;

impl EStep {
    pub(super) fn with_capacity(points: usize, regions_per_point: usize, s: usize) -> Self {
        let entries = points * regions_per_point;
        let mut indptr = Vec::with_capacity(points + 1);
        indptr.push(0);
        EStep {
            log_likelihood: Vec::with_capacity(points),
            indptr,
            region: Vec::with_capacity(entries),
            m0: Vec::with_capacity(entries),
            m1: Vec::with_capacity(entries * s),
            m2: Vec::with_capacity(entries * s * s),
        }
    }

    /// Appends one point's entries whose weight is stored (above [`MIN_WEIGHT`]).
    pub(super) fn push_point(&mut self, terms: &PointTerms, s: usize) {
        // The arrays grow with the data: a growth the memory cannot take stops the call with
        // `Memory` through its token (the batch is discarded) instead of aborting the process.
        let entries = terms.region.len();
        let room = crate::memory::try_reserve(&mut self.m2, entries * s * s, "the E-step's second moments")
            .and_then(|()| crate::memory::try_reserve(&mut self.m1, entries * s, "the E-step's first moments"))
            .and_then(|()| crate::memory::try_reserve(&mut self.m0, entries, "the E-step's weights"))
            .and_then(|()| crate::memory::try_reserve(&mut self.region, entries, "the E-step's regions"));
        if let Err(err) = room {
            crate::cancel::Cancel::current().fail(err);
            return;
        }
        self.log_likelihood.push(terms.log_likelihood);
        for k in in_region_order(&terms.region) {
            let w = terms.weight[k];
            if w > MIN_WEIGHT {
                self.region.push(terms.region[k]);
                self.m0.push(w);
                self.m1.extend(terms.mean[k * s..(k + 1) * s].iter().map(|v| w * v));
                self.m2.extend(terms.second[k * s * s..(k + 1) * s * s].iter().map(|v| w * v));
            }
        }
        self.indptr.push(self.region.len());
    }

    /// Room for `entries` more stored regions (latent dimension `s`).
    fn reserve(&mut self, entries: usize, s: usize) {
        self.region.reserve(entries);
        self.m0.reserve(entries);
        self.m1.reserve(entries * s);
        self.m2.reserve(entries * s * s);
    }

    /// As [`Self::push_point`] for the points of an S = 1 block (its first `points` lanes)
    /// that it did not decline.
    fn push_block(&mut self, block: &interval::Block, points: usize) {
        block.append(
            points,
            MIN_WEIGHT,
            &mut self.log_likelihood,
            &mut self.indptr,
            &mut self.region,
            &mut self.m0,
            &mut self.m1,
            &mut self.m2,
        );
    }

    /// The batches' points one after the other, in point order: each array allocated once and
    /// each entry written once, the batches in parallel. A batch that comes with `computed` has
    /// its statistics in the order computed, `computed[i]` the point of the `i`-th.
    pub(super) fn concat(mut batches: Vec<(EStep, Option<Vec<usize>>)>, s: usize) -> Result<EStep> {
        if let [(_, None)] = batches.as_slice() {
            return Ok(batches.pop().unwrap().0);
        }
        let points: usize = batches.iter().map(|(b, _)| b.log_likelihood.len()).sum();
        let entries: usize = batches.iter().map(|(b, _)| b.region.len()).sum();
        // The batches' arrays are held while these are filled: both must fit.
        let per_entry = (std::mem::size_of::<usize>() + 8 * (1 + s + s * s)) as u128;
        crate::memory::check(
            entries as u128 * per_entry + points as u128 * 24,
            &format!("the E-step's statistics of {points} points ({entries} region terms)"),
        )?;
        let mut out = EStep::with_capacity(points, 0, s);
        crate::memory::try_reserve(&mut out.region, entries, "the E-step's regions")?;
        crate::memory::try_reserve(&mut out.m0, entries, "the E-step's weights")?;
        crate::memory::try_reserve(&mut out.m1, entries * s, "the E-step's first moments")?;
        crate::memory::try_reserve(&mut out.m2, entries * s * s, "the E-step's second moments")?;
        {
            let mut rest = Destination {
                entry_offset: 0,
                log_likelihood: &mut out.log_likelihood.spare_capacity_mut()[..points],
                indptr: &mut out.indptr.spare_capacity_mut()[..points],
                region: &mut out.region.spare_capacity_mut()[..entries],
                m0: &mut out.m0.spare_capacity_mut()[..entries],
                m1: &mut out.m1.spare_capacity_mut()[..entries * s],
                m2: &mut out.m2.spare_capacity_mut()[..entries * s * s],
            };
            // Each destination taken once, by whichever thread fills that batch.
            let mut destinations = Vec::with_capacity(batches.len());
            for (batch, _) in &batches {
                let (head, tail) = rest.split(batch.log_likelihood.len(), batch.region.len(), s);
                destinations.push(Mutex::new(Some(head)));
                rest = tail;
            }
            crate::parallel::map(batches.len(), |i| {
                let destination = destinations[i].lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
                let (batch, computed) = &batches[i];
                destination.expect("each destination filled once").fill(batch, computed.as_deref(), s);
            });
        }
        // SAFETY: the batches' destinations tile the first `points`, `entries`, ... slots of
        // the spare capacities, and `fill` writes every slot of its destination.
        unsafe {
            out.log_likelihood.set_len(points);
            out.indptr.set_len(points + 1);
            out.region.set_len(entries);
            out.m0.set_len(entries);
            out.m1.set_len(entries * s);
            out.m2.set_len(entries * s * s);
        }
        Ok(out)
    }
}

/// Where one batch's statistics go in [`EStep::concat`]'s arrays: its points' and its entries'
/// slots, and the number of entries before them.
struct Destination<'a> {
    entry_offset: usize,
    log_likelihood: &'a mut [MaybeUninit<f64>],
    indptr: &'a mut [MaybeUninit<usize>],
    region: &'a mut [MaybeUninit<usize>],
    m0: &'a mut [MaybeUninit<f64>],
    m1: &'a mut [MaybeUninit<f64>],
    m2: &'a mut [MaybeUninit<f64>],
}

impl<'a> Destination<'a> {
    /// The slots of the first `points` points holding `entries` entries, and the rest.
    fn split(self, points: usize, entries: usize, s: usize) -> (Self, Self) {
        let (log_likelihood, rest_ll) = self.log_likelihood.split_at_mut(points);
        let (indptr, rest_indptr) = self.indptr.split_at_mut(points);
        let (region, rest_region) = self.region.split_at_mut(entries);
        let (m0, rest_m0) = self.m0.split_at_mut(entries);
        let (m1, rest_m1) = self.m1.split_at_mut(entries * s);
        let (m2, rest_m2) = self.m2.split_at_mut(entries * s * s);
        let head = Destination { entry_offset: self.entry_offset, log_likelihood, indptr, region, m0, m1, m2 };
        let rest = Destination {
            entry_offset: self.entry_offset + entries,
            log_likelihood: rest_ll,
            indptr: rest_indptr,
            region: rest_region,
            m0: rest_m0,
            m1: rest_m1,
            m2: rest_m2,
        };
        (head, rest)
    }

    /// Writes `batch` (in the order `computed`, if given) in point order: every slot.
    fn fill(self, batch: &EStep, computed: Option<&[usize]>, s: usize) {
        let n = batch.log_likelihood.len();
        let mut position: Vec<usize> = (0..n).collect();
        if let Some(computed) = computed {
            for (i, &p) in computed.iter().enumerate() {
                position[p] = i;
            }
        }
        let mut cursor = 0;
        for (p, &i) in position.iter().enumerate() {
            let (first, end) = (batch.indptr[i], batch.indptr[i + 1]);
            let next = cursor + end - first;
            self.log_likelihood[p].write(batch.log_likelihood[i]);
            write_all(&mut self.region[cursor..next], &batch.region[first..end]);
            write_all(&mut self.m0[cursor..next], &batch.m0[first..end]);
            write_all(&mut self.m1[cursor * s..next * s], &batch.m1[first * s..end * s]);
            write_all(&mut self.m2[cursor * s * s..next * s * s], &batch.m2[first * s * s..end * s * s]);
            self.indptr[p].write(self.entry_offset + next);
            cursor = next;
        }
        assert_eq!(cursor, self.region.len(), "a batch's entries fill its slots");
    }
}

/// Copies `source` into `destination` (`write_copy_of_slice`, which needs Rust 1.93).
fn write_all<T: Copy>(destination: &mut [MaybeUninit<T>], source: &[T]) {
    for (slot, &value) in destination.iter_mut().zip(source) {
        slot.write(value);
    }
}

/// The positions of visited regions (as `visit_regions` orders them) in increasing region
/// order: the first visited is the only one out of order.
fn in_region_order(visited: &[usize]) -> impl Iterator<Item = usize> {
    let n = visited.len();
    let first = visited.first().copied().unwrap_or(0);
    let before = visited.get(1..).map_or(0, |rest| rest.partition_point(|&q| q < first));
    (1..=before).chain((n > 0).then_some(0)).chain(before + 1..n)
}

/// Posterior weights below this are not stored (they are below `exp(-PRUNE_GAP)` relative to
/// the largest term, or underflow).
const MIN_WEIGHT: f64 = 1e-300;

pub fn e_step<I: RegionIntegrator>(
    algebra: &RegionAlgebra,
    integrator: &I,
    x: DMatrixView<f64>,
    cancel: &Cancel,
) -> Result<EStep> {
    let out = integrator.e_step_batch(algebra, x, cancel)?;
    no_nan_log_likelihood(&out.log_likelihood)?;
    Ok(out)
}

/// Each batch's statistics and scratch for one point's terms.
fn start_batch(algebra: &RegionAlgebra, points: usize) -> (EStep, PointTerms) {
    (EStep::with_capacity(points, algebra.n_regions().min(MAX_RESERVED_REGIONS), algebra.s), PointTerms::default())
}

/// One point region by region, in log space (where the interval path declined or does not
/// apply).
fn push_by_regions<I: RegionIntegrator>(
    integrator: &I,
    s: usize,
    (out, terms): &mut (EStep, PointTerms),
    lk: &[f64],
    mu: &[f64],
) {
    terms.compute_by_regions(integrator, lk, mu, s);
    out.push_point(terms, s);
}

/// [`e_step`] on the S = 1 interval path: blocks of points in linear space, and the points a
/// block declines through the per-region methods.
pub(super) fn e_step_on_intervals(
    algebra: &RegionAlgebra,
    integrator: &IntervalIntegrator,
    x: DMatrixView<f64>,
    cancel: &Cancel,
) -> Result<EStep> {
    let s = algebra.s;
    // The blocks take the points out of order: each batch's statistics are stored in the
    // order computed, with the point of each, and put in point order at the end.
    // Room for one more block: a block grows the arrays by all its computed regions before
    // it keeps some, and growing them at the last block of a batch would copy the batch.
    let start = |points| {
        let (mut stats, terms) = start_batch(algebra, points);
        stats.reserve(interval::LANES * algebra.n_regions(), 1);
        ((stats, terms), Vec::with_capacity(points))
    };
    let batches = map_interval_batches::<_, true>(
        algebra,
        integrator.intervals(),
        x,
        cancel,
        start,
        |(state, computed), block, points, local| {
            state.0.push_block(block, points.len());
            computed.extend(points.iter().enumerate().filter(|&(l, _)| !block.declined(l)).map(|(_, &p)| p));
            // The declined points after the others, in the log-space path.
            for (_, &p) in points.iter().enumerate().filter(|&(l, _)| block.declined(l)) {
                let (lk, mu) = local(p);
                push_by_regions(integrator, s, state, &lk, &mu);
                computed.push(p);
            }
        },
    )?;
    EStep::concat(batches.into_iter().map(|((stats, _), computed)| (stats, Some(computed))).collect(), s)
}

/// [`e_step`] through the per-region methods: for S >= 2 by the pruned visit, for S = 1 (test
/// integrators) from the forms of `local_gaussians`.
pub(super) fn e_step_through_regions<I: RegionIntegrator>(
    algebra: &RegionAlgebra,
    integrator: &I,
    x: DMatrixView<f64>,
    cancel: &Cancel,
) -> Result<EStep> {
    let s = algebra.s;
    let start = |points| start_batch(algebra, points);
    let batches = if s == 1 {
        let per_point =
            |state: &mut (EStep, PointTerms), lk: &[f64], mu: &[f64]| push_by_regions(integrator, s, state, lk, mu);
        map_batches(algebra, x, cancel, start, per_point)?.into_iter().map(|(stats, _)| (stats, None)).collect()
    } else {
        let forms = pruned::UpperForms::new(algebra);
        let start = |points| (start(points), pruned::PointRegions::default());
        let per_point = |((out, terms), regions): &mut ((EStep, PointTerms), pruned::PointRegions),
                         batch: &mut pruned::PrunedBatch,
                         p: usize| {
            terms.compute_pruned(integrator, batch, p, regions);
            out.push_point(terms, s);
        };
        map_pruned_batches(algebra, &forms, x, cancel, start, per_point)?
            .into_iter()
            .map(|((stats, _), _)| (stats, None))
            .collect()
    };
    EStep::concat(batches, s)
}
