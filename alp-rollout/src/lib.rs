//! `alp-rollout`: the batched sampling engine. An [`Engine`] serves [`Request`]s over one
//! immutable model snapshot (f32, bf16 or f16) with continuous batching, samples with
//! temperature / top-k / top-p / min-p and a seed per request, and stores for every token the
//! exact log-prob under the distribution it was drawn from. [`run_episodes`] drives
//! multi-turn [`alp_core::Environment`]s into [`alp_core::Trajectory`] groups, and
//! [`RolloutWorker`] runs all of it on a thread fed with versioned weight snapshots, within a
//! staleness bound. Both talk to a [`RolloutBackend`]: the in-process [`Engine`], or a
//! [`RemoteBackend`] that samples on inference servers over HTTP (`alp serve`, SGLang) in the
//! JSON of [`wire`].
//!
//! ```
//! use std::sync::Arc;
//! use alp_model::{presets, ModelWeights};
//! use alp_rollout::{Engine, EngineConfig, Request, SamplingParams};
//! use candle_core::{DType, Device};
//!
//! let weights = ModelWeights::random(&presets::tiny(), 0, DType::F32, &Device::Cpu).unwrap();
//! let engine = Engine::new(Arc::new(weights.build().unwrap()), EngineConfig::default()).unwrap();
//! let out = engine.generate(&[Request {
//!     prompt: vec![1, 2, 3],
//!     params: SamplingParams { max_new_tokens: 5, seed: 7, ..Default::default() },
//! }]).unwrap();
//! assert_eq!(out[0].tokens.len(), 5);
//! assert!(out[0].logprobs.iter().all(|&lp| lp <= 0.0));
//! ```
// A library prints nothing: what it has to say goes back to its caller.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod backend;
pub mod engine;
pub mod episodes;
pub mod remote;
pub mod sampling;
pub mod wire;
pub mod worker;

pub use backend::{Completion, GenerateStats, Generation, Request, RolloutBackend};
pub use engine::{Engine, EngineConfig, SeqState};
pub use episodes::{observation_tokens, run_episodes, sampling_info, EpisodeConfig, Episodes};
pub use remote::{RemoteBackend, RemoteConfig, ServerKind};
pub use sampling::{sample, sample_kept, Sampled, SamplingParams, Support};
pub use worker::{RolloutBatch, RolloutWorker};
