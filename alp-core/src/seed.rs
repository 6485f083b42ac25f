//! Seed mixing: every random draw in alp is a pure function of (seed, step, …), built from
//! these.

/// The golden-ratio increment of splitmix64.
pub const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The splitmix64 finaliser: a bijection that spreads the bits of `z`.
pub fn splitmix_finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One splitmix64 step from state `z` (the state advanced by [`GOLDEN_GAMMA`], finalised).
pub fn splitmix64(z: u64) -> u64 {
    splitmix_finalize(z.wrapping_add(GOLDEN_GAMMA))
}

/// Mixes two integers into a well-spread seed.
///
/// ```
/// use alp_core::mix_seed;
/// assert_eq!(mix_seed(1, 2), mix_seed(1, 2));
/// assert_ne!(mix_seed(1, 2), mix_seed(2, 1));
/// ```
pub fn mix_seed(a: u64, b: u64) -> u64 {
    splitmix_finalize(a ^ b.wrapping_mul(GOLDEN_GAMMA))
}
