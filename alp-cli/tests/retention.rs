//! Long runs: the retention policy (`checkpoint.keep_last`, `keep_every`), a `latest` that is
//! always usable (a model that no longer computes is kept aside), and a full disk met calmly
//! (a real small tmpfs, through bubblewrap).

use alp_cli::run::{train_with, RunOptions};
use alp_trainer::checkpoint;
use alp_trainer::config::TrainConfig;
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

fn opts(out: &Path) -> RunOptions {
    RunOptions {
        out: Some(out.into()),
        skip_eval: true,
        ..Default::default()
    }
}

/// The names under `<run>/checkpoints`, sorted.
fn names(run: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn weights(dir: &Path) -> Vec<Vec<f32>> {
    checkpoint::load_weights(dir, DType::F32, &Device::Cpu)
        .unwrap()
        .tensors
        .values()
        .map(|t| t.flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

fn run(cfg: &TrainConfig, dir: &Path, resume: bool, steps: Option<u64>) {
    let o = RunOptions {
        resume: resume.then(|| dir.to_path_buf()),
        max_steps_this_run: steps,
        ..opts(dir)
    };
    let mut sink = alp_trainer::metrics::MemorySink::default();
    train_with(cfg.clone(), o, &mut sink).unwrap();
}

#[test]
fn keep_last_2_over_six_checkpoints_leaves_the_newest_two_and_a_resume_that_matches() {
    let root = tempfile::tempdir().unwrap();
    let keep = common::small_config(&["rl.steps=6", "checkpoint.keep_last=2"]);
    let all = common::small_config(&["rl.steps=6"]);
    // Checkpoints of steps 0 (after SFT) to 5, then a resume for the sixth step.
    let kept = root.path().join("kept");
    run(&keep, &kept, false, Some(5));
    assert_eq!(names(&kept), ["latest", "step-000004", "step-000005"]);
    run(&keep, &kept, true, None);
    assert_eq!(names(&kept), ["latest", "step-000005", "step-000006"]);
    // The same run keeping everything: seven checkpoints, the same final weights.
    let every = root.path().join("every");
    run(&all, &every, false, None);
    assert_eq!(names(&every).len(), 1 + 7, "{:?}", names(&every));
    assert_eq!(
        weights(&checkpoint::latest(&kept).unwrap()),
        weights(&checkpoint::latest(&every).unwrap())
    );
}

#[test]
fn keep_every_keeps_milestones_besides_the_newest() {
    let root = tempfile::tempdir().unwrap();
    let cfg = common::small_config(&[
        "rl.steps=5",
        "checkpoint.keep_last=1",
        "checkpoint.keep_every=2",
    ]);
    let dir = root.path().join("r");
    run(&cfg, &dir, false, None);
    assert_eq!(
        names(&dir),
        [
            "latest",
            "step-000000",
            "step-000002",
            "step-000004",
            "step-000005"
        ]
    );
    // Milestones without a limit keep everything anyway: refused as a config error.
    let e = common::small_config(&["checkpoint.keep_every=2"])
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("checkpoint.keep_last"), "{e}");
}

#[test]
fn finite_weights_whose_forward_overflows_never_become_latest() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("blown");
    // AdamW moves every weight by about the learning rate: 1e12 leaves them finite (f32 holds
    // 3e38) and every forward overflows.
    let cfg = common::small_config(&["rl.lr=1e12"]);
    let mut sink = alp_trainer::metrics::MemorySink::default();
    let e = train_with(cfg, opts(&dir), &mut sink)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no longer computes"), "{e}");
    assert!(e.contains("`latest` stays on step-000000"), "{e}");
    let aside = dir.join("checkpoints/unusable-step-000001-nonfinite-logprobs");
    assert!(e.contains(&aside.display().to_string()), "{e}");
    // What was kept aside has finite weights and a model that does not compute: the case the
    // weight check alone let through.
    let bad = checkpoint::load_weights(&aside, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(checkpoint::first_non_finite(&bad).unwrap(), None);
    assert!(checkpoint::probe_forward(&bad).unwrap().is_some());
    // `latest` (and what a resume would pick) computes.
    let latest = checkpoint::latest(&dir).unwrap();
    assert_eq!(latest, dir.join("checkpoints/step-000000"));
    let good = checkpoint::load_weights(&latest, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(checkpoint::probe_forward(&good).unwrap(), None);
}

fn bwrap() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("bwrap"))
            .find(|b| b.exists())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("ALP_REQUIRE_BWRAP").is_none(),
            "ALP_REQUIRE_BWRAP is set but bwrap is not on PATH"
        );
        eprintln!("skipped: bubblewrap (bwrap) is not installed");
    }
    found
}

