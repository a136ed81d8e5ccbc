#!/usr/bin/env bash
# One-time (and idempotent) set-up for bitprobe on a Debian/Ubuntu machine.
#
#   1. Debian packages the oracle build needs: cmake, clang, libclang-dev (bindgen), patch.
#   2. The oracle's vendored source: bitnet.cpp as published in the crates.io package
#      bitnet-cpp-sys 0.0.5 (folder `bitnet/`), fetched with cargo, unpacked into
#      oracle/vendor/bitnet (gitignored) and checked against pinned sha256 sums.
#   3. The Llama-3 vocabulary: tokenizer.model (and tokenizer.py, for its split regex) from
#      PyPI llama-models 0.3.0, downloaded with pip (no install) into .cache/assets/.
#   4. Every scripts/setup.d/*.sh, in name order: one further pinned piece each.
#   5. A first `cargo build --workspace --all-targets`, so the first `cargo test` is warm.
#
# Quiet when everything is already present; one progress line per step that does work.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# --- pins -------------------------------------------------------------------------------
BITNET_CRATE=bitnet-cpp-sys
BITNET_CRATE_VERSION=0.0.5
# sha256 of the .crate file as crates.io serves it (cargo checks the index's checksum too).
BITNET_CRATE_SHA256=be00ca9092d4cd9c30967e8fa3c001b15d1398d021423f0524afb86c00af51f7
# sha256 over `sha256sum` lines (relative paths, C-locale sorted) of every file in bitnet/.
BITNET_TREE_SHA256=b81a399084ccfd31efcd24863eb375e321f2b213b21383202b78232e9e4bac15

LLAMA_MODELS_VERSION=0.3.0
LLAMA_MODELS_WHEEL_SHA256=7f77f78ff13fca09f70d76a376aff6414cd901623fb9d57e69c2f8367a73032f
LLAMA3_TOKENIZER_SHA256=82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55

