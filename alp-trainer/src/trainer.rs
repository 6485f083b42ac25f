//! The trainer state and its phases: the SFT step, the RL step (whose data path lives in
//! [`crate::rl_step`]), and what both need (task streams, environments, episode settings).

use crate::batch::{for_each_parallel, plan_micro_batches, SeqBatch};
use crate::config::{EnvKind, ModelSource, RolloutNumerics, TrainConfig};
use crate::default_task::{self, ArithmeticTasks, SftExample};
use crate::metrics::{self as names, StepMetrics};
use crate::optim::{add_grads, global_norm, AdamW, AdamWParams, Gradients, Optimizer};
use crate::rl_step::{self, StepContext, StepStats};
use alp_core::{Environment, Error, Result, Task, TrajectoryGroup};
use alp_envs::math::{ExtractMode, Split};
use alp_envs::tools::{PythonSandbox, PythonTool, ToolRegistry, UnavailablePython};
use alp_envs::{CallFormat, MathEnv, ToolEnv, ToolEnvConfig};
use alp_loss::{compute_advantages, PolicyObjective};
use alp_model::{
    parse_device, presets, LayerwiseGaussian, Model, ModelWeights, NoPerturbation, Tokenizer,
};
use alp_rollout::{EpisodeConfig, SamplingParams};
use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use std::sync::Arc;


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
    /// AdamW over the weights and over log σ.
    pub opt: Optimizer,
    /// Device.
    pub device: Device,
    /// Optimizer steps of RL so far (the policy version).
    pub version: u64,
    /// RL steps done.
    pub step: u64,
    /// Consecutive steps skipped for a non-finite loss or gradient.
    pub bad_steps: usize,
    /// A LoRA run's base when it is not the model the config names: the model directory of
    /// the full checkpoint the run started from (recorded in its checkpoints' manifests).
    pub lora_base_dir: Option<std::path::PathBuf>,
    /// Unperturbed copies of the recent weight versions that may still be sampling (async
    /// runs), to split the mismatch into its engine and staleness parts.
    history: std::collections::VecDeque<(u64, Model)>,
    /// The reference policy of the KL term (set when RL starts, if the term is on).
    reference: Option<Model>,
    /// The objective of RL updates: `rl.objective` unless [`Trainer::set_objective`] gave
    /// another.
    objective: Arc<dyn PolicyObjective>,
    /// The next step's trajectories scored under the version that sampled them, by the
    /// rollout worker (`rl.score_sampler = "at-sampling"`): (step, log-probs in batch order).
    sampler_logp: Option<(u64, Vec<Vec<f32>>)>,
    /// A LoRA run's frozen base (no adapter); None when every weight trains.
    base: Option<ModelWeights>,
    /// A LoRA run's base as the rollout engine holds it (rollout dtype, quantised as
    /// `rl.rollout_quant` says), made once: only the adapter changes between versions.
    rollout_base: std::sync::OnceLock<std::collections::BTreeMap<String, Tensor>>,
}

impl Trainer {
    /// Builds the model, tokenizer, perturbation and optimizers from the config, for a run
    /// that has done nothing yet (a LoRA run's full-weight warm start trains every weight
    /// first: [`Trainer::defers_lora`]).
    pub fn new(cfg: TrainConfig) -> Result<Self> {
        cfg.validate()?;
        let (weights, tokenizer) = base_weights(&cfg)?;
        let lora_now = !Self::defers_lora(&cfg, 0);
        Self::build(cfg, &weights, tokenizer, lora_now)
    }

    /// A trainer over given weights and tokenizer.
    ///
    /// With LoRA on (`model.lora.r` > 0) `weights` is the frozen base: its adapter, else the
    /// one `model.adapter` names, else a fresh one, is what trains (`model.lora` then
    /// records the adapter's own rank, scale and targets). Weights that carry an adapter in a
    /// run without LoRA are merged first.
    pub fn from_weights(
        cfg: TrainConfig,
        weights: &ModelWeights,
        tokenizer: Tokenizer,
    ) -> Result<Self> {
        Self::build(cfg, weights, tokenizer, true)
    }

