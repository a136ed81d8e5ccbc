//! The forge's packers (I2_S, TQ1_0, TQ2_0) against straightforward unpackers written here
//! from the vendored layouts, plus hand-computed bytes for the bit order.

use engine::forge::pack::{pack_f16, pack_f32, pack_i2s, pack_tq1_0, pack_tq2_0};
use engine::forge::rng::Stream;
use half::f16;

/// I2_S: 128-value blocks of 32 bytes, value j at byte j % 32, shift 6 − 2·(j / 32);
/// code 0/1/2 → −1/0/+1; f32 scale at n/4 (`ggml-bitnet-mad.cpp`).
fn unpack_i2s(data: &[u8], n: usize) -> Vec<f32> {
    assert_eq!(data.len(), n / 4 + 32);
    let scale = f32::from_le_bytes(data[n / 4..n / 4 + 4].try_into().unwrap());
    assert!(
        data[n / 4 + 4..].iter().all(|&b| b == 0),
        "padding must be zero"
    );
    (0..n)
        .map(|i| {
            let (block, j) = (i / 128, i % 128);
            let code = (data[block * 32 + j % 32] >> (6 - 2 * (j / 32))) & 3;
            assert!(code <= 2, "code 3 never occurs");
            (f32::from(code) - 1.0) * scale
        })
        .collect()
}

/// TQ2_0 (`dequantize_row_tq2_0`): per 256 values, 64 bytes of 2-bit codes then f16 d;
/// value 128·h + 32·l + m sits in byte 32·h + m at bits 2·l.
fn unpack_tq2_0(data: &[u8]) -> Vec<f32> {
    let mut out = Vec::new();
    for block in data.chunks_exact(66) {
        let d = f16::from_le_bytes([block[64], block[65]]).to_f32();
        for h in 0..2 {
            for l in 0..4 {
                for m in 0..32 {
                    let q = (block[32 * h + m] >> (2 * l)) & 3;
                    out.push((f32::from(q) - 1.0) * d);
                }
            }
        }
    }
    out
}

/// TQ1_0 (`dequantize_row_tq1_0`): per 256 values, qs[48] (5 trits per byte), qh[4]
/// (4 trits per byte), f16 d. Trit n of byte q is `((q·3^n mod 256)·3) >> 8`.
fn unpack_tq1_0(data: &[u8]) -> Vec<f32> {
    let pow3 = [1u8, 3, 9, 27, 81, 243];
    let trit = |q: u8, n: usize| (((u16::from(q.wrapping_mul(pow3[n]))) * 3) >> 8) as i32 - 1;
    let mut out = Vec::new();
    for block in data.chunks_exact(54) {
        let (qs, qh) = (&block[..48], &block[48..52]);
        let d = f16::from_le_bytes([block[52], block[53]]).to_f32();
        for n in 0..5 {
            for &q in &qs[..32] {
                out.push(trit(q, n) as f32 * d);
            }
        }
        for n in 0..5 {
            for &q in &qs[32..] {
                out.push(trit(q, n) as f32 * d);
            }
        }
        for n in 0..4 {
            for &q in qh {
                out.push(trit(q, n) as f32 * d);
            }
        }
    }
    out
}

fn ternary_times(n: usize, scale: f32, name: &str) -> Vec<f32> {
    Stream::new(42, name)
        .ternary(n)
        .into_iter()
        .map(|t| f32::from(t) * scale)
        .collect()
}

#[test]
fn ternary_streams_are_balanced() {
    let t = Stream::new(1, "x").ternary(300_000);
    for v in [-1i8, 0, 1] {
        let frac = t.iter().filter(|&&x| x == v).count() as f64 / t.len() as f64;
        assert!((frac - 1.0 / 3.0).abs() < 0.01, "{v}: {frac}");
    }
    let z = Stream::new(1, "y").normal(200_000);
    let mean = z.iter().map(|&x| f64::from(x)).sum::<f64>() / z.len() as f64;
    let var = z
        .iter()
        .map(|&x| (f64::from(x) - mean).powi(2))
        .sum::<f64>()
        / z.len() as f64;
    assert!(
        mean.abs() < 0.01 && (var - 1.0).abs() < 0.02,
        "mean {mean} var {var}"
    );
}

