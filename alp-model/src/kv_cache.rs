//! The explicit KV cache: one preallocated key and value buffer per layer, written in place.
use alp_core::{Error, Result};
use candle_core::{DType, Tensor, D};

/// Keys and values of every layer for a batch of sequences, with each row's left padding.
///
/// Buffers are allocated once (`[batch, kv_heads, capacity, head_dim]`) on the first append
/// and written in place, so a decode step never re-copies the history. The cache belongs to
/// the caller; the model's weights stay shared and immutable.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
    capacity: usize,
    left_pad: Vec<usize>,
}

impl KvCache {
    /// An empty cache for `num_layers` layers holding at most `capacity` positions, for a
    /// batch whose rows start with `left_pad[b]` padding tokens (empty slice: no padding).
    pub fn new(num_layers: usize, capacity: usize, left_pad: &[usize]) -> Self {
        KvCache {
            layers: vec![None; num_layers],
            len: 0,
            capacity,
            left_pad: left_pad.to_vec(),
        }
    }

    /// Number of positions stored (the start position of the next forward).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum number of positions.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Left padding of every row (empty when the batch has none).
    pub fn left_pad(&self) -> &[usize] {
        &self.left_pad
    }

    /// Forgets everything after position `len` (e.g. to roll back a speculative step).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Appends `k`, `v` (`[batch, kv_heads, t, head_dim]`) to `layer` and returns views of all
    /// keys and values so far (in f32 for half-precision inputs on the CPU, see below). The
    /// caller advances the length once per forward with [`KvCache::advance`].
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (b, h, t, d) = k.dims4()?;
        let end = self.len + t;
        if end > self.capacity {
            return Err(Error::invalid(format!(
                "KV cache overflow: {end} positions needed, capacity is {} (build the cache with a larger capacity)",
                self.capacity
            )));
        }
        // Half-precision keys and values on the CPU are stored widened to f32 (exactly: every
        // bf16/f16 value is an f32); candle would otherwise widen the whole cache for every
        // product of every decode step.
        let store = if crate::kernels::gemm::half_on_cpu(k) {
            DType::F32
        } else {
            k.dtype()
        };
        let slot = &mut self.layers[layer];
        if slot.is_none() {
            let kz = Tensor::zeros((b, h, self.capacity, d), store, k.device())?;
            let vz = Tensor::zeros((b, h, self.capacity, d), store, v.device())?;
            *slot = Some((kz, vz));
        }
        let (kc, vc) = slot.as_ref().expect("allocated above");
        if kc.dim(0)? != b {
            return Err(Error::invalid(format!(
                "KV cache holds {} rows, the input has {b}",
                kc.dim(0)?
            )));
        }
        kc.slice_set(&k.to_dtype(kc.dtype())?.contiguous()?, 2, self.len)?;
        vc.slice_set(&v.to_dtype(vc.dtype())?.contiguous()?, 2, self.len)?;
        Ok((kc.narrow(D::Minus2, 0, end)?, vc.narrow(D::Minus2, 0, end)?))
    }

    /// Number of rows (0 before the first append).
    pub fn batch_size(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .next()
            .and_then(|(k, _)| k.dim(0).ok())
            .unwrap_or(0)
    }

    /// Builds a new cache from rows of existing caches (continuous batching: rows leave, new
    /// rows join). Each chosen row keeps only its real positions (after its left padding);
    /// rows are right-aligned at the longest of them and left-padded, so every row's next
    /// token goes to the same position. One copy of the chosen rows, not a per-token cost.
    ///
    /// `rows`: `(source cache, row index)`; `capacity`: positions of the new cache, at least
    /// the longest row.
    pub fn gather_rows(rows: &[(&KvCache, usize)], capacity: usize) -> Result<KvCache> {
        let Some((first, _)) = rows.first() else {
            return Err(Error::invalid("gather_rows needs at least one row"));
        };
        let n_layers = first.layers.len();
        let mut real = Vec::with_capacity(rows.len());
        for (c, r) in rows {
            if c.layers.len() != n_layers {
                return Err(Error::invalid("gather_rows: caches of different depth"));
            }
            if *r >= c.batch_size() {
                return Err(Error::invalid(format!(
                    "gather_rows: row {r} of a cache with {} rows",
                    c.batch_size()
                )));
            }
            let pad = c.left_pad.get(*r).copied().unwrap_or(0).min(c.len);
            real.push((pad, c.len - pad));
        }
        let len = real.iter().map(|(_, n)| *n).max().unwrap_or(0);
        if capacity < len {
            return Err(Error::invalid(format!(
                "gather_rows: capacity {capacity} below the longest row ({len})"
            )));
        }
        let left_pad: Vec<usize> = real.iter().map(|(_, n)| len - n).collect();
        let mut out = KvCache::new(n_layers, capacity, &left_pad);
        for layer in 0..n_layers {
            let mut ks = Vec::with_capacity(rows.len());
            let mut vs = Vec::with_capacity(rows.len());
            for ((c, r), (pad, n)) in rows.iter().zip(&real) {
                let (k, v) = c.layers[layer]
                    .as_ref()
                    .ok_or_else(|| Error::invalid("gather_rows: a source cache is empty"))?;
                let take = |t: &Tensor| -> Result<Tensor> {
                    let t = t.narrow(0, *r, 1)?.narrow(2, *pad, *n)?;
                    Ok(t.pad_with_zeros(2, len - n, capacity - len)?)
                };
                ks.push(take(k)?);
                vs.push(take(v)?);
            }
            out.layers[layer] = Some((Tensor::cat(&ks, 0)?, Tensor::cat(&vs, 0)?));
        }
        out.len = len;
        Ok(out)
    }

    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }
}
