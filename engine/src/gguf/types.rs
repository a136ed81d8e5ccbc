//! `GgmlType`: the tensor element types a GGUF tensor can declare, with ggml's block sizes
//! and byte sizes.
//!
//! Ids, names, block sizes and type sizes mirror the vendored ggml: the `ggml_type` enum in
//! `ggml/include/ggml.h` and the `type_traits` table in `ggml/src/ggml.c` (block struct sizes
//! from `ggml/src/ggml-common.h`). The BitNet types (I2_S, I8_S, TL1, TL2) are bitnet.cpp's
//! additions to that enum; their byte size is *not* `n / block_size * type_size` but follows
//! the special cases in `ggml_nbytes` (see [`GgmlType::data_size`]).

use std::fmt;

/// A ggml tensor element type, as stored in a GGUF tensor info (`u32` id).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    // 4 (Q4_2) and 5 (Q4_3) were removed from ggml; they read as unknown ids.
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    Q4_0_4_4 = 31,
    Q4_0_4_8 = 32,
    Q4_0_8_8 = 33,
    TQ1_0 = 34,
    TQ2_0 = 35,
    /// bitnet.cpp's 2-bit ternary layout (`ggml-bitnet-mad.cpp`): 128-value blocks of 32
    /// bytes, then one f32 scale for the whole tensor, padded to n/4 + 32 bytes.
    I2_S = 36,
    /// bitnet.cpp's int8 activation type for I2_S matmuls (never stored in model files).
    I8_S = 37,
    /// bitnet.cpp lookup-table layouts; their kernels are generated per model shape.
    TL1 = 38,
    TL2 = 39,
}

/// Elements per I2_S block (`QK_I2_S` in `bitnet/src/ggml-bitnet-mad.cpp`).
pub const QK_I2_S: u64 = 128;
/// Elements per K-quant / ternary super-block (`QK_K` in `ggml-common.h`).
pub const QK_K: u64 = 256;

