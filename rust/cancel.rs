use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// A cancellation flag shared between a long computation and whoever may stop it (the Python
/// bindings set it on Ctrl-C). Cloning shares the same flag.
///
/// The computation may also stop itself with an error ([`Cancel::fail`]): code deep inside a
/// call that has no error channel of its own (a region integral behind `RegionIntegrator`)
/// records what went wrong, every loop that checks the flag stops, and the call's next
/// [`Cancel::check`] returns that error instead of [`Error::Interrupted`].
///
/// A call may also make its token this thread's *current* one ([`Cancel::enter`]), so that
/// loops reached through interfaces that do not carry it (again, region integrals) can still
/// check it ([`Cancel::current`]).
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    cancelled: AtomicBool,
    /// The first error recorded by [`Cancel::fail`].
    error: Mutex<Option<Error>>,
}

thread_local! {
    static CURRENT: RefCell<Option<Cancel>> = const { RefCell::new(None) };
}

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::Relaxed);
    }

    /// Stops the computation with `error` (the first recorded wins): later [`Cancel::check`]s
    /// return it.
    pub fn fail(&self, error: Error) {
        {
            let mut slot = self.0.error.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if slot.is_none() {
                *slot = Some(error);
            }
        }
        self.0.cancelled.store(true, Ordering::Release);
    }

    /// Whether cancelled. On the thread that waits for Ctrl-C (see
    /// [`crate::parallel::poll_if_due`]) it also checks for it, every 20 ms at most.
    pub fn is_cancelled(&self) -> bool {
        crate::parallel::poll_if_due();
        self.0.cancelled.load(Ordering::Relaxed)
    }

    /// `Err` once cancelled: the recorded error, else `Interrupted`. Called at loop heads of
    /// long computations (one relaxed load while not cancelled).
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(self.reason())
        } else {
            Ok(())
        }
    }

    fn reason(&self) -> Error {
        std::sync::atomic::fence(Ordering::Acquire);
        self.0.error.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone().unwrap_or(Error::Interrupted)
    }

    /// Runs `work` with this token as the calling thread's current one (restored after, even
    /// on a panic).
    pub fn enter<R>(&self, work: impl FnOnce() -> R) -> R {
        struct Restore(Option<Cancel>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                CURRENT.with(|current| *current.borrow_mut() = previous);
            }
        }
        let _restore = Restore(CURRENT.with(|current| current.replace(Some(self.clone()))));
        work()
    }

    /// The calling thread's current token (see [`Cancel::enter`]); a fresh one, which nothing
    /// cancels, outside any.
    pub fn current() -> Cancel {
        CURRENT.with(|current| current.borrow().clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_error_wins_over_interruption_and_the_first_is_kept() {
        let cancel = Cancel::new();
        assert!(cancel.check().is_ok());
        cancel.fail(Error::Numerical("first".into()));
        cancel.fail(Error::Numerical("second".into()));
        cancel.cancel();
        assert_eq!(cancel.check(), Err(Error::Numerical("first".into())));
        let plain = Cancel::new();
        plain.cancel();
        assert_eq!(plain.check(), Err(Error::Interrupted));
    }

    #[test]
    fn the_current_token_is_the_entered_one_and_is_restored() {
        assert!(!Cancel::current().is_cancelled());
        let outer = Cancel::new();
        outer.cancel();
        outer.enter(|| {
            assert!(Cancel::current().is_cancelled());
            Cancel::new().enter(|| assert!(!Cancel::current().is_cancelled()));
            assert!(Cancel::current().is_cancelled());
            let _ = std::panic::catch_unwind(|| Cancel::new().enter(|| panic!("restored anyway")));
            assert!(Cancel::current().is_cancelled());
        });
        assert!(!Cancel::current().is_cancelled());
    }
}
