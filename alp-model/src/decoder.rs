//! The Qwen2/Llama/Qwen3 decoder: embeddings, RMSNorm, rotary GQA attention, SwiGLU MLP and
//! the LM head, with a fused inference path and a differentiable training path.
use crate::perturbation::Perturbation;
use alp_core::{Error, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use std::sync::{Arc, OnceLock};

use crate::kernels::fused;
use crate::mask::{causal_mask, padded_mask};
use crate::{rope, Config, KvCache};

/// Which kernels a forward uses. candle's fused CPU ops have no backward and silently cut the
/// autograd graph, so training must use differentiable kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numerics {
    /// Inference and rollouts: candle's fused softmax, RMSNorm and rotary kernels and alp's
    /// one-pass attention and packed products, no backward.
    Inference,
    /// Training: alp's fused kernels with a backward on f32 CPU tensors, their
    /// differentiable twins elsewhere.
    Training,
    /// Differentiable twins only, composed from candle ops: the slow reference that
    /// `Training` is tested against.
    Reference,
    /// Bit-exact rollouts: kernels whose result for one position depends on nothing but
    /// that position's inputs, used by the trainer and the engine alike (differentiable):
    /// every product is a sequential sum over `k` in order (`gemm::linear_exact`), attention
    /// reads each query's visible keys in order and no other (`attention::attention_exact`),
    /// and the row-wise kernels are the training ones. A decode step over the KV cache then
    /// gives the same bits as the trainer's forward of the whole padded batch at that
    /// position. f32 or bf16 weights on the CPU (bf16: the half-precision products of the
    /// inference path, attention in f32); slower than `Inference` at decode and than
    /// `Training` at the update (`alp bench` states by how much).
    Exact,
}

#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(RmsNorm {
            weight: vb.get(size, "weight")?,
            eps,
        })
    }
    fn forward(&self, x: &Tensor, n: Numerics) -> Result<Tensor> {
        Ok(match n {
            Numerics::Inference => {
                candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps as f32)?
            }
            Numerics::Training | Numerics::Exact => {
                fused::rms_norm(x, &self.weight, self.eps as f32)?
            }
            Numerics::Reference => fused::twin::rms_norm(x, &self.weight, self.eps as f32)?,
        })
    }
}

/// A projection layer (`Linear` with the checkpoint's `weight` and optional `bias`).
///
/// For the training numerics it is candle's `Linear` (with a backward). For the inference
/// numerics it is `gemm::linear`, whose SIMD kernels suit the product's shape. A frozen bf16
/// or f16 weight on an AVX-512 CPU is packed once in its own dtype (`gemm::HalfWeight`, made
/// on first use) and every product over it, decode's and prefill's, multiplies half-precision
/// values with f32 sums (`gemm::linear_half`): no f32 copy of it exists. Half-precision
/// weights on CPUs without AVX-512 multiply in f32 over a widened copy made on first use, as
/// candle's CPU matmul does on every call (it has no half-precision kernel and widens both
/// operands each time), then round the product back; a decode step's small products over
/// such a weight go through a packed copy (`gemm::PackedWeight`), also made on first use.
/// Only weights that are not training variables (the rollout engine's snapshot) get copies:
/// a variable can change in place, a copy would go stale.
#[derive(Debug, Clone)]
struct Proj {
    linear: Linear,
    wide: Arc<OnceLock<Tensor>>,
    packed: Arc<OnceLock<Option<crate::kernels::gemm::PackedWeight>>>,
    half: Arc<OnceLock<Option<crate::kernels::gemm::HalfWeight>>>,
    lora: Option<LoraPair>,
}

/// A projection's LoRA update `(α/r)·(x·Aᵀ)·Bᵀ`, added to the frozen product unmerged.
#[derive(Debug, Clone)]
struct LoraPair {
    /// `[r, in]`.
    a: Tensor,
    /// `[out, r]`.
    b: Tensor,
    scale: f64,
}

impl LoraPair {
    /// The update of `x` (`[.., in]`) as `[.., out]`, through two plain products over the
    /// rows (differentiable; the same ops for every numerics, so the engine's and the
    /// trainer's updates agree).
    fn forward(&self, x: &Tensor, exact: bool) -> Result<Tensor> {
        let dims = x.dims();
        let k = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / k.max(1);
        let x2 = x.reshape((rows, k))?;
        let (a, b) = if self.a.dtype() == x.dtype() {
            (self.a.clone(), self.b.clone())
        } else {
            (self.a.to_dtype(x.dtype())?, self.b.to_dtype(x.dtype())?)
        };
        // The scale goes on the rank-r product: no extra `[rows, out]` tensor for the graph
        // to keep.
        let y = if exact {
            let h = (crate::kernels::gemm::linear_exact(&x2, &a, None)? * self.scale)?;
            crate::kernels::gemm::linear_exact(&h, &b, None)?
        } else {
            (x2.matmul(&a.t()?)? * self.scale)?.matmul(&b.t()?)?
        };
        let mut out = dims.to_vec();
        if let Some(last) = out.last_mut() {
            *last = b.dim(0)?;
        }
        Ok(y.reshape(out)?)
    }
}

