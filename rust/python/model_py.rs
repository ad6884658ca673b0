use std::sync::Arc;

use nalgebra::{DMatrix, DMatrixView, DVector};
use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::partition_py::PyPartition;
use super::run_released;
use crate::model::Decoder;
use crate::partition::Partition;

/// The Rust decoder behind `exactem.Decoder`; the Python class adds names and validation.
#[pyclass(name = "DecoderCore", module = "exactem._core", frozen)]
pub struct PyDecoder {
    pub inner: Arc<Decoder>,
}

/// A C-contiguous `(n, S)` array seen as `S x n` with one point per column, without copying.
pub(crate) fn points<'a>(z: &'a PyReadonlyArray2<'_, f64>, dim: usize, what: &str) -> PyResult<DMatrixView<'a, f64>> {
    let shape = z.shape();
    if shape[1] != dim {
        return Err(PyValueError::new_err(format!(
            "{what} must have shape (n, {dim}); got ({}, {})",
            shape[0], shape[1]
        )));
    }
    let data = z.as_slice().map_err(|_| PyValueError::new_err(format!("{what} must be C-contiguous")))?;
    Ok(DMatrixView::from_slice(data, dim, shape[0]))
}

/// A column-major `D x n` matrix handed to numpy as a row-major `(n, D)` array.
pub(crate) fn to_rows<'py, T: numpy::Element + nalgebra::Scalar>(
    py: Python<'py>,
    m: DMatrix<T>,
) -> PyResult<Bound<'py, PyArray2<T>>> {
    let (rows, cols) = m.shape();
    let data: Vec<T> = m.data.into();
    PyArray1::from_vec(py, data).reshape([cols, rows])
}

#[pymethods]
impl PyDecoder {
    #[new]
    fn new(
        weights: Vec<PyReadonlyArray2<'_, f64>>,
        biases: Vec<PyReadonlyArray1<'_, f64>>,
        slopes: Vec<f64>,
    ) -> PyResult<Self> {
        let weights = weights
            .iter()
            .map(|w| {
                let a = w.as_array();
                DMatrix::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)])
            })
            .collect();
        let biases =
            biases.iter().map(|b| DVector::from_iterator(b.as_array().len(), b.as_array().iter().copied())).collect();
        Ok(PyDecoder { inner: Arc::new(Decoder::new(weights, biases, slopes)?) })
    }

    fn forward<'py>(&self, py: Python<'py>, z: PyReadonlyArray2<'py, f64>) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let zt = points(&z, self.inner.latent_dim(), "Z")?;
        let out = py.detach(|| self.inner.try_forward_batch(zt))?;
        to_rows(py, out)
    }

    fn patterns<'py>(&self, py: Python<'py>, z: PyReadonlyArray2<'py, f64>) -> PyResult<Bound<'py, PyArray2<bool>>> {
        let zt = points(&z, self.inner.latent_dim(), "Z")?;
        let out = py.detach(|| self.inner.try_patterns_batch(zt))?;
        to_rows(py, out)
    }

    fn regions(&self, py: Python<'_>, max_regions: usize) -> PyResult<PyPartition> {
        let decoder = self.inner.clone();
        let partition = run_released(py, move |cancel| Partition::enumerate(decoder, max_regions, cancel))?;
        Ok(PyPartition { inner: Arc::new(partition) })
    }
}

/// `exactem.Decoder.random`'s weights (`(out, in)` arrays) and biases: `Decoder::random_parameters`.
#[pyfunction]
fn random_parameters<'py>(
    py: Python<'py>,
    widths: Vec<usize>,
    seed: u64,
) -> PyResult<(Vec<Bound<'py, PyArray2<f64>>>, Vec<Bound<'py, PyArray1<f64>>>)> {
    let (weights, biases) = Decoder::random_parameters(&widths, seed)?;
    let weights = weights.into_iter().map(|w| to_rows(py, w.transpose())).collect::<PyResult<Vec<_>>>()?;
    let biases = biases.into_iter().map(|b| PyArray1::from_vec(py, b.data.into())).collect();
    Ok((weights, biases))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyDecoder>()?;
    m.add_function(wrap_pyfunction!(random_parameters, m)?)
}
