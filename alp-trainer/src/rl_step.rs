//! The data path of one RL step, as plain pieces that [`crate::trainer::Trainer::rl_step`]
//! strings together: rollout metrics from the typed outcomes; the step's mini-batches and
//! micro-batches as tensors (with log π_old taken before the first update and each row scored
//! at the temperature it was sampled with); one mini-batch's forward and backward to summed
//! gradients, its loss normalised over the whole mini-batch; and the step's statistics, kept
//! as sums and raw log-ratios so that every number is computed once over the whole step.

use crate::batch::{for_each_parallel, plan_micro_batches, SeqBatch, SupportIndex};
use crate::metrics::{self as names, StepMetrics};
use crate::optim::{Gradients, Optimizer};
use alp_core::{Error, Result, Trajectory, TrajectoryGroup};
use alp_loss::{Advantages, Aggregation, LossInputs, PolicyObjective, RatioCollector};
use alp_model::{Model, Perturbation};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;

/// Rollout-side metrics of a batch: rewards, accuracy, lengths, tool use, truncation.
pub fn rollout_metrics(trajs: &[&Trajectory], adv: &Advantages, m: &mut StepMetrics) {
    let n = trajs.len().max(1) as f64;
    let mean = |f: &dyn Fn(&Trajectory) -> f64| trajs.iter().map(|t| f(t)).sum::<f64>() / n;
    let r_mean = mean(&|t| t.reward() as f64);
    m.set(names::REWARD_MEAN, r_mean);
    m.set(
        names::REWARD_STD,
        mean(&|t| (t.reward() as f64 - r_mean).powi(2)).sqrt(),
    );
    m.set(names::ACCURACY, mean(&|t| t.outcome.correct as u8 as f64));
    m.set(
        names::ZERO_VARIANCE_GROUPS,
        adv.zero_variance_groups as f64 / adv.groups.max(1) as f64,
    );
    m.set(names::LENGTH_RESPONSE, mean(&|t| t.response.len() as f64));
    m.set(names::LENGTH_GENERATED, mean(&|t| t.num_generated() as f64));
    m.set(names::TURNS, mean(&|t| t.num_turns as f64));
    m.set(names::TOOL_CALLS, mean(&|t| t.outcome.tool_calls as f64));
    m.set(names::TOOL_ERRORS, mean(&|t| t.outcome.tool_errors as f64));
    m.set(
        names::TRUNCATED,
        mean(&|t| t.outcome.truncated as u8 as f64),
    );
    // Over the trajectories that kept their sampling supports: (overflowed, ids, generated).
    let (mut over, mut ids, mut gen, mut kept) = (0.0, 0.0, 0.0, false);
    for (t, s) in trajs.iter().filter_map(|t| Some((t, t.supports.as_ref()?))) {
        over += s.overflowed as f64;
        ids += s.ids.len() as f64;
        gen += t.num_generated() as f64;
        kept = true;
    }
    if kept {
        m.set(names::SUPPORT_OVERFLOW, over / gen.max(1.0));
        m.set(names::SUPPORT_IDS_PER_TOKEN, ids / gen.max(1.0));
    }
}

/// The trajectories of a batch in order, checked: equal group sizes, and log-probs the trainer
/// can reproduce — a truncated trajectory needs its kept sampling supports unless
/// `allow_biased` (the sampling mask turned off on purpose: the ratio is then biased).
pub fn flatten(
    groups: &[TrajectoryGroup],
    allow_biased: bool,
) -> Result<(Vec<&Trajectory>, usize)> {
    let trajs: Vec<&Trajectory> = groups.iter().flat_map(|g| g.trajectories.iter()).collect();
    if trajs.is_empty() {
        return Err(Error::invalid("rl_step: an empty rollout batch"));
    }
    let group_size = groups[0].trajectories.len();
    if groups.iter().any(|g| g.trajectories.len() != group_size) {
        return Err(Error::invalid("rl_step: groups of different sizes"));
    }
    let unmasked = |t: &&&Trajectory| t.sampling.truncates() && t.supports.is_none();
    if let (Some(t), false) = (trajs.iter().find(unmasked), allow_biased) {
        return Err(Error::invalid(format!(
            "a trajectory was sampled with truncation (top_k {}, top_p {}, min_p {}) without its sampling mask; scored over the full vocabulary its ratio would be biased. Keep the mask (rl.sampling.keep_mask = true) or sample without top-k/top-p/min-p",
            t.sampling.top_k, t.sampling.top_p, t.sampling.min_p
        )));
    }
    Ok((trajs, group_size))
}

