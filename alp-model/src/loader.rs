//! Finding, validating and loading Hugging Face checkpoints; random initialisation; saving.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use alp_core::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand_distr::{Distribution, Normal};

use crate::{Config, Model};

/// The tensors a config needs, with their Hugging Face names and shapes.
pub fn expected_tensors(cfg: &Config) -> Vec<(String, Vec<usize>)> {
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (hd, nh, nkv) = (cfg.head_dim(), cfg.num_attention_heads, cfg.num_kv_heads());
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let mut push = |n: &str, s: Vec<usize>| out.push((format!("{p}.{n}"), s));
        push("input_layernorm.weight", vec![h]);
        push("post_attention_layernorm.weight", vec![h]);
        push("self_attn.q_proj.weight", vec![nh * hd, h]);
        push("self_attn.k_proj.weight", vec![nkv * hd, h]);
        push("self_attn.v_proj.weight", vec![nkv * hd, h]);
        push("self_attn.o_proj.weight", vec![h, nh * hd]);
        if cfg.qkv_bias() {
            push("self_attn.q_proj.bias", vec![nh * hd]);
            push("self_attn.k_proj.bias", vec![nkv * hd]);
            push("self_attn.v_proj.bias", vec![nkv * hd]);
        }
        if cfg.o_bias() {
            push("self_attn.o_proj.bias", vec![h]);
        }
        if cfg.qk_norm() {
            push("self_attn.q_norm.weight", vec![hd]);
            push("self_attn.k_norm.weight", vec![hd]);
        }
        push("mlp.gate_proj.weight", vec![i, h]);
        push("mlp.up_proj.weight", vec![i, h]);
        push("mlp.down_proj.weight", vec![h, i]);
    }
    out.push(("model.norm.weight".into(), vec![h]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".into(), vec![v, h]));
    }
    out
}

/// Resolves a model spec: an existing local directory, or a Hugging Face repo id looked up in
/// the local cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`),
/// offline. Nothing is downloaded.
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    if p.exists() {
        return Err(Error::invalid(format!(
            "{spec} is a file; give the model directory that holds config.json"
        )));
    }
    let looks_like_repo =
        spec.split('/').count() == 2 && !spec.starts_with('.') && !spec.starts_with('/');
    if !looks_like_repo {
        return Err(Error::MissingFile {
            path: p.to_path_buf(),
            hint: "no such model directory (and not a `org/name` Hugging Face repo id)".into(),
        });
    }
    let cache = match std::env::var_os("HF_HUB_CACHE") {
        Some(c) => hf_hub::Cache::new(PathBuf::from(c)),
        None => hf_hub::Cache::from_env(),
    };
    match cache.model(spec.to_string()).get("config.json") {
        Some(cfg) => Ok(cfg
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))),
        None => Err(Error::MissingFile {
            path: cache.path().join(format!("models--{}", spec.replace('/', "--"))),
            hint: format!(
                "`{spec}` is not in the local Hugging Face cache; download it first (e.g. `huggingface-cli download {spec}`) or pass a local directory"
            ),
        }),
    }
}

/// The safetensors files of a checkpoint directory: the shards named by
/// `model.safetensors.index.json`, or the single `model.safetensors`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let s = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&s).map_err(|e| Error::Parse {
            path: index.clone(),
            message: e.to_string(),
        })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::Parse {
                path: index.clone(),
                message: "no `weight_map` object".into(),
            })?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(str::to_owned))
            .collect();
        files.sort();
        files.dedup();
        let mut out = vec![];
        for f in files {
            // A shard must be a plain file name inside the checkpoint directory.
            let plain = std::path::Path::new(&f)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain {
                return Err(Error::Parse {
                    path: index.clone(),
                    message: format!(
                        "shard `{f}` lies outside the checkpoint directory; shard names must be relative paths without `..`"
                    ),
                });
            }
            let p = dir.join(&f);
            if !p.exists() {
                return Err(Error::MissingFile {
                    path: p,
                    hint: format!("shard `{f}` is named by {} but absent", index.display()),
                });
            }
            out.push(p);
        }
        return Ok(out);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(Error::MissingFile {
        path: single,
        hint: "the directory has neither model.safetensors nor model.safetensors.index.json".into(),
    })
}

