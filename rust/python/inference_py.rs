use std::sync::Arc;

use nalgebra::DMatrixView;
use numpy::{
    PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArray3, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::model_py::points;
use super::partition_py::PyPartition;
use super::{run_released, run_released_here};
use crate::inference::elbo::{self, GaussianQ, VariationalEngine};
use crate::inference::posterior::PointPosterior;
use crate::inference::region_sums::{default_block_rows, RegionSums};
use crate::inference::{e_step, log_likelihood, GaussIntegrator, IntegrationSettings, RegionAlgebra};
use crate::partition::Partition;

/// Per-point values and their estimated absolute errors.
type ValuesAndErrors<'py> = (Bound<'py, PyArray1<f64>>, Bound<'py, PyArray1<f64>>);

/// The DGN's exact inference engine for one decoder partition and noise variance.
#[pyclass(name = "DgnCore", module = "exactem._core", frozen)]
pub struct PyDgn {
    partition: Arc<Partition>,
    algebra: Arc<RegionAlgebra>,
    integrator: Arc<GaussIntegrator>,
    /// The region integrals' accuracy and seed for S >= 3 (the ELBO's integrals use them too).
    rtol: f64,
    seed: u64,
}

#[pymethods]
impl PyDgn {
    #[new]
    #[pyo3(signature = (partition, noise_var, rtol=1e-6, seed=0))]
    fn new(
        py: Python<'_>,
        partition: &PyPartition,
        noise_var: PyReadonlyArray1<'_, f64>,
        rtol: f64,
        seed: u64,
    ) -> PyResult<Self> {
        let shared = partition.inner.clone();
        let noise: Vec<f64> = noise_var.as_array().to_vec();
        let (algebra, integrator) = run_released(py, move |cancel| {
            let algebra = RegionAlgebra::new(&shared, &noise)?;
            let integrator = GaussIntegrator::new(&shared, &algebra, &IntegrationSettings::new(rtol, seed, cancel))?;
            Ok((algebra, integrator))
        })?;
        Ok(PyDgn {
            partition: partition.inner.clone(),
            algebra: Arc::new(algebra),
            integrator: Arc::new(integrator),
            rtol,
            seed,
        })
    }

    fn log_likelihood<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f64>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let d = self.partition.decoder().output_dim();
        points(&x, d, "X")?;
        let data = x.as_slice()?.to_vec();
        let (algebra, integrator) = (self.algebra.clone(), self.integrator.clone());
        let out = run_released_here(py, move |cancel| {
            log_likelihood(&algebra, &*integrator, DMatrixView::from_slice(&data, d, data.len() / d), cancel)
        })?;
        Ok(PyArray1::from_vec(py, out))
    }

    /// `(log_likelihood, indptr, regions, m0, m1, m2)`: CSR by point.
    fn e_step<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f64>,
    ) -> PyResult<(
        Bound<'py, PyArray1<f64>>,
        Bound<'py, PyAny>,
        Bound<'py, PyAny>,
        Bound<'py, PyArray1<f64>>,
        Bound<'py, PyArray1<f64>>,
        Bound<'py, PyArray1<f64>>,
    )> {
        let d = self.partition.decoder().output_dim();
        points(&x, d, "X")?;
        let data = x.as_slice()?.to_vec();
        let (algebra, integrator) = (self.algebra.clone(), self.integrator.clone());
        let stats = run_released_here(py, move |cancel| {
            e_step(&algebra, &*integrator, DMatrixView::from_slice(&data, d, data.len() / d), cancel)
        })?;
        // scipy's sparse matrices take int32 indices where they fit, and convert others to it.
        let small = stats.indptr.last().copied().unwrap_or(0).max(self.partition.len()) <= i32::MAX as usize;
        let indices = |values: Vec<usize>| -> Bound<'py, PyAny> {
            if small {
                PyArray1::from_vec(py, values.into_iter().map(|v| v as i32).collect()).into_any()
            } else {
                PyArray1::from_vec(py, values.into_iter().map(|v| v as i64).collect()).into_any()
            }
        };
        Ok((
            PyArray1::from_vec(py, stats.log_likelihood),
            indices(stats.indptr),
            indices(stats.region),
            PyArray1::from_vec(py, stats.m0),
            PyArray1::from_vec(py, stats.m1),
            PyArray1::from_vec(py, stats.m2),
        ))
    }

    /// The E-step reduced to per-region sums as it goes, `block_rows` rows at a time (each
    /// block copied, its statistics added to the sums and dropped):
    /// `(log_likelihood, s0, s1, s2, sx0, sx1, sum_x2)`, the sums of the rows about `centre`.
    #[pyo3(signature = (x, centre, block_rows=None))]
    fn e_step_sums<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f64>,
        centre: PyReadonlyArray1<'py, f64>,
        block_rows: Option<usize>,
    ) -> PyResult<(
        Bound<'py, PyArray1<f64>>,
        Bound<'py, PyArray1<f64>>,
        Bound<'py, PyArray1<f64>>,
        Bound<'py, PyArray1<f64>>,
        Bound<'py, PyArray1<f64>>,
        Bound<'py, PyArray1<f64>>,
        Bound<'py, PyArray1<f64>>,
    )> {
        let decoder = self.partition.decoder();
        let (d, s, r) = (decoder.output_dim(), decoder.latent_dim(), self.partition.len());
        let n = points(&x, d, "X")?.ncols();
        let centre = centre.as_array().to_vec();
        if centre.len() != d || centre.iter().any(|c| !c.is_finite()) {
            return Err(PyValueError::new_err(format!("centre must have {d} finite entries")));
        }
        if block_rows == Some(0) {
            return Err(PyValueError::new_err("block_rows must be at least 1"));
        }
        let block = block_rows.unwrap_or_else(|| default_block_rows(d, r, s));
        let data = x.as_slice()?;
        let mut sums = RegionSums::new(r, s, d);
        let mut log_p = Vec::with_capacity(n);
        for first in (0..n).step_by(block) {
            let rows = block.min(n - first);
            // A copy of the block only: the array may change while the engine runs without the GIL.
            let copy = data[first * d..(first + rows) * d].to_vec();
            let (algebra, integrator, centre, sums) = (&*self.algebra, &*self.integrator, &centre, &mut sums);
            let block_log_p = run_released_here(py, move |cancel| {
                let view = DMatrixView::from_slice(&copy, d, rows);
                let stats = e_step(algebra, integrator, view, cancel)?;
                sums.add(&stats, view, centre);
                Ok(stats.log_likelihood)
            })?;
            log_p.extend(block_log_p);
        }
        let sx1 = sums.sx1_by_output();
        Ok((
            PyArray1::from_vec(py, log_p),
            PyArray1::from_vec(py, sums.s0),
            PyArray1::from_vec(py, sums.s1),
            PyArray1::from_vec(py, sums.s2),
            PyArray1::from_vec(py, sums.sx0),
            PyArray1::from_vec(py, sx1),
            PyArray1::from_vec(py, sums.sum_x2),
        ))
    }

    /// `(elbo, error)` of q(z | x_n) = N(q_mean[n], q_cov[n]): exact, with an error estimate.
    fn elbo<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f64>,
        q_mean: PyReadonlyArray2<'py, f64>,
        q_cov: PyReadonlyArray3<'py, f64>,
    ) -> PyResult<ValuesAndErrors<'py>> {
        let (data, mean, cov) = self.variational_inputs(&x, &q_mean, &q_cov)?;
        let (partition, algebra, rtol, seed) = (self.partition.clone(), self.algebra.clone(), self.rtol, self.seed);
        let d = partition.decoder().output_dim();
        let out = run_released_here(py, move |cancel| {
            let engine = VariationalEngine::new(&partition, &algebra, rtol, seed)?;
            let q = GaussianQ { mean: &mean, cov: &cov };
            elbo::elbo(&engine, DMatrixView::from_slice(&data, d, data.len() / d), q, cancel)
        })?;
        Ok((PyArray1::from_vec(py, out.value), PyArray1::from_vec(py, out.error)))
    }

    /// `(gap, error)`: `log p(x_n) - ELBO_n = KL(q || p(z | x_n))`, summed region by region.
    fn posterior_gap<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f64>,
        q_mean: PyReadonlyArray2<'py, f64>,
        q_cov: PyReadonlyArray3<'py, f64>,
    ) -> PyResult<ValuesAndErrors<'py>> {
        let (data, mean, cov) = self.variational_inputs(&x, &q_mean, &q_cov)?;
        let (partition, algebra, integrator, rtol, seed) =
            (self.partition.clone(), self.algebra.clone(), self.integrator.clone(), self.rtol, self.seed);
        let d = partition.decoder().output_dim();
        let out = run_released_here(py, move |cancel| {
            let engine = VariationalEngine::new(&partition, &algebra, rtol, seed)?;
            let q = GaussianQ { mean: &mean, cov: &cov };
            let points = DMatrixView::from_slice(&data, d, data.len() / d);
            let log_p = log_likelihood(&algebra, &*integrator, points, cancel)?;
            elbo::posterior_gap(&engine, points, &log_p, q, cancel)
        })?;
        Ok((PyArray1::from_vec(py, out.value), PyArray1::from_vec(py, out.error)))
    }

    fn posterior(&self, py: Python<'_>, x: PyReadonlyArray1<'_, f64>) -> PyResult<PyPosterior> {
        let d = self.partition.decoder().output_dim();
        let xv = x.as_array().to_vec();
        if xv.len() != d {
            return Err(PyValueError::new_err(format!("x must have {d} entries; got {}", xv.len())));
        }
        let (algebra, integrator) = (self.algebra.clone(), self.integrator.clone());
        let posterior = run_released_here(py, move |_| Ok(PointPosterior::new(&algebra, &*integrator, &xv)))?;
        Ok(PyPosterior { partition: self.partition.clone(), algebra: self.algebra.clone(), posterior })
    }
}

