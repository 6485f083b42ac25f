//! Where the real Qwen tokenizer of the parity tests is (shared by alp-model's and
//! alp-trainer's tests).
#![allow(dead_code)]

use std::path::PathBuf;

/// The tokenizer directory of `ALP_QWEN_TOKENIZER` (set by
/// `eval "$(bash scripts/qwen-tokenizer.sh)"`), or None after saying why the test is skipped;
/// with `ALP_REQUIRE_QWEN=1` (CI) a missing tokenizer fails the test instead.
pub fn qwen_dir() -> Option<PathBuf> {
    match std::env::var("ALP_QWEN_TOKENIZER") {
        Ok(d) if PathBuf::from(&d).join("tokenizer.json").exists() => Some(PathBuf::from(d)),
        _ => {
            let msg = "no real Qwen tokenizer: run `eval \"$(bash scripts/qwen-tokenizer.sh)\"` first (sets ALP_QWEN_TOKENIZER)";
            if std::env::var("ALP_REQUIRE_QWEN").is_ok_and(|v| v == "1") {
                panic!("{msg}");
            }
            eprintln!("skipped: {msg}");
            None
        }
    }
}
