//! Ratio-tail and mismatch diagnostics as plain functions (no gradients).
use std::collections::BTreeMap;

use alp_core::{Error, Result};
use candle_core::{DType, Tensor, D};

use crate::names::{self, stat};

/// The quantiles every ratio report carries.
pub const QUANTILES: &[(&str, f64)] = &[
    (stat::P0_1, 0.001),
    (stat::P1, 0.01),
    (stat::P10, 0.1),
    (stat::P50, 0.5),
    (stat::P90, 0.9),
    (stat::P99, 0.99),
    (stat::P99_9, 0.999),
];

/// Linear-interpolated quantile (numpy's default) of unsorted `values`; NaN when empty.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Quantiles, min, max and mean of `values` under `prefix` (e.g. `ratio/token`).
pub fn summary(prefix: &str, values: &[f64]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    if values.is_empty() {
        return out;
    }
    for (name, q) in QUANTILES {
        out.insert(names::key(prefix, name), quantile(values, *q));
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    out.insert(names::key(prefix, stat::MIN), min);
    out.insert(names::key(prefix, stat::MAX), max);
    out.insert(
        names::key(prefix, stat::MEAN),
        values.iter().sum::<f64>() / values.len() as f64,
    );
    out
}

fn rows(t: &Tensor) -> Result<Vec<Vec<f64>>> {
    Ok(t.detach().to_dtype(DType::F64)?.to_vec2()?)
}

/// Masked per-token and per-sequence log-ratios `num − den`.
pub fn log_ratios(num: &Tensor, den: &Tensor, mask: &Tensor) -> Result<(Vec<f64>, Vec<f64>)> {
    let (n, d, m) = (rows(num)?, rows(den)?, rows(mask)?);
    if n.len() != d.len() || n.len() != m.len() {
        return Err(Error::invalid("log_ratios: batch sizes differ"));
    }
    let mut tok = vec![];
    let mut seq = vec![];
    for i in 0..n.len() {
        let mut s = 0.0;
        let mut any = false;
        for t in 0..n[i].len() {
            if m[i][t] != 0.0 {
                let x = n[i][t] - d[i][t];
                tok.push(x);
                s += x;
                any = true;
            }
        }
        if any {
            seq.push(s);
        }
    }
    Ok((tok, seq))
}

/// Normalised effective sample size (Σw)²/(n·Σw²) ∈ (0, 1] of weights given by their logs
/// (computed stably in log space); 1 when all weights are equal.
pub fn effective_sample_size(log_w: &[f64]) -> f64 {
    if log_w.is_empty() {
        return 1.0;
    }
    let lse = |xs: &mut dyn Iterator<Item = f64>| {
        let v: Vec<f64> = xs.collect();
        let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
    };
    let a = lse(&mut log_w.iter().copied());
    let b = lse(&mut log_w.iter().map(|x| 2.0 * x));
    ((2.0 * a - b).exp() / log_w.len() as f64).min(1.0)
}

/// k1 and k3 estimates of KL(μ‖π) from tokens sampled by μ: k1 = mean(log μ − log π),
/// k3 = mean(ρ − 1 − log ρ) with ρ = π/μ.
pub fn kl_mu_pi(log_ratio_pi_mu: &[f64]) -> (f64, f64) {
    if log_ratio_pi_mu.is_empty() {
        return (0.0, 0.0);
    }
    let n = log_ratio_pi_mu.len() as f64;
    let k1 = -log_ratio_pi_mu.iter().sum::<f64>() / n;
    let k3 = log_ratio_pi_mu
        .iter()
        .map(|&l| {
            let l = l.clamp(-50.0, 50.0);
            l.exp() - 1.0 - l
        })
        .sum::<f64>()
        / n;
    (k1, k3)
}

/// The log-probs of one micro-batch's tokens that the diagnostics compare, all `[rows, T]`.
#[derive(Debug, Clone, Copy)]
pub struct RatioInputs<'a> {
    /// log π of the training forward (perturbed for ALP).
    pub logp: &'a Tensor,
    /// log π_old: the unperturbed policy the step starts from.
    pub logp_old: Option<&'a Tensor>,
    /// The trainer's log-prob under the weights version that sampled the tokens (its
    /// numerics, not the engine's).
    pub logp_sampler: Option<&'a Tensor>,
    /// log μ stored by the engine.
    pub logp_infer: &'a Tensor,
    /// The loss mask.
    pub mask: &'a Tensor,
}

/// The per-token and per-sequence log-ratios of a whole step, collected micro-batch by
/// micro-batch; [`RatioCollector::report`] computes every statistic once over all of them (a
/// step's p99.9 is not the mean of its micro-batches' p99.9s).
#[derive(Debug, Clone, Default)]
pub struct RatioCollector {
    tok: Vec<f64>,
    seq: Vec<f64>,
    unperturbed_tok: Vec<f64>,
    unperturbed_seq: Vec<f64>,
    engine_tok: Vec<f64>,
    engine_seq: Vec<f64>,
    stale_tok: Vec<f64>,
    drift_tok: Vec<f64>,
}

impl RatioCollector {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the masked tokens of one micro-batch: log π (`logp`), optionally log π_old, and
    /// log μ (`logp_infer`); π_old is taken as the sampling version (no staleness).
    pub fn add(
        &mut self,
        logp: &Tensor,
        logp_old: Option<&Tensor>,
        logp_infer: &Tensor,
        mask: &Tensor,
    ) -> Result<()> {
        self.add_inputs(&RatioInputs {
            logp,
            logp_old,
            logp_sampler: logp_old,
            logp_infer,
            mask,
        })
    }

