//! The partition of latent space into the regions on which the decoder is affine
//! (docs/design.md §2): exact and complete on all of R^S, by layer-wise refinement.
//!
//! Each cell carries the affine map of its current layer's pre-activations. A hidden unit whose
//! hyperplane cuts the cell's interior splits it in two; otherwise the unit's sign is constant
//! on the cell. A cell exists only if it is full-dimensional: it contains a ball of radius
//! greater than the tolerance of [`Tolerance`] (so a sliver thinner than that is never counted
//! half: its side is decided once, by the cut that would have made it).
//!
//! The geometry is specialised by dimension: intervals for S = 1, exact convex-polygon clipping
//! in homogeneous coordinates for S = 2 (unbounded cells included), and H-representations with
//! Chebyshev-ball LPs for S >= 3.

mod interval;
pub mod lp;
mod polygon;
mod polyhedron;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use nalgebra::{DMatrix, DVector};

use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::model::Decoder;

pub use interval::Interval;
pub use polygon::Polygon;
pub(crate) use polyhedron::complement_basis;
pub use polyhedron::Polyhedron;

/// Distances below `abs + rel * |z|` are treated as zero: a cell must contain a ball of at
/// least that radius around its witness point to count as full-dimensional.
pub use crate::linalg::Tolerance;

/// A unit-normal hyperplane constraint `normal . z <= offset` contributed by hidden unit `unit`.
#[derive(Clone, Debug, PartialEq)]
pub struct Facet {
    pub normal: Vec<f64>,
    pub offset: f64,
    pub unit: usize,
    /// A point in the relative interior of the facet (used to step across it).
    pub point: Vec<f64>,
}

/// What a cut by the hyperplane `{a . z + c = 0}` does to a cell.
pub enum Cut<C> {
    /// The cell lies on the side `a . z + c >= 0`: the unit is on throughout.
    On,
    /// The cell lies on the side `a . z + c <= 0`: the unit is off throughout.
    Off,
    /// Both open sides meet the interior: the two pieces.
    Split { on: C, off: C },
}

/// The geometry of a cell, specialised per latent dimension.
pub trait Cell: Sized + Send + Sync {
    fn whole_space(s: usize) -> Self;
    /// `a` has unit length; `unit` identifies the hidden unit for the facet bookkeeping.
    fn cut(&mut self, a: &[f64], c: f64, unit: usize, tol: &Tolerance) -> Cut<Self>;
    /// A point strictly inside, far from the boundary relative to the tolerance.
    fn interior_point(&self) -> Vec<f64>;
    /// Called when a layer is done: before the next layer's units cut the cell (`more_cuts`),
    /// or before it becomes a region. A cell may tighten its bookkeeping here (a better
    /// witness point; a bounding box when more cuts follow).
    fn settle(&mut self, _more_cuts: bool) {}
    fn into_shape(self) -> Shape;
}

/// The final geometry of a region as enumeration leaves it.
#[derive(Clone, Debug)]
pub enum Shape {
    /// The facets are known exactly (S = 1, 2).
    Exact { facets: Vec<Facet>, bounded: bool },
    /// An H-representation that may hold redundant rows (S >= 3); reduced on demand by LP.
    Candidates(Polyhedron),
}

/// The affine pre-activations `P z + c` of one hidden layer inside one cell.
#[derive(Clone, Debug)]
struct LayerMap {
    p: DMatrix<f64>,
    c: DVector<f64>,
}

/// A region as enumerated, before the batched output maps.
struct Leaf {
    pattern: Box<[u64]>,
    interior: Vec<f64>,
    shape: Shape,
    /// `Dg_{L-1} [P_{L-1} | c_{L-1}]`: the last hidden layer's post-activation map.
    last_hidden: Option<DMatrix<f64>>,
}

/// Every full-dimensional region of the decoder's partition, in a deterministic order.
pub struct Partition {
    decoder: Arc<Decoder>,
    tol: Tolerance,
    patterns: Vec<Box<[u64]>>,
    interior: Vec<Vec<f64>>,
    shapes: Vec<Shape>,
    /// `(R, D, S)` row-major: `A_q` of region `q`.
    a: Vec<f64>,
    /// `(R, D)` row-major.
    b: Vec<f64>,
    index: OnceLock<HashMap<Box<[u64]>, usize>>,
    facets: Vec<OnceLock<Vec<Facet>>>,
}

