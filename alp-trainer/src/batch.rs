//! Padding variable-length (prompt, response) pairs into training tensors and computing the
//! response tokens' log-probs with the differentiable path.

use alp_core::{Result, TokenId};
use alp_model::Perturbation;
use alp_model::{token_logprobs, Model, Numerics};
use candle_core::{Device, Tensor};

/// A padded batch: prompts left-padded to a common end, responses right-padded after it.
#[derive(Debug, Clone)]
pub struct SeqBatch {
    /// `[B, P + T]` token ids.
    pub ids: Tensor,
    /// Left padding of each row.
    pub left_pad: Vec<usize>,
    /// `[B, T]` f32: 1 on trained response tokens.
    pub mask: Tensor,
    /// Longest prompt.
    pub prompt_len: usize,
    /// Longest response.
    pub response_len: usize,
}

impl SeqBatch {
    /// Builds a batch from `(prompt, response, response mask)` rows.
    pub fn new(rows: &[(&[TokenId], &[TokenId], &[u8])], device: &Device) -> Result<Self> {
        let p = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let t = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(rows.len() * (p + t));
        let mut mask = Vec::with_capacity(rows.len() * t);
        let mut left_pad = Vec::with_capacity(rows.len());
        for (prompt, resp, m) in rows {
            left_pad.push(p - prompt.len());
            ids.extend(std::iter::repeat_n(0, p - prompt.len()));
            ids.extend_from_slice(prompt);
            ids.extend_from_slice(resp);
            ids.extend(std::iter::repeat_n(0, t - resp.len()));
            mask.extend(m.iter().map(|&x| if x != 0 { 1f32 } else { 0.0 }));
            mask.extend(std::iter::repeat_n(0f32, t - resp.len()));
        }
        let b = rows.len();
        Ok(SeqBatch {
            ids: Tensor::from_vec(ids, (b, p + t), device)?,
            left_pad,
            mask: Tensor::from_vec(mask, (b, t), device)?,
            prompt_len: p,
            response_len: t,
        })
    }

    /// `[B, T, V]` logits at the positions that predict the response tokens, under `perturb`
    /// (differentiable).
    pub fn response_logits(&self, model: &Model, perturb: &dyn Perturbation) -> Result<Tensor> {
        let (p, t) = (self.prompt_len, self.response_len);
        // Positions p-1 .. p+t-2 predict the response tokens p .. p+t-1; the last
        // position's logits are never needed.
        let input = self.ids.narrow(1, 0, p + t - 1)?;
        let logits =
            model.forward_full(&input, &self.left_pad, perturb, Numerics::Differentiable)?;
        Ok(logits.narrow(1, p - 1, t)?.contiguous()?)
    }

    /// `[B, T]` log-probs of the response tokens given `[B, T, V]` response logits, under
    /// `softmax(logits / temperature)` (the sampler's temperature, so that the ratio compares
    /// like with like).
    pub fn logprobs_at(&self, logits: &Tensor, temperature: f64) -> Result<Tensor> {
        let targets = self.ids.narrow(1, self.prompt_len, self.response_len)?;
        token_logprobs(logits, &targets, temperature)
    }

    /// [`SeqBatch::logprobs_at`] with temperature 1.
    pub fn logprobs_of(&self, logits: &Tensor) -> Result<Tensor> {
        self.logprobs_at(logits, 1.0)
    }

    /// `[B, T]` log-probs of the response tokens (differentiable), under `perturb`.
    pub fn response_logprobs(&self, model: &Model, perturb: &dyn Perturbation) -> Result<Tensor> {
        self.logprobs_of(&self.response_logits(model, perturb)?)
    }

    /// A `[B, T]` f32 tensor from per-row vectors (right-padded with zeros).
    pub fn pad_rows(&self, rows: &[&[f32]]) -> Result<Tensor> {
        let t = self.response_len;
        let mut v = Vec::with_capacity(rows.len() * t);
        for r in rows {
            v.extend_from_slice(&r[..r.len().min(t)]);
            v.extend(std::iter::repeat_n(0f32, t - r.len().min(t)));
        }
        Ok(Tensor::from_vec(v, (rows.len(), t), self.ids.device())?)
    }
}
