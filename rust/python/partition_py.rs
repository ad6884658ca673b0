use std::sync::Arc;

use numpy::{PyArray1, PyArray2, PyArray3, PyArrayMethods, PyReadonlyArray2};
use pyo3::exceptions::PyIndexError;
use pyo3::prelude::*;
use rayon::prelude::*;

use super::model_py::points;
use super::run_released;
use crate::partition::{get_bit, Partition};

#[pyclass(name = "PartitionCore", module = "exactem._core", frozen)]
pub struct PyPartition {
    pub inner: Arc<Partition>,
}

impl PyPartition {
    fn check(&self, i: isize) -> PyResult<usize> {
        let n = self.inner.len() as isize;
        let j = if i < 0 { i + n } else { i };
        if j < 0 || j >= n {
            return Err(PyIndexError::new_err(format!("region index {i} out of range for {n} regions")));
        }
        Ok(j as usize)
    }
}

#[pymethods]
impl PyPartition {
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn patterns<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<bool>>> {
        let (r, h) = (self.inner.len(), self.inner.decoder().n_hidden());
        let mut out = Vec::with_capacity(r * h);
        for q in 0..r {
            let words = self.inner.pattern_words(q);
            out.extend((0..h).map(|k| get_bit(words, k)));
        }
        PyArray1::from_vec(py, out).reshape([r, h])
    }

    fn interior_points<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let (r, s) = (self.inner.len(), self.inner.decoder().latent_dim());
        let out: Vec<f64> = (0..r).flat_map(|q| self.inner.interior_point(q).to_vec()).collect();
        PyArray1::from_vec(py, out).reshape([r, s])
    }

    fn maps<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyArray3<f64>>, Bound<'py, PyArray2<f64>>)> {
        let dec = self.inner.decoder();
        let (r, d, s) = (self.inner.len(), dec.output_dim(), dec.latent_dim());
        let (a, b) = self.inner.maps();
        Ok((PyArray1::from_slice(py, a).reshape([r, d, s])?, PyArray1::from_slice(py, b).reshape([r, d])?))
    }

    fn bounded<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<bool>>> {
        let inner = self.inner.clone();
        let out = run_released(py, move |cancel| {
            (0..inner.len())
                .into_par_iter()
                .map(|q| {
                    cancel.check()?;
                    Ok(inner.is_bounded(q))
                })
                .collect::<crate::Result<Vec<bool>>>()
        })?;
        Ok(PyArray1::from_vec(py, out))
    }

    /// `(G, h, units, points)` of region i's facets: region i is `{z : G z <= h}`.
    fn facets<'py>(
        &self,
        py: Python<'py>,
        i: isize,
    ) -> PyResult<(
        Bound<'py, PyArray2<f64>>,
        Bound<'py, PyArray1<f64>>,
        Bound<'py, PyArray1<i64>>,
        Bound<'py, PyArray2<f64>>,
    )> {
        let q = self.check(i)?;
        let s = self.inner.decoder().latent_dim();
        let facets = py.detach(|| self.inner.facets(q).to_vec());
        let n = facets.len();
        let g: Vec<f64> = facets.iter().flat_map(|f| f.normal.clone()).collect();
        let h: Vec<f64> = facets.iter().map(|f| f.offset).collect();
        let units: Vec<i64> = facets.iter().map(|f| f.unit as i64).collect();
        let p: Vec<f64> = facets.iter().flat_map(|f| f.point.clone()).collect();
        Ok((
            PyArray1::from_vec(py, g).reshape([n, s])?,
            PyArray1::from_vec(py, h),
            PyArray1::from_vec(py, units),
            PyArray1::from_vec(py, p).reshape([n, s])?,
        ))
    }

    fn neighbors<'py>(&self, py: Python<'py>, i: isize) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let q = self.check(i)?;
        let out: Vec<i64> = py.detach(|| self.inner.neighbors(q).into_iter().map(|r| r as i64).collect());
        Ok(PyArray1::from_vec(py, out))
    }

    fn locate<'py>(&self, py: Python<'py>, z: PyReadonlyArray2<'py, f64>) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let s = self.inner.decoder().latent_dim();
        points(&z, s, "Z")?;
        let data = z.as_slice()?;
        let out: Vec<i64> = py.detach(|| data.par_chunks(s).map(|point| self.inner.locate(point) as i64).collect());
        Ok(PyArray1::from_vec(py, out))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPartition>()
}
