//! The engine as a `Probe`: every stage present, finite, deterministic across thread counts,
//! generation consistent with the batched pass, and malformed models rejected with errors.

use engine::forge::forged;
use engine::EngineProbe;
use probe::{Capture, GenerateRequest, OpenRequest, Probe, Sampling, Stage};

fn open(preset: &str, threads: usize) -> EngineProbe {
    let path = forged(preset, 1).unwrap();
    EngineProbe::open(&OpenRequest::new(path).threads(threads)).unwrap()
}

const TYPES: [&str; 5] = ["f32", "f16", "i2s", "tq1", "tq2"];

#[test]
fn every_stage_of_every_weight_type_is_finite_and_shaped() {
    for arch in ["tiny", "tiny158"] {
        for ty in TYPES {
            let name = format!("{arch}-{ty}");
            let mut p = open(&name, 2);
            let info = p.info().clone();
            let tokens = p
                .tokenize("Hello world, this is bitprobe.", true, false)
                .unwrap();
            let f = p.forward(&tokens, &Capture::all()).unwrap();
            assert_eq!(f.logits.len(), tokens.len() * info.n_vocab as usize);
            assert!(
                f.logits.iter().all(|x| x.is_finite()),
                "{name}: non-finite logits"
            );
            let per_pos = 3 + 15 * info.n_layer as usize;
            assert_eq!(
                f.stages.len(),
                per_pos * tokens.len(),
                "{name}: stage count"
            );
            for t in &f.stages {
                assert!(
                    t.data.iter().all(|x| x.is_finite()),
                    "{name}: {} pos {} non-finite",
                    t.id(),
                    t.position
                );
                let want: usize = t.shape.iter().product();
                assert_eq!(t.data.len(), want, "{name}: {} shape", t.id());
            }
            let q = f.stages.iter().find(|t| t.stage == Stage::AttnQ).unwrap();
            assert_eq!(q.shape, vec![info.n_head as usize, info.head_dim as usize]);
            // The last stage is the logits again, for each position.
            let last = f
                .stages
                .iter()
                .filter(|t| t.stage == Stage::ResultOutput)
                .count();
            assert_eq!(last, tokens.len());
        }
    }
}

#[test]
fn one_thread_and_two_threads_are_bit_identical() {
    for ty in TYPES {
        let name = format!("tiny-{ty}");
        let (mut a, mut b) = (open(&name, 1), open(&name, 2));
        let tokens = a
            .tokenize("The quick brown fox jumps over the lazy dog", true, false)
            .unwrap();
        let fa = a.forward(&tokens, &Capture::all()).unwrap();
        let fb = b.forward(&tokens, &Capture::all()).unwrap();
        assert_eq!(
            probe::blake3_f32(&fa.logits),
            probe::blake3_f32(&fb.logits),
            "{name}"
        );
        for (x, y) in fa.stages.iter().zip(&fb.stages) {
            assert_eq!(
                x.blake3(),
                y.blake3(),
                "{name}: {} pos {}",
                x.id(),
                x.position
            );
        }
    }
}

#[test]
fn greedy_generation_follows_the_argmax_of_a_batched_pass() {
    let mut p = open("tiny-i2s", 2);
    let prompt = p.tokenize("Once upon a time", true, false).unwrap();
    let g = p
        .generate(&GenerateRequest::greedy(prompt.clone(), 8))
        .unwrap();
    assert_eq!(g.tokens.len(), 8);
    // Re-run the whole sequence as one batch: each generated token is the argmax there.
    let mut all = prompt.clone();
    all.extend(&g.tokens[..7]);
    let f = p.forward(&all, &Capture::none()).unwrap();
    for (i, &t) in g.tokens.iter().enumerate() {
        let pos = prompt.len() - 1 + i;
        assert_eq!(probe::argmax(f.logits_at(pos)), t, "step {i}");
    }
    // Seeded sampling reproduces.
    let mut req = GenerateRequest::greedy(prompt, 8);
    req.sampling = Sampling::Seeded {
        temperature: 1.0,
        top_k: 40,
        top_p: 0.95,
        seed: 3,
    };
    assert_eq!(
        p.generate(&req).unwrap().tokens,
        p.generate(&req).unwrap().tokens
    );
}

#[test]
fn malformed_models_are_errors_not_panics() {
    let good = std::fs::read(forged("tiny-i2s", 1).unwrap()).unwrap();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bitprobe-engine-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Truncated at several places.
    for cut in [10, 100, 5000, good.len() / 2, good.len() - 1] {
        let f = dir.join(format!("cut{cut}.gguf"));
        std::fs::write(&f, &good[..cut]).unwrap();
        let e = EngineProbe::open(&OpenRequest::new(&f))
            .err()
            .expect("truncated file must fail");
        assert!(matches!(e, probe::Error::Load { .. }), "{e}");
    }
    let e = EngineProbe::open(&OpenRequest::new(dir.join("absent.gguf")))
        .err()
        .unwrap();
    assert!(e.to_string().contains("absent.gguf"), "{e}");
    let e = EngineProbe::open(
        &OpenRequest::new(forged("tiny-i2s", 1).unwrap()).option("colour", "red"),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("colour"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_requests_are_errors() {
    let mut p = open("tiny-i2s", 1);
    let nv = p.info().n_vocab;
    assert!(p.forward(&[], &Capture::none()).is_err());
    assert!(p
        .forward(&[nv], &Capture::none())
        .unwrap_err()
        .to_string()
        .contains("outside the vocabulary"));
    let too_long = vec![1; p.info().n_ctx as usize + 1];
    assert!(p
        .forward(&too_long, &Capture::none())
        .unwrap_err()
        .to_string()
        .contains("context"));
}
