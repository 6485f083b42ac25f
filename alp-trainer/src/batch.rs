//! Padding variable-length (prompt, response) pairs into training tensors and computing the
//! response tokens' log-probs with the differentiable path.

use alp_core::{Result, SamplingSupports, TokenId};
use alp_model::Perturbation;
use alp_model::{token_logprobs, Model};
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
        let h = model.hidden_states(&self.input(), &self.left_pad, perturb)?;
        self.logits_at_response(model, &h)
    }

    /// Positions p-1 .. p+t-2 predict the response tokens p .. p+t-1; the last position's
    /// logits are never needed.
    fn input(&self) -> Tensor {
        self.ids
            .narrow(1, 0, self.prompt_len + self.response_len - 1)
            .expect("a batch has a prompt and a response")
    }

    /// The LM head on the response positions only (the prompt's logits are never read: at a
    /// 150k vocabulary they would be most of a step's memory).
    fn logits_at_response(&self, model: &Model, hidden: &Tensor) -> Result<Tensor> {
        let h = hidden
            .narrow(1, self.prompt_len - 1, self.response_len)?
            .contiguous()?;
        model.logits(&h)
    }

    /// The response logits of a training forward whose backward comes later
    /// ([`Model::training_forward`]: plain, or with `checkpointing` each decoder layer
    /// recomputed in the backward; the gradients are the same).
    pub fn training_forward<'a>(
        &self,
        model: &'a Model,
        perturb: &'a dyn Perturbation,
        checkpointing: bool,
    ) -> Result<ResponseForward<'a>> {
        let forward =
            model.training_forward(&self.input(), &self.left_pad, perturb, checkpointing)?;
        Ok(ResponseForward {
            logits: self.logits_at_response(model, &forward.hidden)?,
            forward,
        })
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

    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // used by alp-cli and the tests
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

/// Response logits of [`SeqBatch::training_forward`] and what their backward needs.
pub struct ResponseForward<'a> {
    /// `[B, T, V]` response logits (differentiable).
    pub logits: Tensor,
    forward: alp_model::TrainingForward<'a>,
}

impl ResponseForward<'_> {
    /// Every weight's (and σ's) gradient of `loss`, a scalar built on
    /// [`ResponseForward::logits`].
    pub fn backward(self, loss: &Tensor) -> Result<candle_core::backprop::GradStore> {
        self.forward.backward(loss)
    }
}

/// Splits rows into micro-batches of similar length, so that little of each forward is padding
/// (verl's dynamic batch size; TRL's padding-free batches do the same job by packing).
///
/// `lens[i]` is row `i`'s `(prompt, response)` length. Rows are taken in order of total length
/// (stable), and consecutive ones form a micro-batch while its padded size — rows × (longest
/// prompt + longest response) — stays within `token_budget` and its rows within `max_rows`;
/// a row longer than the budget gets a micro-batch of its own. `token_budget == 0` keeps the
/// given order and cuts only by `max_rows` (0: no limit). Every row appears exactly once.
pub fn plan_micro_batches(
    lens: &[(usize, usize)],
    max_rows: usize,
    token_budget: usize,
) -> Vec<Vec<usize>> {
    let max_rows = if max_rows == 0 { usize::MAX } else { max_rows };
    if token_budget == 0 {
        let all: Vec<usize> = (0..lens.len()).collect();
        return all
            .chunks(max_rows.min(lens.len().max(1)))
            .map(<[usize]>::to_vec)
            .collect();
    }
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| lens[i].0 + lens[i].1);
    let mut plan: Vec<Vec<usize>> = Vec::new();
    let (mut cur, mut p, mut t) = (Vec::new(), 0usize, 0usize);
    for i in order {
        let (np, nt) = (p.max(lens[i].0), t.max(lens[i].1));
        if !cur.is_empty() && ((cur.len() + 1) * (np + nt) > token_budget || cur.len() >= max_rows)
        {
            plan.push(std::mem::take(&mut cur));
            (p, t) = lens[i];
        } else {
            (p, t) = (np, nt);
        }
        cur.push(i);
    }
    if !cur.is_empty() {
        plan.push(cur);
    }
    plan
}

