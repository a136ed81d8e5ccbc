"""A small GGUF (version 2 and 3) reader for BitNet models: metadata, tensors, dequantization.

Standard library + numpy. The file is memory-mapped; a tensor's bytes are a numpy view into
the map until you dequantize them. PyPI ``gguf`` (0.19) cannot read bitnet.cpp's I2_S (GGML
type 36); this reader can, and TQ1_0 (34) / TQ2_0 (35) too.

    from gguf_reader import GGUFFile
    g = GGUFFile("model.gguf")
    g.get("general.architecture")              # metadata value (str, int, float, bool, list,
                                               # or a numpy array for numeric arrays)
    t = g.tensor("blk.0.attn_q.weight")        # Tensor: name, dims (GGUF order: ne0 first),
    t.shape, t.type_name, t.offset, t.nbytes   # shape (numpy order: rows, cols), raw bytes
    w = g.dequantize("blk.0.attn_q.weight")    # float32 array of shape t.shape
    codes, scale = g.ternary("blk.0.attn_q.weight")  # I2_S: int8 {-1,0,1} and the f32 scale;
                                               # TQ1_0/TQ2_0: int8 codes and per-256-block d
    info = bitnet_info(g)                      # ModelInfo-style hyperparameters of a BitNet file

Layouts (the vendored bitnet.cpp is the reference: ggml-quants.c under
oracle/vendor/bitnet/3rdparty/llama.cpp/ggml/src, and src/ggml-bitnet-mad.cpp):

- I2_S (36): n = rows*cols values, cols a multiple of 128, packed 4 per byte in blocks of 128
  values / 32 bytes: byte j of a block holds values j, j+32, j+64, j+96 at bit shifts 6, 4,
  2, 0. Codes 0 -> -1, 1 -> 0, 2 -> +1 (3 is never written; the dot product reads it as +2).
  After the n/4 packed bytes: one f32 scale for the whole tensor, then padding; the tensor
  occupies n/4 + 32 bytes.
- TQ2_0 (35): blocks of 256 values, 66 bytes: qs[64], f16 d. For j in (0, 32), for l in 0..4,
  for m in 0..32: value = ((qs[j+m] >> 2l) & 3) - 1, times d.
- TQ1_0 (34): blocks of 256 values, 54 bytes: qs[48], qh[4], f16 d. Base-3 digits: q =
  (byte * 3^n) mod 256, trit = (q * 3) >> 8. qs[0:32] give 5 x 32 values (n outer, m inner),
  qs[32:48] give 5 x 16, qh gives 4 x 4 (n outer, j inner); value = trit - 1, times d.

Every error is a GGUFError naming the file, and where it applies the key or tensor and the
byte offset.
"""

from __future__ import annotations

import os
import struct

import numpy as np

__all__ = ["GGUFError", "GGUFFile", "Tensor", "GGML_TYPES", "bitnet_info", "resolve_n_ctx"]

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
GGML_MAX_DIMS = 4
QK_K = 256
QK_I2_S = 128

# id -> (name, block size in values, bytes per block). I2_S is special-cased (n/4 + 32).
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 31: ("Q4_0_4_4", 32, 18), 32: ("Q4_0_4_8", 32, 18),
    33: ("Q4_0_8_8", 32, 18), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    36: ("I2_S", 1, 1),
}
TYPE_IDS = {name: i for i, (name, _, _) in GGML_TYPES.items()}

# GGUF metadata value types: id -> (name, struct format or None).
_SCALAR = {0: ("u8", "<B"), 1: ("i8", "<b"), 2: ("u16", "<H"), 3: ("i16", "<h"),
           4: ("u32", "<I"), 5: ("i32", "<i"), 6: ("f32", "<f"), 7: ("bool", "<B"),
           10: ("u64", "<Q"), 11: ("i64", "<q"), 12: ("f64", "<d")}
_NP = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
       10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9


class GGUFError(Exception):
    """A GGUF file that cannot be read as asked; the message names file, key/tensor, offset."""


