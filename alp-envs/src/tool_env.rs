//! Environments: the single-turn [`MathEnv`] and the multi-turn, tool-calling [`ToolEnv`].

use crate::math::{extract_answer, grade_with, ExtractMode};
use crate::tools::{parse_code_blocks, parse_tool_calls, ToolRegistry};
use alp_core::{ChatMessage, Environment, Error, Outcome, Result, Step, Task};
use serde::{Deserialize, Serialize};

fn start_of(task: &Task) -> Result<(Vec<ChatMessage>, String)> {
    if task.messages.is_empty() {
        return Err(Error::invalid(format!(
            "task `{}` has no messages",
            task.id
        )));
    }
    Ok((task.messages.clone(), task.answer.clone()))
}

/// One question, one answer: the reward is the verifier's verdict (1 or 0).
#[derive(Debug, Clone, Default)]
pub struct MathEnv {
    mode: ExtractMode,
    answer: Option<String>,
}

impl MathEnv {
    /// A math environment grading with `mode`.
    pub fn new(mode: ExtractMode) -> Self {
        MathEnv { mode, answer: None }
    }
}

impl Environment for MathEnv {
    fn reset(&mut self, task: &Task) -> Result<Vec<ChatMessage>> {
        let (messages, answer) = start_of(task)?;
        self.answer = Some(answer);
        Ok(messages)
    }

    fn step(&mut self, model_text: &str) -> Result<Step> {
        let answer = self
            .answer
            .as_deref()
            .ok_or_else(|| Error::invalid("MathEnv::step before reset"))?;
        let v = grade_with(answer, model_text, self.mode);
        Ok(Step::Done(Outcome {
            reward: if v.correct { 1.0 } else { 0.0 },
            correct: v.correct,
            extracted: v.extracted,
            ..Default::default()
        }))
    }
}

/// Settings of [`ToolEnv`]. The turn limit is not here: the episode runner
/// (`alp_rollout::EpisodeConfig::max_turns`) owns it and calls [`Environment::truncate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolEnvConfig {
    /// The episode ends (reward 0) after this many turns with neither a usable tool call nor
    /// a final answer.
    pub max_malformed_turns: usize,
    /// Subtracted from the reward when the episode had a malformed turn or a tool error.
    pub format_penalty: f32,
    /// How the final answer is found (strict: boxed only).
    pub mode: ExtractMode,
    /// How the model calls tools.
    pub call_format: CallFormat,
}

/// How the model calls tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallFormat {
    /// Hermes/Qwen `<tool_call>{"name": ..., "arguments": ...}</tool_call>` blocks.
    #[default]
    Hermes,
    /// Tool-integrated reasoning: fenced ```` ```python ```` blocks run by the `python` tool,
    /// the turn ending at ```` ```output ````; the output comes back as the tool's response.
    CodeBlock,
}

/// The system message a code-block episode opens with when its task has none.
pub const CODE_BLOCK_SYSTEM: &str = "Solve the problem step by step. To run Python, write the code in a ```python block, close it with ```, then write ```output and stop: the output will follow. Put the final answer in \\boxed{}.";

impl Default for ToolEnvConfig {
    fn default() -> Self {
        ToolEnvConfig {
            max_malformed_turns: 2,
            format_penalty: 0.0,
            mode: ExtractMode::Strict,
            call_format: CallFormat::Hermes,
        }
    }
}

