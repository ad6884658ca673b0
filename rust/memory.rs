//! Memory the engine may ask for, checked before it asks: allocations whose size the caller
//! decides (points, regions, samples) are sized with checked arithmetic, compared with what the
//! process can get, and made with `try_reserve`, so that too large a request is an
//! [`Error::Memory`] naming the size, not an abort of the whole process (the default on a
//! failed allocation, with mimalloc as with the system allocator).

use crate::error::{Error, Result};

/// What the process can still get, in bytes, where the system tells: the least of the memory
/// available to the system (`MemAvailable`), the address-space limit (`RLIMIT_AS`) less what is
/// mapped, and the cgroup's limit less its usage. `None` where none of those is known.
pub fn available_bytes() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let mut least: Option<u64> = None;
        let mut consider = |value: Option<u64>| {
            if let Some(v) = value {
                least = Some(least.map_or(v, |l| l.min(v)));
            }
        };
        consider(meminfo_available());
        consider(address_space_left());
        consider(cgroup_left());
        least
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg(target_os = "linux")]
fn field_kib(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse::<u64>().ok().map(|kib| kib * 1024)
}

#[cfg(target_os = "linux")]
fn meminfo_available() -> Option<u64> {
    field_kib(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemAvailable:")
}

#[cfg(target_os = "linux")]
fn address_space_left() -> Option<u64> {
    // SAFETY: `limit` is a plain struct that getrlimit fills.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    let mapped = field_kib(&std::fs::read_to_string("/proc/self/status").ok()?, "VmSize:")?;
    Some((limit.rlim_cur as u64).saturating_sub(mapped))
}

#[cfg(target_os = "linux")]
fn cgroup_left() -> Option<u64> {
    let max = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()?.trim().parse::<u64>().ok()?;
    let current = std::fs::read_to_string("/sys/fs/cgroup/memory.current").ok()?.trim().parse::<u64>().ok()?;
    Some(max.saturating_sub(current))
}

/// The bytes of `count` items of `T`, or an [`Error::Memory`] if that overflows.
pub fn bytes_of<T>(count: u128, what: &str) -> Result<u128> {
    count
        .checked_mul(std::mem::size_of::<T>() as u128)
        .ok_or_else(|| Error::Memory { bytes: u128::MAX, what: what.to_string() })
}

/// `Err(Memory)` when `bytes` exceeds what the process can get (see [`available_bytes`]);
/// `what` says what they are for.
pub fn check(bytes: u128, what: &str) -> Result<()> {
    let fits_address_space = bytes <= isize::MAX as u128;
    let fits = fits_address_space && available_bytes().is_none_or(|available| bytes <= available as u128);
    if fits {
        Ok(())
    } else {
        Err(Error::Memory { bytes, what: what.to_string() })
    }
}

/// An empty vector with room for `count` items, checked against the memory available and
/// allocated fallibly.
pub fn try_with_capacity<T>(count: usize, what: &str) -> Result<Vec<T>> {
    let bytes = bytes_of::<T>(count as u128, what)?;
    check(bytes, what)?;
    let mut out = Vec::new();
    out.try_reserve_exact(count).map_err(|_| Error::Memory { bytes, what: what.to_string() })?;
    Ok(out)
}

/// `count` copies of `value`, checked and allocated as [`try_with_capacity`].
pub fn try_filled<T: Clone>(count: usize, value: T, what: &str) -> Result<Vec<T>> {
    let mut out = try_with_capacity(count, what)?;
    out.resize(count, value);
    Ok(out)
}

/// Room for `additional` more items in `vec`, or an [`Error::Memory`] (a growth the allocator
/// refuses, or beyond what the process can get).
pub fn try_reserve<T>(vec: &mut Vec<T>, additional: usize, what: &str) -> Result<()> {
    if vec.capacity() - vec.len() >= additional {
        return Ok(());
    }
    // A vector grows by doubling: that is what the allocator is asked for.
    let wanted = (vec.len().saturating_add(additional)).max(2 * vec.capacity());
    let bytes = bytes_of::<T>(wanted as u128, what)?;
    vec.try_reserve(additional).map_err(|_| Error::Memory { bytes, what: what.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_sizes_are_memory_errors_and_small_ones_allocate() {
        let err = try_with_capacity::<f64>(usize::MAX / 4, "a test array").unwrap_err();
        assert!(matches!(err, Error::Memory { .. }), "{err:?}");
        assert!(err.to_string().contains("a test array"));
        assert!(matches!(bytes_of::<f64>(u128::MAX / 2, "x"), Err(Error::Memory { .. })));
        assert_eq!(try_with_capacity::<f64>(1000, "small").unwrap().capacity(), 1000);
        // This machine tells how much memory it has, and it is not nothing.
        #[cfg(target_os = "linux")]
        assert!(available_bytes().is_some_and(|b| b > 1 << 20));
    }
}
