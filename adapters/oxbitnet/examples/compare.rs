//! A tiny driver: oxbitnet (this adapter) against bitnet.cpp (`bitprobe-oracle`) on one GGUF,
//! over the wire protocol, until bitprobe's own case files take over.
//!
//!     cargo run --release --example compare -- ORACLE_BIN MODEL.gguf [PROMPT] [N]
//!
//! (N = 0: compare the tokenization of PROMPT only.)
//!
//! The prompt is tokenized by the oracle (add_bos, no parse_special) and both sides get the
//! same ids. Two runs:
//! 1. free greedy generation of N tokens on each side: where do the token streams part?
//! 2. teacher-forced: oxbitnet is fed the oracle's tokens, so every row (each prompt
//!    position and each decode step) is compared on the same sequence: max |Δ|, NMSE
//!    (Σ(a−b)² / Σb²), argmax agreement, and the oracle's top-1 margin where they disagree.
//!
//! Environment: `OXBITNET_BIN` (default: the adapter binary next to this example),
//! `THREADS` (default 1, passed to both), `TIMEOUT` (seconds per request, default 1800).

use probe::wire::{Launch, RemoteProbe, Watchdog};
use probe::{argmax, GenerateRequest, OpenRequest, Probe};

fn top2(v: &[f32]) -> (usize, f32, usize, f32) {
    let a = argmax(v) as usize;
    let mut b = if a == 0 { 1 } else { 0 };
    for (i, &x) in v.iter().enumerate() {
        if i != a && x > v[b] {
            b = i;
        }
    }
    (a, v[a], b, v[b])
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: compare ORACLE_BIN MODEL.gguf [PROMPT] [N]");
        std::process::exit(2);
    }
    let oracle_bin = &args[0];
    let model = &args[1];
    let prompt = args.get(2).map(String::as_str).unwrap_or("Hello");
    let n: usize = args.get(3).map(|s| s.parse().expect("N")).unwrap_or(12);
    let threads: usize = std::env::var("THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let ox_bin = std::env::var("OXBITNET_BIN").unwrap_or_else(|_| {
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().unwrap().parent().unwrap();
        dir.join("bitprobe-oxbitnet").display().to_string()
    });

    // oxbitnet on a software Vulkan device is slow (seconds per token on small-llama3): one
    // flat deadline per request, TIMEOUT seconds (default 1800).
    let timeout: f64 = std::env::var("TIMEOUT").ok().and_then(|s| s.parse().ok()).unwrap_or(1800.0);
    let launch = |label: &str, bin: &str| Launch::new(label, bin, &[]).watchdog(Watchdog::flat(timeout));
    let open = OpenRequest::new(model).threads(threads);
    let mut oracle = RemoteProbe::launch(launch("oracle", oracle_bin), open.clone()).expect("oracle");
    let t0 = std::time::Instant::now();
    let mut ox = match RemoteProbe::launch(launch("oxbitnet", &ox_bin), open) {
        Ok(p) => p,
        Err(e) => {
            println!("oxbitnet: cannot open {model}: {e}");
            std::process::exit(1);
        }
    };
    println!("oxbitnet open: {:.2}s; {}", t0.elapsed().as_secs_f64(), ox.info().implementation);
    println!("oracle:   {}", oracle.info().implementation);
    let (oi, xi) = (oracle.info().clone(), ox.info().clone());
    println!(
        "arch {} | oracle n_vocab {} rope {} eps {} | oxbitnet n_vocab {} rope {} eps {} head_dim {} weight types {:?}",
        oi.arch, oi.n_vocab, oi.rope_freq_base, oi.rms_eps, xi.n_vocab, xi.rope_freq_base, xi.rms_eps,
        xi.head_dim, xi.weight_types
    );

    let ids = oracle.tokenize(prompt, true, false).expect("oracle tokenize");
    match ox.tokenize(prompt, true, false) {
        Ok(t) if t == ids => println!("tokenize {prompt:?}: same ids {ids:?}"),
        Ok(t) => println!("tokenize {prompt:?}: DIFFER oracle {ids:?} oxbitnet {t:?}"),
        Err(e) => println!("tokenize {prompt:?}: oxbitnet error {e}"),
    }
    if n == 0 {
        return; // N = 0: tokenization only
    }

    // 1. free greedy generation
    let g = GenerateRequest::greedy(ids.clone(), n);
    let go = oracle.generate(&g).expect("oracle generate");
    let t1 = std::time::Instant::now();
    let gx = ox.generate(&g).expect("oxbitnet generate");
    let gen_s = t1.elapsed().as_secs_f64();
    let part = go.tokens.iter().zip(&gx.tokens).position(|(a, b)| a != b);
    println!("oracle   tokens {:?}", go.tokens);
    println!("oxbitnet tokens {:?}", gx.tokens);
    match part {
        None => println!("free greedy: SAME {} tokens", go.tokens.len()),
        Some(i) => println!("free greedy: PART at generated token {i} (position {})", ids.len() + i),
    }
    println!(
        "oxbitnet timing: prefill {:.3}s, decode {:.3}s ({} steps), request {:.2}s",
        gx.prefill_seconds,
        gx.decode_seconds,
        gx.steps.len(),
        gen_s
    );

    // 2. teacher-forced, every row
    let mut tf = GenerateRequest::greedy(ids.clone(), n);
    tf.keep_logits = true;
    let ro = oracle.generate(&tf).expect("oracle generate (keep_logits)");
    tf.forced = Some(ro.tokens[..ro.tokens.len().saturating_sub(1)].to_vec());
    let ro = oracle.generate(&tf).expect("oracle generate (forced)");
    let rx = ox.generate(&tf).expect("oxbitnet generate (forced)");
    let v = oi.n_vocab as usize;
    let mut rows: Vec<(String, Vec<f32>, Vec<f32>)> = Vec::new();
    for p in 0..ids.len() {
        rows.push((
            format!("prompt pos {p}"),
            ro.prefill.logits[p * v..(p + 1) * v].to_vec(),
            rx.prefill.logits[p * v..(p + 1) * v].to_vec(),
        ));
    }
    for (a, b) in ro.steps.iter().zip(&rx.steps) {
        rows.push((
            format!("step pos {} (fed {})", a.position, a.input),
            a.logits.clone().unwrap(),
            b.logits.clone().unwrap(),
        ));
    }
    println!("teacher-forced rows (oracle vs oxbitnet):");
    println!("  {:<26} {:>10} {:>10} {:>10} {:>8} {:>8} {:>10}", "row", "max|Δ|", "NMSE", "rms(ref)", "top1 ref", "top1 ox", "ref margin");
    let mut agree = 0;
    for (name, a, b) in &rows {
        let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let den: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
        let maxd = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let (ta, va, _, vb) = top2(a);
        let tb = argmax(b) as usize;
        agree += (ta == tb) as usize;
        println!(
            "  {:<26} {:>10.4} {:>10.3e} {:>10.4} {:>8} {:>8} {:>10.4}",
            name,
            maxd,
            num / den.max(1e-30),
            (den / a.len() as f64).sqrt(),
            ta,
            tb,
            va - vb
        );
    }
    println!("  top-1 agreement {agree}/{}", rows.len());
}
