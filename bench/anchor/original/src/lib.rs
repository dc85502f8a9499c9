//! Empty: the workloads are in `benches/anchor.rs`.
