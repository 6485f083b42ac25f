//! alp's CPU kernels: the small-product and packed decode products (`gemm`), the one-pass
//! inference attention (`attention`), the fused training ops with a backward (`fused`) and the
//! vector math under them (`vmath`). Private to the crate: the decoder chooses them, tests hold
//! each to a plain reference, and an instruction-set variant runs only with a `vmath::Isa`,
//! which only a CPU check makes.
// Reference twins and entry points used by the tests and (feature `bench-internals`) the
// benches only.
#![cfg_attr(not(feature = "bench-internals"), allow(dead_code))]

use candle_core::{CpuStorage, Layout, Result, WithDType};

pub mod attention;
pub mod fused;
pub mod gemm;
pub mod vmath;

#[cfg(test)]
mod fused_tests;

/// The contiguous elements of a kernel input (candle checks the dtype): the helper every
/// kernel of this module takes its inputs with.
pub(crate) fn contiguous<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("{op}: the fused kernel needs a contiguous input"),
    }
}
