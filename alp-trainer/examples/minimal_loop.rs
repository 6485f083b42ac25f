//! A minimal RL loop by hand with alp-model + alp-rollout + alp-loss, without alp-trainer's
//! orchestration: sample groups, score them, compute advantages and the Seq-ALP loss with a
//! learnable layerwise perturbation, and step a plain SGD on θ and log σ. The reward here is
//! "emit token 7"; a few steps raise its probability.
//!
//! Run: `cargo run --release -p alp-trainer --example minimal_loop` (also run by `cargo test`).
use std::sync::Arc;

use alp_core::Result;
use alp_loss::{compute_advantages, AdvantageEstimator, Aggregation, LossInputs, Objective};
use alp_model::{
    presets, token_logprobs, LayerwiseGaussian, ModelWeights, Numerics, PerturbationConfig,
};
use alp_rollout::{Engine, EngineConfig, Request, SamplingParams};
use candle_core::{DType, Device, Tensor};

fn main() -> Result<()> {
    let dev = Device::Cpu;
    let cfg = presets::tiny();
    let (model, varmap) = ModelWeights::random(&cfg, 1, DType::F32, &dev)?.build_trainable()?;
    let perturb =
        LayerwiseGaussian::new(PerturbationConfig::default(), cfg.num_hidden_layers, &dev)?;
    let objective = Objective::from_name("alp-seq")?;
    let prompt = vec![1u32, 2, 3];
    let target = 7u32;
    let (group, len) = (16usize, 4usize);
    let mut first_rate = None;
    let mut rate = 0.0;
    for step in 0..15u64 {
        // Sample from a snapshot of the current weights (the "inference engine").
        let snapshot = ModelWeights::from_varmap(&cfg, &varmap)?.snapshot(DType::F32, &dev)?;
        let engine = Engine::new(Arc::new(snapshot.build()?), EngineConfig::default())?;
        let reqs: Vec<Request> = (0..group)
            .map(|i| Request {
                prompt: prompt.clone(),
                params: SamplingParams {
                    max_new_tokens: len,
                    seed: step * 100 + i as u64,
                    ..Default::default()
                },
            })
            .collect();
        let outs = engine.generate(&reqs)?;
        let rewards: Vec<f32> = outs
            .iter()
            .map(|o| o.tokens.iter().filter(|&&t| t == target).count() as f32 / len as f32)
            .collect();
        rate = rewards.iter().sum::<f32>() / group as f32;
        first_rate.get_or_insert(rate);
        let adv = compute_advantages(AdvantageEstimator::Grpo, &rewards, group)?;
        // The training forward (perturbed, differentiable) over prompt + response.
        let mut ids = Vec::new();
        let mut infer = Vec::new();
        for o in &outs {
            ids.extend_from_slice(&prompt);
            ids.extend_from_slice(&o.tokens);
            infer.extend_from_slice(&o.logprobs);
        }
        let ids = Tensor::from_vec(ids, (group, prompt.len() + len), &dev)?;
        perturb.set_context(step, 0);
        let logits = model.forward_full(
            &ids.narrow(1, 0, prompt.len() + len - 1)?,
            &[],
            &perturb,
            Numerics::Training,
        )?;
        let logits = logits.narrow(1, prompt.len() - 1, len)?.contiguous()?;
        let logp = token_logprobs(&logits, &ids.narrow(1, prompt.len(), len)?, 1.0)?;
        let logp_infer = Tensor::from_vec(infer, (group, len), &dev)?;
        let mask = Tensor::ones((group, len), DType::F32, &dev)?;
        let advantages = Tensor::from_vec(adv.values, group, &dev)?;
        let out = objective.compute(
            &LossInputs {
                logp: &logp,
                logp_old: None,
                logp_infer: &logp_infer,
                advantages: &advantages,
                mask: &mask,
            },
            Aggregation::TokenMean,
        )?;
        let grads = out.loss.backward()?;
        for var in varmap
            .all_vars()
            .iter()
            .chain(std::iter::once(perturb.log_sigma()))
        {
            if let Some(g) = grads.get(var.as_tensor()) {
                var.set(&(var.as_tensor() - (g * 0.05)?)?)?;
            }
        }
        println!(
            "step {step}: P(token {target}) in samples {rate:.3}, σ {:?}",
            perturb.sigmas()?
        );
    }
    let first = first_rate.unwrap_or(0.0);
    assert!(rate > first, "the reward should rise: {first} → {rate}");
    Ok(())
}
