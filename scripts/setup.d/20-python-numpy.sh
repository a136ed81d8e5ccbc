# shellcheck shell=bash
# numpy for the Python adapter (adapters/python/): the wire-protocol library, the GGUF reader
# and the example numpy BitNet engine. Sourced by scripts/setup.sh (ROOT, say, die, file_sha256, python_tag, pip_install_pinned).
#
# PyPI numpy 2.4.6, the CPython 3.11 manylinux x86_64 wheel, pinned by sha256 and installed with
# pip into .cache/python/numpy (gitignored). Nothing is installed into the system Python: the
# adapter puts that folder on sys.path itself (bitprobe_adapter.use_cache_packages).

NUMPY_VERSION=2.4.6
NUMPY_WHEEL=numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
NUMPY_WHEEL_SHA256=89cd468399cfd2504718f0ba50e410dca55a170b61a02ad92bb18c8a65186e93

numpy_dir="$ROOT/.cache/python/numpy"
numpy_stamp="$numpy_dir/.bitprobe-stamp"
numpy_stamp_want="$NUMPY_WHEEL $NUMPY_WHEEL_SHA256"
if [[ ! -f "$numpy_stamp" || "$(cat "$numpy_stamp")" != "$numpy_stamp_want" || ! -d "$numpy_dir/numpy" ]]; then
    command -v python3 >/dev/null 2>&1 || die "python3 is required for the Python adapter's numpy"
    py_tag="$(python_tag)"
    [[ "$py_tag" == "cp311-x86_64" ]] \
        || die "scripts/setup.d/20-python-numpy.sh pins the numpy wheel for CPython 3.11 on x86_64; python3 here is $py_tag (add that wheel's sha256 to the requirement line)"
    say "installing numpy $NUMPY_VERSION with pip into .cache/python/numpy"
    pip_install_pinned "$numpy_dir" numpy "$NUMPY_VERSION" "$NUMPY_WHEEL_SHA256"
    PYTHONPATH="$numpy_dir" python3 -c "import numpy, sys; sys.exit(numpy.__version__ != '$NUMPY_VERSION')" \
        || die "numpy in $numpy_dir does not import as version $NUMPY_VERSION"
    printf '%s\n' "$numpy_stamp_want" >"$numpy_stamp"
fi
