//! Process-wide CPU settings for long training and rollout runs, applied once at start-up.
//!
//! - glibc keeps freed memory in one arena shared by every thread instead of returning it to
//!   the kernel: a training step's activations are allocated again next step, and faulting
//!   their pages back in, zeroed, is slow.
//! - `RAYON_NUM_THREADS` is fixed once, so candle does not count cores on every product.
//! - candle's own elementwise thread pool (whose idle workers spin beside alp's rayon work) is
//!   turned off with `CANDLE_NUM_THREADS=1`; products and alp's kernels still use every core.
//!
//! What each setting measured: `docs/benchmarks.md`.

/// Applies the settings above: glibc's allocator keeps freed memory in one arena shared by
/// every thread (no effect on other
/// allocators or platforms), `RAYON_NUM_THREADS` is fixed to candle's choice and
/// `CANDLE_NUM_THREADS` to 1, each unless the user set it. Call it first thing in `main`,
/// before any thread starts.
pub fn tune_cpu_process() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    unsafe {
        // Blocks up to 512 MiB come from the heap, not from their own mmap; the heap is trimmed
        // only when 2 GiB sit free at its top, and grows 64 MiB at a time.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        // One arena for every thread: freed blocks kept by the settings above are then
        // reused by whichever thread allocates next. With an arena per thread, what the main
        // thread freed (the loading copy of the weights) sat idle while the micro-batch
        // threads grew their own: at the 0.5B shape the peak fell from 14.0 to 12.5 GB.
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        // Before any thread starts (see above), so no concurrent reader of the environment.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Same as above: no other thread yet.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}
