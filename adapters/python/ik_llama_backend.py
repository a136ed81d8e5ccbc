"""ctypes layer over ik_llama.cpp (PyPI ``ik-llama-cpp-python`` 0.1.5) for bitprobe.

The wheel (installed by scripts/setup.d/30-ik-llama.sh into ``.cache/python/ik-llama``) ships a
prebuilt ik_llama.cpp — ``ik_llama_cpp/lib/libllama.so`` and ``libggml.so`` (AVX2 build:
``llama_print_system_info`` says AVX2 = 1, AVX512 = 0), ``include/llama.h``/``ggml.h``, the
ctypes bindings ``ik_llama_cpp._ctypes_api`` (struct layouts of ``llama_model_params``,
``llama_context_params``, ``llama_batch`` matching the shipped ``llama.h``) and
``ik_llama_cpp/bin/llama-quantize``. This module uses those bindings for the library and the
structs and binds the few further functions it needs itself.

    import ik_llama_backend as ik
    m = ik.IkModel("/path/model.gguf", threads=1, n_ctx=0)   # converts I2_S first (below)
    m.tokenize("Hello", add_bos=True, parse_special=False)    # -> [ids]
    m.piece(9906)                                              # -> b"Hello"
    logits, stages = m.forward(ids, want={"attn_norm", "l_out"})
    # logits: float32 [n_tokens, n_vocab] (every position); stages: {(stage, layer): rows}
    # with rows float32 [n_tokens, *per-position shape], layer None for global stages
    logits, stages = m.prefill(ids, want=..., all_logits=True)   # KV cache path
    row, stages = m.step(token, position, want=...)               # one token through the cache

What ik_llama.cpp can run (GGML types of this build): F32, F16, BF16, the k-quants and its
own ternary IQ1_BN (134) / IQ2_BN (135). TQ1_0 (34) and TQ2_0 (35) do not exist in it (its
ggml.h skips those ids: loading such a file kills the process with SIGFPE). I2_S (36) is
declared "so we are able to consume MS BitNet I2_S quants" but has no matmul: a model holding
I2_S loads with the warning "unknown type i2_s" and every I2_S matmul leaves its output
unwritten (zeros in a fresh buffer), so the residual stream stays the embedding and the tied
head echoes the input tokens. So :func:`prepare_model` converts I2_S files with the wheel's
own ``llama-quantize`` to IQ2_BN (lossless: measured, its IQ2_BN matmul is closer to the exact
float product than bitnet.cpp's own I2_S one) and caches the result under
``.cache/ik-llama/converted/<sha256 of the input>-iq2_bn-keepemb-ik0.1.5.gguf``. IQ2_BN needs weight
rows of at least 512 values: narrower ones abort the process in the first decode
(``iqk_quantize.cpp:503: GGML_ASSERT(k >= 8*QK_IQ1BN)``), so those files are refused (or, with
convert="f16", dequantized to F16). See :func:`prepare_model`.

Stage capture goes through ``llama_context_params.cb_eval`` (ggml's scheduler calls it with
``ask = true`` per graph node, then with ``ask = false`` once the node is computed). The map
from our stage names to ik_llama.cpp's node names is :data:`STAGE_NODES` (verified by
value against bitnet.cpp, see the docstring there).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import sys
import threading

try:
    import numpy as np
except ImportError:  # the machine's python has none: use .cache/python/numpy (setup installs it)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bitprobe_adapter  # noqa: F401  (puts .cache/python/numpy on sys.path)
    import numpy as np

WHEEL = "ik-llama-cpp-python 0.1.5"
WHEEL_TAG = "ik0.1.5"

# GGML type ids (this build's ggml.h).
GGML_F32, GGML_F16, GGML_I2_S = 0, 1, 36
GGML_TYPE_NAMES = {0: "F32", 1: "F16", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 36: "I2_S",
                   134: "IQ1_BN", 135: "IQ2_BN", 335: "IQ2_BN_R4"}
# Types the GGUF may hold that this build does not know at all.
UNKNOWN_TO_IK = {34: "TQ1_0", 35: "TQ2_0"}


class IkError(Exception):
    """A failure with a protocol error kind: 'load', 'invalid_request' or 'backend'."""

    def __init__(self, kind, message, path=""):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.path = path


# ---------------------------------------------------------------------------------------
# Finding and loading the library.

def repo_root():
    env = os.environ.get("BITPROBE_ROOT")
    if env:
        return env
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ik_dir():
    """Where the wheel is installed: $BITPROBE_IK_LLAMA_DIR or <repo>/.cache/python/ik-llama."""
    return os.environ.get("BITPROBE_IK_LLAMA_DIR") or os.path.join(
        repo_root(), ".cache", "python", "ik-llama")


def quantize_bin():
    return os.path.join(ik_dir(), "ik_llama_cpp", "bin", "llama-quantize")


def available():
    """(True, "") when the wheel is installed, else (False, why)."""
    d = ik_dir()
    lib = os.path.join(d, "ik_llama_cpp", "lib", "libllama.so")
    if not os.path.isfile(lib):
        return False, (f"ik_llama.cpp is not installed ({lib} missing): run scripts/setup.sh "
                       "(scripts/setup.d/30-ik-llama.sh installs " + WHEEL + ")")
    return True, ""


class ggml_tensor(ctypes.Structure):
    """struct ggml_tensor of this build's ggml.h (GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64,
    GGML_MAX_SRC 10, GGML_MAX_NAME 64)."""
    _fields_ = [
        ("type", ctypes.c_int), ("backend", ctypes.c_int), ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16), ("flags", ctypes.c_int32),
        ("grad", ctypes.c_void_p), ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p), ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64), ("extra", ctypes.c_void_p),
    ]


_LIB = None
_LIB_LOCK = threading.Lock()


class _Lib:
    """The wheel's ctypes API plus the functions bitprobe needs beyond it."""

    def __init__(self):
        ok, why = available()
        if not ok:
            raise IkError("load", why)
        d = ik_dir()
        if d not in sys.path:
            sys.path.insert(0, d)
        from ik_llama_cpp import _ctypes_api as C   # loads ik_llama_cpp/lib/libllama.so
        self.C = C
        lib = C._lib
        self.lib = lib
        # The ggml that libllama.so really links (auditwheel renamed it into
        # ik_llama_cpp_python.libs/libggml-<hash>.so), not a second copy of it.
        import glob
        libs = sorted(glob.glob(os.path.join(d, "ik_llama_cpp_python.libs", "libggml-*.so")))
        self.ggml = ctypes.CDLL(libs[0] if libs else
                                os.path.join(os.path.dirname(lib._name), "libggml.so"))

        def bind(dll, name, argtypes, restype):
            f = getattr(dll, name)
            f.argtypes = argtypes
            f.restype = restype
            return f

        vp, i32, cp = ctypes.c_void_p, ctypes.c_int32, ctypes.c_char_p
        self.n_vocab = bind(lib, "llama_n_vocab", [vp], i32)
        self.n_layer = bind(lib, "llama_n_layer", [vp], i32)
        self.n_ctx_train = bind(lib, "llama_n_ctx_train", [vp], i32)
        self.token_bos = bind(lib, "llama_token_bos", [vp], i32)
        self.token_eos = bind(lib, "llama_token_eos", [vp], i32)
        self.token_eot = bind(lib, "llama_token_eot", [vp], i32)
        self.meta_val_str = bind(lib, "llama_model_meta_val_str", [vp, cp, cp, ctypes.c_size_t], i32)
        self.model_desc = bind(lib, "llama_model_desc", [vp, cp, ctypes.c_size_t], i32)
        self.get_logits = bind(lib, "llama_get_logits", [vp], ctypes.POINTER(ctypes.c_float))
        self.system_info = bind(lib, "llama_print_system_info", [], cp)
        self.tokenize = bind(lib, "llama_tokenize",
                             [vp, cp, i32, ctypes.POINTER(i32), i32, ctypes.c_bool, ctypes.c_bool], i32)
        self.token_to_piece = bind(lib, "llama_token_to_piece",
                                   [vp, i32, cp, i32, i32, ctypes.c_bool], i32)
        self.op_name = bind(self.ggml, "ggml_op_name", [ctypes.c_int], cp)
        self.op_desc = bind(self.ggml, "ggml_op_desc", [vp], cp)

        # Log capture: ik_llama.cpp's log goes to our buffer, not to stderr (the last lines
        # are quoted in load errors).
        self.log_lines = []
        self._log_partial = ""
        logcb_t = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

        def on_log(level, text, _ud):
            s = self._log_partial + (text or b"").decode("utf-8", "replace")
            *done, self._log_partial = s.split("\n")
            self.log_lines.extend(done)
            if len(self.log_lines) > 4000:
                del self.log_lines[:2000]
            if os.environ.get("BITPROBE_IK_LOG"):
                sys.stderr.write("".join(x + "\n" for x in done))

        self._logcb = logcb_t(on_log)
        bind(lib, "llama_log_set", [logcb_t, vp], None)(self._logcb, None)
        C.llama_backend_init()

    def log_mark(self):
        return len(self.log_lines)

    def log_since(self, mark):
        return self.log_lines[mark:]


