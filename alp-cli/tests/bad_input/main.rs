//! The bad-input suite: every `alp` subcommand given inputs a user can get wrong (one file per
//! subcommand). Each case asserts a non-zero exit that is neither a panic nor an abort, an
//! error message that names the input and what to do, and that nothing written earlier
//! (checkpoints, metrics, run directories, models) changed.

#[path = "../common/mod.rs"]
mod common;

mod bench;
mod compare;
mod eval;
mod generate;
mod grade;
mod init;
mod logprobs;
mod plot;
mod sft;
mod train;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Every file under `dir` (recursively) with its bytes; empty when `dir` does not exist.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(snapshot(&p));
        } else {
            out.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    out
}

/// `p` as an argument.
pub fn arg(p: &Path) -> String {
    p.display().to_string()
}

/// Runs `alp args…` (with `stdin` when given).
pub fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut c = Command::new(env!("CARGO_BIN_EXE_alp"));
    c.args(args).env("RUST_BACKTRACE", "0");
    c.env_remove(alp_cli::CRASH_ENV);
    if stdin.is_some() {
        c.stdin(std::process::Stdio::piped());
    }
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    if let Some(bytes) = stdin {
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// `alp args…` must be refused: a non-zero exit that is not a panic or an abort, within a
/// minute (no work before the refusal), an error that mentions every one of `mentions`, and
/// every directory of `watch` exactly as it was.
pub fn refuses(args: &[&str], mentions: &[&str], watch: &[&Path]) {
    refuses_with(args, None, mentions, watch)
}

/// [`refuses`] with bytes on stdin.
pub fn refuses_with(args: &[&str], stdin: Option<&[u8]>, mentions: &[&str], watch: &[&Path]) {
    let before: Vec<_> = watch.iter().map(|d| snapshot(d)).collect();
    let t = Instant::now();
    let o = run(args, stdin);
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&o.stderr);
    let code = o.status.code();
    assert!(
        code.is_some_and(|c| c != 0 && c != 101 && c != 134),
        "alp {args:?}: exit {code:?} (want an error exit, not success, a panic or a signal)\n{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("memory allocation"),
        "alp {args:?} panicked or aborted:\n{err}"
    );
    assert!(
        took < Duration::from_secs(60),
        "alp {args:?} took {took:?} before refusing"
    );
    for m in mentions {
        assert!(
            err.contains(m),
            "alp {args:?}: the error does not mention `{m}`:\n{err}"
        );
    }
    for (d, b) in watch.iter().zip(before) {
        assert!(
            snapshot(d) == b,
            "alp {args:?} changed {} although it refused",
            d.display()
        );
    }
}

/// A random checkpoint of the embedded default's shape with its tokenizer.
pub fn model_dir() -> tempfile::TempDir {
    common::default_checkpoint()
}

/// A tiny checkpoint without a tokenizer.
pub fn bare_model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    alp_model::ModelWeights::random(
        &alp_model::presets::tiny(),
        0,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap()
    .save(dir.path())
    .unwrap();
    dir
}

pub use common::SMALL;

/// A finished small run (in `<tmp>/run`).
pub fn finished_run() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let run = root.path().join("run");
    alp_cli::run::train(
        common::small_config(&[]),
        alp_cli::run::RunOptions {
            out: Some(run.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    (root, run)
}
