//! A probe server with one deliberate defect, for testing `bitprobe conformance` and the
//! harness's protection against misbehaving probes (it is bitprobe's engine underneath).
//!
//! ```sh
//! cargo build -p harness --example broken_probe
//! bitprobe conformance 'cmd:target/debug/examples/broken_probe --defect hang' --timeout 3
//! ```
//!
//! Defects: `none`, `wrong-blob-count` (a forward reply that references a blob the frame does
//! not carry), `wrong-shape` (attn_q reported as [head_dim, n_head]), `crash-in-forward`
//! (abort), `hang` (a forward that never answers), `non-causal` (position 0's logits depend on
//! later tokens), `generate-only` (no defect: declares greedy generation only, like an engine
//! that gives tokens and nothing else).

use probe::wire::{read_frame, write_frame, Request, Response};
use probe::{Capabilities, Capture, Forward, Probe, Stage};
use std::io::Write;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Defect {
    None,
    WrongBlobCount,
    WrongShape,
    CrashInForward,
    Hang,
    NonCausal,
    GenerateOnly,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let defect = match args
        .iter()
        .position(|a| a == "--defect")
        .and_then(|i| args.get(i + 1))
    {
        None => Defect::None,
        Some(d) => match d.as_str() {
            "none" => Defect::None,
            "wrong-blob-count" => Defect::WrongBlobCount,
            "wrong-shape" => Defect::WrongShape,
            "crash-in-forward" => Defect::CrashInForward,
            "hang" => Defect::Hang,
            "non-causal" => Defect::NonCausal,
            "generate-only" => Defect::GenerateOnly,
            other => {
                eprintln!("broken_probe: unknown defect {other}");
                std::process::exit(2);
            }
        },
    };
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut output = std::io::stdout().lock();
    let mut probe: Option<engine::EngineProbe> = None;
    while let Ok(Some(req)) = read_frame::<Request>(&mut input) {
        let reply = match (&req, probe.as_mut()) {
            (Request::Open(o), _) => match engine::EngineProbe::open(o) {
                Ok(p) => {
                    let mut info = p.info().clone();
                    if defect == Defect::GenerateOnly {
                        info.capabilities = Some(Capabilities::generate_only());
                    }
                    probe = Some(p);
                    Response::Opened(info)
                }
                Err(e) => Response::Error(e),
            },
            (_, None) => Response::Error(probe::Error::InvalidRequest("before open".into())),
            (Request::Tokenize { .. } | Request::Pieces { .. } | Request::Forward { .. }, _)
                if defect == Defect::GenerateOnly =>
            {
                Response::Error(probe::Error::InvalidRequest(
                    "this probe only generates".into(),
                ))
            }
            (
                Request::Tokenize {
                    text,
                    add_bos,
                    parse_special,
                },
                Some(p),
            ) => reply(p.tokenize(text, *add_bos, *parse_special), Response::Tokens),
            (Request::Pieces { ids }, Some(p)) => reply(p.pieces(ids), Response::Pieces),
            (Request::Forward { tokens, capture }, Some(p)) => match defect {
                Defect::CrashInForward => std::process::abort(),
                Defect::Hang => loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                },
                _ => reply(forward(p, tokens, capture, defect), Response::Forward),
            },
            (Request::Generate(g), Some(p)) => {
                let mut on_token = |t| {
                    let _ = write_frame(&mut output, &Response::Token(t));
                };
                let r = p.generate_with(g, &mut on_token);
                reply(r, Response::Generation)
            }
        };
        if defect == Defect::WrongBlobCount && matches!(reply, Response::Forward(_)) {
            // Serialize, then drop the last blob and claim one blob fewer.
            let mut buf = Vec::new();
            write_frame(&mut buf, &reply).unwrap();
            let json_len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
            let at = 4 + json_len;
            let n = u32::from_le_bytes(buf[at..at + 4].try_into().unwrap());
            buf[at..at + 4].copy_from_slice(&(n - 1).to_le_bytes());
            // Walk to the last blob and cut it off.
            let mut off = at + 4;
            for _ in 0..n - 1 {
                let k = u64::from_le_bytes(buf[off..off + 8].try_into().unwrap()) as usize;
                off += 8 + 4 * k;
            }
            buf.truncate(off);
            output.write_all(&buf).unwrap();
            output.flush().unwrap();
        } else if write_frame(&mut output, &reply).is_err() {
            break;
        }
    }
}

fn forward(
    p: &mut engine::EngineProbe,
    tokens: &[u32],
    capture: &Capture,
    defect: Defect,
) -> probe::Result<Forward> {
    let mut f = p.forward(tokens, capture)?;
    match defect {
        Defect::WrongShape => {
            for t in f.stages.iter_mut().filter(|t| t.stage == Stage::AttnQ) {
                t.shape.reverse();
            }
        }
        Defect::NonCausal => {
            let later: f32 = tokens.iter().skip(1).map(|&t| t as f32).sum();
            for x in f.logits.iter_mut().take(f.n_vocab as usize) {
                *x += 1e-3 * later;
            }
        }
        _ => {}
    }
    Ok(f)
}

fn reply<T>(r: probe::Result<T>, ok: impl FnOnce(T) -> Response) -> Response {
    match r {
        Ok(v) => ok(v),
        Err(e) => Response::Error(e),
    }
}
