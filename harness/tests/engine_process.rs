//! The engine behind the wire protocol (`bitprobe serve-engine`) gives the same bits as the
//! engine in-process: the protocol carries logits and stages without loss.

use probe::wire::RemoteProbe;
use probe::{Capture, GenerateRequest, OpenRequest, Probe};

#[test]
fn remote_engine_equals_in_process_engine() {
    let model = engine::forge::forged("tiny-i2s", 1).unwrap();
    let req = OpenRequest::new(&model).threads(1);
    let mut local = engine::EngineProbe::open(&req).unwrap();
    let mut remote = RemoteProbe::spawn(
        "engine",
        env!("CARGO_BIN_EXE_bitprobe"),
        &["serve-engine"],
        req,
    )
    .unwrap();
    assert_eq!(local.info(), remote.info());

    let tokens = local.tokenize("Hello world", true, false).unwrap();
    assert_eq!(tokens, remote.tokenize("Hello world", true, false).unwrap());
    let a = local.forward(&tokens, &Capture::all()).unwrap();
    let b = remote.forward(&tokens, &Capture::all()).unwrap();
    assert_eq!(probe::blake3_f32(&a.logits), probe::blake3_f32(&b.logits));
    assert_eq!(a.stages, b.stages);

    let mut streamed = Vec::new();
    let g = remote
        .generate_with(&GenerateRequest::greedy(tokens.clone(), 6), &mut |t| {
            streamed.push(t)
        })
        .unwrap();
    assert_eq!(
        streamed, g.tokens,
        "every token is streamed before the reply"
    );
    assert_eq!(
        g.tokens,
        local
            .generate(&GenerateRequest::greedy(tokens, 6))
            .unwrap()
            .tokens
    );
}
