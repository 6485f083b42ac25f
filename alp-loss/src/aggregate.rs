//! Reduction of per-token losses to one scalar, and masked means that never divide by zero.
use alp_core::Result;
use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

/// How per-token losses become one scalar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Aggregation {
    /// Σ ℓ·m / Σ m over the whole mini-batch (the paper's).
    #[default]
    TokenMean,
    /// Mean over non-empty sequences of each sequence's token mean.
    SeqMeanTokenMean,
    /// Mean over non-empty sequences of each sequence's token sum.
    SeqMeanTokenSum,
}

/// Σ x·m / max(Σ m, 1) over all elements: 0 (not NaN) on an empty mask.
pub fn masked_mean(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let num = (x * mask)?.sum_all()?;
    let den = mask.sum_all()?.maximum(1.0)?;
    Ok(num.div(&den)?)
}

/// Per-row Σ_t x·m / max(Σ_t m, 1), shape `[batch]`.
pub fn masked_row_mean(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let num = (x * mask)?.sum(D::Minus1)?;
    let den = mask.sum(D::Minus1)?.maximum(1.0)?;
    Ok(num.div(&den)?)
}

impl Aggregation {
    /// The denominator of this reduction over a whole mini-batch, from the number of loss
    /// tokens of each of its sequences: the token count (token-mean) or the number of
    /// non-empty sequences (the sequence means). Pass it to [`Aggregation::reduce_part`] for
    /// every micro-batch of the mini-batch, so that the micro-batch losses sum to the
    /// mini-batch loss whatever the split (prime-rl's `loss_scale`).
    pub fn normaliser(self, tokens_per_sequence: impl IntoIterator<Item = usize>) -> f64 {
        let counts = tokens_per_sequence.into_iter();
        let n = match self {
            Aggregation::TokenMean => counts.sum::<usize>(),
            Aggregation::SeqMeanTokenMean | Aggregation::SeqMeanTokenSum => {
                counts.filter(|&c| c > 0).count()
            }
        };
        n.max(1) as f64
    }

    /// The part of a mini-batch's loss that one micro-batch (`loss`, `mask`: `[rows, T]`)
    /// contributes: its sum (token sum, or per-sequence means/sums summed) over `normaliser`,
    /// the whole mini-batch's [`Aggregation::normaliser`].
    pub fn reduce_part(self, loss: &Tensor, mask: &Tensor, normaliser: f64) -> Result<Tensor> {
        let total = match self {
            Aggregation::TokenMean => (loss * mask)?.sum_all()?,
            Aggregation::SeqMeanTokenMean => masked_row_mean(loss, mask)?.sum_all()?,
            Aggregation::SeqMeanTokenSum => (loss * mask)?.sum_all()?,
        };
        Ok((total / normaliser.max(f64::MIN_POSITIVE))?)
    }

    /// Reduces per-token `loss` `[batch, T]` under `mask` to a scalar, the batch being the
    /// whole mini-batch.
    pub fn reduce(self, loss: &Tensor, mask: &Tensor) -> Result<Tensor> {
        match self {
            Aggregation::TokenMean => masked_mean(loss, mask),
            Aggregation::SeqMeanTokenMean | Aggregation::SeqMeanTokenSum => {
                let per_seq = if self == Aggregation::SeqMeanTokenMean {
                    masked_row_mean(loss, mask)?
                } else {
                    (loss * mask)?.sum(D::Minus1)?
                };
                let nonempty = mask.sum(D::Minus1)?.gt(0.0)?.to_dtype(mask.dtype())?;
                masked_mean(&per_seq, &nonempty)
            }
        }
    }
}
