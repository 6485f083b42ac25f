//! The training configuration: one TOML file, every field defaulted. `alp train --set
//! key=value` edits it; [`TrainConfig::validate`] refuses inconsistent settings naming the
//! fields.

use alp_core::{Error, Result};
use alp_loss::{AdvantageEstimator, Aggregation, Objective};
use alp_model::PerturbationConfig;
use serde::{Deserialize, Serialize};
use std::path::Path;

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
    pub dtype: String,
    /// Device: cpu or cuda:N.
    pub device: String,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            base: String::new(),
            preset: "alp-default".into(),
            init_seed: 0,
            dtype: "f32".into(),
            device: "cpu".into(),
        }
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
}

impl Default for SftSection {
    fn default() -> Self {
        SftSection {
            steps: 1000,
            batch_size: 64,
            lr: 2e-3,
            warmup: 25,
            tool_fraction: 0.25,
            weight_decay: 0.0,
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
    /// Passes over each rollout batch.
    pub ppo_epochs: usize,
    /// Learning rate of the weights.
    pub lr: f64,
    /// Learning rate of the perturbation's log σ (its own AdamW group, no weight decay).
    pub sigma_lr: f64,
    /// Weight decay of the weights.
    pub weight_decay: f64,
    /// Global gradient-norm clip (0: off).
    pub grad_clip: f64,
    /// How many policy versions the sampler may lag (0: synchronous).
    pub max_staleness: i64,
    /// Rollout dtype (bf16: a real engine mismatch).
    pub rollout_dtype: String,
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
    pub env: String,
    /// Subtracted from the reward of episodes with malformed turns or tool errors.
    pub format_penalty: f32,
    /// Stop after this many consecutive non-finite losses or gradients.
    pub max_bad_steps: usize,
    /// Turn the perturbation on for non-ALP methods too.
    pub perturb_always: bool,
}

impl Default for RlSection {
    fn default() -> Self {
        RlSection {
            objective: Objective::default(),
            steps: 150,
            prompts_per_step: 16,
            group_size: 8,
            mini_batch: 64,
            micro_batch: 64,
            ppo_epochs: 1,
            lr: 3e-5,
            sigma_lr: 1e-2,
            weight_decay: 0.0,
            grad_clip: 1.0,
            max_staleness: 1,
            rollout_dtype: "bf16".into(),
            recompute_logp_old: true,
            advantage: AdvantageEstimator::Grpo,
            aggregation: Aggregation::TokenMean,
            temperature: 1.0,
            max_turns: 3,
            max_new_tokens: 16,
            max_total_tokens: 48,
            env: "tool".into(),
            format_penalty: 0.0,
            max_bad_steps: 5,
            perturb_always: false,
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
}

impl Default for EvalSection {
    fn default() -> Self {
        EvalSection {
            every: 50,
            tasks: 200,
            pass_k: 4,
        }
    }
}

/// Checkpointing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointSection {
    /// Save every this many RL steps (0: only at the end).
    pub every: usize,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        CheckpointSection { every: 50 }
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

fn parse_scalar(v: &str) -> toml::Value {
    if let Ok(i) = v.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(f) = v.parse::<f64>() {
        return toml::Value::Float(f);
    }
    if let Ok(b) = v.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    toml::Value::String(v.to_string())
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
    /// `model.base=Qwen/Qwen2.5-0.5B-Instruct`).
    pub fn apply_overrides(&self, sets: &[String]) -> Result<Self> {
        let mut root = toml::Value::try_from(self).map_err(|e| Error::Msg(e.to_string()))?;
        for s in sets {
            let (key, value) = s
                .split_once('=')
                .ok_or_else(|| Error::config("--set", format!("`{s}` is not key=value")))?;
            let parts: Vec<&str> = key.trim().split('.').collect();
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
                // A new method starts from its own defaults.
                table.clear();
            } else if !table.contains_key(last) {
                return Err(Error::config(key, "no such setting"));
            }
            table.insert(last.to_string(), parse_scalar(value.trim()));
        }
        let text = toml::to_string(&root).map_err(|e| Error::Msg(e.to_string()))?;
        Self::from_toml(&text).map_err(|e| Error::config("--set", e.to_string()))
    }

    /// Cross-field checks; the error names the fields.
    pub fn validate(&self) -> Result<()> {
        let rl = &self.rl;
        rl.objective.validate()?;
        let batch = rl.prompts_per_step * rl.group_size;
        if rl.prompts_per_step == 0 || rl.group_size == 0 {
            return Err(Error::config(
                "rl.prompts_per_step / rl.group_size",
                "must be at least 1",
            ));
        }
        if rl.mini_batch == 0 || batch % rl.mini_batch != 0 {
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
        if rl.objective.needs_logp_old() && !rl.recompute_logp_old {
            return Err(Error::config(
                "rl.recompute_logp_old",
                format!(
                    "rl.objective.method = {} needs log π_old; set rl.recompute_logp_old = true",
                    rl.objective.name()
                ),
            ));
        }
        if rl.max_staleness < 0 {
            return Err(Error::config(
                "rl.max_staleness",
                format!("{} is below 0", rl.max_staleness),
            ));
        }
        if rl.env == "tool" && rl.max_turns == 0 {
            return Err(Error::config(
                "rl.max_turns",
                "0 with rl.env = tool: a tool episode needs at least one turn",
            ));
        }
        if rl.env != "tool" && rl.env != "math" {
            return Err(Error::config(
                "rl.env",
                format!("`{}`; known: tool, math", rl.env),
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
        if rl.max_new_tokens == 0 || rl.max_total_tokens == 0 {
            return Err(Error::config(
                "rl.max_new_tokens / rl.max_total_tokens",
                "must be at least 1",
            ));
        }
        if self.sft.steps > 0 && self.sft.batch_size == 0 {
            return Err(Error::config("sft.batch_size", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.sft.tool_fraction) {
            return Err(Error::config("sft.tool_fraction", "must lie in [0, 1]"));
        }
        for (field, v) in [
            ("model.dtype", &self.model.dtype),
            ("rl.rollout_dtype", &rl.rollout_dtype),
        ] {
            alp_model::parse_dtype(v)
                .map_err(|_| Error::config(field, format!("`{v}`; known: f32, bf16, f16")))?;
        }
        alp_model::parse_device(&self.model.device)
            .map_err(|e| Error::config("model.device", e.to_string()))?;
        if self.model.base.is_empty() {
            alp_model::presets::by_name(&self.model.preset)?;
        }
        Ok(())
    }

    /// The settings that make the data off-policy, in one line.
    pub fn off_policy_budget(&self) -> String {
        format!(
            "off-policy budget: rollouts in {} vs trainer in {}, max staleness {}, {} PPO epoch(s) × {} mini-batch(es)",
            self.rl.rollout_dtype,
            self.model.dtype,
            self.rl.max_staleness,
            self.rl.ppo_epochs,
            (self.rl.prompts_per_step * self.rl.group_size) / self.rl.mini_batch.max(1)
        )
    }
}
