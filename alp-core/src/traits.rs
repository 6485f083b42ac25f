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

impl Task {
    /// A task whose conversation is one user message.
    pub fn user(
        id: impl Into<String>,
        kind: impl Into<String>,
        prompt: impl Into<String>,
        answer: impl Into<String>,
    ) -> Self {
        Task {
            id: id.into(),
            kind: kind.into(),
            messages: vec![ChatMessage::new("user", prompt)],
            answer: answer.into(),
        }
    }
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
    /// Strings that end a model turn where they appear (e.g. the fence after which a tool's
    /// output follows), besides the runner's own; the default declares none.
    fn turn_stop_strings(&self) -> Vec<String> {
        Vec::new()
    }
    /// The tools this environment offers, as the JSON list of function specs a chat
    /// template's tools section takes, when the runner is given none; the default offers none.
    fn tool_specs(&self) -> Option<serde_json::Value> {
        None
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

/// An endless [`TaskSource`] made from a function of the task's index: the cursor is the index
/// of the next task, so a resumed run sees the same tasks.
///
/// ```
/// use alp_core::{ChatMessage, Task, TaskFn, TaskSource};
///
/// let mut tasks = TaskFn::new(|n| Task {
///     id: format!("t{n}"),
///     kind: "echo".into(),
///     messages: vec![ChatMessage::new("user", format!("say {n}"))],
///     answer: n.to_string(),
/// });
/// assert_eq!(tasks.next_task().unwrap().answer, "0");
/// tasks.seek(7);
/// assert_eq!(tasks.next_task().unwrap().id, "t7");
/// assert_eq!(tasks.cursor(), 8);
/// ```
pub struct TaskFn<F> {
    make: F,
    next: u64,
}

impl<F: Fn(u64) -> Task + Send> TaskFn<F> {
    /// The stream whose `n`-th task is `make(n)`.
    pub fn new(make: F) -> Self {
        TaskFn { make, next: 0 }
    }
}

impl<F: Fn(u64) -> Task + Send> TaskSource for TaskFn<F> {
    fn next_task(&mut self) -> Option<Task> {
        let t = (self.make)(self.next);
        self.next += 1;
        Some(t)
    }
    fn cursor(&self) -> u64 {
        self.next
    }
    fn seek(&mut self, cursor: u64) {
        self.next = cursor;
    }
}