fn words_for(h: usize) -> usize {
    h.div_ceil(64).max(1)
}

#[inline]
fn set_bit(words: &mut [u64], k: usize, on: bool) {
    if on {
        words[k / 64] |= 1 << (k % 64);
    } else {
        words[k / 64] &= !(1 << (k % 64));
    }
}

#[inline]
pub fn get_bit(words: &[u64], k: usize) -> bool {
    words[k / 64] >> (k % 64) & 1 == 1
}

/// Packs a boolean pattern into the bit words used as region keys.
pub fn pack_pattern(bits: impl IntoIterator<Item = bool>, h: usize) -> Box<[u64]> {
    let mut words = vec![0u64; words_for(h)].into_boxed_slice();
    for (k, on) in bits.into_iter().enumerate() {
        set_bit(&mut words, k, on);
    }
    words
}

struct Enumeration<'a> {
    decoder: &'a Decoder,
    tol: Tolerance,
    cancel: &'a Cancel,
    max_regions: usize,
    /// Cells created so far: the whole space, plus one per split. Cells only split, and each
    /// ends as one region, so this never exceeds the final count and reaches it at the end:
    /// the limit fires as soon as it is certain to be exceeded, in time proportional to it.
    found: AtomicUsize,
    /// The bytes each region will hold (see [`region_bytes`]).
    region_bytes: usize,
}

/// Regions between two checks of the memory they will need.
const MEMORY_CHECK_EVERY: usize = 1 << 12;

/// A region's share of the partition's peak memory: its pattern, interior point and cell, the
/// last hidden layer's map it holds until the output maps are formed (`width x (S + 1)`: 24 kB
/// a region at width 1000), its affine output map (`A_q`, `b_q`), and its facets once asked
/// for (counted at a dozen of S + 1 numbers, where a region of a wide network has a few dozen:
/// an estimate, not a bound).
fn region_bytes(decoder: &Decoder) -> usize {
    let (s, d, h) = (decoder.latent_dim(), decoder.output_dim(), decoder.n_hidden());
    let last_width = decoder.weights().last().map_or(0, |w| w.ncols());
    8 * (words_for(h) + s + last_width * (s + 1) + d * (s + 1) + 12 * (s + 1) + 2 * (s + 1) * 4) + 128
}

impl<'a> Enumeration<'a> {
    fn first_map(&self) -> LayerMap {
        LayerMap { p: self.decoder.weights()[0].clone(), c: self.decoder.biases()[0].clone() }
    }

    /// `Dg [P | c]` for a finished layer: the post-activation as an affine map of z.
    fn post_activation(&self, map: &LayerMap, layer: usize, pattern: &[u64]) -> DMatrix<f64> {
        let s = self.decoder.latent_dim();
        let slope = self.decoder.slopes()[layer];
        let offset = self.decoder.unit_offset(layer);
        let mut post = DMatrix::zeros(map.p.nrows(), s + 1);
        for k in 0..map.p.nrows() {
            let factor = if get_bit(pattern, offset + k) { 1.0 } else { slope };
            for j in 0..s {
                post[(k, j)] = factor * map.p[(k, j)];
            }
            post[(k, s)] = factor * map.c[k];
        }
        post
    }

