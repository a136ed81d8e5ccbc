# shellcheck shell=bash
# oxbitnet for the oxbitnet probe (adapters/oxbitnet, a small Rust binary serving the wire
# protocol). Sourced by scripts/setup.sh (bash, set -euo pipefail; ROOT, say, die, file_sha256).
#
# crates.io oxbitnet 0.5.2 (github.com/m96-chan/0xBitNet): a Rust + wgpu BitNet engine. The
# adapter is its own Cargo project (NOT a workspace member, so `cargo test` at the root never
# compiles wgpu); every crate it uses is pinned by the committed adapters/oxbitnet/Cargo.lock
# (cargo checks each .crate against the lock's checksum) and the oxbitnet .crate is checked
# here against its sha256 as well. `cargo fetch --locked` downloads them (the only network
# step), then `cargo build --offline --locked` builds into adapters/oxbitnet/target
# (gitignored). About 220 crates (wgpu, naga, tokenizers, reqwest): ~8 CPU-minutes (measured: 7m40s user + 32s sys).
#
# It needs a Vulkan device. On machines without a GPU that is Mesa's lavapipe, a software
# Vulkan driver: Debian packages mesa-vulkan-drivers and libvulkan1.
#
# BITPROBE_SKIP_OXBITNET=1 skips this step (the oxbitnet cases then report the probe missing).

OXBITNET_VERSION=0.5.2
# sha256 of the .crate file as crates.io serves it (= its checksum in adapters/oxbitnet/Cargo.lock).
OXBITNET_CRATE_SHA256=d387080536dd72386b5dbec1528654a5d44d13cdf18a1487e41cf8124a27f617

if [[ "${BITPROBE_SKIP_OXBITNET:-0}" != "1" ]]; then
    ox_dir="$ROOT/adapters/oxbitnet"
    ox_target="$ox_dir/target"
    ox_bin="$ox_target/release/bitprobe-oxbitnet"
    ox_stamp="$ox_target/.bitprobe-stamp"

    # 1. Debian packages: the software Vulkan driver and loader; reqwest (an oxbitnet
    #    dependency) links OpenSSL through pkg-config; onig_sys and esaxx-rs compile C/C++.
    ox_missing=()
    for pkg in mesa-vulkan-drivers libvulkan1 libssl-dev pkg-config; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || ox_missing+=("$pkg")
    done
    command -v c++ >/dev/null 2>&1 || ox_missing+=(g++)
    if ((${#ox_missing[@]})); then
        ox_sudo=()
        if [[ $(id -u) -ne 0 ]]; then ox_sudo=(sudo); fi
        say "installing Debian packages for oxbitnet: ${ox_missing[*]}"
        "${ox_sudo[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${ox_sudo[@]}" apt-get install -y -qq "${ox_missing[@]}" >/dev/null
    fi

    # 2. The adapter, rebuilt when its sources, manifest or lock change, or the probe crate's
    #    (the wire protocol) do.
    ox_stamp_want="oxbitnet-$OXBITNET_VERSION $OXBITNET_CRATE_SHA256 $(
        cd "$ROOT" && { find adapters/oxbitnet -path adapters/oxbitnet/target -prune -o -type f -print0
                        find probe/Cargo.toml probe/src -type f -print0; } \
            | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
    if [[ ! -x "$ox_bin" || ! -f "$ox_stamp" || "$(cat "$ox_stamp")" != "$ox_stamp_want" ]]; then
        say "building the oxbitnet $OXBITNET_VERSION probe (adapters/oxbitnet: wgpu, ~8 CPU-minutes the first time)"
        cargo fetch --quiet --locked --manifest-path "$ox_dir/Cargo.toml" \
            || die "cargo fetch --locked failed for adapters/oxbitnet. If probe/Cargo.toml gained or changed a dependency, the adapter's lock is stale: run \`cargo update --manifest-path adapters/oxbitnet/Cargo.toml -p probe\` and commit adapters/oxbitnet/Cargo.lock"
        ox_cargo_home="${CARGO_HOME:-$HOME/.cargo}"
        ox_crate="$(find "$ox_cargo_home/registry/cache" -name "oxbitnet-$OXBITNET_VERSION.crate" -print -quit)"
        [[ -n "$ox_crate" ]] \
            || die "cargo fetch left no oxbitnet-$OXBITNET_VERSION.crate under $ox_cargo_home/registry/cache"
        got="$(file_sha256 "$ox_crate")"
        [[ "$got" == "$OXBITNET_CRATE_SHA256" ]] \
            || die "$ox_crate: sha256 $got, expected $OXBITNET_CRATE_SHA256"
        cargo build --quiet --release --offline --locked \
            --manifest-path "$ox_dir/Cargo.toml" --target-dir "$ox_target"
        [[ -x "$ox_bin" ]] || die "cargo build left no $ox_bin"
        printf '%s\n' "$ox_stamp_want" >"$ox_stamp"
        # Not fatal: the binary is built; without a device the oxbitnet cases say why they
        # cannot run.
        ox_gpu="$("$ox_bin" --gpu 2>/dev/null)" \
            || say "warning: oxbitnet finds no Vulkan device (${ox_gpu:-no output}); its cases will be skipped"
    fi
fi
