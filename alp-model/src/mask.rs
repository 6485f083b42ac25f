//! The additive attention masks of the decoder (causal, and causal over left-padded rows),
//! shared by the decoder and the tests of the inference attention kernel.

use alp_core::Result;
use candle_core::{Device, Tensor};

/// Additive causal mask `[1, 1, 1, t, start + t]` (broadcasts over batch, KV heads, group).
pub(crate) fn causal_mask(start: usize, t: usize, device: &Device) -> Result<Tensor> {
    let l = start + t;
    let m: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..l).map(move |j| {
                if j <= start + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(m, (1, 1, 1, t, l), device)?)
}

/// Additive mask `[b, 1, 1, t, start + t]` for left-padded rows: a real query sees real keys
/// up to itself; a padding query sees only itself (its output is never used).
pub(crate) fn padded_mask(
    left_pad: &[usize],
    start: usize,
    t: usize,
    device: &Device,
) -> Result<Tensor> {
    let b = left_pad.len();
    let l = start + t;
    let mut m = Vec::with_capacity(b * t * l);
    for &p in left_pad {
        for i in 0..t {
            let qi = start + i;
            for j in 0..l {
                let ok = j == qi || (j <= qi && j >= p);
                m.push(if ok { 0.0 } else { f32::NEG_INFINITY });
            }
        }
    }
    Ok(Tensor::from_vec(m, (b, 1, 1, t, l), device)?)
}
