//! Builds today's bitnet.cpp (microsoft/BitNet of about 2026-03, its llama.cpp fork, libraries
//! `llama` and `ggml`) with the oracle's build logic (`oracle/build_common.rs`: CMake as for
//! the default reference, bindgen, the source identity for `oracle::source_info`).
//!
//! Source: `oracle/vendor/bitnet-2026`, unpacked by `scripts/setup.d/10-bitnet-cpp-2026.sh`
//! from crates.io `bitnet-llm-sys` 1.0.2 (folder `bitnet.cpp/`; its stamp
//! `oracle/vendor/bitnet-2026.stamp` holds the package and the tree sha256, which the build
//! recomputes and checks). Only the source: the crate's own build.rs is never run. Patched by
//! `oracle/patches-2026/` (see its `series`). No override variable: `BITNET_CPP_DIR` (which
//! accepts a checkout of either layout) belongs to the default reference, `oracle/build.rs`.
//! The work folder is `<target dir>/bitnet-cpp-2026`, beside the oracle's `bitnet-cpp`.

#[path = "../oracle/build_common.rs"]
mod common;

fn main() {
    let dir = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let oracle = dir.join("../oracle");
    common::main(common::Reference {
        vendored: oracle.join("vendor/bitnet-2026"),
        stamp: oracle.join("vendor/bitnet-2026.stamp"),
        flavour: common::Flavour::Y2026,
        setup: "scripts/setup.sh (scripts/setup.d/10-bitnet-cpp-2026.sh)",
        override_env: None,
        identity_dump: None,
        oracle_dir: oracle,
        work: "bitnet-cpp-2026",
    });
}
