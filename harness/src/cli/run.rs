//! `bitprobe run`: generate with one probe, streaming; and the hidden `serve-engine`.

use crate::*;

pub(crate) fn engine_options(tokenizer: &str) -> Vec<(&str, &str)> {
    vec![("tokenizer", tokenizer)]
}

pub(crate) fn run(a: RunArgs) -> Result<ExitCode> {
    let path = a.model.resolve()?;
    let opts = if a.probe == ProbeKind::Engine {
        engine_options(&a.tokenizer)
    } else {
        vec![]
    };
    let mut p = probes::open(a.probe, &path, a.threads, &opts)?;
    let prompt = harness::case::Prompt {
        chat: a.chat,
        ..harness::case::Prompt::text(&a.prompt)
    }
    .tokenize(p.as_mut())?;
    let info = p.info().clone();
    eprintln!(
        "{} · {} · {} threads",
        info.implementation,
        path.display(),
        info.threads
    );
    eprintln!("prompt: {} tokens {:?}", prompt.len(), prompt);
    let sampling = if a.temp > 0.0 {
        Sampling::Seeded {
            temperature: a.temp,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        }
    } else {
        Sampling::Greedy
    };
    let mut req = GenerateRequest::greedy(prompt.clone(), a.n);
    req.sampling = sampling;
    req.stop_at_eos = true;
    // Every piece up front (≈1 MB for a 128k vocab), so tokens print as they are chosen.
    let all: Vec<u32> = (0..info.n_vocab).collect();
    let table = p.pieces(&all)?;
    let mut stdout = std::io::stdout();
    let g = {
        let mut on_token = |t: u32| {
            let _ = stdout.write_all(table.get(t as usize).map_or(&[][..], |v| v.as_slice()));
            let _ = stdout.flush();
        };
        p.generate_with(&req, &mut on_token)?
    };
    writeln!(stdout)?;
    eprintln!("generated: {:?}", g.tokens);
    eprintln!(
        "prompt: {:.1} tok/s ({} tokens in {:.3} s) · decode: {:.1} tok/s ({} steps in {:.3} s)",
        prompt.len() as f64 / g.prefill_seconds.max(1e-9),
        prompt.len(),
        g.prefill_seconds,
        g.steps.len() as f64 / g.decode_seconds.max(1e-9),
        g.steps.len(),
        g.decode_seconds
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn serve_engine() -> Result<ExitCode> {
    probe::wire::serve(
        engine::EngineProbe::open,
        std::io::stdin().lock(),
        std::io::stdout().lock(),
    )?;
    Ok(ExitCode::SUCCESS)
}
