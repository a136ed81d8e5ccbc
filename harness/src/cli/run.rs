//! `bitprobe run`: generate with one probe, streaming; and the hidden `serve-engine`.

use crate::*;

pub(crate) fn run(a: RunArgs) -> Result<ExitCode> {
    if !(a.temp.is_finite() && a.temp >= 0.0) {
        bail!(
            "--temp {}: give a finite temperature ≥ 0 (0 = greedy)",
            a.temp
        );
    }
    if !(a.top_p.is_finite() && (0.0..=1.0).contains(&a.top_p)) {
        bail!("--top-p {}: give a probability in [0, 1]", a.top_p);
    }
    let spec = cli::spec(&a.probe)?;
    let path = a.model.resolve()?;
    let mut p = open_probe(&spec, &path, a.threads, a.timeout, &a.engine)?;
    let info = p.info().clone();
    let caps = info.caps();
    if !caps.generate {
        bail!("{spec} cannot generate (it declares no `generate` capability)");
    }
    let prompt = a.prompt.prompt(0)?;
    let prompt = if caps.tokenize {
        prompt.tokenize(p.as_mut())?
    } else {
        // A generate-only probe gets our engine's tokens for the same file.
        let mut e = probes::open(
            &ProbeSpec::Engine,
            &path,
            1,
            &a.engine.options(),
            Default::default(),
        )?;
        eprintln!("{spec} cannot tokenize: using bitprobe's engine's tokens");
        prompt.tokenize(e.as_mut())?
    };
    eprintln!(
        "{} · {} · {} threads",
        info.implementation,
        path.display(),
        info.threads
    );
    if prompt.len() <= 48 {
        eprintln!("prompt: {} tokens {:?}", prompt.len(), prompt);
    } else {
        eprintln!(
            "prompt: {} tokens {:?} … {:?}",
            prompt.len(),
            &prompt[..24],
            &prompt[prompt.len() - 8..]
        );
    }
    cli::warn_long_prompt(&spec, &path, info.threads as usize, prompt.len());
    let sampling = if a.temp > 0.0 {
        Sampling::Seeded {
            temperature: a.temp,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.sampling_seed,
        }
    } else {
        Sampling::Greedy
    };
    let mut req = GenerateRequest::greedy(prompt.clone(), a.n);
    req.sampling = sampling;
    req.stop_at_eos = true;
    // Every piece up front (≈1 MB for a 128k vocab), so tokens print as they are chosen.
    let table = if caps.tokenize {
        let all: Vec<u32> = (0..info.n_vocab).collect();
        p.pieces(&all)?
    } else {
        Vec::new()
    };
    let mut stdout = std::io::stdout();
    let g = {
        let mut on_token = |t: u32| {
            let _ = match table.get(t as usize) {
                Some(piece) => stdout.write_all(piece),
                None => write!(stdout, "[{t}]"),
            };
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
    probe::wire::exit_when_orphaned();
    probe::wire::serve(
        engine::EngineProbe::open,
        std::io::stdin().lock(),
        std::io::stdout().lock(),
    )?;
    Ok(ExitCode::SUCCESS)
}
