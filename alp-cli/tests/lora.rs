//! LoRA runs end to end: a full-weight warm start becomes the frozen base, RL trains only the
//! adapter, checkpoints hold it in PEFT's format, a resume continues it bit for bit, SFT can
//! train the adapter too, and a run can start from a PEFT adapter directory.

use alp_cli::run::{train, RunOptions};
use alp_trainer::checkpoint;
use alp_trainer::config::TrainConfig;
use candle_core::{DType, Device};
use std::path::Path;

mod common;

fn opts(out: &Path) -> RunOptions {
    RunOptions {
        out: Some(out.into()),
        skip_eval: true,
        ..Default::default()
    }
}

const LORA: &[&str] = &[
    "model.lora.r=4",
    "rl.lr=1e-3",
    "rl.format_penalty=0.5",
    "rl.max_new_tokens=12",
    "rl.max_total_tokens=24",
    "rl.steps=4",
    "sft.steps=40",
    "sft.batch_size=16",
    "rl.group_size=4",
    "rl.prompts_per_step=4",
    "rl.mini_batch=8",
];

fn adapter(run: &Path) -> Vec<(String, Vec<f32>)> {
    let w = checkpoint::load_weights(&checkpoint::latest(run).unwrap(), DType::F32, &Device::Cpu)
        .unwrap();
    w.adapter
        .expect("a LoRA checkpoint loads with its adapter")
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

fn base(run: &Path) -> Vec<Vec<f32>> {
    let w = checkpoint::load_weights(&checkpoint::latest(run).unwrap(), DType::F32, &Device::Cpu)
        .unwrap();
    w.tensors
        .values()
        .map(|t| t.flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

#[test]
fn a_lora_run_trains_only_the_adapter_over_its_warm_start_and_resumes_bit_for_bit() {
    let root = tempfile::tempdir().unwrap();
    let cfg = common::small_config(LORA);
    let whole = root.path().join("whole");
    train(cfg.clone(), opts(&whole)).unwrap();
    // The warm start's weights were written once as the base; checkpoints hold the adapter
    // in PEFT's format, and no model.
    let ck = checkpoint::latest(&whole).unwrap();
    assert!(whole.join("base/model.safetensors").is_file());
    assert!(ck.join("adapter/adapter_config.json").is_file());
    assert!(ck.join("adapter/adapter_model.safetensors").is_file());
    assert!(ck.join("adapter/tokenizer.json").is_file());
    assert!(!ck.join("model").exists());
    let man = checkpoint::read_manifest(&ck).unwrap();
    assert_eq!(man.step, 4);
    assert_eq!(
        man.lora_base.as_deref(),
        Some(std::path::absolute(whole.join("base")).unwrap().as_path())
    );
    // Only the adapter has optimizer state (and σ its own group).
    let state =
        candle_core::safetensors::load(ck.join("trainer_state.safetensors"), &Device::Cpu).unwrap();
    let theta: Vec<&String> = state
        .keys()
        .filter(|k| k.starts_with("opt.") && *k != "opt.t")
        .collect();
    assert!(!theta.is_empty());
    assert!(theta.iter().all(|k| k.contains(".lora_")), "{theta:?}");
    // RL moved B off zero; the base is the warm start's, untouched by RL.
    let a = adapter(&whole);
    assert!(a
        .iter()
        .filter(|(k, _)| k.ends_with("lora_B.weight"))
        .any(|(_, v)| v.iter().any(|x| *x != 0.0)));
    let base_dir =
        alp_model::ModelWeights::load(&whole.join("base"), DType::F32, &Device::Cpu).unwrap();
    let from_base: Vec<Vec<f32>> = base_dir
        .tensors
        .values()
        .map(|t| t.flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    assert_eq!(base(&whole), from_base);

    // ALP's σ trains beside the adapter (its variable moved with it into the LoRA phase).
    let metrics = std::fs::read_to_string(whole.join("metrics.jsonl")).unwrap();
    let sigma_grads: Vec<f64> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["sigma/grad_norm"].as_f64())
        .collect();
    assert!(sigma_grads.iter().any(|g| *g > 0.0), "{sigma_grads:?}");

    // `alp merge` folds the adapter into its base: a plain checkpoint with the same forward.
    let merged = root.path().join("merged");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_alp"))
        .args(["merge"])
        .arg(&whole)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(merged.join("tokenizer.json").is_file());
    let plain = alp_model::ModelWeights::load(&merged, DType::F32, &Device::Cpu).unwrap();
    let lora = checkpoint::load_weights(&ck, DType::F32, &Device::Cpu).unwrap();
    let ids = candle_core::Tensor::new(&[[3u32, 17, 40, 9, 22, 5, 61, 2]], &Device::Cpu).unwrap();
    let f = |w: &alp_model::ModelWeights| {
        w.build()
            .unwrap()
            .forward_full(
                &ids,
                &[],
                &alp_model::NoPerturbation,
                alp_model::Numerics::Inference,
            )
            .unwrap()
    };
    let d = (f(&plain) - f(&lora))
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-5, "merged vs adapter logits: {d}");
    // A full checkpoint has nothing to merge: said, and nothing written.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_alp"))
        .args(["merge"])
        .arg(whole.join("base"))
        .arg("--out")
        .arg(root.path().join("nothing"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("nothing to merge") || err.contains("no checkpoint"),
        "{err}"
    );
    assert!(!root.path().join("nothing").exists());

    // Cut into pieces, each a resume of the last: the same adapter, bit for bit.
    let cut = root.path().join("cut");
    for (i, n) in [1u64, 2, 1].into_iter().enumerate() {
        let o = RunOptions {
            resume: (i > 0).then(|| cut.clone()),
            max_steps_this_run: Some(n),
            ..opts(&cut)
        };
        train(
            if i == 0 {
                cfg.clone()
            } else {
                TrainConfig::default()
            },
            o,
        )
        .unwrap();
    }
    assert_eq!(adapter(&cut), a);
}

#[test]
fn sft_can_train_the_adapter_and_a_run_can_start_from_a_peft_adapter() {
    let root = tempfile::tempdir().unwrap();
    // sft.lora: SFT trains the adapter over the random base; no base is written.
    let sft = root.path().join("sft");
    let cfg = common::small_config(&["model.lora.r=4", "sft.lora=true", "sft.steps=3"]);
    train(cfg, opts(&sft)).unwrap();
    assert!(!sft.join("base").exists());
    let ck = checkpoint::latest(&sft).unwrap();
    assert_eq!(checkpoint::read_manifest(&ck).unwrap().lora_base, None);
    let trained = adapter(&sft);
    assert!(trained
        .iter()
        .filter(|(k, _)| k.ends_with("lora_B.weight"))
        .any(|(_, v)| v.iter().any(|x| *x != 0.0)));
    // A run from that adapter directory (PEFT's format) over the same base starts where it
    // ended: with no RL step and no SFT, its checkpoint holds the same adapter.
    let from = root.path().join("from");
    let dir = ck.join("adapter");
    let cfg = common::small_config(&[
        "model.lora.r=16",
        "sft.steps=0",
        "rl.steps=0",
        &format!("model.adapter={}", dir.display()),
    ]);
    train(cfg, opts(&from)).unwrap();
    assert_eq!(adapter(&from), trained);
    let man = checkpoint::read_manifest(&checkpoint::latest(&from).unwrap()).unwrap();
    let saved = TrainConfig::from_toml(&man.config).unwrap();
    assert_eq!(saved.model.lora.r, 4, "the adapter's own rank is recorded");
}

#[test]
fn bad_lora_settings_are_refused_naming_the_field() {
    for (set, field) in [
        ("model.lora.dropout=0.1", "model.lora.dropout"),
        (
            "model.lora.target_modules=[\"qkv\"]",
            "model.lora.target_modules",
        ),
        ("model.adapter=/nonexistent", "model.adapter"),
    ] {
        let mut sets = vec![set];
        if !set.starts_with("model.adapter") {
            sets.push("model.lora.r=4");
        }
        let e = TrainConfig::default()
            .apply_overrides(&sets.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .and_then(|c| c.validate().map(|_| c))
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{set}: {e}");
    }
    // An adapter directory that is not there names the setting and the file.
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::small_config(&["model.lora.r=4", "model.adapter=/nonexistent/adapter"]);
    let e = train(cfg, opts(&dir.path().join("run")))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.adapter") && e.contains("/nonexistent/adapter"),
        "{e}"
    );
}

/// The embedded default with LoRA (rank 16 on every projection, RL at 3e-4): its warm start
/// trains every weight, then 20 RL steps train only the adapter. Held-out greedy accuracy
/// must rise by at least 10 points (measured: 15.5% → 55.5% after 30 steps, seed 0).
#[test]
fn a_lora_run_on_the_embedded_default_raises_heldout_accuracy_by_ten_points() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig::default()
        .apply_overrides(
            &[
                "model.lora.r=16",
                "rl.lr=3e-4",
                "rl.steps=20",
                "eval.every=0",
                "eval.pass_k=0",
                "checkpoint.every=0",
            ]
            .map(String::from),
        )
        .unwrap();
    let out = train(
        cfg,
        RunOptions {
            out: Some(dir.path().join("run")),
            ..Default::default()
        },
    )
    .unwrap();
    let (before, after) = (out.before.unwrap(), out.after.unwrap());
    let gain = 100.0 * (after.accuracy - before.accuracy);
    assert!(
        gain >= 10.0,
        "held-out accuracy {:.1}% → {:.1}% ({gain:+.1} points)",
        100.0 * before.accuracy,
        100.0 * after.accuracy
    );
}
