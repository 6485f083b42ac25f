//! `alp generate`.
use super::*;

#[test]
fn models_counts_and_sampling_settings() {
    let m = model_dir();
    let mp = arg(m.path());
    let d = tempfile::tempdir().unwrap();
    let absent = d.path().join("absent");
    refuses(
        &["generate", "--model", &arg(&absent), "--prompt", "1+1="],
        &["absent"],
        &[d.path()],
    );
    let bare = bare_model_dir();
    refuses(
        &["generate", "--model", &arg(bare.path()), "--prompt", "hi"],
        &["tokenizer.json"],
        &[bare.path()],
    );
    let cases: &[(&[&str], &str)] = &[
        (&["--n", "0"], "--n"),
        (&["--n", "1000000000"], "--n"),
        (&["--n", "-3"], "-3"),
        (&["--temperature", "-1"], "temperature"),
        (&["--temperature", "NaN"], "temperature"),
        (&["--top-p", "2"], "top_p"),
        (&["--top-p", "0"], "top_p"),
        (&["--dtype", "f8"], "f8"),
        (&["--device", "tpu"], "tpu"),
    ];
    for (extra, mention) in cases {
        let mut args = vec!["generate", "--model", &mp, "--prompt", "1+1="];
        args.extend_from_slice(extra);
        refuses(&args, &[mention], &[m.path()]);
    }
}

#[test]
fn characters_outside_the_vocabulary_are_named_in_a_warning() {
    let m = model_dir();
    let o = run(
        &[
            "generate",
            "--model",
            &arg(m.path()),
            "--prompt",
            "2×3=é",
            "--max-new-tokens",
            "2",
        ],
        None,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning") && err.contains("'×'") && err.contains("'é'"),
        "{err}"
    );
    // A prompt the vocabulary covers gets no warning.
    let o = run(
        &[
            "generate",
            "--model",
            &arg(m.path()),
            "--prompt",
            "2*3=",
            "--max-new-tokens",
            "2",
        ],
        None,
    );
    assert!(!String::from_utf8_lossy(&o.stderr).contains("warning"));
}
