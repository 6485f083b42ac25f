//! `alp-trainer` orchestrates RL training of language models with Adaptive Layerwise
//! Perturbation and hosts the `alp` command-line tool. Its pieces, one job each: [`config`]
//! (TOML + `--set`), [`trainer`] (the model, its optimizers and the SFT/RL steps),
//! [`rl_step`] (the data path of one RL step), [`optim`] (AdamW groups, accumulation,
//! clipping, the non-finite skip), [`eval`], [`metrics`] (names, [`StepMetrics`],
//! [`MetricsSink`]s), [`checkpoint`], [`report`]; [`Session`] is the library entry point that
//! drives a run step by step, and `run::train` the schedule of `alp train`.
//!
//! ```
//! use alp_trainer::{config::TrainConfig, metrics, Session};
//!
//! let cfg = TrainConfig::default().apply_overrides(&[
//!     "sft.steps=2".into(), "sft.batch_size=4".into(), "rl.steps=1".into(),
//!     "rl.prompts_per_step=2".into(), "rl.group_size=2".into(), "rl.mini_batch=4".into(),
//!     "rl.micro_batch=2".into(), "rl.max_new_tokens=4".into(), "rl.max_staleness=0".into(),
//! ])?;
//! let dir = std::env::temp_dir().join(format!("alp-doc-{}", std::process::id()));
//! let mut run = Session::create(cfg, dir.clone())?;
//! run.sft(None, &mut |_, _| {})?;
//! let m = run.step()?;
//! assert_eq!(m.step, 1);
//! assert!(m[metrics::REWARD_MEAN].is_finite() && m.get(metrics::loss::RATIO_TOKEN_MAX).is_some());
//! drop(run);
//! std::fs::remove_dir_all(dir).ok();
//! # Ok::<(), alp_core::Error>(())
//! ```
//!
//! ## A user's own pieces
//!
//! [`Session::builder`] takes a user's environment factory, [`alp_core::TaskSource`],
//! [`alp_loss::PolicyObjective`], [`MetricsSink`]s and [`alp_rollout::RolloutBackend`]; what
//! is not handed in comes from the config. This is `examples/reverse_word.rs`, run as a test (its reward rises):
//!
//! ```no_run
#![doc = include_str!("../examples/reverse_word.rs")]
//! ```
//!
//! ## Features
//!
//! `cli` (default): the `alp` binary, `run::train` (the schedule of `alp train`),
//! `compare`, the plots and the progress bar. A library user can turn it off
//! (`default-features = false`): no clap, plotters, indicatif or ctrlc.
#![warn(missing_docs)]

pub mod batch;
pub mod checkpoint;
#[cfg(feature = "cli")]
pub mod compare;
#[cfg(feature = "cli")]
pub mod compare_report;
pub mod config;
pub mod default_task;
pub mod eval;
pub mod metrics;
pub mod optim;
pub mod report;
pub mod rl_step;
#[cfg(feature = "cli")]
pub mod run;
pub mod runtime;
pub mod session;
pub mod sft;
pub mod stats;
pub mod trainer;

pub use metrics::{MetricsSink, StepMetrics};
pub use session::{EnvFactory, Session, SessionBuilder};

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
