//! Trajectories: what the rollout engine produces and the trainer consumes.
use serde::{Deserialize, Serialize};

use crate::{Error, PolicyVersion, Result, TokenId};

/// Why a sequence stopped. Its `Display` is the finish-reason label used in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model emitted an end-of-sequence token.
    Eos,
    /// A configured stop token was sampled.
    StopToken,
    /// A configured stop string appeared in the decoded text.
    StopString,
    /// The token budget of the response ran out.
    MaxTokens,
    /// The multi-turn episode hit its turn limit.
    TurnLimit,
    /// The environment ended the episode.
    EnvDone,
}

impl std::fmt::Display for FinishReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            FinishReason::Eos => "eos",
            FinishReason::StopToken => "stop_token",
            FinishReason::StopString => "stop_string",
            FinishReason::MaxTokens => "max_tokens",
            FinishReason::TurnLimit => "turn_limit",
            FinishReason::EnvDone => "env_done",
        };
        f.write_str(s)
    }
}

/// How an episode ended, as its environment judged it: filled by the environment, read by the
/// trainer and the evaluation (no untyped map in between).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// The scalar reward the trainer optimises.
    pub reward: f32,
    /// Whether the final answer was graded correct.
    pub correct: bool,
    /// The answer the verifier extracted, if any.
    pub extracted: Option<String>,
    /// Tool calls made (well-formed ones).
    pub tool_calls: u32,
    /// Tool calls that failed (malformed JSON, unknown tool, tool error).
    pub tool_errors: u32,
    /// Turns with neither a usable tool call nor a final answer.
    pub malformed_turns: u32,
    /// True when the episode runner stopped the episode (turn or token limit) before the
    /// environment ended it.
    pub truncated: bool,
}

impl Outcome {
    /// An outcome with this reward and nothing else counted.
    pub fn with_reward(reward: f32) -> Self {
        Outcome {
            reward,
            ..Default::default()
        }
    }
}

/// The distribution the stored log-probs of a trajectory belong to: the sampler's temperature
/// and truncation. The trainer scores every token under exactly this distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingInfo {
    /// Softmax temperature (0: greedy; the sampler then stores log-probs at temperature 1).
    pub temperature: f32,
    /// Top-k truncation (0: off).
    pub top_k: u32,
    /// Top-p truncation (1: off).
    pub top_p: f32,
    /// Min-p truncation (0: off).
    pub min_p: f32,
}

impl Default for SamplingInfo {
    fn default() -> Self {
        SamplingInfo {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
        }
    }
}

impl SamplingInfo {
    /// True when the sampler drew from a truncated subset of the vocabulary.
    pub fn truncates(&self) -> bool {
        self.top_k > 0 || self.top_p < 1.0 || self.min_p > 0.0
    }

    /// The temperature the stored log-probs were taken at (greedy is stored at 1).
    pub fn scoring_temperature(&self) -> f64 {
        if self.temperature > 0.0 {
            self.temperature as f64
        } else {
            1.0
        }
    }
}

/// The vocabulary subsets that truncated sampling (top-k, top-p, min-p) drew each response
/// token from — DeepSeek-V3.2's "keep sampling mask" — so that the trainer scores every token
/// over the same support the sampler renormalised over. Compressed-row layout: the support of
/// token `i` is `ids[offsets[i]..offsets[i + 1]]`; an empty range means the full vocabulary
/// (a token that was not truncated, a tool-output token, or one whose support passed the
/// bound and is counted in `overflowed`). Memory: 4 bytes per token plus 4 per kept id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingSupports {
    /// `len + 1` offsets into `ids`.
    pub offsets: Vec<u32>,
    /// The kept token ids of every token, back to back.
    pub ids: Vec<TokenId>,
    /// Tokens whose support had more ids than the bound (scored over the full vocabulary).
    pub overflowed: u32,
}

impl Default for SamplingSupports {
    fn default() -> Self {
        SamplingSupports {
            offsets: vec![0],
            ids: Vec::new(),
            overflowed: 0,
        }
    }
}

impl SamplingSupports {
    /// Appends one token's support (`None`: the full vocabulary).
    pub fn push(&mut self, support: Option<&[TokenId]>) {
        if let Some(s) = support {
            self.ids.extend_from_slice(s);
        }
        self.offsets.push(self.ids.len() as u32);
    }

    /// Appends `n` tokens scored over the full vocabulary (e.g. tool output).
    pub fn push_full(&mut self, n: usize) {
        let end = self.ids.len() as u32;
        self.offsets.extend(std::iter::repeat_n(end, n));
    }