impl PyDgn {
    /// The points, q's means and covariances as flat copies, their shapes checked against
    /// each other (the values are checked by the engine).
    fn variational_inputs(
        &self,
        x: &PyReadonlyArray2<'_, f64>,
        q_mean: &PyReadonlyArray2<'_, f64>,
        q_cov: &PyReadonlyArray3<'_, f64>,
    ) -> PyResult<(Vec<f64>, Vec<f64>, Vec<f64>)> {
        let (d, s) = (self.partition.decoder().output_dim(), self.partition.decoder().latent_dim());
        let n = points(x, d, "X")?.ncols();
        if points(q_mean, s, "q_mean")?.ncols() != n {
            return Err(PyValueError::new_err(format!("q_mean must have one row per point of X ({n})")));
        }
        if q_cov.shape() != [n, s, s] {
            return Err(PyValueError::new_err(format!(
                "q_var must have shape ({n}, {s}, {s}); got {:?}",
                q_cov.shape()
            )));
        }
        let contiguous = |what: &str| PyValueError::new_err(format!("{what} must be C-contiguous"));
        Ok((
            x.as_slice().map_err(|_| contiguous("X"))?.to_vec(),
            q_mean.as_slice().map_err(|_| contiguous("q_mean"))?.to_vec(),
            q_cov.as_slice().map_err(|_| contiguous("q_var"))?.to_vec(),
        ))
    }
}

