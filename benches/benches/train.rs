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
            ("fused", Numerics::Differentiable),
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

criterion_group!(benches, bench);
criterion_main!(benches);
