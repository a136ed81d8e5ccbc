//! Run-time choice of the SIMD level, made once and cached.
//!
//! Every kernel has a portable scalar version and, on x86_64, AVX2 and AVX-512 versions that
//! give bit-identical results (integer paths are exact; float paths use one fixed reduction
//! order shared by all three). `BITPROBE_SIMD=scalar|avx2|avx512` forces a level; a level the
//! CPU lacks falls back to the best one it has below it.

use std::sync::OnceLock;

/// A SIMD level. Ordered: `Scalar < Avx2 < Avx512`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Simd {
    /// Portable Rust, no target features assumed.
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F/BW/VL (plus everything `Avx2` needs). On a CPU that also has AVX-512
    /// VNNI, I2_S matmuls at this level use it ([`crate::quant::i2s_vnni`]).
    Avx512,
}

impl Simd {
    /// All levels, lowest first.
    pub const ALL: [Simd; 3] = [Simd::Scalar, Simd::Avx2, Simd::Avx512];

    /// The best level this CPU supports (detected once: every kernel call clamps its level
    /// to it, the F16 head alone 128,256 times a token).
    pub fn detect() -> Simd {
        static DETECTED: OnceLock<Simd> = OnceLock::new();
        *DETECTED.get_or_init(Simd::detect_now)
    }

    fn detect_now() -> Simd {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c");
            let avx512 = avx2
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl");
            if avx512 {
                return Simd::Avx512;
            }
            if avx2 {
                return Simd::Avx2;
            }
        }
        Simd::Scalar
    }

    /// Whether this CPU can run `self`.
    pub fn is_supported(self) -> bool {
        self <= Simd::detect()
    }

    /// `self` if supported, else the best supported level below it.
    pub fn clamp(self) -> Simd {
        self.min(Simd::detect())
    }

    /// The level kernels use by default: `BITPROBE_SIMD` if set (clamped to what the CPU
    /// has), else [`Simd::detect`]. Read once per process.
    pub fn current() -> Simd {
        static CHOSEN: OnceLock<Simd> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            match std::env::var("BITPROBE_SIMD").ok().as_deref().map(str::trim) {
                Some(v) => match Simd::parse(v) {
                    Some(s) => s.clamp(),
                    None => {
                        eprintln!(
                            "bitprobe: BITPROBE_SIMD={v:?} is not one of scalar, avx2, avx512; using detection"
                        );
                        Simd::detect()
                    }
                },
                None => Simd::detect(),
            }
        })
    }

    /// Parses `scalar`, `avx2` or `avx512` (case-insensitive).
    pub fn parse(s: &str) -> Option<Simd> {
        match s.to_ascii_lowercase().as_str() {
            "scalar" => Some(Simd::Scalar),
            "avx2" => Some(Simd::Avx2),
            "avx512" => Some(Simd::Avx512),
            _ => None,
        }
    }

    /// The name `BITPROBE_SIMD` accepts.
    pub fn name(self) -> &'static str {
        match self {
            Simd::Scalar => "scalar",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
        }
    }
}
