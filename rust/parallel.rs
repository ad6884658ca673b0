//! Independent jobs shared between the thread that asked for them and a pool's workers.
//!
//! On the two-vCPU virtual machines we measure on, handing a call to a pool's workers and
//! waiting for its result cost ~35-45 us of thread switches (a log-likelihood of 16 points took
//! 50-59 us instead of 15-24), and more where a worker had to be woken on a halted virtual CPU.
//! Run under [`as_caller`], [`map`]
//! starts on the jobs at once on the calling thread, and the pool's workers take what is left
//! when they arrive; nobody waits for a worker that has not started. Elsewhere (on a pool's
//! worker, or with no caller set up) it is a rayon parallel map.

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::cancel::Cancel;

/// How often the calling thread runs its `poll` while it works or waits.
pub const POLL_PERIOD: Duration = Duration::from_millis(20);

/// What the calling thread shares its jobs with: a pool, and what it runs every
/// [`POLL_PERIOD`] (the Python bindings check for Ctrl-C there and cancel the work).
#[derive(Clone, Copy)]
struct Caller {
    pool: &'static rayon::ThreadPool,
    /// Valid while [`as_caller`] runs (it clears it before returning).
    poll: *const (dyn Fn() + Sync),
}

thread_local! {
    static CALLER: Cell<Option<Caller>> = const { Cell::new(None) };
    /// When this thread last ran its caller's `poll` from [`poll_if_due`].
    static LAST_POLL: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// On a thread set up by [`as_caller`], runs its `poll` if [`POLL_PERIOD`] has passed since
/// this last did; elsewhere nothing. Long loops reach it through `Cancel::is_cancelled`: the
/// caller works on jobs itself, and a job (an S = 3 batch: minutes) would otherwise keep it
/// from hearing Ctrl-C, which only it can (Python checks signals on its main thread).
pub fn poll_if_due() {
    let Some(caller) = CALLER.with(Cell::get) else { return };
    let now = Instant::now();
    let due = LAST_POLL.with(|last| match last.get() {
        Some(at) if now.duration_since(at) < POLL_PERIOD => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if due {
        // SAFETY: `as_caller` keeps `poll` alive while this thread's `CALLER` holds it.
        unsafe { (*caller.poll)() };
    }
}

/// Runs `work` on this thread with `pool`'s workers as helpers of its [`map`]s, calling
/// `poll` about every 20 ms while they run.
pub fn as_caller<R>(pool: &'static rayon::ThreadPool, poll: &(dyn Fn() + Sync), work: impl FnOnce() -> R) -> R {
    struct Restore(Option<Caller>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CALLER.with(|caller| caller.set(self.0));
        }
    }
    // SAFETY: only the lifetime is erased; the pointer is cleared (by `Restore`, even on a
    // panic) before `poll` goes out of scope, and only this thread reads it.
    let poll: *const (dyn Fn() + Sync) =
        unsafe { std::mem::transmute::<&(dyn Fn() + Sync), &'static (dyn Fn() + Sync)>(poll) };
    let _restore = Restore(CALLER.with(|caller| caller.replace(Some(Caller { pool, poll }))));
    work()
}

/// The number of threads [`map`] runs its jobs on: the caller's pool's, or the current rayon
/// pool's (without setting up rayon's global pool from a thread outside any).
pub fn current_num_threads() -> usize {
    match CALLER.with(Cell::get) {
        Some(caller) => caller.pool.current_num_threads(),
        None => rayon::current_num_threads(),
    }
}

/// `[job(0), ..., job(count - 1)]`, the jobs run in parallel.
pub fn map<T: Send + 'static>(count: usize, job: impl Fn(usize) -> T + Sync) -> Vec<T> {
    match CALLER.with(Cell::get) {
        Some(caller) if count > 1 => shared_map(caller, count, &job),
        Some(_) => (0..count).map(job).collect(),
        None => {
            let token = Cancel::current();
            (0..count).into_par_iter().map(|i| token.enter(|| job(i))).collect()
        }
    }
}

/// What the calling thread and its helpers share: the next job to take, and whether the
/// caller has collected every result (a helper that starts after that takes none).
struct Progress {
    next: AtomicUsize,
    closed: AtomicBool,
    /// Helpers between their start and their end.
    active: AtomicUsize,
    /// How many more workers may help: with the caller, as many threads as the pool has.
    places: AtomicUsize,
    /// A job panicked: nobody takes another (the panic is the call's outcome, and running the
    /// rest first kept a failed call busy for minutes, Ctrl-C unheard).
    stop: AtomicBool,
}

/// The caller's jobs as the helpers hold them: a pointer that may outlive them, followed only
/// as [`shared_map`] allows.
struct Jobs<T>(*const (dyn Fn(usize) -> T + Sync));

// SAFETY: the pointee is `Sync`, and it is only called through a shared reference.
unsafe impl<T> Send for Jobs<T> {}
unsafe impl<T> Sync for Jobs<T> {}

impl<T> Jobs<T> {
    /// # Safety
    /// Only while the jobs exist.
    unsafe fn get(&self) -> &(dyn Fn(usize) -> T + Sync) {
        // SAFETY: as the caller promises.
        unsafe { &*self.0 }
    }
}

fn shared_map<T: Send + 'static>(caller: Caller, count: usize, job: &(dyn Fn(usize) -> T + Sync)) -> Vec<T> {
    // SAFETY: only the lifetime is erased. A helper follows the pointer only after it has
    // counted itself in `active` and seen `closed` false, and this function returns only after
    // setting `closed` and seeing `active` at zero, so no helper follows it after `job` is gone.
    let jobs =
        Jobs(unsafe { std::mem::transmute::<&(dyn Fn(usize) -> T + Sync), &'static (dyn Fn(usize) -> T + Sync)>(job) }
            as *const _);
    let places = AtomicUsize::new(caller.pool.current_num_threads() - 1);
    let progress = Arc::new(Progress {
        next: AtomicUsize::new(0),
        closed: AtomicBool::new(false),
        active: AtomicUsize::new(0),
        places,
        stop: AtomicBool::new(false),
    });
    let (sender, receiver) = mpsc::channel::<(usize, std::thread::Result<T>)>();
    // Any worker but one on the caller's CPU, which could only take turns with the caller there
    // (with it, the log-likelihood of 4000 points took 10-23% longer), and no more of them than
    // leave the threads at work at the pool's size (`RAYON_NUM_THREADS=1`: the caller alone).
    let caller_cpu = current_cpu();
    // The helpers check the caller's cancellation as it would (see `crate::cancel`).
    let token = Cancel::current();
    {
        let progress = progress.clone();
        caller.pool.spawn_broadcast(move |_| {
            let on_callers_cpu = caller_cpu.is_some() && current_cpu() == caller_cpu;
            if on_callers_cpu
                || progress.places.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_err()
            {
                return;
            }
            progress.active.fetch_add(1, Ordering::SeqCst);
            if !progress.closed.load(Ordering::SeqCst) {
                // SAFETY: counted in `active` with `closed` false (see above).
                let job = unsafe { jobs.get() };
                take_jobs(&progress, count, |i| {
                    let result = token.enter(|| catch_unwind(AssertUnwindSafe(|| job(i))));
                    if result.is_err() {
                        progress.stop.store(true, Ordering::SeqCst);
                    }
                    let _ = sender.send((i, result));
                });
            }
            progress.active.fetch_sub(1, Ordering::SeqCst);
        });
    }
    // SAFETY: `as_caller` keeps `poll` alive while this thread's `CALLER` holds it.
    let poll = unsafe { &*caller.poll };
    let mut last_poll = Instant::now();
    let due = |last_poll: &mut Instant| {
        if last_poll.elapsed() >= POLL_PERIOD {
            poll();
            *last_poll = Instant::now();
        }
    };
    let mut results: Vec<Option<std::thread::Result<T>>> = (0..count).map(|_| None).collect();
    let mut collected = 0;
    take_jobs(&progress, count, |i| {
        let result = catch_unwind(AssertUnwindSafe(|| job(i)));
        if result.is_err() {
            progress.stop.store(true, Ordering::SeqCst);
        }
        results[i] = Some(result);
        collected += 1;
        due(&mut last_poll);
    });
    // No job is taken after this: every index below `taken` was taken by someone who runs it
    // and sends its result, and none above (`take_jobs` stops at `count`).
    let taken = progress.next.swap(count, Ordering::SeqCst).min(count);
    while collected < taken {
        match receiver.recv_timeout(POLL_PERIOD) {
            Ok((i, result)) => {
                if result.is_err() {
                    // The first panic stops the helpers too (they may not have seen it).
                    progress.stop.store(true, Ordering::SeqCst);
                }
                results[i] = Some(result);
                collected += 1;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // A helper sends every job it takes, and holds its sender until the pool drops it.
            Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("a helper sends every job it takes"),
        }
        due(&mut last_poll);
    }
    progress.closed.store(true, Ordering::SeqCst);
    // Every job is done: a helper still counted is on its way out.
    while progress.active.load(Ordering::SeqCst) > 0 {
        std::thread::yield_now();
    }
    if taken < count || results.iter().any(|result| matches!(result, Some(Err(_)))) {
        let first_panic = results.into_iter().flatten().find_map(|result| result.err());
        resume_unwind(first_panic.expect("jobs stop being taken only after a panic"));
    }
    results
        .into_iter()
        .map(|result| result.expect("every job collected").unwrap_or_else(|panic| resume_unwind(panic)))
        .collect()
}

/// The CPU the calling thread runs on, where the system tells.
fn current_cpu() -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: no arguments; -1 on failure.
        let cpu = unsafe { libc::sched_getcpu() };
        if cpu >= 0 {
            return Some(cpu as usize);
        }
    }
    None
}

/// Takes jobs until none is left (or one has panicked), running `run(i)` for each.
fn take_jobs(progress: &Progress, count: usize, mut run: impl FnMut(usize)) {
    loop {
        if progress.stop.load(Ordering::SeqCst) {
            return;
        }
        let i = progress.next.fetch_add(1, Ordering::SeqCst);
        if i >= count {
            return;
        }
        run(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn pool() -> &'static rayon::ThreadPool {
        Box::leak(Box::new(rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap()))
    }

    #[test]
    fn every_job_runs_once_and_results_come_in_order() {
        let pool = pool();
        let runs = AtomicUsize::new(0);
        let polls = AtomicUsize::new(0);
        let poll = || {
            polls.fetch_add(1, Ordering::Relaxed);
        };
        for count in [0, 1, 2, 7, 100] {
            let out = as_caller(pool, &poll, || {
                map(count, |i| {
                    runs.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_micros(200));
                    i * i
                })
            });
            assert_eq!(out, (0..count).map(|i| i * i).collect::<Vec<_>>());
        }
        assert_eq!(runs.load(Ordering::Relaxed), 110);
        // The caller polls while jobs run long: 30 ms of jobs.
        as_caller(pool, &poll, || map(6, |_| std::thread::sleep(Duration::from_millis(10))));
        assert!(polls.load(Ordering::Relaxed) >= 1);
    }

    #[test]
    fn jobs_borrowing_the_callers_data_see_it_whole() {
        // Helpers that arrive after the call has returned must not touch its jobs (whose data
        // is gone): many short calls, each over data of its own.
        let pool = pool();
        as_caller(pool, &|| {}, || {
            for round in 0..2000 {
                let data: Vec<usize> = (0..4).map(|i| i * 7 + round).collect();
                assert_eq!(map(4, |i| data[i]), data);
            }
        });
    }

    #[test]
    fn a_panicking_job_panics_in_the_caller() {
        let pool = pool();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            as_caller(pool, &|| {}, || {
                map(16, |i| {
                    std::thread::sleep(Duration::from_micros(100));
                    assert!(i != 5, "job five fails");
                    i
                })
            })
        }));
        let panic = outcome.expect_err("the panic reaches the caller");
        let message =
            panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str));
        assert_eq!(message, Some("job five fails"));
        // No caller is left set up on this thread.
        assert!(CALLER.with(Cell::get).is_none());
    }

    #[test]
    fn a_panic_stops_the_jobs_not_yet_taken() {
        // 1000 jobs of 1 ms, the fourth panics: the rest are not run (a failed call returned
        // only after all of them, minutes for S = 3 batches).
        let pool = pool();
        let runs = AtomicUsize::new(0);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            as_caller(pool, &|| {}, || {
                map(1000, |i| {
                    runs.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                    assert!(i != 3, "job three fails");
                })
            })
        }));
        assert!(outcome.is_err());
        // At most the jobs in hand when it panicked, one per thread, and a few taken meanwhile.
        assert!(runs.load(Ordering::Relaxed) < 20, "{} jobs ran", runs.load(Ordering::Relaxed));
        // The pool is usable after.
        as_caller(pool, &|| {}, || assert_eq!(map(8, |i| i), (0..8).collect::<Vec<_>>()));
    }

    #[test]
    fn jobs_see_the_callers_cancellation() {
        let pool = pool();
        let cancel = Cancel::new();
        cancel.cancel();
        let seen = cancel.enter(|| {
            as_caller(pool, &|| {}, || {
                map(16, |_| {
                    std::thread::sleep(Duration::from_micros(300));
                    Cancel::current().is_cancelled()
                })
            })
        });
        assert!(seen.iter().all(|&s| s));
        let seen = cancel.enter(|| map(16, |_| Cancel::current().is_cancelled()));
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn without_a_caller_it_is_a_parallel_map() {
        assert_eq!(map(5, |i| i + 1), vec![1, 2, 3, 4, 5]);
    }
}
