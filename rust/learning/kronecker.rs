//! The normal-equation operator of one hidden layer's frozen-mask M-step,
//! `X -> sum_q C_q X T_q` with `T_q = M_q K_q M_q^T` (docs/design.md, the M-step), applied
//! region by region from its low-rank factors, as conjugate gradients needs it at every step.
//!
//! `X` is the layer's parameter matrix `[W_l, b_l]` (`D_l x A1`, `A1 = D_{l-1} + 1`), `M_q`
//! (`A1 x S1`, `S1 = S + 1`) maps `[z; 1]` to the layer's input `[a; 1]` in region `q`, `K_q`
//! (`S1 x S1`) is the region's moment matrix, and `C_q = F_q^T Psi^-1 F_q` (`D_l x D_l`) is the
//! curvature of the output in the layer's pre-activation. Where the output has fewer
//! coordinates than the layer has units (`D < D_l`), `C_q` is applied through `F_q` (`D x D_l`).
//!
//! Every product is a sum of length-`D_l` vector updates (`P_q = X M_q`, `C_q P_q`, `P_q K_q`,
//! then `(.) M_q^T` into the total), so the loops vectorise over the layer's units. Regions go
//! in fixed chunks of [`REGIONS_PER_CHUNK`], each chunk summed in region order and the chunks'
//! partial sums added in chunk order: the same bits whatever the number of threads.

use crate::error::{Error, Result};
use crate::gauss::normal_batch::{with_wide_vectors, MulAdd, VectorKernel};
use crate::parallel;

/// The units go in blocks of this many lanes (one AVX-512 vector, two AVX2 ones): the layer's
/// vectors are stored padded with zeros to a multiple of it.
const LANES: usize = 8;

/// The most latent columns `S + 1` the kernel is compiled for (each count is its own kernel).
pub const MAX_LATENT1: usize = 5;

/// Regions per parallel job: small enough that two cores share a few hundred regions evenly,
/// large enough that adding a chunk's partial sum (`D_l A1` numbers) costs little beside it.
pub const REGIONS_PER_CHUNK: usize = 64;

/// How `C_q` is applied.
pub enum Curvature {
    /// `C_q` itself, `(R, D_l, D_l)` row-major.
    Dense(Vec<f64>),
    /// `C_q = F_q^T diag(inverse_noise) F_q` with `F_q` `(R, D, D_l)` row-major.
    ThroughOutput { f: Vec<f64>, inverse_noise: Vec<f64> },
}

/// The operator of one layer, its factors copied once and applied many times.
pub struct KroneckerOperator {
    regions: usize,
    units: usize,
    inputs: usize,
    latent1: usize,
    /// `M_q`, `(R, A1, S1)` row-major.
    maps: Vec<f64>,
    /// `K_q`, `(R, S1, S1)` row-major.
    moments: Vec<f64>,
    /// The distinct `C_q` stored column by column (`C_q[:, j]` contiguous), or the distinct
    /// `F_q` row by row, each column or row padded with zeros to a multiple of [`LANES`].
    curvature: Stored,
    /// Which of them each region has: `C_q` depends only on the activation patterns of the
    /// layers above, which many regions share (911 distinct of 3238 regions in the first
    /// hidden layer of a [2, 32, 32, 64] decoder trained on digits). Applied from memory once
    /// per region, the 26 MB of `C_q` were the operator's cost; shared, they stay in cache.
    curvature_of: Vec<usize>,
    /// The regions in the order they are summed: grouped by their `C_q` (so that one stays in
    /// cache while its regions are summed), in index order within a group.
    order: Vec<usize>,
    /// `D` where `C_q` is applied through `F_q`.
    outputs: usize,
}

enum Stored {
    Columns(Vec<f64>),
    Output { f: Vec<f64>, inverse_noise: Vec<f64> },
}

