"""Serve bitprobe's wire protocol from a Python inference engine.

bitprobe judges a BitNet b1.58 engine against bitnet.cpp stage by stage. An engine joins by
running as a child process that speaks the wire protocol (docs/wire-protocol.md) on its
stdin/stdout. This module does the protocol; you write the engine. Standard library + numpy.

Minimal server
--------------

    import bitprobe_adapter as bp          # puts .cache/python/numpy on sys.path if needed
    import numpy as np

    class MyEngine(bp.Engine):
        implementation = "my-engine 0.1"
        stages = ["inp_embd", "attn_norm", "result_norm"]     # what forward can capture

        def open(self, req):               # req: OpenRequest (model, threads, n_ctx, options)
            self.model = load(req.model)   # raise bp.LoadError(...) or anything on failure
            return {"arch": "bitnet", "n_vocab": 496, "n_ctx": 2048, "n_embd": 256, ...}

        def forward(self, tokens, capture):  # one batch from an empty cache, positions 0..n-1
            x = self.model.embed(tokens)           # [n_tokens, n_embd]
            capture.put("inp_embd", None, x)       # global stage: layer None
            for l in range(self.model.n_layer):
                ...
                capture.put("attn_norm", l, xn)    # rows = tokens of this batch
            return logits                          # [n_tokens, n_vocab] float array

    if __name__ == "__main__":
        bp.serve(MyEngine)

API
---

``serve(factory, stdin=None, stdout=None) -> int``
    Runs the request loop until end of input; returns the exit status (0 at a clean end of
    input, 2 when the input stream itself is broken). ``factory()`` makes a fresh engine for
    each ``open`` (pass the class, or a lambda with your own arguments). With the default
    stdin/stdout it first protects the protocol: file descriptor 1 is moved aside for frames
    and ``sys.stdout`` (and fd 1, so C libraries too) go to stderr, so ``print`` in your engine
    cannot corrupt a frame. A bad request gets an ``error`` reply and the loop goes on.

``class Engine`` — subclass it. Implement what you have; capabilities follow from that.
    ``open(req) -> dict``  (required) load the model, return ModelInfo fields. Required keys:
        ``n_vocab``, ``n_ctx`` (use ``resolve_n_ctx(req.n_ctx, n_ctx_train)``: 0 means
        min(training context, 4096)); shape checks of stages need ``n_embd``, ``n_head``,
        ``n_head_kv``, ``head_dim``, ``n_ff``. The rest defaults (``arch``/``name`` "",
        numbers 0, ``bos``/``eos`` None, ``weight_types`` {}, ``implementation`` the class
        attribute, ``threads`` the request's or 1). ``gguf_reader.bitnet_info(g, n_ctx)``
        fills them from a GGUF file. Reject unknown ``req.options`` keys with
        ``InvalidRequest``.
    ``forward(tokens, capture) -> logits``  one batched pass from an empty KV cache over
        ``tokens`` at positions 0..n-1: logits ``[n_tokens, n_vocab]`` (every position) and
        stages through ``capture.put(stage, layer, rows)``. It may instead return
        ``(logits, stages)`` with ``stages`` an iterable of ``(stage, layer, position, data)``.
    ``prefill(tokens, capture, all_logits) -> logits`` and ``step(token, position, capture)
        -> logits`` (optional, together): your KV-cache path. ``prefill`` empties the cache
        and runs the prompt (rows ``[n_tokens, n_vocab]`` when ``all_logits``, else at least
        the last row); ``step`` feeds one token at ``position`` through the cache and returns
        its logits row ``[n_vocab]``. The library chooses tokens and drives generation with
        the exact semantics of bitprobe's ``drive_generation`` (below).
    ``generate(request) -> iterable of ids | dict``  (optional) your own generation, for an
        engine that can only generate: yield token ids as they are chosen (each is streamed
        as a ``token`` frame) or return a full Generation dict. Declares ``teacher_forced``
        and ``decode_logits`` false unless you set the class attributes.
    ``tokenize(text, add_bos, parse_special) -> [ids]`` and ``pieces(ids) -> [bytes]``
        (optional, together). Declare nothing rather than an approximate tokenizer: bitprobe
        then tokenizes with the reference and feeds you ids.
    ``eos_ids() -> [ids]``  tokens that end generation when ``stop_at_eos`` (default: the
        info's ``eos``).
    ``close()``  called before the engine is replaced by a second ``open`` and at the end.
    Class attributes: ``implementation`` (str), ``stages`` (the stage names ``forward`` can
    capture; default all 18), ``teacher_forced``/``decode_logits``/``decode_stages`` (for a
    custom ``generate``). Override ``capabilities()`` to declare something else entirely.

    Which path serves ``generate``: your ``generate`` if you wrote one; else ``prefill`` +
    ``step``; else ``forward`` re-run over the growing sequence (no KV cache: correct, but
    then decode steps test nothing your forward does not).

``class Capture``  what the client asked for: ``stages`` (set of names), ``layers`` and
    ``positions`` (None = all, or sets), ``pos0`` (position of this batch's first row).
    ``wants(stage, layer=None, position=None)`` tells whether anything of it is wanted (use it
    to skip copies); ``put(stage, layer, rows, pos0=None)`` records rows (first axis = the
    tokens of this batch, positions ``pos0..``), keeping only wanted layers and positions.
    The library checks every recorded tensor's element count against the stage's shape
    (``stage_shape``) and reshapes it to the canonical shape before sending.

Errors: raise ``LoadError(message)`` in ``open``, ``InvalidRequest(message)`` for a request
    you cannot serve as asked, ``BackendError(message)`` for a failure. Any other exception
    becomes a ``backend`` error whose detail is the traceback's last line plus where it was
    raised; the full traceback goes to stderr.

Generation semantics (identical to ``drive_generation`` in probe/src/lib.rs): the prompt must
    not be empty; ids must be < n_vocab; prompt + forced, and prompt + max_tokens-1 steps,
    must fit in n_ctx. ``first`` is chosen from the prompt's last logits row (greedy: argmax,
    ties to the lowest id, NaN never wins; or the seeded sampler). Decode step i (0-based, at
    position len(prompt)+i) feeds ``forced[i]`` when ``forced`` is set (and stops when it runs
    out), else the previous choice. ``max_tokens`` counts generated tokens (steps =
    max_tokens-1; 0 generates nothing, the prompt still runs). With ``stop_at_eos`` a chosen
    EOS ends generation. One ``token`` frame per generated token precedes the ``generation``
    reply.

Helpers: ``use_cache_packages(*names)`` puts ``<repo>/.cache/python/<name>`` on sys.path
    (setup installs numpy there); ``stage_shape(stage, info)``; ``argmax(row)``;
    ``resolve_n_ctx``; ``encode_frame``/``write_frame``/``read_frame`` (the framing, usable on
    either side); ``Client`` (spawns a server command and talks to it, for your own tests).

Floats: blobs are little-endian f32; NaN and Inf travel unchanged inside blobs. JSON has no
NaN: non-finite floats in the JSON part (say ``rms_eps``) are written as ``null``, and a
``null`` float is read back as NaN (as bitprobe's Rust side does).
"""

