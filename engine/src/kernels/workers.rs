//! The pool's other threads, kept awake through a forward pass.
//!
//! A 2B-4T I2_S decode step is 210 ternary matmuls of 25–350 µs each on one thread (attn_k
//! to ffn_gate, `docs/performance.md`) and the head, with serial work between them (norms,
//! RoPE, attention, quantizing activations). An idle rayon worker yields a few dozen times and
//! then sleeps on a futex, and waking it for the next matmul costs a system call and, on a
//! VM, an inter-processor interrupt. [`kept_awake`] runs a pass while the other workers
//! poll for the pass's tasks (`rayon::yield_now`), as ggml's own threads spin between
//! ops. Who computes a row never changes how it is computed, so results are unchanged.
//!
//! Measured on the 2B-4T models, two threads on the 2-vCPU Xeon, `bitprobe run -n 128`:
//! decode I2_S 18.7–19.1 → 20.4–20.8 tok/s, TQ2_0 17.0–17.1 → 18.7–19.0, TQ1_0 15.7–15.9 →
//! 16.4–16.6. A 121-token prefill, whose matmuls are long, ran slower kept awake (114–124
//! against 130–146 tok/s, whatever the pause between polls), so only single-token passes
//! are ([`EngineProbe`](crate::EngineProbe)).

use std::sync::atomic::{AtomicBool, Ordering};

/// Sets the flag when dropped, so the pollers stop even if the pass panics.
struct Done<'a>(&'a AtomicBool);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs `f` on this rayon worker while every other worker of its pool polls for work
/// until `f` returns. Outside a pool, or in a pool of one thread, just runs `f`. Allocates
/// nothing: the pollers are `rayon::join` stack jobs, not spawned ones (a decode step
/// allocates nothing).
pub fn kept_awake<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let (Some(me), n) = (rayon::current_thread_index(), rayon::current_num_threads()) else {
        return f();
    };
    if n < 2 {
        return f();
    }
    let done = AtomicBool::new(false);
    let poll = || {
        // A poller this thread runs itself (popped while `f` waits inside a join, or
        // after `f`, not stolen) must not poll here: `f` could not return under it.
        if rayon::current_thread_index() == Some(me) {
            return;
        }
        while !done.load(Ordering::Acquire) {
            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::hint::spin_loop();
            }
        }
    };
    with_pollers(n - 1, &poll, || {
        let _done = Done(&done);
        f()
    })
}

/// `f()` beside `k` jobs running `poll`, each offered to the other workers by a
/// `rayon::join`; returns when `f` and every poller have.
fn with_pollers<R: Send>(k: usize, poll: &(impl Fn() + Sync), f: impl FnOnce() -> R + Send) -> R {
    if k == 0 {
        return f();
    }
    rayon::join(|| with_pollers(k - 1, poll, f), poll).0
}