/// Runs `f` on every item, up to `threads` items at a time on the rayon pool (`threads` ≤ 1:
/// one after the other on this thread), and hands each result to `consume` in item order, so
/// what `consume` builds does not depend on timing. At most `threads` results are held at once.
pub fn for_each_parallel<I: Sync, T: Send>(
    items: &[I],
    threads: usize,
    f: impl Fn(usize, &I) -> Result<T> + Sync,
    mut consume: impl FnMut(T) -> Result<()>,
) -> Result<()> {
    use rayon::prelude::*;
    if threads <= 1 || items.len() <= 1 {
        for (i, it) in items.iter().enumerate() {
            consume(f(i, it)?)?;
        }
        return Ok(());
    }
    for (w, window) in items.chunks(threads).enumerate() {
        let out: Vec<Result<T>> = window
            .par_iter()
            .enumerate()
            .map(|(j, it)| f(w * threads + j, it))
            .collect();
        for r in out {
            consume(r?)?;
        }
    }
    Ok(())
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
    use rand::{Rng, SeedableRng};

    #[test]
    fn micro_batch_plans_cover_every_row_once_within_their_limits() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for case in 0..300 {
            let n = rng.random_range(0..40);
            let lens: Vec<(usize, usize)> = (0..n)
                .map(|_| (rng.random_range(1..12), rng.random_range(1..40)))
                .collect();
            let max_rows = rng.random_range(0..10);
            let budget = [0, 1, 16, 64, 300][case % 5];
            let plan = plan_micro_batches(&lens, max_rows, budget);
            let mut seen: Vec<usize> = plan.iter().flatten().copied().collect();
            seen.sort();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "{lens:?} {plan:?}");
            for m in &plan {
                assert!(!m.is_empty());
                assert!(max_rows == 0 || m.len() <= max_rows, "{plan:?}");
                let p = m.iter().map(|&i| lens[i].0).max().unwrap();
                let t = m.iter().map(|&i| lens[i].1).max().unwrap();
                assert!(
                    budget == 0 || m.len() == 1 || m.len() * (p + t) <= budget,
                    "{m:?} over budget {budget}"
                );
            }
            if budget == 0 {
                // The given order, cut only by rows.
                assert!(seen.iter().eq(plan.iter().flatten()));
            } else if max_rows == 0 {
                // Greedy: a micro-batch is cut only where the next row would not fit.
                for w in plan.windows(2) {
                    let mut joined = w[0].clone();
                    joined.push(w[1][0]);
                    let p = joined.iter().map(|&i| lens[i].0).max().unwrap();
                    let t = joined.iter().map(|&i| lens[i].1).max().unwrap();
                    assert!(joined.len() * (p + t) > budget, "{plan:?} cut early");
                }
            }
        }
    }

    #[test]
    fn sorting_by_length_cuts_the_padding() {
        // 56 short rows and 8 long ones: one padded batch is 64 × 33 tokens; planned,
        // the short rows are padded only among themselves.
        let lens: Vec<(usize, usize)> = (0..64)
            .map(|i| if i % 8 == 3 { (8, 25) } else { (8, 9) })
            .collect();
        let padded = |plan: &[Vec<usize>]| -> usize {
            plan.iter()
                .map(|m| {
                    let p = m.iter().map(|&i| lens[i].0).max().unwrap();
                    let t = m.iter().map(|&i| lens[i].1).max().unwrap();
                    m.len() * (p + t)
                })
                .sum()
        };
        let one = plan_micro_batches(&lens, 0, 0);
        let planned = plan_micro_batches(&lens, 0, 512);
        assert_eq!(padded(&one), 64 * 33);
        assert_eq!(padded(&planned), 56 * 17 + 8 * 33);
    }

    #[test]
    fn for_each_parallel_hands_results_over_in_order_and_stops_at_an_error() {
        let items: Vec<usize> = (0..23).collect();
        for threads in [1, 2, 5] {
            let mut got = Vec::new();
            for_each_parallel(
                &items,
                threads,
                |i, &x| Ok((i, x * x)),
                |r| {
                    got.push(r);
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(got, items.iter().map(|&x| (x, x * x)).collect::<Vec<_>>());
            let mut seen = 0;
            let r = for_each_parallel(
                &items,
                threads,
                |_, &x| {
                    if x == 7 {
                        Err(alp_core::Error::Msg("seven".into()))
                    } else {
                        Ok(x)
                    }
                },
                |_| {
                    seen += 1;
                    Ok(())
                },
            );
            assert!(r.is_err() && seen <= 7, "{threads}: {seen}");
        }
    }

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