from __future__ import annotations

import json
import math
import os
import random
import select
import struct
import subprocess
import sys
import time
import traceback

PROTOCOL_VERSION = 1
MAX_JSON = 256 << 20
MAX_BLOB_FLOATS = 1 << 32

# The stage vocabulary in evaluation order (probe/src/stage.rs).
STAGES = (
    "inp_embd", "attn_norm", "attn_q", "attn_k", "attn_v", "kqv_out", "attn_sub_norm",
    "attn_output", "ffn_inp", "ffn_norm", "ffn_gate", "ffn_up", "ffn_sub_out",
    "ffn_sub_norm", "ffn_down", "l_out", "result_norm", "result_output",
)
GLOBAL_STAGES = frozenset(("inp_embd", "result_norm", "result_output"))
_STAGE_ORDER = {s: i for i, s in enumerate(STAGES)}

_INFO_FIELDS = ("arch", "name", "n_vocab", "n_ctx_train", "n_ctx", "n_embd", "n_layer",
                "n_head", "n_head_kv", "head_dim", "n_ff", "rope_freq_base", "rms_eps", "bos",
                "eos", "weight_types", "implementation", "threads", "protocol", "capabilities")
_CAP_FIELDS = ("tokenize", "forward", "stages", "generate", "teacher_forced",
               "decode_logits", "decode_stages")


# ---------------------------------------------------------------------------------------
# Finding numpy.

def _repo_root():
    env = os.environ.get("BITPROBE_ROOT")
    if env:
        return env
    d = os.path.dirname(os.path.abspath(__file__))
    for _ in range(6):
        if os.path.isdir(os.path.join(d, ".cache", "python")):
            return d
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def use_cache_packages(*names):
    """Puts `<repo>/.cache/python/<name>` (installed by scripts/setup.sh) on sys.path for each
    name that has such a folder; returns the folders added. The repository is found from
    $BITPROBE_ROOT or by walking up from this file."""
    added = []
    base = os.path.join(_repo_root(), ".cache", "python")
    for name in names:
        p = os.path.join(base, name)
        if os.path.isdir(p) and p not in sys.path:
            sys.path.insert(0, p)
            added.append(p)
    return added


try:
    import numpy as np
except ImportError:
    use_cache_packages("numpy")
    try:
        import numpy as np
    except ImportError:
        raise ImportError(
            "bitprobe_adapter needs numpy: run scripts/setup.sh (it installs a pinned numpy "
            f"into {os.path.join(_repo_root(), '.cache', 'python', 'numpy')}) or install "
            "numpy yourself") from None


# ---------------------------------------------------------------------------------------
# Errors.

class ProbeError(Exception):
    """An error reply. `kind` is load / invalid_request / backend / protocol / io."""

    kind = "backend"

    def __init__(self, message):
        super().__init__(message)
        self.message = str(message)

    def detail(self):
        return self.message


class LoadError(ProbeError):
    kind = "load"

    def __init__(self, message, path=""):
        super().__init__(message)
        self.path = os.fspath(path) if path else ""

    def detail(self):
        return {"path": self.path, "message": self.message}


class InvalidRequest(ProbeError):
    kind = "invalid_request"


class BackendError(ProbeError):
    kind = "backend"


class ProtocolError(ProbeError):
    kind = "protocol"


class FrameError(Exception):
    """The byte stream is not a sequence of frames (truncated, oversized): unrecoverable."""


class RemoteError(Exception):
    """An `error` reply received by `Client`."""

    def __init__(self, kind, detail):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def _describe_exception(e):
    """The traceback's last line, and where it was raised."""
    last = "".join(traceback.format_exception_only(type(e), e)).strip().splitlines()[-1]
    tb = traceback.extract_tb(e.__traceback__)
    if tb:
        f = tb[-1]
        last += f" (at {os.path.basename(f.filename)}:{f.lineno} in {f.name})"
    return last


# ---------------------------------------------------------------------------------------
# Framing: u32 LE json_len, JSON (UTF-8), u32 LE n_blobs, n_blobs x (u64 LE n, n x f32 LE).

def _f32_shortest(x):
    """A Python float that prints as the shortest decimal of the f32 nearest to x."""
    return float(str(np.float32(x)))


def _jsonable(o, blobs):
    if isinstance(o, np.ndarray):
        blobs.append(o)
        return {"blob": len(blobs) - 1}
    if isinstance(o, dict):
        return {str(k): _jsonable(v, blobs) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v, blobs) for v in o]
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, (int, np.integer)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        f = float(o)
        return f if math.isfinite(f) else None   # JSON has no NaN/Inf: null (read as NaN)
    if isinstance(o, (bytes, bytearray)):
        return list(o)
    return o