/// The named weights of a model: the currency between loading, training, saving and snapshots.
#[derive(Debug, Clone)]
pub struct ModelWeights {
    /// The config the tensors fit.
    pub config: Config,
    /// Tensors by Hugging Face name.
    pub tensors: BTreeMap<String, Tensor>,
    /// A LoRA adapter on these weights (the base), applied unmerged by [`ModelWeights::build`].
    pub adapter: Option<crate::lora::Adapter>,
}

impl ModelWeights {
    /// Loads and validates a checkpoint directory (config.json + safetensors), converting to
    /// `dtype` on `device`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::MissingFile {
                path: dir.to_path_buf(),
                hint: "model directory does not exist".into(),
            });
        }
        let config = Config::from_file(&dir.join("config.json"))?;
        let files = weight_files(dir)?;
        let mut where_is: HashMap<String, (usize, Vec<usize>)> = HashMap::new();
        let mut stores = Vec::with_capacity(files.len());
        for (fi, f) in files.iter().enumerate() {
            // SAFETY: the file is only read; a concurrent writer could corrupt the mapping,
            // which candle reports as a parse error rather than undefined reads of our own memory.
            let st =
                unsafe { candle_core::safetensors::MmapedSafetensors::new(f) }.map_err(|e| {
                    Error::Parse {
                        path: f.clone(),
                        message: format!("not a valid safetensors file: {e}"),
                    }
                })?;
            for (name, view) in st.tensors() {
                where_is.insert(name, (fi, view.shape().to_vec()));
            }
            stores.push(st);
        }
        let mut tensors = BTreeMap::new();
        let origin = if files.len() == 1 {
            files[0].clone()
        } else {
            dir.join("model.safetensors.index.json")
        };
        for (name, shape) in expected_tensors(&config) {
            let Some((fi, got)) = where_is.get(&name) else {
                return Err(Error::MissingTensor { name, file: origin });
            };
            if *got != shape {
                return Err(Error::TensorShape {
                    name,
                    file: files[*fi].clone(),
                    expected: shape,
                    got: got.clone(),
                });
            }
            let t = stores[*fi]
                .load(&name, device)
                .map_err(|e| Error::Parse {
                    path: files[*fi].clone(),
                    message: format!("tensor `{name}`: {e}"),
                })?
                .to_dtype(dtype)?;
            tensors.insert(name, t);
        }
        Ok(ModelWeights {
            config,
            tensors,
            adapter: None,
        })
    }

    /// Random weights for `cfg`: normal(0, initializer_range) matrices, unit norm weights,
    /// zero biases; deterministic in `seed`.
    pub fn random(cfg: &Config, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        cfg.validate()?;
        // Initialised in f32 on the host, then converted: both copies at once at worst.
        alp_core::memory::check_fits(
            "a config of num_parameters =",
            cfg.num_parameters(),
            4 + dtype.size_in_bytes() as u64,
            "its random weights",
            None,
        )?;
        let mut rng = crate::perturbation::seeded_rng(seed);
        let normal = Normal::new(0.0f32, cfg.initializer_range as f32)
            .map_err(|e| Error::config("initializer_range", e.to_string()))?;
        let mut tensors = BTreeMap::new();
        for (name, shape) in expected_tensors(cfg) {
            let n: usize = shape.iter().product();
            let t = if name.ends_with("norm.weight") {
                Tensor::ones(shape.as_slice(), DType::F32, device)?
            } else if name.ends_with(".bias") {
                Tensor::zeros(shape.as_slice(), DType::F32, device)?
            } else {
                let v: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
                Tensor::from_vec(v, shape.as_slice(), device)?
            };
            tensors.insert(name, t.to_dtype(dtype)?);
        }
        Ok(ModelWeights {
            config: cfg.clone(),
            tensors,
            adapter: None,
        })
    }

    /// The weights held by a trainable model's `VarMap` (shared storage, no copy).
    pub fn from_varmap(config: &Config, varmap: &VarMap) -> Result<Self> {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| Error::Msg("VarMap lock poisoned".into()))?;
        let tensors = data
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        Ok(ModelWeights {
            config: config.clone(),
            tensors,
            adapter: None,
        })
    }

    /// A copy in `dtype` on `device` (a weight snapshot for the rollout engine): every
    /// training variable and the adapter are copied; a frozen tensor (not a variable: a LoRA
    /// run's base) already in `dtype` on `device` is shared, since nothing changes it.
    pub fn snapshot(&self, dtype: DType, device: &Device) -> Result<Self> {
        let tensors = self
            .tensors
            .iter()
            .map(|(k, t)| {
                let c = t.detach().to_device(device)?.to_dtype(dtype)?;
                // to_dtype to the same dtype shares storage; force a real copy of a variable.
                let c = if c.dtype() == t.dtype() && t.is_variable() {
                    c.copy()?
                } else {
                    c
                };
                Ok((k.clone(), c))
            })
            .collect::<Result<_>>()?;
        Ok(ModelWeights {
            config: self.config.clone(),
            tensors,
            adapter: self
                .adapter
                .as_ref()
                .map(|a| a.snapshot(dtype, device))
                .transpose()?,
        })
    }

    /// An inference model over these tensors (no copy when the dtype already matches), with
    /// the adapter (if any) applied unmerged.
    pub fn build(&self) -> Result<Model> {
        let (dtype, device) = self.dtype_device()?;
        let map: HashMap<String, Tensor> = self
            .tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut model = Model::new(&self.config, VarBuilder::from_tensors(map, dtype, &device))?;
        if let Some(a) = &self.adapter {
            model.attach_adapter(a)?;
        }
        Ok(model)
    }

    /// A trainable model. Without an adapter every tensor becomes a `Var` (copied) in the
    /// returned `VarMap`; with one, only the adapter's A and B do (the base stays frozen and
    /// shared: no gradient, no optimizer state).
    pub fn build_trainable(&self) -> Result<(Model, VarMap)> {
        let (dtype, device) = self.dtype_device()?;
        let varmap = VarMap::new();
        let vars = match &self.adapter {
            Some(a) => &a.tensors,
            None => &self.tensors,
        };
        {
            let mut data = varmap
                .data()
                .lock()
                .map_err(|_| Error::Msg("VarMap lock poisoned".into()))?;
            for (k, t) in vars {
                data.insert(k.clone(), Var::from_tensor(&t.copy()?)?);
            }
        }
        if let Some(a) = &self.adapter {
            let trainable = ModelWeights {
                config: self.config.clone(),
                tensors: self.tensors.clone(),
                adapter: Some(crate::lora::Adapter {
                    config: a.config.clone(),
                    tensors: Self::from_varmap(&self.config, &varmap)?.tensors,
                }),
            };
            return Ok((trainable.build()?, varmap));
        }
        let model = Model::new(
            &self.config,
            VarBuilder::from_varmap(&varmap, dtype, &device),
        )?;
        Ok((model, varmap))
    }

    /// The weights with the adapter merged in (`W + (α/r)·B·A` for every adapted
    /// projection) and no adapter: a plain Hugging Face checkpoint's tensors.
    pub fn merged(&self) -> Result<Self> {
        let Some(a) = &self.adapter else {
            return Ok(self.clone());
        };
        let mut tensors = self.tensors.clone();
        for (module, _, _) in a.config.modules(&self.config) {
            let name = format!("{module}.weight");
            let w = tensors
                .get(&name)
                .ok_or_else(|| Error::invalid(format!("the base has no `{name}`")))?;
            let m = a.merge_into(&module, w)?;
            tensors.insert(name, m);
        }
        Ok(ModelWeights {
            config: self.config.clone(),
            tensors,
            adapter: None,
        })
    }

    /// The identity of these weights' base (its embedding tensor's id): clones and frozen
    /// snapshots of one base share it, so a consumer can build what depends on the base once.
    pub fn base_id(&self) -> Result<candle_core::TensorId> {
        self.tensors
            .get("model.embed_tokens.weight")
            .map(|t| t.id())
            .ok_or_else(|| Error::invalid("the base has no model.embed_tokens.weight"))
    }

    /// The dtype and device of the tensors.
    pub fn dtype_device(&self) -> Result<(DType, Device)> {
        let t = self
            .tensors
            .values()
            .next()
            .ok_or_else(|| Error::invalid("model weights are empty"))?;
        Ok((t.dtype(), t.device().clone()))
    }

    /// Writes `config.json` and `model.safetensors` (Hugging Face names, `format: pt`
    /// metadata) into `dir`, creating it: the base only (an adapter is written with
    /// [`crate::lora::Adapter::save_peft`]; [`ModelWeights::merged`] folds it in first).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::file_op("create", dir, e))?;
        crate::save::write_config(&self.config, self.dtype_device()?.0, dir)?;
        crate::save::write_safetensors(&self.tensors, &dir.join("model.safetensors"))
    }
}
