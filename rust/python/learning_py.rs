use std::sync::Arc;

use numpy::ndarray::Array2;
use numpy::{PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArray3, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::run_released_here;
use crate::learning::kronecker::{Curvature, KroneckerOperator, MAX_LATENT1};

/// The entries of an array in row-major order, whatever its memory layout.
fn row_major<D: numpy::ndarray::Dimension>(a: &numpy::PyReadonlyArray<'_, f64, D>) -> Vec<f64> {
    a.as_array().iter().copied().collect()
}

/// One hidden layer's M-step operator `X -> sum_q C_q X M_q K_q M_q^T` (`learning::kronecker`):
/// the factors are copied once, and every application releases the GIL.
#[pyclass(name = "KroneckerCore", module = "exactem._core", frozen)]
pub struct PyKronecker {
    operator: Arc<KroneckerOperator>,
    units: usize,
    inputs: usize,
}

#[pymethods]
impl PyKronecker {
    /// `maps` (R, A1, S1), `moments` (R, S1, S1), and either `curvature` (R, D_l, D_l) or
    /// `output_map` (R, D, D_l) with `inverse_noise` (D,).
    #[new]
    #[pyo3(signature = (maps, moments, curvature=None, output_map=None, inverse_noise=None))]
    fn new(
        maps: PyReadonlyArray3<'_, f64>,
        moments: PyReadonlyArray3<'_, f64>,
        curvature: Option<PyReadonlyArray3<'_, f64>>,
        output_map: Option<PyReadonlyArray3<'_, f64>>,
        inverse_noise: Option<PyReadonlyArray1<'_, f64>>,
    ) -> PyResult<Self> {
        let [regions, inputs, latent1] = [maps.shape()[0], maps.shape()[1], maps.shape()[2]];
        if moments.shape() != [regions, latent1, latent1] {
            return Err(PyValueError::new_err(format!(
                "moments must have shape ({regions}, {latent1}, {latent1}); got {:?}",
                moments.shape()
            )));
        }
        let (curvature, units) = match (curvature, output_map, inverse_noise) {
            (Some(c), None, None) => {
                let units = c.shape()[1];
                if c.shape() != [regions, units, units] {
                    return Err(PyValueError::new_err(format!(
                        "curvature must have shape ({regions}, D_l, D_l); got {:?}",
                        c.shape()
                    )));
                }
                (Curvature::Dense(row_major(&c)), units)
            }
            (None, Some(f), Some(w)) => {
                let (outputs, units) = (f.shape()[1], f.shape()[2]);
                if f.shape()[0] != regions || w.len() != outputs {
                    return Err(PyValueError::new_err(format!(
                        "output_map must have shape ({regions}, D, D_l) and inverse_noise D entries; got {:?} and {}",
                        f.shape(),
                        w.len()
                    )));
                }
                (Curvature::ThroughOutput { f: row_major(&f), inverse_noise: row_major(&w) }, units)
            }
            _ => return Err(PyValueError::new_err("give either curvature, or output_map and inverse_noise")),
        };
        let operator =
            KroneckerOperator::new(regions, units, inputs, latent1, row_major(&maps), row_major(&moments), curvature)?;
        Ok(PyKronecker { operator: Arc::new(operator), units, inputs })
    }

    /// `sum_q C_q X M_q K_q M_q^T` for `X` of shape (D_l, A1).
    fn __call__<'py>(&self, py: Python<'py>, x: PyReadonlyArray2<'py, f64>) -> PyResult<Bound<'py, PyArray2<f64>>> {
        if x.shape() != [self.units, self.inputs] {
            return Err(PyValueError::new_err(format!(
                "X must have shape ({}, {}); got {:?}",
                self.units,
                self.inputs,
                x.shape()
            )));
        }
        let data = row_major(&x);
        let operator = self.operator.clone();
        let y = run_released_here(py, move |_| operator.apply(&data))?;
        let y =
            Array2::from_shape_vec((self.units, self.inputs), y).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(PyArray2::from_owned_array(py, y))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("KRONECKER_MAX_LATENT1", MAX_LATENT1)?;
    m.add_class::<PyKronecker>()
}
