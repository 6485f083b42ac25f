//! Step metrics and where they go: the names the trainer writes (constants, so that readers
//! such as the plots cannot drift from the writer), [`StepMetrics`], and the [`MetricsSink`]
//! trait with JSONL, console and in-memory sinks.

use alp_core::{Error, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub use alp_loss::names as loss;

/// Mean reward of the batch.
pub const REWARD_MEAN: &str = "reward/mean";
/// Standard deviation of the batch's rewards.
pub const REWARD_STD: &str = "reward/std";
/// Share of episodes graded correct.
pub const ACCURACY: &str = "accuracy";
/// Share of groups whose rewards were all equal (no signal).
pub const ZERO_VARIANCE_GROUPS: &str = "advantage/zero_variance_groups";
/// Mean response length (generated and observation tokens).
pub const LENGTH_RESPONSE: &str = "length/response_mean";
/// Mean number of generated tokens.
pub const LENGTH_GENERATED: &str = "length/generated_mean";
/// Mean model turns per episode.
pub const TURNS: &str = "turns/mean";
/// Tool calls per episode.
pub const TOOL_CALLS: &str = "tool/calls_per_episode";
/// Failed tool calls per episode.
pub const TOOL_ERRORS: &str = "tool/errors_per_episode";
/// Share of episodes the runner truncated (turn or token limit).
pub const TRUNCATED: &str = "episodes/truncated_frac";
/// Policy versions between the sampling weights and the trainer's.
pub const STALENESS: &str = "staleness";
/// The objective's loss (mean over the step's optimizer updates).
pub const LOSS: &str = "loss";
/// The KL-to-reference estimate (per token, before the coefficient), when the term is on.
pub const KL_REF: &str = "kl_ref";
/// Mean policy entropy over the trained tokens.
pub const ENTROPY: &str = "entropy";
/// Global gradient norm before clipping (mean over the step's updates).
pub const GRAD_NORM: &str = "grad_norm";
/// Gradient norm of the log σ group.
pub const SIGMA_GRAD_NORM: &str = "sigma/grad_norm";
/// The prefix of every metric of the mechanism probe (`eval.probe_every`).
pub const PROBE_PREFIX: &str = "probe/";
/// The mechanism probe: the policy's mean per-token entropy on fixed held-out
/// demonstrations.
pub const PROBE_ENTROPY: &str = "probe/entropy";
/// The probe: mean per-token KL(μ ‖ π) of the rollout numerics from the trainer's on the same
/// tokens.
pub const PROBE_ENGINE_KL: &str = "probe/engine_kl";
/// The probe: prefix of the noise sensitivities, KL(π ‖ π_σ) per token
/// ([`probe_noise_kl_name`]).
pub const PROBE_NOISE_KL: &str = "probe/noise_kl";

/// The probe's name for the noise sensitivity of a relative (`probe/noise_kl/rel_σ`) or
/// absolute (`probe/noise_kl/abs_σ`) σ.
pub fn probe_noise_kl_name(relative: bool, sigma: f64) -> String {
    format!(
        "{PROBE_NOISE_KL}/{}_{sigma}",
        if relative { "rel" } else { "abs" }
    )
}
/// Optimizer updates skipped for a non-finite loss or gradient.
pub const SKIPPED_UPDATES: &str = "skipped_updates";
/// Prefix of σ per layer: `sigma/layer<i>`.
pub const SIGMA_LAYER: &str = "sigma/layer";
/// Seconds the worker spent generating the batch.
pub const TIME_ROLLOUT: &str = "time/rollout_s";
/// Seconds the trainer waited for the batch.
pub const TIME_WAIT: &str = "time/wait_for_rollout_s";
/// Seconds of the update.
pub const TIME_TRAIN: &str = "time/train_s";
/// Seconds of the mechanism probe (steps that run it).
pub const TIME_PROBE: &str = "time/probe_s";
/// Seconds to publish the new weights.
pub const TIME_SYNC: &str = "time/sync_s";
/// Generated tokens per second of the rollout.
pub const ROLLOUT_TOKENS_PER_S: &str = "throughput/rollout_tokens_per_s";
/// Prompt tokens the rollout engine ran through prefills for the batch.
pub const ROLLOUT_PREFILL_TOKENS: &str = "rollout/prefill_tokens";
/// Prompt tokens taken from kept turns instead (prefix reuse).
pub const ROLLOUT_REUSED_TOKENS: &str = "rollout/reused_tokens";
/// Prefill tokens per second of the engine's prefill time (summed over its shards).
pub const ROLLOUT_PREFILL_TOKENS_PER_S: &str = "throughput/rollout_prefill_tokens_per_s";
/// Generated tokens per second of the engine's decode time (summed over its shards).
pub const ROLLOUT_DECODE_TOKENS_PER_S: &str = "throughput/rollout_decode_tokens_per_s";
/// Seconds of the rollout outside the engine's prefills and decode steps (environments and
/// tools, tokenising, and with `rl.score_sampler = "at-sampling"` scoring the batch under its
/// sampling weights; with one shard).
pub const TIME_ROLLOUT_OTHER: &str = "time/rollout_other_s";
/// The policy version that sampled the batch.
pub const SAMPLED_BY: &str = "policy_version/sampled_by";
/// Mean probability mass the training policy puts outside the kept sampling support of a
/// truncated token (what truncation hides from the ratio).
pub const SUPPORT_MASS_OUTSIDE: &str = "sampling/mass_outside_support";
/// Fraction of truncated tokens whose support passed `rl.sampling.max_support` (scored over
/// the full vocabulary).
pub const SUPPORT_OVERFLOW: &str = "sampling/support_overflow_frac";
/// Kept support ids stored per generated token (memory: 4 bytes each, plus 4 per token).
pub const SUPPORT_IDS_PER_TOKEN: &str = "sampling/support_ids_per_token";

/// `sigma/layer<i>`.
pub fn sigma_layer(i: usize) -> String {
    format!("{SIGMA_LAYER}{i}")
}

/// The metrics of one RL step: a typed map whose keys are the constants of this module and of
/// [`alp_loss::names`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepMetrics {
    /// The RL step these metrics belong to (1-based: the step just completed).
    pub step: u64,
    /// Values by name.
    pub values: BTreeMap<String, f64>,
    /// The tasks of the step's rollout batch, in order (not written to `metrics.jsonl`).
    pub task_ids: Vec<String>,
}

