//! Criterion benchmarks of the alp workspace; see `benches/`.