#[test]
fn i2s_round_trips() {
    for (n, scale) in [(128, 0.0765), (256 * 64, 0.125), (6912 * 3, 0.0147)] {
        let scale = f16::from_f32(scale).to_f32();
        let v = ternary_times(n, scale, "i2s");
        let packed = pack_i2s(&v);
        assert_eq!(packed.len(), n / 4 + 32);
        assert_eq!(unpack_i2s(&packed, n), v);
    }
}

#[test]
fn i2s_bit_order_by_hand() {
    // Block 0: value 0 = +1, value 32 = −1, values 64 and 96 = 0 → byte 0 = 2<<6 | 0<<4 |
    // 1<<2 | 1 = 0x85. Every other byte holds four zeros = 0b01010101.
    let mut v = vec![0f32; 256];
    v[0] = 0.5;
    v[32] = -0.5;
    v[128 + 97] = 0.25; // block 1, byte 1, shift 0 → 0b01010110
    let p = pack_i2s(&v);
    assert_eq!(p[0], 0x85);
    assert_eq!(p[1], 0x55);
    assert_eq!(p[32 + 1], 0x56);
    assert_eq!(&p[64..68], &0.5f32.to_le_bytes());
    assert_eq!(p.len(), 96);
    // quantize_i2_s: |x| < 1e-6 is zero; anything else keeps only its sign.
    let mut w = vec![0f32; 128];
    w[0] = 1e-7;
    w[1] = -0.01;
    let p = pack_i2s(&w);
    assert_eq!(p[0] >> 6, 1);
    assert_eq!(p[1] >> 6, 0);
}

#[test]
fn tq2_0_round_trips() {
    for n in [256, 256 * 27] {
        let scale = f16::from_f32(0.03).to_f32();
        let v = ternary_times(n, scale, "tq2");
        let p = pack_tq2_0(&v);
        assert_eq!(p.len(), n / 256 * 66);
        assert_eq!(unpack_tq2_0(&p), v);
    }
}

#[test]
fn tq1_0_round_trips() {
    for n in [256, 256 * 10] {
        let scale = f16::from_f32(0.05).to_f32();
        let v = ternary_times(n, scale, "tq1");
        let p = pack_tq1_0(&v);
        assert_eq!(p.len(), n / 256 * 54);
        assert_eq!(unpack_tq1_0(&p), v);
    }
}

#[test]
fn tq_blocks_by_hand() {
    // All +1 with d = 1: TQ2_0 codes are 2 → each byte 0b10101010; TQ1_0 trits 22222 =
    // 242 → ceil(242·256/243) = 255, qh 2222·3 = 240 → ceil(240·256/243) = 253.
    let v = vec![1f32; 256];
    let p2 = pack_tq2_0(&v);
    assert!(p2[..64].iter().all(|&b| b == 0xaa));
    assert_eq!(&p2[64..], &f16::ONE.to_le_bytes());
    let p1 = pack_tq1_0(&v);
    assert!(p1[..48].iter().all(|&b| b == 255));
    assert!(p1[48..52].iter().all(|&b| b == 253));
    assert_eq!(unpack_tq1_0(&p1), v);
    // An all-zero block: d = 0 and all codes "zero".
    let z = vec![0f32; 256];
    assert_eq!(unpack_tq1_0(&pack_tq1_0(&z)), z);
    assert_eq!(unpack_tq2_0(&pack_tq2_0(&z)), z);
    assert!(pack_tq2_0(&z)[..64].iter().all(|&b| b == 0x55));
}

#[test]
fn float_packers_are_little_endian() {
    assert_eq!(pack_f32(&[1.0]), 1.0f32.to_le_bytes());
    assert_eq!(pack_f16(&[-2.0]), f16::from_f32(-2.0).to_le_bytes());
}
