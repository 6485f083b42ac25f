//! The JSON of the completions API that `alp serve` speaks and [`RemoteBackend`] sends: the
//! subset of OpenAI's `/v1/completions` that RL clients use against vLLM and SGLang (prompt
//! as token ids, `n`, `max_tokens`, `temperature`, `top_p`, `top_k`, `min_p`, `seed`, `stop`,
//! `stop_token_ids`, `logprobs`), plus the fields alp's exact ratios need in an `alp` object
//! (the kept support of every token, the exact finish reason) and the weight version that
//! produced the answer (`weight_version`, top level, as SGLang names it).
//!
//! [`RemoteBackend`]: crate::RemoteBackend

use crate::backend::{Completion, Request};
use crate::sampling::SamplingParams;
use alp_core::{FinishReason, PolicyVersion, SamplingSupports, TokenId};
use serde::{Deserialize, Serialize};

/// A prompt: token ids (what RL clients send) or text (tokenised by the server).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// Token ids.
    Tokens(Vec<TokenId>),
    /// Text, tokenised by the server's tokenizer without special tokens.
    Text(String),
}

/// `stop`: one string or several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Stop {
    /// The stop strings.
    pub fn strings(&self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s.clone()],
            Stop::Many(v) => v.clone(),
        }
    }
}

/// alp's extension of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlpRequest {
    /// Record the support every token was drawn from when sampling truncates.
    #[serde(default)]
    pub keep_sampling_mask: bool,
    /// Most ids recorded per support (a larger one is counted as overflowed).
    #[serde(default = "default_max_support")]
    pub max_support: usize,
}

fn default_max_support() -> usize {
    SamplingParams::default().max_support
}

/// `POST /v1/completions`. Fields of the OpenAI API that this server does not implement and
/// that would change the answer (`stream`, `echo`, `best_of`, `suffix`) are refused by name;
/// others are ignored, as vLLM does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    /// The served model's name (ignored: one model per server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The prompt.
    pub prompt: Prompt,
    /// Completions of the prompt (sample `i` uses seed `seed + i`).
    #[serde(default = "one")]
    pub n: usize,
    /// Most tokens generated per completion.
    #[serde(default = "sixteen")]
    pub max_tokens: usize,
    /// Softmax temperature (0: greedy).
    #[serde(default = "one_f")]
    pub temperature: f32,
    /// Nucleus truncation (1: off).
    #[serde(default = "one_f")]
    pub top_p: f32,
    /// Top-k truncation (0 or -1: off).
    #[serde(default)]
    pub top_k: i64,
    /// Min-p truncation (0: off).
    #[serde(default)]
    pub min_p: f32,
    /// The request's seed (random when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Stop strings (kept in the output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    /// Stop token ids (kept in the output).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_token_ids: Vec<TokenId>,
    /// Keep going past end-of-sequence tokens.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_eos: bool,
    /// Return the log-prob of every sampled token (any value: alp returns the sampled token's
    /// only, no top alternatives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u32>,
    /// vLLM's switch for token ids in the response (alp always returns them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_token_ids: Option<bool>,
    /// SGLang's choice of a loaded LoRA adapter by name (alp ignores it: it serves one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_path: Option<String>,
    /// alp's extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alp: Option<AlpRequest>,
    /// `stream` (refused when true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// `echo` (refused when true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    /// `best_of` (refused above `n`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_of: Option<usize>,
}

fn one() -> usize {
    1
}
fn sixteen() -> usize {
    16
}
fn one_f() -> f32 {
    1.0
}

impl CompletionRequest {
    /// The request that samples `r` (n = 1, its seed, log-probs and the alp extension on).
    pub fn from_engine(r: &Request) -> Self {
        let p = &r.params;
        CompletionRequest {
            model: None,
            prompt: Prompt::Tokens(r.prompt.clone()),
            n: 1,
            max_tokens: p.max_new_tokens,
            temperature: p.temperature,
            top_p: p.top_p,
            top_k: p.top_k as i64,
            min_p: p.min_p,
            seed: Some(p.seed),
            stop: (!p.stop_strings.is_empty()).then(|| Stop::Many(p.stop_strings.clone())),
            stop_token_ids: p.stop_tokens.clone(),
            ignore_eos: p.ignore_eos,
            logprobs: Some(1),
            return_token_ids: Some(true),
            lora_path: None,
            alp: Some(AlpRequest {
                keep_sampling_mask: p.keep_sampling_mask,
                max_support: p.max_support,
            }),
            stream: None,
            echo: None,
            best_of: None,
        }
    }

