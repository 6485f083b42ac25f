//! Nothing lost, nothing silently wrong: run directories belong to one run, checkpoints are
//! finite and crash-safe, resume falls back past a damaged checkpoint, plots of absurd values
//! terminate.

use alp_cli::run::{train, RunOptions};
use alp_trainer::checkpoint;
use alp_trainer::config::TrainConfig;
use candle_core::{DType, Device};
use std::path::Path;

mod common;

fn small(extra: &[&str]) -> TrainConfig {
    common::small_config(extra)
}

fn opts(out: &Path) -> RunOptions {
    RunOptions {
        out: Some(out.into()),
        skip_eval: true,
        ..Default::default()
    }
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for e in walk(dir) {
        v.push((e.display().to_string(), std::fs::read(&e).unwrap()));
    }
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_second_run_into_the_same_directory_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("R");
    train(small(&[]), opts(&out)).unwrap();
    let before = snapshot(&out);
    let err = train(small(&["seed=7", "rl.steps=1"]), opts(&out))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--resume") && err.contains("--force"), "{err}");
    assert_eq!(
        snapshot(&out),
        before,
        "the refused run changed the first run's files"
    );
    // With overwrite the directory is the new run's alone: no stale step of the old run.
    train(
        small(&["seed=7", "rl.steps=1"]),
        RunOptions {
            overwrite: true,
            ..opts(&out)
        },
    )
    .unwrap();
    let steps: Vec<u64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, [1]);
    assert!(!out.join("checkpoints/step-000002").exists());
    // Default names never collide, even within one second.
    let (a, b) = (
        alp_trainer::default_run_dir(),
        alp_trainer::default_run_dir(),
    );
    assert_ne!(a, b);
}

#[test]
fn a_blown_up_run_keeps_latest_on_finite_weights_and_names_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("L");
    let err = train(
        small(&[
            "rl.lr=1e308",
            "rl.grad_clip=0",
            "rl.max_bad_steps=1",
            "rl.steps=3",
        ]),
        opts(&out),
    );
    let ck = checkpoint::latest(&out).unwrap();
    let w = checkpoint::load_weights(&ck, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(
        checkpoint::first_non_finite(&w).unwrap(),
        None,
        "latest = {}",
        ck.display()
    );
    if let Err(e) = err {
        let e = e.to_string();
        assert!(
            e.contains("non-finite") || e.contains("worker stopped:"),
            "{e}"
        );
    }
}

#[test]
fn resume_skips_a_damaged_newest_checkpoint_and_a_missing_pointer() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("C");
    train(small(&[]), opts(&out)).unwrap();
    let root = out.join("checkpoints");
    assert_eq!(checkpoint::latest(&out).unwrap(), root.join("step-000002"));
    // Truncated weights in the newest: the one before is taken.
    let f = root.join("step-000002/model/model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    assert_eq!(checkpoint::latest(&out).unwrap(), root.join("step-000001"));
    // An emptied manifest, and no pointer at all: still the newest complete one.
    std::fs::write(root.join("step-000001/manifest.json"), "").unwrap();
    std::fs::remove_file(root.join("latest")).unwrap();
    assert_eq!(checkpoint::latest(&out).unwrap(), root.join("step-000000"));
    // And a resume from there runs to the end.
    train(
        TrainConfig::default(),
        RunOptions {
            resume: Some(out.clone()),
            ..opts(&out)
        },
    )
    .unwrap();
    assert_eq!(
        checkpoint::read_manifest(&checkpoint::latest(&out).unwrap())
            .unwrap()
            .step,
        2
    );
}

#[test]
fn plotting_absurd_values_terminates_and_says_what_it_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        r#"{"step":1,"reward/mean":0.5,"ratio/token/max":1e308,"ratio/token/p99_9":-1e308}"#,
        r#"{"step":2,"reward/mean":0.6,"ratio/token/max":2.0,"ratio/token/p99_9":1.5}"#,
    ];
    std::fs::write(dir.path().join("metrics.jsonl"), lines.join("\n")).unwrap();
    alp_cli::report::plot_run(dir.path()).unwrap();
    let svg = std::fs::read_to_string(dir.path().join("plots/ratio_tail.svg")).unwrap();
    assert!(
        svg.contains("left out"),
        "the title says that points were left out"
    );
}

