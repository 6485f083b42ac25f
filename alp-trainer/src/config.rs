//! The training configuration: one TOML file, every field defaulted. `alp train --set
//! key=value` edits it; [`TrainConfig::validate`] refuses inconsistent settings naming the
//! fields.

use alp_core::{Error, Result};
use alp_loss::{AdvantageEstimator, Aggregation, KlPenalty, Objective};
use alp_model::PerturbationConfig;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A floating-point type of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// 32-bit float.
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
}

impl Dtype {
    /// The candle dtype.
    pub fn candle(self) -> candle_core::DType {
        match self {
            Dtype::F32 => candle_core::DType::F32,
            Dtype::Bf16 => candle_core::DType::BF16,
            Dtype::F16 => candle_core::DType::F16,
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        })
    }
}

/// Quantisation of the rollout engine's weights (fake-quantised: rounded to the grid and
/// stored in the rollout dtype), a stronger engine mismatch like a low-precision inference
/// engine's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RolloutQuant {
    /// The rollout dtype only.
    #[default]
    None,
    /// Symmetric int8 per output row of every matrix.
    Int8,
    /// Symmetric int4 per output row of every matrix.
    Int4,
}

impl RolloutQuant {
    /// Largest quantised magnitude (127 for int8, 7 for int4); None without quantisation.
    pub fn levels(self) -> Option<f64> {
        match self {
            RolloutQuant::None => None,
            RolloutQuant::Int8 => Some(127.0),
            RolloutQuant::Int4 => Some(7.0),
        }
    }
}

/// How the rollout engine computes (`rl.rollout_numerics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RolloutNumerics {
    /// The engine's own fast kernels (its mismatch with the trainer is measured as the
    /// engine part of the ratio).
    #[default]
    Fast,
    /// Bit-exact rollouts: the trainer and the engine both run `alp_model::Numerics::Exact`
    /// and the engine stores log-probs as the trainer scores them, so that at staleness 0
    /// π_old/μ is exactly 1 for every token and only staleness remains. Needs one dtype, f32
    /// or bf16, on the CPU for both (`model.dtype`, `rl.rollout_dtype`), no
    /// `rl.rollout_quant`, no truncated sampling and the built-in local engine.
    Exact,
}

/// The RL environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvKind {
    /// Multi-turn math with the calculator tool.
    Tool,
    /// Single-turn math.
    Math,
    /// Multi-turn math with a sandboxed Python interpreter, called by fenced code blocks
    /// (tool-integrated reasoning; limits in `rl.python`).
    Python,
}

impl EnvKind {
    /// True for the multi-turn environments with a tool (`tool`, `python`).
    pub fn is_tool(self) -> bool {
        self != EnvKind::Math
    }

    /// The strings that end a model turn and hand it to the environment.
    pub fn turn_stop_strings(self) -> Vec<String> {
        match self {
            EnvKind::Python => vec![alp_envs::tools::CODE_RUN.into()],
            _ => vec![alp_envs::tools::TOOL_CALL_CLOSE.into()],
        }
    }
}

/// Where the model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource<'a> {
    /// The embedded default: a preset shape, random init, the built-in tokenizer; SFT warm start.
    Embedded {
        /// The preset name.
        preset: &'a str,
    },
    /// A Hugging Face checkpoint (directory or cached repo id) with its own tokenizer.
    Checkpoint(&'a str),
}

/// Which model to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// A Hugging Face checkpoint (directory or repo id in the local cache). Empty: the
    /// embedded default (a tiny Qwen2 shape, `preset`, with a built-in tokenizer).
    pub base: String,
    /// Shape of the embedded default when `base` is empty.
    pub preset: String,
    /// Seed of the embedded default's initialisation.
    pub init_seed: u64,
    /// Trainer dtype (f32, bf16, f16).
    pub dtype: Dtype,
    /// Device: cpu or cuda:N.
    pub device: String,
    /// Micro-batches run at once (CPU: each on its own thread, gradients summed in a fixed
    /// order, so the result does not depend on timing). 0: as many as the CPU threads on a
    /// CPU for models up to 64M parameters, otherwise 1 (each micro-batch in flight holds a
    /// whole gradient copy); 1 on a GPU.
    pub parallel_micro_batches: usize,
    /// Gradient checkpointing: keep only each decoder layer's input during a training forward
    /// and recompute the layer's activations in the backward (the same gradients; one layer's
    /// activations alive at a time instead of all of them, for a second forward's time).
    pub gradient_checkpointing: bool,
    /// LoRA (`r` > 0): the base stays frozen and only low-rank adapters of the projections
    /// (and ALP's σ) train, in SFT and RL; checkpoints hold the adapter in PEFT's format.
    pub lora: alp_model::LoraConfig,
    /// A PEFT adapter directory to start the adapter from (LoRA runs only; its rank, scale
    /// and targets replace `lora`'s). Empty: a fresh adapter.
    pub adapter: String,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            base: String::new(),
            preset: "alp-default".into(),
            init_seed: 0,
            dtype: Dtype::F32,
            device: "cpu".into(),
            parallel_micro_batches: 0,
            gradient_checkpointing: false,
            lora: alp_model::LoraConfig::default(),
            adapter: String::new(),
        }
    }
}