class Tensor:
    """One tensor's header and a view of its bytes in the mapped file."""

    __slots__ = ("name", "dims", "type_id", "offset", "nbytes", "raw", "path")

    def __init__(self, name, dims, type_id, offset, nbytes, raw, path):
        self.name = name
        self.dims = tuple(dims)        # GGUF order: ne0 (the contiguous axis) first
        self.type_id = type_id
        self.offset = offset           # absolute byte offset in the file
        self.nbytes = nbytes
        self.raw = raw                 # np.uint8 view of the tensor's bytes (None if unsized)
        self.path = path

    @property
    def shape(self):
        """numpy order (rows first): reversed dims."""
        return tuple(reversed(self.dims))

    @property
    def n_elements(self):
        n = 1
        for d in self.dims:
            n *= d
        return n

    @property
    def type_name(self):
        t = GGML_TYPES.get(self.type_id)
        return t[0] if t else f"type{self.type_id}"

    def __repr__(self):
        return (f"Tensor({self.name!r}, shape={self.shape}, type={self.type_name}, "
                f"offset={self.offset}, nbytes={self.nbytes})")


def _data_size(type_id, dims):
    """Bytes of a tensor as ggml_nbytes counts them, or None for unknown types."""
    n = 1
    for d in dims:
        n *= d
    if type_id == 36:                       # I2_S: 2 bits a value + f32 scale + padding
        return n // 4 + 32
    t = GGML_TYPES.get(type_id)
    if t is None:
        return None
    _, bs, ts = t
    return (n // bs) * ts


class _Cursor:
    def __init__(self, buf, path):
        self.buf = buf
        self.pos = 0
        self.path = path

    def fail(self, what, at=None):
        at = self.pos if at is None else at
        raise GGUFError(f"{self.path}: {what} (at byte offset {at})")

    def take(self, n, what):
        if n < 0 or self.pos + n > len(self.buf):
            self.fail(f"{what}: needs {n} bytes but the file ends at byte {len(self.buf)}")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def scalar(self, fmt, what):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, bytes(self.take(size, what)))[0]

    def string(self, what):
        start = self.pos
        n = self.scalar("<Q", f"{what}: string length")
        if n > len(self.buf) - self.pos:
            self.fail(f"{what}: string length {n} runs past the end of the file", start)
        raw = bytes(self.take(n, what))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.fail(f"{what}: string is not valid UTF-8 ({e.reason} at byte {e.start})", start)


