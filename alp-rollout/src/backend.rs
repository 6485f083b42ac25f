//! The rollout seam: what samples the episodes' turns. The episode runner ([`run_episodes`])
//! and the asynchronous worker talk to a [`RolloutBackend`] only; the in-process [`Engine`]
//! is one, and an engine behind a server can be another.
//!
//! [`run_episodes`]: crate::run_episodes
//! [`Engine`]: crate::Engine

use crate::engine::{Completion, Request};
use alp_core::{PolicyVersion, Result};
use alp_model::ModelWeights;

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
    fn stats(&self) -> Option<crate::engine::GenerateStats> {
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
    fn stats(&self) -> Option<crate::engine::GenerateStats> {
        (**self).stats()
    }
}
