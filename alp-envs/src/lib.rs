//! `alp-envs`: alp's reward environments. Procedural math tasks with disjoint train and
//! held-out splits, a JSONL loader for GSM8K/MATH-shaped datasets, a math answer verifier
//! that can be trusted as a reward ([`math::grade`]), and tool calling — a `<tool_call>`
//! parser, a [`tools::Tool`] registry, a safe [`tools::Calculator`] — behind the
//! `alp_core::Environment` trait ([`MathEnv`], [`ToolEnv`]). It depends on alp-core only,
//! never on model code.
//!
//! ```
//! use alp_core::{Environment, Step, TaskSource};
//! use alp_envs::math::{ExtractMode, MathGenerator, MathTaskKind, Split, TaskStream};
//! use alp_envs::MathEnv;
//!
//! let mut tasks = TaskStream::new(
//!     vec![(MathGenerator::new(MathTaskKind::AddSub, 1), 1.0)], Split::Train, 0);
//! let task = tasks.next_task().unwrap();
//! let mut env = MathEnv::new(ExtractMode::Strict);
//! env.reset(&task).unwrap();
//! let reply = format!("The result is \\boxed{{{}}}.", task.answer);
//! assert!(matches!(env.step(&reply).unwrap(), Step::Done(o) if o.reward == 1.0 && o.correct));
//! ```
// A library prints nothing: what it has to say goes back to its caller.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod math;
pub mod tool_env;
pub mod tools;

pub use tool_env::{CallFormat, MathEnv, ToolEnv, ToolEnvConfig, CODE_BLOCK_SYSTEM};