    /// [`Trainer::from_weights`] that trains every weight for now even with LoRA on (the
    /// full-weight SFT warm start of a LoRA run; [`Trainer::start_lora`] switches).
    pub fn from_weights_full(
        cfg: TrainConfig,
        weights: &ModelWeights,
        tokenizer: Tokenizer,
    ) -> Result<Self> {
        Self::build(cfg, weights, tokenizer, false)
    }

    /// Whether a run of `cfg` that has done `sft_done` SFT steps still trains every weight
    /// though LoRA is on: the embedded default's warm start, unless `sft.lora`.
    pub fn defers_lora(cfg: &TrainConfig, sft_done: usize) -> bool {
        cfg.model.lora.is_on()
            && !cfg.sft.lora
            && cfg.model.is_embedded()
            && sft_done < cfg.sft.steps
    }

    /// Ends a LoRA run's full-weight phase: the current weights become the frozen base
    /// (`base_dir`, where the caller wrote them, is recorded for resumes) and a fresh adapter
    /// trains from here, with fresh optimizer state. Step, version and σ carry over.
    pub fn start_lora(&mut self, base_dir: std::path::PathBuf) -> Result<()> {
        let base = self
            .weights()?
            .snapshot(self.model.dtype(), &self.device)?;
        let tok = (*self.tokenizer).clone();
        let mut next = Self::build(self.cfg.clone(), &base, tok, true)?;
        // σ and its optimizer carry over together (the optimizer holds σ's variable).
        std::mem::swap(&mut next.perturb, &mut self.perturb);
        std::mem::swap(&mut next.opt.sigma, &mut self.opt.sigma);
        next.version = self.version;
        next.step = self.step;
        next.lora_base_dir = Some(base_dir);
        next.objective = self.objective.clone();
        *self = next;
        Ok(())
    }

    fn build(
        mut cfg: TrainConfig,
        weights: &ModelWeights,
        tokenizer: Tokenizer,
        lora_now: bool,
    ) -> Result<Self> {
        let device = parse_device(&cfg.model.device)?;
        let cfg_objective = cfg.rl.objective;
        let weights = with_adapter(&cfg, weights, &device, lora_now)?;
        if let Some(a) = &weights.adapter {
            cfg.model.lora = a.config.clone();
        }
        let (mut model, varmap) = weights.build_trainable()?;
        model.set_exact_numerics(cfg.rl.rollout_numerics == RolloutNumerics::Exact)?;
        let base = weights.adapter.as_ref().map(|_| ModelWeights {
            config: weights.config.clone(),
            tensors: weights.tensors.clone(),
            adapter: None,
        });
        let n_layers = weights.config.num_hidden_layers;
        let mut pc = cfg.perturbation.clone();
        pc.seed ^= cfg.seed;
        let perturb = LayerwiseGaussian::new(pc, n_layers, &device)?;
        let params = named_vars(&varmap)?;
        let theta = AdamW::new(
            params,
            AdamWParams {
                lr: cfg.rl.lr,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: cfg.rl.weight_decay,
            },
        )?;
        let sigma = AdamW::new(
            vec![("log_sigma".into(), perturb.log_sigma().clone())],
            AdamWParams {
                weight_decay: cfg.rl.sigma_weight_decay,
                ..AdamWParams::with_lr(cfg.rl.sigma_lr)
            },
        )?;
        let opt = Optimizer {
            theta,
            sigma,
            grad_clip: cfg.rl.grad_clip,
        };
        Ok(Trainer {
            cfg,
            tokenizer: Arc::new(tokenizer),
            model,
            varmap,
            perturb,
            opt,
            device,
            version: 0,
            step: 0,
            bad_steps: 0,
            lora_base_dir: None,
            history: Default::default(),
            reference: None,
            objective: Arc::new(cfg_objective),
            sampler_logp: None,
            base,
            rollout_base: std::sync::OnceLock::new(),
        })
    }

    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // used by alp-cli and the tests
    /// The objective of RL updates.
    pub fn objective(&self) -> &dyn PolicyObjective {
        self.objective.as_ref()
    }

