//! A random-weight Qwen2-architecture checkpoint with a real Qwen tokenizer (its vocabulary and
//! chat template) through `alp train` in the Python environment and `alp eval`, with no
//! special case for the embedded default. The tokenizer comes from
//! `eval "$(bash scripts/qwen-tokenizer.sh)"`; without it the test says so and passes, unless
//! `ALP_REQUIRE_QWEN=1` (CI).

use std::process::Command;

#[path = "../../alp-model/tests/common/qwen.rs"]
mod qwen;
use qwen::qwen_dir;

#[test]
fn a_real_tokenizer_checkpoint_trains_in_the_python_environment_and_evaluates() {
    let Some(tok_dir) = qwen_dir() else { return };
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("qwen-tiny");
    let mut cfg = alp_model::presets::tiny();
    cfg.vocab_size = 151_936;
    alp_model::ModelWeights::random(&cfg, 0, candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap()
        .save(&model)
        .unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tok_dir.join(f), model.join(f)).unwrap();
    }
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
