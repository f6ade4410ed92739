//! [`Encoding`]: what a tensor becomes, said once for every output format kiln
//! writes or will write: the ggml block types (GGUF), integer groups
//! (compressed-tensors `pack-quantized` / `int-quantized`), FP8 E4M3 with its
//! scale granularity and the value range the runtime accepts, the two FP4
//! block formats (NVFP4, MXFP4), and "keep" (the source dtype, unchanged).
//!
//! The descriptor is format-neutral: a container decides how an encoding is
//! laid out (GGUF holds only [`Encoding::Ggml`]; a safetensors container
//! writes several tensors for one integer or FP4 encoding) and refuses, by
//! name, an encoding it cannot hold. Byte counts here are the bytes of every
//! stored tensor of the encoding (values, scales, zero points, shape), as
//! `reference/compressed-tensors.md` lays them out, so planners can size a
//! choice before anything is encoded.
//!
//! What must stay true: [`Encoding::fits`] is false exactly where
//! [`Encoding::bytes`] is `None`; `Display` and `FromStr` round-trip every
//! value; the ggml variant's name is the ggml type's name (`q4_K`), so text
//! that showed a `GgmlType` shows the same with an `Encoding::Ggml`.

use std::fmt;
use std::str::FromStr;

use crate::GgmlType;

/// How a tensor is stored in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Encoding {
    /// The source dtype, unchanged (a container lowers it to its own type for that dtype).
    Keep,
    /// A ggml type (F32/F16/BF16 and the block quantizations).
    Ggml(GgmlType),
    /// Integers of `bits` bits with a scale per group of input columns.
    Int(IntSpec),
    /// FP8 E4M3 values with scales at some granularity.
    Fp8(Fp8Spec),
    /// FP4 E2M1 values in blocks.
    Fp4(Fp4Kind),
}

/// Integer quantization of the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IntSpec {
    /// 4 or 8.
    pub bits: u8,
    pub group: Group,
    /// Asymmetric (a zero point stored per group) rather than symmetric.
    pub zero_point: bool,
}

/// Which input columns share a scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    /// One scale per output row.
    Channel,
    /// One scale per this many consecutive input columns of a row.
    Size(u32),
}

/// FP8 E4M3 weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fp8Spec {
    pub scales: Fp8Scales,
    pub range: Fp8Range,
}

/// Granularity of FP8 scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fp8Scales {
    Tensor,
    Channel,
    /// One scale per block of `rows` x `cols` values (FP8_BLOCK: 128 x 128).
    Block {
        rows: u32,
        cols: u32,
    },
}

/// The largest magnitude the runtime's E4M3 accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fp8Range {
    /// OCP E4M3FN, +-448 (NVIDIA Ada/Hopper/Blackwell, AMD CDNA4).
    Fn448,
    /// Values clamped to +-240 (AMD CDNA3 e4m3fnuz after vLLM's conversion, AWS Neuron).
    Clamp240,
}

impl Fp8Range {
    pub fn max(self) -> f32 {
        match self {
            Fp8Range::Fn448 => 448.0,
            Fp8Range::Clamp240 => 240.0,
        }
    }
}

/// The FP4 block formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fp4Kind {
    /// NVFP4: E4M3 scale per 16 values and one FP32 global scale per tensor.
    Nv,
    /// MXFP4: E8M0 scale per 32 values.
    Mx,
}

impl Fp4Kind {
    pub fn block(self) -> usize {
        match self {
            Fp4Kind::Nv => 16,
            Fp4Kind::Mx => 32,
        }
    }
}

impl From<GgmlType> for Encoding {
    fn from(t: GgmlType) -> Encoding {
        Encoding::Ggml(t)
    }
}

impl Encoding {
    /// The ggml type, for the ggml variant.
    pub fn ggml(self) -> Option<GgmlType> {
        match self {
            Encoding::Ggml(t) => Some(t),
            _ => None,
        }
    }

