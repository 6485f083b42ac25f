//! The mechanism probe: what the paper says ALP does to the policy, measured on a fixed set
//! of held-out demonstrations (the same prompts and worked answers every time, so two runs
//! and two steps of one run read the same tokens).
//!
//! The names are in [`crate::metrics`]:
//!
//! - `probe/entropy`: the policy's mean per-token entropy (nats) on the demonstrations'
//!   answer tokens (the paper: ALP-trained policies become flatter).
//! - `probe/noise_kl/rel_σ`, `probe/noise_kl/abs_σ`: the mean per-token KL(π ‖ π_σ) between
//!   the policy and the policy with hidden-state noise of that σ at every layer (fixed noise
//!   seed): how much a perturbation of that size moves it, beside the engine's mismatch.
//! - `probe/engine_kl`: the mean per-token KL(μ ‖ π) of the rollout numerics (the run's
//!   `rl.rollout_dtype` and `rl.rollout_quant`, over the same weights) from the trainer's:
//!   the policy's own engine mismatch (the paper: closer to the engine).
//!
//! Every KL is exact over the vocabulary (not a sampled estimate).
use crate::batch::SeqBatch;
use crate::metrics::{probe_noise_kl_name, PROBE_ENGINE_KL, PROBE_ENTROPY};
use crate::trainer::Trainer;
use alp_core::{Result, TaskSource};
use alp_envs::math::Split;
use alp_model::{LayerSelection, LayerwiseGaussian, NoPerturbation, PerturbationConfig, SigmaMode};
use candle_core::{DType, Tensor, D};
use rand::SeedableRng;
use std::collections::BTreeMap;

/// Seed of the probe's held-out tasks and of its noise.
pub const PROBE_SEED: u64 = 0x9b0b_e5ee_d000_0001;

/// Demonstrations per forward (a 150k vocabulary makes a row's logits large).
const ROWS_PER_FORWARD: usize = 4;

/// Σ over the masked tokens of the entropy of `[B, T, V]` log-probs, and the mask's sum.
fn masked_entropy(lp: &Tensor, mask: &Tensor) -> Result<(f64, f64)> {
    let h = ((lp.exp()? * lp)?.sum(D::Minus1)?.neg()? * mask)?;
    Ok((
        h.sum_all()?.to_scalar::<f32>()? as f64,
        mask.sum_all()?.to_scalar::<f32>()? as f64,
    ))
}

/// Σ over the masked tokens of KL(p ‖ q) from `[B, T, V]` log-probs.
fn masked_kl(lp: &Tensor, lq: &Tensor, mask: &Tensor) -> Result<f64> {
    let kl = ((lp.exp()? * (lp - lq)?)?.sum(D::Minus1)? * mask)?;
    Ok(kl.sum_all()?.to_scalar::<f32>()? as f64)
}

fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::log_softmax(
        &logits.to_dtype(DType::F32)?,
        D::Minus1,
    )?)
}

/// Runs the probe on `trainer`'s current weights (nothing is trained or changed).
pub fn probe(trainer: &Trainer) -> Result<BTreeMap<String, f64>> {
    let cfg = &trainer.cfg.eval;
    let tok = trainer.tokenizer.clone();
    let mut tasks = trainer.task_stream(Split::Heldout, PROBE_SEED);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(PROBE_SEED);
    let mut examples = Vec::with_capacity(cfg.probe_tasks);
    for _ in 0..cfg.probe_tasks {
        let t = tasks
            .next_task()
            .ok_or_else(|| alp_core::Error::Msg("the probe's task stream ended".into()))?;
        examples.push(crate::default_task::demonstration(&tok, &t, 0.0, &mut rng)?);
    }
    let policy = trainer.model.detached();
    let layers = policy.config().num_hidden_layers;
    let noise = |relative: bool, sigma: f64| -> Result<LayerwiseGaussian> {
        LayerwiseGaussian::new(
            PerturbationConfig {
                sigma_init: sigma,
                mode: if relative {
                    SigmaMode::Relative
                } else {
                    SigmaMode::Absolute
                },
                learnable: false,
                layers: LayerSelection::All,
                seed: PROBE_SEED,
            },
            layers,
            &trainer.device,
        )
    };
    let mut noises = Vec::new();
    for &s in &cfg.probe_relative_sigmas {
        noises.push((probe_noise_kl_name(true, s), noise(true, s)?));
    }
    for &s in &cfg.probe_absolute_sigmas {
        noises.push((probe_noise_kl_name(false, s), noise(false, s)?));
    }
    let engine = trainer.rollout_snapshot()?.build()?;
    let (mut h, mut n, mut engine_kl) = (0.0, 0.0, 0.0);
    let mut noise_kl = vec![0.0; noises.len()];
    for (chunk, part) in examples.chunks(ROWS_PER_FORWARD).enumerate() {
        let rows: Vec<_> = part
            .iter()
            .map(|e| (e.prompt.as_slice(), e.response.as_slice(), e.mask.as_slice()))
            .collect();
        let batch = SeqBatch::new(&rows, &trainer.device)?;
        let lp = log_softmax(&batch.response_logits(&policy, &NoPerturbation)?)?;
        let (eh, en) = masked_entropy(&lp, &batch.mask)?;
        h += eh;
        n += en;
        let le = log_softmax(&batch.response_logits(&engine, &NoPerturbation)?)?;
        engine_kl += masked_kl(&le, &lp, &batch.mask)?;
        for ((_, g), kl) in noises.iter().zip(noise_kl.iter_mut()) {
            // Fresh noise per chunk, the same at every probe.
            g.set_context(0, chunk as u64);
            let lq = log_softmax(&batch.response_logits(&policy, g)?)?;
            *kl += masked_kl(&lp, &lq, &batch.mask)?;
        }
    }
    let n = n.max(1.0);
    let mut out = BTreeMap::new();
    out.insert(PROBE_ENTROPY.to_string(), h / n);
    out.insert(PROBE_ENGINE_KL.to_string(), engine_kl / n);
    for ((name, _), kl) in noises.iter().zip(noise_kl) {
        out.insert(name.clone(), kl / n);
    }
    Ok(out)
}
