"""The adapter library on its own: framing, the request loop, capabilities, generation."""

import os as _os
import sys as _sys
_sys.path.insert(0, _os.path.dirname(_os.path.abspath(__file__)))  # for `support`

import io
import math
import struct
import subprocess
import sys
import textwrap
import unittest

from support import ADAPTER_DIR, bp, np


def frames(*msgs):
    return b"".join(bp.encode_frame(m) for m in msgs)


def req(op, **args):
    return {"op": op, "args": args}


def read_all(data):
    f = io.BytesIO(data)
    out = []
    while True:
        m = bp.read_frame(f)
        if m is None:
            return out
        out.append(m)


OPEN = req("open", model="toy.gguf", threads=1, n_ctx=0, options={}, protocol=1)


class Toy(bp.Engine):
    """A causal toy model: vocabulary 8, two layers, n_embd 4. The logits at position p
    depend on tokens[:p+1] only; a KV 'cache' is the token list."""

    implementation = "toy 1"
    stages = ["inp_embd", "attn_q", "l_out", "result_output"]
    V = 8

    def open(self, req):
        if req.model == "missing.gguf":
            raise FileNotFoundError(f"[Errno 2] No such file or directory: '{req.model}'")
        self.seq = []
        return {"arch": "bitnet", "name": "toy", "n_vocab": self.V, "n_ctx_train": 16,
                "n_ctx": bp.resolve_n_ctx(req.n_ctx, 16), "n_embd": 4, "n_layer": 2,
                "n_head": 2, "n_head_kv": 1, "head_dim": 2, "n_ff": 8,
                "rope_freq_base": 10000.0, "rms_eps": 1e-5, "bos": 1, "eos": 7,
                "weight_types": {"F32": 3}}

    def row(self, prefix):
        s = sum((i + 1) * t for i, t in enumerate(prefix))
        return np.array([((s * 5 + v * 3) % self.V) for v in range(self.V)], np.float32)

    def emit(self, tokens, pos0, cap):
        x = np.array([[t, t, t, t] for t in tokens], np.float32)
        cap.put("inp_embd", None, x, pos0)
        for l in range(2):
            cap.put("attn_q", l, x.reshape(-1, 2, 2) + l, pos0)
            cap.put("l_out", l, x + l, pos0)

    def forward(self, tokens, capture):
        if tokens == [6, 6, 6]:
            raise ZeroDivisionError("division by zero")
        self.emit(tokens, 0, capture)
        rows = np.stack([self.row(tokens[: i + 1]) for i in range(len(tokens))])
        capture.put("result_output", None, rows)
        return rows


class ToyKV(Toy):
    def prefill(self, tokens, capture, all_logits):
        self.seq = list(tokens)
        return self.forward(tokens, capture)

    def step(self, token, position, capture):
        assert position == len(self.seq), (position, self.seq)
        self.seq.append(token)
        self.emit([token], position, capture)
        row = self.row(self.seq)
        capture.put("result_output", None, row[None])
        return row


class Fixed(Toy):
    """forward returns given rows (to test argmax ties and NaN)."""
    ROWS = None

    def forward(self, tokens, capture):
        return np.array(self.ROWS[: len(tokens)], np.float32)


class GenOnly(bp.Engine):
    def open(self, req):
        return {"n_vocab": 10, "n_ctx": 32, "eos": 9}

    def generate(self, request):
        for t in [3, 4, 5, 9, 2][: request.max_tokens]:
            yield t


def serve(engine, *msgs):
    out = io.BytesIO()
    status = bp.serve(engine, stdin=io.BytesIO(frames(*msgs)), stdout=out, log=io.StringIO())
    return status, read_all(out.getvalue())