    /// The sampling parameters of completion `i` (seed `seed + i`), or what is wrong with
    /// the request.
    pub fn params(&self, i: usize, default_seed: u64) -> Result<SamplingParams, String> {
        if self.stream == Some(true) {
            return Err("`stream` is not supported: send stream = false".into());
        }
        if self.echo == Some(true) {
            return Err("`echo` is not supported: send echo = false".into());
        }
        if self.best_of.is_some_and(|b| b != self.n) {
            return Err("`best_of` other than `n` is not supported".into());
        }
        if self.top_k < -1 {
            return Err(format!("top_k = {} (use -1 or 0 for off)", self.top_k));
        }
        let alp = self.alp.clone().unwrap_or(AlpRequest {
            keep_sampling_mask: false,
            max_support: default_max_support(),
        });
        Ok(SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k.max(0) as usize,
            top_p: self.top_p,
            min_p: self.min_p,
            max_new_tokens: self.max_tokens,
            seed: self.seed.unwrap_or(default_seed).wrapping_add(i as u64),
            stop_tokens: self.stop_token_ids.clone(),
            stop_strings: self.stop.as_ref().map(Stop::strings).unwrap_or_default(),
            ignore_eos: self.ignore_eos,
            keep_sampling_mask: alp.keep_sampling_mask,
            max_support: alp.max_support,
        })
    }
}

/// The sampled tokens' log-probs, in OpenAI's completions layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChoiceLogprobs {
    /// Every sampled token as `token_id:N` (vLLM's `return_tokens_as_token_ids` form).
    #[serde(default)]
    pub tokens: Vec<String>,
    /// The log-prob of every sampled token under the distribution it was sampled from (after
    /// temperature and truncation).
    pub token_logprobs: Vec<f32>,
}

/// alp's extension of a choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlpChoice {
    /// Why it stopped, exactly (OpenAI's `finish_reason` says only stop or length).
    pub finish_reason: FinishReason,
    /// The support of every token, when the request truncates and keeps the mask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supports: Option<SamplingSupports>,
}

/// One completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Its index among the request's `n`.
    pub index: usize,
    /// The decoded text (empty when the server has no tokenizer).
    #[serde(default)]
    pub text: String,
    /// The generated token ids (vLLM's `return_token_ids` field).
    #[serde(default)]
    pub token_ids: Option<Vec<TokenId>>,
    /// The sampled tokens' log-probs.
    #[serde(default)]
    pub logprobs: Option<ChoiceLogprobs>,
    /// `stop` or `length`.
    pub finish_reason: Option<String>,
    /// alp's extension.
    #[serde(default)]
    pub alp: Option<AlpChoice>,
}

/// Token counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens (once per request).
    pub prompt_tokens: usize,
    /// Generated tokens over every choice.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

/// The answer to a [`CompletionRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    /// `cmpl-N`.
    pub id: String,
    /// `text_completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The served model's name.
    pub model: String,
    /// One per completion, by index.
    pub choices: Vec<Choice>,
    /// Token counts.
    pub usage: Usage,
    /// The weight version that produced every choice.
    #[serde(default)]
    pub weight_version: Option<PolicyVersion>,
}

/// The OpenAI finish reason of `r`.
pub fn openai_finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::MaxTokens => "length",
        _ => "stop",
    }
}

impl Choice {
    /// The choice that carries `c`.
    pub fn from_completion(index: usize, c: Completion, text: String) -> Self {
        Choice {
            index,
            text,
            logprobs: Some(ChoiceLogprobs {
                tokens: c.tokens.iter().map(|t| format!("token_id:{t}")).collect(),
                token_logprobs: c.logprobs,
            }),
            token_ids: Some(c.tokens),
            finish_reason: Some(openai_finish_reason(c.finish_reason).into()),
            alp: Some(AlpChoice {
                finish_reason: c.finish_reason,
                supports: c.supports,
            }),
        }
    }
}

/// `POST /reload`: the weights to serve from now on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadRequest {
    /// A model directory the server can read (`config.json`, `model.safetensors`, and
    /// optionally `tokenizer.json`).
    pub path: String,
    /// The weight version it holds (the server's previous one + 1 when absent).
    #[serde(default)]
    pub version: Option<PolicyVersion>,
    /// A LoRA adapter directory in PEFT's format to apply over `path` (the base): a server
    /// that already holds that base keeps it (weights and packed copies) and only attaches
    /// the adapter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
}

/// The answer to a [`ReloadRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadResponse {
    /// The version served from now on.
    pub weight_version: PolicyVersion,
    /// Seconds spent loading the weights.
    pub load_seconds: f64,
}

/// An error answer: `{"error": {"message": .., "type": ..}}` (OpenAI's shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The error's text and kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// What went wrong, and the fix.
    pub message: String,
    /// `invalid_request_error`, `unauthorized`, `overloaded`, `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
}
