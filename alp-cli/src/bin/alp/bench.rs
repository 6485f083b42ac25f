//! `alp bench rollout`: generation throughput on random prompts.
use std::sync::Arc;
use std::time::Instant;

use alp_model::{load_pretrained, parse_device, parse_dtype, presets, ModelWeights};
use alp_rollout::{Engine, EngineConfig, Request, SamplingParams};
use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};

/// Options of `alp bench rollout`.
#[derive(clap::Args)]
pub struct RolloutArgs {
    /// Model directory or Hugging Face repo id.
    #[arg(long, conflicts_with = "preset")]
    pub model: Option<String>,
    /// A named shape with random weights instead (tiny, qwen2-25m, qwen2.5-0.5b).
    #[arg(long)]
    pub preset: Option<String>,
    /// Sequences generated together.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Prompt length.
    #[arg(long, default_value_t = 32)]
    pub prompt_len: usize,
    /// New tokens per sequence.
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Batches decoded in parallel threads (default: the CPU's cores up to 4; 1 on a GPU).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Weights dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Timed generations of the whole batch; the median one is reported (each is listed in
    /// the JSON's `runs_tokens_per_s`).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// The bit-exact rollout numerics (`rl.rollout_numerics = "exact"`: the trainer's
    /// kernels, f32 on the CPU) instead of the engine's fast ones.
    #[arg(long)]
    pub exact: bool,
    /// Print only the JSON line.
    #[arg(long)]
    pub json: bool,
}

/// Generates `--batch` sequences from random prompts `--repeats` times after a short warm-up,
/// and prints the median run's throughput with the machine it was measured on.
pub fn rollout(a: RolloutArgs) -> Result<()> {
    let shards = a.shards.unwrap_or_else(|| {
        if a.device == "cpu" {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
        } else {
            1
        }
    });
    let device = parse_device(&a.device)?;
    let dtype = parse_dtype(&a.dtype)?;
    let model = match (&a.model, &a.preset) {
        (Some(m), None) => load_pretrained(m, dtype, &device)?.model,
        (None, Some(p)) => {
            ModelWeights::random(&presets::by_name(p)?, 0, dtype, &device)?.build()?
        }
        _ => bail!("give exactly one of --model <dir or repo id> or --preset <name>"),
    };
    if a.batch == 0 || a.prompt_len == 0 || a.new_tokens == 0 || a.repeats == 0 {
        bail!("--batch, --prompt-len, --new-tokens and --repeats must be positive");
    }
    // The KV cache of every row at full length, and its prompt and outputs.
    let c = model.config();
    let len = a.prompt_len.saturating_add(a.new_tokens) as u64;
    let kv = 2
        * (c.num_hidden_layers * c.num_kv_heads() * c.head_dim()) as u64
        * dtype.size_in_bytes() as u64;
    alp_core::memory::check_fits(
        "--batch",
        a.batch,
        len.saturating_mul(kv + 16),
        "the KV cache of its rows",
        None,
    )?;
    let vocab = model.config().vocab_size as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let requests: Vec<Request> = (0..a.batch)
        .map(|i| Request {
            prompt: (0..a.prompt_len)
                .map(|_| rng.random_range(0..vocab))
                .collect(),
            params: SamplingParams {
                max_new_tokens: a.new_tokens,
                seed: i as u64,
                ignore_eos: true,
                ..Default::default()
            },
        })
        .collect();
    let engine = Engine::new(
        Arc::new(model),
        EngineConfig {
            max_batch: a.batch,
            token_budget: a.batch * (a.prompt_len + a.new_tokens),
            max_context: 0,
            shards,
            exact_numerics: a.exact,
            ..Default::default()
        },
    )?;
    // Warm-up on one short request (allocations, thread pools).
    engine.generate(&[Request {
        prompt: requests[0].prompt.clone(),
        params: SamplingParams {
            max_new_tokens: 2,
            ..requests[0].params.clone()
        },
    }])?;
    // Each repeat generates the same batch from scratch (same prompts and seeds): (tokens/s,
    // seconds, generated tokens, counters) per run.
    let mut runs = Vec::with_capacity(a.repeats);
    for _ in 0..a.repeats {
        let t = Instant::now();
        let (out, stats) = engine.generate_with_stats(&requests)?;
        let secs = t.elapsed().as_secs_f64();
        let generated: usize = out.iter().map(|c| c.tokens.len()).sum();
        runs.push((generated as f64 / secs, secs, generated, stats));
    }
    let run_tps: Vec<f64> = runs.iter().map(|r| r.0).collect();
    runs.sort_by(|x, y| x.0.total_cmp(&y.0));
    // The lower middle for an even count, as the slower of the two middle runs.
    let (tps, secs, generated, stats) = &runs[(runs.len() - 1) / 2];
    if !a.json {
        println!("generated {generated} tokens in {secs:.2} s (median of {} runs): {tps:.0} tokens/s ({} decode steps, {} prefills)", a.repeats, stats.decode_steps, stats.prefills);
    }
    println!(
        "{}",
        serde_json::json!({
            "tokens_per_s": tps, "generated_tokens": generated, "seconds": secs,
            "runs_tokens_per_s": run_tps,
            "batch": a.batch, "prompt_len": a.prompt_len, "new_tokens": a.new_tokens,
            "dtype": a.dtype, "device": a.device, "shards": shards, "exact": a.exact, "decode_steps": stats.decode_steps,
            "prefill_seconds": stats.prefill_seconds, "decode_seconds": stats.decode_seconds,
            "decode_tokens_per_s": (generated - requests.len()) as f64 / stats.decode_seconds.max(1e-9),
            "machine": machine(&a.device),
        })
    );
    Ok(())
}

/// Options of `alp bench train`.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// Model directory or Hugging Face repo id.
    #[arg(long, conflicts_with = "preset")]
    pub model: Option<String>,
    /// A named shape with random weights instead.
    #[arg(long)]
    pub preset: Option<String>,
    /// Sequences per step.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Micro-batches computed at once, each on its own thread with the gradients summed, as
    /// `alp train` does (default: `alp train`'s: the CPU's threads up to 64M parameters, at
    /// most the batch, otherwise 1; 1 on a GPU).
    #[arg(long)]
    pub parallel_micro_batches: Option<usize>,
    /// Gradient checkpointing: keep each decoder layer's input only and recompute the layer in
    /// the backward (`model.gradient_checkpointing` of `alp train`).
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// LoRA rank (0: every weight trains): the base frozen, adapters on every projection
    /// (A and B the only variables, as `model.lora.r` of `alp train`).
    #[arg(long, default_value_t = 0)]
    pub lora_r: usize,
    /// LoRA's alpha (the update scaled by alpha / r).
    #[arg(long, default_value_t = 32.0)]
    pub lora_alpha: f64,
    /// The bit-exact numerics (`rl.rollout_numerics = "exact"`) for the training forward.
    #[arg(long)]
    pub exact: bool,
    /// Print only the JSON line.
    #[arg(long)]
    pub json: bool,
}