impl StepMetrics {
    /// Empty metrics of `step`.
    pub fn new(step: u64) -> Self {
        StepMetrics {
            step,
            values: BTreeMap::new(),
            task_ids: Vec::new(),
        }
    }

    /// The value of `name`, if recorded.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.get(name).copied()
    }

    /// Records `name`.
    pub fn set(&mut self, name: impl Into<String>, value: f64) {
        self.values.insert(name.into(), value);
    }

    /// Records every entry of `other`.
    pub fn extend(&mut self, other: impl IntoIterator<Item = (String, f64)>) {
        self.values.extend(other);
    }

    /// One JSON object: `step`, `wall_s` and every value (non-finite ones as `null`).
    pub fn to_json(&self, wall_s: f64) -> serde_json::Value {
        let mut j = serde_json::json!({"step": self.step, "wall_s": wall_s});
        for (k, v) in &self.values {
            j[k] = serde_json::json!(v.is_finite().then_some(*v));
        }
        j
    }
}

impl std::ops::Index<&str> for StepMetrics {
    type Output = f64;
    fn index(&self, name: &str) -> &f64 {
        self.values
            .get(name)
            .unwrap_or_else(|| panic!("no metric `{name}` in step {}", self.step))
    }
}

/// Where a run's records go. Every method has a default that ignores the record, so a sink
/// implements only what it renders.
pub trait MetricsSink {
    /// One RL step's metrics.
    fn step(&mut self, _metrics: &StepMetrics, _wall_s: f64) -> Result<()> {
        Ok(())
    }
    /// A held-out evaluation after `step` RL steps (`tag` says which: "before RL", "step 50"…).
    fn eval(
        &mut self,
        _step: u64,
        _tag: &str,
        _eval: &crate::eval_result::EvalResult,
    ) -> Result<()> {
        Ok(())
    }
    /// A line of progress for people.
    fn message(&mut self, _line: &str) {}
}