impl Proj {
    fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Proj {
            linear: Linear::new(weight, bias),
            wide: Arc::new(OnceLock::new()),
            packed: Arc::new(OnceLock::new()),
            half: Arc::new(OnceLock::new()),
            lora: None,
        }
    }

    fn weight(&self) -> &Tensor {
        self.linear.weight()
    }

    /// The same projection over detached tensors (no copy). A variable's view gets caches of
    /// its own: a copy packed from it would go stale when the variable changes.
    fn detached(&self) -> Self {
        let w = self.linear.weight();
        let frozen = !w.is_variable();
        Proj {
            linear: Linear::new(w.detach(), self.linear.bias().map(|b| b.detach())),
            wide: if frozen {
                self.wide.clone()
            } else {
                Default::default()
            },
            packed: if frozen {
                self.packed.clone()
            } else {
                Default::default()
            },
            half: if frozen {
                self.half.clone()
            } else {
                Default::default()
            },
            lora: self.lora.as_ref().map(|l| LoraPair {
                a: l.a.detach(),
                b: l.b.detach(),
                scale: l.scale,
            }),
        }
    }

    fn forward(&self, x: &Tensor, n: Numerics) -> Result<Tensor> {
        let y = self.forward_base(x, n)?;
        match &self.lora {
            Some(l) => Ok((y + l.forward(x, n == Numerics::Exact)?)?),
            None => Ok(y),
        }
    }

    /// The product with the weight (and bias) alone.
    fn forward_base(&self, x: &Tensor, n: Numerics) -> Result<Tensor> {
        match n {
            Numerics::Reference => return Ok(self.linear.forward(x)?),
            Numerics::Training => return self.forward_rows(x),
            Numerics::Exact => return self.forward_exact(x),
            Numerics::Inference => {}
        }
        let w = self.linear.weight();
        let frozen = !w.is_variable();
        let half =
            if frozen && matches!(w.dtype(), DType::BF16 | DType::F16) && x.dtype() == w.dtype() {
                get_or_try_init(&self.half, || crate::kernels::gemm::HalfWeight::new(w))?.as_ref()
            } else {
                None
            };
        let y = if let Some(h) = half {
            crate::kernels::gemm::linear_half(x, h)?
        } else if crate::kernels::gemm::half_on_cpu(w) && x.dtype() == w.dtype() && frozen {
            let wide = get_or_try_init(&self.wide, || w.to_dtype(DType::F32))?;
            self.frozen_product(&x.to_dtype(DType::F32)?, wide)?
                .to_dtype(w.dtype())?
        } else if frozen {
            self.frozen_product(x, w)?
        } else {
            crate::kernels::gemm::linear(x, w)?
        };
        Ok(match self.linear.bias() {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// `x · wᵀ` for a weight that cannot change (`w`, or its widened copy): a small product
    /// (a decode step) packs the weight on first use (`gemm::PackedWeight`) and
    /// multiplies over the packed copy from then on; a larger one (prefill, scoring) goes to
    /// `gemm::linear` and packs nothing.
    fn frozen_product(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let k = x.dim(candle_core::D::Minus1)?;
        let rows = x.elem_count() / k.max(1);
        if rows > crate::kernels::gemm::SMALL_M_ROWS {
            return Ok(crate::kernels::gemm::linear(x, w)?);
        }
        let packed = get_or_try_init(&self.packed, || crate::kernels::gemm::PackedWeight::new(w))?;
        Ok(match packed {
            Some(p) => crate::kernels::gemm::linear_packed(x, w, p)?,
            None => crate::kernels::gemm::linear(x, w)?,
        })
    }

    /// The exact numerics' product (`gemm::linear_exact`): over the packed copy of a frozen
    /// weight (made on first use, shared with the decode path) where nothing needs a
    /// gradient, over the weight itself otherwise.
    fn forward_exact(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.linear.weight();
        let keep = !w.is_variable() && !x.track_op();
        let y = if w.dtype() == DType::BF16 {
            let packed = if keep {
                get_or_try_init(&self.half, || crate::kernels::gemm::HalfWeight::new(w))?.as_ref()
            } else {
                None
            };
            crate::kernels::gemm::linear_exact_half(x, w, packed)?
        } else {
            let packed = if keep {
                get_or_try_init(&self.packed, || crate::kernels::gemm::PackedWeight::new(w))?
                    .as_ref()
            } else {
                None
            };
            crate::kernels::gemm::linear_exact(x, w, packed)?
        };
        Ok(match self.linear.bias() {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// The training product: `x` flattened to rows, `x · wᵀ (+ b)`, reshaped back. candle's
    /// `Linear` multiplies a `[batch, seq, k]` input by the weight broadcast over the batch,
    /// so the weight's gradient was `batch` products of `[k, seq] · [seq, n]`, transposed and
    /// then summed over the batch (a strided copy of `batch` weight-sized tensors). Here it is
    /// one product `xᵀ · dy` over all rows, left as the transposed view it is.
    fn forward_rows(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let k = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / k.max(1);
        let w = self.linear.weight();
        let x = x.reshape((rows, k))?;
        // A frozen weight (a LoRA run's base) gets no gradient computed.
        let y = if w.is_variable() {
            x.matmul(&w.t()?)?
        } else {
            fused::frozen_linear(&x, w)?
        };
        let y = match self.linear.bias() {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims.to_vec();
        if let Some(last) = out.last_mut() {
            *last = w.dim(0)?;
        }
        Ok(y.reshape(out)?)
    }
}

/// `cell`'s value, made by `make` on first use (`OnceLock::get_or_try_init` is not stable).
/// Threads that race both make one; the first stored wins and the others are dropped.
fn get_or_try_init<T>(
    cell: &OnceLock<T>,
    make: impl FnOnce() -> candle_core::Result<T>,
) -> candle_core::Result<&T> {
    if let Some(v) = cell.get() {
        return Ok(v);
    }
    let _ = cell.set(make()?);
    Ok(cell.get().expect("set above"))
}

fn linear(inp: usize, out: usize, bias: bool, vb: VarBuilder) -> Result<Proj> {
    let w = vb.get((out, inp), "weight")?;
    let b = if bias {
        Some(vb.get(out, "bias")?)
    } else {
        None
    };
    Ok(Proj::new(w, b))
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Proj,
    k_proj: Proj,
    v_proj: Proj,
    o_proj: Proj,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, hd, nh, nkv) = (
            cfg.hidden_size,
            cfg.head_dim(),
            cfg.num_attention_heads,
            cfg.num_kv_heads(),
        );
        let qkv_bias = cfg.qkv_bias();
        let (q_norm, k_norm) = if cfg.qk_norm() {
            (
                Some(RmsNorm::new(hd, cfg.rms_norm_eps, vb.pp("q_norm"))?),
                Some(RmsNorm::new(hd, cfg.rms_norm_eps, vb.pp("k_norm"))?),
            )
        } else {
            (None, None)
        };
        Ok(Attention {
            q_proj: linear(h, nh * hd, qkv_bias, vb.pp("q_proj"))?,
            k_proj: linear(h, nkv * hd, qkv_bias, vb.pp("k_proj"))?,
            v_proj: linear(h, nkv * hd, qkv_bias, vb.pp("v_proj"))?,
            o_proj: linear(nh * hd, h, cfg.o_bias(), vb.pp("o_proj"))?,
            q_norm,
            k_norm,
            n_heads: nh,
            n_kv: nkv,
            head_dim: hd,
        })
    }

    /// Attention over `x` at the positions `p` prepared (rotary tables, mask, padding).
    fn forward(
        &self,
        x: &Tensor,
        p: &Prepared,
        cache: Option<(&mut KvCache, usize)>,
        n: Numerics,
    ) -> Result<Tensor> {
        let (cos, sin, mask) = (&p.cos, &p.sin, p.mask.as_ref());
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.n_heads, self.n_kv, self.head_dim);
        let q = self.q_proj.forward(x, n)?.reshape((b, t, nh, hd))?;
        let k = self.k_proj.forward(x, n)?.reshape((b, t, nkv, hd))?;
        let v = self.v_proj.forward(x, n)?.reshape((b, t, nkv, hd))?;
        let (q, k) = match (&self.q_norm, &self.k_norm) {
            (Some(qn), Some(kn)) => (qn.forward(&q, n)?, kn.forward(&k, n)?),
            _ => (q, k),
        };
        let v = v.transpose(1, 2)?.contiguous()?;
        // q and k go from [b, t, heads, hd] to [b, heads, t, hd] inside alp's rotary kernel
        // on f32 CPU tensors (no transposing copy, forward or backward); elsewhere a copy
        // first, then candle's kernel (inference) or the twin.
        let cpu_f32 = q.device().is_cpu() && q.dtype() == DType::F32;
        let heads_first = |t: Tensor| t.transpose(1, 2)?.contiguous();
        let (q, k) = match n {
            Numerics::Training | Numerics::Inference | Numerics::Exact if cpu_f32 => (
                fused::rope_from_seq_major(&q, cos, sin)?,
                fused::rope_from_seq_major(&k, cos, sin)?,
            ),
            Numerics::Inference => (
                rope::apply_fused(&heads_first(q)?, cos, sin)?,
                rope::apply_fused(&heads_first(k)?, cos, sin)?,
            ),
            Numerics::Training | Numerics::Exact => (
                fused::rope(&heads_first(q)?, cos, sin)?,
                fused::rope(&heads_first(k)?, cos, sin)?,
            ),
            Numerics::Reference => (
                fused::twin::rope(&heads_first(q)?, cos, sin)?,
                fused::twin::rope(&heads_first(k)?, cos, sin)?,
            ),
        };
        let (k, v) = match cache {
            Some((c, layer)) => c.append(layer, &k, &v)?,
            None => (k, v),
        };
        // With the `flash-attn` feature, half-precision inference on CUDA without left padding
        // goes through flash attention (it handles grouped KV heads itself); everything else
        // takes the path below, which is also the reference the GPU tests compare it with.
        #[cfg(feature = "flash-attn")]
        if n == Numerics::Inference
            && !p.padded
            && matches!(q.dtype(), DType::F16 | DType::BF16)
            && q.device().is_cuda()
        {
            let qf = q.transpose(1, 2)?.contiguous()?;
            let kf = k.transpose(1, 2)?.contiguous()?;
            let vf = v.transpose(1, 2)?.contiguous()?;
            let scale = (1.0 / (hd as f64).sqrt()) as f32;
            let out = candle_flash_attn::flash_attn(&qf, &kf, &vf, scale, t > 1)?;
            return self.o_proj.forward(&out.reshape((b, t, nh * hd))?, n);
        }
        let scale = 1.0 / (hd as f64).sqrt();
        if n == Numerics::Exact {
            // A bf16 model's attention runs on its values widened to f32 (a half-precision
            // cache on the CPU already holds them so) and rounds the result back.
            let f = |t: &Tensor| t.to_dtype(DType::F32);
            let out = crate::kernels::attention::attention_exact(
                &f(&q)?,
                &f(&k)?,
                &f(&v)?,
                &p.left_pad,
                p.start,
                scale,
            )?
            .to_dtype(q.dtype())?;
            return self.o_proj.forward(&out, n);
        }
        // f32 inference on the CPU: one pass per query over the cache's views
        // (`attention`); the composition below is its reference.
        if n == Numerics::Inference && crate::kernels::attention::fusable(&q, &k, &v) {
            let out = crate::kernels::attention::attention(&q, &k, &v, mask, scale)?;
            return self.o_proj.forward(&out, n);
        }
        let l = k.dim(2)?;
        let rep = nh / nkv;
        // Grouped-query attention without copying K/V: fold the query heads that share a
        // KV head into the row dimension (head h uses KV head h / rep, as transformers does).
        let q = q.reshape((b, nkv, rep * t, hd))?;
        // A half-precision cache on the CPU holds f32 (KvCache::append): multiply in f32 and
        // round the products to the model's dtype, as candle's half-precision matmul does.
        let dtype = q.dtype();
        let widened = k.dtype() != dtype;
        let scores = if widened {
            q.to_dtype(k.dtype())?.matmul(&k.t()?)?.to_dtype(dtype)?
        } else {
            q.matmul(&k.t()?)?
        };
        let scores = (scores * scale)?;
        let scores = scores.to_dtype(DType::F32)?.reshape((b, nkv, rep, t, l))?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = match n {
            Numerics::Inference => candle_nn::ops::softmax_last_dim(&scores.contiguous()?)?,
            Numerics::Training | Numerics::Exact => fused::softmax_last_dim(&scores)?,
            Numerics::Reference => fused::twin::softmax_last_dim(&scores)?,
        };
        let probs = probs.reshape((b, nkv, rep * t, l))?.to_dtype(dtype)?;
        let out = if widened {
            probs.to_dtype(v.dtype())?.matmul(&v)?.to_dtype(dtype)?
        } else {
            probs.matmul(&v)?
        }; // [b, nkv, rep*t, hd]
        let out = out
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?;
        self.o_proj.forward(&out, n)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Proj,
    up_proj: Proj,
    down_proj: Proj,
}

impl Mlp {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Mlp {
            gate_proj: linear(h, i, false, vb.pp("gate_proj"))?,
            up_proj: linear(h, i, false, vb.pp("up_proj"))?,
            down_proj: linear(i, h, false, vb.pp("down_proj"))?,
        })
    }
    fn forward(&self, x: &Tensor, n: Numerics) -> Result<Tensor> {
        let g = self.gate_proj.forward(x, n)?;
        let u = self.up_proj.forward(x, n)?;
        let a = match n {
            Numerics::Training | Numerics::Exact => fused::silu_mul(&g, &u)?,
            Numerics::Inference => fused::silu_mul_inference(&g, &u)?,
            Numerics::Reference => fused::twin::silu_mul(&g, &u)?,
        };
        self.down_proj.forward(&a, n)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(DecoderLayer {
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            input_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("input_layernorm"),
            )?,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
        })
    }
}

/// The rotary tables and the mask of one forward.
#[derive(Debug)]
struct Prepared {
    cos: Tensor,
    sin: Tensor,
    mask: Option<Tensor>,
    /// Whether any row is left-padded (flash attention takes unpadded batches only).
    #[cfg_attr(not(feature = "flash-attn"), allow(dead_code))]
    padded: bool,
    /// Each row's left padding (empty: none) and the first position: what the exact
    /// attention reads instead of the mask.
    left_pad: Vec<usize>,
    start: usize,
}

/// A checkpointed training forward ([`Model::forward_checkpointed`]): each decoder layer's
/// input, kept detached, and the differentiable final hidden state.
pub struct Checkpointed<'a> {
    model: &'a Model,
    perturb: &'a dyn Perturbation,
    ids: Tensor,
    prepared: Prepared,
    /// Input of layer i (detached).
    inputs: Vec<Tensor>,
    /// The last layer's output, a leaf the loss's backward reaches.
    last: candle_core::Var,
    hidden: Tensor,
}