    /// Trains with `objective` instead of `rl.objective` (a user's [`PolicyObjective`]); one
    /// that reads `logp_old` turns `rl.recompute_logp_old` on.
    pub fn set_objective(&mut self, objective: Arc<dyn PolicyObjective>) {
        if objective.needs_logp_old() {
            self.cfg.rl.recompute_logp_old = true;
        }
        self.objective = objective;
    }

    /// The current weights (sharing storage with the trainable variables): with LoRA, the
    /// frozen base and the adapter.
    pub fn weights(&self) -> Result<ModelWeights> {
        let trained = ModelWeights::from_varmap(self.model.config(), &self.varmap)?;
        Ok(match &self.base {
            Some(base) => ModelWeights {
                adapter: Some(alp_model::Adapter {
                    config: self.cfg.model.lora.clone(),
                    tensors: trained.tensors,
                }),
                ..base.clone()
            },
            None => trained,
        })
    }

    /// The model's parameters, frozen base included: what a micro-batch's activations scale
    /// with (a LoRA run trains few of them but runs the whole model).
    pub fn model_parameters(&self) -> usize {
        self.model.config().num_parameters() + self.opt.theta.num_params() * self.is_lora() as usize
    }

    /// Whether only a LoRA adapter trains (the base is frozen).
    pub fn is_lora(&self) -> bool {
        self.base.is_some()
    }

    /// Sets the reference policy of the KL term (`rl.kl.coef` > 0) to `weights`, in f32.
    pub fn set_reference(&mut self, weights: &ModelWeights) -> Result<()> {
        self.reference = Some(self.frozen(weights)?);
        Ok(())
    }

    /// An unperturbed f32 inference copy of `weights` (no storage shared with the trainer).
    fn frozen(&self, weights: &ModelWeights) -> Result<Model> {
        let mut m = weights
            .snapshot(candle_core::DType::F32, &self.device)?
            .build()?;
        m.set_exact_numerics(self.model.exact_numerics())?;
        Ok(m)
    }

    /// Keeps an unperturbed f32 copy of the current version while batches sampled by it may
    /// still arrive (only with `rl.max_staleness` > 0; synchronous runs need none).
    pub fn remember_version(&mut self) -> Result<()> {
        let keep = self.cfg.rl.max_staleness as usize;
        let at_update = self.cfg.rl.score_sampler == crate::config::SamplerScoring::AtUpdate;
        if keep == 0 || !at_update || self.history.iter().any(|(v, _)| *v == self.version) {
            return Ok(());
        }
        let m = self.frozen(&self.weights()?)?;
        self.history.push_back((self.version, m));
        while self.history.len() > keep + 1 {
            self.history.pop_front();
        }
        Ok(())
    }

    /// An unperturbed f32 copy of the current version for the rollout worker to score what
    /// it samples with it (`rl.score_sampler = "at-sampling"` in an asynchronous run; None
    /// otherwise).
    pub fn sampler_scorer(&self) -> Result<Option<Model>> {
        let rl = &self.cfg.rl;
        if rl.max_staleness == 0 || rl.score_sampler != crate::config::SamplerScoring::AtSampling {
            return Ok(None);
        }
        Ok(Some(self.frozen(&self.weights()?)?))
    }

    /// The log-probs of step `step`'s trajectories (in batch order) under the version that
    /// sampled them, scored by the rollout worker; the next [`Trainer::rl_step`] for that
    /// step uses them for the engine/staleness split instead of a kept copy.
    pub fn set_sampler_logprobs(&mut self, step: u64, logp: Vec<Vec<f32>>) {
        self.sampler_logp = Some((step, logp));
    }

    /// A copy of the weights for the sampler: quantised as `rl.rollout_quant` says, in the
    /// rollout dtype.
    pub fn rollout_snapshot(&self) -> Result<ModelWeights> {
        let w = self.weights()?;
        let dtype = self.cfg.rl.rollout_dtype.candle();
        if let Some(base) = &self.base {
            // The base in the rollout dtype once; each version copies only its adapter (kept
            // in full precision's rounding to the rollout dtype, not quantised, as a serving
            // engine applies LoRA over a quantised base).
            if self.rollout_base.get().is_none() {
                let _ = self.rollout_base.set(self.rollout_weights(base)?.tensors);
            }
            let tensors = self.rollout_base.get().cloned().unwrap_or_default();
            let adapter = match &w.adapter {
                Some(a) => Some(a.snapshot(dtype, &self.device)?),
                None => None,
            };
            return Ok(ModelWeights {
                config: w.config,
                tensors,
                adapter,
            });
        }
        self.rollout_weights(&w)
    }

