//! Typed inputs and outputs of the objectives.
use std::collections::BTreeMap;

use alp_core::{Error, Result};
use candle_core::{DType, Tensor};

/// Per-token log-probs and per-sequence advantages of one mini-batch, all `[batch, T]` except
/// `advantages` (`[batch]`, one value per sequence, or `[batch, T]`).
///
/// Positions where `mask` is 0 (prompt, tool output, padding) contribute nothing, whatever
/// their log-prob values (even NaN or ±inf).
#[derive(Debug, Clone)]
pub struct LossInputs<'a> {
    /// log π_θ(y_t) of the current update (possibly perturbed); gradients flow through it.
    pub logp: &'a Tensor,
    /// log π_θold(y_t), recomputed before the update; only some methods need it.
    pub logp_old: Option<&'a Tensor>,
    /// log μ(y_t) stored by the rollout engine when it sampled.
    pub logp_infer: &'a Tensor,
    /// Advantages, `[batch]` or `[batch, T]`.
    pub advantages: &'a Tensor,
    /// Loss mask `[batch, T]`, 1 for generated tokens.
    pub mask: &'a Tensor,
}

/// What an objective returns: the scalar loss to minimise and named metrics.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// The scalar loss (a 0-dim tensor in the dtype of `logp`).
    pub loss: Tensor,
    /// Metrics such as clip fractions, by name.
    pub metrics: BTreeMap<String, f64>,
}

impl LossOutput {
    /// A loss without metrics.
    pub fn new(loss: Tensor) -> Self {
        LossOutput {
            loss,
            metrics: BTreeMap::new(),
        }
    }
}

/// The tensors of [`LossInputs`] checked and put into one dtype, with masked positions zeroed.
pub(crate) struct Prepared {
    pub logp: Tensor,
    pub logp_old: Option<Tensor>,
    pub logp_infer: Tensor,
    pub adv: Tensor,
    pub mask: Tensor,
    pub mask_u8: Tensor,
}

impl LossInputs<'_> {
    pub(crate) fn prepare(&self) -> Result<Prepared> {
        let (b, t) = self.logp.dims2()?;
        let dtype = self.logp.dtype();
        if !matches!(dtype, DType::F32 | DType::F64) {
            return Err(Error::invalid(format!(
                "logp must be f32 or f64, got {dtype:?}"
            )));
        }
        let check = |name: &str, x: &Tensor| -> Result<()> {
            if x.dims() != [b, t] {
                return Err(Error::invalid(format!(
                    "{name} has shape {:?}, logp has [{b}, {t}]",
                    x.dims()
                )));
            }
            Ok(())
        };
        check("logp_infer", self.logp_infer)?;
        check("mask", self.mask)?;
        if let Some(o) = self.logp_old {
            check("logp_old", o)?;
        }
        let adv = match self.advantages.dims() {
            [n] if *n == b => self.advantages.reshape((b, 1))?.broadcast_as((b, t))?,
            [n, m] if *n == b && *m == t => self.advantages.clone(),
            d => {
                return Err(Error::invalid(format!(
                    "advantages has shape {d:?}; expected [{b}] or [{b}, {t}]"
                )))
            }
        };
        let mask_u8 = self.mask.ne(0.0)?;
        let zeros = Tensor::zeros((b, t), dtype, self.logp.device())?;
        let clean =
            |x: &Tensor| -> Result<Tensor> { Ok(mask_u8.where_cond(&x.to_dtype(dtype)?, &zeros)?) };
        Ok(Prepared {
            logp: clean(self.logp)?,
            logp_old: self.logp_old.map(clean).transpose()?,
            logp_infer: clean(self.logp_infer)?,
            adv: clean(&adv.contiguous()?)?.detach(),
            mask: mask_u8.to_dtype(dtype)?,
            mask_u8,
        })
    }
}
