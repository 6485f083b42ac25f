//! The trainer state and its phases: SFT warm start, the RL step, held-out evaluation.

use crate::batch::SeqBatch;
use crate::config::TrainConfig;
use crate::default_task::{self, ArithmeticTasks, SftExample};
use crate::optim::{global_norm, AdamW, AdamWParams};
use alp_core::{
    Environment, Error, NoPerturbation, Perturbation, Result, Task, TaskSource, TrajectoryGroup,
};
use alp_envs::math::{ExtractMode, Split};
use alp_envs::{MathEnv, ToolEnv, ToolEnvConfig};
use alp_loss::{compute_advantages, mismatch_report, LossInputs};
use alp_model::{
    parse_device, parse_dtype, presets, LayerwiseGaussian, Model, ModelWeights, Tokenizer,
};
use alp_rollout::{run_episodes, Engine, EngineConfig, EpisodeConfig, SamplingParams};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Metrics of one step (name → value).
pub type Metrics = BTreeMap<String, f64>;

/// The model being trained with its optimizers and perturbation.
pub struct Trainer {
    /// The settings.
    pub cfg: TrainConfig,
    /// The tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// The trainable model.
    pub model: Model,
    /// Its variables.
    pub varmap: VarMap,
    /// The layerwise perturbation.
    pub perturb: LayerwiseGaussian,
    /// AdamW over the weights.
    pub opt: AdamW,
    /// AdamW over log σ.
    pub opt_sigma: AdamW,
    /// Device.
    pub device: Device,
    /// Optimizer steps of RL so far (the policy version).
    pub version: u64,
    /// RL steps done.
    pub step: u64,
    /// Consecutive steps skipped for a non-finite loss or gradient.
    pub bad_steps: usize,
    /// Poison the loss of the next RL step with a NaN (tests of the guard).
    pub inject_nan_once: bool,
}

/// Held-out evaluation of a model.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EvalResult {
    /// Greedy accuracy over the whole held-out mix.
    pub accuracy: f64,
    /// Greedy accuracy per task kind.
    pub accuracy_by_kind: BTreeMap<String, f64>,
    /// Share of hard (tool-worthy) tasks on which the greedy answer called the tool.
    pub tool_call_rate: f64,
    /// Tool-call rate on hard tasks at temperature 1.
    pub tool_call_rate_sampled: f64,
    /// Accuracy at temperature 1 (mean over the k samples).
    pub sampled_accuracy: f64,
    /// pass@k at temperature 1.
    pub pass_at_k: f64,
    /// k.
    pub k: usize,
    /// Tasks evaluated.
    pub tasks: usize,
}

fn is_hard(kind: &str) -> bool {
    kind == "multiply"
}

impl Trainer {
    /// Builds the model, tokenizer, perturbation and optimizers from the config.
    pub fn new(cfg: TrainConfig) -> Result<Self> {
        cfg.validate()?;
        let device = parse_device(&cfg.model.device)?;
        let dtype = parse_dtype(&cfg.model.dtype)?;
        let (weights, tokenizer) = if cfg.model.base.is_empty() {
            let tok = default_task::build_tokenizer()?;
            let mc = presets::by_name(&cfg.model.preset)?;
            tok.check_fits(&mc)?;
            (
                ModelWeights::random(&mc, cfg.model.init_seed, dtype, &device)?,
                tok,
            )
        } else {
            let p = alp_model::load_pretrained(&cfg.model.base, dtype, &device)?;
            let tok = p.tokenizer.ok_or_else(|| {
                Error::config(
                    "model.base",
                    format!("{} has no tokenizer.json", cfg.model.base),
                )
            })?;
            if tok.chat_template().is_none() {
                return Err(Error::config(
                    "model.base",
                    format!("the tokenizer of {} has no chat template (the chat tokens are missing); use an instruct checkpoint", cfg.model.base),
                ));
            }
            (p.weights, tok)
        };
        Self::from_weights(cfg, &weights, tokenizer)
    }

