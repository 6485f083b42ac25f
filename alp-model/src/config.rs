//! The model configuration, read straight from a Hugging Face `config.json`.
use std::path::Path;

use alp_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// Which architecture family a checkpoint belongs to (`model_type` in `config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelType {
    /// Qwen2 / Qwen2.5: q/k/v projections carry a bias, o_proj does not.
    Qwen2,
    /// Llama 2/3 family: biases follow `attention_bias` (o_proj included).
    Llama,
    /// Qwen3: per-head RMSNorm on q and k; biases follow `attention_bias`.
    Qwen3,
}

impl ModelType {
    /// The `architectures` entry transformers expects.
    pub fn architecture(self) -> &'static str {
        match self {
            ModelType::Qwen2 => "Qwen2ForCausalLM",
            ModelType::Llama => "LlamaForCausalLM",
            ModelType::Qwen3 => "Qwen3ForCausalLM",
        }
    }
    const KNOWN: &'static str = "qwen2, llama, qwen3";
}

fn default_rms_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    32768
}
fn default_act() -> String {
    "silu".into()
}
fn default_init_range() -> f64 {
    0.02
}

/// A decoder config, field names as in Hugging Face `config.json`.
///
/// Derived values (head dim, biases) sit behind methods; [`Config::validate`] rejects
/// impossible shapes naming the field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Architecture family.
    pub model_type: ModelType,
    /// Vocabulary size (rows of the embedding table).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (GQA); defaults to `num_attention_heads` (MHA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to `hidden_size / num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Maximum context length.
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// Rotary base at the top level (older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Rotary parameters (newer transformers put `rope_theta` here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    /// Rotary scaling (only `null` / `default` is supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    /// Whether the LM head shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Attention projection biases for Llama/Qwen3 (Qwen2 always has q/k/v bias).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_bias: Option<bool>,
    /// MLP biases (must be false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_bias: Option<bool>,
    /// Activation (must be `silu`).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Std of the normal initialisation.
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// Beginning-of-sequence token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token id(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<serde_json::Value>,
    /// Sliding-window flag of Qwen2 configs (must be false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
}

