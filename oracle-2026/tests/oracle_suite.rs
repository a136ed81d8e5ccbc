//! The oracle crate's own in-process tests (oracle/tests), run unchanged against today's
//! bitnet.cpp: the `Probe` contract (every stage at every position with the engine's shapes,
//! capture filters, generation, determinism, errors) and the source identity. The `extern
//! crate` rename makes their `oracle::…` paths name this crate. Not included: patch_identity
//! (the proof that the 2024 patch 0002 is neutral; nothing in oracle/patches-2026 changes code).

// Each included file declares its own `mod common;` (they are separate test crates under
// oracle/), so here the helpers are compiled once per file: identical copies, on purpose.
#![allow(clippy::duplicate_mod)]

extern crate oracle_2026 as oracle;

#[path = "../../oracle/tests/probe_determinism.rs"]
mod probe_determinism;
#[path = "../../oracle/tests/probe_forward.rs"]
mod probe_forward;
#[path = "../../oracle/tests/probe_generate.rs"]
mod probe_generate;
#[path = "../../oracle/tests/smoke.rs"]
mod smoke;
#[path = "../../oracle/tests/source_identity.rs"]
mod source_identity;
