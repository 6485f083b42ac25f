//! Padding variable-length (prompt, response) pairs into training tensors and computing the
//! response tokens' log-probs with the differentiable path.

use alp_core::{Result, SamplingSupports, TokenId};
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

/// The kept sampling supports of a padded batch as gather indices: row `n = b·T + t` lists the
/// target token first, then the rest of its support, padded to the batch's largest support
/// `K` (pads repeat the target and are masked with −∞). Memory `N × K` (K ≤ the bound), never
/// another `N × V`.
#[derive(Debug, Clone)]
pub struct SupportIndex {
    /// `[N, K]` u32 vocabulary ids.
    pub ids: Tensor,
    /// `[N, K]` f32: 0 on kept ids, −∞ on padding.
    pub pad: Tensor,
    /// `[N]` u8: 1 where the token has a kept support.
    pub has: Tensor,
}

impl SupportIndex {
    /// The index of rows `(response, supports)` padded to `response_len`; None when no token
    /// of the batch has a kept support.
    pub fn new(
        rows: &[(&[TokenId], Option<&SamplingSupports>)],
        response_len: usize,
        device: &Device,
    ) -> Result<Option<Self>> {
        let k = rows
            .iter()
            .filter_map(|r| r.1.map(|s| s.max_len()))
            .max()
            .unwrap_or(0);
        if k == 0 {
            return Ok(None);
        }
        let n = rows.len() * response_len;
        let mut ids = vec![0u32; n * k];
        // Column 0 (the target, or id 0 on padding positions) is always live: a row of −∞
        // only would make its log-sum-exp NaN.
        let mut pad: Vec<f32> = (0..n * k)
            .map(|c| if c % k == 0 { 0.0 } else { f32::NEG_INFINITY })
            .collect();
        let mut has = vec![0u8; n];
        for (b, (resp, sup)) in rows.iter().enumerate() {
            let Some(sup) = sup else { continue };
            for (t, &y) in resp.iter().enumerate().take(response_len) {
                let row = b * response_len + t;
                let cells = &mut ids[row * k..(row + 1) * k];
                cells.fill(y);
                if let Some(s) = sup.get(t) {
                    has[row] = 1;
                    for (c, &id) in (1..).zip(s.iter().filter(|&&id| id != y)) {
                        cells[c] = id;
                        pad[row * k + c] = 0.0;
                    }
                }
            }
        }
        Ok(Some(SupportIndex {
            ids: Tensor::from_vec(ids, (n, k), device)?,
            pad: Tensor::from_vec(pad, (n, k), device)?,
            has: Tensor::from_vec(has, n, device)?,
        }))
    }

    /// `[B, T]` log-probs of the targets over their kept supports, given `[B, T, V]` logits
    /// already divided by the temperature; tokens without a support take `full` (the
    /// full-vocabulary log-probs). Differentiable.
    pub fn restrict(&self, scaled_logits: &Tensor, full: &Tensor) -> Result<Tensor> {
        let (b, t, v) = scaled_logits.dims3()?;
        let x = scaled_logits.reshape((b * t, v))?;
        let g = x.gather(&self.ids, 1)?.broadcast_add(&self.pad)?;
        let max = g.max_keepdim(1)?.detach();
        let lse = (g.broadcast_sub(&max)?.exp()?.sum_keepdim(1)?.log()? + &max)?;
        let lp = (g.narrow(1, 0, 1)? - lse)?.squeeze(1)?;
        let out = self.has.where_cond(&lp, &full.flatten_all()?)?;
        Ok(out.reshape((b, t))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Var};

    /// log π_S(y) and its gradient d/dz_j = [j = y] − softmax_S(z)_j (j ∈ S), element by
    /// element in f64.
    fn reference(z: &[f32], y: usize, s: Option<&[u32]>) -> (f64, Vec<f64>) {
        let all: Vec<u32> = (0..z.len() as u32).collect();
        let s = s.unwrap_or(&all);
        let lse = s
            .iter()
            .map(|&j| (z[j as usize] as f64).exp())
            .sum::<f64>()
            .ln();
        let mut g = vec![0.0; z.len()];
        for &j in s {
            g[j as usize] -= (z[j as usize] as f64 - lse).exp();
        }
        g[y] += 1.0;
        (z[y] as f64 - lse, g)
    }

    #[test]
    fn restricted_log_probs_and_gradients_match_an_element_by_element_reference() {
        let dev = Device::Cpu;
        let v = 12;
        let zs: Vec<f32> = (0..2 * 3 * v)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 4.0)
            .collect();
        let x = Var::from_vec(zs.clone(), (2, 3, v), &dev).unwrap();
        let resp: [&[u32]; 2] = [&[3, 5, 7], &[1, 2]];
        let mut s0 = SamplingSupports::default();
        s0.push(Some(&[7, 3, 0]));
        s0.push(None);
        s0.push(Some(&[7]));
        let mut s1 = SamplingSupports::default();
        s1.push(Some(&[1, 2, 4, 6, 8, 10]));
        s1.push(Some(&[2, 9]));
        let sup: [Option<&[u32]>; 6] = [
            s0.get(0),
            s0.get(1),
            s0.get(2),
            s1.get(0),
            s1.get(1),
            None, // padding position of row 1
        ];
        let idx = SupportIndex::new(&[(resp[0], Some(&s0)), (resp[1], Some(&s1))], 3, &dev)
            .unwrap()
            .unwrap();
        let targets = Tensor::new(&[[3u32, 5, 7], [1, 2, 0]], &dev).unwrap();
        let full = alp_model::token_logprobs(x.as_tensor(), &targets, 1.0).unwrap();
        let lp = idx.restrict(x.as_tensor(), &full).unwrap();
        let got = lp.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let grads = lp.sum_all().unwrap().backward().unwrap();
        let g = grads
            .get(x.as_tensor())
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let ys = [3usize, 5, 7, 1, 2, 0];
        for n in 0..6 {
            let (want, want_g) = reference(&zs[n * v..(n + 1) * v], ys[n], sup[n]);
            assert!(
                (got[n] as f64 - want).abs() < 1e-5,
                "{n}: {} vs {want}",
                got[n]
            );
            for j in 0..v {
                assert!(
                    (g[n * v + j] as f64 - want_g[j]).abs() < 1e-5,
                    "grad {n},{j}: {} vs {}",
                    g[n * v + j],
                    want_g[j]
                );
            }
        }
    }
}
