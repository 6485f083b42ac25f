// `cfg(candle_patched)` where the candle-core in the build is the workspace's patched copy
// (vendor/candle-core, through `[patch.crates-io]`), which says so through its `links`
// metadata; with the registry's candle-core alp-model builds without the patch's calls.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(candle_patched)");
    println!("cargo::rerun-if-env-changed=DEP_ALP_CANDLE_PATCHES_PATCHED");
    if std::env::var_os("DEP_ALP_CANDLE_PATCHES_PATCHED").is_some() {
        println!("cargo::rustc-cfg=candle_patched");
    }
}
