//! The rollout seam: what samples the episodes' turns. The episode runner ([`run_episodes`])
//! and the asynchronous worker talk to a [`RolloutBackend`] only; the in-process [`Engine`]
//! is one, and an engine behind a server can be another.
//!
//! [`run_episodes`]: crate::run_episodes
//! [`Engine`]: crate::Engine

use crate::sampling::SamplingParams;
use alp_core::{FinishReason, PolicyVersion, Result, SamplingSupports, TokenId};
use alp_model::ModelWeights;
use serde::{Deserialize, Serialize};

/// What one [`RolloutBackend::generate`] call produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// One completion per request, in order: tokens, the log-prob of each under the
    /// distribution it was sampled from, the supports where sampling truncates.
    pub completions: Vec<Completion>,
    /// The version of the weights that produced them (the oldest, if several did).
    pub policy_version: PolicyVersion,
}

/// Generates completions for a batch of requests, each with its own sampling parameters, and
/// says which weight version produced them; takes new weights when the trainer publishes them.
pub trait RolloutBackend: Send + Sync {
    /// The completions of `requests`, in order.
    fn generate(&self, requests: &[Request]) -> Result<Generation>;
    /// The version of the weights that would sample a request now.
    fn policy_version(&self) -> PolicyVersion;
    /// Samples from now on with `weights` (already in the rollout dtype, on the rollout
    /// device), which are version `version`.
    fn publish(&mut self, version: PolicyVersion, weights: &ModelWeights) -> Result<()>;
    /// The backend's counters so far (prefill and decode tokens and seconds), if it keeps
    /// any: the in-process engine does, remote servers report theirs on `/metrics`.
    fn stats(&self) -> Option<GenerateStats> {
        None
    }
}

impl<T: RolloutBackend + ?Sized> RolloutBackend for Box<T> {
    fn generate(&self, requests: &[Request]) -> Result<Generation> {
        (**self).generate(requests)
    }
    fn policy_version(&self) -> PolicyVersion {
        (**self).policy_version()
    }
    fn publish(&mut self, version: PolicyVersion, weights: &ModelWeights) -> Result<()> {
        (**self).publish(version, weights)
    }
    fn stats(&self) -> Option<GenerateStats> {
        (**self).stats()
    }
}

/// One generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Prompt token ids (non-empty).
    pub prompt: Vec<TokenId>,
    /// Sampling and stop rules.
    pub params: SamplingParams,
}

/// A finished sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Generated token ids (a stop token or the token completing a stop string included).
    pub tokens: Vec<TokenId>,
    /// Log-prob of each generated token under the distribution it was sampled from.
    pub logprobs: Vec<f32>,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// The support of every generated token, when the request truncates and keeps its
    /// sampling mask.
    pub supports: Option<SamplingSupports>,
}

/// Counters of one `generate` call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerateStats {
    /// Decode steps run.
    pub decode_steps: usize,
    /// Batched prefills run.
    pub prefills: usize,
    /// Cache rebuilds (rows leaving or joining).
    pub rebuilds: usize,
    /// Largest number of sequences decoded together.
    pub peak_batch: usize,
    /// Seconds in prefills (including cache merges).
    pub prefill_seconds: f64,
    /// Seconds in decode steps (forward and sampling).
    pub decode_seconds: f64,
    /// Prompt tokens run through the model in prefills.
    pub prefill_tokens: usize,
    /// Prompt tokens taken from a kept sequence's KV rows instead (prefix reuse).
    pub reused_tokens: usize,
}

impl GenerateStats {
    /// What was counted since `before` (an earlier reading of the same totals).
    pub fn since(&self, before: &GenerateStats) -> GenerateStats {
        GenerateStats {
            decode_steps: self.decode_steps.saturating_sub(before.decode_steps),
            prefills: self.prefills.saturating_sub(before.prefills),
            rebuilds: self.rebuilds.saturating_sub(before.rebuilds),
            peak_batch: self.peak_batch,
            prefill_seconds: (self.prefill_seconds - before.prefill_seconds).max(0.0),
            decode_seconds: (self.decode_seconds - before.decode_seconds).max(0.0),
            prefill_tokens: self.prefill_tokens.saturating_sub(before.prefill_tokens),
            reused_tokens: self.reused_tokens.saturating_sub(before.reused_tokens),
        }
    }

    /// Adds `o`'s counters and seconds (the larger `peak_batch`).
    pub fn add(&mut self, o: &GenerateStats) {
        self.decode_steps += o.decode_steps;
        self.prefills += o.prefills;
        self.rebuilds += o.rebuilds;
        self.peak_batch = self.peak_batch.max(o.peak_batch);
        self.prefill_seconds += o.prefill_seconds;
        self.decode_seconds += o.decode_seconds;
        self.prefill_tokens += o.prefill_tokens;
        self.reused_tokens += o.reused_tokens;
    }
}
