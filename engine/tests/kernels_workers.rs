//! `kernels::workers::kept_awake`: the pass's result, unchanged by the pollers; no hang
//! when the pass panics; plain `f` outside a pool and in a pool of one.

use engine::kernels::workers::kept_awake;
use rayon::prelude::*;
use std::sync::mpsc;
use std::time::Duration;

fn pool(n: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .expect("rayon pool")
}

/// Many small parallel jobs with serial work between them, as a decode step has.
fn pass() -> Vec<u64> {
    let mut out = Vec::new();
    for round in 0..200u64 {
        let v: u64 = (0..64u64)
            .into_par_iter()
            .map(|i| (i * 2654435761 + round).rotate_left(7))
            .sum();
        out.push(v ^ round);
    }
    out
}

/// Runs `f` on another thread and fails the test if it takes longer than 60 s.
fn within_a_minute<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("kept_awake did not return within 60 s")
}

#[test]
fn results_equal_a_plain_pass_at_every_pool_size() {
    let want = pass();
    assert_eq!(kept_awake(pass), want, "outside a pool");
    for n in [1, 2, 3, 4] {
        let got = within_a_minute(move || pool(n).install(|| kept_awake(pass)));
        assert_eq!(got, want, "pool of {n}");
    }
}

#[test]
fn a_panicking_pass_stops_the_pollers_and_propagates() {
    for n in [2, 3] {
        let caught = within_a_minute(move || {
            pool(n).install(|| {
                std::panic::catch_unwind(|| {
                    kept_awake(|| {
                        let _ = pass();
                        panic!("pass failed");
                    })
                })
                .is_err()
            })
        });
        assert!(caught, "pool of {n}: the panic reached the caller");
    }
}

#[test]
fn nested_passes_return() {
    let want = pass();
    let got = within_a_minute(move || pool(2).install(|| kept_awake(|| kept_awake(pass))));
    assert_eq!(got, want);
}
