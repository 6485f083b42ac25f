//! `alp logprobs`.
use alp_model::NoPerturbation;
use alp_model::{
    parse_device, parse_dtype, resolve_model_dir, sequence_logprobs, ModelWeights, Numerics,
};
use anyhow::{bail, Result};
use candle_core::Tensor;

pub fn run(model: &str, tokens: &str, dtype: &str, device: &str) -> Result<()> {
    let toks = alp_cli::parse_token_list(tokens).map_err(anyhow::Error::msg)?;
    if toks.len() < 2 {
        bail!("--tokens needs at least two ids: the first is context, the rest are scored");
    }
    let device = parse_device(device)?;
    // Token ids in, log-probs out: the weights alone (a tokenizer, even a broken one, is not read).
    let weights = ModelWeights::load(&resolve_model_dir(model)?, parse_dtype(dtype)?, &device)?;
    let lm = weights.build()?;
    let ids = Tensor::new(toks.as_slice(), &device)?.unsqueeze(0)?;
    let logits = lm.forward_full(&ids, &[], &NoPerturbation, Numerics::Inference)?;
    let lp = sequence_logprobs(&logits, &toks)?;
    if let Some(i) = lp.iter().position(|x| !x.is_finite()) {
        match alp_trainer::checkpoint::first_non_finite(&weights)? {
            Some(name) => bail!(
                "log-prob {i} is {}: the weights of {model} are not finite (first non-finite tensor: `{name}`)",
                lp[i]
            ),
            None => bail!("log-prob {i} is {} (the forward overflowed in {dtype})", lp[i]),
        }
    }
    println!("{}", serde_json::json!({ "logprobs": lp }));
    Ok(())
}
