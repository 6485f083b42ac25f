// alp patch: announces the patches to the crates that depend on this one (alp-model reads
// DEP_ALP_CANDLE_PATCHES_PATCHED and turns on `cfg(candle_patched)`); the registry's
// candle-core has no such script, and alp-model then builds without the patch's calls.
fn main() {
    println!("cargo::metadata=patched=1");
}