class GGUFFile:
    """A memory-mapped GGUF file. See the module docstring."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            size = os.path.getsize(self.path)
        except OSError as e:
            raise GGUFError(f"{self.path}: cannot open: {e.strerror or e}") from None
        if size < 24:
            raise GGUFError(f"{self.path}: {size} bytes is too short for a GGUF header "
                            "(magic, version, counts: 24 bytes)")
        try:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as e:
            raise GGUFError(f"{self.path}: cannot map the file: {e}") from None
        buf = memoryview(self._map)
        c = _Cursor(buf, self.path)
        magic = bytes(c.take(4, "magic"))
        if magic != GGUF_MAGIC:
            c.fail(f"not a GGUF file: magic {magic!r}, expected b'GGUF'", 0)
        self.version = c.scalar("<I", "version")
        if self.version not in (2, 3):
            c.fail(f"GGUF version {self.version} is not supported (2 and 3 are)", 4)
        n_tensors = c.scalar("<Q", "tensor count")
        n_kv = c.scalar("<Q", "metadata count")
        # Each key/value takes at least 12 bytes and each tensor info at least 24.
        if n_kv > size // 12:
            c.fail(f"metadata count {n_kv} is impossible for a file of {size} bytes", 16)
        if n_tensors > size // 24:
            c.fail(f"tensor count {n_tensors} is impossible for a file of {size} bytes", 8)

        self.metadata = {}
        self.metadata_types = {}
        for i in range(n_kv):
            at = c.pos
            key = c.string(f"metadata key #{i}")
            vtype = c.scalar("<I", f"metadata '{key}': value type")
            if key in self.metadata:
                c.fail(f"metadata key '{key}' appears twice", at)
            self.metadata[key], self.metadata_types[key] = self._value(c, vtype, key)

        self.alignment = DEFAULT_ALIGNMENT
        if "general.alignment" in self.metadata:
            a = self.metadata["general.alignment"]
            if self.metadata_types["general.alignment"] != "u32":
                raise GGUFError(f"{self.path}: metadata 'general.alignment' is "
                                f"{self.metadata_types['general.alignment']}, expected u32")
            if a == 0 or a & (a - 1):
                raise GGUFError(f"{self.path}: metadata 'general.alignment' = {a} is not a "
                                "power of two")
            self.alignment = a

        infos = []
        for i in range(n_tensors):
            at = c.pos
            name = c.string(f"tensor info #{i}: name")
            n_dims = c.scalar("<I", f"tensor '{name}': n_dims")
            if n_dims > GGML_MAX_DIMS:
                c.fail(f"tensor '{name}': {n_dims} dimensions (ggml allows {GGML_MAX_DIMS})", at)
            dims = [c.scalar("<Q", f"tensor '{name}': dim {d}") for d in range(n_dims)]
            type_id = c.scalar("<I", f"tensor '{name}': type")
            offset = c.scalar("<Q", f"tensor '{name}': offset")
            infos.append((name, dims, type_id, offset, at))

        self.data_offset = -(-c.pos // self.alignment) * self.alignment
        self.tensors = {}
        for name, dims, type_id, offset, at in infos:
            if name in self.tensors:
                raise GGUFError(f"{self.path}: tensor '{name}' appears twice (tensor info at "
                                f"byte offset {at})")
            if offset % self.alignment:
                raise GGUFError(f"{self.path}: tensor '{name}': data offset {offset} is not a "
                                f"multiple of the alignment {self.alignment}")
            nbytes = _data_size(type_id, dims)
            start = self.data_offset + offset
            raw = None
            if nbytes is not None:
                if start + nbytes > size:
                    raise GGUFError(
                        f"{self.path}: tensor '{name}' ({GGML_TYPES[type_id][0]}, dims "
                        f"{dims}) needs bytes {start}..{start + nbytes} but the file has "
                        f"{size} bytes")
                raw = self._map[start:start + nbytes]
            self.tensors[name] = Tensor(name, dims, type_id, start, nbytes, raw, self.path)

    # -- metadata ------------------------------------------------------------------------

    def _value(self, c, vtype, key):
        if vtype in _SCALAR:
            name, fmt = _SCALAR[vtype]
            v = c.scalar(fmt, f"metadata '{key}' ({name})")
            return (bool(v) if vtype == 7 else v), name
        if vtype == _STRING:
            return c.string(f"metadata '{key}'"), "string"
        if vtype == _ARRAY:
            at = c.pos
            etype = c.scalar("<I", f"metadata '{key}': array element type")
            n = c.scalar("<Q", f"metadata '{key}': array length")
            if etype in _NP:
                width = np.dtype(_NP[etype]).itemsize
                if n > (len(c.buf) - c.pos) // width:
                    c.fail(f"metadata '{key}': array of {n} {_SCALAR[etype][0]} runs past the "
                           "end of the file", at)
                arr = np.frombuffer(c.take(n * width, f"metadata '{key}'"), dtype=_NP[etype])
                if etype == 7:
                    arr = arr.astype(bool)
                return arr, f"array[{_SCALAR[etype][0]}]"
            if etype == _STRING:
                if n > (len(c.buf) - c.pos) // 8:
                    c.fail(f"metadata '{key}': array of {n} strings runs past the end of the "
                           "file", at)
                return [c.string(f"metadata '{key}'[{i}]") for i in range(n)], "array[string]"
            if etype == _ARRAY:
                if n > (len(c.buf) - c.pos) // 12:
                    c.fail(f"metadata '{key}': array of {n} arrays runs past the end", at)
                vals = [self._value(c, _ARRAY, f"{key}[{i}]")[0] for i in range(n)]
                return vals, "array[array]"
            c.fail(f"metadata '{key}': unknown array element type {etype}", at)
        c.fail(f"metadata '{key}': unknown value type {vtype}", c.pos - 4)

    def get(self, key, default=None):
        """A metadata value, or `default` when the key is absent."""
        return self.metadata.get(key, default)

    def require(self, key, kinds=None):
        """A metadata value that must exist (and have one of `kinds`, e.g. ("u32",))."""
        if key not in self.metadata:
            raise GGUFError(f"{self.path}: metadata key '{key}' is missing")
        if kinds and self.metadata_types[key] not in kinds:
            raise GGUFError(f"{self.path}: metadata '{key}' is {self.metadata_types[key]}, "
                            f"expected {' or '.join(kinds)}")
        return self.metadata[key]

    # -- tensors -------------------------------------------------------------------------

    def tensor(self, name):
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(f"{self.path}: tensor '{name}' is missing") from None

    def _checked(self, name, multiple):
        t = self.tensor(name)
        if t.raw is None:
            raise GGUFError(f"{self.path}: tensor '{name}' has type {t.type_name} "
                            "(unknown to this reader)")
        ne0 = t.dims[0] if t.dims else 1
        if ne0 % multiple:
            raise GGUFError(f"{self.path}: tensor '{name}' ({t.type_name}): row length {ne0} "
                            f"is not a multiple of {multiple} (at byte offset {t.offset})")
        return t

    def dequantize(self, name):
        """The tensor as float32 in numpy order (rows, cols). F32, F16, I2_S, TQ1_0, TQ2_0."""
        t = self.tensor(name)
        kind = t.type_name
        if kind == "F32":
            return np.frombuffer(self._checked(name, 1).raw, dtype="<f4").reshape(t.shape)
        if kind == "F16":
            return (np.frombuffer(self._checked(name, 1).raw, dtype="<f2")
                    .astype(np.float32).reshape(t.shape))
        if kind in ("I2_S", "TQ1_0", "TQ2_0"):
            codes, d = self.ternary(name)
            if kind == "I2_S":
                return (codes.astype(np.float32) * d).reshape(t.shape)
            rows = codes.reshape(-1, QK_K).astype(np.float32)
            return (rows * d.reshape(-1, 1)).reshape(t.shape)
        raise GGUFError(f"{self.path}: tensor '{name}' has type {kind}; this reader "
                        "dequantizes F32, F16, I2_S, TQ1_0 and TQ2_0")

    def ternary(self, name, i2s_shifts=(6, 4, 2, 0)):
        """Ternary weights without their scale: (codes, d) with codes int8 in {-1, 0, 1}
        (+2 for the never-written I2_S code 3) shaped like the tensor, and

        - I2_S: d = the tensor's f32 scale (a numpy float32 scalar);
        - TQ1_0 / TQ2_0: d = float32 array (rows, cols // 256), one per 256-value block.

        `i2s_shifts` are the bit shifts of values j, j+32, j+64, j+96 in byte j of a block
        (the real layout is 6, 4, 2, 0; the example engine passes another order to show a bug).
        """
        t = self.tensor(name)
        kind = t.type_name
        n = t.n_elements
        if kind == "I2_S":
            t = self._checked(name, QK_I2_S)
            if n % QK_I2_S:
                raise GGUFError(f"{self.path}: I2_S tensor '{name}' has {n} values, not a "
                                f"multiple of {QK_I2_S}")
            packed = np.asarray(t.raw[: n // 4]).reshape(-1, 1, 32)
            shifts = np.array(i2s_shifts, dtype=np.uint8).reshape(1, 4, 1)
            codes = ((packed >> shifts) & 3).astype(np.int8).reshape(t.shape) - 1
            scale = np.frombuffer(t.raw[n // 4: n // 4 + 4], dtype="<f4")[0]
            return codes, np.float32(scale)
        if kind == "TQ2_0":
            t = self._checked(name, QK_K)
            blocks = np.asarray(t.raw).reshape(-1, 66)
            qs = blocks[:, :64].reshape(-1, 2, 1, 32)
            shifts = np.arange(0, 8, 2, dtype=np.uint8).reshape(1, 1, 4, 1)
            codes = ((qs >> shifts) & 3).astype(np.int8).reshape(t.shape) - 1
            d = blocks[:, 64:66].copy().view("<f2").astype(np.float32)
            return codes, d.reshape(t.shape[:-1] + (t.shape[-1] // QK_K,))
        if kind == "TQ1_0":
            t = self._checked(name, QK_K)
            blocks = np.asarray(t.raw).reshape(-1, 54)
            pow3 = np.array([1, 3, 9, 27, 81, 243], dtype=np.uint16)

            def trits(b, nd):  # b: (nb, m) bytes -> (nb, nd, m) trits, digit n outer
                q = (b[:, None, :].astype(np.uint16) * pow3[:nd, None]) & 0xFF
                return ((q * 3) >> 8).astype(np.int8)

            parts = [trits(blocks[:, 0:32], 5).reshape(-1, 160),
                     trits(blocks[:, 32:48], 5).reshape(-1, 80),
                     trits(blocks[:, 48:52], 4).reshape(-1, 16)]
            codes = np.concatenate(parts, axis=1).reshape(t.shape) - 1
            d = blocks[:, 52:54].copy().view("<f2").astype(np.float32)
            return codes.astype(np.int8), d.reshape(t.shape[:-1] + (t.shape[-1] // QK_K,))
        raise GGUFError(f"{self.path}: tensor '{name}' has type {kind}, not a ternary type "
                        "(I2_S, TQ1_0, TQ2_0)")

    def weight_types(self):
        """Tensor type name -> number of tensors of that type (ModelInfo.weight_types)."""
        out = {}
        for t in self.tensors.values():
            out[t.type_name] = out.get(t.type_name, 0) + 1
        return dict(sorted(out.items()))


def resolve_n_ctx(requested, n_ctx_train):
    """The protocol's rule: 0 means min(training context, 4096)."""
    return int(requested) if requested else min(int(n_ctx_train), 4096)


def bitnet_info(g, n_ctx=0):
    """ModelInfo fields of a BitNet GGUF (arch `bitnet`, `bitnet-b1.58` or `bitnet-25`), with
    llama.cpp's defaults for absent keys. Also returns `n_rot` (not a ModelInfo field)."""
    arch = g.require("general.architecture", ("string",))
    if arch not in ("bitnet", "bitnet-b1.58", "bitnet-25"):
        raise GGUFError(f"{g.path}: architecture '{arch}' is not a BitNet one "
                        "(bitnet, bitnet-b1.58, bitnet-25)")
    ints = ("u32", "i32", "u64", "u16")

    def key(k, default=None, kinds=ints):
        full = f"{arch}.{k}"
        if default is not None and full not in g.metadata:
            return default
        return g.require(full, kinds)

    n_embd = int(key("embedding_length"))
    n_head = int(key("attention.head_count"))
    n_head_kv = int(key("attention.head_count_kv", n_head))
    if n_head <= 0 or n_head_kv <= 0 or n_embd % n_head or n_head % n_head_kv:
        raise GGUFError(f"{g.path}: inconsistent attention shape: embedding_length {n_embd}, "
                        f"head_count {n_head}, head_count_kv {n_head_kv}")
    head_dim = n_embd // n_head
    tokens = g.get("tokenizer.ggml.tokens")
    n_vocab = key("vocab_size", len(tokens) if tokens is not None else None)
    if n_vocab is None:
        raise GGUFError(f"{g.path}: neither '{arch}.vocab_size' nor 'tokenizer.ggml.tokens' "
                        "gives the vocabulary size")
    n_ctx_train = int(key("context_length"))
    bos = g.get("tokenizer.ggml.bos_token_id")
    eos = g.get("tokenizer.ggml.eos_token_id")
    return {
        "arch": arch,
        "name": g.get("general.name", "") or "",
        "n_vocab": int(n_vocab),
        "n_ctx_train": n_ctx_train,
        "n_ctx": resolve_n_ctx(n_ctx, n_ctx_train),
        "n_embd": n_embd,
        "n_layer": int(key("block_count")),
        "n_head": n_head,
        "n_head_kv": n_head_kv,
        "head_dim": head_dim,
        "n_ff": int(key("feed_forward_length")),
        "rope_freq_base": float(key("rope.freq_base", 10000.0, ("f32",))),
        "rms_eps": float(key("attention.layer_norm_rms_epsilon", kinds=("f32",))),
        "bos": None if bos is None else int(bos),
        "eos": None if eos is None else int(eos),
        "weight_types": g.weight_types(),
        "n_rot": int(key("rope.dimension_count", head_dim)),
    }