/// The tensors of one micro-batch.
pub struct MicroBatch {
    /// Padded token ids and the loss mask.
    pub batch: SeqBatch,
    /// log μ, `[rows, T]`.
    pub logp_infer: Tensor,
    /// Advantages, `[rows]`.
    pub advantages: Tensor,
    /// log π_old, `[rows, T]`, when recomputed.
    pub logp_old: Option<Tensor>,
    /// The trainer's log-probs under the weights version that sampled the rows (for the
    /// engine/staleness split of the mismatch), when that version is at hand.
    pub logp_sampler: Option<Tensor>,
    /// log π_ref under the reference policy, when a KL term is on.
    pub logp_ref: Option<Tensor>,
    /// Sampling temperature of each row.
    pub temperatures: Vec<f64>,
    /// The kept sampling supports of truncated rows (None: every token over the full
    /// vocabulary).
    pub support: Option<SupportIndex>,
}

/// One optimizer update's worth of micro-batches and the normaliser of its loss.
pub struct MiniBatch {
    /// The micro-batches.
    pub micros: Vec<MicroBatch>,
    /// [`Aggregation::normaliser`] over every sequence of the mini-batch.
    pub normaliser: f64,
}

/// `[rows, T]` log-probs of the response tokens of `b` under `logits`, each row at its own
/// sampling temperature and, where the sampler kept it, over its sampling support.
pub fn score(
    b: &SeqBatch,
    logits: &Tensor,
    temperatures: &[f64],
    support: Option<&SupportIndex>,
) -> Result<Tensor> {
    Ok(score_parts(b, logits, temperatures, support)?.0)
}

/// [`score`] and the full-vocabulary log-probs it restricts (the same tensor without kept
/// supports).
pub fn score_parts(
    b: &SeqBatch,
    logits: &Tensor,
    temperatures: &[f64],
    support: Option<&SupportIndex>,
) -> Result<(Tensor, Tensor)> {
    let t0 = temperatures.first().copied().unwrap_or(1.0);
    let scaled = if temperatures.iter().all(|&t| t == t0) {
        if t0 == 1.0 {
            logits.to_dtype(DType::F32)?
        } else {
            (logits.to_dtype(DType::F32)? / t0)?
        }
    } else {
        let t = Tensor::from_vec(
            temperatures.iter().map(|&t| t as f32).collect::<Vec<_>>(),
            (temperatures.len(), 1, 1),
            logits.device(),
        )?;
        logits.to_dtype(DType::F32)?.broadcast_div(&t)?
    };
    let full = b.logprobs_at(&scaled, 1.0)?;
    match support {
        None => Ok((full.clone(), full)),
        Some(s) => Ok((s.restrict(&scaled, &full)?, full)),
    }
}

/// The models that score a step's rows before any update.
#[derive(Clone, Copy)]
pub struct Scorers<'a> {
    /// The current weights, for log π_old (None: not recomputed).
    pub old: Option<&'a Model>,
    /// The weights version that sampled the batch, when it is not the current one and is
    /// still kept (None with `sampler_is_old`: the current weights sampled it).
    pub sampler: Option<&'a Model>,
    /// True when the current weights are the version that sampled the batch.
    pub sampler_is_old: bool,
    /// The trajectories' log-probs under the version that sampled them, scored when they
    /// were sampled ([`score_trajectories`]), in batch order; used instead of `sampler`.
    pub sampler_logp: Option<&'a [Vec<f32>]>,
    /// The reference policy of a KL term.
    pub reference: Option<&'a Model>,
}

/// How a step's rows are cut into forwards and updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchShape {
    /// Rows per optimizer update.
    pub mini_batch: usize,
    /// Most rows per forward.
    pub micro_batch: usize,
    /// Most padded tokens per forward (0: cut by `micro_batch` only, in the given order);
    /// see [`crate::batch::plan_micro_batches`].
    pub micro_batch_tokens: usize,
    /// Micro-batches computed at once (see [`crate::batch::for_each_parallel`]).
    pub threads: usize,
}

