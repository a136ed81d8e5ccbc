#!/usr/bin/env bash
# Nightly sweep: every model of models.toml through its case files, against the previous run.
#
#   scripts/nightly.sh [bitprobe sweep options…]
#
# Builds bitprobe (release), runs `bitprobe sweep` into a dated folder
# $BITPROBE_NIGHTLY_DIR/<UTC time>/ (receipt.json, report.md, report.html), points
# $BITPROBE_NIGHTLY_DIR/latest at it, and keeps the newest $BITPROBE_NIGHTLY_KEEP runs.
# The baseline is the previous run in the same folder. Exit status is the sweep's:
# 0 no regression, 1 regressions (or, on a first run, failures), 2 usage error.
#
#   BITPROBE_NIGHTLY_DIR   where runs go (default: <repo>/target/nightly)
#   BITPROBE_NIGHTLY_KEEP  runs to keep (default: 14)
#
# Options pass through to `bitprobe sweep` (`bitprobe sweep --help`): --models FILE,
# --only NAME, --no-speed, --baseline RECEIPT|none, --inject-fault FAULT (builds with fault
# injection, for checking that a regression is caught). Example crontab line:
#
#   30 2 * * *  /path/to/bitprobe/scripts/nightly.sh >>"$HOME/bitprobe-nightly.log" 2>&1
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_ROOT="${BITPROBE_NIGHTLY_DIR:-$ROOT/target/nightly}"
KEEP="${BITPROBE_NIGHTLY_KEEP:-14}"
[[ "$KEEP" =~ ^[1-9][0-9]*$ ]] || { echo "nightly: BITPROBE_NIGHTLY_KEEP must be a positive integer, not '$KEEP'" >&2; exit 2; }

features=()
for arg in "$@"; do
    if [[ "$arg" == --inject-fault* ]]; then features=(--features faults); fi
done

cd "$ROOT"
echo "nightly: building bitprobe (release${features:+, fault injection})" >&2
cargo build --release --quiet -p harness --bins "${features[@]}"

stamp="$(date -u +%Y-%m-%dT%H%M%SZ)"
mkdir -p "$OUT_ROOT"
status=0
"$ROOT/target/release/bitprobe" sweep --out "$OUT_ROOT/$stamp" "$@" || status=$?

if [[ -f "$OUT_ROOT/$stamp/receipt.json" ]]; then
    ln -sfn "$stamp" "$OUT_ROOT/latest"
    # Keep the newest $KEEP dated runs (folder names sort by time).
    mapfile -t runs < <(find "$OUT_ROOT" -mindepth 1 -maxdepth 1 -type d -name '2*' -printf '%f\n' | LC_ALL=C sort)
    if ((${#runs[@]} > KEEP)); then
        for old in "${runs[@]:0:${#runs[@]}-KEEP}"; do
            rm -rf "${OUT_ROOT:?}/$old"
        done
    fi
    echo "nightly: report $OUT_ROOT/$stamp/report.html (exit $status)" >&2
fi
exit "$status"