    /// A trainer over given weights and tokenizer.
    pub fn from_weights(
        cfg: TrainConfig,
        weights: &ModelWeights,
        tokenizer: Tokenizer,
    ) -> Result<Self> {
        let device = parse_device(&cfg.model.device)?;
        let (model, varmap) = weights.build_trainable()?;
        let n_layers = weights.config.num_hidden_layers;
        let mut pc = cfg.perturbation.clone();
        pc.seed ^= cfg.seed;
        let perturb = LayerwiseGaussian::new(pc, n_layers, &device)?;
        let params = named_vars(&varmap)?;
        let opt = AdamW::new(
            params,
            AdamWParams {
                lr: cfg.rl.lr,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: cfg.rl.weight_decay,
            },
        )?;
        let opt_sigma = AdamW::new(
            vec![("log_sigma".into(), perturb.log_sigma().clone())],
            AdamWParams::with_lr(cfg.rl.sigma_lr),
        )?;
        Ok(Trainer {
            cfg,
            tokenizer: Arc::new(tokenizer),
            model,
            varmap,
            perturb,
            opt,
            opt_sigma,
            device,
            version: 0,
            step: 0,
            bad_steps: 0,
            inject_nan_once: false,
        })
    }

    /// The current weights (sharing storage with the trainable variables).
    pub fn weights(&self) -> Result<ModelWeights> {
        ModelWeights::from_varmap(self.model.config(), &self.varmap)
    }

    /// A copy of the weights in the rollout dtype, for the sampler.
    pub fn rollout_snapshot(&self) -> Result<ModelWeights> {
        self.weights()?
            .snapshot(parse_dtype(&self.cfg.rl.rollout_dtype)?, &self.device)
    }

    /// One SFT step on `examples` with learning rate `lr`; returns the mean token NLL.
    pub fn sft_step(&mut self, examples: &[SftExample], lr: f64) -> Result<f64> {
        let rows: Vec<(&[u32], &[u32], &[u8])> = examples
            .iter()
            .map(|e| {
                (
                    e.prompt.as_slice(),
                    e.response.as_slice(),
                    e.mask.as_slice(),
                )
            })
            .collect();
        let b = SeqBatch::new(&rows, &self.device)?;
        let lp = b.response_logprobs(&self.model, &NoPerturbation)?;
        let n = b.mask.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64;
        let loss = ((lp * &b.mask)?.sum_all()? * (-1.0 / n))?;
        let value = loss.to_scalar::<f32>()? as f64;
        if !value.is_finite() {
            return Err(Error::NonFinite(format!("SFT loss is {value}")));
        }
        let grads = loss.backward()?;
        let g = self.opt.grads(&grads);
        let norm = global_norm(&[&g])?;
        let scale = if norm > 1.0 { 1.0 / norm } else { 1.0 };
        let saved = self.opt.hp;
        self.opt.hp.lr = lr;
        self.opt.hp.weight_decay = self.cfg.sft.weight_decay;
        self.opt.step(&g, scale)?;
        self.opt.hp = saved;
        Ok(value)
    }

    /// The task stream of a split: compact prompts for the embedded default, full prompts (boxed
    /// instruction, `What is …?`) for a real checkpoint.
    pub fn task_stream(&self, split: Split, seed: u64) -> ArithmeticTasks {
        let s = ArithmeticTasks::new(&self.cfg.tasks, split, seed);
        if self.cfg.model.base.is_empty() {
            s
        } else {
            s.verbose()
        }
    }

    /// The tool specs handed to the chat template (real checkpoints with the tool environment;
    /// the embedded default's template has no tools section).
    pub fn tools_spec(&self) -> Option<serde_json::Value> {
        (!self.cfg.model.base.is_empty() && self.cfg.rl.env == "tool")
            .then(|| serde_json::Value::Array(default_task::registry().tool_specs()))
    }