/// Appends one JSON line per step and per evaluation to `metrics.jsonl`.
#[derive(Debug)]
pub struct JsonlSink {
    path: PathBuf,
    file: std::fs::File,
}

impl JsonlSink {
    /// Opens (appending) `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(JsonlSink {
            path: path.to_path_buf(),
            file,
        })
    }

    fn write(&mut self, v: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{v}").map_err(|e| Error::io(&self.path, e))
    }
}

impl MetricsSink for JsonlSink {
    fn step(&mut self, m: &StepMetrics, wall_s: f64) -> Result<()> {
        self.write(&m.to_json(wall_s))
    }
    fn eval(&mut self, step: u64, tag: &str, e: &crate::eval_result::EvalResult) -> Result<()> {
        let j = serde_json::to_value(e).map_err(|e| Error::Msg(e.to_string()))?;
        self.write(&serde_json::json!({"step": step, "tag": tag, "eval": j}))
    }
}

/// The evaluation tag of the evaluation after RL (written after the final checkpoint).
pub const TAG_AFTER_RL: &str = "after RL";

/// Before a resume from RL step `from` (`None`: the run starts over), moves the records of
/// `metrics.jsonl` that the resumed run will write again — steps after `from`, and the
/// evaluation after RL — to `metrics.dropped.jsonl` beside it, so that the file holds each
/// step once and nothing is lost. Returns how many records were moved.
pub fn trim_for_resume(path: &Path, from: Option<u64>) -> Result<usize> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(path, e)),
    };
    let redone = |line: &str| -> bool {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            return false;
        };
        let step = v.get("step").and_then(|s| s.as_u64());
        match from {
            None => true,
            Some(k) => {
                step.is_some_and(|s| s > k)
                    || v.get("tag").and_then(|t| t.as_str()) == Some(TAG_AFTER_RL)
            }
        }
    };
    let (drop, keep): (Vec<&str>, Vec<&str>) = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .partition(|l| redone(l));
    if drop.is_empty() {
        return Ok(0);
    }
    let dropped = path.with_file_name("metrics.dropped.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&dropped)
        .map_err(|e| Error::io(&dropped, e))?;
    for l in &drop {
        writeln!(f, "{l}").map_err(|e| Error::io(&dropped, e))?;
    }
    f.sync_all().map_err(|e| Error::io(&dropped, e))?;
    let tmp = path.with_extension("jsonl.tmp");
    let body: String = keep.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&tmp, body).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    Ok(drop.len())
}

/// Keeps every record in memory (tests, notebooks, `alp compare`).
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    /// The steps, in order.
    pub steps: Vec<StepMetrics>,
    /// The evaluations with their step and tag.
    pub evals: Vec<(u64, String, crate::eval_result::EvalResult)>,
    /// The progress lines.
    pub messages: Vec<String>,
}

impl MetricsSink for MemorySink {
    fn step(&mut self, m: &StepMetrics, _wall_s: f64) -> Result<()> {
        self.steps.push(m.clone());
        Ok(())
    }
    fn eval(&mut self, step: u64, tag: &str, e: &crate::eval_result::EvalResult) -> Result<()> {
        self.evals.push((step, tag.to_string(), e.clone()));
        Ok(())
    }
    fn message(&mut self, line: &str) {
        self.messages.push(line.to_string());
    }
}

/// Fans every record out to several sinks.
#[derive(Default)]
pub struct Sinks(pub Vec<Box<dyn MetricsSink>>);

impl MetricsSink for Sinks {
    fn step(&mut self, m: &StepMetrics, wall_s: f64) -> Result<()> {
        self.0.iter_mut().try_for_each(|s| s.step(m, wall_s))
    }
    fn eval(&mut self, step: u64, tag: &str, e: &crate::eval_result::EvalResult) -> Result<()> {
        self.0.iter_mut().try_for_each(|s| s.eval(step, tag, e))
    }
    fn message(&mut self, line: &str) {
        self.0.iter_mut().for_each(|s| s.message(line))
    }
}