#[test]
fn a_full_disk_names_the_write_and_the_space_needed_and_a_resume_finishes() {
    let Some(bwrap) = bwrap() else { return };
    let alp = env!("CARGO_BIN_EXE_alp");
    let root = tempfile::tempdir().unwrap();
    let sets: Vec<String> = common::SMALL.iter().map(|s| format!("--set={s}")).collect();
    // One checkpoint's size, from an uninterrupted run of the same settings.
    let reference = root.path().join("reference");
    let o = Command::new(alp)
        .args(["train", "--out"])
        .arg(&reference)
        .args(&sets)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let one: u64 = walk_size(&reference.join("checkpoints/step-000000"));
    // A file system with room for two checkpoints (steps 0 and 1) of the three the run writes.
    let small = root.path().join("small");
    let host = root.path().join("host");
    std::fs::create_dir_all(&small).unwrap();
    std::fs::create_dir_all(&host).unwrap();
    let script = r#"alp=$1; small=$2; host=$3; shift 3
"$alp" train --out "$small/run" "$@" >"$host/stdout" 2>"$host/stderr"; echo $? >"$host/rc"
cp -a "$small/run" "$host/run""#;
    let status = Command::new(bwrap)
        .args(["--unshare-user", "--bind", "/", "/", "--dev", "/dev"])
        .args(["--size", &(one * 5 / 2).to_string(), "--tmpfs"])
        .arg(&small)
        .args(["--", "sh", "-c", script, "sh", alp])
        .arg(&small)
        .arg(&host)
        .args(&sets)
        .status()
        .unwrap();
    assert!(status.success(), "bwrap could not run the test");
    let rc = std::fs::read_to_string(host.join("rc")).unwrap();
    let err = std::fs::read_to_string(host.join("stderr")).unwrap();
    assert_ne!(rc.trim(), "0", "the run on a full disk succeeded: {err}");
    // The error names the operation, the file, the space one checkpoint needs; the run warned
    // before the save that could not fit.
    let line = err
        .lines()
        .find(|l| l.starts_with("Error:"))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(line.contains("cannot write "), "{line}");
    assert!(line.contains("/checkpoints/.tmp-step-000002"), "{line}");
    assert!(line.contains("No space left on device"), "{line}");
    assert!(
        line.contains("one checkpoint of this run needs about"),
        "{line}"
    );
    assert!(line.contains("--resume"), "{line}");
    assert!(
        err.contains("warning:") && err.contains("needs about"),
        "{err}"
    );
    // `latest` and every earlier checkpoint are complete; no partial one is left.
    let run = host.join("run");
    assert_eq!(names(&run), ["latest", "step-000000", "step-000001"]);
    assert_eq!(
        checkpoint::latest(&run).unwrap(),
        run.join("checkpoints/step-000001")
    );
    for step in ["step-000000", "step-000001"] {
        let w = checkpoint::load_weights(
            &run.join("checkpoints").join(step),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(checkpoint::probe_forward(&w).unwrap(), None);
    }
    // On a disk with room, the resume finishes the run where the uninterrupted one ended.
    let o = Command::new(alp)
        .args(["train", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ck = checkpoint::latest(&run).unwrap();
    assert_eq!(checkpoint::read_manifest(&ck).unwrap().step, 2);
    assert_eq!(
        weights(&ck),
        weights(&checkpoint::latest(&reference).unwrap())
    );
}

fn walk_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk_size(&p)
            } else {
                p.metadata().unwrap().len()
            }
        })
        .sum()
}