class Framing(unittest.TestCase):
    def test_blobs_round_trip_bit_exactly(self):
        logits = np.array([1.0, np.nan, -0.0, np.inf, -np.inf, 2.5], np.float32)
        msg = {"reply": "forward", "value": {"n_vocab": 3, "logits": logits, "stages": []}}
        data = bp.encode_frame(msg)
        n = struct.unpack("<I", data[:4])[0]
        self.assertIn(b'{"blob":0}', data[4:4 + n])
        (back,) = read_all(data)
        got = back["value"]["logits"]
        self.assertEqual(got.dtype, np.float32)
        self.assertEqual(got.view(np.uint32).tolist(), logits.view(np.uint32).tolist())

    def test_layout_is_exactly_the_spec(self):
        data = bp.encode_frame({"reply": "token", "value": 5})
        js = b'{"reply":"token","value":5}'
        self.assertEqual(data, struct.pack("<I", len(js)) + js + struct.pack("<I", 0))
        data = bp.encode_frame({"a": np.array([1.0, -2.0], np.float32)})
        js = b'{"a":{"blob":0}}'
        self.assertEqual(data, struct.pack("<I", len(js)) + js + struct.pack("<I", 1)
                         + struct.pack("<Q", 2) + struct.pack("<2f", 1.0, -2.0))

    def test_documented_hex_dump(self):
        """The frame dumped in docs/wire-protocol.md."""
        data = bp.encode_frame({"reply": "forward", "value": {
            "n_vocab": 2, "logits": np.array([0.5, -1.0], np.float32), "stages": []}})
        self.assertEqual(data.hex(), (
            "49000000" + b'{"reply":"forward","value":{"n_vocab":2,"logits":{"blob":0},'
            b'"stages":[]}}'.hex() + "01000000" + "0200000000000000" + "0000003f" + "000080bf"))

    def test_non_finite_json_floats_travel_as_null(self):
        data = bp.encode_frame({"x": float("nan"), "y": float("inf"), "z": 1.5})
        (back,) = read_all(data)
        self.assertEqual(back, {"x": None, "y": None, "z": 1.5})
        self.assertTrue(math.isnan(bp.as_float(back["x"])))

    def test_truncated_frames_are_errors_and_empty_input_is_the_end(self):
        data = bp.encode_frame({"reply": "forward", "value": {
            "logits": np.arange(5, dtype=np.float32)}})
        for cut in range(1, len(data)):
            with self.assertRaises(bp.FrameError, msg=f"prefix of {cut} bytes"):
                bp.read_raw_frame(io.BytesIO(data[:cut]))
        self.assertIsNone(bp.read_raw_frame(io.BytesIO(b"")))

    def test_oversized_lengths_are_refused_without_reading(self):
        with self.assertRaisesRegex(bp.FrameError, "exceeds"):
            bp.read_raw_frame(io.BytesIO(struct.pack("<I", bp.MAX_JSON + 1) + b"\0" * 16))
        big = struct.pack("<I", 2) + b"{}" + struct.pack("<I", 1) + struct.pack(
            "<Q", bp.MAX_BLOB_FLOATS + 1)
        with self.assertRaisesRegex(bp.FrameError, "claims"):
            bp.read_raw_frame(io.BytesIO(big))

    def test_a_blob_referenced_twice_is_a_protocol_error(self):
        js = b'{"a":{"blob":0},"b":{"blob":0}}'
        data = struct.pack("<I", len(js)) + js + struct.pack("<IQf", 1, 1, 1.0)
        with self.assertRaisesRegex(bp.ProtocolError, "referenced twice"):
            bp.parse_frame(*bp.read_raw_frame(io.BytesIO(data)))

    def test_plain_arrays_are_accepted_where_blobs_are(self):
        js = b'{"reply":"forward","value":{"n_vocab":1,"logits":[0.5],"stages":[]}}'
        data = struct.pack("<I", len(js)) + js + struct.pack("<I", 0)
        (m,) = read_all(data)
        self.assertEqual(m["value"]["logits"], [0.5])