    /// Whether the values are stored with fewer bits than a float type.
    pub fn is_quantized(self) -> bool {
        match self {
            Encoding::Keep => false,
            Encoding::Ggml(t) => t.is_quantized(),
            Encoding::Int(_) | Encoding::Fp8(_) | Encoding::Fp4(_) => true,
        }
    }

    /// Whether a tensor whose rows are `row_len` values long can take this encoding.
    pub fn fits(self, row_len: usize) -> bool {
        self.bytes(1, row_len, 2).is_some()
    }

    /// Bytes of every stored tensor of this encoding for `rows` x `row_len`
    /// values, with `dtype_bytes` the bytes per value of the source dtype
    /// (kept values, and the scales that compressed-tensors stores in the
    /// weight dtype); `None` where the row length cannot take it.
    pub fn bytes(self, rows: usize, row_len: usize, dtype_bytes: usize) -> Option<u64> {
        let (r, n, d) = (rows as u64, row_len as u64, dtype_bytes as u64);
        match self {
            Encoding::Keep => Some(r * n * d),
            Encoding::Ggml(t) => t.row_bytes(row_len).map(|b| b as u64 * r),
            Encoding::Int(s) => {
                let groups = match s.group {
                    Group::Channel => 1,
                    Group::Size(g) if g > 0 && n % g as u64 == 0 => n / g as u64,
                    Group::Size(_) => return None,
                };
                let bits = s.bits as u64;
                let packed = if bits == 8 && !s.zero_point {
                    r * n // int-quantized: one i8 per value
                } else {
                    r * (n * bits).div_ceil(32) * 4
                };
                let zp = if s.zero_point {
                    (r * bits).div_ceil(32) * 4 * groups
                } else {
                    0
                };
                // pack-quantized stores `weight_shape` (two i64); 8-bit
                // symmetric per-channel is W8A8's int-quantized layout, which
                // does not (W8A16 written per channel has these 16 bytes more;
                // kiln's planner gives W8A16 groups of 128).
                let shape = if bits == 8 && !s.zero_point && s.group == Group::Channel {
                    0
                } else {
                    16
                };
                Some(packed + r * groups * d + zp + shape)
            }
            Encoding::Fp8(s) => {
                let scales = match s.scales {
                    Fp8Scales::Tensor => 1,
                    Fp8Scales::Channel => r,
                    // Activations are quantized in groups of `cols` inputs
                    // (FP8_BLOCK's dynamic per-group activations), so the
                    // input width must be a multiple; output rows may leave a
                    // partial tile.
                    Fp8Scales::Block { rows: br, cols: bc }
                        if br > 0 && bc > 0 && n % bc as u64 == 0 =>
                    {
                        r.div_ceil(br as u64) * n / bc as u64
                    }
                    Fp8Scales::Block { .. } => return None,
                };
                Some(r * n + scales * d)
            }
            Encoding::Fp4(k) => {
                let b = k.block() as u64;
                if n % b != 0 {
                    return None;
                }
                let global = if k == Fp4Kind::Nv { 4 } else { 0 };
                Some(r * n / 2 + r * n / b + global)
            }
        }
    }

    /// Bits per weight of the values and scales (not counting per-tensor constants).
    pub fn bits_per_weight(self, dtype_bytes: usize) -> f64 {
        match self {
            Encoding::Ggml(t) => t.bits_per_weight(),
            Encoding::Keep => 8.0 * dtype_bytes as f64,
            Encoding::Int(s) => {
                let per_group = match s.group {
                    Group::Channel => 0.0,
                    Group::Size(g) => {
                        (8 * dtype_bytes) as f64 * (1.0 + if s.zero_point { 1.0 } else { 0.0 })
                            / g as f64
                    }
                };
                s.bits as f64 + per_group
            }
            Encoding::Fp8(_) => 8.0,
            Encoding::Fp4(k) => 4.0 + 8.0 / k.block() as f64,
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Encoding::Keep => f.write_str("keep"),
            Encoding::Ggml(t) => f.write_str(t.name()),
            Encoding::Int(s) => {
                write!(f, "int{}", s.bits)?;
                match s.group {
                    Group::Channel => f.write_str("-channel")?,
                    Group::Size(g) => write!(f, "-g{g}")?,
                }
                if s.zero_point {
                    f.write_str("-asym")?;
                }
                Ok(())
            }
            Encoding::Fp8(s) => {
                f.write_str("fp8")?;
                match s.scales {
                    Fp8Scales::Tensor => f.write_str("-tensor")?,
                    Fp8Scales::Channel => f.write_str("-channel")?,
                    Fp8Scales::Block { rows, cols } => write!(f, "-block{rows}x{cols}")?,
                }
                if s.range == Fp8Range::Clamp240 {
                    f.write_str("-max240")?;
                }
                Ok(())
            }
            Encoding::Fp4(Fp4Kind::Nv) => f.write_str("nvfp4"),
            Encoding::Fp4(Fp4Kind::Mx) => f.write_str("mxfp4"),
        }
    }
}