    /// `w` (without its adapter) in the rollout dtype, quantised as `rl.rollout_quant` says.
    fn rollout_weights(&self, w: &ModelWeights) -> Result<ModelWeights> {
        let w = ModelWeights {
            adapter: None,
            ..w.clone()
        };
        let dtype = self.cfg.rl.rollout_dtype.candle();
        let Some(levels) = self.cfg.rl.rollout_quant.levels() else {
            return w.snapshot(dtype, &self.device);
        };
        let mut out = w.snapshot(candle_core::DType::F32, &self.device)?;
        for t in out.tensors.values_mut() {
            if t.rank() == 2 {
                *t = fake_quantize(t, levels)?;
            }
            *t = t.to_dtype(dtype)?;
        }
        Ok(out)
    }

    /// One SFT step on `examples` with learning rate `lr`; returns the mean token NLL.
    pub fn sft_step(&mut self, examples: &[SftExample], lr: f64) -> Result<f64> {
        let (value, g) = self.sft_gradients(examples)?;
        let norm = global_norm(&[&g])?;
        let scale = if norm > 1.0 { 1.0 / norm } else { 1.0 };
        let opt = &mut self.opt.theta;
        let saved = opt.hp;
        opt.hp.lr = lr;
        opt.hp.weight_decay = self.cfg.sft.weight_decay;
        opt.step(&g, scale)?;
        opt.hp = saved;
        Ok(value)
    }

    /// The mean token NLL of `examples` and its gradient for every weight (in the order of
    /// [`AdamW::params`]), computed in micro-batches of similar length (`sft.micro_batch_tokens`,
    /// `model.parallel_micro_batches` at once). Errors on a non-finite loss.
    pub fn sft_gradients(&self, examples: &[SftExample]) -> Result<(f64, Vec<Option<Tensor>>)> {
        // The loss is the mean NLL over every trained token of the batch, however it is cut
        // into micro-batches: each micro-batch's sum is divided by the batch's token count.
        let n = examples
            .iter()
            .map(|e| e.mask.iter().filter(|&&m| m != 0).count())
            .sum::<usize>()
            .max(1) as f64;
        let lens: Vec<(usize, usize)> = examples
            .iter()
            .map(|e| (e.prompt.len(), e.response.len()))
            .collect();
        let plan = plan_micro_batches(&lens, 0, self.cfg.sft.micro_batch_tokens);
        let opt = &self.opt.theta;
        let (model, device) = (&self.model, &self.device);
        let checkpointing = self.cfg.model.gradient_checkpointing;
        let mut value = 0.0;
        let mut g: Vec<Option<Tensor>> = Vec::new();
        for_each_parallel(
            &plan,
            self.cfg
                .model
                .micro_batch_threads(self.model_parameters()),
            |_, rows| {
                let rows: Vec<(&[u32], &[u32], &[u8])> = rows
                    .iter()
                    .map(|&i| {
                        let e = &examples[i];
                        (
                            e.prompt.as_slice(),
                            e.response.as_slice(),
                            e.mask.as_slice(),
                        )
                    })
                    .collect();
                let b = SeqBatch::new(&rows, device)?;
                let fwd = b.training_forward(model, &NoPerturbation, checkpointing)?;
                let lp = b.logprobs_of(&fwd.logits)?;
                let loss = ((lp * &b.mask)?.sum_all()? * (-1.0 / n))?;
                let v = loss.to_scalar::<f32>()? as f64;
                let grads = if v.is_finite() {
                    opt.grads(&fwd.backward(&loss)?)
                } else {
                    vec![]
                };
                Ok((v, grads))
            },
            |(v, grads)| {
                value += v;
                add_grads(&mut g, grads)
            },
        )?;
        if !value.is_finite() {
            return Err(Error::NonFinite(format!("SFT loss is {value}")));
        }
        Ok((value, g))
    }