    /// Appends every token of `other`.
    pub fn extend(&mut self, other: &SamplingSupports) {
        for i in 0..other.len() {
            self.push(other.get(i));
        }
        self.overflowed += other.overflowed;
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// True when no token is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The support of token `i` (`None`: the full vocabulary).
    pub fn get(&self, i: usize) -> Option<&[TokenId]> {
        let (a, b) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
        (b > a).then(|| &self.ids[a..b])
    }

    /// The largest support.
    pub fn max_len(&self) -> usize {
        self.offsets
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .max()
            .unwrap_or(0)
    }
}

/// One sampled response (possibly spanning several turns with tool outputs in between).
///
/// `response` holds every token after the prompt: generated tokens and observation (tool
/// output) tokens interleaved. `loss_mask[i]` is 1 where `response[i]` was generated by the
/// model and 0 for observation tokens; `logp_infer[i]` is the sampling log-prob of a generated
/// token (0.0 for observation tokens, which were never sampled).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    /// Prompt tokens (chat template applied).
    pub prompt: Vec<TokenId>,
    /// Everything after the prompt.
    pub response: Vec<TokenId>,
    /// 1 for generated tokens, 0 for tool-output tokens; same length as `response`.
    pub loss_mask: Vec<u8>,
    /// Sampling log-prob of every response token under the distribution it was sampled from.
    pub logp_infer: Vec<f32>,
    /// The policy version whose weights sampled this trajectory.
    pub policy_version: PolicyVersion,
    /// The environment's verdict: reward, correctness, tool counts.
    pub outcome: Outcome,
    /// How the tokens were sampled (what `logp_infer` is a log-prob under).
    #[serde(default)]
    pub sampling: SamplingInfo,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// Number of model turns.
    pub num_turns: u32,
    /// The support each response token was sampled from, when sampling truncated and the
    /// sampling mask was kept (None: every token over the full vocabulary).
    #[serde(default)]
    pub supports: Option<SamplingSupports>,
}

impl Trajectory {
    /// A single-turn trajectory whose response tokens were all generated (sampled at
    /// temperature 1 without truncation; set `sampling` otherwise).
    pub fn single_turn(
        prompt: Vec<TokenId>,
        response: Vec<TokenId>,
        logp_infer: Vec<f32>,
        policy_version: PolicyVersion,
        reward: f32,
        finish_reason: FinishReason,
    ) -> Self {
        let loss_mask = vec![1; response.len()];
        Trajectory {
            prompt,
            response,
            loss_mask,
            logp_infer,
            policy_version,
            outcome: Outcome::with_reward(reward),
            sampling: SamplingInfo::default(),
            finish_reason,
            num_turns: 1,
            supports: None,
        }
    }

    /// The reward (of the outcome).
    pub fn reward(&self) -> f32 {
        self.outcome.reward
    }

    /// Number of tokens the model generated (mask 1).
    pub fn num_generated(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m != 0).count()
    }

    /// Prompt followed by response.
    pub fn full_tokens(&self) -> Vec<TokenId> {
        let mut v = self.prompt.clone();
        v.extend_from_slice(&self.response);
        v
    }

    /// Checks that the per-token vectors agree in length and that log-probs are finite.
    pub fn validate(&self) -> Result<()> {
        let n = self.response.len();
        if self.loss_mask.len() != n || self.logp_infer.len() != n {
            return Err(Error::invalid(format!(
                "trajectory vectors disagree: response {n}, loss_mask {}, logp_infer {}",
                self.loss_mask.len(),
                self.logp_infer.len()
            )));
        }
        if self.prompt.is_empty() {
            return Err(Error::invalid("trajectory has an empty prompt"));
        }
        if let Some(s) = &self.supports {
            let consistent = s.offsets.first() == Some(&0)
                && s.offsets.windows(2).all(|w| w[0] <= w[1])
                && s.offsets.last().is_some_and(|&e| e as usize == s.ids.len());
            if s.len() != n || !consistent {
                return Err(Error::invalid(format!(
                    "trajectory supports cover {} tokens (offsets consistent: {consistent}) but the response has {n}",
                    s.len()
                )));
            }
        }
        if let Some(i) = self
            .logp_infer
            .iter()
            .zip(&self.loss_mask)
            .position(|(l, &m)| m != 0 && !(l.is_finite() && *l <= 1e-4))
        {
            return Err(Error::NonFinite(format!(
                "logp_infer[{i}] = {} is not a log-probability",
                self.logp_infer[i]
            )));
        }
        Ok(())
    }
}

/// The G responses sampled for one task, which share an advantage baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrajectoryGroup {
    /// Identifier of the task all members answer.
    pub task_id: String,
    /// The responses.
    pub trajectories: Vec<Trajectory>,
}