impl FromStr for Encoding {
    type Err = String;

    /// The names `Display` writes (`q4_K`, `keep`, `int4-g128`, `int4-g128-asym`,
    /// `int8-channel`, `fp8-channel`, `fp8-block128x128-max240`, `nvfp4`, `mxfp4`).
    fn from_str(s: &str) -> Result<Encoding, String> {
        let bad = || format!("unknown encoding `{s}`");
        match s {
            "keep" => return Ok(Encoding::Keep),
            "nvfp4" => return Ok(Encoding::Fp4(Fp4Kind::Nv)),
            "mxfp4" => return Ok(Encoding::Fp4(Fp4Kind::Mx)),
            _ => {}
        }
        if let Ok(t) = s.parse::<GgmlType>() {
            return Ok(Encoding::Ggml(t));
        }
        let mut parts = s.split('-');
        let head = parts.next().ok_or_else(bad)?;
        let rest: Vec<&str> = parts.collect();
        if let Some(bits) = head.strip_prefix("int") {
            let bits: u8 = bits.parse().map_err(|_| bad())?;
            if bits != 4 && bits != 8 {
                return Err(format!("`{s}`: integer encodings have 4 or 8 bits"));
            }
            let (group, zero_point) = match rest.as_slice() {
                [g] => (parse_group(g).ok_or_else(bad)?, false),
                [g, "asym"] => (parse_group(g).ok_or_else(bad)?, true),
                _ => return Err(bad()),
            };
            return Ok(Encoding::Int(IntSpec {
                bits,
                group,
                zero_point,
            }));
        }
        if head == "fp8" {
            let (scales, range) = match rest.as_slice() {
                [g] => (parse_fp8_scales(g).ok_or_else(bad)?, Fp8Range::Fn448),
                [g, "max240"] => (parse_fp8_scales(g).ok_or_else(bad)?, Fp8Range::Clamp240),
                _ => return Err(bad()),
            };
            return Ok(Encoding::Fp8(Fp8Spec { scales, range }));
        }
        Err(bad())
    }
}