impl KroneckerOperator {
    /// The operator of `regions` regions of a layer of `units` units with `inputs` inputs (bias
    /// included) and latent dimension `latent1 - 1`. Sizes are checked against each other.
    pub fn new(
        regions: usize,
        units: usize,
        inputs: usize,
        latent1: usize,
        maps: Vec<f64>,
        moments: Vec<f64>,
        curvature: Curvature,
    ) -> Result<Self> {
        let expect = |name: &str, got: usize, want: usize| -> Result<()> {
            if got == want {
                Ok(())
            } else {
                Err(Error::InvalidInput(format!("{name} must have {want} entries for {regions} regions; got {got}")))
            }
        };
        if !(2..=MAX_LATENT1).contains(&latent1) {
            return Err(Error::InvalidInput(format!(
                "the operator takes latent dimensions 1 to {}; got {}",
                MAX_LATENT1 - 1,
                latent1.saturating_sub(1)
            )));
        }
        if units == 0 || inputs == 0 {
            return Err(Error::InvalidInput(format!(
                "the operator needs units, inputs and latent columns; got {units}, {inputs}, {latent1}"
            )));
        }
        expect("M", maps.len(), regions * inputs * latent1)?;
        expect("K", moments.len(), regions * latent1 * latent1)?;
        let (curvature, outputs, curvature_of) = match curvature {
            Curvature::Dense(c) => {
                expect("C", c.len(), regions * units * units)?;
                let block = units * units;
                let (curvature_of, distinct) = distinct_blocks(&c, block, regions);
                let padded = units.next_multiple_of(LANES);
                let mut columns = vec![0.0; distinct.len() * units * padded];
                for (g, &q) in distinct.iter().enumerate() {
                    for i in 0..units {
                        for j in 0..units {
                            columns[(g * units + j) * padded + i] = c[q * block + i * units + j];
                        }
                    }
                }
                (Stored::Columns(columns), 0, curvature_of)
            }
            Curvature::ThroughOutput { f, inverse_noise } => {
                let outputs = inverse_noise.len();
                if outputs == 0 {
                    return Err(Error::InvalidInput("the inverse noise needs at least one coordinate".into()));
                }
                expect("F", f.len(), regions * outputs * units)?;
                let block = outputs * units;
                let (curvature_of, distinct) = distinct_blocks(&f, block, regions);
                let padded = units.next_multiple_of(LANES);
                let mut rows = vec![0.0; distinct.len() * outputs * padded];
                for (g, &q) in distinct.iter().enumerate() {
                    for (row, given) in rows[g * outputs * padded..(g + 1) * outputs * padded]
                        .chunks_exact_mut(padded)
                        .zip(f[q * block..(q + 1) * block].chunks_exact(units))
                    {
                        row[..units].copy_from_slice(given);
                    }
                }
                (Stored::Output { f: rows, inverse_noise }, outputs, curvature_of)
            }
        };
        let mut order: Vec<usize> = (0..regions).collect();
        order.sort_by_key(|&q| curvature_of[q]); // stable: index order within a group
        Ok(KroneckerOperator {
            regions,
            units,
            inputs,
            latent1,
            maps,
            moments,
            curvature,
            curvature_of,
            order,
            outputs,
        })
    }

    /// `sum_q C_q X M_q K_q M_q^T` for `x` `(D_l, A1)` row-major, in the same layout.
    pub fn apply(&self, x: &[f64]) -> Result<Vec<f64>> {
        let (units, inputs) = (self.units, self.inputs);
        if x.len() != units * inputs {
            return Err(Error::InvalidInput(format!("X must be {units} x {inputs}; got {} entries", x.len())));
        }
        // X^T, so that row a of it (the units' weights on input a) is contiguous, padded.
        let padded = units.next_multiple_of(LANES);
        let mut xt = vec![0.0; inputs * padded];
        for i in 0..units {
            for a in 0..inputs {
                xt[a * padded + i] = x[i * inputs + a];
            }
        }
        let chunks = self.regions.div_ceil(REGIONS_PER_CHUNK);
        let partials = parallel::map(chunks, |chunk| {
            let start = chunk * REGIONS_PER_CHUNK;
            let end = (start + REGIONS_PER_CHUNK).min(self.regions);
            with_wide_vectors(Chunk { operator: self, xt: &xt, regions: &self.order[start..end] })
        });
        // Y^T summed in chunk order, then transposed back.
        let mut total = vec![0.0; inputs * padded];
        for partial in &partials {
            for (t, p) in total.iter_mut().zip(partial) {
                *t += p;
            }
        }
        let mut y = vec![0.0; units * inputs];
        for a in 0..inputs {
            for i in 0..units {
                y[i * inputs + a] = total[a * padded + i];
            }
        }
        Ok(y)
    }
}