#[pyclass(name = "PosteriorCore", module = "exactem._core", frozen)]
pub struct PyPosterior {
    partition: Arc<Partition>,
    algebra: Arc<RegionAlgebra>,
    posterior: PointPosterior,
}

#[pymethods]
impl PyPosterior {
    #[getter]
    fn log_likelihood(&self) -> f64 {
        self.posterior.log_likelihood
    }

    #[getter]
    fn weights<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        PyArray1::from_slice(py, &self.posterior.weights)
    }

    #[getter]
    fn mean<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        PyArray1::from_slice(py, &self.posterior.mean)
    }

    /// `Cov[z | x]`, S x S.
    #[getter]
    fn cov<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let s = self.posterior.mean.len();
        PyArray1::from_slice(py, &self.posterior.cov).reshape([s, s])
    }

    fn logpdf<'py>(&self, py: Python<'py>, z: PyReadonlyArray2<'py, f64>) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let s = self.posterior.mean.len();
        points(&z, s, "Z")?;
        let data = z.as_slice()?;
        let out: Vec<f64> = py
            .detach(|| data.chunks(s).map(|p| self.posterior.log_density(&self.partition, &self.algebra, p)).collect());
        Ok(PyArray1::from_vec(py, out))
    }

    fn map<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        let out = py.detach(|| self.posterior.map(&self.partition, &self.algebra));
        PyArray1::from_vec(py, out)
    }

    fn sample<'py>(&self, py: Python<'py>, n: usize, seed: u64) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let s = self.posterior.mean.len();
        // On a worker thread, so that the caller polls for Ctrl-C while it runs (sampling has
        // no parallel map to poll from).
        let (partition, algebra, posterior) = (&self.partition, &self.algebra, &self.posterior);
        let out = run_released(py, move |cancel| posterior.sample(partition, algebra, n, seed, cancel))?;
        PyArray1::from_vec(py, out).reshape([n, s])
    }
}

/// Rows per block of `DgnCore.e_step_sums` when none is given, for `d` outputs, `regions` regions
/// and latent dimension `s`.
#[pyfunction(name = "default_block_rows")]
fn default_block_rows_py(d: usize, regions: usize, s: usize) -> usize {
    default_block_rows(d, regions, s)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(default_block_rows_py, m)?)?;
    m.add_class::<PyDgn>()?;
    m.add_class::<PyPosterior>()
}
