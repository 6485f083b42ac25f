//! Loss + backward for a [256, 1024] token batch, for `alp-seq` and `grpo`.
use alp_loss::{Aggregation, LossInputs, Objective};
use candle_core::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let (b, t) = (256usize, 1024usize);
    let logp =
        Var::from_tensor(&(Tensor::rand(0f32, 1.0, (b, t), &dev).unwrap() - 3.0).unwrap()).unwrap();
    let noise = Tensor::randn(0f32, 0.05, (b, t), &dev).unwrap();
    let logp_infer = (logp.as_tensor() + &noise).unwrap();
    let logp_old = (logp.as_tensor() - &noise).unwrap();
    let adv = Tensor::randn(0f32, 1.0, b, &dev).unwrap();
    let mask = Tensor::ones((b, t), candle_core::DType::F32, &dev).unwrap();
    let mut g = c.benchmark_group("loss_backward");
    g.sample_size(10);
    g.throughput(Throughput::Elements((b * t) as u64));
    for name in ["alp-seq", "grpo"] {
        let obj = Objective::from_name(name).unwrap();
        g.bench_function(name, |bench| {
            bench.iter(|| {
                let out = obj
                    .compute(
                        &LossInputs {
                            logp: logp.as_tensor(),
                            logp_old: Some(&logp_old),
                            logp_infer: &logp_infer,
                            advantages: &adv,
                            mask: &mask,
                        },
                        Aggregation::TokenMean,
                    )
                    .unwrap();
                out.loss.backward().unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
