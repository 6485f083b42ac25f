#![allow(dead_code)]
use alp_model::{Config, ModelType};
use candle_core::{Tensor, D};

/// A few small shapes that cover GQA/MHA, tied/untied, biases, both rope_theta forms, qk-norm.
pub fn shapes() -> Vec<Config> {
    let mut out = vec![];
    let mut a = alp_model::presets::tiny(); // qwen2, GQA, tied, bias
    a.rope_theta = Some(1_000_000.0);
    out.push(a);
    let mut b = alp_model::presets::tiny();
    b.model_type = ModelType::Llama;
    b.num_key_value_heads = Some(4); // MHA
    b.tie_word_embeddings = false;
    b.attention_bias = Some(true);
    b.rope_theta = None;
    b.rope_parameters = Some(serde_json::json!({"rope_type": "default", "rope_theta": 5000.0}));
    out.push(b);
    let mut c = alp_model::presets::tiny();
    c.model_type = ModelType::Qwen3;
    c.head_dim = Some(16);
    c.num_attention_heads = 4;
    c.num_key_value_heads = Some(1);
    out.push(c);
    out
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(D::Minus1)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Largest |a − b| over the largest |b| (both read as f32).
pub fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_dtype(candle_core::DType::F32).unwrap();
    let b = b.to_dtype(candle_core::DType::F32).unwrap();
    let scale = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    max_abs_diff(&a, &b) / scale.max(1e-6)
}

pub fn word_tokenizer(n: usize) -> tokenizers::Tokenizer {
    use tokenizers::models::wordlevel::WordLevel;
    let mut vocab = std::collections::HashMap::new();
    vocab.insert("[UNK]".to_string(), 0u32);
    for i in 1..n {
        vocab.insert(format!("w{i}"), i as u32);
    }
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut t = tokenizers::Tokenizer::new(model);
    t.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
    t
}
