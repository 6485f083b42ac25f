//! `alp logprobs`.
use super::*;

#[test]
fn token_lists_and_damaged_checkpoints() {
    let m = bare_model_dir();
    let mp = arg(m.path());
    let d = tempfile::tempdir().unwrap();
    refuses(
        &["logprobs", "--model", &arg(d.path()), "--tokens", "1,2"],
        &["config.json"],
        &[d.path()],
    );
    let cases: &[(&str, &str)] = &[
        ("1,x", "`x` is not a token id"),
        ("1", "two ids"),
        ("", "two ids"),
        ("1,2,100000", "100000"),
        ("1,-2", "-2"),
    ];
    for (tokens, mention) in cases {
        refuses(
            &["logprobs", "--model", &mp, "--tokens", tokens],
            &[mention],
            &[m.path()],
        );
    }
    refuses(
        &[
            "logprobs", "--model", &mp, "--tokens", "1,2", "--dtype", "f8",
        ],
        &["f8"],
        &[m.path()],
    );
    // Truncated weights.
    let torn = bare_model_dir();
    let w = torn.path().join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    refuses(
        &["logprobs", "--model", &arg(torn.path()), "--tokens", "1,2"],
        &["model.safetensors"],
        &[torn.path()],
    );
    // A config.json that does not fit the weights.
    let wrong = bare_model_dir();
    let cp = wrong.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cp).unwrap()).unwrap();
    cfg["intermediate_size"] = (cfg["intermediate_size"].as_u64().unwrap() + 8).into();
    std::fs::write(&cp, cfg.to_string()).unwrap();
    refuses(
        &["logprobs", "--model", &arg(wrong.path()), "--tokens", "1,2"],
        &["mlp"],
        &[wrong.path()],
    );
}

#[test]
fn a_broken_tokenizer_does_not_matter_to_logprobs() {
    let m = bare_model_dir();
    std::fs::write(m.path().join("tokenizer.json"), "{ broken").unwrap();
    let o = run(
        &["logprobs", "--model", &arg(m.path()), "--tokens", "1,2,3"],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["logprobs"].as_array().unwrap().len(), 2);
}
