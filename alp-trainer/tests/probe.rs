//! The mechanism probe: the same numbers for the same weights, each quantity held to a plain
//! float64 computation from the model's logits, and the orderings its definitions imply.
use alp_trainer::config::TrainConfig;
use alp_trainer::metrics::{probe_noise_kl_name, PROBE_ENGINE_KL, PROBE_ENTROPY};
use alp_trainer::trainer::Trainer;
use alp_trainer::Session;

fn config(extra: &[&str]) -> TrainConfig {
    let mut sets: Vec<String> = [
        "tasks.embedded=chain",
        "rl.env=math",
        "rl.max_new_tokens=160",
        "rl.max_total_tokens=200",
        "sft.steps=30",
        "sft.batch_size=8",
        "rl.steps=2",
        "rl.prompts_per_step=2",
        "rl.group_size=2",
        "rl.mini_batch=4",
        "rl.micro_batch=4",
        "rl.max_staleness=0",
        "eval.probe_every=1",
        "eval.probe_tasks=6",
        "eval.every=0",
        "eval.tasks=2",
        "eval.pass_k=0",
        "checkpoint.every=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sets.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::default().apply_overrides(&sets).unwrap()
}

/// Entropy and KL(p ‖ q) per masked token, in f64 from `[T, V]` logits rows.
fn reference(p_logits: &[Vec<f32>], q_logits: &[Vec<f32>]) -> (f64, f64) {
    let lsm = |row: &[f32]| -> Vec<f64> {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let z: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
        row.iter().map(|&x| x as f64 - m - z.ln()).collect()
    };
    let (mut h, mut kl) = (0.0, 0.0);
    for (pr, qr) in p_logits.iter().zip(q_logits) {
        let (lp, lq) = (lsm(pr), lsm(qr));
        for (a, b) in lp.iter().zip(&lq) {
            h -= a.exp() * a;
            kl += a.exp() * (a - b);
        }
    }
    let n = p_logits.len() as f64;
    (h / n, kl / n)
}

#[test]
fn the_probe_is_repeatable_matches_a_float64_reference_and_orders_its_noise() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Session::builder(
        config(&["rl.rollout_dtype=bf16", "rl.rollout_quant=int4"]),
        dir.path().join("run"),
    )
    .build()
    .unwrap();
    s.sft(None, &mut |_, _| {}).unwrap();
    let m = s.step().unwrap();
    let h = m.get(PROBE_ENTROPY).unwrap();
    let engine = m.get(PROBE_ENGINE_KL).unwrap();
    let rel = |x: f64| m.get(&probe_noise_kl_name(true, x)).unwrap();
    let abs = m.get(&probe_noise_kl_name(false, 0.02)).unwrap();
    assert!(h > 0.0 && h.is_finite(), "{h}");
    // int4 rollouts move the policy; noise of 5% of the hidden state's RMS moves it more
    // than noise of 1% (the same noise draws, scaled).
    assert!(engine > 1e-6, "{engine}");
    assert!(
        rel(0.05) > rel(0.01) && rel(0.01) > 0.0,
        "{} {}",
        rel(0.05),
        rel(0.01)
    );
    assert!(abs > 0.0);
    // The same weights probed again: the same numbers.
    let t: &Trainer = s.trainer();
    let again = alp_trainer::probe::probe(t).unwrap();
    assert_eq!(again[PROBE_ENTROPY], h);
    assert_eq!(again[PROBE_ENGINE_KL], engine);

    // Entropy and the engine KL against a float64 computation from the logits of every
    // demonstration, one at a time.
    let tok = t.tokenizer.clone();
    let mut tasks = t.task_stream(
        alp_envs::math::Split::Heldout,
        alp_trainer::probe::PROBE_SEED,
    );
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(
        alp_trainer::probe::PROBE_SEED,
    );
    let policy = t.model.detached();
    let engine_model = t.rollout_snapshot().unwrap().build().unwrap();
    let (mut hs, mut ks, mut n) = (0.0, 0.0, 0.0);
    for _ in 0..t.cfg.eval.probe_tasks {
        let task = alp_core::TaskSource::next_task(&mut tasks).unwrap();
        let ex = alp_trainer::default_task::demonstration(&tok, &task, 0.0, &mut rng).unwrap();
        let mut ids = ex.prompt.clone();
        ids.extend_from_slice(&ex.response);
        let input = candle_core::Tensor::new(&ids[..ids.len() - 1], &candle_core::Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let rows = |model: &alp_model::Model| -> Vec<Vec<f32>> {
            // The reference numerics (candle's own ops), not the probe's fused kernels.
            let l = model
                .forward_full(
                    &input,
                    &[0],
                    &alp_model::NoPerturbation,
                    alp_model::Numerics::Reference,
                )
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            l[ex.prompt.len() - 1..].to_vec()
        };
        let (p, e) = (rows(&policy), rows(&engine_model));
        let k = ex.response.len() as f64;
        let (eh, _) = reference(&p, &p);
        let (_, ek) = reference(&e, &p);
        hs += eh * k;
        ks += ek * k;
        n += k;
    }
    let (hr, kr) = (hs / n, ks / n);
    assert!((h - hr).abs() < 1e-4 * hr.max(1.0), "entropy {h} vs {hr}");
    assert!(
        (engine - kr).abs() < 1e-3 * kr + 1e-6,
        "engine KL {engine} vs {kr}"
    );
}
