mod common;

use std::collections::BTreeMap;

use alp_core::{ChatMessage, Error};
use alp_model::NoPerturbation;
use alp_model::{load_pretrained, presets, Config, ModelWeights, Numerics, Tokenizer};
use candle_core::{DType, Device, Tensor};

fn saved_tiny() -> (tempfile::TempDir, ModelWeights) {
    let dir = tempfile::tempdir().unwrap();
    let w = ModelWeights::random(&presets::tiny(), 0, DType::F32, &Device::Cpu).unwrap();
    w.save(dir.path()).unwrap();
    (dir, w)
}

#[test]
fn missing_config_json_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = ModelWeights::load(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    match &e {
        Error::MissingFile { path, .. } => assert!(path.ends_with("config.json")),
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("config.json"));
}

#[test]
fn unknown_model_type_lists_known_ones() {
    let (dir, _) = saved_tiny();
    let p = dir.path().join("config.json");
    let s = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"qwen2\"", "\"gpt2\"");
    std::fs::write(&p, s).unwrap();
    let e = ModelWeights::load(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, Error::Config { ref field, .. } if field == "model_type"),
        "{msg}"
    );
    assert!(
        msg.contains("gpt2") && msg.contains("qwen2") && msg.contains("llama"),
        "{msg}"
    );
}

#[test]
fn config_validation_names_the_field() {
    let mut c = presets::tiny();
    c.num_key_value_heads = Some(3);
    assert!(
        matches!(c.validate(), Err(Error::Config { ref field, .. }) if field == "num_key_value_heads")
    );
    let mut c = presets::tiny();
    c.hidden_size = 30;
    assert!(
        matches!(c.validate(), Err(Error::Config { ref field, .. }) if field == "num_attention_heads")
    );
    let mut c = presets::tiny();
    c.head_dim = Some(7);
    assert!(matches!(c.validate(), Err(Error::Config { ref field, .. }) if field == "head_dim"));
    let mut c = presets::tiny();
    c.rope_scaling = Some(serde_json::json!({"rope_type": "llama3", "factor": 8.0}));
    assert!(
        matches!(c.validate(), Err(Error::Config { ref field, .. }) if field == "rope_scaling")
    );
    let mut c = presets::tiny();
    c.vocab_size = 0;
    assert!(matches!(c.validate(), Err(Error::Config { ref field, .. }) if field == "vocab_size"));
}

#[test]
fn rope_theta_is_read_from_both_places() {
    let top = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
        "num_hidden_layers":1,"num_attention_heads":2,"rope_theta":500000.0}"#;
    let nested = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
        "num_hidden_layers":1,"num_attention_heads":2,"rope_parameters":{"rope_type":"default","rope_theta":250000.0}}"#;
    let p = std::path::Path::new("config.json");
    assert_eq!(
        Config::from_json_str(top, p).unwrap().rope_theta(),
        500000.0
    );
    let c = Config::from_json_str(nested, p).unwrap();
    assert_eq!(c.rope_theta(), 250000.0);
    assert_eq!(c.num_kv_heads(), 2);
    assert!(!c.qkv_bias());
    // Qwen3 without head_dim uses transformers' default of 128.
    let q3 = r#"{"model_type":"qwen3","vocab_size":10,"hidden_size":8,"intermediate_size":16,
        "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1}"#;
    let c = Config::from_json_str(q3, p).unwrap();
    assert_eq!(c.head_dim(), 128);
    assert!(c.qk_norm() && !c.qkv_bias());
    let bad = r#"{"model_type":"llama","vocab_size":10}"#;
    assert!(matches!(
        Config::from_json_str(bad, p),
        Err(Error::Parse { .. })
    ));
}

