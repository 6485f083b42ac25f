//! The workspace builds candle-core with a patched backward pass (vendor/candle-core/PATCHED.md:
//! the first gradient contribution is stored instead of being added to zeros). These tests hold
//! it to closed-form gradients where tensors are used several times, broadcast, transposed,
//! narrowed and gathered — the cases where a stored gradient is later added to or shared.
mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::rel_diff;

#[test]
fn a_tensor_used_several_times_gets_the_sum_of_its_gradients() {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 5), &dev).unwrap()).unwrap();
    // f = Σ (x·x + x + x) = Σ x² + 2x  →  df/dx = 2x + 2 (x enters an Add twice and a Mul twice).
    let y = ((x.as_tensor() * x.as_tensor()).unwrap() + (x.as_tensor() + x.as_tensor()).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let g = y.backward().unwrap();
    let got = g.get(x.as_tensor()).unwrap();
    let want = ((x.as_tensor() * 2.0).unwrap() + 2.0).unwrap();
    assert!(rel_diff(got, &want) < 1e-6);
}

#[test]
fn matmul_broadcast_narrow_and_gather_gradients_match_their_closed_forms() {
    let dev = Device::Cpu;
    let (n, k, m, v) = (4, 6, 3, 7);
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap()).unwrap();
    let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, m, &dev).unwrap()).unwrap();
    let e = Var::from_tensor(&Tensor::randn(0f32, 1.0, (v, k), &dev).unwrap()).unwrap();
    let c = Tensor::randn(0f32, 1.0, (n, m), &dev).unwrap();
    let ids = Tensor::new(&[1u32, 4, 1, 6], &dev).unwrap();
    // f = Σ c ⊙ ((x + E[ids])·wᵀ + b)  +  Σ narrow(x, 1, 2, 3)  +  Σ (x·wᵀ)ᵀ ⊙ cᵀ
    let xe = (x.as_tensor() + e.as_tensor().index_select(&ids, 0).unwrap()).unwrap();
    let lin = xe
        .matmul(&w.as_tensor().t().unwrap())
        .unwrap()
        .broadcast_add(b.as_tensor())
        .unwrap();
    let f1 = (&lin * &c).unwrap().sum_all().unwrap();
    let f2 = x.as_tensor().narrow(1, 2, 3).unwrap().sum_all().unwrap();
    let xw_t = x
        .as_tensor()
        .matmul(&w.as_tensor().t().unwrap())
        .unwrap()
        .t()
        .unwrap();
    let f3 = (&xw_t * c.t().unwrap()).unwrap().sum_all().unwrap();
    let f = ((f1 + f2).unwrap() + f3).unwrap();
    let g = f.backward().unwrap();

    let cw = c.matmul(w.as_tensor()).unwrap(); // [n, k]
    let mut narrow_ones = vec![0f32; n * k];
    for r in 0..n {
        for j in 2..5 {
            narrow_ones[r * k + j] = 1.0;
        }
    }
    let narrow_ones = Tensor::from_vec(narrow_ones, (n, k), &dev).unwrap();
    let dx = ((&cw * 2.0).unwrap() + narrow_ones).unwrap();
    let dw = (c.t().unwrap().matmul(&xe).unwrap() + c.t().unwrap().matmul(x.as_tensor()).unwrap())
        .unwrap();
    let db = c.sum(0).unwrap();
    // E's rows get c·w for every position that gathered them (row 1 twice).
    let mut de = Tensor::zeros((v, k), DType::F32, &dev).unwrap();
    for (pos, row) in [(0usize, 1usize), (1, 4), (2, 1), (3, 6)] {
        let add = cw.narrow(0, pos, 1).unwrap();
        let cur = de.narrow(0, row, 1).unwrap();
        de = de
            .slice_assign(&[row..row + 1, 0..k], &(cur + add).unwrap())
            .unwrap();
    }
    for (what, var, want) in [("x", &x, dx), ("w", &w, dw), ("b", &b, db), ("E", &e, de)] {
        let got = g.get(var.as_tensor()).unwrap();
        assert_eq!(got.dims(), want.dims(), "{what}");
        let r = rel_diff(got, &want);
        assert!(r < 1e-5, "d{what}: relative difference {r}");
    }
}
