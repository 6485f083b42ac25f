//! LoRA adapters (low-rank updates of the projection weights) in PEFT's format.
//!
//! A target projection `y = x·Wᵀ` becomes `y = x·Wᵀ + (α/r)·(x·Aᵀ)·Bᵀ` with `A: [r, in]`
//! and `B: [out, r]`; `W` stays frozen. [`Adapter`] holds A and B by PEFT's module names
//! (`model.layers.N.self_attn.q_proj.lora_A.weight`, …), initialised as PEFT does (A
//! Kaiming-uniform, B zero, so a fresh adapter changes nothing), and reads and writes PEFT's
//! directory (`adapter_config.json` + `adapter_model.safetensors`, keys prefixed
//! `base_model.model.`), so an adapter trained here loads with `PeftModel.from_pretrained` on
//! the same base and one PEFT saved loads here.

use crate::Config;
use alp_core::{Error, Result};
use candle_core::{DType, Device, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The projections an adapter may target (PEFT's module names).
pub const TARGET_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The prefix PEFT gives every key of `adapter_model.safetensors` (a `PeftModel` wraps the
/// causal LM as `base_model.model`).
pub const PEFT_PREFIX: &str = "base_model.model.";

/// LoRA settings (`model.lora` in a run's config): PEFT's `r`, `lora_alpha`, `lora_dropout`
/// and `target_modules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank; 0 turns LoRA off (every weight trains).
    pub r: usize,
    /// Scale numerator: the update is scaled by `alpha / r`.
    pub alpha: f64,
    /// Dropout on the adapter's input. Only 0 is supported: a dropout mask in the update's
    /// forward would make the trained policy differ from the one the ratio compares.
    pub dropout: f64,
    /// The projections that get an adapter (PEFT's names, [`TARGET_MODULES`]).
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 0,
            alpha: 32.0,
            dropout: 0.0,
            target_modules: TARGET_MODULES.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl LoraConfig {
    /// Whether LoRA is on (`r` > 0).
    pub fn is_on(&self) -> bool {
        self.r > 0
    }

    /// The factor of the low-rank update, `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.r.max(1) as f64
    }

    /// Checks the settings; errors name the `model.lora` field and the fix.
    pub fn validate(&self) -> Result<()> {
        if !self.is_on() {
            return Ok(());
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::config(
                "model.lora.alpha",
                format!("{} must be a positive number", self.alpha),
            ));
        }
        if self.dropout != 0.0 {
            return Err(Error::config(
                "model.lora.dropout",
                format!(
                    "{} is not supported: only 0 (a dropout mask in the update would make the trained policy differ from the one its ratio compares); set it to 0",
                    self.dropout
                ),
            ));
        }
        if self.target_modules.is_empty() {
            return Err(Error::config(
                "model.lora.target_modules",
                format!("is empty; name some of {}", TARGET_MODULES.join(", ")),
            ));
        }
        for m in &self.target_modules {
            if !TARGET_MODULES.contains(&m.as_str()) {
                return Err(Error::config(
                    "model.lora.target_modules",
                    format!("unknown module `{m}`; known: {}", TARGET_MODULES.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// The adapted projections of a model of shape `cfg`: (module path, in features, out
    /// features), layer by layer in [`TARGET_MODULES`] order.
    pub fn modules(&self, cfg: &Config) -> Vec<(String, usize, usize)> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let q = cfg.num_attention_heads * cfg.head_dim();
        let kv = cfg.num_kv_heads() * cfg.head_dim();
        let mut out = Vec::new();
        for layer in 0..cfg.num_hidden_layers {
            for m in TARGET_MODULES {
                if !self.target_modules.iter().any(|t| t == m) {
                    continue;
                }
                let (group, fan_in, fan_out) = match m {
                    "q_proj" => ("self_attn", h, q),
                    "k_proj" | "v_proj" => ("self_attn", h, kv),
                    "o_proj" => ("self_attn", q, h),
                    "gate_proj" | "up_proj" => ("mlp", h, i),
                    _ => ("mlp", i, h),
                };
                out.push((format!("model.layers.{layer}.{group}.{m}"), fan_in, fan_out));
            }
        }
        out
    }
}

/// The name of a module's A (`lora_A.weight`, `[r, in]`) in an [`Adapter`].
pub fn a_name(module: &str) -> String {
    format!("{module}.lora_A.weight")
}

/// The name of a module's B (`lora_B.weight`, `[out, r]`) in an [`Adapter`].
pub fn b_name(module: &str) -> String {
    format!("{module}.lora_B.weight")
}

/// A LoRA adapter: its settings and its A and B matrices by module name (without PEFT's
/// prefix: `model.layers.0.self_attn.q_proj.lora_A.weight`).
#[derive(Debug, Clone)]
pub struct Adapter {
    /// Rank, scale and targets.
    pub config: LoraConfig,
    /// A and B of every adapted module.
    pub tensors: BTreeMap<String, Tensor>,
}

impl Adapter {
    /// A fresh adapter for a model of shape `model`, as PEFT initialises one: each A
    /// Kaiming-uniform (`a = √5`, i.e. uniform in ±1/√in), each B zero; deterministic in
    /// `seed`.
    pub fn init(
        model: &Config,
        config: &LoraConfig,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        if !config.is_on() {
            return Err(Error::config(
                "model.lora.r",
                "is 0 (LoRA off): an adapter needs a rank of at least 1",
            ));
        }
        let mut rng = crate::perturbation::seeded_rng(seed);
        let mut tensors = BTreeMap::new();
        for (module, fan_in, fan_out) in config.modules(model) {
            let bound = 1.0 / (fan_in as f32).sqrt();
            let a: Vec<f32> = (0..config.r * fan_in)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            let a = Tensor::from_vec(a, (config.r, fan_in), device)?.to_dtype(dtype)?;
            let b = Tensor::zeros((fan_out, config.r), dtype, device)?;
            tensors.insert(a_name(&module), a);
            tensors.insert(b_name(&module), b);
        }
        Ok(Adapter {
            config: config.clone(),
            tensors,
        })
    }

    /// Checks that every adapted module of `model` has an A and a B of the right shape and
    /// that nothing else is there; `origin` names where the adapter came from.
    pub fn check(&self, model: &Config, origin: &Path) -> Result<()> {
        let modules = self.config.modules(model);
        let mut expected = BTreeMap::new();
        for (m, fan_in, fan_out) in &modules {
            expected.insert(a_name(m), vec![self.config.r, *fan_in]);
            expected.insert(b_name(m), vec![*fan_out, self.config.r]);
        }
        for (name, shape) in &expected {
            let Some(t) = self.tensors.get(name) else {
                return Err(Error::MissingTensor {
                    name: format!("{PEFT_PREFIX}{name}"),
                    file: origin.to_path_buf(),
                });
            };
            if t.dims() != shape.as_slice() {
                return Err(Error::TensorShape {
                    name: format!("{PEFT_PREFIX}{name}"),
                    file: origin.to_path_buf(),
                    expected: shape.clone(),
                    got: t.dims().to_vec(),
                });
            }
        }
        if let Some(extra) = self.tensors.keys().find(|k| !expected.contains_key(*k)) {
            return Err(Error::Parse {
                path: origin.to_path_buf(),
                message: format!(
                    "tensor `{PEFT_PREFIX}{extra}` is not an adapter of this model's {} (a different base, or modules alp does not adapt)",
                    self.config.target_modules.join(", ")
                ),
            });
        }
        Ok(())
    }

    /// A deep copy in `dtype` on `device`.
    pub fn snapshot(&self, dtype: DType, device: &Device) -> Result<Self> {
        let tensors = self
            .tensors
            .iter()
            .map(|(k, t)| {
                let c = t.detach().to_device(device)?.to_dtype(dtype)?;
                let c = if c.dtype() == t.dtype() { c.copy()? } else { c };
                Ok((k.clone(), c))
            })
            .collect::<Result<_>>()?;
        Ok(Adapter {
            config: self.config.clone(),
            tensors,
        })
    }

    /// The merged weight `W + (α/r)·B·A` of `module`, computed in f32 and returned in `w`'s
    /// dtype.
    pub fn merge_into(&self, module: &str, w: &Tensor) -> Result<Tensor> {
        let (Some(a), Some(b)) = (
            self.tensors.get(&a_name(module)),
            self.tensors.get(&b_name(module)),
        ) else {
            return Ok(w.clone());
        };
        let f = |t: &Tensor| t.to_dtype(DType::F32);
        let delta = (f(b)?.matmul(&f(a)?)? * self.config.scale())?;
        Ok((f(w)? + delta.to_device(w.device())?)?.to_dtype(w.dtype())?)
    }

    /// Writes PEFT's adapter directory into `dir` (created): `adapter_config.json` (LORA,
    /// CAUSAL_LM, `base_model_name_or_path` = `base`) and `adapter_model.safetensors` (keys
    /// prefixed [`PEFT_PREFIX`]), each flushed to the disk.
    pub fn save_peft(&self, dir: &Path, base: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::file_op("create", dir, e))?;
        let cfg = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base,
            "r": self.config.r,
            "lora_alpha": self.config.alpha,
            "lora_dropout": self.config.dropout,
            "target_modules": self.config.target_modules,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "use_rslora": false,
            "use_dora": false,
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
        });
        let text = serde_json::to_string_pretty(&cfg).map_err(|e| Error::Msg(e.to_string()))?;
        alp_core::fsio::write_synced(&dir.join("adapter_config.json"), text.as_bytes())?;
        let prefixed: BTreeMap<String, Tensor> = self
            .tensors
            .iter()
            .map(|(k, t)| (format!("{PEFT_PREFIX}{k}"), t.clone()))
            .collect();
        crate::save::write_safetensors(&prefixed, &dir.join("adapter_model.safetensors"))
    }

    /// Reads PEFT's adapter directory `dir` for a model of shape `model`, in `dtype` on
    /// `device`. Settings alp does not implement (DoRA, rsLoRA, per-module ranks, bias
    /// training, extra trained modules, a subset of layers) are refused by name.
    pub fn load_peft(dir: &Path, model: &Config, dtype: DType, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Parse {
            path: cfg_path.clone(),
            message: e.to_string(),
        })?;
        let bad = |field: &str, why: String| Error::Parse {
            path: cfg_path.clone(),
            message: format!("`{field}`: {why}"),
        };
        match v.get("peft_type").and_then(|t| t.as_str()) {
            Some("LORA") | None => {}
            Some(other) => {
                return Err(bad(
                    "peft_type",
                    format!("is {other}; alp reads LORA adapters"),
                ))
            }
        }
        let r = v
            .get("r")
            .and_then(|x| x.as_u64())
            .ok_or_else(|| bad("r", "missing or not a positive integer".into()))?
            as usize;
        let alpha = v.get("lora_alpha").and_then(|x| x.as_f64()).unwrap_or(8.0);
        for flag in ["use_dora", "use_rslora", "fan_in_fan_out"] {
            if v.get(flag).and_then(|x| x.as_bool()) == Some(true) {
                return Err(bad(flag, "is true; alp implements plain LoRA only".into()));
            }
        }
        for field in ["rank_pattern", "alpha_pattern"] {
            if v.get(field)
                .and_then(|x| x.as_object())
                .is_some_and(|o| !o.is_empty())
            {
                return Err(bad(
                    field,
                    "per-module ranks or scales are not supported".into(),
                ));
            }
        }
        for field in ["modules_to_save", "layers_to_transform"] {
            if v.get(field).is_some_and(|x| !x.is_null()) {
                return Err(bad(
                    field,
                    "is set; alp adapts every layer's projections only".into(),
                ));
            }
        }
        if let Some(b) = v.get("bias").and_then(|x| x.as_str()) {
            if b != "none" {
                return Err(bad(
                    "bias",
                    format!("is `{b}`; alp trains no biases (\"none\")"),
                ));
            }
        }
        let target_modules: Vec<String> = match v.get("target_modules") {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|m| {
                    m.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad("target_modules", "holds a non-string".into()))
                })
                .collect::<Result<_>>()?,
            Some(serde_json::Value::String(s)) if s == "all-linear" => {
                TARGET_MODULES.iter().map(|s| s.to_string()).collect()
            }
            other => {
                return Err(bad(
                    "target_modules",
                    format!("{other:?}: expected a list of module names"),
                ))
            }
        };
        // `lora_dropout` is read as 0: dropout acts in training only, never in the forward of
        // a trained adapter, and alp trains without it.
        let config = LoraConfig {
            r,
            alpha,
            dropout: 0.0,
            target_modules,
        };
        config
            .validate()
            .map_err(|e| bad("target_modules", e.to_string()))?;
        let file = dir.join("adapter_model.safetensors");
        if !file.is_file() {
            return Err(Error::MissingFile {
                path: file,
                hint: "an adapter directory holds adapter_model.safetensors beside adapter_config.json".into(),
            });
        }
        let loaded = candle_core::safetensors::load(&file, device).map_err(|e| Error::Parse {
            path: file.clone(),
            message: format!("not a valid safetensors file: {e}"),
        })?;
        let mut tensors = BTreeMap::new();
        for (k, t) in loaded {
            // PEFT drops the adapter's name ("default") when it saves; a few writers keep it.
            let name = k.strip_prefix(PEFT_PREFIX).unwrap_or(&k);
            let name = name
                .replace(".lora_A.default.weight", ".lora_A.weight")
                .replace(".lora_B.default.weight", ".lora_B.weight");
            tensors.insert(name, t.to_dtype(dtype)?);
        }
        let adapter = Adapter { config, tensors };
        adapter.check(model, &file)?;
        Ok(adapter)
    }

    /// The number of trainable parameters.
    pub fn num_parameters(&self) -> usize {
        self.tensors.values().map(|t| t.elem_count()).sum()
    }
}