/// Options of `alp bench episodes`.
#[derive(clap::Args)]
pub struct EpisodesArgs {
    /// A run directory or checkpoint (e.g. the warm start `alp compare` writes to `OUT/sft`).
    #[arg(long)]
    pub from: std::path::PathBuf,
    /// Tasks sampled (training split, from the run's seed).
    #[arg(long, default_value_t = 32)]
    pub tasks: usize,
    /// Episodes per task.
    #[arg(long, default_value_t = 8)]
    pub group: usize,
    /// Overrides of the checkpoint's config, e.g. --set rl.rollout.engine.shards=2.
    #[arg(long = "set")]
    pub sets: Vec<String>,
    /// Print only the JSON line.
    #[arg(long)]
    pub json: bool,
}

/// The machine a number was measured on: the CPU model (`/proc/cpuinfo`), its cores, and the
/// matrix-multiply path candle takes on it.
fn machine(device: &str) -> serde_json::Value {
    let cpu = crate::train::cpu_model().unwrap_or_else(|| "unknown".into());
    let gemm = if device != "cpu" {
        "cuBLAS (candle CUDA)".to_string()
    } else {
        let mut feats: Vec<&str> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                feats.push("avx512f");
            }
            if std::is_x86_feature_detected!("avx2") {
                feats.push("avx2");
            }
            if std::is_x86_feature_detected!("fma") {
                feats.push("fma");
            }
        }
        // The gemm crate is built with its AVX-512 kernels too and picks a family at run time;
        // alp's inference products with few rows take alp's own kernels (alp_model::gemm).
        let family = if feats.contains(&"avx512f") {
            format!(
                "AVX-512 kernels; inference products of at most {} rows on alp's AVX-512 kernels (packed weights for the rollout snapshot)",
                alp_model::SMALL_M_ROWS
            )
        } else if feats.contains(&"fma") && feats.contains(&"avx2") {
            format!(
                "AVX2/FMA kernels; inference products of at most {} rows on gemm's FMA kernels (alp's packed AVX2 kernel for the rollout snapshot)",
                alp_model::SMALL_M_ROWS
            )
        } else if cfg!(target_arch = "x86_64") {
            "scalar kernels".to_string()
        } else {
            "the target's default kernels".to_string()
        };
        format!(
            "gemm crate, {family}; bf16 rollouts: {} (CPU has: {})",
            alp_model::half_precision_kernel(),
            feats.join(", ")
        )
    };
    serde_json::json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "gemm": gemm,
    })
}

fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// A `/proc/self/status` line in MB (NaN where there is none).
fn status_mb(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// The peak resident memory of a phase: resets the kernel's high-water mark (Linux
/// `clear_refs` 5), runs `f`, reads the mark. `peak` keeps the process's maximum, which the
/// reset would otherwise lose.
fn phase_peak<T>(peak: &mut f64, f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    *peak = peak.max(peak_rss_mb());
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let out = f()?;
    let p = peak_rss_mb();
    *peak = peak.max(p);
    Ok((out, p))
}

/// Forward + backward + AdamW on random tokens (f32, the differentiable path).
pub fn train(a: TrainArgs) -> Result<()> {
    use alp_trainer::optim::{AdamW, AdamWParams};
    let device = parse_device(&a.device)?;
    let weights = match (&a.model, &a.preset) {
        (Some(m), None) => load_pretrained(m, candle_core::DType::F32, &device)?.weights,
        (None, Some(p)) => {
            ModelWeights::random(&presets::by_name(p)?, 0, candle_core::DType::F32, &device)?
        }
        _ => bail!("give exactly one of --model <dir or repo id> or --preset <name>"),
    };
    if a.batch == 0 || a.seq_len < 2 || a.steps == 0 {
        bail!("--batch and --steps must be positive and --seq-len at least 2");
    }
    // Logits and their gradient, and the activations kept for backward, per row (f32).
    let c = weights.config.clone();
    let per_token = 4 * (4 * c.vocab_size + 24 * c.num_hidden_layers * c.hidden_size) as u64;
    alp_core::memory::check_fits(
        "--batch",
        a.batch,
        per_token.saturating_mul(a.seq_len as u64),
        "the activations of a training step",
        None,
    )?;
    let mut weights = weights;
    if a.lora_r > 0 {
        let lc = alp_model::LoraConfig {
            r: a.lora_r,
            alpha: a.lora_alpha,
            ..Default::default()
        };
        weights.adapter = Some(alp_model::Adapter::init(
            &weights.config,
            &lc,
            0,
            candle_core::DType::F32,
            &device,
        )?);
    }
    let (mut model, varmap) = weights.build_trainable()?;
    model.set_exact_numerics(a.exact)?;
    // The trainable copy is what the run holds from here, as `alp train` does (with LoRA the
    // model shares the frozen base).
    drop(weights);
    let mut peak = 0.0f64;
    let rss_weights = status_mb("VmRSS:");
    let mut opt = AdamW::new(
        alp_trainer::trainer::named_vars(&varmap)?,
        AdamWParams::with_lr(1e-5),
    )?;
    let params = opt.num_params();
    let rss_optimizer = status_mb("VmRSS:");
    let vocab = model.config().vocab_size as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let ids: Vec<u32> = (0..a.batch * a.seq_len)
        .map(|_| rng.random_range(0..vocab))
        .collect();
    let ids = candle_core::Tensor::from_vec(ids, (a.batch, a.seq_len), &device)?;
    let micros = a
        .parallel_micro_batches
        // By the whole model's size (activations), not the trainable part (LoRA).
        .unwrap_or(alp_trainer::config::default_parallel_micro_batches(
            params + if a.lora_r > 0 { c.num_parameters() } else { 0 },
            device.is_cpu(),
        ))
        .clamp(1, a.batch);
    // Equal shares of the rows; each micro-batch's summed NLL over the whole batch's tokens,
    // so the parts add up to the batch's mean loss and gradient.
    let rows: Vec<(usize, usize)> = (0..micros)
        .map(|m| {
            (
                m * a.batch / micros,
                (m + 1) * a.batch / micros - m * a.batch / micros,
            )
        })
        .collect();
    let n = (a.batch * (a.seq_len - 1)) as f64;
    let ck = a.gradient_checkpointing;
    // (loss, peak of forward + backward + accumulation, peak of the optimizer step), MB.
    let mut step = |peak: &mut f64| -> Result<(f32, f64, f64)> {
        let mut loss = 0.0;
        let mut g = Vec::new();
        let ((), fb) = phase_peak(peak, || {
            alp_trainer::batch::for_each_parallel(
                &rows,
                micros,
                |_, &(start, len)| {
                    let ids = ids.narrow(0, start, len)?;
                    let input = ids.narrow(1, 0, a.seq_len - 1)?;
                    let fwd =
                        model.training_forward(&input, &[], &alp_model::NoPerturbation, ck)?;
                    let logits = model.logits(&fwd.hidden)?;
                    let targets = ids.narrow(1, 1, a.seq_len - 1)?;
                    let part = (alp_model::token_logprobs(&logits, &targets, 1.0)?.sum_all()?
                        * (-1.0 / n))?;
                    drop(logits);
                    let store = fwd.backward(&part)?;
                    Ok((part.to_scalar::<f32>()?, opt.grads(&store)))
                },
                |(v, grads)| {
                    loss += v;
                    alp_trainer::optim::add_grads(&mut g, grads)
                },
            )?;
            Ok(())
        })?;
        let ((), st) = phase_peak(peak, || Ok(opt.step(&g, 1.0)?))?;
        Ok((loss, fb, st))
    };
    step(&mut peak)?; // warm-up
    let t = Instant::now();
    let (mut last, mut fb, mut st) = (0.0, 0.0f64, 0.0f64);
    for _ in 0..a.steps {
        let (l, f, s) = step(&mut peak)?;
        (last, fb, st) = (l, fb.max(f), st.max(s));
    }
    let secs = t.elapsed().as_secs_f64();
    let mb = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
    let rows_per_micro = rows.iter().map(|r| r.1).max().unwrap_or(0);
    // The frozen base (LoRA) holds weights but no gradient or optimizer state.
    let frozen = if a.lora_r > 0 { c.num_parameters() } else { 0 };
    let memory = serde_json::json!({
        "weights_mb": mb(4 * (params + frozen)),
        "gradients_mb": mb(4 * params),
        "optimizer_state_mb": mb(8 * params),
        "logits_per_micro_batch_mb": mb(4 * rows_per_micro * (a.seq_len - 1) * c.vocab_size),
        "rss_after_weights_mb": rss_weights,
        "rss_after_optimizer_mb": rss_optimizer,
        "peak_forward_backward_mb": fb,
        "peak_optimizer_step_mb": st,
    });
    let tokens = (a.batch * (a.seq_len - 1) * a.steps) as f64;
    if !a.json {
        println!(
            "{} steps of {}×{} in {secs:.2} s: {:.0} tokens/s, {:.3} s/step (loss {last:.3})",
            a.steps,
            a.batch,
            a.seq_len,
            tokens / secs,
            secs / a.steps as f64
        );
    }
    println!(
        "{}",
        serde_json::json!({"tokens_per_s": tokens / secs, "peak_rss_mb": peak.max(peak_rss_mb()), "memory": memory, "gradient_checkpointing": ck, "lora_r": a.lora_r, "exact": a.exact, "trainable_params": params, "seconds_per_step": secs / a.steps as f64, "batch": a.batch, "seq_len": a.seq_len, "steps": a.steps, "parallel_micro_batches": micros, "device": a.device, "machine": machine(&a.device)})
    );
    Ok(())
}

/// Runs the same episodes with prefix reuse off and with `rl.rollout.engine`'s setting.
pub fn episodes(a: EpisodesArgs) -> Result<()> {
    use alp_trainer::checkpoint;
    use alp_trainer::config::TrainConfig;
    let ck = checkpoint::latest(&a.from)?;
    let man = checkpoint::read_manifest(&ck)?;
    let cfg = TrainConfig::from_toml(&man.config)?.apply_overrides(&a.sets)?;
    let scratch = std::env::temp_dir().join(format!("alp-bench-episodes-{}", std::process::id()));
    let session = alp_trainer::Session::start_from(&a.from, cfg, scratch.clone());
    let _ = std::fs::remove_dir_all(&scratch);
    let session = session?;
    let t = session.trainer();
    use alp_core::TaskSource;
    let mut src = t.task_stream(alp_envs::math::Split::Train, t.cfg.seed);
    let tasks: Vec<alp_core::Task> = (0..a.tasks).filter_map(|_| src.next_task()).collect();
    let env = t.make_env();
    let tools = t.tools_spec();
    let config = t.rollout_episode_config(t.cfg.seed);
    let on = t.cfg.rl.rollout.engine.prefix_cache_tokens;
    let mut out = Vec::new();
    for prefix in [0, on] {
        let engine = Engine::from_weights(
            &t.weights()?,
            t.cfg.rl.rollout_dtype.candle(),
            &t.device,
            EngineConfig {
                prefix_cache_tokens: prefix,
                ..t.cfg.rl.rollout.engine.clone()
            },
        )?
        .with_tokenizer(t.tokenizer.clone());
        let episodes = alp_rollout::Episodes {
            tasks: &tasks,
            make_env: &env,
            group_size: a.group,
            config: &config,
            tools: tools.as_ref(),
        };
        let t0 = Instant::now();
        let groups = alp_rollout::run_episodes(&engine, &t.tokenizer, &episodes)?;
        let secs = t0.elapsed().as_secs_f64();
        let s = engine.totals();
        let trajs: Vec<&alp_core::Trajectory> =
            groups.iter().flat_map(|g| g.trajectories.iter()).collect();
        let n = trajs.len().max(1) as f64;
        let generated: usize = trajs.iter().map(|t| t.num_generated()).sum();
        let turns: usize = trajs.iter().map(|t| t.num_turns as usize).sum();
        let r = serde_json::json!({
            "prefix_cache_tokens": prefix,
            "episodes": trajs.len(),
            "turns_per_episode": turns as f64 / n,
            "prefill_tokens_per_episode": s.prefill_tokens as f64 / n,
            "reused_tokens_per_episode": s.reused_tokens as f64 / n,
            "generated_tokens_per_episode": generated as f64 / n,
            "episodes_per_s": n / secs,
            "generated_tokens_per_s": generated as f64 / secs,
            "seconds": secs,
            "prefill_cpu_seconds": s.prefill_seconds,
            "decode_cpu_seconds": s.decode_seconds,
        });
        if !a.json {
            println!(
                "prefix reuse {}: {} episodes, {:.2} turns each, {:.1} prefill tokens/episode ({:.1} reused), {:.1} episodes/s",
                if prefix > 0 { "on" } else { "off" },
                trajs.len(),
                turns as f64 / n,
                s.prefill_tokens as f64 / n,
                s.reused_tokens as f64 / n,
                n / secs
            );
        }
        out.push(r);
    }
    println!(
        "{}",
        serde_json::json!({"off": out[0], "on": out[1], "machine": machine("cpu")})
    );
    Ok(())
}