/// Builds the step's mini-batches (`mini_batch` rows each, cut into micro-batches of similar
/// length as `shape` says), with log π_old and the sampling version's log-probs taken before
/// any update.
pub fn build_minibatches(
    trajs: &[&Trajectory],
    adv: &[f32],
    shape: BatchShape,
    agg: Aggregation,
    scorers: Scorers,
    device: &Device,
) -> Result<Vec<MiniBatch>> {
    let order: Vec<usize> = (0..trajs.len()).collect();
    let mut minis = Vec::new();
    for mb in order.chunks(shape.mini_batch.max(1)) {
        let normaliser = agg.normaliser(mb.iter().map(|&i| trajs[i].num_generated()));
        let lens: Vec<(usize, usize)> = mb
            .iter()
            .map(|&i| (trajs[i].prompt.len(), trajs[i].response.len()))
            .collect();
        let plan: Vec<Vec<usize>> =
            plan_micro_batches(&lens, shape.micro_batch.max(1), shape.micro_batch_tokens)
                .into_iter()
                .map(|rows| rows.into_iter().map(|j| mb[j]).collect())
                .collect();
        let mut micros = Vec::with_capacity(plan.len());
        for_each_parallel(
            &plan,
            shape.threads,
            |_, rows| micro(trajs, adv, rows, scorers, device),
            |m| {
                micros.push(m);
                Ok(())
            },
        )?;
        minis.push(MiniBatch { micros, normaliser });
    }
    Ok(minis)
}

fn micro(
    trajs: &[&Trajectory],
    adv: &[f32],
    rows: &[usize],
    scorers: Scorers,
    device: &Device,
) -> Result<MicroBatch> {
    let seqs: Vec<(&[u32], &[u32], &[u8])> = rows
        .iter()
        .map(|&i| {
            let t = trajs[i];
            (
                t.prompt.as_slice(),
                t.response.as_slice(),
                t.loss_mask.as_slice(),
            )
        })
        .collect();
    let batch = SeqBatch::new(&seqs, device)?;
    let infer: Vec<&[f32]> = rows
        .iter()
        .map(|&i| trajs[i].logp_infer.as_slice())
        .collect();
    let logp_infer = batch.pad_rows(&infer)?;
    let a: Vec<f32> = rows.iter().map(|&i| adv[i]).collect();
    let advantages = Tensor::from_vec(a, rows.len(), device)?;
    let temperatures: Vec<f64> = rows
        .iter()
        .map(|&i| trajs[i].sampling.scoring_temperature())
        .collect();
    let sup_rows: Vec<(&[u32], Option<&alp_core::SamplingSupports>)> = rows
        .iter()
        .map(|&i| (trajs[i].response.as_slice(), trajs[i].supports.as_ref()))
        .collect();
    let support = SupportIndex::new(&sup_rows, batch.response_len, device)?;
    let score_with = |m: Option<&Model>| -> Result<Option<Tensor>> {
        m.map(|m| {
            let l = batch.response_logits(m, &alp_model::NoPerturbation)?;
            Ok(score(&batch, &l, &temperatures, support.as_ref())?.detach())
        })
        .transpose()
    };
    let logp_old = score_with(scorers.old)?;
    let logp_sampler = if scorers.sampler_is_old {
        logp_old.clone()
    } else if let Some(pre) = scorers.sampler_logp {
        let rows: Vec<&[f32]> = rows.iter().map(|&i| pre[i].as_slice()).collect();
        Some(batch.pad_rows(&rows)?)
    } else {
        score_with(scorers.sampler)?
    };
    let logp_ref = score_with(scorers.reference)?;
    Ok(MicroBatch {
        batch,
        logp_infer,
        advantages,
        logp_old,
        logp_sampler,
        logp_ref,
        temperatures,
        support,
    })
}

