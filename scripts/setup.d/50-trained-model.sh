# shellcheck shell=bash
# The trained model of the `trained-*` forge presets (issue 20). Sourced by scripts/setup.sh
# (bash, set -euo pipefail, with ROOT, say, die, file_sha256, python_tag and pip_install_pinned).
#
# 1. JAX for CPU and its imports (trainer/requirements.txt: jax/jaxlib 0.10.2, ml-dtypes 0.7.0,
#    opt-einsum 3.4.0, numpy 2.4.6; CPython 3.11 manylinux x86_64 wheels pinned by version and
#    sha256), installed with pip into .cache/python/trainer (gitignored, ~455 MB). Nothing goes
#    into the system Python: trainer/train.py puts that folder on sys.path itself.
# 2. trainer/train.py --seed 1: quantization-aware training on the project's own facts, about
#    2 CPU-minutes, deterministic; output in .cache/trained/seed-1 (model.txt, model.bin,
#    facts.json). Retrained when trainer/*.py or the pins change (model.txt records the
#    sha256 of those sources as `source_sha256`).

trainer_dir="$ROOT/.cache/python/trainer"
trainer_req="$ROOT/trainer/requirements.txt"
trainer_stamp="$trainer_dir/.bitprobe-stamp"
trainer_stamp_want="$(file_sha256 "$trainer_req")"
if [[ ! -f "$trainer_stamp" || "$(cat "$trainer_stamp")" != "$trainer_stamp_want" || ! -d "$trainer_dir/jax" ]]; then
    command -v python3 >/dev/null 2>&1 || die "python3 is required to train the trained-* model"
    py_tag="$(python_tag)"
    [[ "$py_tag" == "cp311-x86_64" ]] \
        || die "trainer/requirements.txt pins JAX wheels for CPython 3.11 on x86_64; python3 here is $py_tag (add that platform's wheel hashes)"
    say "installing the trainer's JAX (CPU) with pip into .cache/python/trainer"
    pip_install_pinned "$trainer_dir" "$trainer_req"
    PYTHONPATH="$trainer_dir" python3 -c "import jax, numpy, sys; sys.exit(jax.__version__ != '0.10.2')" \
        || die "jax in $trainer_dir does not import as version 0.10.2"
    printf '%s\n' "$trainer_stamp_want" >"$trainer_stamp"
fi

trained_txt="$ROOT/.cache/trained/seed-1/model.txt"
trained_src="$(cat "$ROOT"/trainer/{bpe.py,corpus.py,model.py,train.py,requirements.txt} | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$trained_txt" ]] || ! grep -qx "source_sha256 $trained_src" "$trained_txt"; then
    say "training the trained-* model (trainer/train.py --seed 1, about 2 CPU-minutes)"
    nice -n 10 python3 "$ROOT/trainer/train.py" --seed 1 --quiet \
        || die "trainer/train.py failed (see above); rerun it by hand for its progress log"
fi
unset trainer_dir trainer_req trainer_stamp trainer_stamp_want trained_txt trained_src py_tag