impl ModelSection {
    /// The embedded default (empty `base`) or a checkpoint.
    pub fn source(&self) -> ModelSource<'_> {
        if self.base.is_empty() {
            ModelSource::Embedded {
                preset: &self.preset,
            }
        } else {
            ModelSource::Checkpoint(&self.base)
        }
    }

    /// True for the embedded default.
    pub fn is_embedded(&self) -> bool {
        matches!(self.source(), ModelSource::Embedded { .. })
    }

    /// How many micro-batches run at once for a model of `params` parameters:
    /// `parallel_micro_batches`, or with 0 [`default_parallel_micro_batches`].
    pub fn micro_batch_threads(&self, params: usize) -> usize {
        match self.parallel_micro_batches {
            0 => default_parallel_micro_batches(params, self.device.trim() == "cpu"),
            n => n,
        }
    }
}

/// Above this many parameters a CPU computes one micro-batch at a time (f32 gradients of
/// 256 MiB): each micro-batch in flight holds a whole gradient copy until it is summed, and
/// the products are large enough for the cores to share one micro-batch.
pub const PARALLEL_MICRO_BATCHES_MAX_PARAMS: usize = 64 << 20;

/// The default number of micro-batches computed at once: on a CPU, one per rayon thread for
/// models up to [`PARALLEL_MICRO_BATCHES_MAX_PARAMS`] (small products leave cores idle
/// otherwise), one above (at the 0.5B shape two in flight took 14.0 GB where one took
/// 10.0 GB); on a GPU one (its kernels already run asynchronously).
pub fn default_parallel_micro_batches(params: usize, cpu: bool) -> usize {
    if cpu && params <= PARALLEL_MICRO_BATCHES_MAX_PARAMS {
        rayon::current_num_threads()
    } else {
        1
    }
}

/// The supervised warm start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftSection {
    /// Optimizer steps (0 skips SFT).
    pub steps: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate (linear warm-up, cosine decay).
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Share of hard-task demonstrations that call the calculator.
    pub tool_fraction: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Padded tokens per forward: the batch is sorted by length and cut into micro-batches of
    /// at most this many (rows × longest row) whose gradients are summed, so short rows are
    /// not padded to the longest of the whole batch. 0: the whole batch in one forward.
    pub micro_batch_tokens: usize,
    /// With LoRA on (`model.lora.r` > 0): SFT trains the adapter too. Off (the default): the
    /// embedded default's warm start trains every weight (it makes the base from random
    /// weights, which a low-rank update alone learns slowly), the result is written once to
    /// `<run>/base`, and RL trains an adapter over it.
    pub lora: bool,
}

impl Default for SftSection {
    fn default() -> Self {
        SftSection {
            steps: 1000,
            batch_size: 64,
            lr: 1e-3,
            warmup: 25,
            tool_fraction: 0.25,
            weight_decay: 0.0,
            micro_batch_tokens: 512,
            lora: false,
        }
    }
}