/// Each trajectory's response log-probs under `model` as a step scores them (at its sampling
/// temperature, over its kept support), `chunk` rows per forward: what the rollout worker
/// computes right after sampling with the weights that sampled (`rl.score_sampler =
/// "at-sampling"`).
pub fn score_trajectories(
    model: &Model,
    trajs: &[&Trajectory],
    chunk: usize,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(trajs.len());
    let all: Vec<usize> = (0..trajs.len()).collect();
    for rows in all.chunks(chunk.max(1)) {
        let zeros = vec![0f32; trajs.len()];
        let scorers = Scorers {
            old: Some(model),
            sampler: None,
            sampler_is_old: false,
            sampler_logp: None,
            reference: None,
        };
        let m = micro(trajs, &zeros, rows, scorers, device)?;
        let lp = m
            .logp_old
            .ok_or_else(|| Error::Msg("scoring produced no log-probs".into()))?
            .to_vec2::<f32>()?;
        for (&i, mut row) in rows.iter().zip(lp) {
            row.truncate(trajs[i].response.len());
            out.push(row);
        }
    }
    Ok(out)
}

/// What a step gathers over all its forwards, reduced once by [`StepStats::finish`].
#[derive(Default)]
pub struct StepStats {
    /// Every token's log-ratios (π/μ, π_old/μ, π/π_old) of every forward of the step.
    pub ratios: RatioCollector,
    /// Token-weighted sums of the objectives' fractions and the entropy: name → (Σ v·w, Σ w).
    weighted: BTreeMap<String, (f64, f64)>,
    /// Loss of every mini-batch whose loss was finite.
    losses: Vec<f64>,
    grad_norms: Vec<f64>,
    sigma_grad_norms: Vec<f64>,
    /// Updates skipped for a non-finite loss or gradient.
    pub skipped: usize,
}

impl StepStats {
    fn weigh(&mut self, name: &str, value: f64, weight: f64) {
        let e = self.weighted.entry(name.to_string()).or_default();
        e.0 += value * weight;
        e.1 += weight;
    }

    /// Records an optimizer update's outcome.
    pub fn update(&mut self, u: crate::optim::Update) {
        match u {
            crate::optim::Update::Applied {
                grad_norm,
                sigma_grad_norm,
            } => {
                self.grad_norms.push(grad_norm);
                self.sigma_grad_norms.extend(sigma_grad_norm);
            }
            crate::optim::Update::Skipped => self.skipped += 1,
        }
    }

    /// Writes the step's statistics into `m`.
    pub fn finish(&self, m: &mut StepMetrics) {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        if !self.losses.is_empty() {
            m.set(names::LOSS, mean(&self.losses));
        }
        if !self.grad_norms.is_empty() {
            m.set(names::GRAD_NORM, mean(&self.grad_norms));
        }
        if !self.sigma_grad_norms.is_empty() {
            m.set(names::SIGMA_GRAD_NORM, mean(&self.sigma_grad_norms));
        }
        for (k, (s, w)) in &self.weighted {
            if *w > 0.0 {
                m.set(k.clone(), s / w);
            }
        }
        m.extend(self.ratios.report());
        m.set(names::SKIPPED_UPDATES, self.skipped as f64);
    }
}

/// What one mini-batch's forward and backward need besides the data.
pub struct StepContext<'a> {
    /// The model being trained.
    pub model: &'a Model,
    /// The perturbation of the training forward (identity for non-ALP methods); each
    /// micro-batch uses it keyed to (`step`, its index) (see [`Perturbation::keyed`]).
    pub perturb: &'a dyn Perturbation,
    /// The step, the first part of the noise key.
    pub step: u64,
    /// The objective.
    pub objective: &'a dyn PolicyObjective,
    /// The loss aggregation.
    pub aggregation: Aggregation,
    /// The KL-to-reference term (coefficient 0: off).
    pub kl: alp_loss::KlPenalty,
    /// Micro-batches computed at once.
    pub threads: usize,
    /// Recompute each decoder layer in the backward (`model.gradient_checkpointing`).
    pub checkpointing: bool,
}

/// One micro-batch's forward and backward, before it is folded into the step.
struct MicroOut {
    value: f64,
    logp: Tensor,
    /// (name, value, weight) for [`StepStats`].
    weighed: Vec<(String, f64, f64)>,
    grads: Option<candle_core::backprop::GradStore>,
}