    /// The task stream of a split: compact prompts for the embedded default, full prompts (boxed
    /// instruction, `What is …?`) for a real checkpoint.
    pub fn task_stream(&self, split: Split, seed: u64) -> ArithmeticTasks {
        let s = ArithmeticTasks::new(&self.cfg.tasks, split, seed);
        if self.cfg.model.is_embedded() {
            s
        } else {
            s.verbose()
        }
    }

    /// The tool specs handed to the chat template (real checkpoints with the tool environment;
    /// the embedded default's template has no tools section).
    pub fn tools_spec(&self) -> Option<serde_json::Value> {
        // The code-block format is explained in a system message, not as a function schema.
        (!self.cfg.model.is_embedded() && self.cfg.rl.env == EnvKind::Tool)
            .then(|| serde_json::Value::Array(default_task::registry().tool_specs()))
    }

    /// Builds an environment for a task (the kind `rl.env` names).
    pub fn make_env(
        &self,
    ) -> impl Fn(&Task) -> Result<Box<dyn Environment>> + Send + Sync + 'static {
        self.make_env_kind(self.cfg.rl.env)
    }

    /// Builds an environment of `kind`: the calculator tool, single-turn math, or the
    /// sandboxed Python tool (its sandbox is probed once, on the first episode; where it
    /// cannot start, every call answers why as a tool error).
    pub fn make_env_kind(
        &self,
        kind: EnvKind,
    ) -> impl Fn(&Task) -> Result<Box<dyn Environment>> + Send + Sync + 'static {
        let tc = ToolEnvConfig {
            max_malformed_turns: 1,
            format_penalty: self.cfg.rl.format_penalty,
            mode: ExtractMode::Strict,
            call_format: CallFormat::Hermes,
        };
        let py_cfg = self.cfg.rl.python.clone();
        let sandbox = Arc::new(std::sync::OnceLock::<
            std::result::Result<Arc<PythonSandbox>, String>,
        >::new());
        move |_t: &Task| -> Result<Box<dyn Environment>> {
            match kind {
                EnvKind::Tool => Ok(Box::new(ToolEnv::new(
                    default_task::registry(),
                    tc.clone(),
                )?)),
                EnvKind::Math => Ok(Box::new(MathEnv::new(ExtractMode::Strict))),
                EnvKind::Python => {
                    let sb = sandbox.get_or_init(|| {
                        PythonSandbox::new(py_cfg.clone())
                            .map(Arc::new)
                            .map_err(|e| e.to_string())
                    });
                    let mut reg = ToolRegistry::new();
                    // Without a sandbox every call says why, as a tool error: the run goes on.
                    match sb {
                        Ok(sb) => reg.register(PythonTool::new(sb.clone())),
                        Err(why) => reg.register(UnavailablePython::new(why.clone())),
                    };
                    let cfg = ToolEnvConfig {
                        call_format: CallFormat::CodeBlock,
                        ..tc.clone()
                    };
                    Ok(Box::new(ToolEnv::new(reg, cfg)?))
                }
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
            turn_stop_strings: self.cfg.rl.env.turn_stop_strings(),
        }
    }

    /// The episode settings of RL rollouts: [`Trainer::episode_config`] at `rl.temperature`
    /// with the truncation of `rl.sampling` and its sampling mask.
    pub fn rollout_episode_config(&self, seed: u64) -> EpisodeConfig {
        let mut ec = self.episode_config(self.cfg.rl.temperature, seed);
        self.cfg.rl.sampling.apply(&mut ec.sampling);
        ec
    }

    /// One RL step on a rollout batch sampled by policy version `sampled_by`: advantages,
    /// log π_old before any update, then for every PPO epoch and mini-batch the summed
    /// micro-batch gradients and one clipped AdamW update of θ and log σ. A non-finite loss or
    /// gradient skips that update (and errors after `rl.max_bad_steps` bad steps in a row).
    pub fn rl_step(&mut self, groups: &[TrajectoryGroup], sampled_by: u64) -> Result<StepMetrics> {
        self.rl_step_with(groups, sampled_by, &mut |_| {})
    }

    /// [`Trainer::rl_step`] with `inspect` called on every mini-batch's gradients before they
    /// are applied (to log, filter or test them).
    pub fn rl_step_with(
        &mut self,
        groups: &[TrajectoryGroup],
        sampled_by: u64,
        inspect: &mut dyn FnMut(&mut Gradients),
    ) -> Result<StepMetrics> {
        let rl = self.cfg.rl.clone();
        let (trajs, group_size) = rl_step::flatten(groups, !rl.sampling.keep_mask)?;
        // Scores of another batch (a different count or response length) are not these.
        if let Some((_, logp)) = &self.sampler_logp {
            let fits = logp.len() == trajs.len()
                && logp
                    .iter()
                    .zip(&trajs)
                    .all(|(l, t)| l.len() == t.response.len());
            if !fits {
                self.sampler_logp = None;
            }
        }
        let rewards: Vec<f32> = trajs.iter().map(|t| t.reward()).collect();
        let adv = compute_advantages(rl.advantage, &rewards, group_size)?;
        let mut m = StepMetrics::new(self.step + 1);
        rl_step::rollout_metrics(&trajs, &adv, &mut m);
        m.set(
            names::STALENESS,
            self.version.saturating_sub(sampled_by) as f64,
        );
        if rl.kl.coef > 0.0 && self.reference.is_none() {
            let w = self.weights()?;
            self.set_reference(&w)?;
        }
        // Scoring needs no gradient: a detached view of the weights records no graph, so a
        // scoring forward holds one layer's activations at a time, not a training forward's.
        let scoring = self.model.detached();
        let scorers = self.scorers(sampled_by, &scoring)?;
        let threads = self
            .cfg
            .model
            .micro_batch_threads(self.model_parameters());
        let shape = rl_step::BatchShape {
            mini_batch: rl.mini_batch,
            micro_batch: rl.micro_batch,
            micro_batch_tokens: rl.micro_batch_tokens,
            threads,
        };
        let minis = rl_step::build_minibatches(
            &trajs,
            &adv.values,
            shape,
            rl.aggregation,
            scorers,
            &self.device,
        )?;
        let objective = self.objective.clone();
        let use_perturb = objective.perturbs() || rl.perturb_always;
        let step_sigma = use_perturb && self.perturb.config().learnable && rl.sigma_lr > 0.0;
        let mut stats = StepStats::default();
        let mut micro_index = 0u64;
        for _epoch in 0..rl.ppo_epochs {
            for mini in &minis {
                let cx = StepContext {
                    model: &self.model,
                    perturb: if use_perturb {
                        &self.perturb
                    } else {
                        &NoPerturbation
                    },
                    step: self.step,
                    objective: objective.as_ref(),
                    aggregation: rl.aggregation,
                    kl: rl.kl,
                    threads,
                    checkpointing: self.cfg.model.gradient_checkpointing,
                };
                let mut grads =
                    rl_step::backward_minibatch(&cx, &self.opt, mini, &mut stats, micro_index)?;
                micro_index += mini.micros.len() as u64;
                inspect(&mut grads);
                stats.update(self.opt.apply(&grads, step_sigma)?);
            }
        }
        stats.finish(&mut m);
        self.count_bad_step(stats.skipped)?;
        for (i, s) in self.perturb.sigmas()?.iter().enumerate() {
            m.set(names::sigma_layer(i), *s as f64);
        }
        self.sampler_logp = None;
        self.step += 1;
        self.version += 1;
        self.remember_version()?;
        Ok(m)
    }

    /// The models that score a batch sampled by `sampled_by` before the update: the current
    /// weights (log π_old), the kept copy of the sampling version, the KL reference (built
    /// from the current weights the first time the term is used).
    fn scorers<'a>(
        &'a self,
        sampled_by: u64,
        current: &'a Model,
    ) -> Result<rl_step::Scorers<'a>> {
        let rl = &self.cfg.rl;
        let sampler_is_old = sampled_by == self.version;
        Ok(rl_step::Scorers {
            old: rl.recompute_logp_old.then_some(current),
            sampler: self
                .history
                .iter()
                .find(|(v, _)| *v == sampled_by && !sampler_is_old)
                .map(|(_, m)| m),
            sampler_is_old: sampler_is_old && rl.recompute_logp_old,
            sampler_logp: match &self.sampler_logp {
                Some((step, logp)) if *step == self.step && !sampler_is_old => {
                    Some(logp.as_slice())
                }
                _ => None,
            },
            reference: (rl.kl.coef > 0.0)
                .then_some(())
                .and(self.reference.as_ref()),
        })
    }

    /// The non-finite policy: a step with skipped updates counts as bad, `rl.max_bad_steps`
    /// bad steps in a row are an error.
    fn count_bad_step(&mut self, skipped: usize) -> Result<()> {
        if skipped == 0 {
            self.bad_steps = 0;
            return Ok(());
        }
        self.bad_steps += 1;
        if self.bad_steps >= self.cfg.rl.max_bad_steps.max(1) {
            return Err(Error::NonFinite(format!(
                "{} consecutive RL steps had a non-finite loss or gradient (the last at step {}); their updates were skipped. Lower rl.lr or check the data",
                self.bad_steps, self.step
            )));
        }
        // The step's metrics count them (`skipped_updates`).
        Ok(())
    }
}

