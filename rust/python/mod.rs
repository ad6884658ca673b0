//! pyo3 bindings: numpy in, numpy out. No logic lives here beyond conversion; every long call
//! goes through [`run_released`] or [`run_released_here`], which release the GIL, turn Ctrl-C
//! into cancellation and keep Rust panics from reaching Python.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Mutex};

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyKeyboardInterrupt, PyMemoryError, PyValueError};
use pyo3::prelude::*;

use crate::cancel::Cancel;
use crate::error::Error;
use crate::parallel;

/// The extension's allocator keeps freed pages for reuse: with the system allocator every
/// E-step's output arrays (megabytes) came from fresh pages, and faulting them in took half of
/// an S = 1 E-step (`BENCHMARKS.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod gauss_py;
mod inference_py;
mod learning_py;
mod model_py;
mod partition_py;
mod threads;

create_exception!(_core, ExactemError, PyException, "Base class of exactem's own errors.");
create_exception!(
    _core,
    RegionLimitError,
    ExactemError,
    "The decoder has more linear regions than the max_regions limit allows."
);
create_exception!(_core, NumericalError, ExactemError, "A numerical routine could not produce a trustworthy answer.");
create_exception!(_core, InternalError, ExactemError, "A bug in exactem: please report it.");

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        match err {
            Error::InvalidInput(msg) => PyValueError::new_err(msg),
            Error::RegionLimit { .. } => RegionLimitError::new_err(err.to_string()),
            Error::Interrupted => PyKeyboardInterrupt::new_err("exactem computation interrupted"),
            Error::Numerical(_) => NumericalError::new_err(err.to_string()),
            Error::Memory { .. } => PyMemoryError::new_err(err.to_string()),
            Error::Internal(_) => InternalError::new_err(err.to_string()),
        }
    }
}

/// Runs `work` on a worker thread with the GIL released. The calling thread polls for Python
/// signals every 20 ms while it waits for the result; on Ctrl-C it cancels the work, waits for
/// it to stop, and raises KeyboardInterrupt. A panic in `work` becomes `InternalError`, never a Python-side abort.
pub(crate) fn run_released<T, F>(py: Python<'_>, work: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce(&Cancel) -> crate::Result<T> + Send,
{
    let cancel = Cancel::new();
    let pool = threads::pool().map_err(no_threads)?;
    let outcome = py.detach(|| {
        // The work runs on the process's pool (`threads`: starting a thread costs ~50 us here,
        // more than many whole calls) and its result comes back over a channel, so the caller
        // wakes the moment the work is done, not after a polling period.
        let (sender, receiver) = mpsc::channel();
        let token = &cancel;
        pool.in_place_scope(|scope| {
            scope.spawn(move |_| {
                let outcome = catch_unwind(AssertUnwindSafe(|| token.enter(|| work(token))));
                let _ = sender.send(outcome);
            });
            let mut interrupt = None;
            loop {
                match receiver.recv_timeout(parallel::POLL_PERIOD) {
                    Ok(outcome) => return (outcome, interrupt),
                    Err(mpsc::RecvTimeoutError::Timeout) => check_signals(&cancel, &mut interrupt),
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        unreachable!("the worker sends its outcome before it exits, panics included")
                    }
                }
            }
        })
    });
    finish(outcome.0, outcome.1)
}

/// As [`run_released`] for work whose parallel parts are all [`crate::parallel::map`]s: `work`
/// runs on the calling thread, which starts on its batches at once and shares them with the
/// pool's workers as they arrive, instead of handing everything over and waiting for workers
/// to wake (~35-45 us a call on the machines we measure on, more for a halted virtual CPU).
/// The thread checks for Python signals between its batches and while it waits for the
/// workers' (so Ctrl-C waits for at most the batch in hand).
pub(crate) fn run_released_here<T, F>(py: Python<'_>, work: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce(&Cancel) -> crate::Result<T> + Send,
{
    let cancel = Cancel::new();
    let pool = threads::pool().map_err(no_threads)?;
    let interrupt = Mutex::new(None);
    let outcome = py.detach(|| {
        let poll = || check_signals(&cancel, &mut interrupt.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        catch_unwind(AssertUnwindSafe(|| parallel::as_caller(pool, &poll, || cancel.enter(|| work(&cancel)))))
    });
    finish(outcome, interrupt.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

/// On a pending Python signal (Ctrl-C), cancels the work and keeps the signal's exception (the
/// first one only).
fn check_signals(cancel: &Cancel, interrupt: &mut Option<PyErr>) {
    if interrupt.is_none() {
        if let Err(err) = Python::attach(|py| py.check_signals()) {
            cancel.cancel();
            *interrupt = Some(err);
        }
    }
}

/// The Python outcome of a call: the signal's exception if one interrupted it, else its result
/// or error, a panic as [`InternalError`].
fn finish<T>(outcome: std::thread::Result<crate::Result<T>>, interrupt: Option<PyErr>) -> PyResult<T> {
    match (outcome, interrupt) {
        (_, Some(signal_error)) => Err(signal_error),
        (Ok(result), None) => result.map_err(PyErr::from),
        (Err(panic), None) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            // The panic unwound through the call (the pool's jobs catch their own and hand them
            // to the caller), so the pool and the process stay usable.
            Err(Error::Internal(format!("a Rust panic: {msg} (the call was abandoned; exactem remains usable)")).into())
        }
    }
}

/// Test hook: a call whose job `which` of `jobs` panics, on whichever thread takes it (the
/// pool's workers included), as a bug in the engine would. It must come back as
/// `InternalError` promptly, leaving the pool usable for the next call.
#[pyfunction]
fn _force_panic(py: Python<'_>, jobs: usize, which: usize) -> PyResult<usize> {
    run_released_here(py, move |_| {
        let done = parallel::map(jobs, |i| {
            std::thread::sleep(std::time::Duration::from_millis(2));
            assert!(i != which, "forced panic in job {i} (test hook)");
            1usize
        });
        Ok(done.into_iter().sum())
    })
}

/// The CPUs each worker thread may run on, worker by worker (see `threads`).
#[pyfunction]
fn worker_cpus(py: Python<'_>) -> PyResult<Vec<Vec<usize>>> {
    py.detach(threads::worker_cpus).map_err(no_threads)
}

fn no_threads(err: rayon::ThreadPoolBuildError) -> PyErr {
    ExactemError::new_err(format!("exactem could not start its worker threads: {err}"))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(worker_cpus, m)?)?;
    m.add_function(wrap_pyfunction!(_force_panic, m)?)?;
    m.add("ExactemError", py.get_type::<ExactemError>())?;
    m.add("RegionLimitError", py.get_type::<RegionLimitError>())?;
    m.add("NumericalError", py.get_type::<NumericalError>())?;
    m.add("InternalError", py.get_type::<InternalError>())?;
    model_py::register(m)?;
    partition_py::register(m)?;
    inference_py::register(m)?;
    gauss_py::register(m)?;
    learning_py::register(m)?;
    Ok(())
}
