//! `rl.rollout.backend = "remote"`: a session samples on `alp serve` processes (here in this
//! process, on loopback), publishes its weights to them every step, and accounts staleness
//! from the versions they answer with.

use alp_serve::{ServeConfig, Server};
use alp_trainer::config::TrainConfig;
use alp_trainer::metrics::SAMPLED_BY;
use alp_trainer::Session;

const TOKEN: &str = "remote-test-reload-token-0123456789";
/// The variable the runs read the token from (set once, the same value, by every test).
const ENV: &str = "ALP_TEST_REMOTE_RELOAD_TOKEN";

fn servers(n: usize) -> Vec<Server> {
    (0..n)
        .map(|_| {
            Server::start(ServeConfig {
                reload_token: Some(TOKEN.into()),
                ..Default::default()
            })
            .unwrap()
        })
        .collect()
}

fn config(urls: &[String], extra: &[&str]) -> TrainConfig {
    std::env::set_var(ENV, TOKEN);
    let list = urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(",");
    let mut sets: Vec<String> = [
        "rl.steps=3",
        "rl.prompts_per_step=2",
        "rl.group_size=2",
        "rl.mini_batch=4",
        "rl.micro_batch=2",
        "rl.max_new_tokens=6",
        "rl.max_staleness=0",
        "rl.rollout_dtype=f32",
        "rl.rollout.backend=remote",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sets.push(format!("rl.rollout.servers=[{list}]"));
    sets.push(format!("rl.rollout.reload_token_env={ENV}"));
    sets.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::default().apply_overrides(&sets).unwrap()
}

fn requests_answered(s: &Server) -> u64 {
    let m = ureq::get(&format!("{}/metrics", s.url()))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix("alp_requests_total "))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_session_samples_on_two_servers_and_the_engine_ratio_stays_one() {
    let srv = servers(2);
    let urls: Vec<String> = srv.iter().map(Server::url).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut run = Session::builder(config(&urls, &[]), dir.path().join("run"))
        .build()
        .unwrap();
    for step in 1..=3u64 {
        let m = run.step().unwrap();
        // Synchronous: batch s was sampled by version s − 1, as the servers said.
        assert_eq!(m[SAMPLED_BY], (step - 1) as f64);
        // Same weights in f32 on both sides: the engine part of the mismatch is ~0.
        let kl = m["mismatch/engine/kl_k3"];
        assert!(kl.abs() < 1e-7, "step {step}: engine k3 {kl}");
        let (lo, hi) = (
            m["mismatch/engine/ratio_seq/min"],
            m["mismatch/engine/ratio_seq/max"],
        );
        assert!(
            lo > 0.999 && hi < 1.001,
            "step {step}: engine ratio {lo}..{hi}"
        );
    }
    run.stop_worker();
    for s in &srv {
        assert!(requests_answered(s) > 0, "{} answered nothing", s.url());
    }
    // Only the newest published weights stay on disk.
    let published: Vec<_> = std::fs::read_dir(dir.path().join("run/published"))
        .unwrap()
        .collect();
    assert_eq!(published.len(), 1);
}

/// The `adapter-vN` directories under a publish directory.
fn adapters(published: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(published)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("adapter-v"))
        .collect()
}

/// A LoRA run publishes only its adapter: `alp serve` keeps the base it read once and
/// attaches each version's adapter, and its log-probs stay the trainer's.
#[test]
fn a_lora_session_publishes_adapters_over_a_base_written_once() {
    let srv = servers(1);
    let urls: Vec<String> = srv.iter().map(Server::url).collect();
    let dir = tempfile::tempdir().unwrap();
    // An adapter whose B is not zero (a fresh one changes nothing, and a random policy's
    // rewards are all alike, so RL would not move it): a server that ignored it would
    // answer with the base's log-probs.
    let shape = alp_model::presets::alp_default();
    let lc = alp_model::LoraConfig {
        r: 4,
        ..Default::default()
    };
    let mut a = alp_model::Adapter::init(
        &shape,
        &lc,
        5,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    for (k, t) in a.tensors.iter_mut() {
        if k.ends_with("lora_B.weight") {
            *t = (candle_core::Tensor::randn(0f32, 1.0, t.dims(), &candle_core::Device::Cpu)
                .unwrap()
                * 0.2)
                .unwrap();
        }
    }
    let adapter_dir = dir.path().join("start-adapter");
    a.save_peft(&adapter_dir, "alp-default").unwrap();
    let cfg = config(
        &urls,
        &[
            "model.lora.r=4",
            "sft.steps=0",
            &format!("model.adapter={}", adapter_dir.display()),
        ],
    );
    let mut run = Session::builder(cfg, dir.path().join("run"))
        .build()
        .unwrap();
    let published = dir.path().join("run/published");
    let mut base_mtime = None;
    for step in 1..=3u64 {
        let m = run.step().unwrap();
        assert_eq!(m[SAMPLED_BY], (step - 1) as f64);
        let kl = m["mismatch/engine/kl_k3"];
        assert!(kl.abs() < 1e-7, "step {step}: engine k3 {kl}");
        // The base was written once. The worker publishes beside the update, so the next
        // adapter may be being written while the previous one is still live: never more
        // than those two.
        let t = std::fs::metadata(published.join("base/model.safetensors"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(
            *base_mtime.get_or_insert(t),
            t,
            "step {step}: the base was rewritten"
        );
        let n = adapters(&published).len();
        assert!((1..=2).contains(&n), "step {step}: {n} adapter directories");
    }
    run.stop_worker();
    // Once the worker has stopped, only the newest adapter is on disk, and it is small
    // beside the base.
    let left = adapters(&published);
    assert_eq!(left.len(), 1, "{left:?}");
    let a = published.join(&left[0]);
    assert!(a.join("adapter_config.json").is_file());
    let size = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().len();
    assert!(
        size(a.join("adapter_model.safetensors")) * 4
            < size(published.join("base/model.safetensors")),
        "the adapter is not small beside the base"
    );
    assert!(requests_answered(&srv[0]) > 0);
}

#[test]
fn no_server_is_a_clear_error_before_anything_is_trained() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let dir = tempfile::tempdir().unwrap();
    let mut run = Session::builder(
        config(std::slice::from_ref(&dead), &[]),
        dir.path().join("run"),
    )
    .build()
    .unwrap();
    let e = run.step().unwrap_err().to_string();
    assert!(e.contains("no rollout server took weight version 0"), "{e}");
    assert!(e.contains(&dead), "{e}");
    assert_eq!(run.policy_version(), 0);
}

#[test]
fn a_remote_backend_without_servers_is_a_config_error_naming_the_key() {
    let cfg = TrainConfig::default()
        .apply_overrides(&["rl.rollout.backend=remote".to_string()])
        .unwrap();
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("rl.rollout.servers"), "{e}");
}