    /// Builds an environment for a task (the kind `rl.env` names).
    pub fn make_env(
        &self,
    ) -> impl Fn(&Task) -> Result<Box<dyn Environment>> + Send + Sync + 'static {
        self.make_env_kind(self.cfg.rl.env == "tool")
    }

    /// Builds a tool environment (`tool`) or a single-turn math environment.
    pub fn make_env_kind(
        &self,
        tool: bool,
    ) -> impl Fn(&Task) -> Result<Box<dyn Environment>> + Send + Sync + 'static {
        let tc = ToolEnvConfig {
            max_turns: self.cfg.rl.max_turns.max(1),
            max_malformed_turns: 1,
            format_penalty: self.cfg.rl.format_penalty,
            mode: ExtractMode::Strict,
        };
        move |_t: &Task| -> Result<Box<dyn Environment>> {
            if tool {
                Ok(Box::new(ToolEnv::new(
                    default_task::registry(),
                    tc.clone(),
                )?))
            } else {
                Ok(Box::new(MathEnv::new(ExtractMode::Strict)))
            }
        }
    }

    /// The episode settings of RL (`temperature`, limits) with `seed`.
    pub fn episode_config(&self, temperature: f32, seed: u64) -> EpisodeConfig {
        EpisodeConfig {
            max_turns: self.cfg.rl.max_turns.max(1),
            max_total_tokens: self.cfg.rl.max_total_tokens,
            sampling: SamplingParams {
                temperature,
                max_new_tokens: self.cfg.rl.max_new_tokens,
                seed,
                ..Default::default()
            },
            turn_stop_strings: vec!["</tool_call>".into()],
        }
    }

    /// Evaluates on `n` held-out tasks: greedy accuracy (overall and per kind), tool-call rate
    /// on hard tasks, and with `k > 0` sampled accuracy and pass@k at temperature 1.
    pub fn evaluate(&self, n: usize, k: usize) -> Result<EvalResult> {
        let mut src = self.task_stream(Split::Heldout, self.cfg.seed ^ 0xE7A1);
        let tasks: Vec<Task> = (0..n).filter_map(|_| src.next_task()).collect();
        self.evaluate_tasks(&tasks, self.cfg.rl.env == "tool", k)
    }

    /// Evaluates on given tasks with a tool (`tool`) or single-turn math environment.
    pub fn evaluate_tasks(&self, tasks: &[Task], tool: bool, k: usize) -> Result<EvalResult> {
        let engine = Engine::from_weights(
            &self.weights()?,
            parse_dtype(&self.cfg.model.dtype)?,
            &self.device,
            EngineConfig::default(),
        )?
        .with_tokenizer(self.tokenizer.clone());
        let env = self.make_env_kind(tool);
        let tools = if tool { self.tools_spec() } else { None };
        let greedy = run_episodes(
            &engine,
            &self.tokenizer,
            tasks,
            &env,
            1,
            &self.episode_config(0.0, 0),
            tools.as_ref(),
            self.version,
        )?;
        let mut res = EvalResult {
            tasks: tasks.len(),
            k,
            ..Default::default()
        };
        let mut by_kind: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        let (mut hard, mut hard_calls) = (0.0, 0.0);
        for (t, g) in tasks.iter().zip(&greedy) {
            let tr = &g.trajectories[0];
            let ok = tr
                .info
                .get("correct")
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            let e = by_kind.entry(t.kind.clone()).or_default();
            e.0 += ok as u8 as f64;
            e.1 += 1.0;
            res.accuracy += ok as u8 as f64;
            if is_hard(&t.kind) {
                hard += 1.0;
                hard_calls += (tr
                    .info
                    .get("tool_calls")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0)
                    > 0) as u8 as f64;
            }
        }
        res.accuracy /= tasks.len().max(1) as f64;
        res.accuracy_by_kind = by_kind.into_iter().map(|(k, (c, n))| (k, c / n)).collect();
        res.tool_call_rate = if hard > 0.0 { hard_calls / hard } else { 0.0 };
        if k > 0 {
            let sampled = run_episodes(
                &engine,
                &self.tokenizer,
                tasks,
                &env,
                k,
                &self.episode_config(1.0, 0xA11CE ^ self.step),
                tools.as_ref(),
                self.version,
            )?;
            let (mut acc, mut pass, mut calls, mut hard_n) = (0.0, 0.0, 0.0, 0.0);
            for (t, g) in tasks.iter().zip(&sampled) {
                let oks: Vec<bool> = g
                    .trajectories
                    .iter()
                    .map(|tr| {
                        tr.info
                            .get("correct")
                            .and_then(|v| v.as_bool())
                            .unwrap_or(false)
                    })
                    .collect();
                acc += oks.iter().filter(|&&o| o).count() as f64 / k as f64;
                pass += oks.iter().any(|&o| o) as u8 as f64;
                if is_hard(&t.kind) {
                    for tr in &g.trajectories {
                        hard_n += 1.0;
                        calls += (tr
                            .info
                            .get("tool_calls")
                            .and_then(|v| v.as_u64())
                            .unwrap_or(0)
                            > 0) as u8 as f64;
                    }
                }
            }
            res.sampled_accuracy = acc / tasks.len().max(1) as f64;
            res.pass_at_k = pass / tasks.len().max(1) as f64;
            res.tool_call_rate_sampled = if hard_n > 0.0 { calls / hard_n } else { 0.0 };
        }
        Ok(res)
    }

    /// One RL step on a rollout batch: advantages, optional log π_old recompute, mini-batches
    /// with gradient accumulation over micro-batches, PPO epochs, clipped AdamW on θ and log σ.
    /// A non-finite loss or gradient skips the update (and errors after `max_bad_steps` in a row).
    pub fn rl_step(&mut self, groups: &[TrajectoryGroup], sampled_by: u64) -> Result<Metrics> {
        let rl = self.cfg.rl.clone();
        let trajs: Vec<&alp_core::Trajectory> =
            groups.iter().flat_map(|g| g.trajectories.iter()).collect();
        if trajs.is_empty() {
            return Err(Error::invalid("rl_step: an empty rollout batch"));
        }
        let group_size = groups[0].trajectories.len();
        if groups.iter().any(|g| g.trajectories.len() != group_size) {
            return Err(Error::invalid("rl_step: groups of different sizes"));
        }
        let rewards: Vec<f32> = trajs.iter().map(|t| t.reward).collect();
        let adv = compute_advantages(rl.advantage, &rewards, group_size)?;
        let mut m = Metrics::new();
        let n = trajs.len() as f64;
        let r_mean = rewards.iter().map(|&r| r as f64).sum::<f64>() / n;
        m.insert("reward/mean".into(), r_mean);
        m.insert(
            "reward/std".into(),
            (rewards
                .iter()
                .map(|&r| (r as f64 - r_mean).powi(2))
                .sum::<f64>()
                / n)
                .sqrt(),
        );
        m.insert(
            "accuracy".into(),
            trajs
                .iter()
                .filter(|t| {
                    t.info
                        .get("correct")
                        .and_then(|v| v.as_bool())
                        .unwrap_or(false)
                })
                .count() as f64
                / n,
        );
        m.insert(
            "advantage/zero_variance_groups".into(),
            adv.zero_variance_groups as f64 / adv.groups.max(1) as f64,
        );
        m.insert(
            "length/response_mean".into(),
            trajs.iter().map(|t| t.response.len() as f64).sum::<f64>() / n,
        );
        m.insert(
            "length/generated_mean".into(),
            trajs.iter().map(|t| t.num_generated() as f64).sum::<f64>() / n,
        );
        m.insert(
            "turns/mean".into(),
            trajs.iter().map(|t| t.num_turns as f64).sum::<f64>() / n,
        );
        m.insert(
            "tool/calls_per_episode".into(),
            trajs
                .iter()
                .map(|t| {
                    t.info
                        .get("tool_calls")
                        .and_then(|v| v.as_u64())
                        .unwrap_or(0) as f64
                })
                .sum::<f64>()
                / n,
        );
        m.insert(
            "tool/errors_per_episode".into(),
            trajs
                .iter()
                .map(|t| {
                    t.info
                        .get("tool_errors")
                        .and_then(|v| v.as_u64())
                        .unwrap_or(0) as f64
                })
                .sum::<f64>()
                / n,
        );
        m.insert(
            "staleness".into(),
            self.version.saturating_sub(sampled_by) as f64,
        );
        let use_perturb = rl.objective.is_alp() || rl.perturb_always;
        // The trainer scores tokens under the sampler's temperature (greedy sampling is scored
        // at temperature 1, as the engine stores it).
        let temp = if rl.temperature > 0.0 {
            rl.temperature as f64
        } else {
            1.0
        };
        // Tensors of every micro-batch, built once for all epochs; log π_old is taken here,
        // before the first update of the step, so that it is the policy that the step starts
        // from in every mini-batch and epoch.
        let order: Vec<usize> = (0..trajs.len()).collect();
        let mut minis: Vec<Vec<Micro>> = Vec::new();
        for mb in order.chunks(rl.mini_batch) {
            let mut micros = Vec::new();
            for micro in mb.chunks(rl.micro_batch) {
                let rows: Vec<(&[u32], &[u32], &[u8])> = micro
                    .iter()
                    .map(|&i| {
                        (
                            trajs[i].prompt.as_slice(),
                            trajs[i].response.as_slice(),
                            trajs[i].loss_mask.as_slice(),
                        )
                    })
                    .collect();
                let b = SeqBatch::new(&rows, &self.device)?;
                let infer: Vec<&[f32]> = micro
                    .iter()
                    .map(|&i| trajs[i].logp_infer.as_slice())
                    .collect();
                let logp_infer = b.pad_rows(&infer)?;
                let a: Vec<f32> = micro.iter().map(|&i| adv.values[i]).collect();
                let advantages = Tensor::from_vec(a, micro.len(), &self.device)?;
                let logp_old = if rl.recompute_logp_old {
                    let l = b.response_logits(&self.model, &NoPerturbation)?;
                    Some(b.logprobs_at(&l, temp)?.detach())
                } else {
                    None
                };
                micros.push(Micro {
                    batch: b,
                    logp_infer,
                    advantages,
                    logp_old,
                    rows: micro.len(),
                });
            }
            minis.push(micros);
        }
        let mut accum: BTreeMap<String, Acc> = BTreeMap::new();
        let mut skipped = 0usize;
        let mut mb_index = 0u64;
        for _epoch in 0..rl.ppo_epochs {
            for micros in &minis {
                let mb_rows: usize = micros.iter().map(|m| m.rows).sum();
                let mut g_theta: Option<Vec<Option<Tensor>>> = None;
                let mut g_sigma: Option<Vec<Option<Tensor>>> = None;
                let mut finite = true;
                for m in micros {
                    let (b, n) = (&m.batch, m.rows as f64);
                    self.perturb.set_context(self.step, mb_index);
                    mb_index += 1;
                    let p: &dyn Perturbation = if use_perturb {
                        &self.perturb
                    } else {
                        &NoPerturbation
                    };
                    let logits = b.response_logits(&self.model, p)?;
                    let logp = b.logprobs_at(&logits, temp)?;
                    // Policy entropy over the trained tokens (no gradient).
                    let ent =
                        alp_loss::entropy_from_logits(&logits, 1024)?.reshape(b.mask.shape())?;
                    let ent = ((ent * &b.mask)?.sum_all()?.to_scalar::<f32>()? as f64)
                        / (b.mask.sum_all()?.to_scalar::<f32>()? as f64).max(1.0);
                    record(&mut accum, "entropy", ent, n);
                    let inputs = LossInputs {
                        logp: &logp,
                        logp_old: m.logp_old.as_ref(),
                        logp_infer: &m.logp_infer,
                        advantages: &m.advantages,
                        mask: &b.mask,
                    };
                    let mut out = rl.objective.compute(&inputs, rl.aggregation)?;
                    if self.inject_nan_once {
                        out.loss = (out.loss * f64::NAN)?;
                    }
                    let weight = n / mb_rows as f64;
                    let loss_value = out.loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
                    if !loss_value.is_finite() {
                        finite = false;
                        break;
                    }
                    record(&mut accum, "loss", loss_value as f64, n);
                    for (k, v) in &out.metrics {
                        record(&mut accum, k.clone(), *v, n);
                    }
                    if let Ok(r) =
                        mismatch_report(&logp.detach(), m.logp_old.as_ref(), &m.logp_infer, &b.mask)
                    {
                        for (k, v) in r {
                            record(&mut accum, k, v, n);
                        }
                    }
                    let grads = (out.loss * weight)?.backward()?;
                    let gt = self.opt.grads(&grads);
                    let gs = self.opt_sigma.grads(&grads);
                    g_theta = Some(add_grads(g_theta, gt)?);
                    g_sigma = Some(add_grads(g_sigma, gs)?);
                }
                let norm = match (&g_theta, finite) {
                    (Some(gt), true) => global_norm(&[gt])?,
                    _ => f64::NAN,
                };
                if !norm.is_finite() {
                    skipped += 1;
                    continue;
                }
                let (Some(gt), Some(gs)) = (g_theta, g_sigma) else {
                    continue;
                };
                let scale = if rl.grad_clip > 0.0 && norm > rl.grad_clip {
                    rl.grad_clip / norm
                } else {
                    1.0
                };
                record(&mut accum, "grad_norm", norm, 1.0);
                self.opt.step(&gt, scale)?;
                if use_perturb && self.perturb.config().learnable && rl.sigma_lr > 0.0 {
                    let sn = global_norm(&[&gs])?;
                    record(&mut accum, "sigma/grad_norm", sn, 1.0);
                    if sn.is_finite() {
                        self.opt_sigma.step(&gs, 1.0)?;
                    }
                }
            }
        }
        for (k, a) in accum {
            let v = if k.ends_with("/max") {
                a.max
            } else if k.ends_with("/min") {
                a.min
            } else {
                a.sum / a.weight.max(1e-12)
            };
            m.insert(k, v);
        }
        m.insert("skipped_updates".into(), skipped as f64);
        self.inject_nan_once = false;
        if skipped > 0 {
            self.bad_steps += 1;
            if self.bad_steps >= rl.max_bad_steps.max(1) {
                return Err(Error::NonFinite(format!(
                    "{} consecutive RL steps had a non-finite loss or gradient (the last at step {}); their updates were skipped. Lower rl.lr or check the data",
                    self.bad_steps, self.step
                )));
            }
            eprintln!(
                "RL step {}: {skipped} update(s) skipped for a non-finite loss or gradient",
                self.step
            );
        } else {
            self.bad_steps = 0;
        }
        for (i, s) in self.perturb.sigmas()?.iter().enumerate() {
            m.insert(format!("sigma/layer{i}"), *s as f64);
        }
        self.inject_nan_once = false;
        self.step += 1;
        self.version += 1;
        Ok(m)
    }
}

