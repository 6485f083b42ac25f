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
    /// Reduces per-token `loss` `[batch, T]` under `mask` to a scalar.
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