class Loop(unittest.TestCase):
    def test_requests_before_open_and_bad_requests_get_error_replies(self):
        bad_json = b"{not json"
        raw = struct.pack("<I", len(bad_json)) + bad_json + struct.pack("<I", 0)
        out = io.BytesIO()
        status = bp.serve(Toy, stdin=io.BytesIO(
            frames(req("forward", tokens=[1], capture={})) + raw
            + frames({"op": "fly", "args": {}}, OPEN, req("forward", tokens=[99], capture={}),
                     req("forward", tokens=[], capture={}),
                     req("forward", tokens="abc", capture={}),
                     req("forward", tokens=[1] * 17, capture={}),
                     req("forward", tokens=[1], capture={"stages": ["attn_qq"]}),
                     req("tokenize", text="hi", add_bos=True, parse_special=False),
                     req("forward", tokens=[1, 2], capture={}))), stdout=out,
            log=io.StringIO())
        self.assertEqual(status, 0)
        r = read_all(out.getvalue())
        kinds = [(m["reply"], m["value"].get("kind") if m["reply"] == "error" else None)
                 for m in r]
        self.assertEqual(kinds, [
            ("error", "invalid_request"), ("error", "protocol"), ("error", "protocol"),
            ("opened", None), ("error", "invalid_request"), ("error", "invalid_request"),
            ("error", "protocol"), ("error", "invalid_request"), ("error", "protocol"),
            ("error", "invalid_request"), ("forward", None)])
        self.assertIn("before 'open'", r[0]["value"]["detail"])
        self.assertIn("bad frame JSON", r[1]["value"]["detail"])
        self.assertIn("outside the vocabulary", r[4]["value"]["detail"])
        self.assertIn("exceed the context of 16", r[7]["value"]["detail"])
        self.assertIn("capabilities.tokenize", r[9]["value"]["detail"])

    def test_opened_declares_version_capabilities_and_defaults(self):
        _, r = serve(Toy, OPEN)
        info = r[0]["value"]
        self.assertEqual(r[0]["reply"], "opened")
        self.assertEqual(list(info), ["arch", "name", "n_vocab", "n_ctx_train", "n_ctx",
                                      "n_embd", "n_layer", "n_head", "n_head_kv", "head_dim",
                                      "n_ff", "rope_freq_base", "rms_eps", "bos", "eos",
                                      "weight_types", "implementation", "threads",
                                      "protocol", "capabilities"])
        self.assertEqual(info["protocol"], 1)
        self.assertEqual(info["n_ctx"], 16)
        self.assertEqual(info["rms_eps"], 1e-5)
        self.assertEqual(info["implementation"], "toy 1")
        self.assertEqual(info["capabilities"], {
            "tokenize": False, "forward": True,
            "stages": ["inp_embd", "attn_q", "l_out", "result_output"], "generate": True,
            "teacher_forced": True, "decode_logits": True, "decode_stages": True})
        _, r = serve(GenOnly, OPEN)
        self.assertEqual(r[0]["value"]["capabilities"], {
            "tokenize": False, "forward": False, "stages": [], "generate": True,
            "teacher_forced": False, "decode_logits": False, "decode_stages": False})

    def test_a_newer_client_protocol_is_refused_and_an_absent_one_is_1(self):
        _, r = serve(Toy, req("open", model="m", protocol=2), req("open", model="m"))
        self.assertEqual(r[0]["value"]["kind"], "protocol")
        self.assertIn("protocol 2", r[0]["value"]["detail"])
        self.assertEqual(r[1]["reply"], "opened")

    def test_load_failures_name_the_path(self):
        _, r = serve(Toy, req("open", model="missing.gguf"), req("forward", tokens=[1],
                                                                 capture={}))
        self.assertEqual(r[0]["value"]["kind"], "load")
        self.assertEqual(r[0]["value"]["detail"]["path"], "missing.gguf")
        self.assertIn("FileNotFoundError", r[0]["value"]["detail"]["message"])
        self.assertIn("before 'open'", r[1]["value"]["detail"])

    def test_exceptions_become_backend_errors_and_the_loop_goes_on(self):
        _, r = serve(Toy, OPEN, req("forward", tokens=[6, 6, 6], capture={}),
                     req("forward", tokens=[1], capture={}))
        err = r[1]["value"]
        self.assertEqual(err["kind"], "backend")
        self.assertTrue(err["detail"].startswith("ZeroDivisionError: division by zero (at "
                                                 "test_wire.py:"), err["detail"])
        self.assertEqual(r[2]["reply"], "forward")

    def test_forward_logits_and_capture_filters(self):
        _, r = serve(Toy, OPEN, req("forward", tokens=[1, 2, 3], capture={
            "stages": ["attn_q", "inp_embd", "result_output"], "layers": [1],
            "positions": [0, 2]}))
        f = r[1]["value"]
        self.assertEqual(f["n_vocab"], 8)
        self.assertEqual(f["logits"].shape, (24,))
        got = [(s["stage"], s["layer"], s["position"], s["shape"]) for s in f["stages"]]
        self.assertEqual(got, [("inp_embd", None, 0, [4]), ("inp_embd", None, 2, [4]),
                               ("attn_q", 1, 0, [2, 2]), ("attn_q", 1, 2, [2, 2]),
                               ("result_output", None, 0, [8]),
                               ("result_output", None, 2, [8])])
        self.assertEqual(f["stages"][2]["data"].tolist(), [2, 2, 2, 2])

    def test_shapes_are_checked_before_sending(self):
        class BadShape(Toy):
            def forward(self, tokens, capture):
                capture.put("attn_q", 0, np.zeros((len(tokens), 3)))
                return np.zeros((len(tokens), 8))

        class BadLogits(Toy):
            def forward(self, tokens, capture):
                return np.zeros((len(tokens), 7))

        _, r = serve(BadShape, OPEN, req("forward", tokens=[1], capture={"stages": ["attn_q"]}))
        self.assertEqual(r[1]["value"]["kind"], "backend")
        self.assertIn("blk.0.attn_q at position 0 has shape [3] (3 values), expected [2, 2]",
                      r[1]["value"]["detail"])
        _, r = serve(BadLogits, OPEN, req("forward", tokens=[1, 2], capture={}))
        self.assertIn("not rows of n_vocab 8", r[1]["value"]["detail"])

        class NoTokenAxis(Toy):
            def forward(self, tokens, capture):
                capture.put("l_out", 0, np.zeros(4))
                return np.zeros((len(tokens), 8))

        _, r = serve(NoTokenAxis, OPEN, req("forward", tokens=[1, 2, 3],
                                            capture={"stages": ["l_out"]}),
                     req("forward", tokens=[1], capture={"stages": ["l_out"]}))
        self.assertIn("put got 4 rows (shape [4]) for a batch of 3 tokens",
                      r[1]["value"]["detail"])
        self.assertEqual(r[2]["value"]["stages"][0]["shape"], [4], "one token: one row")

    def generate(self, engine, **kw):
        args = dict(prompt=[1, 2], max_tokens=4, sampling={"kind": "greedy"}, forced=None,
                    capture={}, keep_logits=False, stop_at_eos=False)
        args.update(kw)
        _, r = serve(engine, OPEN, req("generate", **args))
        return r[1:]

    def test_generation_semantics_match_drive_generation(self):
        for engine in (ToyKV, Toy):   # KV-cache path, and forward re-run
            r = self.generate(engine, capture={"stages": ["l_out"], "layers": [0]},
                              keep_logits=True)
            *toks, g = r
            self.assertTrue(all(m["reply"] == "token" for m in toks))
            g = g["value"]
            self.assertEqual([m["value"] for m in toks], g["tokens"])
            self.assertEqual(len(g["tokens"]), 4)
            self.assertEqual(len(g["steps"]), 3)
            self.assertEqual(g["prefill"]["logits"].size, 2 * 8)
            seq = [1, 2]
            first = bp.argmax(Toy().row(seq))
            self.assertEqual(g["first"], first)
            prev = first
            for i, s in enumerate(g["steps"]):
                self.assertEqual((s["position"], s["input"]), (2 + i, prev))
                seq.append(prev)
                self.assertEqual(s["chosen"], bp.argmax(Toy().row(seq)))
                self.assertEqual(s["logits"].tolist(), Toy().row(seq).tolist())
                self.assertEqual([(x["stage"], x["layer"], x["position"]) for x in s["stages"]],
                                 [("l_out", 0, 2 + i)])
                prev = s["chosen"]
            self.assertEqual([(x["stage"], x["position"]) for x in g["prefill"]["stages"]],
                             [("l_out", 0), ("l_out", 1)])

    def test_forced_tokens_max_tokens_and_eos(self):
        *_, g = self.generate(ToyKV, forced=[5, 4, 3, 2, 1], max_tokens=3)
        g = g["value"]
        self.assertEqual([s["input"] for s in g["steps"]], [5, 4])
        self.assertEqual([s["position"] for s in g["steps"]], [2, 3])
        *_, g = self.generate(ToyKV, forced=[5], max_tokens=6)
        self.assertEqual(len(g["value"]["steps"]), 1, "stops when forced runs out")
        r = self.generate(ToyKV, max_tokens=0)
        self.assertEqual(len(r), 1, "no token frames")
        self.assertEqual((r[0]["value"]["tokens"], r[0]["value"]["steps"]), ([], []))
        self.assertEqual(r[0]["value"]["prefill"]["logits"].size, 8, "last row only")
        r = self.generate(ToyKV, max_tokens=1)
        self.assertEqual(len(r[-1]["value"]["steps"]), 0)
        self.assertEqual(len(r[-1]["value"]["tokens"]), 1)
        # stop_at_eos: a run that chooses 7 (the eos) stops right after it.
        eos_run = None
        for p in range(8):
            for q in range(8):
                *_, g = self.generate(ToyKV, prompt=[p, q], max_tokens=6, stop_at_eos=True)
                if 7 in g["value"]["tokens"][:-1] or g["value"]["tokens"][-1:] == [7]:
                    eos_run = g["value"]
                    break
            if eos_run:
                break
        self.assertIsNotNone(eos_run, "toy never chose its eos")
        self.assertEqual(eos_run["tokens"][-1], 7)
        self.assertEqual(eos_run["tokens"].count(7), 1)

    def test_generate_errors(self):
        r = self.generate(ToyKV, prompt=[])
        self.assertIn("empty prompt", r[0]["value"]["detail"])
        r = self.generate(ToyKV, prompt=[1] * 10, max_tokens=8)
        self.assertIn("prompt 10 + 7 decode steps exceed the context of 16",
                      r[0]["value"]["detail"])
        r = self.generate(ToyKV, forced=[1, 99])
        self.assertIn("token id 99", r[0]["value"]["detail"])
        r = self.generate(GenOnly, forced=[1])
        self.assertIn("teacher_forced", r[0]["value"]["detail"])

    def test_argmax_ties_go_low_and_nan_never_wins(self):
        self.assertEqual(bp.argmax([1.0, 3.0, 3.0]), 1)
        self.assertEqual(bp.argmax([np.nan, 0.5, np.nan]), 1)
        self.assertEqual(bp.argmax([np.nan, np.nan]), 0)
        Fixed.ROWS = [[0, 0, 0, 0, 0, 0, 0, 0], [np.nan, 2, 5, 5, 1, np.nan, 0, 0]]
        *_, g = self.generate(Fixed, max_tokens=1)
        self.assertEqual(g["value"]["first"], 2)

    def test_seeded_sampling_is_reproducible(self):
        s = {"kind": "seeded", "temperature": 0.8, "top_k": 4, "top_p": 0.9, "seed": 7}
        a = self.generate(ToyKV, sampling=s, max_tokens=5)[-1]["value"]["tokens"]
        b = self.generate(ToyKV, sampling=s, max_tokens=5)[-1]["value"]["tokens"]
        self.assertEqual(a, b)

    def test_generate_only_engines_stream_their_tokens(self):
        r = self.generate(GenOnly, max_tokens=4)
        self.assertEqual([m["value"] for m in r[:-1]], [3, 4, 5, 9])
        g = r[-1]["value"]
        self.assertEqual(g["tokens"], [3, 4, 5, 9])
        self.assertEqual([(s["position"], s["input"], s["chosen"]) for s in g["steps"]],
                         [(2, 3, 4), (3, 4, 5), (4, 5, 9)])
        self.assertEqual(g["prefill"]["logits"].size, 0)


