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

    /// Whether this CPU is an AMD Zen 4: family 19h with AVX-512 (family 19h without it is
    /// Zen 3), which runs a 512-bit operation as two 256-bit halves. Two choices follow it,
    /// each measured on the 2-vCPU EPYC (`docs/performance.md`, "The EPYC"); neither changes
    /// a bit of any result: the weight streams go without software prefetch
    /// (`kernels::prefetch_stream`), and the streaming f16 dot
    /// ([`super::dot::vec_dot_f16_stream_with`], the F16 head's) takes its 256-bit form —
    /// inside a decode step the head's rows took 2.6 s per 64 passes that way against 3.0 s
    /// in 512-bit form. Detected once.
    pub fn zen4() -> bool {
        static ZEN4: OnceLock<bool> = OnceLock::new();
        *ZEN4.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::x86_64::__cpuid;
                // `cpuid` exists on every x86_64 CPU; leaves 0 and 1 always do.
                let (l0, l1) = (__cpuid(0), __cpuid(1));
                // "AuthenticAMD" in ebx, edx, ecx.
                let amd = (l0.ebx, l0.edx, l0.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
                let base = (l1.eax >> 8) & 0xF;
                let family = if base == 0xF {
                    base + ((l1.eax >> 20) & 0xFF)
                } else {
                    base
                };
                amd && family == 0x19 && Simd::detect() == Simd::Avx512
            }
            #[cfg(not(target_arch = "x86_64"))]
            false
        })
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
