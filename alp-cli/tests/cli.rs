use std::process::Command;

fn alp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_alp"))
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A JSON array of numbers.
fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn init_then_logprobs_matches_cached_decode() {
    let dir = tempfile::tempdir().unwrap();
    let out = alp()
        .args(["init", "--preset", "tiny", "--seed", "3", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Refuses to overwrite without --force.
    let again = alp()
        .args(["init", "--preset", "tiny", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--force"));

    let out = alp()
        .args(["logprobs", "--tokens", "1,5,9,33", "--model"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lp = f64s(&v["logprobs"]);
    assert_eq!(lp.len(), 3);

    // Same numbers as a token-by-token cached decode through the library.
    use alp_model::NoPerturbation;
    use candle_core::{DType, Device, Tensor};
    let w = alp_model::ModelWeights::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let m = w.build().unwrap();
    let mut cache = m.new_cache(8, &[]);
    let toks = [1u32, 5, 9, 33];
    for i in 0..3 {
        let ids = Tensor::new(&[[toks[i]]], &Device::Cpu).unwrap();
        let logits = m.forward_cached(&ids, &mut cache, &NoPerturbation).unwrap();
        let tgt = Tensor::new(&[[toks[i + 1]]], &Device::Cpu).unwrap();
        let want = alp_model::token_logprobs(&logits, &tgt, 1.0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        assert!(
            (want as f64 - lp[i]).abs() < 1e-4,
            "{i}: {want} vs {}",
            lp[i]
        );
        assert!(lp[i] < 0.0);
    }
}

#[test]
fn bad_inputs_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = alp()
        .args(["logprobs", "--tokens", "1,2", "--model"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("config.json"), "{}", stderr(&out));
    alp()
        .args(["init", "--preset", "tiny", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    let out = alp()
        .args(["logprobs", "--tokens", "1,2,640", "--model"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("640"), "{}", stderr(&out));
    let out = alp()
        .args(["logprobs", "--tokens", "1,x", "--model"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("`x` is not a token id"),
        "{}",
        stderr(&out)
    );
    let out = alp()
        .args(["init", "--preset", "nope", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(stderr(&out).contains("qwen2-25m"), "{}", stderr(&out));
}

#[test]
fn grade_writes_one_line_per_input_and_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("preds.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"answer\": \"1/2\", \"prediction\": \"so \\\\boxed{0.5}\"}\n",
            "{\"answer\": \"7\", \"prediction\": \"The answer is 7.\"}\n",
            "not json\n",
            "{\"answer\": 3, \"prediction\": \"\\\\boxed{4}\"}\n",
        ),
    )
    .unwrap();
    let run = |strict: bool| {
        let mut cmd = alp();
        cmd.args(["grade", "--input"]).arg(&input);
        if strict {
            cmd.arg("--strict");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (lines, String::from_utf8(out.stderr).unwrap())
    };
    let (lines, err) = run(false);
    let correct: Vec<bool> = lines
        .iter()
        .map(|l| l["correct"].as_bool().unwrap())
        .collect();
    assert_eq!(correct, vec![true, true, false, false]);
    assert_eq!(lines[0]["extracted"], "0.5");
    assert!(err.contains("accuracy 0.5000"), "{err}");
    let (lines, _) = run(true);
    assert_eq!(lines[1]["correct"], false, "strict mode needs a box");
    let missing = alp()
        .args(["grade", "--input", "/nonexistent/preds.jsonl"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("/nonexistent/preds.jsonl"));
}

#[test]
fn bench_rollout_reports_generated_tokens_as_json() {
    let out = alp()
        .args([
            "bench",
            "rollout",
            "--preset",
            "tiny",
            "--batch",
            "4",
            "--prompt-len",
            "5",
            "--new-tokens",
            "3",
            "--repeats",
            "3",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["generated_tokens"], 12);
    // The reported throughput is the median of the three timed runs, each listed.
    let mut runs = f64s(&last["runs_tokens_per_s"]);
    assert_eq!(runs.len(), 3);
    runs.sort_by(f64::total_cmp);
    let tps = last["tokens_per_s"].as_f64().unwrap();
    assert!(tps > 0.0);
    assert!((tps - runs[1]).abs() <= 1e-9 * runs[1], "{tps} vs {runs:?}");
    // The machine the number belongs to.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = last["machine"]["cpu"].as_str().unwrap();
    assert!(cpuinfo.contains(cpu) || cpu == "unknown", "{cpu}");
    assert!(last["machine"]["gemm"].as_str().unwrap().contains("gemm"));
    let bad = alp()
        .args(["bench", "rollout", "--preset", "nope"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("unknown preset"));
}

#[test]
fn generate_prints_completions_of_a_saved_checkpoint() {
    let dir = default_checkpoint();
    let out = alp()
        .args([
            "generate",
            "--prompt",
            "12+5=",
            "--n",
            "3",
            "--temperature",
            "0",
            "--max-new-tokens",
            "5",
            "--model",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let headers: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("--- completion"))
        .collect();
    assert_eq!(headers.len(), 3, "{text}");
    // Greedy: every completion is the same.
    let bodies: Vec<&str> = text
        .split("--- completion")
        .skip(1)
        .map(|b| b.split_once('\n').unwrap().1)
        .collect();
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{text}");
    assert!(
        headers
            .iter()
            .all(|h| h.contains("5 tokens") || h.contains("stop: eos")),
        "{text}"
    );
}

#[test]
fn eval_reads_the_default_mix_and_jsonl_files() {
    let dir = default_checkpoint();
    let data = dir.path().join("gsm.jsonl");
    std::fs::write(
        &data,
        "{\"question\": \"1+1=\", \"answer\": \"so\\n#### 2\"}\n{\"question\": \"2+2=\", \"answer\": \"#### 4\"}\nbroken\n",
    )
    .unwrap();
    for (tasks, expect) in [("tool", 6u64), ("math", 6), (data.to_str().unwrap(), 2)] {
        let out = alp()
            .args([
                "eval", "--tasks", tasks, "--limit", "6", "--n", "2", "--model",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{tasks}: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["tasks"], expect, "{tasks}");
        assert_eq!(v["k"], 2);
        let acc = v["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
        if tasks.ends_with(".jsonl") {
            assert!(stderr(&out).contains(":3: skipped"));
        }
    }
}

mod common;
use common::default_checkpoint;

#[test]
fn resume_with_another_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("other.toml");
    std::fs::write(&cfg, "seed = 3\n").unwrap();
    let out = alp()
        .args(["train", "--resume"])
        .arg(dir.path())
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--config"), "{}", stderr(&out));
}

#[test]
fn non_finite_weights_make_logprobs_an_error_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = alp_model::presets::tiny();
    let mut w = alp_model::ModelWeights::random(
        &cfg,
        0,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let name = "model.layers.0.mlp.up_proj.weight".to_string();
    let t = &w.tensors[&name];
    w.tensors.insert(name.clone(), (t * f64::NAN).unwrap());
    w.save(dir.path()).unwrap();
    let out = alp()
        .args(["logprobs", "--tokens", "1,5,9", "--model"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr(&out).contains(&name), "{}", stderr(&out));
}

#[test]
fn a_shard_index_cannot_reach_outside_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = alp()
        .args(["init", "--preset", "tiny", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        r#"{"weight_map": {"model.embed_tokens.weight": "../../../../etc/passwd"}}"#,
    )
    .unwrap();
    let out = alp()
        .args(["logprobs", "--tokens", "1,5", "--model"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("outside the checkpoint"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_line_that_is_not_utf8_is_one_bad_line_not_the_end_of_grading() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.jsonl");
    let mut bytes = br#"{"answer": "4", "prediction": "\\boxed{4}"}"#.to_vec();
    bytes.extend_from_slice(b"\n\xff\xfe not utf8\n");
    bytes.extend_from_slice(br#"{"answer": "5", "prediction": "\\boxed{5}"}"#);
    bytes.push(b'\n');
    std::fs::write(&f, bytes).unwrap();
    let out = alp().args(["grade", "--input"]).arg(&f).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        (lines[0]["correct"].as_bool(), lines[2]["correct"].as_bool()),
        (Some(true), Some(true))
    );
    assert!(lines[1]["error"].as_str().unwrap().contains("UTF-8"));
}

#[test]
fn init_force_into_a_sharded_checkpoint_replaces_the_old_weights() {
    let dir = tempfile::tempdir().unwrap();
    // An old sharded checkpoint: the model of seed 1 as two shards and an index.
    let cfg = alp_model::presets::tiny();
    let old = alp_model::ModelWeights::random(
        &cfg,
        1,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    old.save(dir.path()).unwrap();
    let names: Vec<String> = old.tensors.keys().cloned().collect();
    let (a, b) = names.split_at(names.len() / 2);
    let shard = |n: &[String], f: &str| {
        let m: std::collections::HashMap<String, candle_core::Tensor> = n
            .iter()
            .map(|k| (k.clone(), old.tensors[k].clone()))
            .collect();
        candle_core::safetensors::save(&m, dir.path().join(f)).unwrap();
    };
    shard(a, "model-00001-of-00002.safetensors");
    shard(b, "model-00002-of-00002.safetensors");
    let map: serde_json::Map<String, serde_json::Value> = a
        .iter()
        .map(|k| (k.clone(), "model-00001-of-00002.safetensors".into()))
        .chain(
            b.iter()
                .map(|k| (k.clone(), "model-00002-of-00002.safetensors".into())),
        )
        .collect();
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        serde_json::json!({ "weight_map": map }).to_string(),
    )
    .unwrap();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let out = alp()
        .args([
            "init", "--preset", "tiny", "--seed", "2", "--force", "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let loaded = alp_model::ModelWeights::load(
        dir.path(),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let new = alp_model::ModelWeights::random(
        &cfg,
        2,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let k = &names[0];
    let d = (&loaded.tensors[k] - &new.tensors[k])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert_eq!(
        d.to_scalar::<f32>().unwrap(),
        0.0,
        "the new model is what loads"
    );
    assert!(!dir.path().join("model.safetensors.index.json").exists());
}

#[test]
fn ctrl_c_during_sft_exits_130_with_a_finite_sft_checkpoint() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut child = alp()
        .args([
            "train",
            "--set",
            "sft.steps=100000",
            "--set",
            "sft.batch_size=4",
        ])
        .args(["--set", "eval.tasks=4", "--set", "rl.steps=1", "--out"])
        .arg(&run)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the first SFT progress line, then Ctrl-C.
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for l in lines.by_ref() {
        if l.unwrap().starts_with("sft step 1/") {
            break;
        }
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("interrupted during SFT")),
        "{rest:?}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["phase"], "sft");
    let ck = alp_trainer::checkpoint::latest(&run).unwrap();
    let man = alp_trainer::checkpoint::read_manifest(&ck).unwrap();
    let done = man.sft_steps_done.unwrap();
    assert!((1..100_000).contains(&done), "{done}");
    let w = alp_trainer::checkpoint::load_weights(
        &ck,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(alp_trainer::checkpoint::first_non_finite(&w).unwrap(), None);
}

#[test]
fn alp_serve_listens_on_loopback_and_refuses_reload_without_a_token() {
    use std::io::BufRead;
    let mut child = alp()
        .args(["serve", "--port", "0"])
        .env_remove("ALP_RELOAD_TOKEN")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in `{line}`"))
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    assert!(line.contains("reload off"), "{line}");
    // No weights yet: health says so; reload is off without a token.
    let health = ureq::get(&format!("{url}/health")).call();
    assert!(
        matches!(health, Err(ureq::Error::Status(503, _))),
        "{health:?}"
    );
    let reload = ureq::post(&format!("{url}/reload"))
        .set("Authorization", "Bearer anything-at-all-0123456789")
        .send_json(serde_json::json!({"path": "/"}));
    assert!(
        matches!(reload, Err(ureq::Error::Status(403, _))),
        "{reload:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // A host that is not an address is refused by name.
    let o = alp()
        .args(["serve", "--host", "localhost:80"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--host localhost:80"));
}