    /// Refines `cell` through the units from (`layer`, `unit`) on. Units that do not split the
    /// cell are walked in a loop; a split recurses into both pieces in parallel.
    fn descend<C: Cell>(
        &self,
        mut cell: C,
        mut pattern: Box<[u64]>,
        mut layer: usize,
        mut unit: usize,
        mut map: Arc<LayerMap>,
    ) -> Result<Vec<Leaf>> {
        let s = self.decoder.latent_dim();
        let hidden_layers = self.decoder.n_hidden_layers();
        let mut a = vec![0.0; s];
        loop {
            self.cancel.check()?;
            // Another branch passed the limit: stop here too, not after the whole subtree.
            if self.found.load(Ordering::Relaxed) > self.max_regions {
                return Err(Error::RegionLimit { limit: self.max_regions });
            }
            if layer == hidden_layers {
                return self.finish(cell, pattern, None);
            }
            if unit == map.p.nrows() {
                cell.settle(layer + 1 < hidden_layers);
                let post = self.post_activation(&map, layer, &pattern);
                if layer + 1 == hidden_layers {
                    return self.finish(cell, pattern, Some(post));
                }
                let w = &self.decoder.weights()[layer + 1];
                let full = w * post;
                let next = LayerMap {
                    p: full.columns(0, s).into_owned(),
                    c: full.column(s) + &self.decoder.biases()[layer + 1],
                };
                map = Arc::new(next);
                layer += 1;
                unit = 0;
                continue;
            }
            let k = self.decoder.unit_offset(layer) + unit;
            let c = map.c[unit];
            let mut norm2 = 0.0;
            for j in 0..s {
                a[j] = map.p[(unit, j)];
                norm2 += a[j] * a[j];
            }
            let norm = norm2.sqrt();
            let scale = map.p.row(unit).iter().chain(std::iter::once(&c)).fold(0.0f64, |m, v| m.max(v.abs()));
            if norm <= 1e-13 * scale.max(f64::MIN_POSITIVE) || norm == 0.0 {
                // The unit's pre-activation is constant on the cell (a dead unit, or one that
                // the previous layers cancel exactly): no hyperplane, its sign decides.
                let z = cell.interior_point();
                let value: f64 = (0..s).map(|j| a[j] * z[j]).sum::<f64>() + c;
                set_bit(&mut pattern, k, value >= 0.0);
                unit += 1;
                continue;
            }
            for v in a.iter_mut() {
                *v /= norm;
            }
            match cell.cut(&a, c / norm, k, &self.tol) {
                Cut::On => set_bit(&mut pattern, k, true),
                Cut::Off => set_bit(&mut pattern, k, false),
                Cut::Split { on, off } => {
                    self.count_new_region()?;
                    let mut off_pattern = pattern.clone();
                    set_bit(&mut off_pattern, k, false);
                    set_bit(&mut pattern, k, true);
                    let off_map = map.clone();
                    let (off_leaves, on_leaves) = rayon::join(
                        || self.descend(off, off_pattern, layer, unit + 1, off_map),
                        || self.descend(on, pattern, layer, unit + 1, map),
                    );
                    let mut leaves = off_leaves?;
                    leaves.extend(on_leaves?);
                    return Ok(leaves);
                }
            }
            unit += 1;
        }
    }

    /// Counts the cell a split adds: `RegionLimit` past the limit, and every
    /// [`MEMORY_CHECK_EVERY`] regions, `Memory` if the regions so far will not fit.
    fn count_new_region(&self) -> Result<()> {
        let found = self.found.fetch_add(1, Ordering::Relaxed) + 1;
        if found > self.max_regions {
            return Err(Error::RegionLimit { limit: self.max_regions });
        }
        if found.is_multiple_of(MEMORY_CHECK_EVERY) {
            // What is held already is in use, so the rest must fit in what is left: about as
            // much again for the maps, facets and the copies made when the leaves are joined.
            if let Err(err) = crate::memory::check(
                found as u128 * self.region_bytes as u128,
                &format!("the {found} regions enumerated so far (and counting)"),
            ) {
                // Every branch stops at its next check of the token, with this error.
                self.cancel.fail(err.clone());
                return Err(err);
            }
        }
        Ok(())
    }

    fn finish<C: Cell>(&self, cell: C, pattern: Box<[u64]>, last_hidden: Option<DMatrix<f64>>) -> Result<Vec<Leaf>> {
        let interior = cell.interior_point();
        Ok(vec![Leaf { pattern, interior, shape: cell.into_shape(), last_hidden }])
    }
}

/// Refuses output maps that would not fit in memory, before allocating them.
const MAX_MAP_BYTES: usize = 16 << 30;

