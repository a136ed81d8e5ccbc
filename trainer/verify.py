#!/usr/bin/env python3
"""Checks the trained model through real probes: for every fact, in every weight type, the
probe's tokens for the prompt equal the trainer's, its greedy continuation is the answer
followed by EOS, and the top-2 logit margin at every answer position is reported.

    python3 trainer/verify.py [--bin target/release] [--types f32,f16,i2s,tq1,tq2]
                              [--probe NAME=CMD ...] [--json OUT]

Probes speak the wire protocol (docs/wire-protocol.md) as child processes; the defaults are
bitprobe's engine (`bitprobe serve-engine`) and the vendored bitnet.cpp (`bitprobe-oracle`),
both from --bin. `--probe 'bitnet.cpp-2026=/path/bitprobe-oracle-2026'` adds one. Models are
forged with `bitprobe forge --preset trained-<type>` into a temporary folder.

Margin at an answer position = logit of the expected token − the largest other logit (the
top-1/top-2 gap when the probe is right, negative when it is wrong). Generation is
teacher-forced with the answer (`forced`) where the probe supports it, so every position is
measured in the right context even after a wrong token; the greedy check uses the probe's
own choices (`chosen`) at each step.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "adapters" / "python"))
for sub in ("trainer", "numpy"):
    p = ROOT / ".cache" / "python" / sub
    if p.is_dir():
        sys.path.insert(0, str(p))
import numpy as np  # noqa: E402

import bitprobe_adapter as bp  # noqa: E402


class Client:
    def __init__(self, name: str, cmd: list[str]):
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, cwd=ROOT)

    def call(self, op: str, args: dict):
        bp.write_frame(self.proc.stdin, {"op": op, "args": args})
        while True:
            msg = bp.read_frame(self.proc.stdout)
            if msg is None:
                raise RuntimeError(f"{self.name}: probe exited (status {self.proc.wait()})")
            if msg["reply"] == "token":
                continue
            if msg["reply"] == "error":
                raise RuntimeError(f"{self.name}: {op}: {msg['value']}")
            return msg["value"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def margin(row: np.ndarray, want: int) -> float:
    others = np.delete(row, want)
    return float(row[want] - others.max())


def check(client: Client, facts: list[dict], eos: int) -> dict:
    caps = client.info.get("capabilities") or {}
    forced_ok = caps.get("teacher_forced", True) if caps else True
    rows = []
    for f in facts:
        if caps and not caps.get("tokenize", False):
            ids = f["prompt_ids"]  # a probe without a tokenizer gets the trainer's ids
        else:
            ids = client.call("tokenize", {"text": f["prompt"], "add_bos": True, "parse_special": False})
        want = f["answer_ids"]
        assert want[-1] == eos
        g = client.call("generate", {
            "prompt": ids, "max_tokens": len(want), "sampling": {"kind": "greedy"},
            "forced": want[:-1] if forced_ok else None,
            "capture": {"stages": [], "layers": None, "positions": None},
            "keep_logits": bool(caps.get("decode_logits", True)) if caps else True, "stop_at_eos": False})
        n_vocab = client.info["n_vocab"]
        chosen = [g["first"]] + [s["chosen"] for s in g["steps"]]
        if caps and not caps.get("decode_logits", False):
            ms = [float("nan")] * len(want)  # greedy tokens only (e.g. pytritium)
        else:
            pre = np.asarray(g["prefill"]["logits"], np.float32).reshape(-1, n_vocab)[-1]
            logit_rows = [pre] + [np.asarray(s["logits"], np.float32) for s in g["steps"]]
            ms = [margin(r, t) for r, t in zip(logit_rows, want)]
        rows.append(dict(kind=f["kind"], prompt=f["prompt"], answer=f["answer"],
                         tokens_ok=ids == f["prompt_ids"], prompt_ids=ids,
                         right=chosen == want, chosen=chosen, margins=[round(m, 4) for m in ms]))
    return dict(rows=rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", type=Path, default=ROOT / "target" / "release")
    ap.add_argument("--types", default="f32,f16,i2s,tq1,tq2")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--probe", action="append", default=[], metavar="NAME=CMD")
    ap.add_argument("--no-default-probes", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--forge", default=None, metavar="CMD",
                    help="forge command with {preset} {seed} {out} (default: <bin>/bitprobe forge ...)")
    a = ap.parse_args()

    facts_path = ROOT / ".cache" / "trained" / f"seed-{a.seed}" / "facts.json"
    report = json.loads(facts_path.read_text())
    facts = report["facts"]
    eos = facts[0]["answer_ids"][-1]
    probes = [] if a.no_default_probes else [
        ("engine", [str(a.bin / "bitprobe"), "serve-engine"]),
        ("oracle", [str(a.bin / "bitprobe-oracle")]),
    ]
    for spec in a.probe:
        name, _, cmd = spec.partition("=")
        probes.append((name, shlex.split(cmd)))

    results = {}
    tmp = Path(tempfile.mkdtemp(prefix="bitprobe-trained-verify-"))
    all_ok = True
    for ty in a.types.split(","):
        gguf = tmp / f"trained-{ty}.gguf"
        forge = a.forge or f"{shlex.quote(str(a.bin / 'bitprobe'))} forge --preset {{preset}} --seed {{seed}} --out {{out}}"
        subprocess.run(shlex.split(forge.format(preset=f"trained-{ty}", seed=a.seed, out=gguf)),
                       check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        for name, cmd in probes:
            c = Client(name, cmd)
            try:
                c.info = c.call("open", {"model": str(gguf), "threads": 1, "n_ctx": 0, "options": {},
                                         "protocol": 1})
                r = check(c, facts, eos)
            except Exception as e:  # a probe that cannot load the type is a result, not a crash
                results[f"{name}/{ty}"] = dict(error=str(e))
                print(f"{name:>16} {ty:>4}: ERROR {e}", flush=True)
                all_ok = False
                continue
            finally:
                try:
                    c.close()
                except Exception:
                    c.proc.kill()
            ms = np.array([m for row in r["rows"] for m in row["margins"]])
            ms = ms[~np.isnan(ms)] if np.any(~np.isnan(ms)) else np.array([np.nan])
            right = sum(row["right"] for row in r["rows"])
            tok = sum(row["tokens_ok"] for row in r["rows"])
            s = dict(facts=len(facts), right=right, tokens_ok=tok, positions=int(ms.size),
                     margin_min=float(ms.min()), margin_p5=float(np.percentile(ms, 5)),
                     margin_median=float(np.median(ms)), share_ge_1=float(np.mean(ms >= 1.0)),
                     wrong=[(row["prompt"], row["chosen"]) for row in r["rows"] if not row["right"]][:10])
            results[f"{name}/{ty}"] = dict(summary=s, rows=r["rows"])
            all_ok &= right == len(facts) and tok == len(facts)
            print(f"{name:>16} {ty:>4}: answers {right}/{len(facts)}, prompt tokens {tok}/{len(facts)}, "
                  f"margins over {ms.size} positions: min {ms.min():.2f} p5 {np.percentile(ms, 5):.2f} "
                  f"median {np.median(ms):.2f}, ≥1.0 at {np.mean(ms >= 1.0) * 100:.1f}%", flush=True)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