def lib():
    global _LIB
    with _LIB_LOCK:
        if _LIB is None:
            _LIB = _Lib()
        return _LIB


# ---------------------------------------------------------------------------------------
# Conversion of models ik_llama.cpp cannot compute.

def _gguf_tensor_types(path):
    """{tensor name: (ggml type id, dims)} from a GGUF header (metadata skipped, not parsed
    into values). Raises IkError('load') naming the file and offset on a bad header."""
    import struct
    try:
        f = open(path, "rb")
    except OSError as e:
        raise IkError("load", f"{path}: cannot open: {e.strerror or e}", path) from None
    with f:
        def take(n, what):
            b = f.read(n)
            if len(b) != n:
                raise IkError("load", f"{path}: truncated GGUF header at byte {f.tell()} "
                                      f"({what})", path)
            return b

        def u32(what):
            return struct.unpack("<I", take(4, what))[0]

        def u64(what):
            return struct.unpack("<Q", take(8, what))[0]

        def string(what):
            n = u64(what)
            if n > 1 << 30:
                raise IkError("load", f"{path}: string of {n} bytes at byte {f.tell() - 8} "
                                      f"({what})", path)
            return take(n, what)

        sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

        def skip_value(t, what):
            if t in sizes:
                take(sizes[t], what)
            elif t == 8:
                string(what)
            elif t == 9:
                et = u32(what)
                n = u64(what)
                if et in sizes:
                    f.seek(sizes[et] * n, 1)
                else:
                    for _ in range(n):
                        skip_value(et, what)
            else:
                raise IkError("load", f"{path}: unknown GGUF value type {t} at byte "
                                      f"{f.tell() - 4} ({what})", path)

        if take(4, "magic") != b"GGUF":
            raise IkError("load", f"{path}: not a GGUF file (magic at byte 0)", path)
        version = u32("version")
        if version not in (2, 3):
            raise IkError("load", f"{path}: GGUF version {version} (byte 4) is not 2 or 3", path)
        n_tensors, n_kv = u64("tensor count"), u64("metadata count")
        for i in range(n_kv):
            key = string(f"metadata key #{i}").decode("utf-8", "replace")
            skip_value(u32(f"metadata '{key}' type"), f"metadata '{key}'")
        out = {}
        for i in range(n_tensors):
            name = string(f"tensor info #{i}").decode("utf-8", "replace")
            nd = u32(f"tensor '{name}' n_dims")
            if nd > 4:
                raise IkError("load", f"{path}: tensor '{name}' has {nd} dims (byte "
                                      f"{f.tell() - 4})", path)
            dims = [u64(f"tensor '{name}' dims") for _ in range(nd)]
            t = u32(f"tensor '{name}' type")
            u64(f"tensor '{name}' offset")
            out[name] = (t, dims)
        return out


