//! A random-weight Qwen2-architecture checkpoint with a real Qwen tokenizer (its vocabulary and
//! chat template) through `alp train` in the Python environment and `alp eval`, with no
//! special case for the embedded default. The tokenizer comes from
//! `eval "$(bash scripts/qwen-tokenizer.sh)"`; without it the test says so and passes, unless
//! `ALP_REQUIRE_QWEN=1` (CI).

use std::process::Command;

#[path = "../../alp-model/tests/common/qwen.rs"]
mod qwen;
use qwen::qwen_dir;

#[path = "../../alp-envs/tests/common/parquet.rs"]
mod parquet_fixture;

/// A random tiny Qwen2 checkpoint with the real Qwen vocabulary and tokenizer, in `root`.
fn qwen_checkpoint(tok_dir: &std::path::Path, root: &std::path::Path) -> std::path::PathBuf {
    let model = root.join("qwen-tiny");
    let mut cfg = alp_model::presets::tiny();
    cfg.vocab_size = 151_936;
    alp_model::ModelWeights::random(&cfg, 0, candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap()
        .save(&model)
        .unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tok_dir.join(f), model.join(f)).unwrap();
    }
    model
}

#[test]
fn a_real_tokenizer_checkpoint_trains_in_the_python_environment_and_evaluates() {
    let Some(tok_dir) = qwen_dir() else { return };
    let root = tempfile::tempdir().unwrap();
    let model = qwen_checkpoint(&tok_dir, root.path());
    let run = root.path().join("run");
    let sets = [
        format!("model.base={}", model.display()),
        "rl.env=python".into(),
        "rl.steps=2".into(),
        "rl.prompts_per_step=2".into(),
        "rl.group_size=2".into(),
        "rl.mini_batch=4".into(),
        "rl.micro_batch=2".into(),
        "rl.max_new_tokens=12".into(),
        "rl.max_total_tokens=32".into(),
        "rl.max_turns=2".into(),
        "rl.rollout_dtype=f32".into(),
        "eval.tasks=2".into(),
        "eval.pass_k=0".into(),
        "eval.every=0".into(),
    ];
    let mut c = Command::new(env!("CARGO_BIN_EXE_alp"));
    c.arg("train").arg("--out").arg(&run);
    for s in &sets {
        c.args(["--set", s]);
    }
    let o = c.output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{log}");
    assert!(log.contains("vocab 151936"), "{log}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let steps = metrics.lines().filter(|l| !l.contains("\"eval\"")).count();
    assert_eq!(steps, 2, "{metrics}");
    // The checkpoint it wrote evaluates in the Python environment.
    let ck = alp_trainer::checkpoint::latest(&run).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_alp"))
        .args([
            "eval", "--tasks", "python", "--limit", "2", "--n", "0", "--model",
        ])
        .arg(ck.join("model"))
        .args([
            "--set",
            "rl.max_new_tokens=8",
            "--set",
            "rl.max_total_tokens=16",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["tasks"], 2);
}

/// `alp train` on a user's model and data: a random Qwen2-shaped checkpoint with the real
/// Qwen tokenizer, GSM8K-shaped training rows in Parquet and held-out rows in JSONL, LoRA on.
/// It trains, evaluates on the held-out file and writes an adapter; a bad row stops the run
/// before anything is written, naming the file, the line and the field.
#[test]
fn a_user_checkpoint_trains_with_lora_on_a_parquet_and_jsonl_dataset() {
    let Some(tok_dir) = qwen_dir() else { return };
    let root = tempfile::tempdir().unwrap();
    let model = qwen_checkpoint(&tok_dir, root.path());
    let row = |a: u32, b: u32| {
        (
            format!("Tom has {a} apples and buys {b} more. How many apples does he have?"),
            format!("He has {a} + {b} = {} apples.\n#### {}", a + b, a + b),
        )
    };
    let train: Vec<_> = (0..6).map(|i| row(i + 2, 3 * i + 1)).collect();
    let train_file = root.path().join("train.parquet");
    let rows: Vec<Vec<Option<&str>>> = train
        .iter()
        .map(|(q, a)| vec![Some(q.as_str()), Some(a.as_str())])
        .collect();
    parquet_fixture::write_parquet(&train_file, &["question", "answer"], &rows);
    let heldout_file = root.path().join("test.jsonl");
    let heldout: String = (0..3)
        .map(|i| {
            let (q, a) = row(10 + i, i);
            serde_json::json!({"question": q, "answer": a}).to_string() + "\n"
        })
        .collect();
    std::fs::write(&heldout_file, heldout).unwrap();
    let run = root.path().join("run");
    let sets = |train: &std::path::Path, out: &std::path::Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_alp"));
        c.arg("train").arg("--out").arg(out);
        for s in [
            format!("model.base={}", model.display()),
            format!("tasks.train_file={}", train.display()),
            format!("tasks.heldout_file={}", heldout_file.display()),
            "model.lora.r=4".into(),
            "rl.env=math".into(),
            "rl.steps=2".into(),
            "rl.prompts_per_step=2".into(),
            "rl.group_size=2".into(),
            "rl.mini_batch=4".into(),
            "rl.micro_batch=2".into(),
            "rl.max_new_tokens=12".into(),
            "rl.max_total_tokens=12".into(),
            "rl.rollout_dtype=f32".into(),
            "eval.tasks=3".into(),
            "eval.pass_k=0".into(),
            "eval.every=0".into(),
        ] {
            c.args(["--set", &s]);
        }
        c.output().unwrap()
    };
    let o = sets(&train_file, &run);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{log}");
    // Two steps; both evaluations on the JSONL file's three tasks, by their kind.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        records.iter().filter(|r| r.get("wall_s").is_some()).count(),
        2
    );
    let evals: Vec<&serde_json::Value> = records.iter().filter_map(|r| r.get("eval")).collect();
    assert_eq!(evals.len(), 2, "{metrics}");
    for e in evals {
        assert_eq!(e["tasks"], 3, "{e}");
        assert!(e["accuracy_by_kind"].get("dataset").is_some(), "{e}");
    }
    // The checkpoint holds the adapter in PEFT's format over the user's base.
    let ck = alp_trainer::checkpoint::latest(&run).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ck.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["base_model_name_or_path"], model.display().to_string());
    assert!(ck.join("adapter/adapter_model.safetensors").is_file());
    // A bad record: the error names the file, the line and the field; nothing is written.
    let bad_file = root.path().join("bad.jsonl");
    std::fs::write(
        &bad_file,
        "{\"question\": \"1+1?\", \"answer\": \"#### 2\"}\n{\"question\": \"2+2?\"}\n",
    )
    .unwrap();
    let bad_run = root.path().join("bad-run");
    let o = sets(&bad_file, &bad_run);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.jsonl") && err.contains("line 2") && err.contains("answer"),
        "{err}"
    );
    assert!(!bad_run.join("checkpoints").exists());
}
