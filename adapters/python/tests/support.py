"""Shared helpers for the adapter tests: paths, the bitprobe binaries, NMSE, traces, and a
tiny GGUF writer with reference encoders for I2_S / TQ1_0 / TQ2_0 (ported line by line from
bitnet.cpp's quantize_i2_s and ggml-quants.c's quantize_row_tq{1,2}_0_ref)."""

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ADAPTER_DIR = os.path.dirname(HERE)
REPO = os.path.dirname(os.path.dirname(ADAPTER_DIR))
sys.path.insert(0, ADAPTER_DIR)

import bitprobe_adapter as bp  # noqa: E402
import numpy as np  # noqa: E402

ENGINE = os.path.join(ADAPTER_DIR, "example_engine.py")

# The tiny presets this suite compares, and the weight type that sets their tolerances.
PRESETS = {
    "tiny-i2s": "I2_S", "tiny-f16": "F16", "tiny-f32": "F32", "tiny-tq1": "TQ1_0",
    "tiny-tq2": "TQ2_0", "tiny158-i2s": "I2_S", "tiny158-f16": "F16", "tiny158-f32": "F32",
    "tiny158-tq1": "TQ1_0", "tiny158-tq2": "TQ2_0", "tiny-gqa2-i2s": "I2_S",
}

# BITPROBE_PY_PRESETS=tiny-i2s,tiny158-f16 narrows the agreement test to those presets.
WEIGHT_TYPE = dict(PRESETS)
if os.environ.get("BITPROBE_PY_PRESETS"):
    PRESETS = {p: PRESETS[p] for p in os.environ["BITPROBE_PY_PRESETS"].split(",") if p}

# bitprobe's default tolerances (cases/README.md "Tolerances", harness/src/tolerance.rs).
HIDDEN_NMSE = {"I2_S": 2e-2, "TQ1_0": 2e-2, "TQ2_0": 2e-2, "F16": 5e-5, "F32": 6e-6}
LOGITS_NMSE = {"I2_S": 2e-2, "TQ1_0": 7e-3, "TQ2_0": 7e-3, "F16": 2e-5, "F32": 3e-6}
LOGITS_KL = {"I2_S": 4e-2, "TQ1_0": 3e-2, "TQ2_0": 3e-2, "F16": 5e-5, "F32": 7e-6}
INPUT_NMSE = 1e-10
INPUT_STAGES = ("inp_embd", "blk.0.attn_norm")


def bitprobe_bins():
    """(bitprobe, bitprobe-oracle) paths, or None with the reason they are missing."""
    cands = []
    if os.environ.get("BITPROBE_BIN"):
        b = os.environ["BITPROBE_BIN"]
        cands.append((b, os.environ.get("BITPROBE_ORACLE_BIN",
                                        os.path.join(os.path.dirname(b), "bitprobe-oracle"))))
    for profile in ("release", "debug"):
        d = os.path.join(REPO, "target", profile)
        cands.append((os.path.join(d, "bitprobe"), os.path.join(d, "bitprobe-oracle")))
    for b, o in cands:
        if os.access(b, os.X_OK) and os.access(o, os.X_OK):
            return (b, o), None
    return None, ("bitprobe binaries not found (looked for bitprobe and bitprobe-oracle in "
                  "$BITPROBE_BIN, target/release, target/debug): build them with `cargo build "
                  "--release -p harness`")