impl serde::Serialize for Encoding {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn parse_group(g: &str) -> Option<Group> {
    if g == "channel" {
        return Some(Group::Channel);
    }
    g.strip_prefix('g')?
        .parse()
        .ok()
        .filter(|&n| n > 0)
        .map(Group::Size)
}

fn parse_fp8_scales(g: &str) -> Option<Fp8Scales> {
    match g {
        "tensor" => Some(Fp8Scales::Tensor),
        "channel" => Some(Fp8Scales::Channel),
        _ => {
            let (r, c) = g.strip_prefix("block")?.split_once('x')?;
            let (rows, cols) = (r.parse().ok()?, c.parse().ok()?);
            (rows > 0 && cols > 0).then_some(Fp8Scales::Block { rows, cols })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Encoding> {
        let mut v = vec![
            Encoding::Keep,
            Encoding::Fp4(Fp4Kind::Nv),
            Encoding::Fp4(Fp4Kind::Mx),
        ];
        v.extend(GgmlType::ALL.iter().map(|&t| Encoding::Ggml(t)));
        for bits in [4, 8] {
            for group in [Group::Channel, Group::Size(32), Group::Size(128)] {
                for zero_point in [false, true] {
                    v.push(Encoding::Int(IntSpec {
                        bits,
                        group,
                        zero_point,
                    }));
                }
            }
        }
        for scales in [
            Fp8Scales::Tensor,
            Fp8Scales::Channel,
            Fp8Scales::Block {
                rows: 128,
                cols: 128,
            },
        ] {
            for range in [Fp8Range::Fn448, Fp8Range::Clamp240] {
                v.push(Encoding::Fp8(Fp8Spec { scales, range }));
            }
        }
        v
    }

    #[test]
    fn names_round_trip() {
        for e in all() {
            let name = e.to_string();
            assert_eq!(name.parse::<Encoding>(), Ok(e), "{name}");
        }
        assert_eq!(Encoding::Ggml(GgmlType::Q4K).to_string(), "q4_K");
        for bad in [
            "int3-g128",
            "int4",
            "int4-g0",
            "fp8-block0x128",
            "fp8",
            "q9_9",
            "",
        ] {
            assert!(bad.parse::<Encoding>().is_err(), "{bad}");
        }
    }

    #[test]
    fn fits_agrees_with_bytes() {
        for e in all() {
            for row_len in [1, 16, 32, 48, 128, 256, 576, 1000] {
                assert_eq!(
                    e.fits(row_len),
                    e.bytes(3, row_len, 2).is_some(),
                    "{e} {row_len}"
                );
            }
        }
    }

    /// Sizes as reference/compressed-tensors.md lays the tensors out, for a
    /// 4096 x 4096 bf16 weight.
    #[test]
    fn bytes_match_the_layouts() {
        let (o, i) = (4096u64, 4096u64);
        let w4g128 = Encoding::Int(IntSpec {
            bits: 4,
            group: Group::Size(128),
            zero_point: false,
        });
        // weight_packed I32 [o, i/8], weight_scale bf16 [o, i/128], weight_shape I64 [2]
        assert_eq!(
            w4g128.bytes(4096, 4096, 2),
            Some(o * i / 8 * 4 + o * (i / 128) * 2 + 16)
        );
        let asym = Encoding::Int(IntSpec {
            zero_point: true,
            ..match w4g128 {
                Encoding::Int(s) => s,
                _ => unreachable!(),
            }
        });
        // + weight_zero_point I32 [o/8, i/128]
        assert_eq!(
            asym.bytes(4096, 4096, 2),
            Some(o * i / 2 + o * (i / 128) * 2 + 16 + o / 8 * 4 * (i / 128))
        );
        // W8A8 int-quantized: weight I8 [o, i], weight_scale bf16 [o, 1], no shape.
        let w8a8 = Encoding::Int(IntSpec {
            bits: 8,
            group: Group::Channel,
            zero_point: false,
        });
        assert_eq!(w8a8.bytes(4096, 4096, 2), Some(o * i + o * 2));
        let nv = Encoding::Fp4(Fp4Kind::Nv);
        assert_eq!(nv.bytes(4096, 4096, 2), Some(o * i / 2 + o * i / 16 + 4));
        let mx = Encoding::Fp4(Fp4Kind::Mx);
        assert_eq!(mx.bytes(4096, 4096, 2), Some(o * i / 2 + o * i / 32));
        assert!(!mx.fits(48) && nv.fits(48));
        let block = Encoding::Fp8(Fp8Spec {
            scales: Fp8Scales::Block {
                rows: 128,
                cols: 128,
            },
            range: Fp8Range::Fn448,
        });
        assert_eq!(block.bytes(4096, 4096, 2), Some(o * i + 32 * 32 * 2));
        assert_eq!(
            Encoding::Ggml(GgmlType::Q8_0).bytes(2, 64, 2),
            Some(2 * 2 * 34)
        );
        assert_eq!(Encoding::Keep.bytes(2, 64, 2), Some(256));
    }
}
