#!/usr/bin/env python3
"""Trains bitprobe's tiny BitNet b1.58 on the project's own facts and writes it out for the
forge's `trained-*` presets (engine/src/forge/trained.rs), which quantize it into every GGUF
weight type through the project's GGUF writer.

    python3 trainer/train.py [--out DIR] [--seed N] [--steps N]

Needs JAX (CPU): scripts/setup.d/50-trained-model.sh installs the pinned wheels into
.cache/python/trainer and runs this script once; the output goes to .cache/trained/ (both
gitignored). The output format is described in trainer/README.md.

Deterministic: the corpus, the tokenizer, the initial weights (jax.random with --seed), the
batch order (numpy PCG64 with --seed) and the optimizer are fixed, and Eigen's matmul thread
pool is off. Measured: bit-identical model.bin over three runs on one 2-core machine; a run
pinned to one core (taskset) diverged by step 150, so XLA still splits some work by the core
count: the result is reproducible per machine type and core count, not across them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
FORMAT = "bitprobe-trained 1"
# The files that decide the trained model; their sha256 (of the concatenation, in this order)
# is recorded in model.txt as `source_sha256`, and setup retrains when it changes.
SOURCES = ("bpe.py", "corpus.py", "model.py", "train.py", "requirements.txt")


def source_sha256() -> str:
    return hashlib.sha256(b"".join((HERE / f).read_bytes() for f in SOURCES)).hexdigest()


def _setup_path() -> None:
    env = os.environ.get("BITPROBE_TRAINER_PYTHON") or str(ROOT / ".cache" / "python" / "trainer")
    if not Path(env).is_dir():
        sys.exit(f"train.py: {env} does not exist: run scripts/setup.sh (it installs the pinned JAX "
                 f"wheels there), or point BITPROBE_TRAINER_PYTHON at a folder holding jax and numpy")
    sys.path.insert(0, env)
    sys.path.insert(0, str(HERE))
    # Determinism: CPU only, and Eigen's intra-op thread pool off (fewer core-count-dependent
    # summation orders; XLA still has some: a 1-core run differs from a 2-core one).
    os.environ["JAX_PLATFORMS"] = "cpu"
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        flags += " --xla_cpu_multi_thread_eigen=false"
    os.environ["XLA_FLAGS"] = flags.strip()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default .cache/trained/seed-<seed>)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    _setup_path()

    import jax
    import jax.numpy as jnp
    import numpy as np

    import bpe
    import corpus
    from model import NORMS, PROJECTIONS, Shape, forward, init, ternary

    cfg = dict(
        steps=a.steps if a.steps is not None else CONFIG["steps"],
        **{k: v for k, v in CONFIG.items() if k != "steps"},
    )
    log = (lambda *x: None) if a.quiet else (lambda *x: print(*x, flush=True))

    facts = corpus.facts()
    tok = bpe.train([f.text for f in facts], cfg["max_merges"])
    seqs, ans_start = [], []
    for f in facts:
        ids = tok.encode(f.text) + [tok.eos]
        p = tok.encode(f.prompt)
        assert ids[: len(p)] == p, f"prompt tokens are not a prefix of the fact's: {f}"
        seqs.append(ids)
        ans_start.append(len(p))  # first answer token's index in ids
    t_max = cfg["seq_len"]
    assert max(len(s) for s in seqs) <= t_max + 1, max(len(s) for s in seqs)
    n = len(seqs)
    data = np.zeros((n, t_max + 1), np.int32)
    weight = np.zeros((n, t_max), np.float32)  # per target position
    answer = np.zeros((n, t_max), bool)  # target positions that are answer tokens (+ EOS)
    for i, s in enumerate(seqs):
        data[i, : len(s)] = s
        weight[i, : len(s) - 1] = 1.0
        answer[i, ans_start[i] - 1 : len(s) - 1] = True
    weight[answer] = cfg["answer_weight"]

    shp = Shape(n_vocab=tok.n_vocab, **cfg["shape"])
    log(f"corpus: {n} facts, vocab {tok.n_vocab} ({len(tok.merges)} merges), "
        f"{int((weight > 0).sum())} target tokens, {int(answer.sum())} answer tokens")

    def loss_fn(p, x, y, w):
        lg = forward(p, x, shp)
        lp = jax.nn.log_softmax(lg, axis=-1)
        nll = -jnp.take_along_axis(lp, y[..., None], axis=-1)[..., 0]
        return jnp.sum(nll * w) / jnp.sum(w)

    b1, b2, eps = 0.9, 0.95, 1e-8

    @jax.jit
    def step(p, m, v, x, y, w, lr, t):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y, w)
        m = jax.tree.map(lambda a_, g_: b1 * a_ + (1 - b1) * g_, m, g)
        v = jax.tree.map(lambda a_, g_: b2 * a_ + (1 - b2) * g_ * g_, v, g)
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        p = jax.tree.map(lambda w_, m_, v_: w_ - lr * (m_ / c1) / (jnp.sqrt(v_ / c2) + eps), p, m, v)
        return p, m, v, loss

    @jax.jit
    def logits_all(p, x):
        return forward(p, x, shp)

    def evaluate(p):
        lg = np.asarray(logits_all(p, jnp.asarray(data[:, :-1])))
        tgt = data[:, 1:]
        top = np.argsort(-lg, axis=-1, kind="stable")[..., :2]
        l_t = np.take_along_axis(lg, tgt[..., None], -1)[..., 0]
        other = np.where(top[..., 0] == tgt, np.take_along_axis(lg, top[..., 1:2], -1)[..., 0],
                         np.take_along_axis(lg, top[..., 0:1], -1)[..., 0])
        margin = (l_t - other)[answer]  # > 0: right; top-1 minus top-2 when right
        return margin

    key = jax.random.PRNGKey(a.seed)
    p = init(key, shp)
    m = jax.tree.map(jnp.zeros_like, p)
    v = jax.tree.map(jnp.zeros_like, p)
    rng = np.random.Generator(np.random.PCG64(a.seed))
    bsz, steps = cfg["batch"], cfg["steps"]
    order = np.empty(0, np.int64)
    t0, c0 = time.time(), time.process_time()
    for s in range(1, steps + 1):
        if len(order) < bsz:
            order = np.concatenate([order, rng.permutation(n)])
        idx, order = order[:bsz], order[bsz:]
        warm = min(1.0, s / cfg["warmup"])
        lr = cfg["lr"] * warm * (cfg["lr_final"] + (1 - cfg["lr_final"]) * 0.5 * (1 + np.cos(np.pi * s / steps)))
        x, y, w = data[idx, :-1], data[idx, 1:], weight[idx]
        p, m, v, loss = step(p, m, v, x, y, w, np.float32(lr), np.float32(s))
        if s % cfg["eval_every"] == 0 or s == steps:
            mg = evaluate(p)
            log(f"step {s:5d}  loss {float(loss):.4f}  answers right {np.mean(mg > 0) * 100:5.1f}%  "
                f"margin min {mg.min():6.2f} p5 {np.percentile(mg, 5):6.2f} median {np.median(mg):6.2f}"
                f"  {time.time() - t0:6.1f}s")
    train_seconds, train_cpu_seconds = time.time() - t0, time.process_time() - c0
    margins = evaluate(p)

    # ---- export ------------------------------------------------------------------------------
    out: Path = a.out if a.out is not None else ROOT / ".cache" / "trained" / f"seed-{a.seed}"
    out.mkdir(parents=True, exist_ok=True)
    tensors: list[tuple[str, np.ndarray, str]] = []  # (GGUF name, [ne1, ne0] row-major, kind)
    emb = np.asarray(p["token_embd"]).astype(np.float16).astype(np.float32)
    tensors.append(("token_embd.weight", emb, "embedding"))
    quant = jax.jit(ternary)
    for i, l in enumerate(p["layers"]):
        for name in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "attn_sub_norm",
                     "ffn_norm", "ffn_gate", "ffn_up", "ffn_down", "ffn_sub_norm"):
            if name in PROJECTIONS:
                codes, g16 = quant(l[name])
                vals = (np.asarray(codes) * np.float32(g16)).astype(np.float32).T  # [out, in]
                tensors.append((f"blk.{i}.{name}.weight", np.ascontiguousarray(vals), "ternary"))
            else:
                assert name in NORMS
                tensors.append((f"blk.{i}.{name}.weight", np.asarray(l[name], np.float32)[None, :], "norm"))
    tensors.append(("output_norm.weight", np.asarray(p["output_norm"], np.float32)[None, :], "norm"))

    blob = bytearray()
    lines = [FORMAT]
    meta = dict(arch="bitnet-b1.58", n_vocab=tok.n_vocab, n_embd=shp.n_embd, n_layer=shp.n_layer,
                n_head=shp.n_head, n_head_kv=shp.n_head_kv, n_ff=shp.n_ff, n_ctx=cfg["n_ctx"],
                rope_freq_base=repr(shp.rope_freq_base), rms_eps=repr(shp.rms_eps), bos=tok.bos,
                eos=tok.eos, seed=a.seed, steps=steps, source_sha256=source_sha256())
    lines += [f"{k} {v}" for k, v in meta.items()]
    for i, t in enumerate(tok.token_texts()):
        lines.append(f"token {i} {'control' if i >= tok.bos else 'normal'} {t}")
    lines += [f"merge {mtext}" for mtext in tok.merge_texts()]
    for name, arr, kind in tensors:
        ne1, ne0 = arr.shape
        data_le = arr.astype("<f4").tobytes()
        lines.append(f"tensor {name} {kind} {ne0} {ne1} {len(blob)}")
        blob += data_le
    bin_sha = hashlib.sha256(blob).hexdigest()
    lines.append(f"data model.bin {len(blob)} {bin_sha}")
    (out / "model.bin.tmp").write_bytes(blob)
    (out / "model.txt.tmp").write_text("\n".join(lines) + "\n", encoding="utf-8")

    # Facts with their tokens and the trainer's own margins (teacher-forced, quantized graph).
    rows, k = [], 0
    for f, s, a0 in zip(facts, seqs, ans_start):
        na = len(s) - a0
        rows.append(dict(kind=f.kind, prompt=f.prompt, answer=f.answer,
                         prompt_ids=s[:a0], answer_ids=s[a0:],
                         margins=[round(float(x), 4) for x in margins[k : k + na]]))
        k += na
    report = dict(format=FORMAT, seed=a.seed, steps=steps, config=cfg, train_seconds=round(train_seconds, 1),
                  train_cpu_seconds=round(train_cpu_seconds, 1),
                  n_params=int(sum(np.asarray(x).size for x in jax.tree.leaves(p))),
                  answers_right=float(np.mean(margins > 0)),
                  margin_min=float(margins.min()), margin_p5=float(np.percentile(margins, 5)),
                  margin_median=float(np.median(margins)),
                  share_margin_ge_1=float(np.mean(margins >= 1.0)),
                  model_bin_sha256=bin_sha, jax=jax.__version__, numpy=np.__version__, facts=rows)
    (out / "facts.json.tmp").write_text(json.dumps(report, indent=1) + "\n")
    for fn in ("model.bin", "facts.json", "model.txt"):  # model.txt last: it marks completion
        os.replace(out / f"{fn}.tmp", out / fn)
    log(f"wrote {out}/model.txt, model.bin ({len(blob)} bytes, sha256 {bin_sha}), facts.json; "
        f"{train_seconds:.1f}s training ({train_cpu_seconds:.1f} CPU-s); answers right {np.mean(margins > 0) * 100:.1f}%, "
        f"margin ≥ 1 at {np.mean(margins >= 1) * 100:.1f}%, min {margins.min():.2f}")
    return 0 if np.all(margins > 0) else 1


CONFIG = dict(
    shape=dict(n_embd=256, n_layer=2, n_head=8, n_head_kv=2, n_ff=512, rope_freq_base=500000.0, rms_eps=1e-5),
    n_ctx=2048,
    max_merges=1000,
    seq_len=24,
    batch=32,
    steps=600,
    warmup=50,
    lr=3e-3,
    lr_final=0.05,
    answer_weight=1.0,
    eval_every=50,
)

if __name__ == "__main__":
    sys.exit(main())
