# shellcheck shell=bash
# pytritium: a third-party compiled Rust BitNet engine, run by bitprobe as a generate-only probe
# (adapters/python/tritium_probe.py). Sourced by scripts/setup.sh (ROOT, say, die, file_sha256, python_tag, pip_install_pinned).
#
# PyPI pytritium 1.1.0rc2 (a pre-release, hence --pre), the abi3 manylinux_2_28 x86_64 wheel
# (CPython >= 3.9), pinned by sha256 and installed with pip into .cache/python/tritium
# (gitignored). No dependencies are installed (--no-deps: its only optional extra is torch, which
# the probe does not use). Nothing goes into the system Python: the adapter puts that folder on
# sys.path itself.

PYTRITIUM_VERSION=1.1.0rc2
PYTRITIUM_WHEEL=pytritium-1.1.0rc2-cp39-abi3-manylinux_2_28_x86_64.whl
PYTRITIUM_WHEEL_SHA256=783aea167bf45e0f555118965c5dd3adf339294626878fa19fe18c0dc1ba4c04

tritium_dir="$ROOT/.cache/python/tritium"
tritium_stamp="$tritium_dir/.bitprobe-stamp"
tritium_stamp_want="$PYTRITIUM_WHEEL $PYTRITIUM_WHEEL_SHA256"
if [[ ! -f "$tritium_stamp" || "$(cat "$tritium_stamp")" != "$tritium_stamp_want" || ! -f "$tritium_dir/tritium/__init__.py" ]]; then
    command -v python3 >/dev/null 2>&1 || die "python3 is required for pytritium"
    py_ok="$(python3 -c 'import sys, platform; print(int(sys.version_info >= (3, 9) and platform.machine() == "x86_64"))')"
    [[ "$py_ok" == 1 ]] \
        || die "scripts/setup.d/35-pytritium.sh pins the pytritium wheel for CPython >= 3.9 on x86_64 Linux; python3 here is $(python3 -c 'import sys, platform; print(sys.version.split()[0], platform.machine())')"
    say "installing pytritium $PYTRITIUM_VERSION with pip into .cache/python/tritium"
    pip_install_pinned "$tritium_dir" pytritium "$PYTRITIUM_VERSION" "$PYTRITIUM_WHEEL_SHA256"
    PYTHONPATH="$tritium_dir" python3 -c 'import tritium; tritium.Model.load' \
        || die "pytritium in $tritium_dir does not import (import tritium; tritium.Model.load)"
    printf '%s\n' "$tritium_stamp_want" >"$tritium_stamp"
fi
unset tritium_dir tritium_stamp tritium_stamp_want py_ok
