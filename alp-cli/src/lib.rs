//! The `alp` application: what only the command line needs, on top of the `alp-trainer`
//! library. [`run`] is the schedule of `alp train` (SFT warm start, evaluations, RL steps,
//! checkpoints, report), [`compare`] and [`compare_report`] run and report the methods'
//! comparison from plan files (`plans/`), [`stats`] holds their small-sample statistics,
//! [`report`] writes a run's summary and plots, and [`console`] prints progress.
//!
//! A library user composes a pipeline with `alp_trainer::Session` instead; this crate is the
//! one that knows about the terminal.
//!
//! ```
//! // The paired t interval `alp compare` reads its questions with.
//! let d = [1.0, 2.0, 3.0, 2.0, 2.0];
//! let i = alp_cli::stats::mean_t(&d).unwrap();
//! assert!(i.lo < 2.0 && 2.0 < i.hi);
//! ```
#![warn(missing_docs)]

pub mod compare;
pub mod compare_report;
pub mod console;
pub mod report;
pub mod run;
pub mod stats;

/// Parses a comma-separated list of token ids.
pub fn parse_token_list(s: &str) -> Result<Vec<u32>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .map_err(|_| format!("`{t}` is not a token id (expected e.g. --tokens 1,5,9,33)"))
        })
        .collect()
}

/// The environment variable of the crash-safety test: `ALP_TEST_CRASH_AT_CHECKPOINT_OP=k`
/// makes `alp` abort (no unwinding, no cleanup: as `kill -9` would) just before the k-th file
/// operation of its checkpoint writes, counting from 1.
pub const CRASH_ENV: &str = "ALP_TEST_CRASH_AT_CHECKPOINT_OP";

/// Installs the abort of [`CRASH_ENV`] as the checkpoint writer's fault hook when the variable
/// holds a count (the `alp` binary calls it first thing).
pub fn install_crash_hook() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static AT: AtomicU64 = AtomicU64::new(0);
    static DONE: AtomicU64 = AtomicU64::new(0);
    let Some(k) = std::env::var(CRASH_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    AT.store(k, Ordering::SeqCst);
    alp_trainer::checkpoint::set_fault_hook(|label| {
        let k = AT.load(Ordering::SeqCst);
        if DONE.fetch_add(1, Ordering::SeqCst) + 1 == k {
            eprintln!("{CRASH_ENV}={k}: aborting before: {label}");
            std::process::abort();
        }
    });
}
