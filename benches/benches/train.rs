//! One RL train step's compute: forward + backward + AdamW on random tokens, for the embedded
//! default's shape and the ~25M config, with the fused training kernels and with the candle-op
//! reference they replace. CPU by default; `ALP_BENCH_DEVICE=cuda:0` for a GPU (16 × 128 there).
use alp_benches::{bench_device, random_tokens};
use alp_model::NoPerturbation;
use alp_model::{presets, token_logprobs, ModelWeights, Numerics};
use alp_trainer::optim::{AdamW, AdamWParams};
use alp_trainer::trainer::named_vars;
use candle_core::{DType, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let dev = bench_device().expect("ALP_BENCH_DEVICE");
    let (b, t) = if dev.is_cpu() { (4, 64) } else { (16, 128) };
    let mut g = c.benchmark_group("train_step");
    g.sample_size(10);
    for (name, cfg) in [
        ("alp-default", presets::alp_default()),
        ("qwen2-25m", presets::qwen2_25m()),
    ] {
        let (model, varmap) = ModelWeights::random(&cfg, 0, DType::F32, &dev)
            .and_then(|w| w.build_trainable())
            .expect("model");
        let mut opt = AdamW::new(
            named_vars(&varmap).expect("vars"),
            AdamWParams::with_lr(1e-5),
        )
        .expect("optimizer");
        let ids = Tensor::from_vec(random_tokens(b * t, cfg.vocab_size, 5), (b, t), &dev).unwrap();
        let input = ids.narrow(1, 0, t - 1).unwrap();
        let targets = ids.narrow(1, 1, t - 1).unwrap();
        g.throughput(Throughput::Elements((b * (t - 1)) as u64));
        // The fused kernels with a backward, and the candle-op reference they replace.
        for (label, numerics) in [
            ("fused", Numerics::Training),
            ("reference", Numerics::Reference),
        ] {
            g.bench_function(
                BenchmarkId::new(format!("{name}/{label}"), format!("{b}x{t}")),
                |bench| {
                    bench.iter(|| {
                        let logits = model
                            .forward_full(&input, &[], &NoPerturbation, numerics)
                            .unwrap();
                        let loss = token_logprobs(&logits, &targets, 1.0)
                            .unwrap()
                            .mean_all()
                            .unwrap()
                            .neg()
                            .unwrap();
                        let grads = loss.backward().unwrap();
                        let gr = opt.grads(&grads);
                        opt.step(&gr, 1.0).unwrap();
                    })
                },
            );
        }
    }
    g.finish();
}

/// The embedded default's SFT gradient on 64 real demonstrations: one batch padded to its
/// longest row (the reference), micro-batches cut by length on one thread, and the same two at
/// a time (what `alp train` does on a CPU).
fn sft(c: &mut Criterion) {
    use alp_trainer::config::TrainConfig;
    use alp_trainer::default_task;
    let tok = default_task::build_tokenizer().expect("tokenizer");
    let demos =
        default_task::demonstrations(&tok, &Default::default(), 0.25, 0, 64).expect("demos");
    let mut g = c.benchmark_group("sft_gradients");
    g.sample_size(10);
    let tokens: usize = demos
        .iter()
        .map(|d| d.prompt.len() + d.response.len())
        .sum();
    g.throughput(Throughput::Elements(tokens as u64));
    for (label, budget, threads) in [
        ("padded", 0, 1),
        ("by-length", 512, 1),
        ("by-length-parallel", 512, 0),
    ] {
        let cfg = TrainConfig::default()
            .apply_overrides(&[
                format!("sft.micro_batch_tokens={budget}"),
                format!("model.parallel_micro_batches={threads}"),
            ])
            .expect("config");
        let t = alp_trainer::trainer::Trainer::new(cfg).expect("trainer");
        g.bench_function(BenchmarkId::new("alp-default", label), |bench| {
            bench.iter(|| t.sft_gradients(&demos).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench, sft);
criterion_main!(benches);
