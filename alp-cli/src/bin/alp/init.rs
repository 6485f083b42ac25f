//! `alp init`.
use std::path::Path;

use alp_model::{parse_dtype, Config, ModelWeights};
use anyhow::{bail, Result};
use candle_core::Device;

pub fn run(cfg: &Config, out: &Path, seed: u64, dtype: &str, force: bool) -> Result<()> {
    let holds =
        out.join("model.safetensors").exists() || out.join("model.safetensors.index.json").exists();
    if holds && !force {
        bail!(
            "{} already holds a checkpoint; pass --force to overwrite it or choose another --out",
            out.display()
        );
    }
    if holds {
        // The old weights must go, shards and index included: the loader prefers an index.
        for f in alp_model::weight_files(out).unwrap_or_default() {
            std::fs::remove_file(&f)?;
        }
        for f in ["model.safetensors.index.json", "model.safetensors"] {
            let p = out.join(f);
            if p.exists() {
                std::fs::remove_file(&p)?;
            }
        }
    }
    let w = ModelWeights::random(cfg, seed, parse_dtype(dtype)?, &Device::Cpu)?;
    w.save(out)?;
    eprintln!(
        "wrote {} ({} parameters, {:?}) to {}",
        cfg.model_type.architecture(),
        cfg.num_parameters(),
        cfg.model_type,
        out.display()
    );
    Ok(())
}

/// Writes a fresh LoRA adapter of rank `r` (alpha 2r, every projection) for `cfg` to
/// `out/adapter`, in PEFT's format.
pub fn adapter(cfg: &Config, out: &Path, r: usize, seed: u64, dtype: &str) -> Result<()> {
    let lc = alp_model::LoraConfig {
        r,
        alpha: 2.0 * r as f64,
        ..Default::default()
    };
    let a = alp_model::Adapter::init(cfg, &lc, seed, parse_dtype(dtype)?, &Device::Cpu)?;
    let dir = out.join("adapter");
    a.save_peft(&dir, &out.display().to_string())?;
    eprintln!(
        "wrote a rank-{r} adapter ({} parameters) to {}",
        a.num_parameters(),
        dir.display()
    );
    Ok(())
}
