//! End-to-end tests that span the workspace's crates: see `fleet.rs` and
//! `workers.rs` beside this directory.
