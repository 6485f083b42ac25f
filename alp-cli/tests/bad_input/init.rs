//! `alp init`.
use super::*;

#[test]
fn presets_configs_and_existing_checkpoints() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("m");
    let o = arg(&out);
    refuses(
        &["init", "--preset", "nope", "--out", &o],
        &["nope", "qwen2-25m"],
        &[d.path()],
    );
    refuses(
        &["init", "--out", &o],
        &["--preset", "--config"],
        &[d.path()],
    );
    let missing = d.path().join("missing.json");
    refuses(
        &["init", "--config", &arg(&missing), "--out", &o],
        &["missing.json"],
        &[d.path()],
    );
    let broken = d.path().join("broken.json");
    std::fs::write(&broken, "{\"hidden_size\": ").unwrap();
    refuses(
        &["init", "--config", &arg(&broken), "--out", &o],
        &["broken.json"],
        &[d.path()],
    );
    let heads = d.path().join("heads.json");
    let mut cfg = serde_json::to_value(alp_model::presets::tiny()).unwrap();
    cfg["num_attention_heads"] = 5.into();
    std::fs::write(&heads, cfg.to_string()).unwrap();
    refuses(
        &["init", "--config", &arg(&heads), "--out", &o],
        &["num_attention_heads"],
        &[d.path()],
    );
    let huge = d.path().join("huge.json");
    let mut cfg = serde_json::to_value(alp_model::presets::tiny()).unwrap();
    cfg["vocab_size"] = 4_000_000_000u64.into();
    cfg["hidden_size"] = 1_000_000.into();
    std::fs::write(&huge, cfg.to_string()).unwrap();
    refuses(
        &["init", "--config", &arg(&huge), "--out", &o],
        &["available"],
        &[d.path()],
    );
    refuses(
        &["init", "--preset", "tiny", "--dtype", "f8", "--out", &o],
        &["f8"],
        &[d.path()],
    );
    assert!(!out.exists());
    // An existing checkpoint is not replaced without --force.
    let m = model_dir();
    refuses(
        &["init", "--preset", "tiny", "--out", &arg(m.path())],
        &["--force"],
        &[m.path()],
    );
}