/// One chunk of regions' contribution to `Y^T` `(A1, D_l)`.
struct Chunk<'a> {
    operator: &'a KroneckerOperator,
    xt: &'a [f64],
    regions: &'a [usize],
}

/// For `regions` blocks of `block` numbers: the index of each block among the distinct ones
/// (equal bits), and the first region of each distinct block, in order of first appearance.
fn distinct_blocks(data: &[f64], block: usize, regions: usize) -> (Vec<usize>, Vec<usize>) {
    use std::collections::HashMap;
    use std::hash::{Hash, Hasher};
    let bits = |q: usize| data[q * block..(q + 1) * block].iter().map(|v| v.to_bits());
    let mut by_hash: HashMap<u64, Vec<usize>> = HashMap::new();
    let (mut index, mut distinct) = (Vec::with_capacity(regions), Vec::new());
    for q in 0..regions {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        bits(q).for_each(|b| b.hash(&mut hasher));
        let candidates = by_hash.entry(hasher.finish()).or_default();
        let found = candidates.iter().copied().find(|&g| bits(distinct[g]).eq(bits(q)));
        index.push(found.unwrap_or_else(|| {
            candidates.push(distinct.len());
            distinct.push(q);
            distinct.len() - 1
        }));
    }
    (index, distinct)
}

/// `sum_j x_j y_j` (the vector kernel of `crate::linalg::dot` for these products) in eight
/// interleaved partial sums (so that it vectorises), added in a fixed order.
#[inline(always)]
fn dot_lanes<M: MulAdd>(x: &[f64], y: &[f64]) -> f64 {
    let mut lanes = [0.0; 8];
    let (xs, ys) = (x.chunks_exact(8), y.chunks_exact(8));
    let (x_rest, y_rest) = (xs.remainder(), ys.remainder());
    for (xc, yc) in xs.zip(ys) {
        for k in 0..8 {
            lanes[k] = M::mul_add(xc[k], yc[k], lanes[k]);
        }
    }
    let mut sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for (x, y) in x_rest.iter().zip(y_rest) {
        sum = M::mul_add(*x, *y, sum);
    }
    sum
}

impl VectorKernel for Chunk<'_> {
    type Output = Vec<f64>;

    #[inline(always)]
    fn run<M: MulAdd>(self) -> Vec<f64> {
        // The latent columns' count as a constant, so that a block of lanes of each of them
        // stays in registers.
        match self.operator.latent1 {
            2 => self.blocked::<M, 2>(),
            3 => self.blocked::<M, 3>(),
            4 => self.blocked::<M, 4>(),
            5 => self.blocked::<M, 5>(),
            s1 => unreachable!("KroneckerOperator::new accepts 2 to {MAX_LATENT1} latent columns; got {s1}"),
        }
    }
}

