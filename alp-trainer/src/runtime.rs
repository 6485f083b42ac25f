//! Process-wide CPU settings for long training and rollout runs, applied once at start-up.
//!
//! Two costs showed up in profiles of `alp train` on a 2-core machine (perf, software clock):
//! - glibc returned freed activations to the kernel (large blocks are `mmap`ed, the heap top is
//!   trimmed), so the next step faulted every page back in, zeroed: page faults, `brk` and
//!   `munmap` took 12-15% of the SFT phase. Keeping freed memory in the process removes them
//!   (peak memory is set by the largest step, which is held anyway).
//! - candle asks for its thread count on every matrix product and, unless `RAYON_NUM_THREADS`
//!   is set, counts physical cores by reading `/proc/cpuinfo` each time.
//! - candle's elementwise ops fan out to a pool of its own whose idle workers spin: with the
//!   trainer's micro-batches on rayon threads and the sampler on another thread, the spinning
//!   took a third of the CPU time of `alp train` (perf: the pool worker 23–26% of samples, the
//!   caller's wait 12%). One candle thread (`CANDLE_NUM_THREADS=1`: no such pool) made the SFT
//!   and RL phases 30% faster and the 25M-shape `alp bench train|rollout` no slower; matrix
//!   products and alp's fused kernels still use all cores through rayon.

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
