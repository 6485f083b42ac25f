//! `alp-trainer` orchestrates RL training of language models with Adaptive Layerwise
//! Perturbation and hosts the `alp` command-line tool.
//!
//! So far it provides the `alp` binary's model subcommands (`alp logprobs`, `alp init`); the
//! RL loop lands here next.
//!
//! ```
//! assert_eq!(alp_trainer::parse_token_list("1, 5,9").unwrap(), vec![1, 5, 9]);
//! ```
#![warn(missing_docs)]

pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod default_task;
pub mod optim;
pub mod report;
pub mod run;
pub mod trainer;

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
