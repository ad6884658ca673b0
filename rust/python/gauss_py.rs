use numpy::ndarray::{Array1, Array2, Array3};
use numpy::{PyArray1, PyArray2, PyArray3, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;

use super::run_released;
use crate::gauss::{moments_batch, rectangles_batch, IntegrationSettings, PolytopeShape};

/// The array's entries in row-major order, whatever its memory layout.
fn row_major(a: &PyReadonlyArray2<'_, f64>) -> Vec<f64> {
    a.as_array().iter().copied().collect()
}

/// `(log_mass (n,), mean (n, S), cov (n, S, S), error (n,))` for `N(means[k], cov)` on
/// `{z : G z <= h[k]}`. Shapes are checked by the Python wrapper; the engine re-checks sizes.
#[pyfunction]
#[pyo3(signature = (g, h, means, cov, rtol, seed, want_moments))]
// The arguments are the Python signature.
#[allow(clippy::too_many_arguments)]
fn polytope_moments<'py>(
    py: Python<'py>,
    g: PyReadonlyArray2<'py, f64>,
    h: PyReadonlyArray2<'py, f64>,
    means: PyReadonlyArray2<'py, f64>,
    cov: PyReadonlyArray2<'py, f64>,
    rtol: f64,
    seed: u64,
    want_moments: bool,
) -> PyResult<(
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray2<f64>>,
    Bound<'py, PyArray3<f64>>,
    Bound<'py, PyArray1<f64>>,
)> {
    let s = cov.shape()[1];
    let n = means.shape()[0];
    let (g, h, means, cov) = (row_major(&g), row_major(&h), row_major(&means), row_major(&cov));
    let results = run_released(py, move |cancel| {
        let shape = PolytopeShape::new(&g, s, &cov)?;
        moments_batch(&shape, &h, &means, n, want_moments, &IntegrationSettings::new(rtol, seed, cancel))
    })?;
    let mut log_mass = Array1::zeros(n);
    let mut mean = Array2::zeros((n, s));
    let mut covs = Array3::zeros((n, s, s));
    let mut error = Array1::zeros(n);
    for (k, r) in results.into_iter().enumerate() {
        log_mass[k] = r.log_mass;
        error[k] = r.error;
        for i in 0..s {
            mean[[k, i]] = r.mean[i];
            for j in 0..s {
                covs[[k, i, j]] = r.cov[i * s + j];
            }
        }
    }
    Ok((
        PyArray1::from_owned_array(py, log_mass),
        PyArray2::from_owned_array(py, mean),
        PyArray3::from_owned_array(py, covs),
        PyArray1::from_owned_array(py, error),
    ))
}

/// `(log p (n,), relative error (n,))` of `P(lower[k] <= Z <= upper[k])`, `Z ~ N(mean, cov)`.
#[pyfunction]
#[pyo3(signature = (lower, upper, mean, cov, rtol, seed))]
fn mvn_cdf<'py>(
    py: Python<'py>,
    lower: PyReadonlyArray2<'py, f64>,
    upper: PyReadonlyArray2<'py, f64>,
    mean: PyReadonlyArray1<'py, f64>,
    cov: PyReadonlyArray2<'py, f64>,
    rtol: f64,
    seed: u64,
) -> PyResult<(Bound<'py, PyArray1<f64>>, Bound<'py, PyArray1<f64>>)> {
    let n = lower.shape()[0];
    let (lower, upper, mean, cov) = (row_major(&lower), row_major(&upper), mean.as_array().to_vec(), row_major(&cov));
    let results = run_released(py, move |cancel| {
        rectangles_batch(&lower, &upper, &mean, &cov, n, &IntegrationSettings::new(rtol, seed, cancel))
    })?;
    let (log_p, error): (Vec<f64>, Vec<f64>) = results.into_iter().unzip();
    Ok((PyArray1::from_vec(py, log_p), PyArray1::from_vec(py, error)))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(polytope_moments, m)?)?;
    m.add_function(wrap_pyfunction!(mvn_cdf, m)?)
}
