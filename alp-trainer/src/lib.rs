//! `alp-trainer` trains language models with RL under Adaptive Layerwise Perturbation, as a
//! library. [`Session`] is its entry point: built from a [`config::TrainConfig`] (TOML or
//! `key=value` overrides) and, through [`Session::builder`], a user's own pieces — environment,
//! training and held-out task sources, objective, metrics sinks, rollout backend — it is
//! driven step by step (SFT warm start, evaluations, RL steps, checkpoints) and returns typed
//! metrics ([`metrics`] names them). It prints nothing; the `alp` application (crate
//! `alp-cli`) owns the terminal and the schedule of `alp train`.
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
//! `cuda`, `flash-attn`: the GPU paths of alp-model. `internals` (hidden): the trainer's
//! parts as public modules, for alp's own application, tests and benches; not an API.
#![warn(missing_docs)]
// A library prints nothing: what it has to say goes back to its caller.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod config;
pub mod default_task;
pub mod eval_result;
pub mod metrics;
mod session;

/// Declares the trainer's internal modules: crate-private, or public (hidden from the docs)
/// with the `internals` feature that alp's application, tests and benches use.
macro_rules! internal_modules {
    ($($name:ident),* $(,)?) => {$(
        #[cfg(feature = "internals")]
        #[doc(hidden)]
        pub mod $name;
        #[cfg(not(feature = "internals"))]
        mod $name;
    )*};
}
internal_modules!(batch, checkpoint, eval, optim, probe, rl_step, runtime, sft, trainer);

pub use alp_core::{Environment, TaskSource};
pub use alp_loss::PolicyObjective;
pub use alp_rollout::RolloutBackend;
pub use checkpoint::{latest as latest_checkpoint, set_fault_hook, FaultHook};
pub use eval_result::EvalResult;
pub use metrics::{MetricsSink, StepMetrics};
pub use runtime::tune_cpu_process;
pub use session::{claim_dir, default_run_dir, EnvFactory, Session, SessionBuilder};

/// The README's library example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
