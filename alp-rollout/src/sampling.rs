//! Sampling parameters and the sampler, which returns the exact log-probability of the token
//! it drew under the distribution it drew it from (after temperature and truncation).

use alp_core::{Error, Result, TokenId};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// How one request is sampled and when it stops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0: off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1: off).
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the most likely one's (0: off).
    pub min_p: f32,
    /// Most tokens generated.
    pub max_new_tokens: usize,
    /// Seed of this request's RNG: the same seed gives the same output whatever else is in
    /// the batch.
    pub seed: u64,
    /// Extra token ids that end the sequence (kept in the output).
    pub stop_tokens: Vec<TokenId>,
    /// Strings that end the sequence once the decoded output contains them (kept).
    pub stop_strings: Vec<String>,
    /// Keep going past end-of-sequence tokens (benchmarks).
    pub ignore_eos: bool,
    /// With truncation, record the support each token was drawn from (the "sampling mask")
    /// so that a trainer can score it over the same subset of the vocabulary.
    pub keep_sampling_mask: bool,
    /// Most ids recorded per token's support; a larger support is not recorded (the token
    /// is then scored over the full vocabulary) and is counted as overflowed.
    pub max_support: usize,
}

/// What [`sample_kept`] drew: the token, its log-prob under the distribution it was drawn
/// from, and that distribution's support when it was truncated.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The token.
    pub token: TokenId,
    /// Its log-probability (after temperature and truncation).
    pub logprob: f32,
    /// The support it was drawn from.
    pub support: Support,
}

/// The support a token was drawn from.
#[derive(Debug, Clone, PartialEq)]
pub enum Support {
    /// The whole vocabulary (no truncation, greedy, or the mask not kept).
    Full,
    /// These ids (in decreasing logit order).
    Kept(Vec<TokenId>),
    /// A truncated support larger than `max_support`: not recorded.
    Overflow,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            max_new_tokens: 64,
            seed: 0,
            stop_tokens: Vec::new(),
            stop_strings: Vec::new(),
            ignore_eos: false,
            keep_sampling_mask: true,
            max_support: 1024,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of up to `max_new_tokens`.
    pub fn greedy(max_new_tokens: usize) -> Self {
        SamplingParams {
            temperature: 0.0,
            max_new_tokens,
            ..Default::default()
        }
    }

    /// Checks every field, naming the one that is wrong.
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::config(
                "temperature",
                format!("must be ≥ 0 (0 is greedy), got {}", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::config(
                "top_p",
                format!("must lie in (0, 1], got {}", self.top_p),
            ));
        }
        if !(0.0..1.0).contains(&self.min_p) {
            return Err(Error::config(
                "min_p",
                format!("must lie in [0, 1), got {}", self.min_p),
            ));
        }
        if self.max_new_tokens == 0 {
            return Err(Error::config("max_new_tokens", "must be at least 1"));
        }
        if self.stop_strings.iter().any(|s| s.is_empty()) {
            return Err(Error::config("stop_strings", "an empty stop string"));
        }
        Ok(())
    }

    /// True when the sampler draws from a truncated subset of the vocabulary.
    pub fn truncates(&self) -> bool {
        self.top_k > 0 || self.top_p < 1.0 || self.min_p > 0.0
    }
}

/// Draws one token from `logits` (one row, raw model output) and returns it with its
/// log-probability under the distribution actually sampled from: softmax of
/// `logits / temperature`, restricted by top-k, min-p and top-p and renormalised. For greedy
/// decoding (temperature 0) the log-probability is that of the untempered softmax.
pub fn sample(
    logits: &[f32],
    params: &SamplingParams,
    rng: &mut impl Rng,
) -> Result<(TokenId, f32)> {
    let s = sample_kept(logits, params, rng)?;
    Ok((s.token, s.logprob))
}

/// [`sample`], also returning the support the token was drawn from when the request
/// truncates and keeps its sampling mask.
pub fn sample_kept(logits: &[f32], params: &SamplingParams, rng: &mut impl Rng) -> Result<Sampled> {
    let full = |(token, logprob): (TokenId, f32)| Sampled {
        token,
        logprob,
        support: Support::Full,
    };
    if logits.is_empty() {
        return Err(Error::invalid("sample: empty logits"));
    }
    if let Some(i) = logits
        .iter()
        .position(|x| x.is_nan() || *x == f32::INFINITY)
    {
        return Err(Error::NonFinite(format!("logit {i} is {}", logits[i])));
    }
    // Work in f64 so that the stored log-prob matches a recomputation to 1e-6.
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    if params.temperature == 0.0 {
        let (arg, _) =
            logits
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv {
                        (i, v)
                    } else {
                        (bi, bv)
                    }
                });
        let z: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
        return Ok(full((
            arg as TokenId,
            (logits[arg] as f64 - max - z.ln()) as f32,
        )));
    }
    let t = params.temperature as f64;
    let weight = |x: f32| ((x as f64 - max) / t).exp();
    if !params.truncates() {
        // Each weight once (an exp per token, not two): kept for the scan below.
        let weights: Vec<f64> = logits.iter().map(|&x| weight(x)).collect();
        let z: f64 = weights.iter().sum();
        let u = rng.random::<f64>() * z;
        let mut acc = 0.0;
        let mut chosen = logits.len() - 1;
        for (i, &w) in weights.iter().enumerate() {
            acc += w;
            if acc > u {
                chosen = i;
                break;
            }
        }
        let lp = (logits[chosen] as f64 - max) / t - z.ln();
        return Ok(full((chosen as TokenId, lp as f32)));
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if params.top_k > 0 {
        idx.truncate(params.top_k);
    }
    if params.min_p > 0.0 {
        // weight(max) = 1, so the threshold is min_p itself.
        idx.retain(|&i| weight(logits[i]) >= params.min_p as f64);
    }
    let z: f64 = idx.iter().map(|&i| weight(logits[i])).sum();
    if params.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = idx.len();
        for (n, &i) in idx.iter().enumerate() {
            acc += weight(logits[i]) / z;
            if acc >= params.top_p as f64 {
                keep = n + 1;
                break;
            }
        }
        idx.truncate(keep);
    }
    let z: f64 = idx.iter().map(|&i| weight(logits[i])).sum();
    let u = rng.random::<f64>() * z;
    let mut acc = 0.0;
    let mut chosen = *idx.last().expect("at least the top token is kept");
    for &i in &idx {
        acc += weight(logits[i]);
        if acc > u {
            chosen = i;
            break;
        }
    }
    let support = if !params.keep_sampling_mask {
        Support::Full
    } else if idx.len() > params.max_support {
        Support::Overflow
    } else {
        Support::Kept(idx.iter().map(|&i| i as TokenId).collect())
    };
    Ok(Sampled {
        token: chosen as TokenId,
        logprob: (weight(logits[chosen]) / z).ln() as f32,
        support,
    })
}
