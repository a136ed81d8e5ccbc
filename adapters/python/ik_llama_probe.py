#!/usr/bin/env python3
"""bitprobe probe for ik_llama.cpp (PyPI ``ik-llama-cpp-python`` 0.1.5, AVX2 build).

Run as a wire-protocol server on stdin/stdout: ``python3 adapters/python/ik_llama_probe.py``.
The ctypes layer is ``ik_llama_backend.py``, the protocol ``bitprobe_adapter.py``. Needs
``scripts/setup.sh`` (30-ik-llama.sh installs the pinned wheel into .cache/python/ik-llama,
20-python-numpy.sh numpy into .cache/python/numpy). CPython 3.11 on x86-64 with AVX2.

Capabilities (the ``opened`` reply):
- tokenize / pieces: ik_llama.cpp's own tokenizer (``llama_tokenize``; ``llama_token_to_piece``
  with special = true, lstrip 0, as the oracle). Identical to bitnet.cpp's on the forged
  vocabularies (byte-level and Llama 3, with and without ``tokenizer.ggml.pre``).
- forward: one pass from an empty KV cache, logits at EVERY position (``logits`` set on every
  batch row), in chunks of ``n_ubatch`` tokens through the cache (bit-identical to one batch).
- generate: ik_llama.cpp's KV cache, one ``llama_decode`` per token, driven by the library
  (greedy or its seeded sampler), with teacher forcing, per-step logits and per-step stages.
- stages: all 18 for both graphs, ``build_bitnet`` (arch ``bitnet``) and ``build_bitnet_158``
  (``bitnet-b1.58``, ``bitnet-25``). None is missing. The name map (ours ← its eval-callback
  node) is ``ik_llama_backend.STAGE_NODES``; the surprises:
  - ``build_bitnet`` names TWO nodes ``kqv_out-L``: the raw attention output (our
    ``kqv_out``) and, after attn_sub_norm and Wo, the projected one (our ``attn_output``).
  - the FFN product act(gate)·up is ``ffn_gate_par-L`` (``build_bitnet``) / ``ffn_out-L``
    (``build_bitnet_158``).
  - in ``build_bitnet_158`` the residual is renamed ``ffn_norm-L`` (llm_build_ffn calls
    ``cb(input, "ffn_norm")`` on its input) and the real RMSNorm·gamma node is unnamed: our
    ``ffn_inp`` is the ADD node named ``ffn_norm-L``, our ``ffn_norm`` the FUSED_RMS_NORM
    node that consumes it (found by its src pointer).
  - ``Qcur-L`` / ``Kcur-L`` name the projection and the RoPE output; ours is the ROPE node.
  Caveat (not testable here: no forged model has ``*.scale`` tensors): ``build_bitnet``
  folds the V and up-projection scales into the sub-norms' eps instead of multiplying, so
  with such tensors its ``kqv_out``, ``ffn_up`` and ``ffn_sub_out`` would be ours divided by
  that scale (the RMSNorm after them makes the rest equal).

Models (options below): ik_llama.cpp cannot compute I2_S (it loads it with "unknown type
i2_s" and its I2_S matmuls write nothing: the tied head echoes the input) and has no TQ1_0 /
TQ2_0 at all (loading such a file kills it with SIGFPE). With the default ``convert=auto`` an
I2_S file is converted on open by the wheel's own ``llama-quantize --allow-requantize
--token-embedding-type <its type> IN OUT iq2_bn`` into ``.cache/ik-llama/converted/<sha256 of
the input>-iq2_bn-keepemb-ik0.1.5.gguf`` (once per input file; ``weight_types`` are those of the file
that ran, and ``implementation`` says "ran a converted model: I2_S -> IQ2_BN …"). Why on open
rather than as a separate step: the harness hands every probe the same forged file, and a
probe that refused the suite's I2_S models would test nothing; the conversion is lossless
(ternary codes, one scale per row; measured: ik_llama.cpp's IQ2_BN matmul is closer to the
exact float product than bitnet.cpp's own I2_S matmul), deterministic, cached, and visible in
every report. ``--token-embedding-type`` matters: without it llama-quantize also turns the
F16 embedding (the tied output head) into Q6_K. IQ2_BN needs rows of >= 512 values (narrower
ones abort the process in the first decode, iqk_quantize.cpp:503), so the tiny I2_S presets
(256-wide rows) are refused with a load error unless opened with ``convert=f16``. TQ files are
refused with a load error. F32/F16 files load as they are.

Options (strings; the same can be given on the command line as defaults, ``--convert MODE``,
``--flash-attn 0|1``, ``--n-ubatch N``, for a probes.toml entry):
- ``convert``: ``auto`` (default, above); ``f16`` (dequantize I2_S to F16: ik_llama.cpp's F16
  matmuls, not its ternary kernels; the only way to run the tiny I2_S presets); ``iq2_bn``
  (convert any file); ``off`` (load as is: shows what ik_llama.cpp does with I2_S).
- ``flash_attn``: ``0`` / ``1``; default ik_llama.cpp's own context default (1).
- ``n_ubatch``: tokens per ``llama_decode`` (default 512).
``threads`` 0 means 1. The KV cache is ik_llama.cpp's default F16.

Measured against the vendored bitnet.cpp (1 thread, prompt "The quick brown fox jumps over the
lazy dog", 16 greedy tokens; worst NMSE over every stage, layer and position; KL per
position, mean): tiny-f32/f16 (both archs): stages <= 2.8e-6, logits <= 1.5e-6, greedy equal
(flash attention accounts for most of it: 7e-8 with flash_attn=0); small-llama3-f32/f16:
logits 7.7e-8, greedy equal; small-llama3-i2s -> IQ2_BN: blk.0.attn_q 7.5e-5, logits 2.1e-3
worst position, KL 3.5e-3, top-1 9/10, greedy parts at token 2 on a near-tie (bitnet.cpp's
margin 0.06); 2b4t-i2s -> IQ2_BN: blk.0.attn_q 9.3e-5 growing steadily through the 30 layers
to logits 1.05e-2, KL 1.8e-2, top-1 6/10, greedy parts at token 2 (margins 0.11 / 0.04). The
spread is activation quantization (bitnet.cpp: int8 per row for I2_S; ik_llama.cpp: Q8_K64
for IQ2_BN) amplified by depth, not a fault of either.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bitprobe_adapter as bp  # noqa: E402  (puts .cache/python/numpy on sys.path)
import ik_llama_backend as ik  # noqa: E402

def _bool_opt(opts, key):
    v = opts.get(key)
    if v is None:
        return None
    if v in ("0", "false", "no", "off"):
        return False
    if v in ("1", "true", "yes", "on"):
        return True
    raise bp.InvalidRequest(f"ik_llama: option {key}={v!r}: expected 0 or 1")


class IkLlamaEngine(bp.Engine):
    implementation = "ik_llama.cpp"
    teacher_forced = True
    decode_logits = True
    decode_stages = True

    def __init__(self, defaults=None):
        self.m = None
        self.defaults = dict(defaults or {})   # option defaults from the command line

    # -- open / close -----------------------------------------------------------------------

    def open(self, req):
        opts = dict(self.defaults)
        opts.update(req.options)
        known = {"convert", "flash_attn", "n_ubatch"}
        bad = sorted(set(opts) - known)
        if bad:
            raise bp.InvalidRequest(f"ik_llama: unknown option(s) {', '.join(bad)} (known: "
                                    f"{', '.join(sorted(known))})")
        n_ubatch = opts.get("n_ubatch", "512")
        if not n_ubatch.isdigit() or int(n_ubatch) < 1:
            raise bp.InvalidRequest(f"ik_llama: option n_ubatch={n_ubatch!r}: expected an "
                                    "integer ≥ 1")
        if not os.path.isfile(req.model):
            raise bp.LoadError(f"{req.model}: no such file", req.model)
        try:
            self.m = m = ik.IkModel(req.model, threads=req.threads or 1, n_ctx=req.n_ctx,
                                    convert=opts.get("convert", "auto"),
                                    flash_attn=_bool_opt(opts, "flash_attn"),
                                    n_ubatch=int(n_ubatch))
        except ik.IkError as e:
            raise _err(e, req.model) from None
        try:
            return self._info(m)
        except BaseException:
            self.close()
            raise

    def _info(self, m):
        import gguf_reader
        info = gguf_reader.bitnet_info(gguf_reader.GGUFFile(m.path), m.n_ctx)
        info.pop("n_rot", None)
        info["weight_types"] = ik.weight_types(m.path)
        info["n_vocab"] = m.n_vocab
        info["n_ctx"] = m.n_ctx
        bos, eos, eot = m.special()
        info["bos"], info["eos"] = bos, eos
        self.eos = [t for t in (eos, eot) if t is not None]
        cp = m.context_params()
        parts = [f"ik_llama.cpp ({ik.WHEEL}, AVX2 build, {m.desc()})",
                 f"flash_attn={int(cp['flash_attn'])} n_ubatch={cp['n_ubatch']} "
                 f"kv_cache=F16"]
        if m.conversion:
            parts.append(m.conversion)
        elif any(t == "I2_S" for t in info["weight_types"]):
            parts.append("UNCONVERTED I2_S (convert=off): ik_llama.cpp has no I2_S matmul "
                         "(its I2_S products are never written)")
        info["implementation"] = "; ".join(parts)
        info["threads"] = m.threads
        self.stages = ik.supported_stages(m.arch)
        return info

    def close(self):
        if self.m is not None:
            self.m.close()
            self.m = None

    # -- tokens -----------------------------------------------------------------------------

    def tokenize(self, text, add_bos, parse_special):
        return self.m.tokenize(text, add_bos, parse_special)

    def pieces(self, ids):
        return [self.m.piece(i) for i in ids]

    def eos_ids(self):
        return list(self.eos)

    # -- compute ----------------------------------------------------------------------------

    def _want(self, capture):
        return {s for s in capture.stages if s in self.stages}

    def _put(self, capture, stages):
        for (s, layer), rows in stages.items():
            for p in sorted(rows):
                capture.put(s, layer, rows[p][None, :], pos0=p)

    def forward(self, tokens, capture):
        try:
            logits, stages = self.m.forward(tokens, self._want(capture), capture.layers,
                                            capture.positions)
        except ik.IkError as e:
            raise _err(e) from None
        self._put(capture, stages)
        return logits

    def prefill(self, tokens, capture, all_logits):
        # The decode steps run in the prefill's context: the capture context whenever the
        # request wants stages at all, even if none at prompt positions.
        try:
            logits, stages = self.m.prefill(tokens, self._want(capture), capture.layers,
                                            capture.positions, all_logits=all_logits)
        except ik.IkError as e:
            raise _err(e) from None
        self._put(capture, stages)
        return logits

    def step(self, token, position, capture):
        want = self._want(capture)
        if capture.positions is not None and position not in capture.positions:
            want = set()
        try:
            row, stages = self.m.step(token, position, want, capture.layers)
        except ik.IkError as e:
            raise _err(e) from None
        self._put(capture, stages)
        return row


def _err(e, path=""):
    if e.kind == "load":
        return bp.LoadError(e.message, e.path or path)
    if e.kind == "invalid_request":
        return bp.InvalidRequest(e.message)
    return bp.BackendError(e.message)


def main(argv):
    """Command line: option defaults for every `open` (a request's own options win), so that
    a probes.toml entry can fix them, e.g. ``ik_llama_probe.py --convert f16``."""
    import argparse
    ap = argparse.ArgumentParser(description="bitprobe wire-protocol server for ik_llama.cpp")
    ap.add_argument("--convert", choices=("auto", "f16", "iq2_bn", "off"))
    ap.add_argument("--flash-attn", choices=("0", "1"))
    ap.add_argument("--n-ubatch")
    a = ap.parse_args(argv)
    defaults = {k: v for k, v in (("convert", a.convert), ("flash_attn", a.flash_attn),
                                  ("n_ubatch", a.n_ubatch)) if v is not None}
    return bp.serve(lambda: IkLlamaEngine(defaults))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