/// The models of successive adapter versions over one frozen base (a rollout engine's view of
/// a LoRA run): the base model is built once, in the engine's dtype, and each version's model
/// is a clone of it (sharing its weights and the packed copies its decode kernels make on
/// first use) with that version's adapter attached. Weights without an adapter are built as
/// they are.
#[derive(Debug, Default, Clone)]
pub struct AdapterModels {
    /// The base's identity (its embedding tensor's id, the dtype) and its model.
    base: Option<((candle_core::TensorId, DType), crate::Model)>,
}

impl AdapterModels {
    /// The model of `weights` in `dtype` on `device`.
    pub fn build(
        &mut self,
        weights: &crate::ModelWeights,
        dtype: DType,
        device: &Device,
    ) -> Result<crate::Model> {
        let Some(adapter) = &weights.adapter else {
            self.base = None;
            let ready = weights
                .tensors
                .values()
                .all(|t| t.dtype() == dtype && t.device().same_device(device));
            return if ready {
                weights.build()
            } else {
                weights.snapshot(dtype, device)?.build()
            };
        };
        let key = (weights.base_id()?, dtype);
        let base = match &self.base {
            Some((k, m)) if *k == key && m.device().same_device(device) => m.clone(),
            _ => {
                let plain = crate::ModelWeights {
                    config: weights.config.clone(),
                    tensors: weights.tensors.clone(),
                    adapter: None,
                };
                let m = plain.snapshot(dtype, device)?.build()?;
                self.base = Some((key, m.clone()));
                m
            }
        };
        let mut model = base;
        model.attach_adapter(&adapter.snapshot(dtype, device)?)?;
        Ok(model)
    }
}