impl ToolEnvConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.max_malformed_turns == 0 {
            return Err(Error::config("max_malformed_turns", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.format_penalty) {
            return Err(Error::config("format_penalty", "must lie in [0, 1]"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default)]
struct Episode {
    answer: String,
    tool_calls: u32,
    tool_errors: u32,
    malformed: u32,
}

/// A multi-turn tool environment: each model turn is parsed for `<tool_call>` blocks, which are
/// executed and answered as `tool` messages (the chat template wraps them in
/// `<tool_response>`); the episode ends on a final `\boxed{}` answer or at the malformed-turn
/// limit (the runner's turn limit ends it through [`Environment::truncate`]). The reward is the
/// verifier's verdict minus an optional format penalty; the [`Outcome`] records `correct`,
/// `tool_calls`, `tool_errors` and `malformed_turns`.
///
/// ```
/// use alp_core::{Environment, Step, Task, ChatMessage};
/// use alp_envs::{ToolEnv, ToolEnvConfig, tools::{Calculator, ToolRegistry}};
/// let mut reg = ToolRegistry::new();
/// reg.register(Calculator);
/// let mut env = ToolEnv::new(reg, ToolEnvConfig::default()).unwrap();
/// let task = Task { id: "t".into(), kind: "hard".into(), answer: "55578".into(),
///     messages: vec![ChatMessage::new("user", "What is 942 * 59?")] };
/// env.reset(&task).unwrap();
/// let call = r#"<tool_call>{"name": "calculator", "arguments": {"expression": "942*59"}}</tool_call>"#;
/// match env.step(call).unwrap() {
///     Step::Observation(m) => assert_eq!(m[0].content, "55578"),
///     other => panic!("{other:?}"),
/// }
/// assert!(matches!(env.step("\\boxed{55578}").unwrap(), Step::Done(o) if o.reward == 1.0 && o.tool_calls == 1));
/// ```
#[derive(Debug, Clone)]
pub struct ToolEnv {
    registry: ToolRegistry,
    config: ToolEnvConfig,
    episode: Option<Episode>,
}

impl ToolEnv {
    /// A tool environment over `registry`.
    pub fn new(registry: ToolRegistry, config: ToolEnvConfig) -> Result<Self> {
        config.validate()?;
        Ok(ToolEnv {
            registry,
            config,
            episode: None,
        })
    }

    /// The registry (to render its tools into a system prompt).
    pub fn registry(&self) -> &ToolRegistry {
        &self.registry
    }

    /// Ends the episode at the malformed-turn limit, else answers with `observations`.
    fn continue_or_stop(&self, ep: &Episode, observations: Vec<ChatMessage>) -> Step {
        if ep.malformed as usize >= self.config.max_malformed_turns {
            Step::Done(self.outcome(ep, false, None))
        } else {
            Step::Observation(observations)
        }
    }

    fn outcome(&self, ep: &Episode, correct: bool, extracted: Option<String>) -> Outcome {
        let mut reward = if correct { 1.0 } else { 0.0 };
        if ep.malformed > 0 || ep.tool_errors > 0 {
            reward -= self.config.format_penalty;
        }
        Outcome {
            reward,
            correct,
            extracted,
            tool_calls: ep.tool_calls,
            tool_errors: ep.tool_errors,
            malformed_turns: ep.malformed,
            truncated: false,
        }
    }
}

impl Environment for ToolEnv {
    /// The turn ends where a call is complete: after `</tool_call>`, or at ```` ```output ````.
    fn turn_stop_strings(&self) -> Vec<String> {
        match self.config.call_format {
            CallFormat::Hermes => vec![crate::tools::TOOL_CALL_CLOSE.into()],
            CallFormat::CodeBlock => vec![crate::tools::CODE_RUN.into()],
        }
    }
    /// Hermes calls: the registry's function specs; code blocks are explained in the system
    /// message instead.
    fn tool_specs(&self) -> Option<serde_json::Value> {
        (self.config.call_format == CallFormat::Hermes)
            .then(|| serde_json::Value::Array(self.registry.tool_specs()))
    }
    fn reset(&mut self, task: &Task) -> Result<Vec<ChatMessage>> {
        let (mut messages, answer) = start_of(task)?;
        if self.config.call_format == CallFormat::CodeBlock
            && messages.first().is_none_or(|m| m.role != "system")
        {
            messages.insert(0, ChatMessage::new("system", CODE_BLOCK_SYSTEM));
        }
        self.episode = Some(Episode {
            answer,
            ..Default::default()
        });
        Ok(messages)
    }

    fn step(&mut self, model_text: &str) -> Result<Step> {
        let mut ep = self
            .episode
            .take()
            .ok_or_else(|| Error::invalid("ToolEnv::step before reset"))?;
        let calls = match self.config.call_format {
            CallFormat::Hermes => parse_tool_calls(model_text),
            CallFormat::CodeBlock => parse_code_blocks(model_text),
        };
        let step = if !calls.is_empty() {
            let mut observations = Vec::with_capacity(calls.len());
            let mut usable = 0;
            for call in calls {
                let content = match call {
                    Ok(call) => {
                        usable += 1;
                        ep.tool_calls += 1;
                        match self.registry.call(&call) {
                            Ok(out) => out,
                            Err(e) => {
                                ep.tool_errors += 1;
                                format!("Error: {e}")
                            }
                        }
                    }
                    Err(e) => {
                        ep.tool_errors += 1;
                        format!("Error: {e}")
                    }
                };
                observations.push(ChatMessage::new("tool", content));
            }
            if usable == 0 {
                ep.malformed += 1;
            }
            self.continue_or_stop(&ep, observations)
        } else if let Some(found) = extract_answer(model_text, self.config.mode) {
            let v = grade_with(&ep.answer, model_text, self.config.mode);
            Step::Done(self.outcome(&ep, v.correct, Some(found.text)))
        } else {
            ep.malformed += 1;
            let nudge =
                ChatMessage::new("user", "Call a tool or give the final answer in \\boxed{}.");
            self.continue_or_stop(&ep, vec![nudge])
        };
        self.episode = Some(ep);
        Ok(step)
    }

    fn truncate(&mut self) -> Result<Outcome> {
        let ep = self.episode.clone().unwrap_or_default();
        Ok(Outcome {
            truncated: true,
            ..self.outcome(&ep, false, None)
        })
    }
}
