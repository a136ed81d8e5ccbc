//! The oracle out of process: `bitprobe-oracle` behind `probe::wire::RemoteProbe`.
//!
//! bitnet.cpp aborts on some inputs (GGML_ASSERT → abort()). In the harness that must cost one
//! failed request, never the harness: the client reports the exit status and the tail of the
//! server's stderr, and the next request starts a fresh server.

use engine::gguf::{GgufFile, GgufValue, GgufWriter};
use probe::wire::RemoteProbe;
use probe::{Capture, Error, OpenRequest, Probe};
use std::path::{Path, PathBuf};

const ORACLE: &str = env!("CARGO_BIN_EXE_bitprobe-oracle");

fn spawn(model: &Path) -> probe::Result<RemoteProbe> {
    RemoteProbe::spawn("oracle", ORACLE, &[], OpenRequest::new(model).threads(1))
}

fn scratch_dir(test: &str) -> PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "bitprobe-oracle-process-{}-{test}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies a GGUF file, replacing (or adding) the metadata in `overrides`.
fn rewrite(src: &Path, dst: &Path, overrides: &[(&str, GgufValue)]) {
    let f = GgufFile::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        if k == "general.alignment" {
            if let GgufValue::U32(a) = v {
                w.set_alignment(*a).unwrap();
            }
            continue;
        }
        let v = overrides
            .iter()
            .find(|(o, _)| *o == k)
            .map_or(v, |(_, o)| o);
        w.add_kv(k, v.clone()).unwrap();
    }
    for (k, v) in overrides {
        if f.get(k).is_none() {
            w.add_kv(*k, v.clone()).unwrap();
        }
    }
    for t in f.tensors() {
        w.add_tensor(&t.name, &t.dims, t.ty, f.tensor_data(t).unwrap().to_vec())
            .unwrap();
    }
    w.write_file(dst).unwrap();
}

/// A model bitnet.cpp loads and opens a context for, but aborts on at the first decode: its
/// metadata says RoPE rotates 34 dimensions of 32-wide heads. Nothing checks that at load
/// (llm_load_hparams checks n_rot only for LLAMA and FALCON) or when the graph is built
/// (ggml_rope_ext); `ggml_compute_forward_rope_f32` asserts `n_dims <= ne0`.
fn rope_wider_than_heads(dir: &Path) -> PathBuf {
    let good = engine::forge::forged("tiny-i2s", 1).unwrap();
    let bad = dir.join("tiny-i2s-rope34.gguf");
    rewrite(
        &good,
        &bad,
        &[("bitnet.rope.dimension_count", GgufValue::U32(34))],
    );
    bad
}

#[test]
fn an_abort_is_a_crash_with_the_assert_line_and_the_next_request_passes() {
    let dir = scratch_dir("abort");
    let model = dir.join("model.gguf");
    std::fs::copy(rope_wider_than_heads(&dir), &model).unwrap();
    let mut p = spawn(&model).expect("the bad model loads: it only aborts when computing");
    let pid = p.pid();
    let tokens = p.tokenize("Hello world", true, false).unwrap();

    let err = p.forward(&tokens, &Capture::none()).unwrap_err();
    eprintln!("{err}");
    let Error::Crashed {
        probe,
        status,
        during,
        stderr_tail,
    } = &err
    else {
        panic!("expected a crash, got {err}")
    };
    assert_eq!(
        (probe.as_str(), during.as_str()),
        (
            "oracle",
            format!("forward of {} tokens", tokens.len()).as_str()
        )
    );
    // The message keeps the assert line and drops the debugger's backtrace.
    assert!(
        !stderr_tail
            .lines()
            .any(|l| l.starts_with("[New LWP") || l.starts_with("#0 ")),
        "{stderr_tail}"
    );
    assert!(status.contains("SIGABRT"), "{status}");
    assert!(
        stderr_tail.contains("GGML_ASSERT(n_dims <= ne0) failed"),
        "{stderr_tail}"
    );

    // The next request on the same RemoteProbe starts a fresh server and is served.
    assert_eq!(p.tokenize("Hello world", true, false).unwrap(), tokens);
    assert_ne!(p.pid(), pid, "a new server process");

    // That server has the same bad model: a forward aborts again, and is reported again.
    let again = p.forward(&tokens, &Capture::none()).unwrap_err();
    assert!(
        matches!(&again, Error::Crashed { stderr_tail, .. } if stderr_tail.contains("GGML_ASSERT")),
        "{again}"
    );

    // Put a good model at that path (a new file renamed over it); the next request starts a
    // fresh server, which opens it, and passes.
    let tmp = dir.join("good.tmp");
    std::fs::copy(engine::forge::forged("tiny-i2s", 1).unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, &model).unwrap();
    let f = p.forward(&tokens, &Capture::all()).unwrap();
    assert_eq!(f.n_tokens(), tokens.len());
    assert!(f.logits.iter().all(|x| x.is_finite()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn remote_results_are_the_in_process_results() {
    let model = engine::forge::forged("tiny158-i2s", 1).unwrap();
    let mut remote = spawn(&model).unwrap();
    let mut local = oracle::OracleProbe::open(&OpenRequest::new(&model).threads(1)).unwrap();
    assert_eq!(remote.info(), local.info());
    let tokens = local.tokenize("Hello world", true, false).unwrap();
    assert_eq!(remote.tokenize("Hello world", true, false).unwrap(), tokens);
    let (a, b) = (
        remote.forward(&tokens, &Capture::all()).unwrap(),
        local.forward(&tokens, &Capture::all()).unwrap(),
    );
    assert_eq!(
        a.logits.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        b.logits.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(a.stages, b.stages);
    let req = probe::GenerateRequest::greedy(tokens.clone(), 8);
    let mut streamed = Vec::new();
    let g = remote
        .generate_with(&req, &mut |t| streamed.push(t))
        .unwrap();
    assert_eq!(g.tokens, local.generate(&req).unwrap().tokens);
    assert_eq!(streamed, g.tokens);
    // Errors cross the wire as they are.
    let err = remote.forward(&[u32::MAX], &Capture::none()).unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
}

#[test]
fn missing_file_is_a_load_error_in_bitnet_cpp_words() {
    let err = spawn(Path::new("/nonexistent/model.gguf")).err().unwrap();
    eprintln!("{err}");
    let Error::Load { message, .. } = &err else {
        panic!("expected a load error, got {err}")
    };
    assert!(message.contains("failed to load model"), "{message}");
    assert!(message.contains("no such file"), "{message}");
}

#[test]
fn unsupported_arch_is_a_load_error_in_bitnet_cpp_words() {
    let dir = scratch_dir("arch");
    let path = dir.join("tiny-llama4.gguf");
    let good = engine::forge::forged("tiny-i2s", 1).unwrap();
    rewrite(
        &good,
        &path,
        &[("general.architecture", GgufValue::Str("llama4".into()))],
    );
    let err = spawn(&path).err().unwrap();
    eprintln!("{err}");
    let Error::Load { message, .. } = &err else {
        panic!("expected a load error, got {err}")
    };
    assert!(
        message.contains("unknown model architecture: 'llama4'"),
        "{message}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
