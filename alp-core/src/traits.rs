//! The traits that make the pieces of a pipeline swappable (those that need no tensors; the
//! model-side `Perturbation` lives in alp-model, which owns tensors).
use serde::{Deserialize, Serialize};

use crate::{Outcome, Result};

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
    /// The episode is over, with its reward and outcome.
    Done(Outcome),
}

/// A reward environment, single- or multi-turn.
pub trait Environment: Send {
    /// Starts an episode on `task` and returns the opening messages.
    fn reset(&mut self, task: &Task) -> Result<Vec<ChatMessage>>;
    /// Takes the model's text for one turn.
    fn step(&mut self, model_text: &str) -> Result<Step>;
    /// Called when the episode runner stops the episode (turn or token limit; the runner owns
    /// both limits) before the environment said `Done`: the outcome of the truncated episode.
    /// The default gives reward 0 and counts nothing.
    fn truncate(&mut self) -> Result<Outcome> {
        Ok(Outcome::default())
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
