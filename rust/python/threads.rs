//! The extension's thread pool: one per process, with one worker kept on each CPU where the
//! pool has one worker per CPU the process may use.
//!
//! Why keep them there: on the virtual machines we measure on (KVM, two vCPUs), a worker woken
//! after the process had computed elsewhere for a few milliseconds (numpy, say) was queued on
//! the CPU of the worker that woke it, and waited there for up to a millisecond or more while
//! the other CPU idled, so a short call ran on one core (BENCHMARKS.md: "Workers kept on their
//! CPUs"). Linux skips an idle virtual CPU whose host reports it preempted; a worker that can
//! run only on that CPU is woken there.
//!
//! Only where the pool has exactly one worker per allowed CPU (the default): with fewer
//! (`RAYON_NUM_THREADS`), several processes would all stack their workers on the first CPUs.
//! `EXACTEM_PIN_THREADS=0` turns it off.

use std::sync::atomic::{AtomicPtr, Ordering};

/// A process's pool, and which process built it.
struct ProcessPool {
    pid: u32,
    pool: rayon::ThreadPool,
}

static POOL: AtomicPtr<ProcessPool> = AtomicPtr::new(std::ptr::null_mut());

/// This process's pool, built on first use. Not rayon's global pool: a child forked after the
/// parent's first computation (`multiprocessing`'s default on Linux) inherits a pool whose
/// threads do not exist, and its first computation would wait for them forever; here it builds
/// one of its own.
pub(crate) fn pool() -> Result<&'static rayon::ThreadPool, rayon::ThreadPoolBuildError> {
    let pid = std::process::id();
    let current = POOL.load(Ordering::Acquire);
    // SAFETY: a pointer stored in POOL comes from `Box::into_raw` and is never freed.
    if let Some(existing) = unsafe { current.as_ref() } {
        if existing.pid == pid {
            return Ok(&existing.pool);
        }
    }
    let fresh = Box::into_raw(Box::new(ProcessPool { pid, pool: build_pool()? }));
    // The parent's pool, if any, is left allocated: its threads are not in this process.
    match POOL.compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire) {
        // SAFETY: `fresh` is now stored and never freed.
        Ok(_) => Ok(unsafe { &(*fresh).pool }),
        Err(winner) => {
            // Another thread of this process stored its pool first.
            // SAFETY: `fresh` was never shared; `winner` is stored and never freed.
            unsafe {
                drop(Box::from_raw(fresh));
                Ok(&(*winner).pool)
            }
        }
    }
}

fn build_pool() -> Result<rayon::ThreadPool, rayon::ThreadPoolBuildError> {
    let cpus = allowed_cpus();
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let disabled = std::env::var("EXACTEM_PIN_THREADS").is_ok_and(|v| v.trim() == "0");
    let pin = !disabled && threads > 1 && cpus.len() == threads;
    let builder = rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("exactem-{i}"));
    let builder = if pin { builder.start_handler(move |worker| keep_on_cpu(cpus[worker])) } else { builder };
    builder.build()
}

/// The CPUs each worker of the pool may run on, worker by worker.
pub(crate) fn worker_cpus() -> Result<Vec<Vec<usize>>, rayon::ThreadPoolBuildError> {
    Ok(pool()?.broadcast(|_| allowed_cpus()))
}

#[cfg(target_os = "linux")]
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bit set that `sched_getaffinity` fills for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect()
    }
}

#[cfg(target_os = "linux")]
fn keep_on_cpu(cpu: usize) {
    // SAFETY: as above; a failure leaves the thread where it may run anywhere, which is only
    // slower.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(not(target_os = "linux"))]
fn allowed_cpus() -> Vec<usize> {
    Vec::new()
}

#[cfg(not(target_os = "linux"))]
fn keep_on_cpu(_cpu: usize) {}