/// The tensors of one micro-batch of an RL step.
struct Micro {
    batch: SeqBatch,
    logp_infer: Tensor,
    advantages: Tensor,
    logp_old: Option<Tensor>,
    rows: usize,
}

/// A metric accumulated over micro-batches: weighted mean, and min / max for extreme keys.
#[derive(Debug, Clone, Copy)]
struct Acc {
    sum: f64,
    weight: f64,
    min: f64,
    max: f64,
}

fn record(accum: &mut BTreeMap<String, Acc>, key: impl Into<String>, value: f64, weight: f64) {
    let a = accum.entry(key.into()).or_insert(Acc {
        sum: 0.0,
        weight: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    });
    a.sum += value * weight;
    a.weight += weight;
    a.min = a.min.min(value);
    a.max = a.max.max(value);
}

fn add_grads(
    acc: Option<Vec<Option<Tensor>>>,
    g: Vec<Option<Tensor>>,
) -> Result<Vec<Option<Tensor>>> {
    match acc {
        None => Ok(g),
        Some(a) => a
            .into_iter()
            .zip(g)
            .map(|(x, y)| match (x, y) {
                (Some(x), Some(y)) => Ok(Some((x + y)?)),
                (x, None) => Ok(x),
                (None, y) => Ok(y),
            })
            .collect(),
    }
}

/// The variables of a VarMap, sorted by name (a stable order for optimizer state).
pub fn named_vars(varmap: &VarMap) -> Result<Vec<(String, Var)>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::Msg("VarMap lock poisoned".into()))?;
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}
