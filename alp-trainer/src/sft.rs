//! The SFT warm start of the embedded default: demonstrations, a warm-up + cosine learning
//! rate, one [`Trainer::sft_step`] per batch.

use crate::default_task;
use crate::trainer::Trainer;
use alp_core::Result;
use std::sync::atomic::{AtomicBool, Ordering};

/// The learning rate of SFT step `s`: linear warm-up to `lr`, then cosine decay to `0.1·lr`.
pub fn lr_at(cfg: &crate::config::SftSection, s: usize) -> f64 {
    if s < cfg.warmup {
        cfg.lr * (s + 1) as f64 / cfg.warmup as f64
    } else {
        let p = (s - cfg.warmup) as f64 / (cfg.steps - cfg.warmup).max(1) as f64;
        cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
    }
}

/// Runs the SFT warm start of `t` from step `start` (0, or where an interrupted SFT stopped);
/// `progress(step, loss)` is called after every step. Stops early (keeping what it learned)
/// when `stop` is set. Returns the loss of every step run.
pub fn run_sft(
    t: &mut Trainer,
    start: usize,
    stop: Option<&AtomicBool>,
    progress: &mut dyn FnMut(usize, f64),
) -> Result<Vec<f64>> {
    let sft = t.cfg.sft.clone();
    if sft.steps == 0 {
        return Ok(vec![]);
    }
    let tok = t.tokenizer.clone();
    let mut data =
        default_task::demonstration_stream(&tok, &t.cfg.tasks, sft.tool_fraction, t.cfg.seed);
    // Resuming: the stream is deterministic, so the batches already trained are skipped.
    for _ in 0..start * sft.batch_size {
        data.next().transpose()?;
    }
    let mut losses = Vec::new();
    for s in start..sft.steps {
        if stop.is_some_and(|f| f.load(Ordering::SeqCst)) {
            break;
        }
        let batch: Vec<_> = data.by_ref().take(sft.batch_size).collect::<Result<_>>()?;
        let loss = t.sft_step(&batch, lr_at(&sft, s))?;
        losses.push(loss);
        progress(s, loss);
    }
    Ok(losses)
}
