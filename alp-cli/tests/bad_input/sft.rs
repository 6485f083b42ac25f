//! `alp sft`.
use super::*;

#[test]
fn an_existing_model_directory_bad_settings_and_configs() {
    let m = model_dir();
    refuses(
        &["sft", "--out", &arg(m.path()), "--set", "sft.steps=1"],
        &["--force"],
        &[m.path()],
    );
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    refuses(
        &["sft", "--out", &arg(&out), "--set", "sft.lr=-1"],
        &["sft.lr"],
        &[d.path()],
    );
    refuses(
        &[
            "sft",
            "--out",
            &arg(&out),
            "--set",
            "sft.batch_size=1000000000",
        ],
        &["sft.batch_size"],
        &[d.path()],
    );
    let missing = d.path().join("missing.toml");
    refuses(
        &["sft", "--out", &arg(&out), "--config", &arg(&missing)],
        &["missing.toml"],
        &[d.path()],
    );
    assert!(!out.exists());
}