class Process(unittest.TestCase):
    """The server as a child process: stdout protection, a broken stream."""

    SCRIPT = textwrap.dedent("""
        import os, sys
        sys.path.insert(0, %r)
        import bitprobe_adapter as bp
        import numpy as np
        bp.protect_stdout()        # before anything that may print; serve() keeps it
        print("hello from module level")
        class Noisy(bp.Engine):
            def open(self, req):
                print("loading", req.model)
                os.write(1, b"raw bytes on fd 1\\n")
                return {"n_vocab": 3, "n_ctx": 8, "n_embd": 2}
            def forward(self, tokens, capture):
                print("forward", tokens)
                sys.stdout.write("more noise\\n")
                return np.zeros((len(tokens), 3))
        sys.exit(bp.serve(Noisy))
    """) % ADAPTER_DIR

    def test_prints_in_the_engine_go_to_stderr(self):
        with bp.Client([sys.executable, "-c", self.SCRIPT], timeout=30) as c:
            info = c.open("x.gguf")
            self.assertEqual(info["n_vocab"], 3)
            f = c.forward([0, 1, 2])
            self.assertEqual(f["logits"].tolist(), [0.0] * 9)
            status = c.close()
            self.assertEqual(status, 0)
            self.assertIn("raw bytes on fd 1", c.stderr)
            self.assertIn("forward [0, 1, 2]", c.stderr)
            self.assertIn("hello from module level", c.stderr)

    def test_a_broken_stream_ends_the_server_with_a_message(self):
        p = subprocess.run([sys.executable, "-c", self.SCRIPT],
                           input=struct.pack("<I", 100) + b'{"op"', capture_output=True,
                           timeout=30)
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"broken input stream", p.stderr)


if __name__ == "__main__":
    unittest.main()
