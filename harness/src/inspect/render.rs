//! The text `bitprobe inspect` prints.

use super::*;

/// The human-readable report: header, metadata, tensor table, statistics, warnings.
pub fn render(r: &Inspection) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let h = &r.header;
    let _ = writeln!(s, "file        {}", r.path);
    let _ = writeln!(
        s,
        "header      GGUF v{} · alignment {} · {} tensors · {} kv · data at byte {} · {} bytes",
        h.version, h.alignment, h.tensor_count, h.kv_count, h.data_offset, h.file_size
    );
    let _ = writeln!(s, "\nmetadata");
    let kw = r.metadata.iter().map(|m| m.key.len()).max().unwrap_or(0);
    for m in &r.metadata {
        let _ = writeln!(
            s,
            "  {:<kw$}  {:<18} {}",
            m.key,
            m.ty,
            render_value(&m.value)
        );
    }
    let _ = writeln!(
        s,
        "\ntensors (shape in ggml order, ne0 first; offset from the data section)"
    );
    let nw = r
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        s,
        "  {:<nw$}  {:<6} {:<16} {:>12} {:>12}",
        "name", "type", "shape", "bytes", "offset"
    );
    for t in &r.tensors {
        let shape = format!("{:?}", t.shape);
        let _ = writeln!(
            s,
            "  {:<nw$}  {:<6} {:<16} {:>12} {:>12}",
            t.name, t.ty, shape, t.bytes, t.offset
        );
    }
    if !r.norms.is_empty() {
        let _ = writeln!(s, "\nnorm gammas");
        let _ = writeln!(
            s,
            "  {:<nw$}  {:>10} {:>10} {:>10} {:>10} {:>10}",
            "name", "mean", "std", "min", "max", "rms"
        );
        for n in &r.norms {
            let _ = writeln!(
                s,
                "  {:<nw$}  {:>10.4} {:>10.4} {:>10.4} {:>10.4} {:>10.4}",
                n.name, n.mean, n.std, n.min, n.max, n.rms
            );
        }
    }
    if !r.ternary.is_empty() {
        let _ = writeln!(
            s,
            "\nternary projections (share of −1 / 0 / +1; other = off the ternary grid)"
        );
        let _ = writeln!(
            s,
            "  {:<nw$}  {:<6} {:>11} {:>7} {:>7} {:>7} {:>8}",
            "name", "type", "scale", "−1", "0", "+1", "other"
        );
        for t in &r.ternary {
            let scale = if t.scale_min == t.scale_max {
                format!("{:.5}", t.scale)
            } else {
                format!("~{:.5}", t.scale)
            };
            let _ = writeln!(
                s,
                "  {:<nw$}  {:<6} {:>11} {:>6.1}% {:>6.1}% {:>6.1}% {:>8}",
                t.name,
                t.ty,
                scale,
                100.0 * t.minus,
                100.0 * t.zero,
                100.0 * t.plus,
                t.other
            );
        }
        if r.ternary.iter().any(|t| t.scale_min != t.scale_max) {
            let _ = writeln!(
                s,
                "  (~: TQ1_0/TQ2_0 have one scale per 256-value block; shown is the mean)"
            );
        }
    }
    if !r.embeddings.is_empty() {
        let _ = writeln!(s, "\nembeddings");
        for e in &r.embeddings {
            let _ = writeln!(
                s,
                "  {:<nw$}  {:<6} mean {:.5}  std {:.5}  min {:.4}  max {:.4}",
                e.name, e.ty, e.mean, e.std, e.min, e.max
            );
        }
    }
    let _ = writeln!(s);
    if r.warnings.is_empty() {
        let _ = writeln!(s, "warnings    none");
    }
    for w in &r.warnings {
        let _ = writeln!(s, "warning     {}", wrap(&w.message, 88, 12));
    }
    s
}

/// Word-wraps `text` at `width` columns, continuation lines indented by `indent`.
pub(super) fn wrap(text: &str, width: usize, indent: usize) -> String {
    let mut out = String::new();
    let mut col = 0;
    for word in text.split(' ') {
        let w = word.chars().count();
        if col > 0 && col + 1 + w > width {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', indent));
            col = 0;
        } else if col > 0 {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += w;
    }
    out
}

pub(super) fn render_value(v: &serde_json::Value) -> String {
    const MAX: usize = 100;
    let text = match v {
        serde_json::Value::Object(o) => match (o.get("len"), o.get("first")) {
            (Some(len), Some(first)) => {
                let items = first.to_string();
                format!("{}, … ({len} items)", items.trim_end_matches(']'))
            }
            _ => v.to_string(),
        },
        _ => v.to_string(),
    };
    if text.chars().count() > MAX {
        let cut: String = text.chars().take(MAX).collect();
        format!("{cut}… ({} chars)", text.chars().count())
    } else {
        text
    }
}
