//! The decoder: an MLP with two-slope piecewise-affine activations (docs/design.md §1).
//!
//! Batches of points are stored one point per column (`S x n`), which is exactly the memory
//! layout of a C-contiguous numpy array of shape `(n, S)`: the bindings pass it without copying.

use nalgebra::{DMatrix, DMatrixView, DVector};

use crate::error::{invalid, Result};

/// `s(u) = u` for `u >= 0` and `slope * u` otherwise. ReLU is slope 0, leaky ReLU 0 < slope < 1,
/// absolute value slope -1, linear slope 1.
#[inline]
pub fn activate(u: f64, slope: f64) -> f64 {
    if u >= 0.0 {
        u
    } else {
        slope * u
    }
}

/// Points per chunk of a batch through the network: a chunk's activations take at most
/// `8 x width x FORWARD_CHUNK` bytes (16 MB at width 256), whatever the batch's size.
pub const FORWARD_CHUNK: usize = 8192;

#[derive(Clone, Debug)]
pub struct Decoder {
    /// Layer `l` maps width `D_l` to `D_{l+1}`; shape `(out, in)` like `torch.nn.Linear`.
    weights: Vec<DMatrix<f64>>,
    biases: Vec<DVector<f64>>,
    /// Negative-side slope of the activation after each hidden layer (one per layer but the last).
    slopes: Vec<f64>,
    /// Index of the first unit of each hidden layer in the flat list of `H` hidden units.
    unit_offsets: Vec<usize>,
}

impl Decoder {
    pub fn new(weights: Vec<DMatrix<f64>>, biases: Vec<DVector<f64>>, slopes: Vec<f64>) -> Result<Self> {
        if weights.is_empty() {
            return invalid("the decoder needs at least one layer (got an empty list of weights)");
        }
        if biases.len() != weights.len() {
            return invalid(format!(
                "got {} weight matrices but {} bias vectors; give one bias vector per layer",
                weights.len(),
                biases.len()
            ));
        }
        if slopes.len() + 1 != weights.len() {
            return invalid(format!(
                "a decoder with {} layers has {} hidden layers and needs that many activations, got {}",
                weights.len(),
                weights.len() - 1,
                slopes.len()
            ));
        }
        for (l, (w, b)) in weights.iter().zip(&biases).enumerate() {
            if w.nrows() == 0 || w.ncols() == 0 {
                return invalid(format!(
                    "layer {l}: weights[{l}] has shape ({}, {}); every layer needs at least one input and one output",
                    w.nrows(),
                    w.ncols()
                ));
            }
            if l > 0 && w.ncols() != weights[l - 1].nrows() {
                return invalid(format!(
                    "layer {l}: weights[{l}] has shape ({}, {}) but layer {} outputs {} units; expected shape ({}, {})",
                    w.nrows(),
                    w.ncols(),
                    l - 1,
                    weights[l - 1].nrows(),
                    w.nrows(),
                    weights[l - 1].nrows()
                ));
            }
            if b.len() != w.nrows() {
                return invalid(format!(
                    "layer {l}: biases[{l}] has {} entries but weights[{l}] has {} rows",
                    b.len(),
                    w.nrows()
                ));
            }
            if w.iter().any(|v| !v.is_finite()) {
                return invalid(format!("layer {l}: weights[{l}] contains NaN or infinite values"));
            }
            if b.iter().any(|v| !v.is_finite()) {
                return invalid(format!("layer {l}: biases[{l}] contains NaN or infinite values"));
            }
        }
        for (l, s) in slopes.iter().enumerate() {
            if !s.is_finite() {
                return invalid(format!("layer {l}: the activation slope {s} is not finite"));
            }
        }
        let mut unit_offsets = Vec::with_capacity(slopes.len());
        let mut offset = 0;
        for w in &weights[..weights.len() - 1] {
            unit_offsets.push(offset);
            offset += w.nrows();
        }
        Ok(Decoder { weights, biases, slopes, unit_offsets })
    }

    /// A decoder with [`Self::random_parameters`] and the same negative slope in every hidden
    /// layer. For tests, examples and benchmarks.
    pub fn random_uniform(widths: &[usize], slope: f64, seed: u64) -> Result<Self> {
        let (weights, biases) = Self::random_parameters(widths, seed)?;
        Decoder::new(weights, biases, vec![slope; widths.len() - 2])
    }