impl Checkpointed<'_> {
    /// The final normed hidden state `[b, t, hidden]` (what [`Model::hidden_states`] returns).
    pub fn hidden(&self) -> &Tensor {
        &self.hidden
    }

    /// Every weight's gradient (and each learnable σ's) from `top`, the `backward` of a loss
    /// built on [`Checkpointed::hidden`]: walks the layers from the last, recomputing each
    /// from its kept input with the same noise and pulling the gradient of its output
    /// through it. Returns `top` with the layers' and the embedding's gradients added.
    pub fn backward(
        self,
        mut top: candle_core::backprop::GradStore,
    ) -> Result<candle_core::backprop::GradStore> {
        let m = self.model;
        let Some(mut g) = top.remove(self.last.as_tensor()) else {
            // The loss does not reach the hidden state: nothing below it gets a gradient.
            return Ok(top);
        };
        for i in (0..m.layers.len()).rev() {
            let x = candle_core::Var::from_tensor(&self.inputs[i])?;
            let y = m.layer(
                i,
                x.as_tensor(),
                &self.prepared,
                None,
                self.perturb,
                m.training_numerics(),
            )?;
            let mut part = (y * g.detach())?.sum_all()?.backward()?;
            g = part.remove(x.as_tensor()).ok_or_else(|| {
                Error::invalid(format!(
                    "layer {i}'s input got no gradient in the recompute"
                ))
            })?;
            top.extend(part)?;
        }
        // The embedding rows the tokens picked.
        let e = m.embed(&self.ids)?;
        top.extend((e * g.detach())?.sum_all()?.backward()?)?;
        Ok(top)
    }
}

