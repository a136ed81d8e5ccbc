//! bitnet.cpp as an oracle must be a fixed point: the same input gives the same bits, the
//! thread count does not matter, and position i never sees tokens after i.

mod common;

use common::{bits, max_abs_diff, open, prompt, TINY};
use probe::{Capture, Probe};

#[test]
fn two_forwards_are_bit_identical() {
    for preset in TINY {
        let mut p = open(preset, 1);
        let tokens = prompt(&mut p);
        let a = p.forward(&tokens, &Capture::all()).unwrap();
        let b = p.forward(&tokens, &Capture::all()).unwrap();
        assert_eq!(bits(&a.logits), bits(&b.logits), "{preset}");
        assert_eq!(a.stages, b.stages, "{preset}");
    }
}

/// Threads 1 and 2 give the same bits for logits and every stage: ggml splits each op's
/// output rows between threads, and every output value is computed whole by one thread.
#[test]
fn thread_count_does_not_change_the_bits() {
    for preset in TINY {
        let (mut one, mut two) = (open(preset, 1), open(preset, 2));
        let tokens = prompt(&mut one);
        let a = one.forward(&tokens, &Capture::all()).unwrap();
        let b = two.forward(&tokens, &Capture::all()).unwrap();
        eprintln!(
            "{preset}: threads 1 vs 2: logits max |Δ| {:e}",
            max_abs_diff(&a.logits, &b.logits)
        );
        assert_eq!(
            bits(&a.logits),
            bits(&b.logits),
            "{preset}: logits differ between 1 and 2 threads"
        );
        for (x, y) in a.stages.iter().zip(&b.stages) {
            assert_eq!((x.id(), x.position), (y.id(), y.position));
            assert_eq!(
                bits(&x.data),
                bits(&y.data),
                "{preset}: {} at {} differs between 1 and 2 threads",
                x.id(),
                x.position
            );
        }
    }
}

/// The oracle's own causality: position-i logits and stages do not change when the tokens
/// after i do (the BITNET_NOTES §5 bug "C++ reference run with causal attention off").
#[test]
fn position_i_does_not_see_later_tokens() {
    for preset in TINY {
        let mut p = open(preset, 1);
        let a_tokens = prompt(&mut p);
        let n = a_tokens.len();
        let keep = n / 2;
        let mut b_tokens = a_tokens[..keep].to_vec();
        b_tokens.extend(
            p.tokenize(" jumps over the lazy dog again and again", false, false)
                .unwrap(),
        );
        assert_ne!(a_tokens[keep..], b_tokens[keep..]);
        let a = p.forward(&a_tokens, &Capture::all()).unwrap();
        let b = p.forward(&b_tokens, &Capture::all()).unwrap();
        for i in 0..keep {
            assert_eq!(
                bits(a.logits_at(i)),
                bits(b.logits_at(i)),
                "{preset}: logits at {i} depend on later tokens"
            );
        }
        for (x, y) in a
            .stages
            .iter()
            .filter(|t| (t.position as usize) < keep)
            .zip(b.stages.iter().filter(|t| (t.position as usize) < keep))
        {
            assert_eq!((x.id(), x.position), (y.id(), y.position));
            assert_eq!(
                bits(&x.data),
                bits(&y.data),
                "{preset}: {} at {} depends on later tokens",
                x.id(),
                x.position
            );
        }
        // …and the suffix did matter from `keep` on.
        assert_ne!(bits(a.logits_at(keep)), bits(b.logits_at(keep)), "{preset}");
    }
}
