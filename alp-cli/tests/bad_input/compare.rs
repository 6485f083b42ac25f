//! `alp compare`.
use super::*;

#[test]
fn unknown_presets_methods_settings_and_sizes() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("cmp");
    let o = arg(&out);
    refuses(
        &["compare", "--preset", "nope", "--out", &o],
        &["nope", "smoke"],
        &[d.path()],
    );
    refuses(
        &[
            "compare",
            "--preset",
            "smoke",
            "--methods",
            "grpo,nope",
            "--out",
            &o,
        ],
        &["nope", "grpo"],
        &[d.path()],
    );
    refuses(
        &[
            "compare",
            "--preset",
            "smoke",
            "--settings",
            "nope",
            "--out",
            &o,
        ],
        &["nope"],
        &[d.path()],
    );
    refuses(
        &["compare", "--preset", "smoke", "--seeds", "0", "--out", &o],
        &["--seeds"],
        &[d.path()],
    );
    refuses(
        &[
            "compare",
            "--preset",
            "smoke",
            "--set",
            "rl.lr=abc",
            "--out",
            &o,
        ],
        &["rl.lr"],
        &[d.path()],
    );
    refuses(
        &[
            "compare",
            "--preset",
            "smoke",
            "--set",
            "rl.prompts_per_step=1000000000",
            "--out",
            &o,
        ],
        &["rl.prompts_per_step"],
        &[d.path()],
    );
    // --out is a file.
    let file = d.path().join("a-file");
    std::fs::write(&file, "keep me").unwrap();
    refuses(
        &["compare", "--preset", "smoke", "--out", &arg(&file)],
        &["a-file"],
        &[d.path()],
    );
}

#[test]
fn a_report_from_a_record_of_other_overrides_says_which() {
    // compare.json from a sweep run with `--set rl.lr=1e-5`, read back without it: nothing of
    // it is this plan's, and the error says why rather than only that nothing was found; a
    // damaged record names the file. Neither is rewritten.
    let d = tempfile::tempdir().unwrap();
    let o = arg(d.path());
    let record = serde_json::json!({
        "base": ["rl.steps=2", "rl.lr=1e-5"],
        "settings": [],
        "methods": [],
    });
    std::fs::write(d.path().join("compare.json"), record.to_string()).unwrap();
    refuses(
        &["compare", "--preset", "smoke", "--report-only", "--out", &o],
        &["compare.json", "rl.lr=1e-5", "--set"],
        &[d.path()],
    );
    std::fs::write(d.path().join("compare.json"), "{ not json").unwrap();
    refuses(
        &["compare", "--preset", "smoke", "--report-only", "--out", &o],
        &["compare.json", "restore it"],
        &[d.path()],
    );
}
