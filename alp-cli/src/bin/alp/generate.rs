//! `alp generate`: sample completions from a checkpoint.
use std::sync::Arc;

use alp_core::ChatMessage;
use alp_model::{load_pretrained, parse_device, parse_dtype};
use alp_rollout::{Engine, EngineConfig, Request, SamplingParams};
use anyhow::{Context, Result};

/// Options of `alp generate`.
pub struct Args {
    pub model: String,
    pub prompt: String,
    pub chat: bool,
    pub n: usize,
    pub params: SamplingParams,
    pub dtype: String,
    pub device: String,
}

pub fn run(a: Args) -> Result<()> {
    a.params
        .validate()
        .context("a sampling option (--temperature, --top-p, --max-new-tokens) is out of range")?;
    if a.n == 0 {
        anyhow::bail!("--n 0 asks for no completion; give --n 1 or more");
    }
    let device = parse_device(&a.device)?;
    let p = load_pretrained(&a.model, parse_dtype(&a.dtype)?, &device)?;
    let tok = p.tokenizer.with_context(|| {
        format!(
            "{} has no tokenizer.json; alp generate needs one to encode --prompt",
            a.model
        )
    })?;
    let text = if a.chat {
        tok.apply_chat_template(&[ChatMessage::new("user", &a.prompt)], true, None)?
    } else {
        a.prompt.clone()
    };
    let lost = tok.unrepresentable_chars(&a.prompt)?;
    if !lost.is_empty() {
        eprintln!(
            "warning: --prompt has characters outside the tokenizer's vocabulary, read as its unknown token: {}",
            lost.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(" ")
        );
    }
    let prompt = tok.encode(&text, !a.chat)?;
    // Every completion is held until printed: its prompt copy, tokens, log-probs and text.
    let each = 256 + 4 * prompt.len() as u64 + 16 * a.params.max_new_tokens as u64;
    alp_core::memory::check_fits("--n", a.n, each, "the completions it holds", None)?;
    let tok = Arc::new(tok);
    let engine =
        Engine::new(Arc::new(p.model), EngineConfig::default())?.with_tokenizer(tok.clone());
    let requests: Vec<Request> = (0..a.n)
        .map(|i| Request {
            prompt: prompt.clone(),
            params: SamplingParams {
                seed: a.params.seed.wrapping_add(i as u64),
                ..a.params.clone()
            },
        })
        .collect();
    for (i, c) in engine.generate(&requests)?.iter().enumerate() {
        let out = tok.decode(&c.tokens, true)?;
        let mean_lp = c.logprobs.iter().sum::<f32>() / c.logprobs.len().max(1) as f32;
        println!(
            "--- completion {i} ({} tokens, stop: {}, mean log-prob {mean_lp:.3})",
            c.tokens.len(),
            c.finish_reason
        );
        println!("{out}");
    }
    Ok(())
}