/// The RL phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RlSection {
    /// The objective (`method = "alp-seq"`, `"grpo"`, ... and its clip settings).
    pub objective: Objective,
    /// RL steps (one rollout batch each).
    pub steps: usize,
    /// Tasks per step.
    pub prompts_per_step: usize,
    /// Responses per task.
    pub group_size: usize,
    /// Trajectories per optimizer step (must divide prompts_per_step × group_size).
    pub mini_batch: usize,
    /// Trajectories per forward/backward (gradient accumulation inside a mini-batch).
    pub micro_batch: usize,
    /// Padded tokens per forward (0: off): each mini-batch is sorted by length and cut into
    /// micro-batches of at most this many tokens (rows × longest row) and `micro_batch` rows.
    pub micro_batch_tokens: usize,
    /// Passes over each rollout batch.
    pub ppo_epochs: usize,
    /// Learning rate of the weights.
    pub lr: f64,
    /// Learning rate of the perturbation's log σ (its own AdamW group).
    pub sigma_lr: f64,
    /// Weight decay of log σ (0: none; the reference's multi-turn runs keep log σ in the
    /// weights' AdamW, so their decay of 1e-2 pulls log σ towards 0, σ towards 1).
    pub sigma_weight_decay: f64,
    /// Weight decay of the weights.
    pub weight_decay: f64,
    /// Global gradient-norm clip (0: off).
    pub grad_clip: f64,
    /// How many policy versions the sampler may lag (0: synchronous).
    pub max_staleness: u64,
    /// Sample batch `s` with exactly version `s − max_staleness` (not the newest one ready):
    /// an asynchronous run that does not depend on timing, reproducible and bit-identical
    /// across a resume.
    pub exact_staleness: bool,
    /// When a stale batch is scored under the weights that sampled it (the engine/staleness
    /// split of the mismatch): `at-sampling` (the rollout worker scores each batch right after
    /// sampling it, with an f32 copy of the version it samples with: one copy, two while a new
    /// one waits for the worker, whatever `max_staleness`; with `exact_staleness`, every
    /// version from the one it samples with on) or `at-update` (the trainer keeps an f32 copy
    /// of every version that may still sample, `max_staleness` + 1 of them, and scores at the
    /// update: the reference the first is tested against).
    pub score_sampler: SamplerScoring,
    /// Rollout dtype (bf16: a real engine mismatch).
    pub rollout_dtype: Dtype,
    /// Quantisation of the rollout weights (none, int8, int4).
    pub rollout_quant: RolloutQuant,
    /// The rollout engine's numerics: `fast` (its own kernels) or `exact` (the trainer's:
    /// stored log-probs equal the trainer's bit for bit; see [`RolloutNumerics`]).
    pub rollout_numerics: RolloutNumerics,
    /// Recompute log π_old with the trainer before the update (needed by methods that use it).
    pub recompute_logp_old: bool,
    /// Advantage estimator.
    pub advantage: AdvantageEstimator,
    /// Loss aggregation.
    pub aggregation: Aggregation,
    /// Sampling temperature.
    pub temperature: f32,
    /// Model turns per episode.
    pub max_turns: usize,
    /// Tokens per turn.
    pub max_new_tokens: usize,
    /// Response tokens per episode.
    pub max_total_tokens: usize,
    /// Environment: `tool` (calculator, multi-turn) or `math` (single turn).
    pub env: EnvKind,
    /// Subtracted from the reward of episodes with malformed turns or tool errors.
    pub format_penalty: f32,
    /// Stop after this many consecutive non-finite losses or gradients.
    pub max_bad_steps: usize,
    /// Turn the perturbation on for non-ALP methods too.
    pub perturb_always: bool,
    /// KL-to-reference term (`estimator` k1/k2/k3, `coef`; 0 = off); the reference is the
    /// policy RL starts from (the SFT warm start or the base checkpoint).
    pub kl: KlPenalty,
    /// Truncated sampling of the rollouts (top-k, top-p, min-p) and its sampling mask.
    pub sampling: RolloutSampling,
    /// Limits of the sandboxed Python tool (`env = "python"`).
    pub python: alp_envs::tools::PythonConfig,
    /// Where rollouts are sampled: the in-process engine or inference servers.
    pub rollout: RolloutSection,
}

/// Where rollouts are sampled: `backend = "local"` (the in-process engine) or `"remote"`
/// (inference servers over HTTP, `alp serve` or SGLang; [`alp_rollout::RemoteBackend`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutSection {
    /// `local` or `remote`.
    pub backend: RolloutBackendKind,
    /// The servers' base URLs (`remote`), e.g. `["http://127.0.0.1:8000"]`.
    pub servers: Vec<String>,
    /// Their software: `alp`, `sglang` or `vllm` (sampling only).
    pub server_kind: alp_rollout::ServerKind,
    /// Deadline of one request, seconds; past it the server counts as down.
    pub timeout_s: f64,
    /// Deadline of one weight reload, seconds.
    pub reload_timeout_s: f64,
    /// Requests in flight at once over all servers.
    pub max_in_flight: usize,
    /// Where the trainer publishes weights for the servers (empty: `RUN/published`); every
    /// server must read it at the same path.
    pub publish_dir: String,
    /// The environment variable that holds the servers' reload token.
    pub reload_token_env: String,
    /// The in-process engine's limits (the local backend and evaluations): `max_batch`,
    /// `token_budget`, `max_context`, `shards`, and `prefix_cache_tokens` (how many tokens of
    /// finished turns are kept so that the next turn of an episode prefills only its new
    /// tokens; 0: off).
    pub engine: alp_rollout::EngineConfig,
}

/// When a stale batch is scored under the weights that sampled it (`rl.score_sampler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SamplerScoring {
    /// In the rollout worker, right after sampling.
    #[default]
    AtSampling,
    /// In the trainer, at the update, from a kept copy of every version.
    AtUpdate,
}

/// Which rollout backend a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutBackendKind {
    /// The in-process engine.
    Local,
    /// Inference servers over HTTP.
    Remote,
}

impl Default for RolloutSection {
    fn default() -> Self {
        RolloutSection {
            backend: RolloutBackendKind::Local,
            servers: Vec::new(),
            server_kind: alp_rollout::ServerKind::Alp,
            timeout_s: 120.0,
            reload_timeout_s: 300.0,
            max_in_flight: 64,
            publish_dir: String::new(),
            reload_token_env: "ALP_RELOAD_TOKEN".into(),
            engine: Default::default(),
        }
    }
}

