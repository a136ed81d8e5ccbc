//! Builds the default reference, bitnet.cpp of late 2024 (its llama.cpp fork, libraries
//! `llama` and `ggml`), with CMake and generates Rust bindings for `llama.h` / `ggml.h`. The
//! logic is `build_common.rs`, shared with `oracle-2026/build.rs` (today's bitnet.cpp).
//!
//! Source: `oracle/vendor/bitnet`, unpacked by `scripts/setup.sh` from crates.io
//! `bitnet-cpp-sys` 0.0.5 (its stamp `oracle/vendor/.stamp` holds the package and the tree
//! sha256, which the build recomputes and checks), patched by `oracle/patches/`.
//!
//! `BITNET_CPP_DIR` replaces it with a bitnet.cpp checkout of either layout the build knows,
//! with its submodule populated (`git submodule update --init --recursive`; the files it
//! must have are `REQUIRED` in build_common.rs). Its `.git`, `build` and `models` folders are
//! not copied. The layout decides the patch set:
//! - 2024 (microsoft/BitNet of late 2024: no `include/gemm-config.h`, no `build_bitnet_158`
//!   in `3rdparty/llama.cpp/src/llama.cpp`): `oracle/patches/` (CMake guards, the empty LUT
//!   header, arch `bitnet-b1.58`);
//! - 2026 (microsoft/BitNet of 2026, both present): `oracle/patches-2026/` (clang const fix;
//!   the empty LUT header only when `include/bitnet-lut-kernels.h` is missing, as in a git
//!   checkout);
//! - anything else (e.g. one of the two markers only) stops the build saying which it has.
//!
//! Every patch the series applies must apply; one already present in the checkout (it applies
//! in reverse) is skipped with a warning. Either way `oracle::source_info()` (receipts,
//! `--version`, `ModelInfo::implementation`) lists exactly the patches applied, the flavour,
//! the checkout path and its tree sha256 (over the files copied).

#[path = "build_common.rs"]
mod common;

fn main() {
    let dir = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    common::main(common::Reference {
        vendored: dir.join("vendor/bitnet"),
        stamp: dir.join("vendor/.stamp"),
        flavour: common::Flavour::Y2024,
        setup: "scripts/setup.sh",
        override_env: Some("BITNET_CPP_DIR"),
        identity_dump: Some(dir.join("src/identity_dump.cpp")),
        oracle_dir: dir,
        work: "bitnet-cpp",
    });
}
