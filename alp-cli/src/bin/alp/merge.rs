//! `alp merge`: a LoRA adapter folded into its base, written as a plain Hugging Face checkpoint.
use std::path::{Path, PathBuf};

use alp_model::{parse_dtype, Adapter, ModelWeights, Tokenizer};
use alp_trainer::checkpoint;
use anyhow::{bail, Context, Result};
use candle_core::Device;

/// Merges the adapter of `source` (a LoRA run directory or checkpoint, or a PEFT adapter
/// directory whose base is `base` or its `base_model_name_or_path`) into its base and writes
/// `config.json`, `model.safetensors` and the tokenizer to `out`.
pub fn run(source: &Path, base: Option<&str>, out: &Path, dtype: &str, force: bool) -> Result<()> {
    let dtype = parse_dtype(dtype)?;
    let dev = Device::Cpu;
    let (weights, tokenizer_dir) = if source.join("adapter_config.json").is_file() {
        let base = match base {
            Some(b) => b.to_string(),
            None => peft_base(source)?,
        };
        let mut w = ModelWeights::load(&alp_model::resolve_model_dir(&base)?, dtype, &dev)
            .with_context(|| format!("loading the base {base} (give another with --base)"))?;
        w.adapter = Some(Adapter::load_peft(source, &w.config, dtype, &dev)?);
        let tok = if source.join("tokenizer.json").is_file() {
            source.to_path_buf()
        } else {
            alp_model::resolve_model_dir(&base)?
        };
        (w, tok)
    } else {
        if base.is_some() {
            bail!("--base is for a PEFT adapter directory; {} is a run or checkpoint, whose base its manifest names", source.display());
        }
        let ck = checkpoint::latest(source)?;
        let w = checkpoint::load_weights(&ck, dtype, &dev)?;
        (w, checkpoint::tokenizer_dir(&ck))
    };
    let Some(a) = &weights.adapter else {
        bail!(
            "{} holds a full model, not a LoRA adapter: there is nothing to merge",
            source.display()
        );
    };
    let (r, alpha) = (a.config.r, a.config.alpha);
    alp_trainer::claim_dir(out, force)?;
    weights.merged()?.save(out)?;
    if let Some(tok) = Tokenizer::load(&tokenizer_dir)? {
        tok.save(out)?;
    }
    println!(
        "merged a rank-{r} adapter (alpha {alpha}) into its base; wrote {}",
        out.display()
    );
    Ok(())
}

/// The `base_model_name_or_path` of a PEFT adapter directory.
fn peft_base(dir: &Path) -> Result<String> {
    let p: PathBuf = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
    match v.get("base_model_name_or_path").and_then(|b| b.as_str()) {
        Some(b) if !b.is_empty() => Ok(b.to_string()),
        _ => bail!(
            "{} names no base_model_name_or_path: give the base with --base",
            p.display()
        ),
    }
}
