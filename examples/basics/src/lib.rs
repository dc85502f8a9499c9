//! Small examples of composable-rust, one concept each, in `examples/`:
//!
//! - `counter`: a reducer and its exhaustive `TestStore` test;
//! - `todos`: a collection of children with `ForEach`, and a debounced save;
//! - `bank_account`: a typed aggregate, tested given/when/then, and its typed rejection;
//! - `compensation`: a saga that compensates when a command is rejected;
//! - `outbox_after_crash`: an event stored while the bus was down is published by the relay.
//!
//! Run one with `cargo run -p composable-rust-basics --example counter`; `cargo test -p
//! composable-rust-basics --examples` runs their tests.
