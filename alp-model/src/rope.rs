//! Rotary position embeddings: the tables, and the fused inference kernel (the differentiable
//! one for training is `fused::rope`).
use alp_core::Result;
use candle_core::{DType, Device, Tensor};

/// Precomputed cos/sin tables, `[max_positions, head_dim / 2]` in f32, as Hugging Face builds them.
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// Tables for `head_dim` and base `theta`, up to `max_pos` positions.
    pub fn new(head_dim: usize, theta: f64, max_pos: usize, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        // transformers computes inv_freq and the products in f32.
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0f32 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for &f in &inv {
                let a = (p as f32) * f;
                cos.push((a as f64).cos() as f32);
                sin.push((a as f64).sin() as f32);
            }
        }
        Ok(Rope {
            cos: Tensor::from_vec(cos, (max_pos, half), device)?,
            sin: Tensor::from_vec(sin, (max_pos, half), device)?,
        })
    }

    /// Number of positions in the tables.
    pub fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    /// cos and sin for `positions` (`[batch, seq]`, u32) as `[batch, seq, head_dim/2]` in `dtype`.
    pub fn tables(&self, positions: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let (b, t) = positions.dims2()?;
        let flat = positions.flatten_all()?;
        let cos = self.cos.index_select(&flat, 0)?;
        let half = cos.dim(1)?;
        let cos = cos.reshape((b, t, half))?.to_dtype(dtype)?;
        let sin = self
            .sin
            .index_select(&flat, 0)?
            .reshape((b, t, half))?
            .to_dtype(dtype)?;
        Ok((cos, sin))
    }
}

/// Fused rotary embedding (no backward): `x` `[batch, heads, seq, head_dim]`.
pub fn apply_fused(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)?)
}
