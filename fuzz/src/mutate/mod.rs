//! Mutators: one per format, each editing the parsed structure (a field's
//! value, a count, a length, an offset, a type id, an entry added, removed
//! or repeated) and serializing it again, so most cases get past the first
//! checks and reach the deeper ones; plus byte-level mutations (flips,
//! truncation, splices) so the structure-aware ones are not the only
//! shapes tried.
//!
//! What must stay true: every mutator is a pure function of its input and
//! the [`Rng`] (deterministic), and never panics, whatever it is given: a
//! seed its format parser cannot read falls back to byte-level mutation.

pub mod dat;
pub mod gguf;
pub mod json;
pub mod proto;
pub mod safetensors;
pub mod toml;

use fixtures::rng::SplitMix64;

use crate::Kind;

/// The harness's random source (splitmix64, seeded per case).
pub struct Rng(pub SplitMix64);

impl Rng {
    pub fn u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n.max(1) as u64) as usize
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.0.next_u64() % den < num
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A count that is usually small and occasionally large: 1..=8 mostly,
    /// up to `max` rarely.
    pub fn count(&mut self, max: usize) -> usize {
        match self.below(16) {
            0 => 1 + self.below(max.max(1)),
            1..=3 => 1 + self.below(64.min(max.max(1))),
            _ => 1 + self.below(8.min(max.max(1))),
        }
    }
}

/// Integers at the edges: 0, ±1, powers of two and their neighbours, the
/// limits of every width, and values known to have broken readers before.
pub const INTERESTING: [u64; 34] = [
    0,
    1,
    2,
    3,
    7,
    8,
    16,
    31,
    32,
    64,
    255,
    256,
    257,
    1023,
    4096,
    65535,
    65536,
    (1 << 31) - 1,
    1 << 31,
    (1 << 32) - 1,
    1 << 32,
    (1 << 32) + 2,
    1 << 40,
    (1 << 53) + 1,
    1 << 62,
    (1 << 63) - 1,
    1 << 63,
    u64::MAX,
    u64::MAX - 1,
    (-2i64 << 30) as u64,
    512_001_536,
    100_000_000,
    u32::MAX as u64 - 1,
    (u32::MAX as u64) << 16,
];

/// An interesting value, sometimes nudged by ±1 or made negative.
pub fn interesting(rng: &mut Rng) -> u64 {
    let v = *rng.pick(&INTERESTING);
    match rng.below(6) {
        0 => v.wrapping_add(1),
        1 => v.wrapping_sub(1),
        2 => v.wrapping_neg(),
        _ => v,
    }
}

/// f32 bit patterns at the edges: NaNs, infinities, zeros, subnormals, huge.
pub const INTERESTING_F32: [u32; 10] = [
    0x7FC0_0000, // NaN
    0xFFC0_0001, // negative NaN with payload
    0x7F80_0000, // +inf
    0xFF80_0000, // -inf
    0x0000_0000,
    0x8000_0000, // -0
    0x0000_0001, // smallest subnormal
    0x7F7F_FFFF, // f32::MAX
    0xBF80_0000, // -1
    0x4B80_0000, // 2^24
];

/// Strings that have tripped parsers and printers: empty, control
/// characters and ANSI escapes, a fake error line, invalid UTF-8 is added
/// by the byte-level mutators.
pub const STRINGS: [&str; 12] = [
    "",
    "a",
    "\u{1b}[31mred\u{1b}[0m",
    "x\nerror: fake",
    "\0",
    "\u{2581}",
    "../../etc/passwd",
    "model.safetensors",
    "NaN",
    "llama",
    "<unk>",
    "blk.0.attn_q.weight",
];

/// A string from [`STRINGS`], or a long one (up to 70,000 bytes, past the
/// 16-bit and GGUF name limits).
pub fn string(rng: &mut Rng) -> String {
    if rng.chance(1, 12) {
        let n = *rng.pick(&[63, 64, 65, 255, 256, 4096, 70_000]);
        return "a".repeat(n);
    }
    (*rng.pick(&STRINGS)).to_string()
}

/// One byte-level mutation of `b`.
pub fn bytes(b: &mut Vec<u8>, rng: &mut Rng) {
    let n = b.len();
    match rng.below(9) {
        0 if n > 0 => {
            let i = rng.below(n);
            b[i] ^= 1 << rng.below(8);
        }
        1 if n > 0 => {
            let i = rng.below(n);
            b[i] = *rng.pick(&[0, 0xFF, 0x7F, 0x80, b'"', b'{', b'\n', 0x1B]);
        }
        2 => {
            let cut = rng.below(n + 1);
            b.truncate(cut);
        }
        3 if n > 0 => {
            // Overwrite an aligned 4- or 8-byte word with an interesting value.
            let w = if rng.chance(1, 2) { 4 } else { 8 };
            if n >= w {
                let i = rng.below(n / w) * w;
                let v = interesting(rng).to_le_bytes();
                b[i..i + w].copy_from_slice(&v[..w]);
            }
        }
        4 if n > 0 => {
            // Duplicate a chunk in place.
            let i = rng.below(n);
            let len = rng.count(n - i);
            let chunk = b[i..(i + len).min(n)].to_vec();
            let at = rng.below(n + 1);
            b.splice(at..at, chunk);
        }
        5 if n > 0 => {
            // Delete a chunk.
            let i = rng.below(n);
            let len = rng.count(n - i).min(n - i);
            b.drain(i..i + len);
        }
        6 => {
            let at = rng.below(n + 1);
            let s = string(rng);
            b.splice(at..at, s.bytes());
        }
        7 if n > 0 => {
            // Random bytes over a short run.
            let i = rng.below(n);
            let end = (i + rng.count(16)).min(n);
            for x in &mut b[i..end] {
                *x = rng.u64() as u8;
            }
        }
        _ => b.extend((0..rng.count(32)).map(|_| rng.u64() as u8)),
    }
}

/// Mutate a seed of `kind`: one to four stacked structure-aware mutations
/// (byte-level ones one time in seven).
pub fn mutate(kind: Kind, seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = seed.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        if rng.chance(1, 7) {
            bytes(&mut out, rng);
            continue;
        }
        out = match kind {
            Kind::Gguf | Kind::ImatrixGguf => gguf::mutate(&out, kind, rng),
            Kind::Safetensors => safetensors::mutate(&out, rng),
            Kind::ShardIndex | Kind::Config | Kind::TokenizerJson | Kind::TokenizerConfig => {
                json::mutate(&out, kind, rng)
            }
            Kind::TokenizerModel => proto::mutate(&out, rng),
            Kind::ImatrixDat => dat::mutate(&out, rng),
            Kind::TargetToml => toml::mutate(&out, rng),
            Kind::SelfTest => out,
        };
    }
    out
}
