"""gguf_reader on small files written here with reference encoders (support.py)."""

import os as _os
import sys as _sys
_sys.path.insert(0, _os.path.dirname(_os.path.abspath(__file__)))  # for `support`

import os
import struct
import unittest

from support import (TempDir, encode_i2s, encode_tq1, encode_tq2, np, write_gguf)
import gguf_reader as gr


def ternary(rows, cols, seed, scale_per_block=False):
    rng = np.random.default_rng(seed)
    t = rng.integers(-1, 2, size=(rows, cols)).astype(np.float32)
    if scale_per_block:
        d = rng.uniform(0.5, 2.0, size=(rows, cols // 256)).astype(np.float16).astype(np.float32)
        return t, d
    return t, np.float32(0.75)


class Reader(unittest.TestCase):
    def test_metadata_and_every_supported_type(self):
        rows, cols = 3, 512
        t_i2s, s = ternary(rows, cols, 1)
        t_tq1, d1 = ternary(rows, cols, 2, True)
        t_tq2, d2 = ternary(rows, cols, 3, True)
        # Each 256-block's max |w| is its d (ternary values reach ±1 in every block).
        t_tq1[:, ::256] = 1
        t_tq2[:, ::256] = -1
        w_tq1 = (t_tq1.reshape(rows, -1, 256) * d1[..., None]).reshape(rows, cols)
        w_tq2 = (t_tq2.reshape(rows, -1, 256) * d2[..., None]).reshape(rows, cols)
        f32 = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) - 3.5
        f16 = (np.arange(8, dtype=np.float32) / 3).astype(np.float16)
        with TempDir() as d:
            p = os.path.join(d, "m.gguf")
            write_gguf(p, {"general.architecture": "bitnet", "general.name": "tiny",
                           "bitnet.embedding_length": 8, "flag": True, "eps": 1e-5,
                           "tokenizer.ggml.tokens": ["a", "b", "ü"], "ids": [1, -2, 3]}, [
                ("f32", [4, rows], 0, f32.tobytes()),
                ("f16", [8], 1, f16.tobytes()),
                ("i2s", [cols, rows], 36, encode_i2s(t_i2s * s)),
                ("tq1", [cols, rows], 34, encode_tq1(w_tq1)),
                ("tq2", [cols, rows], 35, encode_tq2(w_tq2)),
            ])
            g = gr.GGUFFile(p)
            self.assertEqual(g.version, 3)
            self.assertEqual(g.get("general.name"), "tiny")
            self.assertIs(g.get("flag"), True)
            self.assertAlmostEqual(g.get("eps"), 1e-5, places=10)
            self.assertEqual(g.get("tokenizer.ggml.tokens"), ["a", "b", "ü"])
            self.assertEqual(g.get("ids").tolist(), [1, -2, 3])
            self.assertEqual(g.metadata_types["ids"], "array[i32]")
            self.assertEqual(g.tensor("i2s").shape, (rows, cols))
            self.assertEqual(g.tensor("i2s").nbytes, rows * cols // 4 + 32)
            np.testing.assert_array_equal(g.dequantize("f32"), f32)
            np.testing.assert_array_equal(g.dequantize("f16"), f16.astype(np.float32))
            np.testing.assert_array_equal(g.dequantize("i2s"), t_i2s * s)
            codes, scale = g.ternary("i2s")
            self.assertEqual(codes.dtype, np.int8)
            np.testing.assert_array_equal(codes, t_i2s)
            self.assertEqual(scale, s)
            np.testing.assert_array_equal(g.dequantize("tq1"), w_tq1)
            np.testing.assert_array_equal(g.dequantize("tq2"), w_tq2)
            codes, d = g.ternary("tq1")
            np.testing.assert_array_equal(codes, t_tq1)
            np.testing.assert_array_equal(d, d1)
            self.assertEqual(g.weight_types(), {"F16": 1, "F32": 1, "I2_S": 1, "TQ1_0": 1,
                                                "TQ2_0": 1})
            # A wrong bit order reads other values (the example engine's i2s_bit_order bug).
            wrong, _ = g.ternary("i2s", i2s_shifts=(0, 2, 4, 6))
            self.assertFalse(np.array_equal(wrong, t_i2s))

    def test_i2s_layout_by_hand(self):
        # Byte j of a block holds values j, j+32, j+64, j+96 at shifts 6, 4, 2, 0.
        vals = np.zeros(128, np.float32)
        vals[0], vals[32], vals[64], vals[96] = 1, -1, 0, 1       # codes 2, 0, 1, 2
        vals[5] = -1
        raw = encode_i2s(vals)
        self.assertEqual(raw[0], 0b10_00_01_10)
        self.assertEqual(raw[5], 0b00_01_01_01)
        self.assertEqual(raw[1], 0b01_01_01_01)
        self.assertEqual(struct.unpack("<f", raw[32:36])[0], 1.0)
        with TempDir() as d:
            p = os.path.join(d, "m.gguf")
            write_gguf(p, {}, [("w", [128], 36, raw)])
            np.testing.assert_array_equal(gr.GGUFFile(p).dequantize("w"), vals)

    def test_bad_files_give_errors_naming_file_and_offset(self):
        with TempDir() as d:
            p = os.path.join(d, "bad.gguf")
            cases = {
                b"": "too short",
                b"GGUX" + b"\0" * 30: "not a GGUF file: magic b'GGUX'",
                b"GGUF" + struct.pack("<IQQ", 9, 0, 0): "version 9",
                b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1000) + b"ab":
                    "string length 1000 runs past the end",
                b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k"
                + struct.pack("<I", 77): "unknown value type 77",
                b"GGUF" + struct.pack("<IQQ", 3, 1 << 40, 0): "tensor count",
            }
            for data, msg in cases.items():
                with open(p, "wb") as f:
                    f.write(data)
                with self.assertRaises(gr.GGUFError) as cm:
                    gr.GGUFFile(p)
                self.assertIn(p, str(cm.exception))
                self.assertIn(msg, str(cm.exception))
            write_gguf(p, {}, [("w", [256, 4], 36, b"\0" * 100)])
            with self.assertRaisesRegex(gr.GGUFError, r"tensor 'w' \(I2_S.*needs bytes .* but "
                                                      r"the file has"):
                gr.GGUFFile(p)
            write_gguf(p, {}, [("w", [100], 36, b"\0" * 64)])
            with self.assertRaisesRegex(gr.GGUFError, "row length 100 is not a multiple of "
                                                      "128 .at byte offset"):
                gr.GGUFFile(p).dequantize("w")
            write_gguf(p, {}, [("w", [32], 2, b"\0" * 18)])
            with self.assertRaisesRegex(gr.GGUFError, "type Q4_0; this reader dequantizes"):
                gr.GGUFFile(p).dequantize("w")
            with self.assertRaisesRegex(gr.GGUFError, "tensor 'nope' is missing"):
                gr.GGUFFile(p).tensor("nope")
            with self.assertRaisesRegex(gr.GGUFError, "cannot open"):
                gr.GGUFFile(os.path.join(d, "absent.gguf"))


if __name__ == "__main__":
    unittest.main()
