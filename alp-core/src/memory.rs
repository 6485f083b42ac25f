//! Size checks before allocating: a request for `count` items of `bytes_each` bytes is
//! compared with the memory this machine has available, so that an absurd size (a typo of
//! `--n 1e9`) is an error naming the option instead of an allocation failure that aborts.

use crate::{Error, Result};

/// The memory available to new allocations (`MemAvailable` of `/proc/meminfo`), when the
/// system says.
pub fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb.saturating_mul(1024))
}

/// Bytes in people's units.
pub fn human_bytes(b: u128) -> String {
    const UNITS: [&str; 7] = ["B", "KB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// Checks that `count` items of about `bytes_each` bytes fit in `available` bytes (the
/// machine's available memory by default). `option` names what the user set (e.g. `--n`)
/// and `what` what the items are; the error says how much was asked and how much there is.
pub fn check_fits(
    option: &str,
    count: usize,
    bytes_each: u64,
    what: &str,
    available: Option<u64>,
) -> Result<()> {
    let need = count as u128 * bytes_each as u128;
    // Without a figure from the system, 1 TB stands for "more than any machine here has".
    let have = available.or_else(available_bytes).unwrap_or(1 << 40);
    if need > have as u128 {
        return Err(Error::invalid(format!(
                "{option} {count} needs about {} for {what}, more than the {} this machine has available; use a smaller value",
                human_bytes(need),
                human_bytes(have as u128)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_size_over_the_available_memory_is_an_error_naming_the_option() {
        check_fits("--n", 1000, 1000, "completions", Some(2_000_000)).unwrap();
        let e = check_fits("--n", 1_000_000_000, 4096, "completions", Some(2_000_000))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--n") && e.contains("4.1 TB") && e.contains("2.0 MB"),
            "{e}"
        );
        // No overflow at the extremes.
        assert!(check_fits("--n", usize::MAX, u64::MAX, "x", Some(1)).is_err());
    }

    #[test]
    fn this_machine_reports_its_memory() {
        if cfg!(target_os = "linux") {
            assert!(available_bytes().is_some_and(|b| b > 0));
        }
    }
}