/// The model a run starts from, as its config names it: the embedded default (random
/// weights from `model.init_seed`, the built-in tokenizer) or the checkpoint `model.base`
/// (which must have a tokenizer with a chat template). A LoRA run's frozen base.
pub fn base_weights(cfg: &TrainConfig) -> Result<(ModelWeights, Tokenizer)> {
    let device = parse_device(&cfg.model.device)?;
    base_weights_in(cfg, cfg.model.dtype.candle(), &device)
}

/// [`base_weights`] in `dtype` on `device`.
pub fn base_weights_in(
    cfg: &TrainConfig,
    dtype: candle_core::DType,
    device: &Device,
) -> Result<(ModelWeights, Tokenizer)> {
    let device = device.clone();
    if let ModelSource::Embedded { preset } = cfg.model.source() {
        let tok = default_task::build_tokenizer()?;
        let mc = presets::by_name(preset)?;
        tok.check_fits(&mc)?;
        return Ok((
            ModelWeights::random(&mc, cfg.model.init_seed, dtype, &device)?,
            tok,
        ));
    }
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
    Ok((p.weights, tok))
}

/// The weights a trainer of `cfg` trains: with LoRA, `weights` and an adapter (its own,
/// else `model.adapter`'s, else a fresh one seeded by `seed`); without, `weights` with any
/// adapter merged in.
fn with_adapter(
    cfg: &TrainConfig,
    weights: &ModelWeights,
    device: &Device,
    lora_now: bool,
) -> Result<ModelWeights> {
    let lora = &cfg.model.lora;
    let mut w = weights.clone();
    if !lora.is_on() || (!lora_now && w.adapter.is_none()) {
        return if w.adapter.is_some() { w.merged() } else { Ok(w) };
    }
    if w.adapter.is_none() {
        let dtype = cfg.model.dtype.candle();
        w.adapter = Some(if cfg.model.adapter.is_empty() {
            alp_model::Adapter::init(&w.config, lora, cfg.seed ^ LORA_SEED, dtype, device)?
        } else {
            alp_model::Adapter::load_peft(
                std::path::Path::new(&cfg.model.adapter),
                &w.config,
                dtype,
                device,
            )
            .map_err(|e| Error::config("model.adapter", e.to_string()))?
        });
    }
    Ok(w)
}

/// Mixed into `seed` for a fresh adapter's initialisation (its own stream, apart from the
/// perturbation's and the sampler's).
const LORA_SEED: u64 = 0x4c6f_5241;

/// Symmetric per-row quantisation of a matrix to `levels` steps each side of 0, returned
/// dequantised (what a weight-only quantised engine computes with).
pub fn fake_quantize(w: &candle_core::Tensor, levels: f64) -> Result<candle_core::Tensor> {
    let scale = (w.abs()?.max_keepdim(1)? / levels)?.maximum(1e-12)?;
    let q = w.broadcast_div(&scale)?.round()?.clamp(-levels, levels)?;
    Ok(q.broadcast_mul(&scale)?)
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