impl RolloutSection {
    /// The client's settings for a run in `run_dir` whose staleness bound is `max_staleness`.
    pub fn remote_config(
        &self,
        run_dir: &std::path::Path,
        max_staleness: u64,
    ) -> alp_rollout::RemoteConfig {
        alp_rollout::RemoteConfig {
            servers: self.servers.clone(),
            kind: self.server_kind,
            timeout_s: self.timeout_s,
            reload_timeout_s: self.reload_timeout_s,
            max_in_flight: self.max_in_flight,
            max_staleness,
            publish_dir: if self.publish_dir.is_empty() {
                run_dir.join("published")
            } else {
                self.publish_dir.clone().into()
            },
            reload_token: std::env::var(&self.reload_token_env).ok(),
        }
    }

    /// Checks the engine's limits and the remote settings when they are used.
    pub fn validate(&self) -> Result<()> {
        self.engine.validate().map_err(in_section("engine."))?;
        if self.backend == RolloutBackendKind::Remote {
            // The client's checks name its fields, which are this section's.
            self.remote_config(std::path::Path::new("."), 0)
                .validate()?;
        }
        Ok(())
    }
}

/// Prefixes the field of a [`Error::Config`] with `prefix` (a check of a sub-config run as
/// part of this one names the field by its full key); other errors pass through.
fn in_section(prefix: &'static str) -> impl Fn(Error) -> Error {
    move |e| match e {
        Error::Config { field, message } => Error::config(format!("{prefix}{field}"), message),
        e => e,
    }
}

/// Truncated sampling of RL rollouts. With `keep_mask` (the default) the engine records the
/// support each token was drawn from and the trainer scores the token over that same support,
/// so the ratio stays exact; without it the trainer scores over the full vocabulary and the
/// ratio is biased (the run says so).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutSampling {
    /// Keep the `top_k` most likely tokens (0: off).
    pub top_k: usize,
    /// Keep the smallest set reaching this probability (1: off).
    pub top_p: f32,
    /// Drop tokens below `min_p` × the top token's probability (0: off).
    pub min_p: f32,
    /// Record each token's support and score over it.
    pub keep_mask: bool,
    /// Most ids recorded per token (4 bytes each); a larger support is scored over the full
    /// vocabulary and counted in `sampling/support_overflow_frac`.
    pub max_support: usize,
}

impl Default for RolloutSampling {
    fn default() -> Self {
        RolloutSampling {
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            keep_mask: true,
            max_support: 1024,
        }
    }
}

impl RolloutSampling {
    /// Sets the truncation and the sampling mask of `p` to these.
    pub fn apply(&self, p: &mut alp_rollout::SamplingParams) {
        p.top_k = self.top_k;
        p.top_p = self.top_p;
        p.min_p = self.min_p;
        p.keep_sampling_mask = self.keep_mask;
        p.max_support = self.max_support;
    }

    /// The sampler's parameters with these settings (the rest default).
    fn params(&self) -> alp_rollout::SamplingParams {
        let mut p = alp_rollout::SamplingParams::default();
        self.apply(&mut p);
        p
    }

    /// True when rollouts are sampled from a truncated vocabulary.
    pub fn truncates(&self) -> bool {
        self.params().truncates()
    }

    fn validate(&self) -> Result<()> {
        // The sampler's own checks, the field named with its section.
        self.params()
            .validate()
            .map_err(in_section("rl.sampling."))?;
        if !(1..=1 << 16).contains(&self.max_support) {
            return Err(Error::config(
                "rl.sampling.max_support",
                "must lie in 1..=65536",
            ));
        }
        Ok(())
    }
}

impl Default for RlSection {
    fn default() -> Self {
        RlSection {
            objective: Objective::default(),
            steps: 100,
            prompts_per_step: 16,
            group_size: 8,
            mini_batch: 64,
            micro_batch: 64,
            micro_batch_tokens: 1024,
            ppo_epochs: 1,
            lr: 3e-5,
            sigma_lr: 1e-2,
            sigma_weight_decay: 0.0,
            weight_decay: 0.0,
            grad_clip: 1.0,
            max_staleness: 1,
            exact_staleness: false,
            score_sampler: SamplerScoring::AtSampling,
            rollout_dtype: Dtype::Bf16,
            rollout_quant: RolloutQuant::None,
            rollout_numerics: RolloutNumerics::Fast,
            recompute_logp_old: true,
            advantage: AdvantageEstimator::Grpo,
            aggregation: Aggregation::TokenMean,
            temperature: 1.0,
            max_turns: 3,
            max_new_tokens: 16,
            max_total_tokens: 48,
            env: EnvKind::Tool,
            format_penalty: 0.0,
            max_bad_steps: 5,
            perturb_always: false,
            kl: KlPenalty::default(),
            sampling: RolloutSampling::default(),
            python: Default::default(),
            rollout: Default::default(),
        }
    }
}

