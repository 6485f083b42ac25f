//! LoRA adapters: the unmerged forward against the merged weights, A's and B's gradients
//! against the merged path's, a frozen base, σ's gradient, and PEFT's directory both ways.
mod common;

use alp_model::lora::{a_name, b_name, Adapter, LoraConfig};
use alp_model::{
    presets, token_logprobs, LayerSelection, LayerwiseGaussian, ModelWeights, NoPerturbation,
    Numerics, Perturbation, PerturbationConfig, SigmaMode,
};
use candle_core::{DType, Device, Tensor, Var};
use common::{max_abs_diff, shapes};

fn tokens(b: usize, t: usize, vocab: usize, seed: u64) -> Tensor {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<u32> = (0..b * t)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % vocab as u64) as u32
        })
        .collect();
    Tensor::from_vec(v, (b, t), &Device::Cpu).unwrap()
}

fn lora(r: usize, targets: &[&str]) -> LoraConfig {
    LoraConfig {
        r,
        alpha: 2.0 * r as f64,
        dropout: 0.0,
        target_modules: targets.iter().map(|s| s.to_string()).collect(),
    }
}

/// An adapter as after some training: PEFT's init, then B drawn at random (a fresh B is 0,
/// which would make every comparison below trivial).
fn trained_adapter(cfg: &alp_model::Config, lc: &LoraConfig, seed: u64) -> Adapter {
    let mut a = Adapter::init(cfg, lc, seed, DType::F32, &Device::Cpu).unwrap();
    for (k, t) in a.tensors.iter_mut() {
        if k.ends_with("lora_B.weight") {
            // Deterministic values in ±0.05 (the same every run).
            let n = t.elem_count();
            let v: Vec<f32> = (0..n)
                .map(|i| 0.05 * ((i as f32 * 12.9898 + seed as f32 * 78.233).sin()))
                .collect();
            *t = Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
        }
    }
    a
}

fn with_adapter(cfg: &alp_model::Config, lc: &LoraConfig) -> ModelWeights {
    let mut w = ModelWeights::random(cfg, 3, DType::F32, &Device::Cpu).unwrap();
    w.adapter = Some(trained_adapter(cfg, lc, 11));
    w
}

fn loss(model: &alp_model::Model, ids: &Tensor, p: &dyn Perturbation) -> Tensor {
    let logits = model.forward_full(ids, &[], p, Numerics::Training).unwrap();
    let b = ids.dim(0).unwrap();
    let t = ids.dim(1).unwrap();
    let tgt = tokens(b, t, model.config().vocab_size, 99);
    token_logprobs(&logits, &tgt, 1.0)
        .unwrap()
        .mean_all()
        .unwrap()
}

