//! Crash safety of checkpoints: `alp train` is aborted (as `kill -9` would: no unwinding, no
//! cleanup) before every file operation of every checkpoint write of a small run, then
//! resumed; every resume starts from a complete checkpoint (or starts over when none was
//! complete yet) and ends with the weights and metrics of an uninterrupted run (synchronous
//! rollouts make the run deterministic).

use std::path::Path;
use std::process::{Command, Output};

mod common;

/// [`common::SMALL`] with an evaluation after every step (its records are redone on resume)
/// and only the newest checkpoint kept (each save after the first prunes one).
fn settings() -> Vec<&'static str> {
    let mut v = common::SMALL.to_vec();
    v.push("eval.every=1");
    v.push("checkpoint.keep_last=1");
    v
}

fn train(out: &Path, crash_at: Option<u64>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_alp"));
    c.arg("train").arg("--out").arg(out);
    for s in settings() {
        c.args(["--set", s]);
    }
    c.env_remove(alp_cli::CRASH_ENV);
    if let Some(k) = crash_at {
        c.env(alp_cli::CRASH_ENV, k.to_string());
    }
    c.output().unwrap()
}

fn resume(run: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_alp"))
        .arg("train")
        .arg("--resume")
        .arg(run)
        .env_remove(alp_cli::CRASH_ENV)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The records of metrics.jsonl without the timings (which differ from run to run).
fn records(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(m) = v.as_object_mut() {
                m.retain(|k, _| {
                    k != "wall_s" && !k.starts_with("time/") && !k.starts_with("throughput/")
                });
            }
            v
        })
        .collect()
}

fn final_weights(run: &Path) -> Vec<u8> {
    let ck = alp_trainer::checkpoint::latest(run).unwrap();
    assert_eq!(alp_trainer::checkpoint::read_manifest(&ck).unwrap().step, 2);
    std::fs::read(ck.join("model/model.safetensors")).unwrap()
}

#[test]
fn a_run_killed_at_any_checkpoint_file_operation_resumes_to_the_same_result() {
    let root = tempfile::tempdir().unwrap();
    let reference = root.path().join("reference");
    let o = train(&reference, None);
    assert!(o.status.success(), "{}", text(&o));
    let want_w = final_weights(&reference);
    let want_m = records(&reference);
    assert_eq!(want_m.len(), 5, "eval, step 1, eval, step 2, eval");

    let mut crashes = 0;
    for k in 1..200 {
        let run = root.path().join(format!("crash-{k}"));
        let o = train(&run, Some(k));
        if o.status.success() {
            // Past the last file operation of the run: every point has been tried.
            assert!(crashes >= 30, "only {crashes} crash points");
            break;
        }
        crashes += 1;
        let log = text(&o);
        assert!(log.contains("aborting before"), "k={k}: {log}");
        let r = resume(&run);
        let rlog = text(&r);
        assert!(r.status.success(), "k={k}: resume failed: {rlog}");
        assert!(!rlog.contains("panicked"), "{rlog}");
        assert!(
            rlog.contains("resumed at RL step") || rlog.contains("starting the run over"),
            "k={k}: {rlog}"
        );
        assert_eq!(
            final_weights(&run),
            want_w,
            "k={k}: final weights differ\n{rlog}"
        );
        assert_eq!(records(&run), want_m, "k={k}: metrics differ\n{rlog}");
        // The resumed run's retention holds: the newest checkpoint only, nothing aside.
        let mut left: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["latest", "step-000002"], "k={k}\n{rlog}");
        std::fs::remove_dir_all(&run).unwrap();
    }
    assert!(crashes > 0);
}
