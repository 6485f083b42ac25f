//! `alp-rollout` will hold the batched sampling engine of alp: continuous batching over
//! `alp_model::Model` with one KV cache slot per row, seeded sampling with exact stored
//! log-probs, multi-turn episodes driven by an `alp_core::Environment`, and an async worker
//! bounded in staleness. Nothing is implemented yet.