fn weights(run: &Path) -> Vec<Vec<f32>> {
    let w = checkpoint::load_weights(&checkpoint::latest(run).unwrap(), DType::F32, &Device::Cpu)
        .unwrap();
    w.tensors
        .values()
        .map(|t| t.flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

#[test]
fn an_interrupted_sft_resumes_as_sft_and_ends_where_an_uninterrupted_run_does() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small(&["sft.steps=30", "rl.steps=1"]);
    let whole = dir.path().join("whole");
    train(cfg.clone(), opts(&whole)).unwrap();
    // Ctrl-C before the first SFT step.
    let cut = dir.path().join("cut");
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let out = train(
        cfg.clone(),
        RunOptions {
            interrupt: Some(flag),
            ..opts(&cut)
        },
    )
    .unwrap();
    assert!(out.interrupted);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cut.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        (summary["phase"].as_str(), summary["interrupted"].as_bool()),
        (Some("sft"), Some(true))
    );
    let man = checkpoint::read_manifest(&checkpoint::latest(&cut).unwrap()).unwrap();
    assert_eq!(man.sft_steps_done, Some(0));
    // Resume: the SFT runs, then RL, and the run ends with the uninterrupted run's weights.
    train(
        TrainConfig::default(),
        RunOptions {
            resume: Some(cut.clone()),
            ..opts(&cut)
        },
    )
    .unwrap();
    assert_eq!(weights(&cut), weights(&whole));
}

#[test]
fn a_billion_sft_steps_stream_their_demonstrations() {
    // Demonstrations built up front would never get to the first step (or abort on memory).
    let cfg = small(&["sft.steps=1000000000"]);
    let mut t = alp_trainer::trainer::Trainer::new(cfg).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut seen = Vec::new();
    let losses = alp_trainer::sft::run_sft(&mut t, 0, Some(&stop), &mut |i, loss| {
        seen.push((i, loss));
        if i == 2 {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    })
    .unwrap();
    assert_eq!(losses.len(), 3);
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(losses.iter().all(|l| l.is_finite() && *l > 0.0));
}

/// Runs `cfg` in `dir` in pieces of `pieces` RL steps (each piece a resume of the last), and
/// returns the task ids of every step trained, in order.
fn run_in_pieces(cfg: &TrainConfig, dir: &Path, pieces: &[u64]) -> Vec<Vec<String>> {
    let mut tasks = Vec::new();
    for (i, &n) in pieces.iter().enumerate() {
        let mut sink = alp_trainer::metrics::MemorySink::default();
        let o = RunOptions {
            resume: (i > 0).then(|| dir.to_path_buf()),
            max_steps_this_run: Some(n),
            ..opts(dir)
        };
        alp_cli::run::train_with(cfg.clone(), o, &mut sink).unwrap();
        tasks.extend(sink.steps.into_iter().map(|m| m.task_ids));
    }
    tasks
}

#[test]
fn an_async_run_resumed_at_several_points_trains_on_the_same_batches() {
    let root = tempfile::tempdir().unwrap();
    // Exact staleness 2: the worker always holds two finished batches at a checkpoint.
    let cfg = small(&[
        "rl.steps=6",
        "rl.max_staleness=2",
        "rl.exact_staleness=true",
        "checkpoint.every=0",
        "rl.lr=1e-3",
    ]);
    let whole = root.path().join("whole");
    let want_tasks = run_in_pieces(&cfg, &whole, &[6]);
    let cut = root.path().join("cut");
    let got_tasks = run_in_pieces(&cfg, &cut, &[1, 2, 1, 2]);
    assert_eq!(want_tasks.len(), 6);
    assert_eq!(got_tasks, want_tasks);
    // Every checkpoint but the last held the batches sampled ahead.
    let mid = checkpoint::checkpoint_dir(&cut, 3);
    let pending = checkpoint::read_pending(&mid).unwrap();
    assert_eq!(
        pending
            .iter()
            .map(|b| (b.step, b.policy_version))
            .collect::<Vec<_>>(),
        [(3, 1), (4, 2)]
    );
    assert_eq!(weights(&cut), weights(&whole));

    // The newest-version mode (timing-dependent weights): no task lost or repeated.
    let bound = small(&["rl.steps=6", "rl.max_staleness=2", "checkpoint.every=0"]);
    let a = run_in_pieces(&bound, &root.path().join("a"), &[6]);
    let b = run_in_pieces(&bound, &root.path().join("b"), &[2, 1, 3]);
    assert_eq!(a, b);
    let all: Vec<&String> = a.iter().flatten().collect();
    let unique: std::collections::BTreeSet<&String> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "a task was trained twice");
}

#[test]
fn a_replace_cut_between_its_two_renames_resumes_from_the_checkpoint_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(small(&["checkpoint.every=0"]), opts(&run)).unwrap();
    // The final checkpoint was being replaced: moved aside, the new one not yet renamed in.
    let cks = run.join("checkpoints");
    let aside = cks.join(".old-step-000002-999");
    std::fs::rename(cks.join("step-000002"), &aside).unwrap();
    let found = checkpoint::latest(&run).unwrap();
    assert_eq!(
        found, aside,
        "fell back past the newest complete checkpoint"
    );
    assert_eq!(checkpoint::read_manifest(&found).unwrap().step, 2);
    // The resume starts from it and puts step 2 back in place.
    let out = train(
        TrainConfig::default(),
        RunOptions {
            resume: Some(run.clone()),
            ..opts(&run)
        },
    )
    .unwrap();
    assert!(!out.interrupted);
    assert_eq!(checkpoint::latest(&run).unwrap(), cks.join("step-000002"));
}