impl Partition {
    /// Enumerates every full-dimensional region of `decoder`'s partition of R^S.
    pub fn enumerate(decoder: Arc<Decoder>, max_regions: usize, cancel: &Cancel) -> Result<Partition> {
        Self::enumerate_with(decoder, max_regions, Tolerance::default(), cancel)
    }

    pub fn enumerate_with(
        decoder: Arc<Decoder>,
        max_regions: usize,
        tol: Tolerance,
        cancel: &Cancel,
    ) -> Result<Partition> {
        let s = decoder.latent_dim();
        let h = decoder.n_hidden();
        if max_regions == 0 {
            return Err(Error::RegionLimit { limit: max_regions });
        }
        let job = Enumeration {
            decoder: &decoder,
            tol,
            cancel,
            max_regions,
            found: AtomicUsize::new(1),
            region_bytes: region_bytes(&decoder),
        };
        let pattern = vec![0u64; words_for(h)].into_boxed_slice();
        let map = Arc::new(job.first_map());
        let leaves = match s {
            1 => job.descend(Interval::whole_space(s), pattern, 0, 0, map)?,
            2 => job.descend(Polygon::whole_space(s), pattern, 0, 0, map)?,
            _ => job.descend(Polyhedron::whole_space(s), pattern, 0, 0, map)?,
        };
        let (a, b) = output_maps(&decoder, &leaves)?;
        let mut patterns = Vec::with_capacity(leaves.len());
        let mut interior = Vec::with_capacity(leaves.len());
        let mut shapes = Vec::with_capacity(leaves.len());
        for leaf in leaves {
            patterns.push(leaf.pattern);
            interior.push(leaf.interior);
            shapes.push(leaf.shape);
        }
        let facets = (0..patterns.len()).map(|_| OnceLock::new()).collect();
        Ok(Partition { decoder, tol, patterns, interior, shapes, a, b, index: OnceLock::new(), facets })
    }

    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    pub fn pattern_words(&self, q: usize) -> &[u64] {
        &self.patterns[q]
    }

    pub fn pattern(&self, q: usize) -> Vec<bool> {
        (0..self.decoder.n_hidden()).map(|k| get_bit(&self.patterns[q], k)).collect()
    }

    pub fn interior_point(&self, q: usize) -> &[f64] {
        &self.interior[q]
    }

    /// `A_q` as a `D x S` row-major slice.
    pub fn a(&self, q: usize) -> &[f64] {
        let ds = self.decoder.output_dim() * self.decoder.latent_dim();
        &self.a[q * ds..(q + 1) * ds]
    }

    pub fn b(&self, q: usize) -> &[f64] {
        let d = self.decoder.output_dim();
        &self.b[q * d..(q + 1) * d]
    }

    /// All `A_q`, `(R, D, S)` row-major, and all `b_q`, `(R, D)` row-major.
    pub fn maps(&self) -> (&[f64], &[f64]) {
        (&self.a, &self.b)
    }

    /// The non-redundant constraints `normal . z <= offset` of region `q`, each with a point in
    /// its relative interior.
    pub fn facets(&self, q: usize) -> &[Facet] {
        self.facets[q].get_or_init(|| match &self.shapes[q] {
            Shape::Exact { facets, .. } => facets.clone(),
            Shape::Candidates(poly) => poly.facets(&self.tol),
        })
    }

    pub fn is_bounded(&self, q: usize) -> bool {
        match &self.shapes[q] {
            Shape::Exact { bounded, .. } => *bounded,
            Shape::Candidates(poly) => poly.is_bounded(self.facets(q), &self.tol),
        }
    }

    /// Every constraint known for region `q` (possibly redundant), as `(normal, offset)`.
    fn constraints(&self, q: usize) -> Vec<(&[f64], f64)> {
        match &self.shapes[q] {
            Shape::Exact { facets, .. } => facets.iter().map(|f| (f.normal.as_slice(), f.offset)).collect(),
            Shape::Candidates(poly) => poly.rows().collect(),
        }
    }

    fn index(&self) -> &HashMap<Box<[u64]>, usize> {
        self.index.get_or_init(|| self.patterns.iter().enumerate().map(|(q, p)| (p.clone(), q)).collect())
    }

