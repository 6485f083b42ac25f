//! The explicit KV cache: one preallocated key and value buffer per layer, written in place.
use alp_core::{Error, Result};
use candle_core::{Tensor, D};

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
    /// keys and values so far. The caller advances the length once per forward with
    /// [`KvCache::advance`].
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
        let slot = &mut self.layers[layer];
        if slot.is_none() {
            let kz = Tensor::zeros((b, h, self.capacity, d), k.dtype(), k.device())?;
            let vz = Tensor::zeros((b, h, self.capacity, d), v.dtype(), v.device())?;
            *slot = Some((kz, vz));
        }
        let (kc, vc) = slot.as_ref().expect("allocated above");
        if kc.dim(0)? != b {
            return Err(Error::invalid(format!(
                "KV cache holds {} rows, the input has {b}",
                kc.dim(0)?
            )));
        }
        kc.slice_set(&k.contiguous()?, 2, self.len)?;
        vc.slice_set(&v.contiguous()?, 2, self.len)?;
        Ok((kc.narrow(D::Minus2, 0, end)?, vc.narrow(D::Minus2, 0, end)?))
    }

    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }
}
