# shellcheck shell=bash
# ik_llama.cpp for the ik_llama probe (adapters/python/ik_llama_probe.py). Sourced by
# scripts/setup.sh (ROOT, say, die, file_sha256, python_tag, pip_install_pinned).
#
# PyPI ik-llama-cpp-python 0.1.5: a prebuilt ik_llama.cpp (github.com/ikawrakow/ik_llama.cpp,
# packaged by github.com/gongpx20069/ik-llama-cpp-python) with libllama.so, libggml.so, the C
# headers, a ctypes API (ik_llama_cpp._ctypes_api) and bin/llama-quantize. It is an AVX2 build
# (llama_print_system_info: AVX2 = 1, AVX512 = 0) and the wheel is for CPython 3.11 on x86_64
# only. Installed with pip into .cache/python/ik-llama (gitignored), pinned by version and
# sha256, no dependencies (its numpy requirement is not needed by the ctypes layer; the adapter
# uses .cache/python/numpy from 20-python-numpy.sh). Nothing goes into the system Python: the
# adapter puts that folder on sys.path itself.

IK_LLAMA_VERSION=0.1.5
IK_LLAMA_WHEEL=ik_llama_cpp_python-0.1.5-cp311-cp311-manylinux_2_28_x86_64.whl
IK_LLAMA_WHEEL_SHA256=52408f31dd05d16ada53b041155f14ec1fee9acd6ab0b4b4f77de04bd565bd67

ik_dir="$ROOT/.cache/python/ik-llama"
ik_stamp="$ik_dir/.bitprobe-stamp"
ik_stamp_want="$IK_LLAMA_WHEEL $IK_LLAMA_WHEEL_SHA256"
if [[ ! -f "$ik_stamp" || "$(cat "$ik_stamp")" != "$ik_stamp_want" \
      || ! -f "$ik_dir/ik_llama_cpp/lib/libllama.so" || ! -x "$ik_dir/ik_llama_cpp/bin/llama-quantize" ]]; then
    command -v python3 >/dev/null 2>&1 || die "python3 is required for the ik_llama.cpp probe"
    py_tag="$(python_tag)"
    [[ "$py_tag" == "cp311-x86_64" ]] \
        || die "scripts/setup.d/30-ik-llama.sh pins the ik-llama-cpp-python wheel for CPython 3.11 on x86_64; python3 here is $py_tag (add that wheel's sha256 to the requirement line)"
    say "installing ik-llama-cpp-python $IK_LLAMA_VERSION (ik_llama.cpp, AVX2 build) with pip into .cache/python/ik-llama"
    # (pip's warning about the wheel's bin/ and its console script both landing in
    # $ik_dir/bin stays in the log pip_install_pinned shows only on failure.)
    pip_install_pinned "$ik_dir" ik-llama-cpp-python "$IK_LLAMA_VERSION" "$IK_LLAMA_WHEEL_SHA256"
    [[ -f "$ik_dir/ik_llama_cpp/lib/libllama.so" ]] \
        || die "$ik_dir/ik_llama_cpp/lib/libllama.so missing after installing ik-llama-cpp-python $IK_LLAMA_VERSION"
    # pip --target keeps the wheel's file modes; make sure the converter is executable.
    chmod +x "$ik_dir/ik_llama_cpp/bin/llama-quantize" "$ik_dir/bin/llama-quantize" 2>/dev/null || true
    # `llama-quantize --help` prints its usage and exits 1; anything else means it cannot run
    # here (a missing bundled library, a CPU without AVX2).
    ik_rc=0
    "$ik_dir/ik_llama_cpp/bin/llama-quantize" --help >/dev/null 2>&1 || ik_rc=$?
    [[ $ik_rc -le 1 ]] || die "$ik_dir/ik_llama_cpp/bin/llama-quantize does not run (exit $ik_rc)"
    printf '%s\n' "$ik_stamp_want" >"$ik_stamp"
fi