    /// The region whose activation pattern is `pattern`, if it was enumerated.
    pub fn find(&self, pattern: &[u64]) -> Option<usize> {
        self.index().get(pattern).copied()
    }

    /// The region containing `z`: by its activation pattern, or, for a point on a boundary or in
    /// a sliver thinner than the tolerance, the region whose constraints it violates least.
    pub fn locate(&self, z: &[f64]) -> usize {
        let h = self.decoder.n_hidden();
        let mut bits = vec![false; h];
        self.decoder.forward_with_pattern(z, &mut bits);
        if let Some(q) = self.find(&pack_pattern(bits, h)) {
            return q;
        }
        self.nearest(z)
    }

    fn nearest(&self, z: &[f64]) -> usize {
        let violation = |q: usize| {
            self.constraints(q)
                .into_iter()
                .map(|(g, h)| g.iter().zip(z).map(|(a, b)| a * b).sum::<f64>() - h)
                .fold(f64::NEG_INFINITY, f64::max)
        };
        (0..self.len()).map(|q| (q, violation(q))).min_by(|x, y| x.1.total_cmp(&y.1)).map(|(q, _)| q).unwrap_or(0)
    }

    /// The region across each facet of region `q`, in the order of [`Partition::facets`].
    pub fn neighbors(&self, q: usize) -> Vec<usize> {
        self.facets(q)
            .iter()
            .map(|f| {
                let norm: f64 = f.point.iter().map(|v| v * v).sum::<f64>().sqrt();
                let mut step = 1e-8 * (1.0 + norm);
                for _ in 0..4 {
                    let z: Vec<f64> = f.point.iter().zip(&f.normal).map(|(p, n)| p + step * n).collect();
                    let r = self.locate(&z);
                    if r != q {
                        return r;
                    }
                    step *= 10.0;
                }
                q
            })
            .collect()
    }
}

/// `A_q = W_L Dg [P | c]_q` for all regions as one matrix product (docs/design.md §3: a real GEMM).
fn output_maps(decoder: &Decoder, leaves: &[Leaf]) -> Result<(Vec<f64>, Vec<f64>)> {
    let s = decoder.latent_dim();
    let d = decoder.output_dim();
    let r = leaves.len();
    let bytes = r.saturating_mul(d).saturating_mul(s + 1).saturating_mul(16);
    if bytes > MAX_MAP_BYTES {
        return Err(Error::InvalidInput(format!(
            "the {r} regions' affine maps would need {:.1} GiB; use a smaller max_regions or a smaller network",
            bytes as f64 / (1u64 << 30) as f64
        )));
    }
    crate::memory::check(bytes as u128, &format!("the affine maps of {r} regions"))?;
    let w_last = decoder.weights().last().unwrap();
    let b_last = decoder.biases().last().unwrap();
    let mut a = vec![0.0; r * d * s];
    let mut b = vec![0.0; r * d];
    if decoder.n_hidden_layers() == 0 {
        for q in 0..r {
            for i in 0..d {
                for j in 0..s {
                    a[q * d * s + i * s + j] = w_last[(i, j)];
                }
                b[q * d + i] = b_last[i];
            }
        }
        return Ok((a, b));
    }
    let width = w_last.ncols();
    // Chunks keep the stacked right-hand side to a few tens of megabytes.
    let chunk = (4_000_000 / (width * (s + 1)).max(1)).clamp(1, r.max(1));
    for start in (0..r).step_by(chunk) {
        let end = (start + chunk).min(r);
        let mut stacked = DMatrix::zeros(width, (end - start) * (s + 1));
        for (i, leaf) in leaves[start..end].iter().enumerate() {
            let post = leaf.last_hidden.as_ref().expect("hidden layers leave a post-activation map");
            stacked.columns_mut(i * (s + 1), s + 1).copy_from(post);
        }
        let product = w_last * stacked;
        for q in start..end {
            let col = (q - start) * (s + 1);
            for i in 0..d {
                for j in 0..s {
                    a[q * d * s + i * s + j] = product[(i, col + j)];
                }
                b[q * d + i] = product[(i, col + s)] + b_last[i];
            }
        }
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests;