/// Held-out evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSection {
    /// Evaluate every this many RL steps (0: only before and after RL).
    pub every: usize,
    /// Held-out tasks per evaluation.
    pub tasks: usize,
    /// Samples per task at temperature 1 for pass@k (0: greedy only).
    pub pass_k: usize,
    /// Run the mechanism probe ([`crate::probe`]) every this many RL steps (0: never): the
    /// policy's entropy, its sensitivity to hidden-state noise and its own engine mismatch
    /// on fixed held-out demonstrations, as `probe/…` step metrics. Embedded tasks only.
    pub probe_every: usize,
    /// Held-out demonstrations the probe reads (the same ones every time).
    pub probe_tasks: usize,
    /// Relative σ values (σ·rms(h), every layer) whose noise the probe measures.
    pub probe_relative_sigmas: Vec<f64>,
    /// Absolute σ values the probe measures.
    pub probe_absolute_sigmas: Vec<f64>,
}

impl Default for EvalSection {
    fn default() -> Self {
        EvalSection {
            every: 50,
            tasks: 200,
            pass_k: 4,
            probe_every: 0,
            probe_tasks: 32,
            probe_relative_sigmas: vec![0.01, 0.05],
            probe_absolute_sigmas: vec![0.02],
        }
    }
}

/// Checkpointing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointSection {
    /// Save every this many RL steps (0: only at the end).
    pub every: usize,
    /// Keep the newest this many checkpoints, removing older ones once a newer one is
    /// complete and `latest` (0: keep every one; Hugging Face's `save_total_limit`).
    pub keep_last: usize,
    /// Also keep every checkpoint whose step is a multiple of this (milestones; 0: none).
    pub keep_every: u64,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        CheckpointSection {
            every: 50,
            keep_last: 0,
            keep_every: 0,
        }
    }
}

/// Everything `alp train` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Seed of tasks, sampling and noise.
    pub seed: u64,
    /// The model.
    pub model: ModelSection,
    /// Task mix of the embedded default.
    pub tasks: crate::default_task::TaskMix,
    /// SFT warm start.
    pub sft: SftSection,
    /// RL.
    pub rl: RlSection,
    /// The layerwise perturbation (used by alp-token / alp-seq).
    pub perturbation: PerturbationConfig,
    /// Evaluation.
    pub eval: EvalSection,
    /// Checkpoints.
    pub checkpoint: CheckpointSection,
}

/// Parses the text of a `--set` value by the type of the value it replaces (`existing`): a
/// string field takes the text as it is (so `123` or `true` can be a string), a number or
/// boolean must parse as one, an array or table as a TOML value. Without an existing value
/// (a field a new method brings), the text's own type is taken.
fn parse_typed(key: &str, text: &str, existing: Option<&toml::Value>) -> Result<toml::Value> {
    let bad = |what: &str| Error::config(key, format!("`{text}` is not {what}"));
    Ok(match existing {
        Some(toml::Value::String(_)) => toml::Value::String(text.to_string()),
        Some(toml::Value::Integer(_)) => {
            toml::Value::Integer(text.parse().map_err(|_| bad("an integer"))?)
        }
        Some(toml::Value::Float(_)) => {
            let f: f64 = text.parse().map_err(|_| bad("a number"))?;
            toml::Value::Float(f)
        }
        Some(toml::Value::Boolean(_)) => {
            toml::Value::Boolean(text.parse().map_err(|_| bad("true or false"))?)
        }
        Some(_) => {
            let doc: toml::Table = toml::from_str(&format!("v = {text}"))
                .map_err(|_| bad("a TOML value of this field's type"))?;
            doc.get("v").cloned().ok_or_else(|| bad("a value"))?
        }
        None => {
            if let Ok(i) = text.parse::<i64>() {
                toml::Value::Integer(i)
            } else if let Ok(f) = text.parse::<f64>() {
                toml::Value::Float(f)
            } else if let Ok(b) = text.parse::<bool>() {
                toml::Value::Boolean(b)
            } else {
                toml::Value::String(text.to_string())
            }
        }
    })
}

/// The first line of a deserialisation error, without TOML's position prefix (the position of
/// an internal document means nothing to the user).
fn serde_message(e: &toml::de::Error) -> String {
    e.message()
        .lines()
        .next()
        .unwrap_or("invalid value")
        .to_string()
}