def encode_frame(msg):
    """One frame as bytes. Every numpy array in `msg` becomes a blob ({"blob": i}), sent as
    little-endian f32 in the order met; put plain ints in lists, not arrays."""
    blobs = []
    body = _jsonable(msg, blobs)
    js = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    js = js.encode("utf-8")
    if len(js) > MAX_JSON:
        raise ValueError(f"frame JSON of {len(js)} bytes exceeds {MAX_JSON}")
    parts = [struct.pack("<I", len(js)), js, struct.pack("<I", len(blobs))]
    for b in blobs:
        a = np.ascontiguousarray(b, dtype="<f4").reshape(-1)
        parts.append(struct.pack("<Q", a.size))
        parts.append(a.tobytes())
    return b"".join(parts)


def write_frame(f, msg):
    f.write(encode_frame(msg))
    f.flush()


def _read_exact(f, n, what):
    chunks = []
    left = n
    while left:
        b = f.read(left)
        if not b:
            raise FrameError(f"end of input inside a frame ({what}: {n - left} of {n} bytes)")
        chunks.append(b)
        left -= len(b)
    return b"".join(chunks)


def read_raw_frame(f):
    """(json bytes, [float32 arrays]) of the next frame; None at a clean end of input (EOF
    before the first byte). Raises FrameError on a truncated or oversized frame."""
    first = f.read(1)
    if not first:
        return None
    head = first + _read_exact(f, 3, "json_len")
    (json_len,) = struct.unpack("<I", head)
    if json_len > MAX_JSON:
        raise FrameError(f"frame JSON length {json_len} exceeds {MAX_JSON}")
    js = _read_exact(f, json_len, "json")
    (n_blobs,) = struct.unpack("<I", _read_exact(f, 4, "n_blobs"))
    blobs = []
    for i in range(n_blobs):
        (n,) = struct.unpack("<Q", _read_exact(f, 8, f"blob {i} length"))
        if n > MAX_BLOB_FLOATS:
            raise FrameError(f"blob {i} claims {n} floats, limit {MAX_BLOB_FLOATS}")
        data = _read_exact(f, 4 * n, f"blob {i}")
        blobs.append(np.frombuffer(data, dtype="<f4"))
    return js, blobs


def resolve_blobs(obj, blobs):
    """Replaces every {"blob": i} in parsed JSON by blob i (each may be used once)."""
    used = set()

    def walk(o):
        if isinstance(o, dict):
            if len(o) == 1 and "blob" in o and isinstance(o["blob"], int) \
                    and not isinstance(o["blob"], bool):
                i = o["blob"]
                if i < 0 or i >= len(blobs) or i in used:
                    raise ProtocolError(f"bad frame JSON: blob {i} missing or referenced twice")
                used.add(i)
                return blobs[i]
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, list):
            return [walk(v) for v in o]
        return o

    return walk(obj)


