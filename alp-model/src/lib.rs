//! `alp-model` loads and saves Hugging Face Qwen2/Llama/Qwen3 checkpoints and runs them as a
//! candle decoder with an explicit KV cache and the layerwise perturbation hook of ALP.
//!
//! Two numeric paths share one set of weights: [`Numerics::Inference`] (candle's fused RMSNorm and
//! rotary kernels, alp's one-pass attention and packed products, none with a backward) for
//! inference and rollouts, and [`Numerics::Training`] for training (alp's own fused
//! kernels with a backward, held by tests to [`Numerics::Reference`], their composition from
//! candle ops). The kernels are the crate's own (not public): each instruction-set variant runs
//! only where a CPU check found that instruction set.
//!
//! ```
//! use alp_model::{presets, ModelWeights, NoPerturbation};
//! use candle_core::{DType, Device, Tensor};
//!
//! let cfg = presets::tiny();
//! let model = ModelWeights::random(&cfg, 0, DType::F32, &Device::Cpu)?.build()?;
//! let ids = Tensor::new(&[[1u32, 5, 9, 33]], &Device::Cpu)?;
//! let mut cache = model.new_cache(16, &[]);
//! let logits = model.forward_cached(&ids, &mut cache, &NoPerturbation)?;
//! assert_eq!(logits.dims(), &[1, 4, cfg.vocab_size]);
//! assert_eq!(cache.len(), 4);
//! # Ok::<(), alp_core::Error>(())
//! ```
#![warn(missing_docs)]
// A library prints nothing: what it has to say goes back to its caller.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod config;
pub mod decoder;
mod kernels;
pub mod kv_cache;
pub mod loader;
pub mod logprobs;
pub mod lora;
mod mask;
pub mod perturbation;
pub mod rope;
pub mod save;
pub mod tokenizer;

pub use config::{presets, Config, ModelType};
pub use decoder::{Checkpointed, Model, Numerics, TrainingForward};
pub use kv_cache::KvCache;
pub use loader::{expected_tensors, resolve_model_dir, weight_files, ModelWeights};
pub use logprobs::{sequence_logprobs, token_logprobs};
pub use lora::{Adapter, AdapterModels, LoraConfig};
pub use perturbation::{
    seeded_rng, KeyedGaussian, LayerSelection, LayerwiseGaussian, NoPerturbation, Perturbation,
    PerturbationConfig, SigmaMode,
};
pub use tokenizer::Tokenizer;

pub use kernels::gemm::{half_precision_kernel, single_threaded, SMALL_M_ROWS};

/// alp's CPU kernels, for alp's own criterion benchmarks only (feature `bench-internals`):
/// not an API, no stability promised.
#[cfg(feature = "bench-internals")]
#[doc(hidden)]
pub mod bench_internals {
    pub use crate::kernels::{attention, fused, gemm};
}

use std::path::Path;

use alp_core::Result;
use candle_core::{DType, Device};

/// Parses a dtype name: `f32`, `bf16` or `f16`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        _ => Err(alp_core::Error::config(
            "dtype",
            format!("unknown dtype `{s}`; known: f32, bf16, f16"),
        )),
    }
}

/// Parses a device name: `cpu` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    if let Some(n) = s.strip_prefix("cuda") {
        let ord = n.trim_start_matches(':');
        let ord: usize = if ord.is_empty() {
            0
        } else {
            ord.parse()
                .map_err(|_| alp_core::Error::config("device", format!("bad device `{s}`")))?
        };
        return Ok(Device::new_cuda(ord)?);
    }
    Err(alp_core::Error::config(
        "device",
        format!("unknown device `{s}`; use cpu or cuda:N"),
    ))
}

/// A loaded checkpoint: model, weights and (when the directory has one) tokenizer.
#[derive(Debug)]
pub struct Pretrained {
    /// The inference model.
    pub model: Model,
    /// Its weights.
    pub weights: ModelWeights,
    /// The tokenizer, if the directory has `tokenizer.json`.
    pub tokenizer: Option<Tokenizer>,
}

/// Loads a local directory or a cached Hugging Face repo id in `dtype` on `device`, checking
/// that the tokenizer (if any) fits the model.
pub fn load_pretrained(spec: &str, dtype: DType, device: &Device) -> Result<Pretrained> {
    let dir = resolve_model_dir(spec)?;
    load_dir(&dir, dtype, device)
}

fn load_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Pretrained> {
    let weights = ModelWeights::load(dir, dtype, device)?;
    let tokenizer = Tokenizer::load(dir)?;
    if let Some(t) = &tokenizer {
        t.check_fits(&weights.config)?;
    }
    let model = weights.build()?;
    Ok(Pretrained {
        model,
        weights,
        tokenizer,
    })
}
