//! Log-probabilities of target tokens from logits.
use alp_core::{Error, Result};
use candle_core::{DType, Tensor};

/// The log-prob of each target under `softmax(logits / temperature)`: a fused
/// log-softmax-gather (`x[target] − logsumexp(x)`) that never materialises the full log-softmax.
///
/// `logits` `[batch, seq, vocab]` (any float dtype; computed in f32), `targets` `[batch, seq]`
/// u32. Returns `[batch, seq]` f32. Differentiable with respect to `logits`.
pub fn token_logprobs(logits: &Tensor, targets: &Tensor, temperature: f64) -> Result<Tensor> {
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::invalid(format!(
            "temperature {temperature} must be finite and > 0 to define log-probs"
        )));
    }
    let (b, t, v) = logits.dims3()?;
    if targets.dims2()? != (b, t) {
        return Err(Error::invalid(format!(
            "targets {:?} do not match logits {:?}",
            targets.dims(),
            logits.dims()
        )));
    }
    let max_t = targets.max_all()?.to_scalar::<u32>()? as usize;
    if max_t >= v {
        return Err(Error::TokenOutOfRange {
            token: max_t as u32,
            vocab_size: v,
        });
    }
    let x = logits.to_dtype(DType::F32)?;
    let x = if temperature != 1.0 {
        (x / temperature)?
    } else {
        x
    };
    let picked = crate::kernels::fused::log_softmax_gather(
        &x.reshape((b * t, v))?,
        &targets.flatten_all()?,
    )?;
    Ok(picked.reshape((b, t))?)
}

/// Log-prob of every token after the first given its prefix, for one sequence, from the
/// logits `[1, n, vocab]` of the whole sequence.
pub fn sequence_logprobs(logits: &Tensor, tokens: &[u32]) -> Result<Vec<f32>> {
    let n = tokens.len();
    if n < 2 {
        return Err(Error::invalid("need at least two tokens to score"));
    }
    let l = logits.narrow(1, 0, n - 1)?;
    let tgt = Tensor::new(&tokens[1..], logits.device())?.unsqueeze(0)?;
    Ok(token_logprobs(&l, &tgt, 1.0)?.squeeze(0)?.to_vec1()?)
}