impl TrainConfig {
    /// Reads a TOML file (missing fields take their defaults).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml(&text).map_err(|e| match e {
            Error::Parse { message, .. } => Error::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::Parse {
            path: "<config>".into(),
            message: e.to_string(),
        })
    }

    /// The config as TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self)
            .map_err(|e| Error::Msg(format!("cannot write the config as TOML: {e}")))
    }

    /// Applies `key=value` overrides (`rl.lr=1e-5`, `rl.objective.method=grpo`,
    /// `model.base=Qwen/Qwen2.5-0.5B-Instruct`). Each value is parsed by the type of the
    /// field it sets, and an error names the full key.
    pub fn apply_overrides(&self, sets: &[String]) -> Result<Self> {
        let mut root = toml::Value::try_from(self).map_err(|e| Error::Msg(e.to_string()))?;
        for s in sets {
            let (key, value) = s
                .split_once('=')
                .ok_or_else(|| Error::config("--set", format!("`{s}` is not key=value")))?;
            let key = key.trim();
            let parts: Vec<&str> = key.split('.').collect();
            let mut node = &mut root;
            for p in &parts[..parts.len() - 1] {
                node = node
                    .get_mut(*p)
                    .ok_or_else(|| Error::config(key, "no such section"))?;
            }
            let last = parts[parts.len() - 1];
            let table = node
                .as_table_mut()
                .ok_or_else(|| Error::config(key, "not a table"))?;
            if last == "method" && parts.len() >= 2 && parts[parts.len() - 2] == "objective" {
                // A new method starts from its own defaults (so that its fields can be set).
                let obj = Objective::from_name(value.trim())
                    .map_err(|e| Error::config(key, e.to_string()))?;
                let defaults = toml::Value::try_from(obj).map_err(|e| Error::Msg(e.to_string()))?;
                if let toml::Value::Table(t) = defaults {
                    *table = t;
                }
                continue;
            } else if !table.contains_key(last) {
                return Err(Error::config(key, "no such setting"));
            }
            let v = parse_typed(key, value.trim(), table.get(last))?;
            table.insert(last.to_string(), v);
            // Checked one key at a time, so that a rejected value is named by its key.
            let _: TrainConfig = root
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| Error::config(key, serde_message(&e)))?;
        }
        root.try_into()
            .map_err(|e: toml::de::Error| Error::config("--set", serde_message(&e)))
    }

    /// Cross-field checks, every field before any work starts; the error names the fields.
    pub fn validate(&self) -> Result<()> {
        self.validate_sizes()?;
        self.validate_rl_batch()?;
        self.validate_rl_limits()?;
        self.validate_numbers()?;
        self.rl.sampling.validate()?;
        self.rl.python.validate().map_err(in_section("rl."))?;
        self.rl
            .rollout
            .validate()
            .map_err(in_section("rl.rollout."))?;
        if self.sft.steps > 0 && self.sft.batch_size == 0 {
            return Err(Error::config("sft.batch_size", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.sft.tool_fraction) {
            return Err(Error::config("sft.tool_fraction", "must lie in [0, 1]"));
        }
        if self.checkpoint.keep_every > 0 && self.checkpoint.keep_last == 0 {
            return Err(Error::config(
                "checkpoint.keep_every",
                "keeps milestones besides the newest `checkpoint.keep_last`, which is 0 (keep every checkpoint): set checkpoint.keep_last too",
            ));
        }
        alp_model::parse_device(&self.model.device)
            .map_err(|e| Error::config("model.device", e.to_string()))?;
        self.validate_rollout_numerics()?;
        self.model.lora.validate()?;
        self.tasks.dataset_format()?;
        self.tasks.generators()?;
        if self.eval.probe_every > 0 {
            if !self.tasks.train_file.is_empty() {
                return Err(Error::config(
                    "eval.probe_every",
                    "reads the embedded tasks' demonstrations; with tasks.train_file set it to 0",
                ));
            }
            if self.eval.probe_tasks == 0 {
                return Err(Error::config(
                    "eval.probe_tasks",
                    "is 0: the probe needs at least one demonstration (or set eval.probe_every = 0)",
                ));
            }
            let bad = self
                .eval
                .probe_relative_sigmas
                .iter()
                .chain(&self.eval.probe_absolute_sigmas)
                .find(|s| !(s.is_finite() && **s > 0.0));
            if let Some(s) = bad {
                return Err(Error::config(
                    "eval.probe_relative_sigmas / eval.probe_absolute_sigmas",
                    format!("{s} is not a positive finite σ"),
                ));
            }
        }
        if self.tasks.train_file.is_empty()
            && self.tasks.embedded == crate::default_task::CHAIN_KIND
            && self.rl.max_new_tokens < crate::default_task::CHAIN_MAX_ANSWER_TOKENS
        {
            return Err(Error::config(
                "rl.max_new_tokens",
                format!(
                    "is {}, below the longest worked solution of tasks.embedded = \"chain\" ({} tokens): set rl.max_new_tokens=160 and rl.max_total_tokens=200",
                    self.rl.max_new_tokens,
                    crate::default_task::CHAIN_MAX_ANSWER_TOKENS
                ),
            ));
        }
        if !self.tasks.train_file.is_empty() {
            if self.tasks.heldout_file.is_empty() {
                return Err(Error::config(
                    "tasks.heldout_file",
                    "is empty: with tasks.train_file, name a held-out file for the evaluations (tasks the run does not train on)",
                ));
            }
            if self.model.is_embedded() {
                return Err(Error::config(
                    "tasks.train_file",
                    "needs a checkpoint as model.base (the embedded default's tokenizer only knows its arithmetic tasks' characters)",
                ));
            }
        } else if !self.tasks.heldout_file.is_empty() {
            return Err(Error::config(
                "tasks.heldout_file",
                "is set without tasks.train_file: set both (or neither, for the embedded tasks)",
            ));
        }
        if !self.model.adapter.is_empty() && !self.model.lora.is_on() {
            return Err(Error::config(
                "model.adapter",
                format!(
                    "{} is an adapter, but LoRA is off (model.lora.r = 0): set model.lora.r (the adapter's own rank is used), or merge the adapter first (`alp merge`)",
                    self.model.adapter
                ),
            ));
        }
        if let ModelSource::Embedded { preset } = self.model.source() {
            alp_model::presets::by_name(preset)?;
        }
        Ok(())
    }

    /// `rl.rollout_numerics = "exact"` needs what the exact kernels need, named field by field.
    fn validate_rollout_numerics(&self) -> Result<()> {
        if self.rl.rollout_numerics != RolloutNumerics::Exact {
            return Ok(());
        }
        let why = "bit-exact rollouts (rl.rollout_numerics = \"exact\") need";
        if self.model.dtype != self.rl.rollout_dtype || self.model.dtype == Dtype::F16 {
            return Err(Error::config(
                "rl.rollout_dtype",
                format!(
                    "{why} one dtype, f32 or bf16, for the trainer and the engine; model.dtype is {} and rl.rollout_dtype {}: set both to \"f32\" (or both to \"bf16\")",
                    self.model.dtype, self.rl.rollout_dtype
                ),
            ));
        }
        if self.rl.rollout_quant != RolloutQuant::None {
            return Err(Error::config(
                "rl.rollout_quant",
                format!("{why} unquantised rollout weights: set it to \"none\""),
            ));
        }
        if self.rl.sampling.truncates() {
            return Err(Error::config(
                "rl.sampling",
                format!("{why} untruncated sampling: set top_k 0, top_p 1 and min_p 0"),
            ));
        }
        if self.model.device != "cpu" {
            return Err(Error::config(
                "model.device",
                format!("{why} the CPU kernels: set it to \"cpu\""),
            ));
        }
        if self.rl.rollout.backend != RolloutBackendKind::Local {
            return Err(Error::config(
                "rl.rollout.backend",
                format!("{why} the built-in engine (another server runs its own kernels): set it to \"local\""),
            ));
        }
        Ok(())
    }

    /// The batch shape of RL: prompts × group = a whole number of mini-batches, micro-batches
    /// inside them, a group large enough for its advantage estimator.
    fn validate_rl_batch(&self) -> Result<()> {
        let rl = &self.rl;
        rl.objective.validate()?;
        let batch = rl.prompts_per_step * rl.group_size;
        if rl.prompts_per_step == 0 || rl.group_size == 0 {
            return Err(Error::config(
                "rl.prompts_per_step / rl.group_size",
                "must be at least 1",
            ));
        }
        if rl.mini_batch == 0 || !batch.is_multiple_of(rl.mini_batch) {
            return Err(Error::config(
                "rl.mini_batch",
                format!(
                    "{} does not divide the batch rl.prompts_per_step × rl.group_size = {batch}",
                    rl.mini_batch
                ),
            ));
        }
        if rl.micro_batch == 0 || rl.micro_batch > rl.mini_batch {
            return Err(Error::config(
                "rl.micro_batch",
                format!("must lie in 1..=rl.mini_batch ({})", rl.mini_batch),
            ));
        }
        if rl.group_size < 2
            && matches!(
                rl.advantage,
                AdvantageEstimator::Grpo | AdvantageEstimator::Rloo
            )
        {
            return Err(Error::config(
                "rl.group_size",
                format!("1 with rl.advantage = {:?}: a group-normalised advantage needs at least 2 responses per task", rl.advantage),
            ));
        }
        Ok(())
    }

    /// The method's needs, the environment's turns, epochs, learning rates and token limits.
    fn validate_rl_limits(&self) -> Result<()> {
        let rl = &self.rl;
        if rl.objective.needs_logp_old() && !rl.recompute_logp_old {
            return Err(Error::config(
                "rl.recompute_logp_old",
                format!(
                    "rl.objective.method = {} needs log π_old; set rl.recompute_logp_old = true",
                    rl.objective.name()
                ),
            ));
        }
        if rl.env.is_tool() && rl.max_turns == 0 {
            return Err(Error::config(
                "rl.max_turns",
                "0 with rl.env = tool: a tool episode needs at least one turn",
            ));
        }
        if rl.ppo_epochs == 0 {
            return Err(Error::config("rl.ppo_epochs", "must be at least 1"));
        }
        let lr_ok =
            rl.lr > 0.0 && rl.lr.is_finite() && rl.sigma_lr.is_finite() && rl.sigma_lr >= 0.0;
        if !lr_ok {
            return Err(Error::config(
                "rl.lr / rl.sigma_lr",
                "learning rates must be positive and finite",
            ));
        }
        if !(rl.sigma_weight_decay >= 0.0 && rl.sigma_weight_decay.is_finite()) {
            return Err(Error::config(
                "rl.sigma_weight_decay",
                format!("{} must be >= 0 and finite", rl.sigma_weight_decay),
            ));
        }
        if rl.max_new_tokens == 0 || rl.max_total_tokens == 0 {
            return Err(Error::config(
                "rl.max_new_tokens / rl.max_total_tokens",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// Sizes whose memory grows with them, bounded before anything is allocated.
    fn validate_sizes(&self) -> Result<()> {
        let rl = &self.rl;
        let per_step = rl.prompts_per_step.saturating_mul(rl.group_size);
        let caps: [(&str, usize, usize); 7] = [
            (
                "model.parallel_micro_batches",
                self.model.parallel_micro_batches,
                1 << 10,
            ),
            ("rl.prompts_per_step × rl.group_size", per_step, 1 << 16),
            ("rl.max_total_tokens", rl.max_total_tokens, 1 << 20),
            ("rl.max_new_tokens", rl.max_new_tokens, 1 << 20),
            ("sft.batch_size", self.sft.batch_size, 1 << 16),
            ("eval.tasks", self.eval.tasks, 1 << 20),
            ("eval.pass_k", self.eval.pass_k, 1 << 10),
        ];
        for (field, v, cap) in caps {
            if v > cap {
                return Err(Error::config(
                    field,
                    format!("{v} is more than this machine can hold at once (at most {cap})"),
                ));
            }
        }
        Ok(())
    }

    /// Numbers that must be finite and in range, each named.
    fn validate_numbers(&self) -> Result<()> {
        let rl = &self.rl;
        let checks: [(&str, f64, bool); 8] = [
            ("rl.kl.coef", rl.kl.coef, rl.kl.coef >= 0.0),
            ("sft.lr", self.sft.lr, self.sft.lr > 0.0),
            (
                "sft.weight_decay",
                self.sft.weight_decay,
                self.sft.weight_decay >= 0.0,
            ),
            ("rl.grad_clip", rl.grad_clip, rl.grad_clip >= 0.0),
            ("rl.weight_decay", rl.weight_decay, rl.weight_decay >= 0.0),
            (
                "rl.temperature",
                rl.temperature as f64,
                rl.temperature >= 0.0,
            ),
            (
                "tasks.hard_fraction",
                self.tasks.hard_fraction,
                (0.0..=1.0).contains(&self.tasks.hard_fraction),
            ),
            (
                "rl.format_penalty",
                rl.format_penalty as f64,
                (0.0..=1.0).contains(&rl.format_penalty),
            ),
        ];
        for (field, v, ok) in checks {
            if !(v.is_finite() && ok) {
                return Err(Error::config(
                    field,
                    format!("{v} is out of range (see the field's documentation)"),
                ));
            }
        }
        Ok(())
    }

    /// The settings that make the data off-policy, in one line.
    pub fn off_policy_budget(&self) -> String {
        format!(
            "off-policy budget: rollouts in {}{} vs trainer in {}, max staleness {}, {} PPO epoch(s) × {} mini-batch(es)",
            self.rl.rollout_dtype,
            match self.rl.rollout_quant {
                RolloutQuant::None => String::new(),
                q => format!(" ({q:?} weights)").to_lowercase(),
            },
            self.model.dtype,
            self.rl.max_staleness,
            self.rl.ppo_epochs,
            (self.rl.prompts_per_step * self.rl.group_size) / self.rl.mini_batch.max(1)
        ) + &self.sampling_note()
    }

    /// How rollouts are truncated and whether the ratio stays exact (empty without
    /// truncation).
    pub fn sampling_note(&self) -> String {
        let s = &self.rl.sampling;
        if !s.truncates() {
            return String::new();
        }
        format!(
            "; truncated sampling (top-k {}, top-p {}, min-p {}) {}",
            s.top_k,
            s.top_p,
            s.min_p,
            if s.keep_mask {
                "with the sampling mask kept (exact ratio)"
            } else {
                "WITHOUT the sampling mask: the ratio is biased (scored over the full vocabulary)"
            }
        )
    }
}
