# Today's bitnet.cpp as a second reference (sourced by scripts/setup.sh; bash, set -euo
# pipefail, with ROOT, say, die, file_sha256, tree_sha256 and vendor_crate_folder).
#
# microsoft/BitNet of about 2026-03 (native `bitnet-b1.58` / `bitnet-25` archs, the new I2_S
# kernels with include/gemm-config.h) as published in the crates.io package bitnet-llm-sys
# 1.0.2, folder `bitnet.cpp/` (its llama.cpp fork in 3rdparty/llama.cpp). Fetched with cargo
# (setup.sh's vendor_crate_folder, as for bitnet-cpp-sys), checked
# against the pinned sha256 of the .crate and of the extracted tree, unpacked into
# oracle/vendor/bitnet-2026 (gitignored) with its stamp in oracle/vendor/bitnet-2026.stamp.
# Only the source is used: the crate's own build.rs (TL2 forced, a kernel header for one 3B
# shape) is never run. oracle-2026/build.rs builds it with oracle/patches-2026.

BITNET2026_CRATE=bitnet-llm-sys
BITNET2026_CRATE_VERSION=1.0.2
# sha256 of the .crate file as crates.io serves it (= the checksum in the index / Cargo.lock).
BITNET2026_CRATE_SHA256=3f00c00c792b849b395409483b316ab29d2286ede404321ef966f9a2ccab12d7
# tree_sha256 of the extracted bitnet.cpp/ folder (sha256 over C-sorted `sha256sum` lines).
BITNET2026_TREE_SHA256=c05a3c2ee5ab22ea5f0ede9eaa23c7b1c65767ba5076f5dddb00d37e07e75d9f

bitnet2026_dir="$ROOT/oracle/vendor/bitnet-2026"
bitnet2026_stamp="$ROOT/oracle/vendor/bitnet-2026.stamp"
bitnet2026_want="$BITNET2026_CRATE-$BITNET2026_CRATE_VERSION $BITNET2026_TREE_SHA256"
if [[ ! -f "$bitnet2026_stamp" || "$(cat "$bitnet2026_stamp")" != "$bitnet2026_want" || ! -d "$bitnet2026_dir" ]]; then
    say "fetching $BITNET2026_CRATE $BITNET2026_CRATE_VERSION (today's bitnet.cpp, second reference) with cargo"
    vendor_crate_folder "$BITNET2026_CRATE" "$BITNET2026_CRATE_VERSION" "$BITNET2026_CRATE_SHA256" \
        bitnet.cpp "$BITNET2026_TREE_SHA256" "$bitnet2026_dir"
    printf '%s\n' "$bitnet2026_want" >"$bitnet2026_stamp"
    say "vendored today's bitnet.cpp into oracle/vendor/bitnet-2026 (tree sha256 $BITNET2026_TREE_SHA256)"
fi
unset bitnet2026_dir bitnet2026_stamp bitnet2026_want