impl Config {
    /// Parses a `config.json` string; `origin` names the file in errors.
    pub fn from_json_str(s: &str, origin: &Path) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(s).map_err(|e| Error::Parse {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        match v.get("model_type").and_then(|m| m.as_str()) {
            None => {
                return Err(Error::config(
                    "model_type",
                    format!(
                        "{} has no `model_type`; known: {}",
                        origin.display(),
                        ModelType::KNOWN
                    ),
                ))
            }
            Some(m) if !["qwen2", "llama", "qwen3"].contains(&m) => {
                return Err(Error::config(
                    "model_type",
                    format!(
                        "{} has model_type `{m}`, which alp does not implement; known: {}",
                        origin.display(),
                        ModelType::KNOWN
                    ),
                ))
            }
            _ => {}
        }
        let cfg: Config = serde_json::from_value(v).map_err(|e| Error::Parse {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and validates `config.json` at `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::MissingFile {
                path: path.to_path_buf(),
                hint: "a Hugging Face model directory needs config.json".into(),
            });
        }
        let s = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&s, path)
    }

    /// Number of key/value heads.
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width: `head_dim` when given, else 128 for Qwen3 (transformers' default for
    /// that family), else `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        match (self.head_dim, self.model_type) {
            (Some(d), _) => d,
            (None, ModelType::Qwen3) => 128,
            (None, _) => self.hidden_size / self.num_attention_heads.max(1),
        }
    }

    /// Rotary base: `rope_parameters.rope_theta`, else the top-level `rope_theta`, else 10000.
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(|t| t.as_f64())
            .or(self.rope_theta)
            .unwrap_or(10_000.0)
    }

    /// Whether q/k/v projections have a bias.
    pub fn qkv_bias(&self) -> bool {
        match self.model_type {
            ModelType::Qwen2 => true,
            _ => self.attention_bias.unwrap_or(false),
        }
    }

    /// Whether o_proj has a bias.
    pub fn o_bias(&self) -> bool {
        match self.model_type {
            ModelType::Qwen2 => false,
            _ => self.attention_bias.unwrap_or(false),
        }
    }

    /// Whether attention applies per-head RMSNorm to q and k (Qwen3).
    pub fn qk_norm(&self) -> bool {
        self.model_type == ModelType::Qwen3
    }

    /// EOS ids named by the config.
    pub fn eos_ids(&self) -> Vec<u32> {
        ids_from_json(self.eos_token_id.as_ref())
    }

    /// Total number of parameters (saturating: an absurd config gives `usize::MAX`, not an
    /// overflow).
    pub fn num_parameters(&self) -> usize {
        crate::loader::expected_tensors(self)
            .iter()
            .map(|(_, s)| s.iter().fold(1usize, |a, &d| a.saturating_mul(d)))
            .fold(0, usize::saturating_add)
    }

    /// Rejects impossible shapes and unsupported options, naming the field.
    pub fn validate(&self) -> Result<()> {
        let pos = |field: &str, v: usize| {
            if v == 0 {
                Err(Error::config(field, "must be positive"))
            } else {
                Ok(())
            }
        };
        pos("vocab_size", self.vocab_size)?;
        pos("hidden_size", self.hidden_size)?;
        pos("intermediate_size", self.intermediate_size)?;
        pos("num_hidden_layers", self.num_hidden_layers)?;
        pos("num_attention_heads", self.num_attention_heads)?;
        pos("num_key_value_heads", self.num_kv_heads())?;
        pos("max_position_embeddings", self.max_position_embeddings)?;
        if self.head_dim.is_none()
            && self.model_type != ModelType::Qwen3
            && !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(Error::config(
                "num_attention_heads",
                format!(
                    "hidden_size {} is not divisible by num_attention_heads {} (give head_dim explicitly)",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        let hd = self.head_dim();
        if hd == 0 || !hd.is_multiple_of(2) {
            return Err(Error::config(
                "head_dim",
                format!("{hd} must be positive and even (rotary embeddings rotate pairs)"),
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_kv_heads()) {
            return Err(Error::config(
                "num_key_value_heads",
                format!(
                    "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                    self.num_attention_heads,
                    self.num_kv_heads()
                ),
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return Err(Error::config("rms_norm_eps", "must lie in (0, 1)"));
        }
        let theta = self.rope_theta();
        if !(theta.is_finite() && theta > 1.0) {
            return Err(Error::config("rope_theta", format!("{theta} must be > 1")));
        }
        if self.hidden_act != "silu" {
            return Err(Error::config(
                "hidden_act",
                format!("`{}` is not supported; only silu (SwiGLU)", self.hidden_act),
            ));
        }
        if self.mlp_bias == Some(true) {
            return Err(Error::config("mlp_bias", "MLP biases are not supported"));
        }
        if self.use_sliding_window == Some(true) {
            return Err(Error::config(
                "use_sliding_window",
                "sliding-window attention is not supported",
            ));
        }
        let rope_type = |v: &serde_json::Value| {
            v.get("rope_type")
                .or_else(|| v.get("type"))
                .and_then(|t| t.as_str())
                .map(str::to_owned)
        };
        for (field, v) in [
            ("rope_scaling", &self.rope_scaling),
            ("rope_parameters", &self.rope_parameters),
        ] {
            if let Some(v) = v {
                if v.is_null() {
                    continue;
                }
                if let Some(t) = rope_type(v) {
                    if t != "default" {
                        return Err(Error::config(
                            field,
                            format!("rope_type `{t}` is not supported (only default rotary)"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reads a token id or a list of token ids from a JSON value.
pub(crate) fn ids_from_json(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
        _ => vec![],
    }
}

/// Named shapes used by tests, benches and `alp init --preset`.
pub mod presets {
    use super::*;

    fn base(
        model_type: ModelType,
        vocab: usize,
        hidden: usize,
        inter: usize,
        layers: usize,
        heads: usize,
        kv: usize,
    ) -> Config {
        Config {
            model_type,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv),
            head_dim: None,
            max_position_embeddings: 4096,
            rms_norm_eps: 1e-6,
            rope_theta: Some(10_000.0),
            rope_parameters: None,
            rope_scaling: None,
            tie_word_embeddings: true,
            attention_bias: None,
            mlp_bias: None,
            hidden_act: "silu".into(),
            initializer_range: 0.02,
            bos_token_id: None,
            eos_token_id: None,
            use_sliding_window: None,
        }
    }

    /// A Qwen2 of a few thousand parameters for tests.
    pub fn tiny() -> Config {
        base(ModelType::Qwen2, 64, 32, 64, 2, 4, 2)
    }

    /// The ~25M-parameter Qwen2 used for speed figures (hidden 512, 8 layers, 8 heads, 4 KV heads, MLP 1408, vocab 2048).
    pub fn qwen2_25m() -> Config {
        let mut c = base(ModelType::Qwen2, 2048, 512, 1408, 8, 8, 4);
        c.tie_word_embeddings = false;
        c
    }

    /// The Qwen2.5-0.5B shape (random weights) for GPU benchmarks.
    pub fn qwen2_5_0_5b() -> Config {
        let mut c = base(ModelType::Qwen2, 151_936, 896, 4864, 24, 14, 2);
        c.rope_theta = Some(1_000_000.0);
        c.max_position_embeddings = 32768;
        c
    }

    /// The Qwen2.5-1.5B shape (random weights): hidden 1536, 28 layers, 12 heads, 2 KV heads,
    /// MLP 8960, vocabulary 151,936, tied embeddings.
    pub fn qwen2_5_1_5b() -> Config {
        let mut c = base(ModelType::Qwen2, 151_936, 1536, 8960, 28, 12, 2);
        c.rope_theta = Some(1_000_000.0);
        c.max_position_embeddings = 32768;
        c
    }

    /// The shape of `alp train`'s embedded default: a ~0.8M-parameter Qwen2 (hidden 128,
    /// 4 layers, 4 heads, MLP 352) over a small character-level vocabulary.
    pub fn alp_default() -> Config {
        let mut c = base(ModelType::Qwen2, 128, 128, 352, 4, 4, 4);
        c.max_position_embeddings = 512;
        c
    }

    /// Looks a preset up by name.
    pub fn by_name(name: &str) -> Result<Config> {
        match name {
            "tiny" => Ok(tiny()),
            "qwen2-25m" | "25m" => Ok(qwen2_25m()),
            "qwen2.5-0.5b" => Ok(qwen2_5_0_5b()),
            "qwen2.5-1.5b" => Ok(qwen2_5_1_5b()),
            "alp-default" => Ok(alp_default()),
            _ => Err(Error::config(
                "preset",
                format!("unknown preset `{name}`; known: {}", NAMES.join(", ")),
            )),
        }
    }

    /// The preset names.
    pub const NAMES: &[&str] = &[
        "tiny",
        "alp-default",
        "qwen2-25m",
        "qwen2.5-0.5b",
        "qwen2.5-1.5b",
    ];
}
