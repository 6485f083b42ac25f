//! Writing checkpoints in the Hugging Face layout.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use alp_core::{Error, Result};
use candle_core::{DType, Device, Tensor};

use crate::Config;

/// Writes `config.json` (with `architectures` and `torch_dtype`) into `dir`.
pub fn write_config(cfg: &Config, dtype: DType, dir: &Path) -> Result<()> {
    let mut v = serde_json::to_value(cfg).map_err(|e| Error::Msg(e.to_string()))?;
    let o = v.as_object_mut().expect("config serialises to an object");
    o.insert(
        "architectures".into(),
        serde_json::json!([cfg.model_type.architecture()]),
    );
    let td = match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    };
    o.insert("torch_dtype".into(), serde_json::json!(td));
    if o.get("rope_theta").is_none() && o.get("rope_parameters").is_none() {
        o.insert("rope_theta".into(), serde_json::json!(cfg.rope_theta()));
    }
    if o.get("num_key_value_heads").is_none() {
        o.insert(
            "num_key_value_heads".into(),
            serde_json::json!(cfg.num_kv_heads()),
        );
    }
    let path = dir.join("config.json");
    let s = serde_json::to_string_pretty(&v).map_err(|e| Error::Msg(e.to_string()))?;
    alp_core::fsio::write_synced(&path, s.as_bytes())
}

/// Writes tensors to a safetensors file with `{"format": "pt"}` metadata (what transformers
/// expects). Tensors are moved to the CPU first.
pub fn write_safetensors(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let bytes = safetensors::serialize(cpu, Some(meta))
        .map_err(|e| Error::Msg(format!("cannot serialise {}: {e}", path.display())))?;
    alp_core::fsio::write_synced(path, &bytes)
}