    /// The weights and biases of `torch.nn.Linear`'s default initialisation: uniform on
    /// `[-1/sqrt(fan_in), 1/sqrt(fan_in)]`, layer by layer (each layer's weights in column-major
    /// order, then its biases) from PCG64 seeded with `seed`. `widths` is `[S, D_1, ..., D]`.
    /// The one random initialisation of the package: `exactem.Decoder.random` takes its arrays.
    pub fn random_parameters(widths: &[usize], seed: u64) -> Result<(Vec<DMatrix<f64>>, Vec<DVector<f64>>)> {
        use rand::{Rng, SeedableRng};
        if widths.len() < 2 || widths.contains(&0) {
            return invalid(format!("widths must list at least two positive dimensions; got {widths:?}"));
        }
        let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
        let mut weights = Vec::new();
        let mut biases = Vec::new();
        for pair in widths.windows(2) {
            let bound = 1.0 / (pair[0] as f64).sqrt();
            weights.push(DMatrix::from_fn(pair[1], pair[0], |_, _| rng.random_range(-bound..bound)));
            biases.push(DVector::from_fn(pair[1], |_, _| rng.random_range(-bound..bound)));
        }
        Ok((weights, biases))
    }

    pub fn latent_dim(&self) -> usize {
        self.weights[0].ncols()
    }

    pub fn output_dim(&self) -> usize {
        self.weights.last().unwrap().nrows()
    }

    /// `[S, D_1, ..., D_{L-1}, D]`.
    pub fn widths(&self) -> Vec<usize> {
        std::iter::once(self.latent_dim()).chain(self.weights.iter().map(|w| w.nrows())).collect()
    }

    pub fn n_layers(&self) -> usize {
        self.weights.len()
    }

    pub fn n_hidden_layers(&self) -> usize {
        self.slopes.len()
    }

    /// Total number of hidden units `H`.
    pub fn n_hidden(&self) -> usize {
        self.weights[..self.weights.len() - 1].iter().map(|w| w.nrows()).sum()
    }

    pub fn weights(&self) -> &[DMatrix<f64>] {
        &self.weights
    }

    pub fn biases(&self) -> &[DVector<f64>] {
        &self.biases
    }

    pub fn slopes(&self) -> &[f64] {
        &self.slopes
    }

    /// Flat index of the first unit of hidden layer `layer`.
    pub fn unit_offset(&self, layer: usize) -> usize {
        self.unit_offsets[layer]
    }

    /// Forward pass of a batch, one point per column: `(S x n) -> (D x n)`.
    pub fn forward_batch(&self, z: DMatrixView<f64>) -> DMatrix<f64> {
        self.try_forward_batch(z).unwrap_or_else(|err| panic!("{err}"))
    }

    /// [`Self::forward_batch`], with the output allocated fallibly (`Err(Memory)` if it cannot
    /// be) and the hidden layers run [`FORWARD_CHUNK`] points at a time: their activations,
    /// `width x n` each, took 6 GB for 3,000,000 points through 256 units.
    pub fn try_forward_batch(&self, z: DMatrixView<f64>) -> crate::Result<DMatrix<f64>> {
        let (d, n) = (self.output_dim(), z.ncols());
        let values = crate::memory::try_filled(d.saturating_mul(n), 0.0, &format!("the outputs of {n} points"))?;
        let mut out = DMatrix::from_vec(d, n, values);
        for start in (0..n).step_by(FORWARD_CHUNK) {
            let len = FORWARD_CHUNK.min(n - start);
            out.columns_mut(start, len).copy_from(&self.run_batch(z.columns(start, len), |_, _| {}));
        }
        Ok(out)
    }

    /// Activation patterns of a batch: `H x n` (column per point), true where the
    /// pre-activation is `>= 0`.
    pub fn patterns_batch(&self, z: DMatrixView<f64>) -> DMatrix<bool> {
        self.try_patterns_batch(z).unwrap_or_else(|err| panic!("{err}"))
    }

    /// [`Self::patterns_batch`], allocated and run as [`Self::try_forward_batch`].
    pub fn try_patterns_batch(&self, z: DMatrixView<f64>) -> crate::Result<DMatrix<bool>> {
        let (h, n) = (self.n_hidden(), z.ncols());
        let values =
            crate::memory::try_filled(h.saturating_mul(n), false, &format!("the activation patterns of {n} points"))?;
        let mut patterns = DMatrix::from_vec(h, n, values);
        for start in (0..n).step_by(FORWARD_CHUNK) {
            let len = FORWARD_CHUNK.min(n - start);
            self.run_batch(z.columns(start, len), |layer, pre| {
                let offset = self.unit_offsets[layer];
                for (j, col) in pre.column_iter().enumerate() {
                    for (k, &v) in col.iter().enumerate() {
                        patterns[(offset + k, start + j)] = v >= 0.0;
                    }
                }
            });
        }
        Ok(patterns)
    }

