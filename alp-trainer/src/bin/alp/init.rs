//! `alp init`.
use std::path::Path;

use alp_model::{parse_dtype, Config, ModelWeights};
use anyhow::{bail, Result};
use candle_core::Device;

pub fn run(cfg: &Config, out: &Path, seed: u64, dtype: &str, force: bool) -> Result<()> {
    if out.join("model.safetensors").exists() && !force {
        bail!(
            "{} already holds a checkpoint; pass --force to overwrite it or choose another --out",
            out.display()
        );
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
