//! `alp-core` is the shared vocabulary of the alp workspace: token ids, the [`Trajectory`]
//! that flows from the rollout engine to the trainer (with its typed [`Outcome`] and the
//! [`SamplingInfo`] its log-probs belong to), the traits that pieces plug into
//! ([`Environment`], [`TaskSource`]) and the one error type every library crate returns. It
//! needs no tensor library: the optional `candle` feature only adds `From<candle_core::Error>`
//! for [`Error`].
//!
//! ```
//! use alp_core::{FinishReason, Trajectory};
//!
//! let t = Trajectory::single_turn(vec![1, 2, 3], vec![7, 8], vec![-0.5, -0.25], 0, 1.0, FinishReason::Eos);
//! assert_eq!(t.loss_mask, vec![1, 1]);
//! assert_eq!(t.num_generated(), 2);
//! assert_eq!(t.outcome.reward, 1.0);
//! t.validate().unwrap();
//! ```
#![warn(missing_docs)]
// A library prints nothing: what it has to say goes back to its caller.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod error;
pub mod fsio;
pub mod memory;
pub mod pyjson;
pub mod seed;
pub mod traits;
pub mod trajectory;

pub use error::{Error, Result};
pub use seed::{mix_seed, splitmix64, splitmix_finalize, GOLDEN_GAMMA};
pub use traits::{ChatMessage, Environment, Step, Task, TaskFn, TaskSource};
pub use trajectory::{
    FinishReason, Outcome, SamplingInfo, SamplingSupports, Trajectory, TrajectoryGroup,
};

/// A token id, as the tokenizer and the embedding table see it.
pub type TokenId = u32;

/// Monotone counter of the trainer's weight versions; rollouts are stamped with the version that sampled them.
pub type PolicyVersion = u64;