#[test]
fn a_fresh_adapter_changes_nothing_and_has_peft_shapes() {
    let cfg = presets::tiny();
    let lc = lora(4, &alp_model::lora::TARGET_MODULES);
    let a = Adapter::init(&cfg, &lc, 0, DType::F32, &Device::Cpu).unwrap();
    let qa = &a.tensors[&a_name("model.layers.0.self_attn.q_proj")];
    let kb = &a.tensors[&b_name("model.layers.1.self_attn.k_proj")];
    assert_eq!(qa.dims(), &[4, cfg.hidden_size]);
    assert_eq!(kb.dims(), &[cfg.num_kv_heads() * cfg.head_dim(), 4]);
    // A within PEFT's Kaiming-uniform bound, not all zero; B all zero.
    let v: Vec<f32> = qa.flatten_all().unwrap().to_vec1().unwrap();
    let bound = 1.0 / (cfg.hidden_size as f32).sqrt();
    assert!(v.iter().all(|x| x.abs() <= bound) && v.iter().any(|x| *x != 0.0));
    assert_eq!(
        kb.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
    assert_eq!(a.tensors.len(), 2 * 7 * cfg.num_hidden_layers);
    let mut w = ModelWeights::random(&cfg, 1, DType::F32, &Device::Cpu).unwrap();
    let plain = w.build().unwrap();
    w.adapter = Some(a);
    let adapted = w.build().unwrap();
    let ids = tokens(2, 6, cfg.vocab_size, 1);
    let f = |m: &alp_model::Model| {
        m.forward_full(&ids, &[], &NoPerturbation, Numerics::Inference)
            .unwrap()
    };
    assert_eq!(max_abs_diff(&f(&plain), &f(&adapted)), 0.0);
}

#[test]
fn the_unmerged_forward_equals_the_merged_weights_in_every_numerics() {
    for cfg in shapes() {
        for targets in [
            &alp_model::lora::TARGET_MODULES[..],
            &["q_proj", "v_proj"][..],
            &["down_proj"][..],
        ] {
            let w = with_adapter(&cfg, &lora(4, targets));
            let unmerged = w.build().unwrap();
            let merged = w.merged().unwrap();
            assert!(merged.adapter.is_none());
            let merged = merged.build().unwrap();
            let ids = tokens(2, 7, cfg.vocab_size, 5);
            for n in [Numerics::Inference, Numerics::Training, Numerics::Reference] {
                let a = unmerged
                    .forward_full(&ids, &[], &NoPerturbation, n)
                    .unwrap();
                let b = merged.forward_full(&ids, &[], &NoPerturbation, n).unwrap();
                let d = max_abs_diff(&a, &b);
                assert!(d < 1e-5, "{:?} {targets:?} {n:?}: {d}", cfg.model_type);
            }
            // A cached decode (the rollout engine's path) continues the same way.
            let mut cache = unmerged.new_cache(16, &[]);
            unmerged
                .forward_cached(&ids.narrow(1, 0, 6).unwrap(), &mut cache, &NoPerturbation)
                .unwrap();
            let last = unmerged
                .forward_last(&ids.narrow(1, 6, 1).unwrap(), &mut cache, &NoPerturbation)
                .unwrap();
            let full = merged
                .forward_full(&ids, &[], &NoPerturbation, Numerics::Inference)
                .unwrap()
                .narrow(1, 6, 1)
                .unwrap()
                .squeeze(1)
                .unwrap();
            assert!(max_abs_diff(&last, &full) < 1e-5);
        }
    }
}

/// The adapter's gradients from the merged path: with `W' = W + s·B·A` a variable, the loss's
/// `G = dL/dW'` gives `dL/dA = s·Bᵀ·G` and `dL/dB = s·G·Aᵀ`.
#[test]
fn a_and_b_gradients_equal_the_merged_paths_and_the_base_gets_none() {
    let cfg = presets::tiny();
    let lc = lora(3, &["q_proj", "o_proj", "up_proj", "down_proj"]);
    let w = with_adapter(&cfg, &lc);
    let ids = tokens(2, 6, cfg.vocab_size, 8);
    let (model, varmap) = w.build_trainable().unwrap();
    // Only the adapter is trainable.
    let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    assert_eq!(names.len(), 2 * 4 * cfg.num_hidden_layers);
    assert!(names.iter().all(|n| n.contains(".lora_")), "{names:?}");
    let grads = loss(&model, &ids, &NoPerturbation).backward().unwrap();
    // No base tensor is a variable; no base matrix (projections, embedding, LM head) gets a
    // gradient computed (the norms' vector-sized ones come with their fused kernels).
    for (k, t) in &w.tensors {
        assert!(!t.is_variable(), "{k} is a variable");
        if t.rank() == 2 {
            assert!(grads.get(t).is_none(), "the base matrix {k} got a gradient");
        }
    }
    // The reference: every weight a variable, the adapter merged in.
    let (merged_model, merged_vars) = w.merged().unwrap().build_trainable().unwrap();
    let mg = loss(&merged_model, &ids, &NoPerturbation)
        .backward()
        .unwrap();
    let mv = merged_vars.data().lock().unwrap();
    let data = varmap.data().lock().unwrap();
    let s = lc.scale();
    for (module, _, _) in lc.modules(&cfg) {
        let g = mg.get(mv[&format!("{module}.weight")].as_tensor()).unwrap();
        let a = data[&a_name(&module)].as_tensor();
        let b = data[&b_name(&module)].as_tensor();
        let want_a = (b.t().unwrap().matmul(g).unwrap() * s).unwrap();
        let want_b = (g.matmul(&a.t().unwrap()).unwrap() * s).unwrap();
        let got_a = grads.get(a).expect("A has a gradient");
        let got_b = grads.get(b).expect("B has a gradient");
        let scale = |t: &Tensor| {
            t.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .max(1e-6)
        };
        let da = max_abs_diff(got_a, &want_a) / scale(&want_a);
        let db = max_abs_diff(got_b, &want_b) / scale(&want_b);
        assert!(da < 1e-4 && db < 1e-4, "{module}: A {da}, B {db}");
        assert!(scale(&want_b) > 1e-6, "{module}: B's gradient is zero");
    }
}

/// A central finite difference of the loss along one entry of A and of B.
#[test]
fn a_and_b_gradients_equal_finite_differences() {
    let cfg = presets::tiny();
    let lc = lora(2, &["v_proj", "gate_proj"]);
    let w = with_adapter(&cfg, &lc);
    let ids = tokens(1, 5, cfg.vocab_size, 4);
    let (model, varmap) = w.build_trainable().unwrap();
    let grads = loss(&model, &ids, &NoPerturbation).backward().unwrap();
    let eval = |name: &str, idx: (usize, usize), h: f64| -> f64 {
        let mut w2 = w.clone();
        let ad = w2.adapter.as_mut().unwrap();
        let t = ad.tensors[name].to_dtype(DType::F64).unwrap();
        let mut v: Vec<Vec<f64>> = t.to_vec2().unwrap();
        v[idx.0][idx.1] += h;
        ad.tensors.insert(
            name.into(),
            Tensor::new(v, &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap(),
        );
        let m = w2.build().unwrap();
        loss(&m, &ids, &NoPerturbation)
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let data = varmap.data().lock().unwrap();
    for name in [
        a_name("model.layers.1.self_attn.v_proj"),
        b_name("model.layers.0.mlp.gate_proj"),
    ] {
        let g: Vec<Vec<f32>> = grads
            .get(data[&name].as_tensor())
            .unwrap()
            .to_vec2()
            .unwrap();
        // The entry with the largest gradient: its difference stands above f32 rounding.
        let (mut best, mut at) = (0f32, (0, 0));
        for (i, row) in g.iter().enumerate() {
            for (j, x) in row.iter().enumerate() {
                if x.abs() > best {
                    best = x.abs();
                    at = (i, j);
                }
            }
        }
        let h = 1e-2;
        let fd = (eval(&name, at, h) - eval(&name, at, -h)) / (2.0 * h);
        let want = g[at.0][at.1] as f64;
        // f32 forwards and a step of 1e-2: agreement to 1% (a wrong gradient is off by far
        // more).
        assert!(
            (fd - want).abs() <= 1e-2 * want.abs().max(1e-3),
            "{name}{at:?}: backward {want}, finite difference {fd}"
        );
    }
}

#[test]
fn sigma_gradient_with_an_adapter_equals_the_merged_models() {
    let cfg = presets::tiny();
    let lc = lora(4, &alp_model::lora::TARGET_MODULES);
    let w = with_adapter(&cfg, &lc);
    let ids = tokens(2, 6, cfg.vocab_size, 2);
    let grad_sigma = |m: &alp_model::Model| -> Vec<f32> {
        let p = LayerwiseGaussian::new(
            PerturbationConfig {
                sigma_init: 0.05,
                mode: SigmaMode::Relative,
                learnable: true,
                layers: LayerSelection::All,
                seed: 42,
            },
            cfg.num_hidden_layers,
            &Device::Cpu,
        )
        .unwrap();
        p.set_context(3, 1);
        let g = loss(m, &ids, &p).backward().unwrap();
        g.get(p.log_sigma().as_tensor()).unwrap().to_vec1().unwrap()
    };
    let (adapted, _vars) = w.build_trainable().unwrap();
    let got = grad_sigma(&adapted);
    let want = grad_sigma(&w.merged().unwrap().build().unwrap());
    for (l, (g, r)) in got.iter().zip(&want).enumerate() {
        assert!(*r != 0.0, "layer {l}: the reference's σ gradient is 0");
        assert!(
            (g - r).abs() <= 1e-4 * r.abs().max(1e-3),
            "layer {l}: {g} vs {r}"
        );
    }
}

#[test]
fn peft_directory_round_trips_and_strange_settings_are_refused() {
    let cfg = presets::tiny();
    let lc = lora(4, &["q_proj", "k_proj", "v_proj", "o_proj"]);
    let a = trained_adapter(&cfg, &lc, 3);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("adapter");
    a.save_peft(&d, "some/base").unwrap();
    let text = std::fs::read_to_string(d.join("adapter_config.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["peft_type"], "LORA");
    assert_eq!(v["r"], 4);
    assert_eq!(v["lora_alpha"], 8.0);
    assert_eq!(v["base_model_name_or_path"], "some/base");
    let raw =
        candle_core::safetensors::load(d.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    assert!(raw.contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
    let back = Adapter::load_peft(&d, &cfg, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(back.config, lc);
    for (k, t) in &a.tensors {
        assert_eq!(max_abs_diff(t, &back.tensors[k]), 0.0, "{k}");
    }
    // Settings alp does not implement, and an adapter of another shape, are refused by name.
    for (field, value) in [
        ("use_dora", serde_json::json!(true)),
        ("use_rslora", serde_json::json!(true)),
        ("bias", serde_json::json!("all")),
        ("modules_to_save", serde_json::json!(["lm_head"])),
        ("rank_pattern", serde_json::json!({"q_proj": 8})),
        ("target_modules", serde_json::json!(["c_attn"])),
    ] {
        let mut bad = v.clone();
        bad[field] = value;
        std::fs::write(
            d.join("adapter_config.json"),
            serde_json::to_string(&bad).unwrap(),
        )
        .unwrap();
        let e = Adapter::load_peft(&d, &cfg, DType::F32, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(field) && e.contains("adapter_config.json"),
            "{field}: {e}"
        );
    }
    std::fs::write(d.join("adapter_config.json"), &text).unwrap();
    let other = presets::alp_default();
    let e = Adapter::load_peft(&d, &other, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("adapter_model.safetensors"), "{e}");
    // Bad settings in a run's config name the field.
    let mut c = lora(4, &["q_proj"]);
    c.dropout = 0.1;
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("model.lora.dropout"));
    let c = lora(4, &["qkv"]);
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("model.lora.target_modules"));
}

#[test]
fn a_snapshot_shares_the_frozen_base_and_copies_the_adapter() {
    let cfg = presets::tiny();
    let w = with_adapter(&cfg, &lora(2, &["q_proj"]));
    let (_, varmap) = w.build_trainable().unwrap();
    let trained = ModelWeights {
        config: w.config.clone(),
        tensors: w.tensors.clone(),
        adapter: Some(Adapter {
            config: w.adapter.as_ref().unwrap().config.clone(),
            tensors: ModelWeights::from_varmap(&cfg, &varmap).unwrap().tensors,
        }),
    };
    let snap = trained.snapshot(DType::F32, &Device::Cpu).unwrap();
    // A change to the trainer's A does not reach the snapshot.
    let name = a_name("model.layers.0.self_attn.q_proj");
    let var: Var = varmap.data().lock().unwrap()[&name].clone();
    let before = snap.adapter.as_ref().unwrap().tensors[&name].clone();
    var.set(&(var.as_tensor() + 1.0).unwrap()).unwrap();
    assert_eq!(
        max_abs_diff(&before, &snap.adapter.as_ref().unwrap().tensors[&name]),
        0.0
    );
    assert!(max_abs_diff(&before, var.as_tensor()) > 0.5);
    // The frozen base is the same storage (no second copy of it).
    let k = "model.layers.0.mlp.up_proj.weight";
    let same = |a: &Tensor, b: &Tensor| {
        let (sa, la) = a.storage_and_layout();
        let (sb, lb) = b.storage_and_layout();
        let pa = match &*sa {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => v.as_ptr(),
            _ => unreachable!(),
        };
        let pb = match &*sb {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => v.as_ptr(),
            _ => unreachable!(),
        };
        pa == pb && la.start_offset() == lb.start_offset()
    };
    assert!(same(&trained.tensors[k], &snap.tensors[k]));
}

#[test]
fn adapter_models_build_the_base_once_and_attach_each_version() {
    let cfg = presets::tiny();
    let lc = lora(2, &["q_proj", "down_proj"]);
    let base = ModelWeights::random(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
    let mut models = alp_model::AdapterModels::default();
    let ids = tokens(1, 6, cfg.vocab_size, 3);
    let run = |m: &alp_model::Model| {
        m.forward_full(&ids, &[], &NoPerturbation, Numerics::Inference)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    };
    let ptr = |m: &alp_model::Model| {
        let (s, _) = m.lm_head_weight().storage_and_layout();
        match &*s {
            candle_core::Storage::Cpu(c) => c.as_slice::<half::bf16>().unwrap().as_ptr() as usize,
            _ => unreachable!(),
        }
    };
    let mut outs = Vec::new();
    let mut ptrs = Vec::new();
    for seed in [1, 2] {
        let w = ModelWeights {
            adapter: Some(trained_adapter(&cfg, &lc, seed)),
            ..base.clone()
        };
        // In bf16: the base is converted once, not per version.
        let m = models.build(&w, DType::BF16, &Device::Cpu).unwrap();
        let want = w
            .snapshot(DType::BF16, &Device::Cpu)
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(max_abs_diff(&run(&m), &run(&want)), 0.0);
        ptrs.push(ptr(&m));
        outs.push(run(&m));
    }
    assert_eq!(ptrs[0], ptrs[1], "the base was converted again");
    assert!(
        max_abs_diff(&outs[0], &outs[1]) > 0.0,
        "the second adapter was ignored"
    );
}

/// Gradient checkpointing recomputes each layer with its adapter: the same A, B and σ
/// gradients as one plain backward.
#[test]
fn checkpointed_lora_gradients_equal_the_plain_backward() {
    let cfg = presets::tiny();
    let w = with_adapter(&cfg, &lora(4, &alp_model::lora::TARGET_MODULES));
    let ids = tokens(2, 6, cfg.vocab_size, 9);
    let (model, varmap) = w.build_trainable().unwrap();
    let tgt = tokens(2, 6, cfg.vocab_size, 99);
    let grads = |ck: bool| {
        let f = model
            .training_forward(&ids, &[], &NoPerturbation, ck)
            .unwrap();
        let l = token_logprobs(&model.logits(&f.hidden).unwrap(), &tgt, 1.0)
            .unwrap()
            .mean_all()
            .unwrap();
        f.backward(&l).unwrap()
    };
    let (plain, ck) = (grads(false), grads(true));
    for (k, v) in varmap.data().lock().unwrap().iter() {
        let (a, b) = (plain.get(v.as_tensor()), ck.get(v.as_tensor()));
        let (a, b) = (
            a.expect(k),
            b.unwrap_or_else(|| panic!("{k}: no gradient with checkpointing")),
        );
        assert!(max_abs_diff(a, b) < 1e-6, "{k}: {}", max_abs_diff(a, b));
    }
}
