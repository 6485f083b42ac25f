//! A custom objective next to the built-in ones: plain REINFORCE with a group baseline,
//! written as a pure function over the same `LossInputs`, and compared with a built-in method
//! selected through the serde-tagged `Objective` enum.
//!
//! Run: `cargo run --release -p alp-trainer --example custom_objective` (also run by `cargo test`).
use alp_core::Result;
use alp_loss::{Aggregation, LossInputs, Objective};
use candle_core::{Device, Tensor};

/// −A · log π, token-mean over the mask: the on-policy policy gradient without any ratio.
fn reinforce(inputs: &LossInputs) -> Result<Tensor> {
    let adv = inputs
        .advantages
        .unsqueeze(1)?
        .broadcast_as(inputs.logp.shape())?;
    let per_token = (adv * inputs.logp)?.neg()?;
    let n = inputs.mask.sum_all()?;
    Ok((per_token * inputs.mask)?.sum_all()?.broadcast_div(&n)?)
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    let logp = Tensor::new(&[[-1.0f32, -0.5, -2.0], [-0.3, -0.7, -0.1]], &dev)?;
    let mask = Tensor::new(&[[1.0f32, 1.0, 0.0], [1.0, 1.0, 1.0]], &dev)?;
    let adv = Tensor::new(&[1.0f32, -1.0], &dev)?;
    let inputs = LossInputs {
        logp: &logp,
        logp_old: Some(&logp),
        logp_infer: &logp,
        advantages: &adv,
        mask: &mask,
    };
    let ours = reinforce(&inputs)?.to_scalar::<f32>()?;
    // On-policy (all three log-probs equal), GRPO's clipped surrogate has the same gradient;
    // its value is −mean(A · ratio) = −mean(A) over tokens.
    let grpo: Objective = serde_json::from_str(r#"{"method": "grpo"}"#)
        .map_err(|e| alp_core::Error::Msg(e.to_string()))?;
    let builtin = grpo
        .compute(&inputs, Aggregation::TokenMean)?
        .loss
        .to_scalar::<f32>()?;
    // Row 0 has A = +1 on 2 tokens, row 1 has A = −1 on 3 tokens: −(2·1 + 3·(−1)) / 5.
    let (a0, a1) = (1.0f32, -1.0f32);
    let expected_builtin = -(2.0 * a0 + 3.0 * a1) / 5.0;
    assert!((builtin - expected_builtin).abs() < 1e-6, "{builtin}");
    let expected_ours = -(1.0 * (-1.0 - 0.5) - (-0.3 - 0.7 - 0.1)) / 5.0;
    assert!((ours - expected_ours).abs() < 1e-6, "{ours}");
    println!("reinforce loss {ours:.4}; grpo loss {builtin:.4}");
    Ok(())
}