    /// Runs the network on a batch (of at most [`FORWARD_CHUNK`] points, by its callers), showing each hidden layer's pre-activations to `visit`.
    fn run_batch(&self, z: DMatrixView<f64>, mut visit: impl FnMut(usize, &DMatrix<f64>)) -> DMatrix<f64> {
        assert_eq!(z.nrows(), self.latent_dim(), "latent points must have S rows");
        let last = self.weights.len() - 1;
        let mut h = self.affine(0, &z);
        for layer in 0..last {
            visit(layer, &h);
            let slope = self.slopes[layer];
            h.apply(|v| *v = activate(*v, slope));
            h = self.affine(layer + 1, &h.as_view());
        }
        h
    }

    fn affine(&self, layer: usize, input: &DMatrixView<f64>) -> DMatrix<f64> {
        let mut out = &self.weights[layer] * input;
        for mut col in out.column_iter_mut() {
            col += &self.biases[layer];
        }
        out
    }

    /// The forward pass of one point, with its activation pattern written to `pattern`.
    pub fn forward_with_pattern(&self, z: &[f64], pattern: &mut [bool]) -> DVector<f64> {
        let zv = DMatrixView::from_slice(z, z.len(), 1);
        let mut h = self.affine(0, &zv).column(0).into_owned();
        for layer in 0..self.weights.len() - 1 {
            let offset = self.unit_offsets[layer];
            for (k, v) in h.iter_mut().enumerate() {
                pattern[offset + k] = *v >= 0.0;
                *v = activate(*v, self.slopes[layer]);
            }
            h = &self.weights[layer + 1] * &h + &self.biases[layer + 1];
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Decoder {
        let w1 = DMatrix::from_row_slice(2, 1, &[1.0, -1.0]);
        let b1 = DVector::from_vec(vec![0.0, 1.0]);
        let w2 = DMatrix::from_row_slice(1, 2, &[2.0, 3.0]);
        let b2 = DVector::from_vec(vec![0.5]);
        Decoder::new(vec![w1, w2], vec![b1, b2], vec![0.1]).unwrap()
    }

    #[test]
    fn forward_matches_hand_computation() {
        let dec = tiny();
        let z = DMatrix::from_row_slice(1, 3, &[-2.0, 0.5, 3.0]);
        let out = dec.forward_batch(z.as_view());
        // z=-2: units (-2, 3) -> (-0.2, 3) -> 2*-0.2 + 3*3 + 0.5 = 9.1
        // z=0.5: (0.5, 0.5) -> 1 + 1.5 + 0.5 = 3.0
        // z=3: (3, -2) -> (3, -0.2) -> 6 - 0.6 + 0.5 = 5.9
        let expected = [9.1, 3.0, 5.9];
        for (o, e) in out.iter().zip(expected) {
            assert!((o - e).abs() < 1e-12, "{o} vs {e}");
        }
        let pats = dec.patterns_batch(z.as_view());
        assert_eq!(pats.column(0).iter().copied().collect::<Vec<_>>(), vec![false, true]);
        assert_eq!(pats.column(2).iter().copied().collect::<Vec<_>>(), vec![true, false]);
        let mut pattern = vec![false; 2];
        let single = dec.forward_with_pattern(&[3.0], &mut pattern);
        assert!((single[0] - 5.9).abs() < 1e-12);
        assert_eq!(pattern, vec![true, false]);
    }

    #[test]
    fn validation_names_the_layer() {
        let w1 = DMatrix::from_row_slice(2, 1, &[1.0, -1.0]);
        let w2 = DMatrix::from_row_slice(1, 3, &[2.0, 3.0, 1.0]);
        let err = Decoder::new(vec![w1, w2], vec![DVector::zeros(2), DVector::zeros(1)], vec![0.0]).unwrap_err();
        assert!(err.to_string().contains("layer 1"), "{err}");
        let w1 = DMatrix::from_row_slice(1, 1, &[f64::NAN]);
        let err = Decoder::new(vec![w1], vec![DVector::zeros(1)], vec![]).unwrap_err();
        assert!(err.to_string().contains("NaN"), "{err}");
        assert!(Decoder::new(vec![], vec![], vec![]).is_err());
    }
}
