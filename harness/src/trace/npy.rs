//! NPY files of little-endian f32, written and read by hand.

use super::format::{format_err, io_err, TraceError};
use std::io::Write;
use std::path::Path;

//
// Written and read by hand: NPY is a 10-byte preamble, a Python-literal header dict padded to
// a multiple of 64 bytes, then the raw values (numpy's `numpy/lib/format.py` documents it).
// For one dtype in C order that is twenty lines; `npyz` / `ndarray-npy` would add a
// dependency tree (ndarray, num-traits, …) for them.

const NPY_MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Writes `data` as an NPY v1.0 file of little-endian f32 with the given shape.
pub fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> std::io::Result<()> {
    let dims = match shape {
        [d] => format!("{d},"),
        _ => shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}");
    // Preamble (magic, version, u16 length) + header + '\n' is a multiple of 64.
    let total = (10 + header.len() + 1).div_ceil(64) * 64;
    header.extend(std::iter::repeat_n(' ', total - 10 - header.len() - 1));
    header.push('\n');
    let mut out = Vec::with_capacity(total + data.len() * 4);
    out.extend_from_slice(NPY_MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let mut f = std::fs::File::create(path)?;
    f.write_all(&out)
}

/// Reads an NPY file (v1.0, 2.0 or 3.0) of little-endian f32 in C order: (shape, values).
pub fn read_npy(path: &Path) -> Result<(Vec<usize>, Vec<f32>), TraceError> {
    let bytes = std::fs::read(path).map_err(io_err("read", path))?;
    let bad = |m: &str| format_err(path, format!("not an f32 NPY file: {m}"));
    if bytes.len() < 10 || &bytes[..6] != NPY_MAGIC {
        return Err(bad("no \\x93NUMPY magic"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(&format!("NPY version {v}"))),
    };
    let header = bytes
        .get(start..start + hlen)
        .ok_or_else(|| bad("header runs past the end"))?;
    let header = std::str::from_utf8(header)
        .map_err(|_| bad("header is not text"))?
        .replace('"', "'");
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}':"))? + key.len() + 3;
        Some(header[i..].trim_start())
    };
    let descr = field("descr").ok_or_else(|| bad("no 'descr'"))?;
    if !descr.starts_with("'<f4'") {
        return Err(bad(&format!(
            "dtype {}; expected '<f4'",
            descr.split(',').next().unwrap_or(descr)
        )));
    }
    if !field("fortran_order").is_some_and(|v| v.starts_with("False")) {
        return Err(bad("fortran_order must be False"));
    }
    let shape_text = field("shape").ok_or_else(|| bad("no 'shape'"))?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split_once(')'))
        .map(|(s, _)| s)
        .ok_or_else(|| bad("shape is not a tuple"))?;
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad(&format!("shape entry '{s}'"))))
        .collect::<Result<_, _>>()?;
    let n: usize = shape.iter().product();
    let body = &bytes[start + hlen..];
    if body.len() != n * 4 {
        return Err(bad(&format!(
            "shape {shape:?} needs {} data bytes, file has {}",
            n * 4,
            body.len()
        )));
    }
    let data = body
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((shape, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trips_and_pads_to_64() {
        let dir = std::env::temp_dir().join(format!("bitprobe-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for shape in [vec![5usize], vec![2, 3], vec![]] {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| i as f32 - 1.5).collect();
            let p = dir.join("x.npy");
            write_npy(&p, &shape, &data).unwrap();
            let bytes = std::fs::read(&p).unwrap();
            let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            assert_eq!((10 + hlen) % 64, 0);
            assert_eq!(bytes[10 + hlen - 1], b'\n');
            assert_eq!(read_npy(&p).unwrap(), (shape, data));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn npy_reader_reads_what_numpy_writes() {
        // numpy 2's `np.save(p, np.arange(5, dtype='<f4'))`: a header padded to 128 bytes.
        let dir = std::env::temp_dir().join(format!("bitprobe-npy-numpy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut h = "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }".to_string();
        h.extend(std::iter::repeat_n(' ', 117 - h.len()));
        h.push('\n');
        let mut b = NPY_MAGIC.to_vec();
        b.extend_from_slice(&[1, 0, 0x76, 0]);
        b.extend_from_slice(h.as_bytes());
        (0..5).for_each(|i| b.extend_from_slice(&(i as f32).to_le_bytes()));
        let p = dir.join("numpy.npy");
        std::fs::write(&p, b).unwrap();
        assert_eq!(
            read_npy(&p).unwrap(),
            (vec![5], vec![0.0, 1.0, 2.0, 3.0, 4.0])
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn npy_reader_rejects_other_dtypes() {
        let dir = std::env::temp_dir().join(format!("bitprobe-npy-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.npy");
        let mut h = "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }".to_string();
        h.extend(std::iter::repeat_n(' ', 128 - 10 - h.len() - 1));
        h.push('\n');
        let mut b = NPY_MAGIC.to_vec();
        b.extend_from_slice(&[1, 0]);
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(&1f64.to_le_bytes());
        std::fs::write(&p, b).unwrap();
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(e.contains("'<f8'") && e.contains("expected '<f4'"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
