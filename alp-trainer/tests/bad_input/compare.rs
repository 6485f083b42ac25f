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