def weight_types(path):
    """Tensor type name -> count, for ModelInfo.weight_types."""
    out = {}
    for t, _ in _gguf_tensor_types(path).values():
        n = GGML_TYPE_NAMES.get(t, f"type{t}")
        out[n] = out.get(n, 0) + 1
    return dict(sorted(out.items()))


def file_sha256(path, chunk=1 << 22):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def cache_dir():
    return os.environ.get("BITPROBE_IK_CACHE") or os.path.join(
        repo_root(), ".cache", "ik-llama", "converted")


# IQ2_BN kernels quantize each activation row to Q8_K64 and assert k >= 8*QK_IQ1BN (= 512):
# `iqk_quantize.cpp:503: GGML_ASSERT(k >= 8*QK_IQ1BN) failed` aborts the whole process in
# the first llama_decode when a weight row is narrower. Rows are also whole blocks of 64.
IQ2_BN_MIN_ROW = 512
IQ2_BN_BLOCK = 64


def prepare_model(path, convert="auto"):
    """The file ik_llama.cpp should load for `path`, and a note for the implementation string.

    convert = "auto" (default): a file with I2_S tensors gets them converted to IQ2_BN by the
    wheel's ``llama-quantize --allow-requantize --token-embedding-type T --output-tensor-type T
    IN OUT iq2_bn`` (T = the file's own embedding/output type: without those flags
    llama-quantize also turns the F16 token embedding, the tied output head, into Q6_K — a
    lossy change that is not ik_llama.cpp's computation), cached under :func:`cache_dir` by
    the input's sha256. I2_S → IQ2_BN is lossless (ternary codes, one scale per row). Files
    without I2_S load as they are.
    "f16": I2_S tensors are dequantized to F16 instead (lossless for forged models, whose
    scales are F16 values); ik_llama.cpp then runs its F16 matmuls, not its ternary kernels.
    The only way to run I2_S models with rows narrower than 512 (the tiny presets).
    "iq2_bn": as auto, and a file without I2_S is converted as well.
    "off": load the file as it is. An I2_S file then runs ik_llama.cpp's I2_S path, which only
    dequantizes: it warns "unknown type i2_s" and its output is garbage (what a user who
    hands it such a file gets).

    Refused with IkError('load'): TQ1_0/TQ2_0 files (this build has no such GGML types;
    ik_llama.cpp itself dies of SIGFPE loading one, and so does its llama-quantize), and an
    IQ2_BN conversion of a file whose converted rows are narrower than 512 or not whole
    blocks of 64 (ik_llama.cpp would abort in its first decode).
    Returns (path_to_load, note); note is "" when nothing was converted.
    """
    if convert not in ("auto", "off", "iq2_bn", "f16"):
        raise IkError("invalid_request", f"option convert={convert!r}: expected auto, off, "
                                         "iq2_bn or f16")
    types = _gguf_tensor_types(path)
    unknown = sorted({UNKNOWN_TO_IK[t] for t, _ in types.values() if t in UNKNOWN_TO_IK})
    if unknown:
        raise IkError("load", f"{path}: holds {'/'.join(unknown)} tensors; ik_llama.cpp "
                      f"({WHEEL}) has no such GGML types (its ggml.h skips ids 34 and 35): "
                      "loading the file kills it with SIGFPE, and its llama-quantize dies the "
                      "same way, so the file can be neither run nor converted", path)
    has_i2s = any(t == GGML_I2_S for t, _ in types.values())
    if convert == "off" or (convert in ("auto", "f16") and not has_i2s):
        return path, ""
    target = "f16" if convert == "f16" else "iq2_bn"
    if target == "iq2_bn":
        keep = {"token_embd.weight", "output.weight"}
        converted = [(n, d) for n, (t, d) in types.items()
                     if n not in keep and len(d) >= 2 and (t == GGML_I2_S or not has_i2s)]
        narrow = sorted({int(d[0]) for _, d in converted
                         if d[0] < IQ2_BN_MIN_ROW or d[0] % IQ2_BN_BLOCK})
        if narrow:
            raise IkError("load", f"{path}: rows of {', '.join(map(str, narrow))} values are too "
                          f"narrow for IQ2_BN in ik_llama.cpp ({WHEEL}): its IQ2_BN matmul "
                          f"needs rows of at least {IQ2_BN_MIN_ROW} values in blocks of "
                          f"{IQ2_BN_BLOCK} (iqk_quantize.cpp:503 GGML_ASSERT(k >= 8*QK_IQ1BN) "
                          "aborts the process in the first decode); open with option "
                          "convert=f16 to run ik_llama.cpp's F16 path instead", path)
    flags = ["--allow-requantize"]
    for name, flag in (("token_embd.weight", "--token-embedding-type"),
                       ("output.weight", "--output-tensor-type")):
        if name in types:
            tname = GGML_TYPE_NAMES.get(types[name][0])
            if tname in ("F32", "F16", "BF16"):
                flags += [flag, tname.lower()]
    digest = file_sha256(path)
    out_dir = cache_dir()
    # Keyed by the input's bytes, the target and the converter (a new wheel re-converts).
    out = os.path.join(out_dir, f"{digest}-{target}-keepemb-{WHEEL_TAG}.gguf")
    src = "I2_S" if has_i2s else "+".join(sorted({GGML_TYPE_NAMES.get(t, str(t))
                                                  for t, _ in types.values()}))
    cmd = [quantize_bin(), *flags, path, "OUT", target, "1"]
    if not os.path.isfile(out):
        os.makedirs(out_dir, exist_ok=True)
        tmp = f"{out}.tmp{os.getpid()}"
        cmd[-3] = tmp
        try:
            r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=3600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise IkError("load", f"{path}: cannot run {cmd[0]}: {e}", path) from None
        log = r.stdout.decode("utf-8", "replace")
        if r.returncode != 0 or not os.path.isfile(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass
            tail = "\n".join(log.strip().splitlines()[-8:])
            raise IkError("load", f"{path}: ik_llama.cpp's llama-quantize could not convert "
                                  f"{src} to {target.upper()} (exit {r.returncode}):\n{tail}",
                          path)
        os.replace(tmp, out)
        cmd[-3] = out
        with open(out + ".log", "w") as f:
            f.write(" ".join(cmd) + "\n" + log)
    got = weight_types(out)
    return out, (f"ran a converted model: {src} -> {target.upper()} by its llama-quantize "
                 f"{' '.join(flags)} (weights run: "
                 f"{', '.join(f'{k} {v}' for k, v in got.items())})")


# ---------------------------------------------------------------------------------------
# Stage names.

# Our stage -> the node of ik_llama.cpp's graph that holds it. Found by dumping every node
# the eval callback is offered (name, op, shape) for both BitNet graphs of this build, then
# checked by value against bitnet.cpp's stages (ik_llama_probe.py's docstring has the numbers):
#
#   ours             build_bitnet (arch `bitnet`)     build_bitnet_158 (`bitnet-b1.58`, `bitnet-25`)
#   inp_embd         inp_embd                         inp_embd
#   attn_norm        attn_norm-L                      attn_norm-L
#   attn_q           Qcur-L, the ROPE node            Qcur-L, the ROPE node
#   attn_k           Kcur-L, the ROPE node            Kcur-L, the ROPE node
#   attn_v           Vcur-L                           Vcur-L
#   kqv_out          kqv_out-L, the first of two      kqv_out-L
#   attn_sub_norm    attn_sub_norm-L                  attn_sub_norm-L
#   attn_output      kqv_out-L, the second of two     attn_o_out-L
#   ffn_inp          ffn_inp-L                        ffn_norm-L (!), the ADD node
#   ffn_norm         ffn_norm-L                       unnamed (node_N): the RMS-norm node
#                                                     whose input is that ADD node
#   ffn_gate         ffn_gate-L                       ffn_gate-L
#   ffn_up           ffn_up-L                         ffn_up-L
#   ffn_sub_out      ffn_gate_par-L                   ffn_out-L
#   ffn_sub_norm     ffn_sub_norm-L                   ffn_sub_norm-L
#   ffn_down         ffn_down-L                       ffn_down-L
#   l_out            l_out-L                          l_out-L
#   result_norm      result_norm                      result_norm
#   result_output    result_output                    result_output
#
# - build_bitnet names the attention output `kqv_out-L` twice: llm_build_kv names the raw
#   attention result so (its wo is nullptr: the RESHAPE of the flash-attention node, or the
#   CONT of the merged heads without flash attention), then build_bitnet names the Wo product
#   so again. The first is our kqv_out, the second (it consumes attn_sub_norm-L, so it comes
#   after it) our attn_output. BITNET_NOTES §7 mentions only the second.
# - build_bitnet_158 calls llm_build_ffn, which does `cb(input, "ffn_norm", il)` on its
#   INPUT: the residual node (`ffn_inp-L` a moment before) is renamed `ffn_norm-L`, and the
#   RMSNorm·gamma node it computes keeps the automatic name `node_<index>`. So there
#   `ffn_norm-L` is our ffn_inp (op ADD), and our ffn_norm is found structurally: the node
#   whose src[0] is that ADD node and whose op is FUSED_RMS_NORM.
# - `Qcur-L` / `Kcur-L` name both the projection (MUL_MAT, 2-D) and the RoPE output (ROPE,
#   3-D [head_dim, n_head, n_tokens]); the stage is the ROPE node.
_GLOBAL = {"inp_embd": "inp_embd", "result_norm": "result_norm",
           "result_output": "result_output"}

# stage -> (node base name, required op or None)
_BITNET = {
    "attn_norm": ("attn_norm", None), "attn_q": ("Qcur", "ROPE"), "attn_k": ("Kcur", "ROPE"),
    "attn_v": ("Vcur", None), "kqv_out": ("kqv_out", None),
    "attn_sub_norm": ("attn_sub_norm", None), "attn_output": ("kqv_out", None),
    "ffn_inp": ("ffn_inp", None), "ffn_norm": ("ffn_norm", None),
    "ffn_gate": ("ffn_gate", None), "ffn_up": ("ffn_up", None),
    "ffn_sub_out": ("ffn_gate_par", None), "ffn_sub_norm": ("ffn_sub_norm", None),
    "ffn_down": ("ffn_down", None), "l_out": ("l_out", None),
}
_BITNET158 = dict(_BITNET, attn_output=("attn_o_out", None), ffn_inp=("ffn_norm", "ADD"),
                  ffn_norm=("<consumer of ffn_inp>", "FUSED_RMS_NORM"),
                  ffn_sub_out=("ffn_out", None))

STAGE_NODES = {"bitnet": _BITNET, "bitnet-b1.58": _BITNET158, "bitnet-25": _BITNET158}
# Our canonical order (probe/src/stage.rs).
ALL_STAGES = ("inp_embd", "attn_norm", "attn_q", "attn_k", "attn_v", "kqv_out",
              "attn_sub_norm", "attn_output", "ffn_inp", "ffn_norm", "ffn_gate", "ffn_up",
              "ffn_sub_out", "ffn_sub_norm", "ffn_down", "l_out", "result_norm",
              "result_output")


def supported_stages(arch):
    """The stages forward can give for this arch, in our order."""
    per_layer = STAGE_NODES.get(arch, {})
    return [s for s in ALL_STAGES if s in _GLOBAL or s in per_layer]


def _split_name(name):
    """'attn_norm-3' -> ('attn_norm', 3); 'inp_embd' -> ('inp_embd', None)."""
    base, dash, tail = name.rpartition("-")
    if dash and tail.isdigit():
        return base, int(tail)
    return name, None


class _Tap:
    """Collects, during one llama_decode, the nodes that hold the wanted stages.

    `ask` sees every node of the graph in evaluation order (before it is computed) and
    labels the ones we want with (stage, layer); `take` copies a labelled node's values once
    computed. Labelling happens in `ask`, where graph order and each node's inputs are known.
    """

    def __init__(self, L, arch, want, layers):
        self.L = L
        self.arch = arch
        self.map = STAGE_NODES[arch]
        self.want = set(want)
        self.layers = None if layers is None else set(layers)
        # node base name -> [(stage, op)] for the per-layer stages wanted
        self.by_name = {}
        for s in self.want:
            if s in self.map:
                name, op = self.map[s]
                self.by_name.setdefault(name, []).append((s, op))
        self.globals = {_GLOBAL[s]: s for s in self.want if s in _GLOBAL}
        self.sub_norm_seen = set()    # layers whose attn_sub_norm-L has been offered
        self.ffn_inp_nodes = {}       # address of build_bitnet_158's ffn_norm-L ADD -> layer
        self.labels = {}              # node address -> (stage, layer)
        self.found = {}               # (stage, layer) -> rows
        self.error = None

    def _layer_ok(self, layer):
        return self.layers is None or layer in self.layers

    def ask(self, addr, t):
        name = t.name.decode("utf-8", "replace")
        base, layer = _split_name(name)
        if layer is None:
            s = self.globals.get(base)
            if s is not None:
                self.labels[addr] = (s, None)
                return True
            if base.startswith("node_") and t.src[0] in self.ffn_inp_nodes \
                    and "ffn_norm" in self.want:
                op = self.L.op_desc(addr).decode()
                if op == "FUSED_RMS_NORM":
                    lay = self.ffn_inp_nodes[t.src[0]]
                    if self._layer_ok(lay):
                        self.labels[addr] = ("ffn_norm", lay)
                        return True
            return False
        if base == "attn_sub_norm":
            self.sub_norm_seen.add(layer)
        if self.map is _BITNET158 and base == "ffn_norm":
            self.ffn_inp_nodes[addr] = layer
        cands = self.by_name.get(base)
        if not cands or not self._layer_ok(layer):
            return False
        op = None
        for s, need_op in cands:
            if need_op is not None:
                op = op or self.L.op_desc(addr).decode()
                if op != need_op:
                    continue
            if base == "kqv_out" and self.map is _BITNET:
                # first kqv_out-L = kqv_out, the one after attn_sub_norm-L = attn_output
                if (s == "attn_output") != (layer in self.sub_norm_seen):
                    continue
            self.labels[addr] = (s, layer)
            return True
        return False

    def take(self, addr, t):
        label = self.labels.get(addr)
        if label is None:
            return
        try:
            if label in self.found:
                raise ValueError(f"two nodes hold stage {label[0]} of layer {label[1]} "
                                 f"(the second is {t.name!r})")
            self.found[label] = _tensor_rows(t)
        except Exception as e:  # noqa: BLE001 - reported after llama_decode returns
            if self.error is None:
                self.error = f"reading node {t.name.decode('utf-8', 'replace')!r}: {e}"


def _tensor_rows(t):
    """A copy of the node's data as float32 of shape (ne3, ne2, ne1, ne0), read through its
    strides (views and permutes included). The token axis is the outermost one with more
    than one element in every stage node (ne1 of [n_embd, n_tokens], ne2 of [head_dim,
    n_head, n_tokens]), so the caller's reshape(n_tokens, -1) gives one row per token."""
    if t.type not in (GGML_F32, GGML_F16):
        raise ValueError(f"node type {GGML_TYPE_NAMES.get(t.type, t.type)} is not F32/F16")
    if not t.data:
        raise ValueError("node has no data")
    ne = [int(x) for x in t.ne]
    nb = [int(x) for x in t.nb]
    item = 4 if t.type == GGML_F32 else 2
    span = item + sum((ne[i] - 1) * nb[i] for i in range(4))
    raw = (ctypes.c_uint8 * span).from_address(t.data)
    dt = np.float32 if t.type == GGML_F32 else np.float16
    a = np.ndarray(shape=tuple(reversed(ne)), dtype=dt, buffer=raw,
                   strides=tuple(reversed(nb)))
    return np.array(a, dtype=np.float32)          # copy out of ggml's buffer


# ---------------------------------------------------------------------------------------
# The model.

class IkModel:
    """One ik_llama.cpp model and its context(s). See the module docstring."""

    def __init__(self, path, threads=1, n_ctx=0, convert="auto", flash_attn=None,
                 n_ubatch=512):
        self.L = L = lib()
        C = L.C
        self.source_path = path
        self.path, self.conversion = prepare_model(path, convert)
        mark = L.log_mark()
        mp = C.llama_model_default_params()
        mp.use_mmap = True
        mp.n_gpu_layers = 0
        self.model = C.llama_model_load_from_file(self.path.encode("utf-8"), mp)
        if not self.model:
            log = "\n".join(l for l in L.log_since(mark) if l.strip())[-1500:]
            raise IkError("load", f"{self.path}: ik_llama.cpp could not load the model:\n{log}",
                          path)
        self.load_log = L.log_since(mark)
        self.arch = self.meta("general.architecture") or ""
        if self.arch not in STAGE_NODES:
            self.close()
            raise IkError("load", f"{path}: architecture {self.arch!r} is not a BitNet one "
                                  "(bitnet, bitnet-b1.58, bitnet-25)", path)
        self.n_vocab = int(L.n_vocab(self.model))
        self.n_layer = int(L.n_layer(self.model))
        self.n_ctx_train = int(L.n_ctx_train(self.model))
        self.n_ctx = int(n_ctx) if n_ctx else min(self.n_ctx_train, 4096)
        self.threads = int(threads) if threads else (os.cpu_count() or 1)
        self.n_ubatch = max(1, min(int(n_ubatch), self.n_ctx))
        self.flash_attn = flash_attn
        self._ctx = {}           # capture? -> (ctx pointer, callback, holder)
        self._tap = None
        self.pos = 0             # next free position in the KV cache of the current context
        self._cur = None

    # -- metadata ---------------------------------------------------------------------------

    def meta(self, key):
        buf = ctypes.create_string_buffer(1024)
        n = self.L.meta_val_str(self.model, key.encode(), buf, 1024)
        return None if n < 0 else buf.value.decode("utf-8", "replace")

    def desc(self):
        buf = ctypes.create_string_buffer(256)
        self.L.model_desc(self.model, buf, 256)
        return buf.value.decode("utf-8", "replace")

    def special(self):
        """(bos, eos, eot), None for absent."""
        L = self.L
        f = lambda v: None if v < 0 else int(v)   # noqa: E731
        return f(L.token_bos(self.model)), f(L.token_eos(self.model)), f(L.token_eot(self.model))

    # -- contexts ---------------------------------------------------------------------------

    def _context(self, capture):
        """The context for plain runs (no eval callback: the graph runs in one piece) or for
        captured runs (callback installed). Each is created on first use and kept."""
        if capture in self._ctx:
            return self._ctx[capture][0]
        C = self.C
        cp = C.llama_context_default_params()
        cp.n_ctx = self.n_ctx
        cp.n_batch = self.n_ubatch
        cp.n_ubatch = self.n_ubatch
        cp.n_seq_max = 1
        cp.n_threads = self.threads
        cp.n_threads_batch = self.threads
        cp.logits_all = True
        if self.flash_attn is not None:
            cp.flash_attn = bool(self.flash_attn)
        cb = None
        if capture:
            cb = C.ggml_backend_sched_eval_callback(self._on_eval)
            cp.cb_eval = cb
            cp.cb_eval_user_data = None
        mark = self.L.log_mark()
        ctx = C.llama_init_from_model(self.model, cp)
        if not ctx:
            log = "\n".join(self.L.log_since(mark))[-1500:]
            raise IkError("backend", f"ik_llama.cpp could not create a context (n_ctx "
                                     f"{self.n_ctx}, n_ubatch {self.n_ubatch}):\n{log}")
        self._ctx[capture] = (ctx, cb, cp)
        return ctx

    @property
    def C(self):
        return self.L.C

    def context_params(self):
        """The effective context parameters (after creating the plain context)."""
        self._context(False)
        cp = self._ctx[False][2]
        return {k: getattr(cp, k) for k in ("n_ctx", "n_batch", "n_ubatch", "n_threads",
                                             "flash_attn", "fused_up_gate", "fused_mmad",
                                             "rope_cache", "graph_reuse", "type_k", "type_v",
                                             "k_cache_hadamard", "v_cache_hadamard")}

    def _on_eval(self, t_addr, ask, _ud):
        tap = self._tap
        if tap is None:
            return False if ask else True
        # An exception must not escape into ctypes (it would answer False, which on the
        # second call stops the graph): keep the first one for after llama_decode.
        try:
            t = ggml_tensor.from_address(t_addr)
            if ask:
                return bool(tap.ask(t_addr, t))
            tap.take(t_addr, t)
        except BaseException as e:  # noqa: BLE001
            if tap.error is None:
                tap.error = f"eval callback: {type(e).__name__}: {e}"
            return False if ask else True
        return True

    # -- decoding ---------------------------------------------------------------------------

    def _decode(self, ctx, tokens, pos0, logits_rows):
        """One llama_decode of `tokens` at positions pos0.. with logits for every row (when
        logits_rows) or only the last; returns float32 [n_rows, n_vocab]."""
        C = self.C
        n = len(tokens)
        b = C.llama_batch_init(n, 0, 1)
        try:
            b.n_tokens = n
            for i, tok in enumerate(tokens):
                b.token[i] = int(tok)
                b.pos[i] = pos0 + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
                b.logits[i] = 1 if (logits_rows or i == n - 1) else 0
            r = C.llama_decode(ctx, b)
        finally:
            C.llama_batch_free(b)
        if r != 0:
            raise IkError("backend", f"llama_decode of {n} tokens at position {pos0} failed "
                                     f"({r})")
        rows = n if logits_rows else 1
        p = self.L.get_logits(ctx)
        if not p:
            raise IkError("backend", "llama_get_logits returned NULL")
        a = np.ctypeslib.as_array(p, shape=(rows * self.n_vocab,))
        return np.array(a, dtype=np.float32).reshape(rows, self.n_vocab)

    def _run(self, tokens, pos0, all_logits, want, layers, positions):
        """Decodes tokens from pos0 in chunks of n_ubatch through the current cache; returns
        (logits, {(stage, layer): {position: row}})."""
        ctx = self._cur
        if ctx is None:
            raise IkError("invalid_request", "decode before prefill")
        capture = bool(want)
        if capture and ctx is not self._ctx.get(True, (None,))[0]:
            raise IkError("backend", "internal: stages wanted from the context without the "
                                     "eval callback (the prefill asked for none)")
        stages = {}
        rows = []
        for c0 in range(0, len(tokens), self.n_ubatch):
            chunk = tokens[c0:c0 + self.n_ubatch]
            last = c0 + len(chunk) == len(tokens)
            if capture:
                self._tap = _Tap(self.L, self.arch, want, layers)
            # Every row's logits when captured too: in the last layer ik_llama.cpp keeps only
            # the rows whose logits were requested (ggml_get_rows on inp_out_ids) from
            # ffn_inp on, so a stage there would otherwise lack the other positions.
            try:
                lg = self._decode(ctx, chunk, pos0 + c0, all_logits or capture)
            finally:
                tap, self._tap = self._tap, None
            if all_logits:
                rows.append(lg)
            elif last:
                rows.append(lg[-1:])
            if tap is not None:
                if tap.error:
                    raise IkError("backend", f"stage capture: {tap.error}")
                T = len(chunk)
                for (s, l), a in tap.found.items():
                    if a.size % T:
                        raise IkError("backend", f"stage {s} layer {l}: a node of shape "
                                                 f"{list(a.shape)} is not {T} token rows")
                    a = a.reshape(T, -1)
                    d = stages.setdefault((s, l), {})
                    for i in range(T):
                        p = pos0 + c0 + i
                        if positions is None or p in positions:
                            d[p] = a[i]
        self.pos = pos0 + len(tokens)
        return np.concatenate(rows, axis=0), stages

    def _begin(self, capture):
        """Empties the KV cache of the context about to be used."""
        ctx = self._context(capture)
        self.C.llama_kv_cache_clear(ctx)
        self._cur = ctx
        self.pos = 0

    def forward(self, tokens, want=(), layers=None, positions=None):
        """One pass over tokens from an empty cache: (logits [n, V], stages)."""
        self._begin(bool(want))
        return self._run(list(tokens), 0, True, want, layers, positions)

    def prefill(self, tokens, want=(), layers=None, positions=None, all_logits=True):
        """Empties the cache and runs the prompt: (logits, stages); logits of every position
        when all_logits, else of the last. The steps that follow run in the same context,
        so a prefill whose steps will capture stages must get a non-empty `want` (its
        `positions` may exclude every prompt position)."""
        self._begin(bool(want))
        return self._run(list(tokens), 0, all_logits, want, layers, positions)

    def step(self, token, position, want=(), layers=None):
        """One token at `position` through the cache the last prefill filled:
        (logits row [n_vocab], stages)."""
        if self._cur is None:
            raise IkError("invalid_request", "step before prefill")
        if position != self.pos:
            raise IkError("invalid_request", f"step at position {position}, the cache holds "
                                             f"{self.pos} positions")
        lg, stages = self._run([int(token)], position, True, want, layers, None)
        return lg[0], stages

    # -- tokens -----------------------------------------------------------------------------

    def tokenize(self, text, add_bos, parse_special):
        b = text.encode("utf-8")
        n = max(len(b) + 8, 16)
        while True:
            buf = (ctypes.c_int32 * n)()
            r = self.L.tokenize(self.model, b, len(b), buf, n, bool(add_bos), bool(parse_special))
            if r >= 0:
                return [int(x) for x in buf[:r]]
            if -r <= n:
                raise IkError("backend", f"llama_tokenize failed ({r})")
            n = -r

    def piece(self, tid):
        """llama_token_to_piece with special = true, lstrip 0 (as the oracle)."""
        n = 64
        while True:
            buf = ctypes.create_string_buffer(n)
            r = self.L.token_to_piece(self.model, int(tid), buf, n, 0, True)
            if r >= 0:
                return buf.raw[:r]
            if -r <= n:
                raise IkError("backend", f"llama_token_to_piece({tid}) failed ({r})")
            n = -r

    # -- cleanup ----------------------------------------------------------------------------

    def close(self):
        C = self.C
        for ctx, _cb, _cp in self._ctx.values():
            C.llama_free(ctx)
        self._ctx = {}
        self._cur = None
        if getattr(self, "model", None):
            C.llama_free_model(self.model)
            self.model = None