def nmse(a, b):
    """Σ(a−b)²/Σb² in double, b the reference (0 when both are all zero)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    den = float(np.sum(b * b))
    num = float(np.sum((a - b) ** 2))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def kl(ref_logits, logits):
    """KL(ref ‖ other) of the softmaxes, in double."""
    p = np.asarray(ref_logits, dtype=np.float64)
    q = np.asarray(logits, dtype=np.float64)
    lp = p - p.max() - np.log(np.sum(np.exp(p - p.max())))
    lq = q - q.max() - np.log(np.sum(np.exp(q - q.max())))
    return float(np.sum(np.exp(lp) * (lp - lq)))


def tolerance(stage_id, weight_type):
    if stage_id in INPUT_STAGES:
        return INPUT_NMSE
    if stage_id == "result_output":
        return LOGITS_NMSE[weight_type]
    return HIDDEN_NMSE[weight_type]


def run_trace(bitprobe, preset, prompt, out_dir, decode=0):
    cmd = [bitprobe, "trace", "--preset", preset, "-p", prompt, "--probe", "oracle", "--raw",
           "-t", "1", "--out", out_dir]
    if decode:
        cmd += ["--decode", str(decode)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
    return load_trace(out_dir)


def load_trace(d):
    """trace.json plus {(phase, position, stage_id): float32 array}."""
    with open(os.path.join(d, "trace.json")) as f:
        manifest = json.load(f)
    files = manifest.get("files") or sorted(
        x for x in os.listdir(d) if x.endswith(".json") and x != "trace.json")
    tensors = {}
    for name in files:
        with open(os.path.join(d, name)) as f:
            meta = json.load(f)
        npy = meta.get("data") or name[:-5] + ".npy"
        arr = np.load(os.path.join(d, npy))
        tensors[(meta.get("phase", "prompt"), meta["position"], meta["stage"])] = arr
    return manifest, tensors


def stage_id(entry):
    return entry["stage"] if entry["layer"] is None else f"blk.{entry['layer']}.{entry['stage']}"


def forge(bitprobe, preset, out):
    r = subprocess.run([bitprobe, "forge", "--preset", preset, "--out", out],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"bitprobe forge --preset {preset} failed:\n{r.stderr}")
    return out


def model_path(bitprobe, manifest, preset, tmp):
    m = manifest.get("model") or {}
    p = m.get("path")
    if p and os.path.exists(p):
        return p
    return forge(bitprobe, preset, os.path.join(tmp, preset + ".gguf"))


def engine_cmd(*bugs):
    cmd = [sys.executable, ENGINE]
    for b in bugs:
        cmd += ["--bug", b]
    return cmd


def child_env():
    env = dict(os.environ)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


# ---------------------------------------------------------------------------------------
# A tiny GGUF writer and reference encoders.

def _gguf_string(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _gguf_value(v):
    if isinstance(v, bool):
        return struct.pack("<I", 7) + struct.pack("<B", v)
    if isinstance(v, int):
        return struct.pack("<I", 4) + struct.pack("<I", v)
    if isinstance(v, float):
        return struct.pack("<I", 6) + struct.pack("<f", v)
    if isinstance(v, str):
        return struct.pack("<I", 8) + _gguf_string(v)
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return (struct.pack("<I", 9) + struct.pack("<IQ", 8, len(v))
                + b"".join(_gguf_string(x) for x in v))
    if isinstance(v, list):
        return struct.pack("<I", 9) + struct.pack("<IQ", 5, len(v)) + struct.pack(
            f"<{len(v)}i", *v)
    raise TypeError(v)


def write_gguf(path, metadata, tensors, alignment=32):
    """tensors: [(name, dims (ne0 first), type_id, raw bytes)]."""
    head = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(metadata))]
    for k, v in metadata.items():
        head.append(_gguf_string(k) + _gguf_value(v))
    offset = 0
    datas = []
    for name, dims, type_id, raw in tensors:
        head.append(_gguf_string(name) + struct.pack("<I", len(dims))
                    + struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", type_id, offset))
        pad = (-len(raw)) % alignment
        datas.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    h = b"".join(head)
    h += b"\0" * ((-len(h)) % alignment)
    with open(path, "wb") as f:
        f.write(h + b"".join(datas))


def encode_i2s(w):
    """quantize_i2_s: scale = max|w|; 0 when |w| < 1e-6, else ±1 by sign; n/4 + 32 bytes."""
    w = np.asarray(w, dtype=np.float32).reshape(-1)
    n = w.size
    mx = float(np.max(np.abs(w.astype(np.float64))))
    out = bytearray(n // 4 + 32)
    for i, x in enumerate(w):
        q = 1 if abs(float(x)) < 1e-6 else (2 if float(x) * mx > 0 else 0)
        blk, j = divmod(i, 128)
        out[blk * 32 + j % 32] |= q << (6 - 2 * (j // 32))
    out[n // 4: n // 4 + 4] = struct.pack("<f", mx)
    return bytes(out)


def _lroundf(v):
    return int(np.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


def encode_tq2(x):
    x = np.asarray(x, dtype=np.float32).reshape(-1, 256)
    out = bytearray()
    for blk in x:
        d = np.float32(np.max(np.abs(blk)))
        inv = np.float32(1.0) / d if d else np.float32(0)
        qs = bytearray(64)
        for j in range(0, 64, 32):
            for m in range(32):
                q = 0
                for n in range(4):
                    xi = _lroundf(float(blk[j * 4 + m + n * 32] * inv)) + 1
                    q += (xi & 3) << (2 * n)
                qs[j + m] = q
        out += qs + np.float16(d).tobytes()
    return bytes(out)


def encode_tq1(x):
    x = np.asarray(x, dtype=np.float32).reshape(-1, 256)
    out = bytearray()
    for blk in x:
        d = np.float32(np.max(np.abs(blk)))
        inv = np.float32(1.0) / d if d else np.float32(0)
        t = lambda v: _lroundf(float(v * inv)) + 1  # noqa: E731
        qs, qh, pos = bytearray(48), bytearray(4), 0
        for m in range(32):
            q = 0
            for n in range(5):
                q = (q * 3 + t(blk[pos + m + n * 32])) & 0xFF
            qs[m] = ((q * 256) + 242) // 243 & 0xFF
        pos += 160
        for m in range(16):
            q = 0
            for n in range(5):
                q = (q * 3 + t(blk[pos + m + n * 16])) & 0xFF
            qs[32 + m] = ((q * 256) + 242) // 243 & 0xFF
        pos += 80
        for j in range(4):
            q = 0
            for m in range(4):
                q = (q * 3 + t(blk[pos + j + m * 4])) & 0xFF
            q = (q * 3) & 0xFF
            qh[j] = ((q * 256) + 242) // 243 & 0xFF
        out += qs + qh + np.float16(d).tobytes()
    return bytes(out)


class TempDir:
    def __enter__(self):
        self.path = tempfile.mkdtemp(prefix="bitprobe-py-")
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)


def write_tiny_bitnet(path, weight_type="I2_S", arch="bitnet", seed=0, n_embd=256,
                      n_layer=2, n_head=8, n_head_kv=2, n_ff=512, n_vocab=40):
    """A random BitNet GGUF with the real tensor names and metadata (not a trained model:
    for running the example engine without bitprobe's forge)."""
    rng = np.random.default_rng(seed)
    hd = n_embd // n_head
    kv = hd * n_head_kv
    meta = {"general.architecture": arch, "general.name": "synthetic",
            f"{arch}.context_length": 64, f"{arch}.embedding_length": n_embd,
            f"{arch}.block_count": n_layer, f"{arch}.feed_forward_length": n_ff,
            f"{arch}.attention.head_count": n_head, f"{arch}.attention.head_count_kv": n_head_kv,
            f"{arch}.rope.freq_base": 500000.0, f"{arch}.attention.layer_norm_rms_epsilon": 1e-5,
            "tokenizer.ggml.tokens": [f"t{i}" for i in range(n_vocab)],
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}
    tensors = []

    def vec(name, n, around=1.0):
        tensors.append((name, [n], 0, (around + 0.1 * rng.standard_normal(n)).astype(
            np.float32).tobytes()))

    def mat(name, rows, cols):
        t = rng.integers(-1, 2, size=(rows, cols)).astype(np.float32)
        if weight_type == "I2_S":
            raw, ty = encode_i2s(t * np.float32(0.5)), 36
        elif weight_type == "TQ1_0":
            raw, ty = encode_tq1(t), 34
        elif weight_type == "TQ2_0":
            raw, ty = encode_tq2(t), 35
        elif weight_type == "F16":
            raw, ty = t.astype(np.float16).tobytes(), 1
        else:
            raw, ty = t.tobytes(), 0
        tensors.append((name, [cols, rows], ty, raw))

    emb = (0.5 * rng.standard_normal((n_vocab, n_embd))).astype(np.float32)
    if weight_type == "F32":
        tensors.append(("token_embd.weight", [n_embd, n_vocab], 0, emb.tobytes()))
    else:
        tensors.append(("token_embd.weight", [n_embd, n_vocab], 1,
                        emb.astype(np.float16).tobytes()))
    vec("output_norm.weight", n_embd)
    for i in range(n_layer):
        vec(f"blk.{i}.attn_norm.weight", n_embd)
        mat(f"blk.{i}.attn_q.weight", n_embd, n_embd)
        mat(f"blk.{i}.attn_k.weight", kv, n_embd)
        mat(f"blk.{i}.attn_v.weight", kv, n_embd)
        vec(f"blk.{i}.attn_sub_norm.weight", n_embd)
        mat(f"blk.{i}.attn_output.weight", n_embd, n_embd)
        vec(f"blk.{i}.ffn_norm.weight", n_embd)
        mat(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        mat(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        vec(f"blk.{i}.ffn_sub_norm.weight", n_ff)
        mat(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    write_gguf(path, meta, tensors)
    return path