def parse_frame(js, blobs):
    try:
        obj = json.loads(js.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ProtocolError(f"bad frame JSON: not UTF-8 ({e.reason} at byte {e.start})")
    except ValueError as e:
        raise ProtocolError(f"bad frame JSON: {e}")
    return resolve_blobs(obj, blobs)


def read_frame(f):
    """The next frame's JSON with blobs resolved to float32 arrays; None at end of input."""
    raw = read_raw_frame(f)
    return None if raw is None else parse_frame(*raw)


def as_float(x):
    """A JSON float field: null (how non-finite values travel) reads as NaN."""
    return float("nan") if x is None else float(x)


# ---------------------------------------------------------------------------------------
# Stages and capture.

def stage_shape(stage, info):
    """The per-position shape of a stage for a model with these ModelInfo fields."""
    g = info.get
    if stage == "attn_q":
        return [g("n_head", 0), g("head_dim", 0)]
    if stage == "attn_k":
        return [g("n_head_kv", 0), g("head_dim", 0)]
    if stage == "attn_v":
        return [g("n_head_kv", 0) * g("head_dim", 0)]
    if stage == "kqv_out":
        return [g("n_head", 0) * g("head_dim", 0)]
    if stage in ("ffn_gate", "ffn_up", "ffn_sub_out", "ffn_sub_norm"):
        return [g("n_ff", 0)]
    if stage == "result_output":
        return [g("n_vocab", 0)]
    if stage in _STAGE_ORDER:
        return [g("n_embd", 0)]
    raise ValueError(f"unknown stage '{stage}' (valid: {', '.join(STAGES)})")


def _check_stage_layer(stage, layer):
    if stage not in _STAGE_ORDER:
        raise ValueError(f"unknown stage '{stage}' (valid: {', '.join(STAGES)})")
    if stage in GLOBAL_STAGES and layer is not None:
        raise ValueError(f"stage '{stage}' is global: put it with layer None, not {layer}")
    if stage not in GLOBAL_STAGES and layer is None:
        raise ValueError(f"stage '{stage}' is per-layer: put it with a layer number")


class Capture:
    """Which stage tensors the client wants, and the recorder for them (see module doc)."""

    def __init__(self, stages=(), layers=None, positions=None, pos0=0, n_tokens=None):
        self.stages = frozenset(stages)
        self.layers = None if layers is None else frozenset(layers)
        self.positions = None if positions is None else frozenset(positions)
        self.pos0 = pos0
        self.n_tokens = n_tokens      # rows in this batch, when the library knows it
        self.recorded = []

    @classmethod
    def from_json(cls, c):
        if c is None:
            return cls()
        if not isinstance(c, dict):
            raise ProtocolError(f"bad frame JSON: capture must be an object, got {c!r}")
        stages = c.get("stages") or []
        if not isinstance(stages, list):
            raise ProtocolError("bad frame JSON: capture.stages must be a list")
        for s in stages:
            if s not in _STAGE_ORDER:
                raise ProtocolError(f"bad frame JSON: unknown stage {s!r} in capture.stages "
                                    f"(valid: {', '.join(STAGES)})")
        layers = _opt_ids(c.get("layers"), "capture.layers")
        positions = _opt_ids(c.get("positions"), "capture.positions")
        return cls(stages, layers, positions)

    def at(self, pos0, n_tokens=None):
        """The same selection for a batch of `n_tokens` rows from position `pos0`."""
        return Capture(self.stages, self.layers, self.positions, pos0, n_tokens)

    def wants(self, stage, layer=None, position=None):
        if stage not in self.stages:
            return False
        if layer is not None and self.layers is not None and layer not in self.layers:
            return False
        if position is not None and self.positions is not None \
                and position not in self.positions:
            return False
        return True

    def put(self, stage, layer, rows, pos0=None):
        """Records `rows` (first axis: the tokens of the batch, at positions pos0, pos0+1, …)
        of a stage, keeping the wanted layers and positions. Returns nothing."""
        _check_stage_layer(stage, layer)
        if not self.wants(stage, layer):
            return
        base = self.pos0 if pos0 is None else pos0
        rows = np.asarray(rows)
        if rows.ndim == 0:
            raise ValueError(f"stage '{stage}': put needs rows with a token axis, got a scalar")
        if pos0 is None and self.n_tokens is not None and rows.shape[0] != self.n_tokens:
            if self.n_tokens == 1:
                rows = rows[None]      # a one-token batch: the array is the one row
            else:
                raise ValueError(
                    f"stage {_stage_label(stage, layer)}: put got {rows.shape[0]} rows (shape "
                    f"{list(rows.shape)}) for a batch of {self.n_tokens} tokens; the first "
                    "axis must be the tokens (pass pos0= to put part of a batch)")
        for i in range(rows.shape[0]):
            p = base + i
            if self.positions is None or p in self.positions:
                self.recorded.append((stage, layer, p, rows[i]))


def _opt_ids(v, what):
    if v is None:
        return None
    if not isinstance(v, list) or not all(_is_uint(x) for x in v):
        raise ProtocolError(f"bad frame JSON: {what} must be null or a list of integers ≥ 0")
    return v


def _is_uint(x):
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _stage_entries(entries, capture, info, where):
    """Filters (stage, layer, position, data) by the capture, checks shapes, and returns the
    wire dicts in the order given."""
    out = []
    seen = set()
    for e in entries:
        if isinstance(e, dict):
            stage, layer, position, data = e["stage"], e.get("layer"), e["position"], e["data"]
        else:
            stage, layer, position, data = e
        _check_stage_layer(stage, layer)
        if not capture.wants(stage, layer, position):
            continue
        key = (stage, layer, position)
        if key in seen:
            raise BackendError(f"{where}: stage {_stage_label(stage, layer)} at position "
                               f"{position} was produced twice")
        seen.add(key)
        shape = stage_shape(stage, info)
        n = 1
        for d in shape:
            n *= d
        arr = np.asarray(data, dtype=np.float32)
        if n == 0:
            raise BackendError(f"{where}: cannot check the shape of stage "
                               f"{_stage_label(stage, layer)}: the model info lacks a "
                               "dimension (n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab)")
        if arr.size != n:
            raise BackendError(f"{where}: stage {_stage_label(stage, layer)} at position "
                               f"{position} has shape {list(arr.shape)} ({arr.size} values), "
                               f"expected {shape} ({n} values)")
        out.append({"stage": stage, "layer": layer, "position": int(position),
                    "shape": shape, "data": arr.reshape(-1)})
    return out


def _stage_label(stage, layer):
    return stage if layer is None else f"blk.{layer}.{stage}"


# ---------------------------------------------------------------------------------------
# Choosing tokens.

def argmax(row):
    """Index of the largest value; ties go to the lowest index; NaN never wins (an all-NaN
    row gives 0), as probe::argmax."""
    a = np.asarray(row, dtype=np.float32).reshape(-1)
    if a.size == 0:
        return 0
    clean = np.where(np.isnan(a), -np.inf, a)
    i = int(np.argmax(clean))     # first index of the maximum
    if clean[i] == -np.inf:
        # -inf everywhere: probe::argmax keeps index 0 unless some value is > -inf.
        return 0
    return i


class Sampler:
    """Greedy, or temperature -> top-k -> top-p -> a draw with a seeded RNG (the same steps
    as bitprobe's engine; the random stream differs, which the protocol allows)."""

    def __init__(self, sampling):
        self.kind = sampling.get("kind")
        if self.kind == "greedy":
            return
        if self.kind != "seeded":
            raise InvalidRequest(f"unknown sampling kind {self.kind!r} (greedy, seeded)")
        try:
            self.temperature = as_float(sampling["temperature"])
            self.top_k = int(sampling["top_k"])
            self.top_p = as_float(sampling["top_p"])
            self.rng = random.Random(int(sampling["seed"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"bad frame JSON: seeded sampling needs temperature, top_k, "
                                f"top_p, seed ({e})") from None

    def choose(self, row):
        if self.kind == "greedy" or not self.temperature > 0:
            return argmax(row)
        a = np.asarray(row, dtype=np.float32).reshape(-1)
        ids = np.nonzero(~np.isnan(a))[0]
        if ids.size == 0:
            return 0
        v = a[ids] / np.float32(self.temperature)
        order = np.lexsort((ids, -v))           # highest first, ties to the lower id
        v, ids = v[order], ids[order]
        if self.top_k > 0:
            v, ids = v[: self.top_k], ids[: self.top_k]
        e = np.exp(v - v[0]).astype(np.float64)
        total = float(e.sum())
        if self.top_p < 1.0:
            acc = np.cumsum(e / total)
            keep = int(np.searchsorted(acc, self.top_p) + 1)
            e, ids = e[:keep], ids[:keep]
            total = float(e.sum())
        r = self.rng.random() * total
        acc = np.cumsum(e)
        k = int(np.searchsorted(acc, r, side="right"))
        return int(ids[min(k, ids.size - 1)])


# ---------------------------------------------------------------------------------------
# The engine base class.

class OpenRequest:
    """The `open` request: model path, threads (0 = your default), n_ctx (0 = min(training
    context, 4096)), options (str -> str), protocol (the client's version)."""

    def __init__(self, model, threads=0, n_ctx=0, options=None, protocol=PROTOCOL_VERSION):
        self.model = model
        self.threads = threads
        self.n_ctx = n_ctx
        self.options = dict(options or {})
        self.protocol = protocol

    def __repr__(self):
        return (f"OpenRequest(model={self.model!r}, threads={self.threads}, "
                f"n_ctx={self.n_ctx}, options={self.options}, protocol={self.protocol})")


class GenerateRequest:
    """The `generate` request, parsed: prompt, max_tokens, sampling (dict), forced (None or
    list), capture (Capture), keep_logits, stop_at_eos."""

    def __init__(self, prompt, max_tokens, sampling=None, forced=None, capture=None,
                 keep_logits=False, stop_at_eos=False):
        self.prompt = list(prompt)
        self.max_tokens = max_tokens
        self.sampling = sampling or {"kind": "greedy"}
        self.forced = forced
        self.capture = capture or Capture()
        self.keep_logits = keep_logits
        self.stop_at_eos = stop_at_eos


def resolve_n_ctx(requested, n_ctx_train):
    """The protocol's rule for n_ctx: 0 means min(training context, 4096)."""
    return int(requested) if requested else min(int(n_ctx_train), 4096)


class Engine:
    """Base class of an engine served by `serve` (see the module docstring)."""

    implementation = None
    stages = STAGES
    teacher_forced = False
    decode_logits = False
    decode_stages = False

    def open(self, req):
        raise NotImplementedError("an Engine must implement open(req) -> info dict")

    def forward(self, tokens, capture):
        raise NotImplementedError

    def prefill(self, tokens, capture, all_logits):
        raise NotImplementedError

    def step(self, token, position, capture):
        raise NotImplementedError

    def generate(self, request):
        raise NotImplementedError

    def tokenize(self, text, add_bos, parse_special):
        raise NotImplementedError

    def pieces(self, ids):
        raise NotImplementedError

    def eos_ids(self):
        eos = getattr(self, "info", {}).get("eos")
        return [] if eos is None else [eos]

    def close(self):
        pass

    # What the subclass implements.
    def implements(self, name):
        return getattr(type(self), name, None) is not getattr(Engine, name, None)

    def capabilities(self):
        """The `capabilities` of the `opened` reply, derived from what the subclass
        implements. Override to declare something else (return None to declare nothing, which
        clients read as "everything")."""
        fwd = self.implements("forward")
        kv = self.implements("prefill") and self.implements("step")
        custom = self.implements("generate")
        stages = list(self.stages) if (fwd or kv) else []
        driven = not custom and (kv or fwd)
        return {
            "tokenize": self.implements("tokenize") and self.implements("pieces"),
            "forward": fwd,
            "stages": stages,
            "generate": custom or kv or fwd,
            "teacher_forced": bool(self.teacher_forced) if custom else driven,
            "decode_logits": bool(self.decode_logits) if custom else driven,
            "decode_stages": (bool(self.decode_stages) if custom else driven) and bool(stages),
        }


# ---------------------------------------------------------------------------------------
# The server.

def _expect(args, key, check, what, default=Ellipsis):
    if key not in args or (args[key] is None and default is not Ellipsis):
        if default is Ellipsis:
            raise ProtocolError(f"bad frame JSON: missing field `{key}`")
        return default
    v = args[key]
    if not check(v):
        raise ProtocolError(f"bad frame JSON: field `{key}` must be {what}, got {v!r}")
    return v


def _is_ids(v):
    return isinstance(v, list) and all(_is_uint(x) for x in v)


def _is_bool(v):
    return isinstance(v, bool)


class _Server:
    def __init__(self, factory, out, log):
        self.factory = factory
        self.out = out
        self.log = log
        self.engine = None
        self.info = None
        self.caps = None

    # -- helpers --------------------------------------------------------------------------

    def send(self, kind, value):
        write_frame(self.out, {"reply": kind, "value": value})

    def check_tokens(self, tokens, start):
        n_vocab, n_ctx = self.info["n_vocab"], self.info["n_ctx"]
        for t in tokens:
            if t >= n_vocab:
                raise InvalidRequest(f"token id {t} is outside the vocabulary (n_vocab "
                                     f"{n_vocab})")
        if start + len(tokens) > n_ctx:
            raise InvalidRequest(f"{len(tokens)} tokens from position {start} exceed the "
                                 f"context of {n_ctx} (open with a larger n_ctx)")

    def logits_rows(self, logits, n_rows, where, at_least_last=False):
        V = self.info["n_vocab"]
        a = np.asarray(logits, dtype=np.float32)
        if a.size % max(V, 1) or a.size == 0:
            raise BackendError(f"{where} returned logits of shape {list(a.shape)}: not "
                               f"rows of n_vocab {V}")
        a = a.reshape(-1, V)
        if at_least_last:
            if a.shape[0] < 1 or a.shape[0] > n_rows:
                raise BackendError(f"{where} returned {a.shape[0]} logits rows for "
                                   f"{n_rows} tokens")
        elif a.shape[0] != n_rows:
            raise BackendError(f"{where} returned logits of shape {list(a.shape)}, expected "
                               f"[{n_rows}, {V}] (one row per position)")
        return a

    def need(self, cap, op):
        if not self.caps.get(cap):
            raise InvalidRequest(f"this probe does not offer '{op}' (capabilities.{cap} is "
                                 "false)")

    # -- requests ---------------------------------------------------------------------------

    def handle(self, msg):
        if not isinstance(msg, dict) or "op" not in msg:
            raise ProtocolError("bad frame JSON: expected {\"op\": ..., \"args\": ...}")
        op = msg["op"]
        args = msg.get("args")
        if op not in ("open", "tokenize", "pieces", "forward", "generate"):
            raise ProtocolError(f"bad frame JSON: unknown variant `{op}`, expected one of "
                                "`open`, `tokenize`, `pieces`, `forward`, `generate`")
        if not isinstance(args, dict):
            raise ProtocolError(f"bad frame JSON: '{op}' needs an object as args")
        if op == "open":
            return self.open(args)
        if self.engine is None:
            raise InvalidRequest(f"'{op}' before 'open'")
        return getattr(self, "op_" + op)(args)

    def open(self, args):
        protocol = _expect(args, "protocol", _is_uint, "an integer ≥ 0", PROTOCOL_VERSION)
        if protocol > PROTOCOL_VERSION:
            raise ProtocolError(f"the client speaks protocol {protocol}, this server speaks "
                                f"{PROTOCOL_VERSION}")
        model = _expect(args, "model", lambda v: isinstance(v, str), "a string")
        req = OpenRequest(
            model,
            threads=_expect(args, "threads", _is_uint, "an integer ≥ 0", 0),
            n_ctx=_expect(args, "n_ctx", _is_uint, "an integer ≥ 0", 0),
            options=_expect(args, "options", lambda v: isinstance(v, dict) and all(
                isinstance(x, str) for x in v.values()), "an object of strings", {}),
            protocol=protocol,
        )
        self.close()
        try:
            engine = self.factory()
            info = engine.open(req)
        except LoadError as e:
            e.path = e.path or model
            raise
        except ProbeError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure to load is a load error
            traceback.print_exc(file=self.log)
            raise LoadError(_describe_exception(e), model) from None
        if info is None:
            info = getattr(engine, "info", None)
        if not isinstance(info, dict):
            raise BackendError(f"{type(engine).__name__}.open returned {type(info).__name__}, "
                               "expected a dict of ModelInfo fields")
        self.info = self.normalize_info(engine, info, req)
        engine.info = self.info
        self.caps = self.info["capabilities"] or {c: True for c in _CAP_FIELDS}
        if self.info["capabilities"] is None:
            self.caps["stages"] = list(STAGES)
        self.engine = engine
        return "opened", self.info

    def normalize_info(self, engine, info, req):
        for k in ("n_vocab", "n_ctx"):
            if not _is_uint(info.get(k)):
                raise BackendError(f"{type(engine).__name__}.open: info needs '{k}' (an "
                                   f"integer), got {info.get(k)!r}")
        n_head = int(info.get("n_head") or 0)
        out = {
            "arch": str(info.get("arch", "")),
            "name": str(info.get("name", "")),
            "n_vocab": int(info["n_vocab"]),
            "n_ctx_train": int(info.get("n_ctx_train") or info["n_ctx"]),
            "n_ctx": int(info["n_ctx"]),
            "n_embd": int(info.get("n_embd") or 0),
            "n_layer": int(info.get("n_layer") or 0),
            "n_head": n_head,
            "n_head_kv": int(info.get("n_head_kv") or n_head),
            "head_dim": int(info.get("head_dim") or
                            (int(info.get("n_embd") or 0) // n_head if n_head else 0)),
            "n_ff": int(info.get("n_ff") or 0),
            "rope_freq_base": _f32_shortest(info.get("rope_freq_base", 0.0)),
            "rms_eps": _f32_shortest(info.get("rms_eps", 0.0)),
            "bos": None if info.get("bos") is None else int(info["bos"]),
            "eos": None if info.get("eos") is None else int(info["eos"]),
            "weight_types": {str(k): int(v) for k, v in (info.get("weight_types") or {}).items()},
            "implementation": str(info.get("implementation") or engine.implementation
                                  or type(engine).__name__),
            "threads": int(info.get("threads") or req.threads or 1),
            "protocol": PROTOCOL_VERSION,
        }
        caps = info["capabilities"] if "capabilities" in info else engine.capabilities()
        if caps is not None:
            bad = [s for s in caps.get("stages", []) if s not in _STAGE_ORDER]
            if bad:
                raise BackendError(f"capabilities.stages: unknown stage(s) {bad} (valid: "
                                   f"{', '.join(STAGES)})")
            caps = {k: caps.get(k, [] if k == "stages" else False) for k in _CAP_FIELDS}
            caps["stages"] = [s for s in STAGES if s in set(caps["stages"])]
        out["capabilities"] = caps
        return out

    def close(self):
        if self.engine is not None:
            e, self.engine, self.info = self.engine, None, None
            try:
                e.close()
            except Exception:  # noqa: BLE001 - closing must not take the server down
                traceback.print_exc(file=self.log)

    def op_tokenize(self, args):
        self.need("tokenize", "tokenize")
        text = _expect(args, "text", lambda v: isinstance(v, str), "a string")
        add_bos = _expect(args, "add_bos", _is_bool, "a boolean")
        special = _expect(args, "parse_special", _is_bool, "a boolean")
        ids = [int(t) for t in self.engine.tokenize(text, add_bos, special)]
        return "tokens", ids

    def op_pieces(self, args):
        self.need("tokenize", "pieces")
        ids = _expect(args, "ids", _is_ids, "a list of token ids")
        for t in ids:
            if t >= self.info["n_vocab"]:
                raise InvalidRequest(f"token id {t} is outside the vocabulary (n_vocab "
                                     f"{self.info['n_vocab']})")
        pieces = self.engine.pieces(ids)
        out = []
        for p in pieces:
            if isinstance(p, str):
                p = p.encode("utf-8")
            out.append(list(bytes(p)))
        if len(out) != len(ids):
            raise BackendError(f"pieces returned {len(out)} pieces for {len(ids)} ids")
        return "pieces", out

    def run_forward(self, tokens, capture, where="forward"):
        cap = capture.at(0, len(tokens))
        res = self.engine.forward(list(tokens), cap)
        extra = []
        if isinstance(res, tuple):
            res, extra = res
        logits = self.logits_rows(res, len(tokens), where)
        stages = _stage_entries(list(cap.recorded) + list(extra or []), capture, self.info,
                                where)
        return logits, stages

    def op_forward(self, args):
        self.need("forward", "forward")
        tokens = _expect(args, "tokens", _is_ids, "a list of token ids")
        capture = Capture.from_json(args.get("capture"))
        if not tokens:
            raise InvalidRequest("forward of an empty token list")
        self.check_tokens(tokens, 0)
        logits, stages = self.run_forward(tokens, capture)
        return "forward", {"n_vocab": self.info["n_vocab"], "logits": logits,
                           "stages": stages}

    def op_generate(self, args):
        self.need("generate", "generate")
        prompt = _expect(args, "prompt", _is_ids, "a list of token ids")
        max_tokens = _expect(args, "max_tokens", _is_uint, "an integer ≥ 0")
        sampling = _expect(args, "sampling", lambda v: isinstance(v, dict) and "kind" in v,
                           "an object with a kind", {"kind": "greedy"})
        forced = _expect(args, "forced", _is_ids, "null or a list of token ids", None)
        req = GenerateRequest(
            prompt, max_tokens, sampling, forced, Capture.from_json(args.get("capture")),
            _expect(args, "keep_logits", _is_bool, "a boolean", False),
            _expect(args, "stop_at_eos", _is_bool, "a boolean", False))
        sampler = Sampler(sampling)
        if forced is not None and not self.caps.get("teacher_forced"):
            raise InvalidRequest("this probe cannot teacher-force (capabilities."
                                 "teacher_forced is false): send generate without 'forced'")
        e = self.engine
        if e.implements("generate"):
            return self.custom_generate(req)
        return "generation", self.drive(req, sampler)

    def custom_generate(self, req):
        if not req.prompt:
            raise InvalidRequest("generate with an empty prompt")
        self.check_tokens(req.prompt, 0)
        t0 = time.perf_counter()
        res = self.engine.generate(req)
        if isinstance(res, dict):
            for t in res.get("tokens", []):
                self.send("token", int(t))
            return "generation", res
        tokens = []
        for t in res:
            t = int(t)
            if not 0 <= t < self.info["n_vocab"]:
                raise BackendError(f"generate produced token id {t}, outside the vocabulary "
                                   f"(n_vocab {self.info['n_vocab']})")
            tokens.append(t)
            self.send("token", t)
            if len(tokens) >= req.max_tokens:
                break
        dt = time.perf_counter() - t0
        steps = [{"position": len(req.prompt) + i - 1, "input": tokens[i - 1],
                  "chosen": tokens[i], "logits": None, "stages": []}
                 for i in range(1, len(tokens))]
        empty = np.zeros(0, dtype=np.float32)
        return "generation", {
            "prefill": {"n_vocab": self.info["n_vocab"], "logits": empty, "stages": []},
            "first": tokens[0] if tokens else 0, "steps": steps, "tokens": tokens,
            "prefill_seconds": 0.0, "decode_seconds": dt}

    def drive(self, req, sampler):
        """drive_generation (probe/src/lib.rs), token for token."""
        if not req.prompt:
            raise InvalidRequest("generate with an empty prompt")
        steps_wanted = max(req.max_tokens - 1, 0)
        self.check_tokens(req.prompt, 0)
        if req.forced is not None:
            self.check_tokens(req.forced, len(req.prompt))
        n_ctx = self.info["n_ctx"]
        if len(req.prompt) + steps_wanted > n_ctx:
            raise InvalidRequest(f"prompt {len(req.prompt)} + {steps_wanted} decode steps "
                                 f"exceed the context of {n_ctx}")
        e = self.engine
        kv = e.implements("prefill") and e.implements("step")
        decode_cap = req.capture if self.caps.get("decode_stages") else Capture()
        t0 = time.perf_counter()
        if kv:
            cap = req.capture.at(0, len(req.prompt))
            rows = e.prefill(list(req.prompt), cap, req.keep_logits)
            logits = self.logits_rows(rows, len(req.prompt), "prefill",
                                      at_least_last=not req.keep_logits)
            pstages = _stage_entries(cap.recorded, req.capture, self.info, "prefill")
        else:
            logits, pstages = self.run_forward(req.prompt, req.capture, "forward (prefill)")
        if not req.keep_logits:
            logits = logits[-1:]
        first = sampler.choose(logits[-1])
        if req.max_tokens > 0:
            self.send("token", first)
        prefill_seconds = time.perf_counter() - t0

        t1 = time.perf_counter()
        tokens, steps = [first], []
        chosen = first
        seq = list(req.prompt)
        eos = set(e.eos_ids() or [])
        for i in range(steps_wanted):
            position = len(req.prompt) + i
            if req.max_tokens == 0 or (req.stop_at_eos and chosen in eos):
                break
            if req.forced is not None:
                if i >= len(req.forced):
                    break
                inp = req.forced[i]
            else:
                inp = chosen
            if kv:
                cap = decode_cap.at(position, 1)
                row = e.step(inp, position, cap)
                row = self.logits_rows(row, 1, f"step at position {position}")[0]
                sstages = _stage_entries(cap.recorded, decode_cap, self.info,
                                         f"step at position {position}")
            else:
                seq.append(inp)
                here = decode_cap.positions is None or position in decode_cap.positions
                only_here = Capture(decode_cap.stages if here else (), decode_cap.layers,
                                    [position])
                rows, sstages = self.run_forward(seq, only_here,
                                                 f"forward (decode position {position})")
                row = rows[-1]
            chosen = sampler.choose(row)
            self.send("token", chosen)
            tokens.append(chosen)
            steps.append({"position": position, "input": inp, "chosen": chosen,
                          "logits": row.copy() if req.keep_logits else None,
                          "stages": sstages})
        return {
            "prefill": {"n_vocab": self.info["n_vocab"], "logits": logits, "stages": pstages},
            "first": first,
            "steps": steps,
            "tokens": [] if req.max_tokens == 0 else tokens,
            "prefill_seconds": prefill_seconds,
            "decode_seconds": time.perf_counter() - t1,
        }

    # -- the loop ---------------------------------------------------------------------------

    def reply_to(self, js, blobs):
        try:
            msg = parse_frame(js, blobs)
            kind, value = self.handle(msg)
        except ProbeError as e:
            kind, value = "error", {"kind": e.kind, "detail": e.detail()}
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 - the loop must survive the engine
            traceback.print_exc(file=self.log)
            kind, value = "error", {"kind": "backend", "detail": _describe_exception(e)}
        try:
            self.send(kind, value)
        except (ValueError, TypeError) as e:
            # The reply itself could not be encoded (a non-float in a blob, say).
            traceback.print_exc(file=self.log)
            self.send("error", {"kind": "backend",
                                "detail": f"cannot encode the '{kind}' reply: "
                                          f"{_describe_exception(e)}"})


_PROTOCOL_OUT = None


def protect_stdout():
    """Moves the protocol's stdout aside and points fd 1 and sys.stdout at stderr, so that
    prints from the engine (Python or C) cannot corrupt frames; returns the binary file that
    frames go to. `serve` calls it; call it yourself first thing if your imports print (a
    byte on stdout before it is called corrupts the first frame). Idempotent."""
    global _PROTOCOL_OUT
    if _PROTOCOL_OUT is None:
        sys.stdout.flush()
        proto_fd = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        _PROTOCOL_OUT = os.fdopen(proto_fd, "wb", buffering=1 << 20)
    return _PROTOCOL_OUT


def serve(factory, stdin=None, stdout=None, log=None):
    """Serves the wire protocol until end of input. See the module docstring. `stdin` and
    `stdout` default to the process's (protected, see `protect_stdout`); `log` (default
    stderr) receives the tracebacks of failed requests."""
    if stdout is None:
        out = protect_stdout()
    else:
        out = stdout
    if stdin is None:
        inp = sys.stdin.buffer
        sys.stdin = open(os.devnull, "r")  # the engine must not read the protocol's input
    else:
        inp = stdin
    log = sys.stderr if log is None else log
    server = _Server(factory, out, log)
    status = 0
    try:
        while True:
            try:
                raw = read_raw_frame(inp)
            except FrameError as e:
                print(f"bitprobe_adapter: broken input stream: {e}", file=log)
                status = 2
                break
            if raw is None:
                break
            server.reply_to(*raw)
    except BrokenPipeError:
        print("bitprobe_adapter: the client closed the connection", file=log)
        status = 3
    finally:
        server.close()
        try:
            out.flush()
        except (BrokenPipeError, ValueError):
            pass
    return status


# ---------------------------------------------------------------------------------------
# A client, for tests (and for trying a server by hand).

class _TimedReader:
    """A binary reader on a pipe whose reads give up after `timeout` seconds."""

    def __init__(self, f, timeout):
        self.fd = f.fileno()
        self.timeout = timeout
        self.buf = bytearray()

    def read(self, n):
        deadline = time.monotonic() + self.timeout
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply within {self.timeout} s")
            r, _, _ = select.select([self.fd], [], [], left)
            if not r:
                continue
            chunk = os.read(self.fd, max(n - len(self.buf), 1 << 16))
            if not chunk:
                break
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


class Client:
    """Runs a server command and talks to it: `request(op, args)` returns the reply value
    (raising RemoteError on an `error` reply); streamed `token` frames are kept in
    `self.streamed`. Every read gives up after `timeout` seconds."""

    def __init__(self, cmd, timeout=60.0, env=None, cwd=None):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, cwd=cwd)
        self.reader = _TimedReader(self.proc.stdout, timeout)
        self.streamed = []
        self._stderr = []
        import threading
        self._t = threading.Thread(target=self._drain, daemon=True)
        self._t.start()

    def _drain(self):
        for line in self.proc.stderr:
            self._stderr.append(line.decode("utf-8", "replace"))

    @property
    def stderr(self):
        return "".join(self._stderr)

    def send_raw(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def read_reply(self):
        """The next non-token reply as (kind, value)."""
        while True:
            msg = read_frame(self.reader)
            if msg is None:
                raise EOFError(f"server closed its output; stderr:\n{self.stderr[-3000:]}")
            if msg.get("reply") == "token":
                self.streamed.append(msg["value"])
                continue
            return msg["reply"], msg.get("value")

    def request(self, op, args):
        self.streamed = []
        self.send_raw(encode_frame({"op": op, "args": args}))
        kind, value = self.read_reply()
        if kind == "error":
            raise RemoteError(value.get("kind"), value.get("detail"))
        return value

    def open(self, model, threads=1, n_ctx=0, options=None, protocol=PROTOCOL_VERSION):
        return self.request("open", {"model": os.fspath(model), "threads": threads,
                                     "n_ctx": n_ctx, "options": options or {},
                                     "protocol": protocol})

    def forward(self, tokens, stages=(), layers=None, positions=None):
        return self.request("forward", {"tokens": list(tokens), "capture": {
            "stages": list(stages), "layers": layers, "positions": positions}})

    def generate(self, prompt, max_tokens, forced=None, stages=(), keep_logits=False,
                 stop_at_eos=False, sampling=None):
        return self.request("generate", {
            "prompt": list(prompt), "max_tokens": max_tokens,
            "sampling": sampling or {"kind": "greedy"}, "forced": forced,
            "capture": {"stages": list(stages), "layers": None, "positions": None},
            "keep_logits": keep_logits, "stop_at_eos": stop_at_eos})

    def close(self, timeout=10.0):
        """Ends input and waits for the server; returns its exit status."""
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None
        finally:
            self._t.join(1.0)
            for f in (self.proc.stdout, self.proc.stderr):
                try:
                    f.close()
                except OSError:
                    pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.close()