#[test]
fn missing_and_misshaped_tensors_are_named() {
    let (dir, w) = saved_tiny();
    let mut t: BTreeMap<String, Tensor> = w.tensors.clone();
    t.remove("model.layers.1.mlp.up_proj.weight");
    alp_model::save::write_safetensors(&t, &dir.path().join("model.safetensors")).unwrap();
    let e = ModelWeights::load(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(
        matches!(e, Error::MissingTensor { ref name, .. } if name == "model.layers.1.mlp.up_proj.weight"),
        "{e}"
    );

    let mut t = w.tensors.clone();
    t.insert(
        "model.norm.weight".into(),
        Tensor::ones(31, DType::F32, &Device::Cpu).unwrap(),
    );
    alp_model::save::write_safetensors(&t, &dir.path().join("model.safetensors")).unwrap();
    let e = ModelWeights::load(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    match e {
        Error::TensorShape {
            name,
            expected,
            got,
            ..
        } => {
            assert_eq!(name, "model.norm.weight");
            assert_eq!(expected, vec![32]);
            assert_eq!(got, vec![31]);
        }
        other => panic!("{other}"),
    }
    // A file that is not safetensors at all.
    std::fs::write(dir.path().join("model.safetensors"), b"garbage").unwrap();
    let e = ModelWeights::load(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(
        matches!(e, Error::Parse { ref path, .. } if path.ends_with("model.safetensors")),
        "{e}"
    );
}

#[test]
fn sharded_checkpoints_load_and_a_missing_shard_is_named() {
    let (dir, w) = saved_tiny();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    let mut map = serde_json::Map::new();
    for (i, (k, t)) in w.tensors.iter().enumerate() {
        let f = if i % 2 == 0 {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        };
        if i % 2 == 0 {
            a.insert(k.clone(), t.clone());
        } else {
            b.insert(k.clone(), t.clone());
        }
        map.insert(k.clone(), f.into());
    }
    alp_model::save::write_safetensors(&a, &dir.path().join("model-00001-of-00002.safetensors"))
        .unwrap();
    alp_model::save::write_safetensors(&b, &dir.path().join("model-00002-of-00002.safetensors"))
        .unwrap();
    let idx = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        idx.to_string(),
    )
    .unwrap();
    let back = ModelWeights::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    for (k, t) in &w.tensors {
        assert_eq!(common::max_abs_diff(t, &back.tensors[k]), 0.0, "{k}");
    }
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = ModelWeights::load(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(
        matches!(e, Error::MissingFile { ref path, .. } if path.ends_with("model-00002-of-00002.safetensors")),
        "{e}"
    );
    assert!(e.to_string().contains("index"));
}

#[test]
fn token_id_out_of_range_is_an_error() {
    let m = ModelWeights::random(&presets::tiny(), 0, DType::F32, &Device::Cpu)
        .unwrap()
        .build()
        .unwrap();
    let ids = Tensor::new(&[[1u32, 64]], &Device::Cpu).unwrap();
    let e = m
        .forward_full(&ids, &[], &NoPerturbation, Numerics::Inference)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::TokenOutOfRange {
                token: 64,
                vocab_size: 64
            }
        ),
        "{e}"
    );
    let mut cache = m.new_cache(4, &[]);
    let long = Tensor::new(&[[1u32, 2, 3, 4, 5]], &Device::Cpu).unwrap();
    assert!(m
        .forward_cached(&long, &mut cache, &NoPerturbation)
        .is_err());
}

#[test]
fn tokenizer_too_large_for_the_model_is_rejected() {
    let (dir, _) = saved_tiny();
    common::word_tokenizer(100)
        .save(dir.path().join("tokenizer.json"), false)
        .unwrap();
    let e = load_pretrained(dir.path().to_str().unwrap(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(e, Error::Tokenizer(_)), "{e}");
    assert!(e.to_string().contains("vocab_size is 64"), "{e}");
    // One that fits loads.
    common::word_tokenizer(60)
        .save(dir.path().join("tokenizer.json"), false)
        .unwrap();
    let p = load_pretrained(dir.path().to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
    let tok = p.tokenizer.unwrap();
    assert_eq!(tok.encode("w3 w7 zzz", false).unwrap(), vec![3, 7, 0]);
}

#[test]
fn chat_template_eos_and_hub_cache() {
    let (dir, _) = saved_tiny();
    let tpl = "{% for m in messages %}<|{{ m.role }}|>{{ m.content | trim }}\n{% endfor %}{% if tools %}TOOLS={{ tools | tojson }}\n{% endif %}{% if add_generation_prompt %}<|assistant|>{% endif %}";
    let mut raw = common::word_tokenizer(50);
    raw.add_special_tokens(vec![tokenizers::AddedToken::from("<eos>", true)])
        .unwrap();
    let tok = Tokenizer::from_tokenizer(raw)
        .with_chat_template(tpl)
        .with_eos_token("<eos>")
        .unwrap();
    tok.save(dir.path()).unwrap();
    let back = Tokenizer::load(dir.path()).unwrap().unwrap();
    assert_eq!(back.eos_ids(), &[50]);
    let msgs = vec![
        ChatMessage::new("system", " be brief "),
        ChatMessage::new("user", "w1 w2"),
    ];
    let s = back.apply_chat_template(&msgs, true, None).unwrap();
    assert_eq!(s, "<|system|>be brief\n<|user|>w1 w2\n<|assistant|>");
    let tools = serde_json::json!([{"name": "calc"}]);
    let s = back
        .apply_chat_template(&msgs, false, Some(&tools))
        .unwrap();
    // `tojson` writes like Python's json.dumps (transformers' filter): ", " and ": ".
    assert!(s.ends_with("TOOLS=[{\"name\": \"calc\"}]\n"), "{s}");

    // Python-style methods and raise_exception work like transformers' Jinja environment.
    let t2 = Tokenizer::from_tokenizer(common::word_tokenizer(5))
        .with_chat_template("{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0].content.upper() }}");
    assert_eq!(
        t2.apply_chat_template(&[ChatMessage::new("user", "hi")], false, None)
            .unwrap(),
        "HI"
    );
    let e = t2
        .apply_chat_template(&[ChatMessage::new("system", "x")], false, None)
        .unwrap_err();
    assert!(e.to_string().contains("first must be user"), "{e}");

    // A repo id resolves through the local hub cache layout (offline).
    let hub = tempfile::tempdir().unwrap();
    let repo = hub.path().join("models--acme--tiny");
    let snap = repo.join("snapshots").join("abc123");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "abc123").unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(dir.path().join(f), snap.join(f)).unwrap();
    }
    std::env::set_var("HF_HUB_CACHE", hub.path());
    let p = alp_model::resolve_model_dir("acme/tiny").unwrap();
    assert_eq!(p, snap);
    let e = alp_model::resolve_model_dir("acme/absent").unwrap_err();
    assert!(e.to_string().contains("acme/absent"), "{e}");
    std::env::remove_var("HF_HUB_CACHE");
}

#[test]
fn a_chat_template_that_runs_away_is_stopped_with_an_error() {
    let msgs = [ChatMessage::new("user", "hi")];
    // 10k × 10k iterations: bounded in steps.
    let looping = Tokenizer::from_tokenizer(common::word_tokenizer(5)).with_chat_template(
        "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
    );
    let t = std::time::Instant::now();
    let e = looping
        .apply_chat_template(&msgs, true, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("steps"), "{e}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        t.elapsed()
    );
    // Huge output in few steps: bounded in bytes.
    let wide = Tokenizer::from_tokenizer(common::word_tokenizer(5))
        .with_chat_template("{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}");
    let e = wide
        .apply_chat_template(&msgs, true, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("MB"), "{e}");
    // A real-sized conversation is far inside both bounds.
    let qwen_like = Tokenizer::from_tokenizer(common::word_tokenizer(5)).with_chat_template(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
    );
    let long: Vec<ChatMessage> = (0..2000)
        .map(|i| {
            ChatMessage::new(
                if i % 2 == 0 { "user" } else { "assistant" },
                "w1 ".repeat(200),
            )
        })
        .collect();
    assert!(
        qwen_like
            .apply_chat_template(&long, true, None)
            .unwrap()
            .len()
            > 1_000_000
    );
}
