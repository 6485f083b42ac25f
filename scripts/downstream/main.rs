//! A crate outside the alp workspace, built by `scripts/downstream-check.sh` on the registry's
//! candle-core (no `[patch]`) and alp-trainer without its default `cli` feature: a two-step RL
//! loop on the embedded default, after a short SFT warm start.
use alp_trainer::{config::TrainConfig, metrics, Session};

fn main() -> alp_core::Result<()> {
    let cfg = TrainConfig::default().apply_overrides(
        &[
            "sft.steps=4",
            "sft.batch_size=8",
            "rl.steps=2",
            "rl.prompts_per_step=4",
            "rl.group_size=4",
            "rl.mini_batch=16",
            "rl.micro_batch=8",
            "rl.max_new_tokens=8",
        ]
        .map(String::from),
    )?;
    let dir = std::env::temp_dir().join(format!("alp-downstream-{}", std::process::id()));
    let mut run = Session::create(cfg, dir.clone())?;
    run.sft(None, &mut |_, _| {})?;
    for _ in 0..2 {
        let m = run.step()?;
        assert!(m[metrics::REWARD_MEAN].is_finite());
        println!("step {}: reward {:.3}", m.step, m[metrics::REWARD_MEAN]);
    }
    assert_eq!(run.step_index(), 2);
    drop(run);
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