impl Chunk<'_> {
    /// The chunk's `Y^T` `(A1, padded D_l)`, with `S1` latent columns.
    #[inline(always)]
    fn blocked<M: MulAdd, const S1: usize>(self) -> Vec<f64> {
        let op = self.operator;
        let (units, inputs, outputs) = (op.units, op.inputs, op.outputs);
        let padded = units.next_multiple_of(LANES);
        let mut yt = vec![0.0; inputs * padded];
        // Column k of P = X M_q, as a padded vector over the units.
        let mut p = vec![0.0; S1 * padded];
        let mut weights = vec![0.0; S1 * units.max(outputs)];
        for &q in self.regions {
            let g = op.curvature_of[q];
            let m = &op.maps[q * inputs * S1..(q + 1) * inputs * S1];
            let k_q = &op.moments[q * S1 * S1..(q + 1) * S1 * S1];
            // P = X M_q, a block of lanes at a time.
            for start in (0..padded).step_by(LANES) {
                let mut acc = [[0.0; LANES]; S1];
                for a in 0..inputs {
                    let x = &self.xt[a * padded + start..a * padded + start + LANES];
                    for k in 0..S1 {
                        let weight = m[a * S1 + k];
                        for lane in 0..LANES {
                            acc[k][lane] = M::mul_add(weight, x[lane], acc[k][lane]);
                        }
                    }
                }
                for k in 0..S1 {
                    p[k * padded + start..k * padded + start + LANES].copy_from_slice(&acc[k]);
                }
            }
            // C_q P as a sum of vectors (C_q's columns, or F_q's rows), `weights[j * S1 + k]`
            // that of vector j in column k: P's entries, or Psi^-1 F_q P's.
            let (vectors, count) = match &op.curvature {
                Stored::Columns(columns) => {
                    for j in 0..units {
                        for k in 0..S1 {
                            weights[j * S1 + k] = p[k * padded + j];
                        }
                    }
                    (&columns[g * units * padded..(g + 1) * units * padded], units)
                }
                Stored::Output { f, inverse_noise } => {
                    let f_q = &f[g * outputs * padded..(g + 1) * outputs * padded];
                    for d in 0..outputs {
                        for k in 0..S1 {
                            weights[d * S1 + k] =
                                dot_lanes::<M>(&f_q[d * padded..(d + 1) * padded], &p[k * padded..(k + 1) * padded])
                                    * inverse_noise[d];
                        }
                    }
                    (f_q, outputs)
                }
            };
            for start in (0..padded).step_by(LANES) {
                let mut c = [[0.0; LANES]; S1];
                for j in 0..count {
                    let v = &vectors[j * padded + start..j * padded + start + LANES];
                    for k in 0..S1 {
                        let weight = weights[j * S1 + k];
                        for lane in 0..LANES {
                            c[k][lane] = M::mul_add(weight, v[lane], c[k][lane]);
                        }
                    }
                }
                // H = C_q P K_q, then Y^T += M_q H^T, on this block of lanes.
                let mut h = [[0.0; LANES]; S1];
                for k in 0..S1 {
                    for l in 0..S1 {
                        let weight = k_q[l * S1 + k];
                        for lane in 0..LANES {
                            h[k][lane] = M::mul_add(weight, c[l][lane], h[k][lane]);
                        }
                    }
                }
                for a in 0..inputs {
                    let row = &mut yt[a * padded + start..a * padded + start + LANES];
                    let mut sum = [0.0; LANES];
                    sum.copy_from_slice(row);
                    for k in 0..S1 {
                        let weight = m[a * S1 + k];
                        for lane in 0..LANES {
                            sum[lane] = M::mul_add(weight, h[k][lane], sum[lane]);
                        }
                    }
                    row.copy_from_slice(&sum);
                }
            }
        }
        yt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random sequence in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    /// `sum_q C_q X M_q K_q M_q^T` by the definition, entry by entry, and the same sum of
    /// absolute values (the scale of its rounding).
    #[allow(clippy::too_many_arguments)]
    fn reference(
        r: usize,
        dl: usize,
        a1: usize,
        s1: usize,
        x: &[f64],
        m: &[f64],
        k: &[f64],
        c: &[f64],
    ) -> (Vec<f64>, Vec<f64>) {
        let mut y = vec![0.0; dl * a1];
        let mut scale = vec![0.0; dl * a1];
        for q in 0..r {
            let mq = |a: usize, s: usize| m[q * a1 * s1 + a * s1 + s];
            for i in 0..dl {
                for b in 0..a1 {
                    for j in 0..dl {
                        for a in 0..a1 {
                            for s in 0..s1 {
                                for t in 0..s1 {
                                    let term = c[q * dl * dl + i * dl + j]
                                        * x[j * a1 + a]
                                        * mq(a, s)
                                        * k[q * s1 * s1 + s * s1 + t]
                                        * mq(b, t);
                                    y[i * a1 + b] += term;
                                    scale[i * a1 + b] += term.abs();
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, scale)
    }

    #[test]
    fn kronecker_operator_agrees_with_the_definition_dense_and_through_the_output() {
        for &(r, dl, a1, s1, d) in
            &[(1, 3, 4, 2, 2), (5, 7, 3, 3, 9), (130, 4, 5, 2, 1), (0, 2, 2, 2, 1), (3, 9, 2, 4, 3), (2, 17, 3, 5, 20)]
        {
            let x = values(dl * a1, 1);
            let m = values(r * a1 * s1, 2);
            let k = values(r * s1 * s1, 3);
            // Regions share their F_q (as regions with one pattern above the layer do) in a
            // scattered order: every third region the first's, the others their own.
            let own = values(r * d * dl, 4);
            let f: Vec<f64> = (0..r)
                .flat_map(|q| {
                    let from = if q % 3 == 2 { 0 } else { q };
                    own[from * d * dl..(from + 1) * d * dl].to_vec()
                })
                .collect();
            let inverse_noise: Vec<f64> = values(d, 5).iter().map(|v| 1.5 + v).collect();
            // C_q = F_q^T diag(w) F_q, also given densely (not symmetrised: the operator must
            // use C_q's columns as they are).
            let mut c = vec![0.0; r * dl * dl];
            for q in 0..r {
                for i in 0..dl {
                    for j in 0..dl {
                        c[q * dl * dl + i * dl + j] = (0..d)
                            .map(|e| f[q * d * dl + e * dl + i] * inverse_noise[e] * f[q * d * dl + e * dl + j])
                            .sum::<f64>()
                            + if i < j { 0.25 } else { 0.0 };
                    }
                }
            }
            let (want_dense, scale) = reference(r, dl, a1, s1, &x, &m, &k, &c);
            let dense =
                KroneckerOperator::new(r, dl, a1, s1, m.clone(), k.clone(), Curvature::Dense(c.clone())).unwrap();
            let got = dense.apply(&x).unwrap();
            let terms = (dl * a1 * s1 * s1 * r).max(1) as f64;
            for ((g, w), s) in got.iter().zip(&want_dense).zip(&scale) {
                assert!((g - w).abs() <= 4.0 * terms * f64::EPSILON * s, "dense: {g} vs {w} (scale {s})");
            }
            // Through F: C_q without the asymmetric 0.25.
            for q in 0..r {
                for i in 0..dl {
                    for j in (i + 1)..dl {
                        c[q * dl * dl + i * dl + j] -= 0.25;
                    }
                }
            }
            let (want, scale) = reference(r, dl, a1, s1, &x, &m, &k, &c);
            let through =
                KroneckerOperator::new(r, dl, a1, s1, m, k, Curvature::ThroughOutput { f, inverse_noise }).unwrap();
            let got = through.apply(&x).unwrap();
            let terms = terms * d as f64;
            for ((g, w), s) in got.iter().zip(&want).zip(&scale) {
                assert!(
                    (g - w).abs() <= 4.0 * terms * f64::EPSILON * (s + 1e-300),
                    "through F: {g} vs {w} (scale {s})"
                );
            }
        }
    }

    #[test]
    fn kronecker_operator_rejects_mismatched_sizes() {
        assert!(
            KroneckerOperator::new(2, 3, 4, 2, vec![0.0; 15], vec![0.0; 8], Curvature::Dense(vec![0.0; 18])).is_err()
        );
        let op =
            KroneckerOperator::new(2, 3, 4, 2, vec![0.0; 16], vec![0.0; 8], Curvature::Dense(vec![0.0; 18])).unwrap();
        assert!(op.apply(&[0.0; 11]).is_err());
    }
}
