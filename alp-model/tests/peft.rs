//! PEFT parity, both ways: an adapter alp saves loads with `PeftModel.from_pretrained` on the
//! same base and gives alp's log-probs; an adapter PEFT saves loads in alp and gives PEFT's.
//! Needs Python with torch, transformers and peft: `eval "$(bash scripts/peft-reference.sh)"`
//! sets `ALP_PEFT_PYTHON`; without it the test says so and skips, and with
//! `ALP_REQUIRE_PEFT=1` (CI) it fails instead.

use alp_model::lora::{Adapter, LoraConfig};
use alp_model::{presets, sequence_logprobs, ModelWeights, NoPerturbation, Numerics};
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> Option<PathBuf> {
    match std::env::var_os("ALP_PEFT_PYTHON") {
        Some(p) if Path::new(&p).exists() => Some(PathBuf::from(p)),
        _ => {
            let msg = "no Python with torch + transformers + peft: run `eval \"$(bash scripts/peft-reference.sh)\"` first (sets ALP_PEFT_PYTHON)";
            if std::env::var("ALP_REQUIRE_PEFT").is_ok_and(|v| v == "1") {
                panic!("{msg}");
            }
            eprintln!("skipped: {msg}");
            None
        }
    }
}

const SCRIPT: &str = r#"
import json, sys, torch
from transformers import AutoModelForCausalLM
from peft import LoraConfig, PeftModel, get_peft_model

base, ours, theirs, out = sys.argv[1:5]
ids = torch.tensor([json.loads(sys.argv[5])])

def logprobs(model):
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    lp = torch.log_softmax(logits[0, :-1], dim=-1)
    return lp.gather(1, ids[0, 1:].unsqueeze(1)).squeeze(1).tolist()

load = lambda: AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32).eval()
# alp's adapter, loaded by PEFT.
res = {"ours": logprobs(PeftModel.from_pretrained(load(), ours).eval())}
res["plain"] = logprobs(load())
# PEFT's own adapter: its initialisation, then B at random (a fresh B is zero).
torch.manual_seed(0)
cfg = LoraConfig(r=4, lora_alpha=12, lora_dropout=0.0,
                 target_modules=["q_proj", "v_proj", "o_proj", "down_proj"])
m = get_peft_model(load(), cfg)
for name, p in m.named_parameters():
    if "lora_B" in name:
        with torch.no_grad():
            p.normal_(0.0, 0.05)
m.save_pretrained(theirs)
res["theirs"] = logprobs(m.eval())
json.dump(res, open(out, "w"))
"#;

fn alp_logprobs(w: &ModelWeights, ids: &[u32]) -> Vec<f32> {
    let m = w.build().unwrap();
    let t = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = m
        .forward_full(&t, &[], &NoPerturbation, Numerics::Inference)
        .unwrap();
    sequence_logprobs(&logits, ids).unwrap()
}

fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn adapters_load_both_ways_between_alp_and_peft_with_the_same_logprobs() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (base_dir, ours, theirs, out) = (
        dir.path().join("base"),
        dir.path().join("ours"),
        dir.path().join("theirs"),
        dir.path().join("out.json"),
    );
    // A random Qwen2-shaped base (q/k/v biases, grouped KV heads) and an adapter on every
    // projection whose B is not zero.
    let mut cfg = presets::tiny();
    cfg.vocab_size = 96;
    let mut w = ModelWeights::random(&cfg, 7, DType::F32, &Device::Cpu).unwrap();
    w.save(&base_dir).unwrap();
    let lc = LoraConfig {
        r: 8,
        alpha: 16.0,
        ..LoraConfig::default()
    };
    let mut a = Adapter::init(&cfg, &lc, 1, DType::F32, &Device::Cpu).unwrap();
    for (k, t) in a.tensors.iter_mut() {
        if k.ends_with("lora_B.weight") {
            *t = (Tensor::randn(0f32, 1.0, t.dims(), &Device::Cpu).unwrap() * 0.05).unwrap();
        }
    }
    a.save_peft(&ours, base_dir.to_str().unwrap()).unwrap();
    w.adapter = Some(a);
    let ids: Vec<u32> = (0..12).map(|i| (i * 37 + 5) % 96).collect();
    let o = Command::new(&py)
        .arg("-c")
        .arg(SCRIPT)
        .args([&base_dir, &ours, &theirs, &out])
        .arg(serde_json::to_string(&ids).unwrap())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "the PEFT script failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let res: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let get = |k: &str| -> Vec<f64> { serde_json::from_value(res[k].clone()).unwrap() };
    // alp's adapter under PEFT.
    let ours_lp = alp_logprobs(&w, &ids);
    let d = max_diff(&ours_lp, &get("ours"));
    assert!(d < 1e-4, "alp's adapter: PEFT's log-probs differ by {d}");
    // The adapter matters (the comparison is not between two bases).
    let plain = ModelWeights {
        adapter: None,
        ..w.clone()
    };
    assert!(max_diff(&ours_lp, &get("plain")) > 1e-3);
    assert!(max_diff(&alp_logprobs(&plain, &ids), &get("plain")) < 1e-4);
    // PEFT's adapter in alp.
    let back = Adapter::load_peft(&theirs, &cfg, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(back.config.r, 4);
    assert_eq!(back.config.alpha, 12.0);
    assert_eq!(back.config.target_modules.len(), 4);
    let w2 = ModelWeights {
        adapter: Some(back),
        ..plain
    };
    let d = max_diff(&alp_logprobs(&w2, &ids), &get("theirs"));
    assert!(d < 1e-4, "PEFT's adapter: alp's log-probs differ by {d}");
}