VENDOR_DIR="$ROOT/oracle/vendor"
VENDOR_STAMP="$VENDOR_DIR/.stamp"
ASSETS_DIR="$ROOT/.cache/assets"

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# sha256 of a directory tree, independent of mtimes, owners and traversal order.
tree_sha256() {
    (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}
file_sha256() { sha256sum "$1" | cut -d' ' -f1; }

# python_tag: `cp311-x86_64` for the python3 on PATH (wheels are pinned per tag).
python_tag() {
    python3 -c 'import sys, platform; print(f"cp{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}")'
}

# pip_install_pinned DIR REQUIREMENTS_FILE
# pip_install_pinned DIR NAME VERSION WHEEL_SHA256
# Installs exactly the hashed wheels named (a requirements file, or one pinned package) into
# DIR, which is replaced: wheels only, no dependency resolution, nothing into the system
# Python. pip's output is shown only when it fails.
pip_install_pinned() {
    local dir="$1" req log rc=0
    command -v python3 >/dev/null 2>&1 || die "python3 is required to install into $dir"
    log="$(mktemp)"
    if (($# == 4)); then
        req="$(mktemp)"
        printf '%s==%s --hash=sha256:%s\n' "$2" "$3" "$4" >"$req"
    else
        req="$2"
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes \
        --only-binary=:all: --pre --no-compile --root-user-action=ignore --target "$dir" \
        -r "$req" >"$log" 2>&1 || rc=$?
    if ((rc != 0)); then
        cat "$log" >&2
        die "pip could not install $(grep -v '^#' "$req" | cut -d' ' -f1 | tr '\n' ' ')into $dir"
    fi
    rm -f "$log"
    if (($# == 4)); then rm -f "$req"; fi
}

# vendor_crate_folder CRATE VERSION CRATE_SHA256 FOLDER TREE_SHA256 DEST
# Fetches CRATE VERSION from crates.io with cargo (a throwaway Cargo project + `cargo fetch`,
# so cargo's registry client, index and checksum do the download), checks the .crate's sha256,
# extracts its FOLDER, checks that tree's sha256, and moves it to DEST (replacing what was
# there). Only the source is used: the crate's own build.rs never runs.
vendor_crate_folder() {
    local crate="$1" version="$2" crate_sha="$3" folder="$4" tree_sha="$5" dest="$6"
    local tmp cargo_home crate_file got
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064 # expand now: $tmp is local
    trap "rm -rf '$tmp'" EXIT
    mkdir -p "$tmp/fetch/src"
    printf '[package]\nname = "bitprobe-vendor-fetch"\nversion = "0.0.0"\nedition = "2021"\npublish = false\n\n[dependencies]\n%s = "=%s"\n\n[workspace]\n' \
        "$crate" "$version" >"$tmp/fetch/Cargo.toml"
    : >"$tmp/fetch/src/lib.rs"
    cargo fetch --quiet --manifest-path "$tmp/fetch/Cargo.toml"
    cargo_home="${CARGO_HOME:-$HOME/.cargo}"
    crate_file="$(find "$cargo_home/registry/cache" -name "$crate-$version.crate" -print -quit)"
    [[ -n "$crate_file" ]] || die "cargo fetch left no $crate-$version.crate under $cargo_home/registry/cache"
    got="$(file_sha256 "$crate_file")"
    [[ "$got" == "$crate_sha" ]] || die "$crate_file: sha256 $got, expected $crate_sha"
    mkdir -p "$tmp/x"
    tar -xzf "$crate_file" -C "$tmp/x" --strip-components=1 "$crate-$version/$folder"
    got="$(tree_sha256 "$tmp/x/$folder")"
    [[ "$got" == "$tree_sha" ]] || die "extracted $folder/ tree of $crate $version: sha256 $got, expected $tree_sha"
    rm -rf "$dest"
    mkdir -p "$(dirname "$dest")"
    mv "$tmp/x/$folder" "$dest"
    rm -rf "$tmp"
    trap - EXIT
}

# --- 1. Debian packages ---------------------------------------------------------------
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v clang >/dev/null 2>&1 || missing+=(clang)
command -v patch >/dev/null 2>&1 || missing+=(patch)
# bindgen loads libclang.so at build time; libclang-dev provides the unversioned symlink.
dpkg-query -W -f='${Status}' libclang-dev 2>/dev/null | grep -q 'install ok installed' \
    || missing+=(libclang-dev)
if ((${#missing[@]})); then
    SUDO=()
    if [[ $(id -u) -ne 0 ]]; then SUDO=(sudo); fi
    say "installing Debian packages: ${missing[*]}"
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- 2. vendored bitnet.cpp -------------------------------------------------------------
stamp_want="$BITNET_CRATE-$BITNET_CRATE_VERSION $BITNET_TREE_SHA256"
if [[ ! -f "$VENDOR_STAMP" || "$(cat "$VENDOR_STAMP")" != "$stamp_want" || ! -d "$VENDOR_DIR/bitnet" ]]; then
    say "fetching $BITNET_CRATE $BITNET_CRATE_VERSION (vendored bitnet.cpp) with cargo"
    vendor_crate_folder "$BITNET_CRATE" "$BITNET_CRATE_VERSION" "$BITNET_CRATE_SHA256" \
        bitnet "$BITNET_TREE_SHA256" "$VENDOR_DIR/bitnet"
    printf '%s\n' "$stamp_want" >"$VENDOR_STAMP"
    say "vendored bitnet.cpp into oracle/vendor/bitnet (tree sha256 $BITNET_TREE_SHA256)"
fi

# --- 3. Llama-3 vocabulary asset -------------------------------------------------------
tok_model="$ASSETS_DIR/llama3-tokenizer.model"
tok_py="$ASSETS_DIR/llama3-tokenizer.py"
if [[ ! -f "$tok_model" || ! -f "$tok_py" || "$(file_sha256 "$tok_model")" != "$LLAMA3_TOKENIZER_SHA256" ]]; then
    say "downloading llama-models $LLAMA_MODELS_VERSION with pip (Llama-3 tokenizer.model)"
    command -v python3 >/dev/null 2>&1 || die "python3 is required to fetch the Llama-3 vocabulary"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    printf 'llama-models==%s --hash=sha256:%s\n' "$LLAMA_MODELS_VERSION" "$LLAMA_MODELS_WHEEL_SHA256" >"$tmp/req.txt"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
        --only-binary=:all: -d "$tmp/dl" -r "$tmp/req.txt"
    wheel="$tmp/dl/llama_models-$LLAMA_MODELS_VERSION-py3-none-any.whl"
    [[ -f "$wheel" ]] || die "pip left no $(basename "$wheel")"
    got="$(file_sha256 "$wheel")"
    [[ "$got" == "$LLAMA_MODELS_WHEEL_SHA256" ]] || die "$wheel: sha256 $got, expected $LLAMA_MODELS_WHEEL_SHA256"
    python3 - "$wheel" "$tmp/x" <<'EOF'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2], members=[
    "llama_models/llama3/tokenizer.model", "llama_models/llama3/tokenizer.py"])
EOF
    got="$(file_sha256 "$tmp/x/llama_models/llama3/tokenizer.model")"
    [[ "$got" == "$LLAMA3_TOKENIZER_SHA256" ]] \
        || die "llama_models/llama3/tokenizer.model: sha256 $got, expected $LLAMA3_TOKENIZER_SHA256"
    mkdir -p "$ASSETS_DIR"
    cp "$tmp/x/llama_models/llama3/tokenizer.py" "$tok_py"
    cp "$tmp/x/llama_models/llama3/tokenizer.model" "$tok_model"
    rm -rf "$tmp"
    trap - EXIT
    say "stored .cache/assets/llama3-tokenizer.model and llama3-tokenizer.py"
fi

# --- 4. further pieces ---------------------------------------------------------------------
# Each scripts/setup.d/NN-*.sh fetches one more third-party piece (a reference, an engine, a
# wheel) the same way: pinned by version and sha256, from a registry's own client, into a
# gitignored folder; idempotent and quiet when present. They run in name order, sourced, so
# they share ROOT, say, die, file_sha256 and tree_sha256.
for step in "$ROOT"/scripts/setup.d/*.sh; do
    [[ -e "$step" ]] || continue
    # shellcheck source=/dev/null
    source "$step"
done

# --- 5. warm build ------------------------------------------------------------------------
# The first build compiles both bitnet.cpp trees and the workspace (about 8 minutes on two
# cores); later ones are no-ops.
if [[ ! -d "$ROOT/target/debug" ]]; then
    say "building the workspace (the first build compiles both bitnet.cpp trees: about 8 minutes on two cores)"
fi
cargo build --quiet --workspace --all-targets
