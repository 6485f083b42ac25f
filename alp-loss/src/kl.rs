//! KL estimators between the policy and a reference policy, per token.
use alp_core::Result;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregation;

/// Which per-token estimator of KL(π‖π_ref) from samples of π.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    /// log π − log π_ref.
    K1,
    /// ½ (log π − log π_ref)².
    K2,
    /// exp(log π_ref − log π) − (log π_ref − log π) − 1 (non-negative, low variance).
    #[default]
    K3,
}

/// Per-token KL estimate `[batch, T]` (differentiable in `logp`).
pub fn kl_per_token(est: KlEstimator, logp: &Tensor, logp_ref: &Tensor) -> Result<Tensor> {
    let d = (logp - logp_ref)?;
    Ok(match est {
        KlEstimator::K1 => d,
        KlEstimator::K2 => (d.sqr()? * 0.5)?,
        KlEstimator::K3 => {
            // clamp keeps exp finite for extreme log-ratios
            let r = d.neg()?.clamp(-20.0, 20.0)?;
            ((r.exp()? - &r)? - 1.0)?
        }
    })
}

/// A KL-to-reference penalty: `coef · agg(kl)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KlPenalty {
    /// Estimator.
    pub estimator: KlEstimator,
    /// Coefficient (0 turns the term off).
    pub coef: f64,
}

impl Default for KlPenalty {
    fn default() -> Self {
        KlPenalty {
            estimator: KlEstimator::K3,
            coef: 0.0,
        }
    }
}

impl KlPenalty {
    /// One micro-batch's part of the penalty, reduced with the whole mini-batch's
    /// `normaliser` (see [`Aggregation::reduce_part`]); the parts sum to [`KlPenalty::term`].
    pub fn term_part(
        &self,
        logp: &Tensor,
        logp_ref: &Tensor,
        mask: &Tensor,
        agg: Aggregation,
        normaliser: f64,
    ) -> Result<Tensor> {
        let kl = self.masked_kl(logp, logp_ref, mask)?;
        let part = agg.reduce_part(&kl, &mask.to_dtype(logp.dtype())?, normaliser)?;
        Ok((part * self.coef)?)
    }

    /// Per-token KL with masked positions zeroed on both sides (garbage there never leaks).
    fn masked_kl(&self, logp: &Tensor, logp_ref: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let m = mask.ne(0.0)?;
        let z = logp.zeros_like()?;
        kl_per_token(
            self.estimator,
            &m.where_cond(logp, &z)?,
            &m.where_cond(&logp_ref.to_dtype(logp.dtype())?, &z)?,
        )
    }

    /// The penalty term (scalar) under `mask`, reduced like the policy loss.
    pub fn term(
        &self,
        logp: &Tensor,
        logp_ref: &Tensor,
        mask: &Tensor,
        agg: Aggregation,
    ) -> Result<Tensor> {
        let kl = self.masked_kl(logp, logp_ref, mask)?;
        Ok((agg.reduce(&kl, &mask.to_dtype(logp.dtype())?)? * self.coef)?)
    }
}