fn forward_backward(
    cx: &StepContext,
    mini: &MiniBatch,
    m: &MicroBatch,
    micro_index: u64,
) -> Result<MicroOut> {
    let keyed = cx.perturb.keyed(cx.step, micro_index);
    let perturb = keyed.as_deref().unwrap_or(cx.perturb);
    let b = &m.batch;
    let mut weighed = Vec::new();
    let fwd = b.training_forward(cx.model, perturb, cx.checkpointing)?;
    let logits = &fwd.logits;
    let (logp, full) = score_parts(b, logits, &m.temperatures, m.support.as_ref())?;
    let tokens = b.mask.sum_all()?.to_scalar::<f32>()? as f64;
    if let Some(s) = &m.support {
        // π's mass outside each kept support: 1 − π(S) = 1 − exp(log π(y) − log π_S(y)).
        let on = (s.has.to_dtype(DType::F32)?.reshape(b.mask.shape())? * &b.mask)?;
        let outside = (full.detach() - logp.detach())?.exp()?.affine(-1.0, 1.0)?;
        let n = on.sum_all()?.to_scalar::<f32>()? as f64;
        let sum = (outside * &on)?.sum_all()?.to_scalar::<f32>()? as f64;
        weighed.push((names::SUPPORT_MASS_OUTSIDE.into(), sum / n.max(1.0), n));
    }
    let ent = alp_loss::entropy_from_logits(logits, 1024)?.reshape(b.mask.shape())?;
    let ent = (ent * &b.mask)?.sum_all()?.to_scalar::<f32>()? as f64;
    weighed.push((names::ENTROPY.into(), ent / tokens.max(1.0), tokens));
    let inputs = LossInputs {
        logp: &logp,
        logp_old: m.logp_old.as_ref(),
        logp_infer: &m.logp_infer,
        advantages: &m.advantages,
        mask: &b.mask,
    };
    let mut out = cx
        .objective
        .compute_part(&inputs, cx.aggregation, mini.normaliser)?;
    if let (Some(r), true) = (&m.logp_ref, cx.kl.coef > 0.0) {
        let term = cx
            .kl
            .term_part(&logp, r, &b.mask, cx.aggregation, mini.normaliser)?;
        let v = term.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        weighed.push((
            names::KL_REF.into(),
            v * mini.normaliser / cx.kl.coef / tokens.max(1.0),
            tokens,
        ));
        let term = term.to_dtype(out.loss.dtype())?;
        out.loss = (&out.loss + term)?;
    }
    let value = out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let mut grads = None;
    if value.is_finite() {
        let w = out.metrics.get(names::loss::TOKENS).copied().unwrap_or(0.0);
        for (k, v) in &out.metrics {
            if k != names::loss::TOKENS {
                weighed.push((k.clone(), *v, w));
            }
        }
        grads = Some(fwd.backward(&out.loss)?);
    }
    Ok(MicroOut {
        value,
        logp: logp.detach(),
        weighed,
        grads,
    })
}

/// Forward and backward of every micro-batch of `mini` (`cx.threads` at a time), gradients
/// summed into one [`Gradients`] in micro-batch order; micro-batch `i` draws its noise with
/// index `first_micro + i`. Stops at the first non-finite loss (the gradients are then marked
/// unusable).
pub fn backward_minibatch(
    cx: &StepContext,
    opt: &Optimizer,
    mini: &MiniBatch,
    stats: &mut StepStats,
    first_micro: u64,
) -> Result<Gradients> {
    let mut grads = Gradients::new();
    let mut loss_total = 0.0;
    let mut index = 0;
    for_each_parallel(
        &mini.micros,
        cx.threads,
        |i, m| forward_backward(cx, mini, m, first_micro + i as u64),
        |out| {
            let m = &mini.micros[index];
            index += 1;
            if !grads.finite_loss {
                return Ok(());
            }
            stats.ratios.add_inputs(&alp_loss::RatioInputs {
                logp: &out.logp,
                logp_old: m.logp_old.as_ref(),
                logp_sampler: m.logp_sampler.as_ref(),
                logp_infer: &m.logp_infer,
                mask: &m.batch.mask,
            })?;
            for (k, v, w) in &out.weighed {
                stats.weigh(k, *v, *w);
            }
            match out.grads {
                Some(g) => {
                    loss_total += out.value;
                    opt.accumulate(&mut grads, &g)
                }
                None => {
                    grads.finite_loss = false;
                    Ok(())
                }
            }
        },
    )?;
    if grads.finite_loss {
        stats.losses.push(loss_total);
    }
    Ok(grads)
}
