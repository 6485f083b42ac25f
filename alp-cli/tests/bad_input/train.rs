//! `alp train`.
use super::*;

/// `alp train` with the small settings, then `extra`.
fn small_train(extra: &[&str]) -> Vec<String> {
    let mut v = vec!["train".to_string()];
    for s in SMALL {
        v.push("--set".into());
        v.push(s.to_string());
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn refuses_train(extra: &[&str], mentions: &[&str], watch: &[&Path]) {
    let args = small_train(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refuses(&args, mentions, watch);
}

#[test]
fn config_files_that_are_missing_malformed_or_wrong() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let missing = d.path().join("missing.toml");
    refuses_train(
        &["--config", &arg(&missing), "--out", &arg(&out)],
        &["missing.toml"],
        &[d.path()],
    );
    let broken = d.path().join("broken.toml");
    std::fs::write(&broken, "[rl\nsteps = 3").unwrap();
    refuses_train(
        &["--config", &arg(&broken), "--out", &arg(&out)],
        &["broken.toml"],
        &[d.path()],
    );
    let unknown = d.path().join("unknown.toml");
    std::fs::write(&unknown, "[rl]\nstepz = 3\n").unwrap();
    refuses_train(
        &["--config", &arg(&unknown), "--out", &arg(&out)],
        &["stepz"],
        &[d.path()],
    );
    let typed = d.path().join("typed.toml");
    std::fs::write(&typed, "[rl]\nlr = \"fast\"\n").unwrap();
    refuses_train(
        &["--config", &arg(&typed), "--out", &arg(&out)],
        &["lr"],
        &[d.path()],
    );
    assert!(!out.exists());
}

#[test]
fn settings_are_checked_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let cases: &[(&str, &str)] = &[
        ("rl.lr=abc", "rl.lr"),
        ("sft.lr=-1", "sft.lr"),
        ("rl.grad_clip=-1", "rl.grad_clip"),
        ("tasks.hard_fraction=2", "tasks.hard_fraction"),
        ("rl.temperature=nan", "rl.temperature"),
        ("rl.temperature=-1", "rl.temperature"),
        ("rl.prompts_per_step=1000000000", "rl.prompts_per_step"),
        ("rl.group_size=1", "rl.group_size"),
        ("rl.objective.method=ppo2", "ppo2"),
        ("rl.no_such_thing=1", "rl.no_such_thing"),
        ("rl.steps", "key=value"),
        ("model.preset=huge", "huge"),
    ];
    for (set, field) in cases {
        refuses_train(&["--set", set, "--out", &arg(&out)], &[field], &[d.path()]);
        assert!(!out.exists(), "{set}: a run directory was created");
    }
    // A base model that is not there.
    let absent = d.path().join("absent-model");
    refuses_train(
        &[
            "--set",
            &format!("model.base={}", absent.display()),
            "--out",
            &arg(&out),
        ],
        &["absent-model"],
        &[d.path()],
    );
}

#[test]
fn run_directories_and_resumes_that_do_not_fit() {
    let (_root, run) = finished_run();
    // Another run into a finished run's directory.
    refuses_train(
        &["--out", &arg(&run)],
        &["--out", "--force", "--resume"],
        &[&run],
    );
    // A resume with another config.
    let d = tempfile::tempdir().unwrap();
    let other = d.path().join("other.toml");
    std::fs::write(&other, "seed = 3\n").unwrap();
    refuses(
        &["train", "--resume", &arg(&run), "--config", &arg(&other)],
        &["--config"],
        &[&run],
    );
    // A resume with a setting that does not validate.
    refuses(
        &["train", "--resume", &arg(&run), "--set", "rl.lr=-5"],
        &["rl.lr"],
        &[&run],
    );
    // A resume from a directory that is not there, or holds no run.
    let nowhere = d.path().join("nowhere");
    refuses(
        &["train", "--resume", &arg(&nowhere)],
        &["nowhere"],
        &[d.path()],
    );
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    refuses(
        &["train", "--resume", &arg(&empty)],
        &["checkpoint"],
        &[d.path()],
    );
}

#[test]
fn a_resume_whose_checkpoints_are_all_damaged_names_them_and_deletes_nothing() {
    let (_root, run) = finished_run();
    let cks = run.join("checkpoints");
    for e in std::fs::read_dir(&cks).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            std::fs::write(p.join("manifest.json"), "{").unwrap();
        }
    }
    refuses(
        &["train", "--resume", &arg(&run)],
        &["step-000002", "manifest.json"],
        &[&run],
    );
    // A checkpoint given directly, its manifest malformed.
    let ck = cks.join("step-000001");
    refuses(
        &["train", "--resume", &arg(&ck)],
        &["manifest.json"],
        &[&run],
    );
}