    /// Adds the masked tokens of one micro-batch.
    pub fn add_inputs(&mut self, x: &RatioInputs) -> Result<()> {
        let (tok, seq) = log_ratios(x.logp, x.logp_infer, x.mask)?;
        self.tok.extend(tok);
        self.seq.extend(seq);
        if let Some(old) = x.logp_old {
            let (t, s) = log_ratios(old, x.logp_infer, x.mask)?;
            self.unperturbed_tok.extend(t);
            self.unperturbed_seq.extend(s);
            self.drift_tok.extend(log_ratios(x.logp, old, x.mask)?.0);
            if let Some(v) = x.logp_sampler {
                self.stale_tok.extend(log_ratios(old, v, x.mask)?.0);
            }
        }
        if let Some(v) = x.logp_sampler {
            let (t, s) = log_ratios(v, x.logp_infer, x.mask)?;
            self.engine_tok.extend(t);
            self.engine_seq.extend(s);
        }
        Ok(())
    }

    /// Number of token log-ratios collected.
    pub fn tokens(&self) -> usize {
        self.tok.len()
    }

    /// Ratio π/μ quantiles at token and sequence level, KL(μ‖π) k1/k3 and effective sample
    /// sizes of the training forward; the unperturbed ratio π_old/μ on the same tokens; the
    /// engine part (sampling version vs μ), the staleness part (π_old vs the sampling version)
    /// and the drift of the updates (π vs π_old) — each over everything collected.
    pub fn report(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        let exp = |v: &[f64]| {
            v.iter()
                .map(|x| x.clamp(-700.0, 700.0).exp())
                .collect::<Vec<_>>()
        };
        out.extend(summary(names::RATIO_TOKEN, &exp(&self.tok)));
        out.extend(summary(names::RATIO_SEQ, &exp(&self.seq)));
        let (k1, k3) = kl_mu_pi(&self.tok);
        out.insert(names::KL_MU_PI_K1.into(), k1);
        out.insert(names::KL_MU_PI_K3.into(), k3);
        out.insert(names::ESS_TOKEN.into(), effective_sample_size(&self.tok));
        out.insert(names::ESS_SEQ.into(), effective_sample_size(&self.seq));
        if !self.unperturbed_tok.is_empty() {
            out.extend(summary(
                names::UNPERTURBED_RATIO_TOKEN,
                &exp(&self.unperturbed_tok),
            ));
            out.extend(summary(
                names::UNPERTURBED_RATIO_SEQ,
                &exp(&self.unperturbed_seq),
            ));
            out.insert(
                names::UNPERTURBED_KL_K3.into(),
                kl_mu_pi(&self.unperturbed_tok).1,
            );
            out.extend(summary(names::DRIFT_RATIO_TOKEN, &exp(&self.drift_tok)));
            out.insert(names::DRIFT_KL_K3.into(), kl_mu_pi(&self.drift_tok).1);
        }
        if !self.engine_tok.is_empty() {
            out.extend(summary(names::ENGINE_RATIO_TOKEN, &exp(&self.engine_tok)));
            out.extend(summary(names::ENGINE_RATIO_SEQ, &exp(&self.engine_seq)));
            out.insert(names::ENGINE_KL_K3.into(), kl_mu_pi(&self.engine_tok).1);
        }
        if !self.stale_tok.is_empty() {
            out.extend(summary(names::STALE_RATIO_TOKEN, &exp(&self.stale_tok)));
            out.insert(names::STALE_KL_K3.into(), kl_mu_pi(&self.stale_tok).1);
        }
        out
    }
}

/// The full off-policy report of one batch: [`RatioCollector`] over that batch alone.
pub fn mismatch_report(
    logp: &Tensor,
    logp_old: Option<&Tensor>,
    logp_infer: &Tensor,
    mask: &Tensor,
) -> Result<BTreeMap<String, f64>> {
    let mut c = RatioCollector::new();
    c.add(logp, logp_old, logp_infer, mask)?;
    Ok(c.report())
}

/// Entropy of softmax(logits) for every row of `logits` (`[..., vocab]`), returned flattened
/// `[rows]` in f32. Rows are processed `chunk_rows` at a time, so no more than one
/// `[chunk_rows, vocab]` block is materialised in f32.
pub fn entropy_from_logits(logits: &Tensor, chunk_rows: usize) -> Result<Tensor> {
    let v = logits.dim(D::Minus1)?;
    let flat = logits.detach().reshape(((), v))?;
    let n = flat.dim(0)?;
    let chunk = chunk_rows.max(1);
    let mut parts = Vec::with_capacity(n.div_ceil(chunk));
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let x = flat.narrow(0, start, len)?.to_dtype(DType::F32)?;
        let max = x.max_keepdim(D::Minus1)?;
        let z = x.broadcast_sub(&max)?;
        let e = z.exp()?;
        let s = e.sum_keepdim(D::Minus1)?;
        // H = log Σe − Σ e·z / Σe
        let h = (s.log()? - (e * &z)?.sum_keepdim(D::Minus1)?.div(&s)?)?;
        parts.push(h.squeeze(D::Minus1)?);
        start += len;
    }
    if parts.is_empty() {
        return Ok(Tensor::zeros(0, DType::F32, logits.device())?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}
