#!/usr/bin/env python3
"""pytritium (PyPI `pytritium` 1.1.0rc2, a compiled Rust BitNet engine) as a bitprobe probe.

Run it as a probe; stdin/stdout carry the wire protocol (adapters/python/bitprobe_adapter.py):

    python3 adapters/python/tritium_probe.py

The wheel is installed by scripts/setup.d/35-pytritium.sh into .cache/python/tritium (pinned by
version and sha256); this file puts that folder on sys.path itself. Nothing of pytritium is
committed.

What pytritium offers, and so what this probe declares
------------------------------------------------------

The whole inference API of the wheel is ``tritium.Model.load(path)`` and
``Model.generate(token_ids, max_new_tokens, greedy=True, eos=128001) -> [ids]``: greedy
generation from token ids. ``generate`` resets its KV cache on every call, prefills the prompt
in one batch, then decodes one token at a time; it returns the generated ids (not the prompt)
and stops *before* an id equal to ``eos`` (that id is not returned). There is no tokenizer (the
GGUF's tokenizer keys are not read: a file with placeholder token strings loads), no logits, no
stage tensors, no forward pass and no thread setting in the Python API (the compute runs on
rayon's global pool). So the capabilities are:

- ``generate``: yes, greedy only (a seeded-sampling request is refused).
- ``teacher_forced``: no by default. The API has no way to feed a chosen token through its KV
  cache. With the option ``teacher_forcing = "reprefill"`` the probe emulates it: decode step
  i is answered by a fresh ``generate(prompt + forced[:i+1], 1)``, i.e. by pytritium's batched
  prompt pass over the whole prefix, not by its one-token decode path. That tests which token
  it picks after a given prefix (useful after a first divergence), but never its KV-cache
  decode path; it costs one prompt pass per step. (Measured: on 45 forged tiny-preset runs of
  16 tokens the re-prefill choices equal the decode path's, token for token.)
- ``decode_logits``, ``forward``, ``stages``, ``tokenize``: no. bitprobe tokenizes with the
  reference and feeds ids; divergences are found at the token level only.

Threads: ``threads`` in ``open`` sets ``RAYON_NUM_THREADS`` before pytritium first computes
(0 = rayon's default, one per available CPU). rayon's global pool is built once per process, so
a later ``open`` in the same server cannot change it; the ``opened`` reply says the count in
force. (Measured: RAYON_NUM_THREADS=1 gives one worker thread; the tokens are the same at 1 and
2 threads.)

Model metadata (n_vocab, shapes, bos/eos, weight types) is read from the GGUF with
gguf_reader.py, since pytritium exposes none. What pytritium 1.1.0rc2 loads (measured on
bitprobe's forged presets): arch ``bitnet-b1.58`` *and* ``bitnet`` with I2_S, TQ1_0 or TQ2_0
projections; it refuses F16/F32 projections ("unsupported ggml tensor type-id") and arch
``bitnet-25``. It runs the ReLU² FFN whatever the arch says — on an arch ``bitnet`` (SiLU)
file that is a real difference from bitnet.cpp, which bitprobe reports; this probe does not
hide it (and does not refuse the file: the point is to measure the engine as shipped).

A load failure becomes a ``load`` error naming the file and pytritium's reason.

Timing: pytritium's ``generate`` cannot be split into prefill and decode, so the probe times a
prompt-only call (``generate(prompt, 0)``: prefill, no decode) and reports it as
``prefill_seconds``; ``decode_seconds`` is the full generation call minus that. pytritium runs
one decode forward after every returned token (also after the last one), so N tokens cost N
decode forwards where bitprobe counts N-1 steps: decode tok/s is understated by (N-1)/N.
Set the option ``timing = "off"`` to skip the extra prompt pass (both times are then 0).

Options (in ``open``'s ``options``, or as defaults on the command line, for probes.toml):
``teacher_forcing = off|reprefill`` (``--teacher-forcing``), ``timing = on|off``
(``--timing``). Other keys are refused.
"""

import argparse
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bitprobe_adapter as bp  # noqa: E402  (puts .cache/python/numpy on sys.path)
import numpy as np  # noqa: E402
from gguf_reader import GGML_TYPES, GGUFError, GGUFFile, bitnet_info  # noqa: E402

PYTRITIUM_VERSION = "1.1.0rc2"
# A u32 no vocabulary contains: passed as `eos` so that pytritium never stops by itself (the
# probe applies bitprobe's stop_at_eos semantics, which keep the EOS token, itself).
NO_EOS = 0xFFFFFFFF
OPTIONS = {"teacher_forcing": ("off", "reprefill"), "timing": ("on", "off")}