impl GgmlType {
    /// Every known type, in id order.
    pub const ALL: [GgmlType; 38] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ3_XXS,
        GgmlType::IQ1_S,
        GgmlType::IQ4_NL,
        GgmlType::IQ3_S,
        GgmlType::IQ2_S,
        GgmlType::IQ4_XS,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::IQ1_M,
        GgmlType::BF16,
        GgmlType::Q4_0_4_4,
        GgmlType::Q4_0_4_8,
        GgmlType::Q4_0_8_8,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::I2_S,
        GgmlType::I8_S,
        GgmlType::TL1,
        GgmlType::TL2,
    ];

    /// The type with GGUF id `id`, or `None` for ids ggml does not know (4, 5, ≥ 40).
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.iter().copied().find(|t| t.id() == id)
    }

    /// The GGUF / ggml numeric id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// ggml's name for the type (`type_traits[..].type_name` in ggml.c).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "f32",
            F16 => "f16",
            Q4_0 => "q4_0",
            Q4_1 => "q4_1",
            Q5_0 => "q5_0",
            Q5_1 => "q5_1",
            Q8_0 => "q8_0",
            Q8_1 => "q8_1",
            Q2_K => "q2_K",
            Q3_K => "q3_K",
            Q4_K => "q4_K",
            Q5_K => "q5_K",
            Q6_K => "q6_K",
            Q8_K => "q8_K",
            IQ2_XXS => "iq2_xxs",
            IQ2_XS => "iq2_xs",
            IQ3_XXS => "iq3_xxs",
            IQ1_S => "iq1_s",
            IQ4_NL => "iq4_nl",
            IQ3_S => "iq3_s",
            IQ2_S => "iq2_s",
            IQ4_XS => "iq4_xs",
            I8 => "i8",
            I16 => "i16",
            I32 => "i32",
            I64 => "i64",
            F64 => "f64",
            IQ1_M => "iq1_m",
            BF16 => "bf16",
            Q4_0_4_4 => "q4_0_4x4",
            Q4_0_4_8 => "q4_0_4x8",
            Q4_0_8_8 => "q4_0_8x8",
            TQ1_0 => "tq1_0",
            TQ2_0 => "tq2_0",
            I2_S => "i2_s",
            I8_S => "i8_s",
            TL1 => "tl1",
            TL2 => "tl2",
        }
    }

    /// Elements per block (`blck_size` in ggml.c's `type_traits`). I2_S, TL1 and TL2 say 1
    /// there, like plain types; their real packing is handled in [`GgmlType::data_size`].
    pub fn block_size(self) -> u64 {
        use GgmlType::*;
        match self {
            F32 | F16 | I8 | I16 | I32 | I64 | F64 | BF16 | I2_S | I8_S | TL1 | TL2 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | IQ4_NL | Q4_0_4_4 | Q4_0_4_8 | Q4_0_8_8 => 32,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K | IQ2_XXS | IQ2_XS | IQ3_XXS | IQ1_S
            | IQ3_S | IQ2_S | IQ4_XS | IQ1_M | TQ1_0 | TQ2_0 => QK_K,
        }
    }

    /// Bytes per block (`type_size` in ggml.c's `type_traits`, i.e. `sizeof(block_*)` from
    /// ggml-common.h).
    pub fn type_size(self) -> u64 {
        use GgmlType::*;
        match self {
            F32 => 4,
            F16 | BF16 => 2,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2_K => 84,
            Q3_K => 110,
            Q4_K => 144,
            Q5_K => 176,
            Q6_K => 210,
            Q8_K => 292,
            IQ2_XXS => 66,
            IQ2_XS => 74,
            IQ3_XXS => 98,
            IQ1_S => 50,
            IQ4_NL => 18,
            IQ3_S => 110,
            IQ2_S => 82,
            IQ4_XS => 136,
            I8 | I2_S | I8_S | TL1 | TL2 => 1,
            I16 => 2,
            I32 => 4,
            I64 | F64 => 8,
            IQ1_M => 56,
            Q4_0_4_4 | Q4_0_4_8 | Q4_0_8_8 => 18,
            TQ1_0 => 54,
            TQ2_0 => 66,
        }
    }

    /// How many elements a row (dimension 0) must be a multiple of. This is the block size,
    /// except for I2_S, whose packing (`quantize_i2_s`) and dot product
    /// (`ggml_vec_dot_i2_i8_s`) work in blocks of [`QK_I2_S`] = 128 values although
    /// `type_traits` says 1.
    pub fn row_multiple(self) -> u64 {
        match self {
            GgmlType::I2_S => QK_I2_S,
            t => t.block_size(),
        }
    }

    /// Bytes a tensor of `n_elements` of this type occupies in a GGUF file, as bitnet.cpp's
    /// `ggml_nbytes` computes it, or `None` when `n_elements` is not a whole number of blocks,
    /// the size overflows `u64`, or the size depends on the shape (TL2; use
    /// [`GgmlType::tensor_data_size`]).
    ///
    /// I2_S and TL1: `ggml_nbytes` first computes n bytes (block 1, type size 1), then
    /// `nbytes = nbytes / 4 + 32`: 2 bits per value plus 32 bytes holding the f32 tensor
    /// scale and padding (`quantize_i2_s` returns the same `n / 4 + 32`). llama.cpp's loader
    /// checks `offs + ggml_nbytes(tensor) <= file size` with exactly this number.
    pub fn data_size(self, n_elements: u64) -> Option<u64> {
        match self {
            GgmlType::I2_S | GgmlType::TL1 => Some(n_elements / 4 + 32),
            GgmlType::TL2 => None,
            t => {
                let bs = t.block_size();
                if !n_elements.is_multiple_of(bs) {
                    return None;
                }
                (n_elements / bs).checked_mul(t.type_size())
            }
        }
    }

    /// Bytes of a tensor with dimensions `dims` (ggml order, ne0 first), as `ggml_nbytes`
    /// computes them, including TL2's shape-dependent formula. `None` on overflow, an
    /// incomplete block, or a shape TL2 cannot hold.
    pub fn tensor_data_size(self, dims: &[u64]) -> Option<u64> {
        let n = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
        if self != GgmlType::TL2 {
            return self.data_size(n);
        }
        // ggml_nbytes, TL2 branch: (ne0 - 256) * ne1 / 3 * 5 / 8 + 256 * ne1 / 2 * 4 / 8,
        // rounded up to 32, plus 32.
        let ne0 = *dims.first().unwrap_or(&1);
        let ne1 = *dims.get(1).unwrap_or(&1);
        let a = ne0.checked_sub(256)?.checked_mul(ne1)? / 3;
        let a = a.checked_mul(5)? / 8;
        let b = 256u64.checked_mul(ne1)? / 2;
        let b = b.checked_mul(4)? / 8;
        let mut nbytes = a.checked_add(b)?;
        if nbytes % 32 != 0 {
            nbytes = nbytes.checked_add(32 - nbytes % 32)?;
        }
        nbytes.checked_add(32)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