/// The final normed hidden states of a training forward whose backward comes later
/// ([`Model::training_forward`]): plain, or checkpointed.
pub struct TrainingForward<'a> {
    /// `[b, t, hidden]`, differentiable: build the loss on it (e.g. through [`Model::logits`]).
    pub hidden: Tensor,
    checkpoint: Option<Checkpointed<'a>>,
}

impl TrainingForward<'_> {
    /// Every weight's (and each learnable σ's) gradient of `loss`, a scalar built on
    /// [`TrainingForward::hidden`].
    pub fn backward(self, loss: &Tensor) -> Result<candle_core::backprop::GradStore> {
        let top = loss.backward()?;
        match self.checkpoint {
            Some(ck) => ck.backward(top),
            None => Ok(top),
        }
    }
}

/// A decoder-only language model with the Hugging Face Qwen2/Llama/Qwen3 layout.
///
/// Weights are immutable during a forward; the KV cache and the perturbation are arguments.
#[derive(Debug, Clone)]
pub struct Model {
    cfg: Config,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Proj,
    rope: rope::Rope,
    dtype: DType,
    device: Device,
    /// Training and inference both run [`Numerics::Exact`] ([`Model::set_exact_numerics`]).
    exact: bool,
}

impl Model {
    /// Builds the model from a `VarBuilder` whose paths mirror the checkpoint
    /// (`model.embed_tokens`, `model.layers.N...`, `model.norm`, `lm_head`).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let vbm = vb.pp("model");
        let embed_tokens = vbm.get((cfg.vocab_size, cfg.hidden_size), "embed_tokens.weight")?;
        let vbl = vbm.pp("layers");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, vbl.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vbm.pp("norm"))?;
        let lm_w = if cfg.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            vb.get((cfg.vocab_size, cfg.hidden_size), "lm_head.weight")?
        };
        let rope = rope::Rope::new(
            cfg.head_dim(),
            cfg.rope_theta(),
            cfg.max_position_embeddings,
            vb.device(),
        )?;
        Ok(Model {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head: Proj::new(lm_w, None),
            rope,
            dtype: vb.dtype(),
            device: vb.device().clone(),
            exact: false,
        })
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The same model over detached tensors (sharing storage, no copy): a forward of it
    /// records no autograd graph, so scoring with a trainable model's weights keeps no
    /// activations beyond the layer at hand. The view follows in-place updates of the
    /// variables it was taken from; build a new one after an update to be safe with the
    /// packed copies of the inference path.
    pub fn detached(&self) -> Model {
        let norm = |n: &RmsNorm| RmsNorm {
            weight: n.weight.detach(),
            eps: n.eps,
        };
        let layers = self
            .layers
            .iter()
            .map(|l| DecoderLayer {
                self_attn: Attention {
                    q_proj: l.self_attn.q_proj.detached(),
                    k_proj: l.self_attn.k_proj.detached(),
                    v_proj: l.self_attn.v_proj.detached(),
                    o_proj: l.self_attn.o_proj.detached(),
                    q_norm: l.self_attn.q_norm.as_ref().map(norm),
                    k_norm: l.self_attn.k_norm.as_ref().map(norm),
                    ..l.self_attn.clone()
                },
                mlp: Mlp {
                    gate_proj: l.mlp.gate_proj.detached(),
                    up_proj: l.mlp.up_proj.detached(),
                    down_proj: l.mlp.down_proj.detached(),
                },
                input_layernorm: norm(&l.input_layernorm),
                post_attention_layernorm: norm(&l.post_attention_layernorm),
            })
            .collect();
        Model {
            cfg: self.cfg.clone(),
            embed_tokens: self.embed_tokens.detach(),
            layers,
            norm: norm(&self.norm),
            lm_head: self.lm_head.detached(),
            rope: self.rope.clone(),
            dtype: self.dtype,
            device: self.device.clone(),
            exact: self.exact,
        }
    }

    /// Adds `adapter`'s low-rank update to the projections it targets (unmerged: the base
    /// weights stay as they are and shared). Its tensors are used as they are, so an
    /// adapter of training variables makes a model whose A and B get gradients.
    pub fn attach_adapter(&mut self, adapter: &crate::lora::Adapter) -> Result<()> {
        adapter.check(&self.cfg, std::path::Path::new("<adapter>"))?;
        let scale = adapter.config.scale();
        for (module, _, _) in adapter.config.modules(&self.cfg) {
            let get = |name: String| {
                adapter
                    .tensors
                    .get(&name)
                    .cloned()
                    .ok_or_else(|| Error::invalid(format!("adapter has no `{name}`")))
            };
            let pair = LoraPair {
                a: get(crate::lora::a_name(&module))?,
                b: get(crate::lora::b_name(&module))?,
                scale,
            };
            *self.proj_mut(&module)? = Some(pair);
        }
        Ok(())
    }

    /// The LoRA slot of the projection at `module` (`model.layers.N.self_attn.q_proj`, …).
    fn proj_mut(&mut self, module: &str) -> Result<&mut Option<LoraPair>> {
        let bad = || Error::invalid(format!("no projection `{module}` in this model"));
        let rest = module.strip_prefix("model.layers.").ok_or_else(bad)?;
        let (idx, name) = rest.split_once('.').ok_or_else(bad)?;
        let i: usize = idx.parse().map_err(|_| bad())?;
        let layer = self.layers.get_mut(i).ok_or_else(bad)?;
        let proj = match name {
            "self_attn.q_proj" => &mut layer.self_attn.q_proj,
            "self_attn.k_proj" => &mut layer.self_attn.k_proj,
            "self_attn.v_proj" => &mut layer.self_attn.v_proj,
            "self_attn.o_proj" => &mut layer.self_attn.o_proj,
            "mlp.gate_proj" => &mut layer.mlp.gate_proj,
            "mlp.up_proj" => &mut layer.mlp.up_proj,
            "mlp.down_proj" => &mut layer.mlp.down_proj,
            _ => return Err(bad()),
        };
        Ok(&mut proj.lora)
    }

    /// Makes training and inference of this model (and of its [`Model::detached`] views) both
    /// run [`Numerics::Exact`]: a rollout engine built on it stores the log-probs the trainer
    /// recomputes, bit for bit. Needs f32 or bf16 weights on the CPU (an error names what is
    /// not).
    pub fn set_exact_numerics(&mut self, on: bool) -> Result<()> {
        if on && !exact_supported(self.dtype, &self.device) {
            return Err(exact_unsupported(self.dtype, &self.device));
        }
        self.exact = on;
        Ok(())
    }

    /// Whether training and inference run [`Numerics::Exact`].
    pub fn exact_numerics(&self) -> bool {
        self.exact
    }

    /// The numerics of this model's training forwards.
    fn training_numerics(&self) -> Numerics {
        if self.exact {
            Numerics::Exact
        } else {
            Numerics::Training
        }
    }

    /// The numerics of this model's cached (rollout) forwards.
    fn inference_numerics(&self) -> Numerics {
        if self.exact {
            Numerics::Exact
        } else {
            Numerics::Inference
        }
    }

    /// The dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device of the weights.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A fresh KV cache for `batch` rows (left padding `left_pad`, empty for none) holding
    /// up to `capacity` positions.
    pub fn new_cache(&self, capacity: usize, left_pad: &[usize]) -> KvCache {
        KvCache::new(self.cfg.num_hidden_layers, capacity, left_pad)
    }

    fn check_ids(&self, input_ids: &Tensor) -> Result<(usize, usize)> {
        let (b, t) = input_ids.dims2()?;
        if b == 0 || t == 0 {
            return Err(Error::invalid(format!(
                "input_ids has shape [{b}, {t}]; both dims must be positive"
            )));
        }
        if input_ids.dtype() != DType::U32 {
            return Err(Error::invalid(format!(
                "input_ids must be u32, got {:?}",
                input_ids.dtype()
            )));
        }
        let max = input_ids.max_all()?.to_scalar::<u32>()?;
        if max as usize >= self.cfg.vocab_size {
            return Err(Error::TokenOutOfRange {
                token: max,
                vocab_size: self.cfg.vocab_size,
            });
        }
        Ok((b, t))
    }

    /// The positions' rotary tables and the attention mask of a forward of `input_ids` that
    /// starts at position `start`.
    fn prepare(&self, input_ids: &Tensor, start: usize, left_pad: &[usize]) -> Result<Prepared> {
        let (b, t) = self.check_ids(input_ids)?;
        if !left_pad.is_empty() && left_pad.len() != b {
            return Err(Error::invalid(format!(
                "left_pad has {} entries for a batch of {b}",
                left_pad.len()
            )));
        }
        let total = start + t;
        if total > self.rope.max_positions() {
            return Err(Error::invalid(format!(
                "sequence of {total} positions exceeds max_position_embeddings {}",
                self.rope.max_positions()
            )));
        }
        let padded = left_pad.iter().any(|&p| p > 0);
        // Per-row positions: a left-padded row counts from its first real token.
        let mut pos = Vec::with_capacity(b * t);
        for r in 0..b {
            let p = if padded {
                left_pad.get(r).copied().unwrap_or(0)
            } else {
                0
            };
            for i in start..total {
                pos.push(i.saturating_sub(p) as u32);
            }
        }
        let positions = Tensor::from_vec(pos, (b, t), &self.device)?;
        let (cos, sin) = self.rope.tables(&positions, self.dtype)?;
        let mask = if padded {
            Some(padded_mask(left_pad, start, t, &self.device)?)
        } else if t > 1 {
            Some(causal_mask(start, t, &self.device)?)
        } else {
            None
        };
        Ok(Prepared {
            cos,
            sin,
            mask,
            padded,
            left_pad: left_pad.to_vec(),
            start,
        })
    }

    /// The token embeddings `[b, t, hidden]` of `input_ids`.
    fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        Ok(self
            .embed_tokens
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((b, t, self.cfg.hidden_size))?)
    }

    /// Decoder layer `i` on its input hidden state `h` (perturbed first).
    fn layer(
        &self,
        i: usize,
        h: &Tensor,
        p: &Prepared,
        cache: Option<&mut KvCache>,
        perturb: &dyn Perturbation,
        n: Numerics,
    ) -> Result<Tensor> {
        let layer = &self.layers[i];
        let h = if perturb.is_identity() {
            h.clone()
        } else {
            perturb.perturb(i, h)?
        };
        let x = layer.input_layernorm.forward(&h, n)?;
        let c = cache.map(|c| (c, i));
        let x = layer.self_attn.forward(&x, p, c, n)?;
        let h = (h + x)?;
        let x = layer.post_attention_layernorm.forward(&h, n)?;
        Ok((&h + layer.mlp.forward(&x, n)?)?)
    }

    /// The final norm (and the head's perturbation) on the last layer's output.
    fn final_norm(&self, h: &Tensor, perturb: &dyn Perturbation, n: Numerics) -> Result<Tensor> {
        let h = self.norm.forward(h, n)?;
        if perturb.is_identity() {
            Ok(h)
        } else {
            perturb.perturb_head(&h)
        }
    }

    /// Hidden state after the final norm (before the LM head and its perturbation).
    fn run(
        &self,
        input_ids: &Tensor,
        start: usize,
        left_pad: &[usize],
        mut cache: Option<&mut KvCache>,
        perturb: &dyn Perturbation,
        n: Numerics,
    ) -> Result<Tensor> {
        if n == Numerics::Exact && !exact_supported(self.dtype, &self.device) {
            return Err(exact_unsupported(self.dtype, &self.device));
        }
        let p = self.prepare(input_ids, start, left_pad)?;
        let t = input_ids.dim(1)?;
        let mut h = self.embed(input_ids)?;
        for i in 0..self.layers.len() {
            h = self.layer(i, &h, &p, cache.as_deref_mut(), perturb, n)?;
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        self.final_norm(&h, perturb, n)
    }

    /// A training forward that keeps only each decoder layer's input (gradient
    /// checkpointing): the activations inside a layer are recomputed layer by layer in
    /// [`Checkpointed::backward`]. [`Checkpointed::hidden`] is the final normed hidden state,
    /// differentiable with respect to the final norm, the head's perturbation and the last
    /// layer's output; build the loss on it, run its `backward`, and hand that to
    /// [`Checkpointed::backward`] for every weight's gradient. The same gradients as
    /// [`Model::hidden_states`] and one `backward` (a test holds them), for one layer's
    /// activations instead of all of them at a time, at the cost of a second forward.
    pub fn forward_checkpointed<'a>(
        &'a self,
        input_ids: &Tensor,
        left_pad: &[usize],
        perturb: &'a dyn Perturbation,
    ) -> Result<Checkpointed<'a>> {
        let n = self.training_numerics();
        let p = self.prepare(input_ids, 0, left_pad)?;
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut h = self.embed(input_ids)?.detach();
        for i in 0..self.layers.len() {
            let next = self.layer(i, &h, &p, None, perturb, n)?.detach();
            inputs.push(h);
            h = next;
        }
        let last = candle_core::Var::from_tensor(&h)?;
        let hidden = self.final_norm(last.as_tensor(), perturb, n)?;
        Ok(Checkpointed {
            model: self,
            perturb,
            ids: input_ids.clone(),
            prepared: p,
            inputs,
            last,
            hidden,
        })
    }

    /// A training forward of a full sequence whose backward comes later: plain
    /// ([`Model::hidden_states`]) or, with `checkpointing`, each decoder layer recomputed in
    /// the backward ([`Model::forward_checkpointed`]); the gradients are the same.
    pub fn training_forward<'a>(
        &'a self,
        input_ids: &Tensor,
        left_pad: &[usize],
        perturb: &'a dyn Perturbation,
        checkpointing: bool,
    ) -> Result<TrainingForward<'a>> {
        if !checkpointing {
            return Ok(TrainingForward {
                hidden: self.hidden_states(input_ids, left_pad, perturb)?,
                checkpoint: None,
            });
        }
        let ck = self.forward_checkpointed(input_ids, left_pad, perturb)?;
        Ok(TrainingForward {
            hidden: ck.hidden().clone(),
            checkpoint: Some(ck),
        })
    }

    /// Logits from a final hidden state.
    fn head(&self, h: &Tensor, n: Numerics) -> Result<Tensor> {
        self.lm_head.forward(h, n)
    }

    /// Differentiable logits `[.., vocab]` of final normed hidden states (from
    /// [`Model::hidden_states`] or [`Checkpointed::hidden`], possibly narrowed to the
    /// positions a loss needs).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.head(hidden, self.training_numerics())
    }

    /// Fused-kernel forward that continues `cache`; logits `[batch, seq, vocab]`.
    pub fn forward_cached(
        &self,
        input_ids: &Tensor,
        cache: &mut KvCache,
        perturb: &dyn Perturbation,
    ) -> Result<Tensor> {
        let h = self.run_cached(input_ids, cache, perturb)?;
        self.head(&h, self.inference_numerics())
    }

    /// Final hidden states of a fused forward that continues `cache`.
    fn run_cached(
        &self,
        input_ids: &Tensor,
        cache: &mut KvCache,
        perturb: &dyn Perturbation,
    ) -> Result<Tensor> {
        let start = cache.len();
        let pad = cache.left_pad().to_vec();
        self.run(
            input_ids,
            start,
            &pad,
            Some(cache),
            perturb,
            self.inference_numerics(),
        )
    }

    /// Like [`Model::forward_cached`] but returns only the last position's logits `[batch, vocab]`
    /// (what sampling needs; skips the LM head on the prompt).
    pub fn forward_last(
        &self,
        input_ids: &Tensor,
        cache: &mut KvCache,
        perturb: &dyn Perturbation,
    ) -> Result<Tensor> {
        let h = self.run_cached(input_ids, cache, perturb)?;
        let t = h.dim(1)?;
        self.head(
            &h.narrow(1, t - 1, 1)?.squeeze(1)?,
            self.inference_numerics(),
        )
    }

    /// Full-sequence forward without a cache, with the chosen numerics.
    pub fn forward_full(
        &self,
        input_ids: &Tensor,
        left_pad: &[usize],
        perturb: &dyn Perturbation,
        numerics: Numerics,
    ) -> Result<Tensor> {
        let h = self.run(input_ids, 0, left_pad, None, perturb, numerics)?;
        self.head(&h, numerics)
    }

    /// Final normed hidden states of a full sequence (differentiable), for callers that fuse
    /// the LM head with their own loss.
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        left_pad: &[usize],
        perturb: &dyn Perturbation,
    ) -> Result<Tensor> {
        self.run(
            input_ids,
            0,
            left_pad,
            None,
            perturb,
            self.training_numerics(),
        )
    }

    /// The LM head weight `[vocab, hidden]` (the embedding when tied).
    pub fn lm_head_weight(&self) -> &Tensor {
        self.lm_head.weight()
    }
}

/// Whether the exact numerics have kernels for weights of `dtype` on `device`.
fn exact_supported(dtype: DType, device: &Device) -> bool {
    device.is_cpu() && matches!(dtype, DType::F32 | DType::BF16)
}

/// The error of the exact numerics over weights of `dtype` on `device`, which it has no
/// kernels for.
fn exact_unsupported(dtype: DType, device: &Device) -> Error {
    Error::config(
        "rollout_numerics",
        format!(
            "exact numerics need f32 or bf16 weights on the CPU (the same for model.dtype and rl.rollout_dtype); this model is {dtype:?} on {device:?}"
        ),
    )
}
