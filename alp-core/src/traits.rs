//! The traits that make the pieces of a pipeline swappable.
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::Result;

/// A hook the model calls on the input hidden state of every decoder layer (and once on the
/// final hidden state before the LM head). Only training forwards are perturbed.
pub trait Perturbation: Send + Sync {
    /// Returns the (possibly perturbed) input hidden state of decoder layer `layer`,
    /// `hidden` shaped `[batch, seq, hidden]`.
    fn perturb(&self, layer: usize, hidden: &Tensor) -> Result<Tensor>;

    /// Returns the (possibly perturbed) final normed hidden state that feeds the LM head.
    /// The default leaves it alone.
    fn perturb_head(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(hidden.clone())
    }

    /// True when this perturbation never changes anything (lets the model skip work).
    fn is_identity(&self) -> bool {
        false
    }
}

/// The free perturbation: returns its input unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPerturbation;

impl Perturbation for NoPerturbation {
    fn perturb(&self, _layer: usize, hidden: &Tensor) -> Result<Tensor> {
        Ok(hidden.clone())
    }
    fn is_identity(&self) -> bool {
        true
    }
}

/// A causal language model as the trainer, the rollout engine and user code see it.
pub trait CausalLm: Send + Sync {
    /// The per-sequence state carried between calls (a KV cache with its padding).
    type Cache;

    /// Vocabulary size (rows of the LM head).
    fn vocab_size(&self) -> usize;

    /// Logits `[batch, seq, vocab]` for `input_ids` `[batch, seq]`, continuing the sequences in
    /// `cache` (whose length gives the start position) with the fused inference kernels.
    fn forward(
        &self,
        input_ids: &Tensor,
        cache: &mut Self::Cache,
        perturb: &dyn Perturbation,
    ) -> Result<Tensor>;

    /// Logits of a whole, possibly left-padded, batch with differentiable ops only (the
    /// training path). `left_pad[b]` is the number of padding tokens at the start of row `b`.
    fn forward_train(
        &self,
        input_ids: &Tensor,
        left_pad: &[usize],
        perturb: &dyn Perturbation,
    ) -> Result<Tensor>;
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A task: a prompt (as chat messages) and the gold answer the environment grades against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Stable identifier (used to group responses).
    pub id: String,
    /// Task family, e.g. `easy` or `hard`; metrics are reported per kind.
    pub kind: String,
    /// The conversation that opens the episode.
    pub messages: Vec<ChatMessage>,
    /// The gold answer.
    pub answer: String,
}

/// What an environment answers to a model turn.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The episode goes on; the observation (e.g. a tool response) is appended with loss mask 0.
    Observation(Vec<ChatMessage>),
    /// The episode is over.
    Done {
        /// The reward.
        reward: f32,
        /// Extras for metrics (correctness, number of tool calls, ...).
        info: serde_json::Map<String, serde_json::Value>,
    },
}

/// A reward environment, single- or multi-turn.
pub trait Environment: Send {
    /// Starts an episode on `task` and returns the opening messages.
    fn reset(&mut self, task: &Task) -> Result<Vec<ChatMessage>>;
    /// Takes the model's text for one turn.
    fn step(&mut self, model_text: &str) -> Result<Step>;
    /// Called when the engine stops the episode (turn or token limit) without a `Done`:
    /// returns the reward and info for a truncated episode.
    fn truncate(&mut self) -> Result<Step> {
        Ok(Step::Done {
            reward: 0.0,
            info: Default::default(),
        })
    }
}

/// An endless or finite stream of tasks.
pub trait TaskSource: Send {
    /// The next task, or `None` when a finite source is exhausted.
    fn next_task(&mut self) -> Option<Task>;
    /// A cursor that, given back to [`TaskSource::seek`], resumes the stream exactly.
    fn cursor(&self) -> u64;
    /// Moves the stream to `cursor`.
    fn seek(&mut self, cursor: u64);
}