_tritium = None
_threads_in_force = None


def _import_tritium(path):
    """Imports pytritium from .cache/python/tritium (or wherever it is installed)."""
    global _tritium
    if _tritium is None:
        try:
            import tritium  # noqa: F401
        except ImportError:
            bp.use_cache_packages("tritium")
            try:
                import tritium  # noqa: F401
            except ImportError as e:
                raise bp.LoadError(
                    f"pytritium is not installed ({e}): run scripts/setup.sh (its step "
                    f"scripts/setup.d/35-pytritium.sh installs pytritium {PYTRITIUM_VERSION} "
                    "into .cache/python/tritium)", path) from None
        _tritium = tritium
    return _tritium


def _set_threads(threads):
    """rayon reads RAYON_NUM_THREADS once, when its global pool is first used."""
    global _threads_in_force
    if _threads_in_force is None:
        if threads:
            os.environ["RAYON_NUM_THREADS"] = str(threads)
        env = os.environ.get("RAYON_NUM_THREADS", "")
        if env.isdigit() and int(env) > 0:
            _threads_in_force = int(env)
        else:
            try:
                _threads_in_force = len(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                _threads_in_force = os.cpu_count() or 1
    return _threads_in_force


class TritiumEngine(bp.Engine):
    """pytritium's greedy generation served as a bitprobe probe (see the module docstring)."""

    implementation = f"pytritium {PYTRITIUM_VERSION}"
    stages = ()

    def __init__(self, defaults=None):
        self.defaults = dict(defaults or {})
        self.model = None
        self.reprefill = False
        self.timing = True
        self.eos = []

    def capabilities(self):
        return {"tokenize": False, "forward": False, "stages": [], "generate": True,
                "teacher_forced": self.reprefill, "decode_logits": False,
                "decode_stages": False}

    def open(self, req):
        for key, value in req.options.items():
            if key not in OPTIONS:
                raise bp.InvalidRequest(f"pytritium probe: unknown option '{key}' (known: "
                                        f"{', '.join(sorted(OPTIONS))})")
            if value not in OPTIONS[key]:
                raise bp.InvalidRequest(f"pytritium probe: option {key} = '{value}' (allowed: "
                                        f"{', '.join(OPTIONS[key])})")
        opts = {**self.defaults, **req.options}
        self.reprefill = opts.get("teacher_forcing", "off") == "reprefill"
        self.timing = opts.get("timing", "on") == "on"
        path = req.model
        try:
            g = GGUFFile(path)
            info = bitnet_info(g, req.n_ctx)
        except GGUFError as e:
            raise bp.LoadError(str(e), path) from None
        if info["n_ctx"] > info["n_ctx_train"]:
            # pytritium sizes its KV cache from the file's context_length and has no setting.
            raise bp.LoadError(f"n_ctx {info['n_ctx']} exceeds the model's training context "
                               f"{info['n_ctx_train']}, and pytritium's KV cache is sized by "
                               "the file's context_length (no n_ctx setting)", path)
        eot = g.get("tokenizer.ggml.eot_token_id")
        self.eos = [int(t) for t in (info["eos"], eot) if t is not None]
        tritium = _import_tritium(path)
        threads = _set_threads(req.threads)
        try:
            self.model = tritium.Model.load(os.fspath(path))
        except (ValueError, RuntimeError, OSError) as e:
            raise bp.LoadError(f"pytritium {PYTRITIUM_VERSION} cannot load the model: "
                               f"{_reason(e, path, g)}", path) from None
        finally:
            del g
        info.pop("n_rot", None)
        info["implementation"] = self.implementation + (
            " (teacher forcing by re-prefill)" if self.reprefill else "")
        info["threads"] = threads
        return info

    def eos_ids(self):
        return self.eos

    def _generate(self, ids, n):
        try:
            out = self.model.generate(list(ids), n, eos=NO_EOS)
        except (ValueError, RuntimeError) as e:
            raise bp.BackendError(f"pytritium generate failed: {e}") from None
        out = [int(t) for t in out]
        if len(out) != n:
            raise bp.BackendError(f"pytritium generate returned {len(out)} tokens, asked for "
                                  f"{n} (with eos disabled)")
        return out

    def generate(self, req):
        if req.sampling.get("kind") != "greedy":
            raise bp.InvalidRequest(f"pytritium generates greedily only; sampling kind "
                                    f"'{req.sampling.get('kind')}' is not available")
        if req.keep_logits:
            raise bp.InvalidRequest("pytritium gives no logits (capabilities.decode_logits is "
                                    "false): send generate with keep_logits false")
        if req.capture.stages:
            raise bp.InvalidRequest("pytritium gives no stage tensors (capabilities.stages is "
                                    "empty): send generate without a capture")
        n_ctx = self.info["n_ctx"]
        steps_wanted = max(req.max_tokens - 1, 0)
        if len(req.prompt) + steps_wanted > n_ctx:
            raise bp.InvalidRequest(f"prompt {len(req.prompt)} + {steps_wanted} decode steps "
                                    f"exceed the context of {n_ctx}")
        prefill_s = 0.0
        if self.timing and req.max_tokens > 0:
            t0 = time.perf_counter()
            self._generate(req.prompt, 0)
            prefill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if req.forced is not None:
            if len(req.prompt) + len(req.forced) > n_ctx:
                raise bp.InvalidRequest(f"{len(req.forced)} forced tokens from position "
                                        f"{len(req.prompt)} exceed the context of {n_ctx}")
            tokens, inputs = self._forced(req)
        elif req.max_tokens == 0:
            tokens, inputs = [], []
        else:
            tokens = self._generate(req.prompt, req.max_tokens)
            if req.stop_at_eos:
                for i, t in enumerate(tokens):
                    if t in self.eos:
                        tokens = tokens[:i + 1]
                        break
            inputs = tokens[:-1]
        total = time.perf_counter() - t0
        decode_s = max(total - prefill_s, 0.0) if self.timing else 0.0
        steps = [{"position": len(req.prompt) + i, "input": inputs[i], "chosen": tokens[i + 1],
                  "logits": None, "stages": []} for i in range(len(tokens) - 1)]
        return {
            "prefill": {"n_vocab": self.info["n_vocab"],
                        "logits": np.zeros(0, dtype=np.float32), "stages": []},
            "first": tokens[0] if tokens else 0,
            "steps": steps,
            "tokens": tokens,
            "prefill_seconds": prefill_s,
            "decode_seconds": decode_s,
        }

    def _forced(self, req):
        """Teacher forcing by re-prefill: step i = a fresh generate over prompt + forced[:i+1]."""
        if req.max_tokens == 0:
            return [], []
        tokens = self._generate(req.prompt, 1)
        inputs = []
        for i in range(req.max_tokens - 1):
            if req.stop_at_eos and tokens[-1] in self.eos:
                break
            if i >= len(req.forced):
                break
            inputs.append(req.forced[i])
            tokens += self._generate(list(req.prompt) + list(req.forced[:i + 1]), 1)
        return tokens, inputs


def _reason(e, path, g):
    """pytritium's message without a repeat of the path it names, and for an unsupported
    tensor type the type's name and the file's tensors of that type."""
    msg = str(e).strip()
    prefix = f"cannot load `{os.fspath(path)}`: "
    if msg.startswith(prefix):
        msg = msg[len(prefix):]
    m = re.search(r"unsupported ggml tensor type-id: (\d+)", msg)
    if m:
        tid = int(m.group(1))
        name = GGML_TYPES.get(tid, (f"type {tid}",))[0]
        of_type = [t.name for t in g.tensors.values() if t.type_id == tid]
        proj = [n for n in of_type if not n.endswith("norm.weight")
                and n != "token_embd.weight"]
        shown, what = (proj, "projections") if proj else (of_type, "tensors")
        where = (f"; the file's {name} {what} include {', '.join(shown[:3])}"
                 f"{', …' if len(shown) > 3 else ''} ({len(shown)} in all)") if shown else ""
        msg += (f" ({name}{where}). pytritium {PYTRITIUM_VERSION} takes ternary projections "
                "only (I2_S, TQ1_0, TQ2_0), with F32/F16 norms and token embeddings")
    return msg


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="pytritium (PyPI pytritium 1.1.0rc2) as a bitprobe probe: the wire protocol "
                    "on stdin/stdout. The flags set defaults; an `open` request's options "
                    "(teacher_forcing, timing) override them.")
    ap.add_argument("--teacher-forcing", choices=OPTIONS["teacher_forcing"], default="off",
                    help="declare teacher forcing, emulated by one fresh prompt pass per step "
                         "(default: off)")
    ap.add_argument("--timing", choices=OPTIONS["timing"], default="on",
                    help="time a separate prompt pass to split prefill/decode seconds "
                         "(default: on)")
    args = ap.parse_args(argv)
    defaults = {"teacher_forcing": args.teacher_forcing, "timing": args.timing}
    return bp.serve(lambda: TritiumEngine(defaults))


if __name__ == "__main__":
    sys.exit(main())
