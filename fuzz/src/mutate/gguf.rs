//! GGUF mutation: the file is parsed into its header, key/values, tensor
//! infos and data; an edit changes a version, a value, a value's type id, a
//! string, an array (element type, length, thousands of elements), a key
//! (removed, repeated, renamed, added from the keys kiln reads), a tensor
//! (removed, repeated, renamed, dimensions, type id, offset), or the data
//! (cut, NaN-filled); the writer records where every count, length, type id,
//! dimension and offset went, so a last edit can overwrite one of those
//! fields with an edge value whatever the structure says.

use super::{interesting, string, Rng, INTERESTING_F32};
use crate::Kind;

// Value type ids (gguf.md).
const T_U8: u32 = 0;
const T_U32: u32 = 4;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_F64: u32 = 12;

#[derive(Debug, Clone)]
enum Val {
    /// A fixed-size scalar: its type id and little-endian bytes.
    Scalar(u32, Vec<u8>),
    Str(Vec<u8>),
    Arr(u32, Vec<Val>),
    /// An array of u8 held as bytes (millions of elements stay cheap).
    Bytes(Vec<u8>),
}

/// Bytes a repeated array element may add to a case in all.
const REPEAT_BUDGET: usize = 16 << 20;

/// About how many bytes a value holds in memory.
fn held_bytes(v: &Val) -> usize {
    match v {
        Val::Scalar(_, b) | Val::Str(b) | Val::Bytes(b) => 32 + b.len(),
        Val::Arr(_, items) => 32 + items.iter().map(held_bytes).sum::<usize>(),
    }
}

#[derive(Debug, Clone)]
struct Tensor {
    name: Vec<u8>,
    dims: Vec<u64>,
    ty: u32,
    offset: u64,
}

#[derive(Debug, Clone)]
struct File {
    version: u32,
    kvs: Vec<(Vec<u8>, Val)>,
    tensors: Vec<Tensor>,
    align: u64,
    data: Vec<u8>,
}

fn scalar_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        _ => return None,
    })
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.b.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<Vec<u8>> {
        let n = usize::try_from(self.u64()?).ok()?;
        Some(self.take(n)?.to_vec())
    }
    fn value(&mut self, ty: u32, depth: usize) -> Option<Val> {
        if let Some(n) = scalar_size(ty) {
            return Some(Val::Scalar(ty, self.take(n)?.to_vec()));
        }
        match ty {
            T_STRING => Some(Val::Str(self.string()?)),
            T_ARRAY if depth < 2 => {
                let ety = self.u32()?;
                let n = self.u64()?;
                if n > self.b.len() as u64 {
                    return None;
                }
                if ety == T_U8 {
                    // Held as bytes, as written: a million-element u8 array
                    // must not become a million values in the harness.
                    return Some(Val::Bytes(self.take(n as usize)?.to_vec()));
                }
                let items = (0..n)
                    .map(|_| self.value(ety, depth + 1))
                    .collect::<Option<Vec<_>>>()?;
                Some(Val::Arr(ety, items))
            }
            _ => None,
        }
    }
}

/// Parse a well-formed GGUF (the seeds); None for anything else.
fn parse(b: &[u8]) -> Option<File> {
    let mut r = Reader { b, pos: 0 };
    if r.take(4)? != b"GGUF" {
        return None;
    }
    let version = r.u32()?;
    let n_tensors = r.u64()?;
    let n_kv = r.u64()?;
    if n_tensors > b.len() as u64 || n_kv > b.len() as u64 {
        return None;
    }
    let mut kvs = Vec::new();
    let mut align = 32;
    for _ in 0..n_kv {
        let key = r.string()?;
        let ty = r.u32()?;
        let v = r.value(ty, 0)?;
        if key == b"general.alignment" {
            if let Val::Scalar(T_U32, bytes) = &v {
                align = u64::from(u32::from_le_bytes(bytes[..4].try_into().ok()?));
            }
        }
        kvs.push((key, v));
    }
    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        let name = r.string()?;
        let nd = r.u32()?;
        if nd > 8 {
            return None;
        }
        let dims = (0..nd).map(|_| r.u64()).collect::<Option<Vec<_>>>()?;
        let ty = r.u32()?;
        let offset = r.u64()?;
        tensors.push(Tensor {
            name,
            dims,
            ty,
            offset,
        });
    }
    if align == 0 {
        return None;
    }
    let start = r.pos.div_ceil(align as usize) * align as usize;
    Some(File {
        version,
        kvs,
        tensors,
        align,
        data: b.get(start..)?.to_vec(),
    })
}

/// The serialized file, and where its integer fields are (offset, width).
struct Written {
    bytes: Vec<u8>,
    fields: Vec<(usize, usize)>,
}

impl Written {
    fn u32(&mut self, v: u32) {
        self.fields.push((self.bytes.len(), 4));
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.fields.push((self.bytes.len(), 8));
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    fn string(&mut self, s: &[u8]) {
        self.u64(s.len() as u64);
        self.bytes.extend_from_slice(s);
    }
    fn value(&mut self, v: &Val, with_type: bool) {
        match v {
            Val::Scalar(ty, b) => {
                if with_type {
                    self.u32(*ty);
                }
                self.bytes.extend_from_slice(b);
            }
            Val::Str(s) => {
                if with_type {
                    self.u32(T_STRING);
                }
                self.string(s);
            }
            Val::Bytes(b) => {
                if with_type {
                    self.u32(T_ARRAY);
                }
                self.u32(T_U8);
                self.u64(b.len() as u64);
                self.bytes.extend_from_slice(b);
            }
            Val::Arr(ety, items) => {
                if with_type {
                    self.u32(T_ARRAY);
                }
                self.u32(*ety);
                self.u64(items.len() as u64);
                for it in items {
                    self.value(it, false);
                }
            }
        }
    }
}

fn write(f: &File) -> Written {
    let mut w = Written {
        bytes: b"GGUF".to_vec(),
        fields: Vec::new(),
    };
    w.u32(f.version);
    w.u64(f.tensors.len() as u64);
    w.u64(f.kvs.len() as u64);
    for (k, v) in &f.kvs {
        w.string(k);
        w.value(v, true);
    }
    for t in &f.tensors {
        w.string(&t.name);
        w.u32(t.dims.len() as u32);
        for &d in &t.dims {
            w.u64(d);
        }
        w.u32(t.ty);
        w.u64(t.offset);
    }
    let align = f.align.clamp(1, 1 << 16) as usize;
    let pad = w.bytes.len().div_ceil(align) * align - w.bytes.len();
    w.bytes.extend(std::iter::repeat_n(0u8, pad));
    w.bytes.extend_from_slice(&f.data);
    w
}

/// Keys kiln reads from a GGUF, with the type their values usually have.
const KEYS: [(&str, u32); 22] = [
    ("general.architecture", T_STRING),
    ("general.alignment", T_U32),
    ("general.file_type", T_U32),
    ("general.name", T_STRING),
    ("general.type", T_STRING),
    ("llama.block_count", T_U32),
    ("llama.embedding_length", T_U32),
    ("llama.feed_forward_length", T_U32),
    ("llama.context_length", T_U32),
    ("llama.attention.head_count", T_U32),
    ("llama.attention.head_count_kv", T_U32),
    ("llama.attention.key_length", T_U32),
    ("llama.attention.layer_norm_rms_epsilon", T_F32),
    ("llama.rope.freq_base", T_F32),
    ("llama.expert_count", T_U32),
    ("llama.expert_used_count", T_U32),
    ("llama.vocab_size", T_U32),
    ("tokenizer.ggml.bos_token_id", T_U32),
    ("tokenizer.ggml.model", T_STRING),
    ("imatrix.datasets", T_ARRAY),
    ("imatrix.chunk_count", T_U32),
    ("imatrix.chunk_size", T_U32),
];

fn edge_scalar(ty: u32, rng: &mut Rng) -> Val {
    let n = scalar_size(ty).unwrap_or(4);
    let bytes = match ty {
        T_F32 if rng.chance(2, 3) => rng.pick(&INTERESTING_F32).to_le_bytes().to_vec(),
        T_F64 if rng.chance(2, 3) => rng
            .pick(&[f64::NAN, f64::INFINITY, -1.0, 0.0, 1e308, -1e-320])
            .to_le_bytes()
            .to_vec(),
        _ => interesting(rng).to_le_bytes()[..n].to_vec(),
    };
    Val::Scalar(ty, bytes)
}

fn new_value(ty: u32, rng: &mut Rng) -> Val {
    match ty {
        T_STRING => Val::Str(string(rng).into_bytes()),
        T_ARRAY => Val::Arr(
            T_STRING,
            (0..rng.count(8))
                .map(|_| Val::Str(string(rng).into_bytes()))
                .collect(),
        ),
        t => edge_scalar(t, rng),
    }
}

fn edit_value(v: &mut Val, rng: &mut Rng) {
    match v {
        Val::Scalar(ty, bytes) => match rng.below(3) {
            // A different type id over the same bytes.
            0 => *ty = *rng.pick(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 99]),
            _ => {
                *bytes = match edge_scalar(*ty, rng) {
                    Val::Scalar(_, b) => b,
                    _ => unreachable!("edge_scalar gives a scalar"),
                }
            }
        },
        Val::Bytes(b) => b.truncate(rng.below(b.len() + 1)),
        Val::Str(s) => match rng.below(3) {
            0 => *s = string(rng).into_bytes(),
            1 => s.extend_from_slice(&[0xFF, 0xFE]),
            _ => s.truncate(rng.below(s.len() + 1)),
        },
        Val::Arr(..) if rng.chance(1, 6) => {
            // A long array of bytes: millions of elements in a few MB.
            let n = if rng.chance(1, 8) {
                4 << 20
            } else {
                rng.count(1 << 16)
            };
            *v = Val::Bytes(vec![0; n]);
        }
        Val::Arr(ety, items) => match rng.below(5) {
            0 => *ety = *rng.pick(&[T_U8, T_U32, T_F32, T_BOOL, T_STRING, T_ARRAY, T_U64, 13]),
            1 => items.truncate(rng.below(items.len() + 1)),
            2 if !items.is_empty() => {
                let x = items[rng.below(items.len())].clone();
                // Repeat within a budget: an element may itself be a
                // multi-megabyte array, and 5000 copies of it would exhaust
                // the worker's memory in the harness, not in kiln.
                let n = rng.count(5000).min(REPEAT_BUDGET / held_bytes(&x).max(1));
                items.extend(std::iter::repeat_n(x, n));
            }
            _ if !items.is_empty() => {
                let i = rng.below(items.len());
                edit_value(&mut items[i], rng);
            }
            _ => items.push(new_value(*ety, rng)),
        },
    }
}

fn edit_kv(f: &mut File, rng: &mut Rng) {
    let n = f.kvs.len();
    match rng.below(6) {
        0 if n > 0 => {
            f.kvs.remove(rng.below(n));
        }
        1 if n > 0 => {
            let kv = f.kvs[rng.below(n)].clone();
            f.kvs.insert(rng.below(n + 1), kv);
        }
        2 if n > 0 => {
            let i = rng.below(n);
            f.kvs[i].0 = if rng.chance(1, 2) {
                rng.pick(&KEYS).0.as_bytes().to_vec()
            } else {
                string(rng).into_bytes()
            };
        }
        3 => {
            let (k, ty) = *rng.pick(&KEYS);
            let v = new_value(ty, rng);
            match f.kvs.iter_mut().find(|(key, _)| key == k.as_bytes()) {
                Some(kv) => kv.1 = v,
                None => f.kvs.push((k.as_bytes().to_vec(), v)),
            }
        }
        4 => {
            // Many keys: the duplicate checks and the metadata copy at scale.
            let n = rng.count(60_000);
            for i in 0..n {
                f.kvs.push((
                    format!("fuzz.k{i}").into_bytes(),
                    Val::Scalar(T_U8, vec![1]),
                ));
            }
        }
        _ if n > 0 => {
            let i = rng.below(n);
            edit_value(&mut f.kvs[i].1, rng);
        }
        _ => {}
    }
}

fn edit_tensor(f: &mut File, rng: &mut Rng) {
    let n = f.tensors.len();
    if n == 0 {
        f.tensors.push(Tensor {
            name: b"output.weight".to_vec(),
            dims: vec![32, 8],
            ty: 0,
            offset: 0,
        });
        return;
    }
    let i = rng.below(n);
    match rng.below(8) {
        0 => {
            f.tensors.remove(i);
        }
        1 => {
            let t = f.tensors[i].clone();
            f.tensors.insert(rng.below(n + 1), t);
        }
        2 => {
            let other = f.tensors[rng.below(n)].name.clone();
            f.tensors[i].name = if rng.chance(1, 2) {
                other
            } else {
                string(rng).into_bytes()
            };
        }
        3 => {
            let t = &mut f.tensors[i];
            match rng.below(4) {
                0 => t.dims.push(*rng.pick(&[0, 1, 2, 256])),
                1 => {
                    t.dims.pop();
                }
                2 => t.dims.reverse(),
                _ if !t.dims.is_empty() => {
                    let d = rng.below(t.dims.len());
                    t.dims[d] = interesting(rng);
                }
                _ => t.dims.push(interesting(rng)),
            }
        }
        4 => f.tensors[i].ty = rng.below(42) as u32,
        5 => {
            let other = f.tensors[rng.below(n)].offset;
            let t = &mut f.tensors[i];
            t.offset = match rng.below(4) {
                0 => other,
                1 => t.offset.wrapping_add(1 + rng.below(31) as u64),
                2 => f.data.len() as u64,
                _ => interesting(rng),
            };
        }
        6 => {
            // Many tensors (zero-sized ones cost no data).
            let k = rng.count(60_000);
            for j in 0..k {
                f.tensors.push(Tensor {
                    name: format!("fuzz.t{j}").into_bytes(),
                    dims: vec![0],
                    ty: 0,
                    offset: 0,
                });
            }
        }
        _ => {
            f.tensors[i].ty = *rng.pick(&[0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 15, 20, 23, 30])
        }
    }
}

fn edit_data(f: &mut File, rng: &mut Rng) {
    let n = f.data.len();
    match rng.below(3) {
        0 => f.data.truncate(rng.below(n + 1)),
        1 if n >= 4 => {
            // NaN and Inf patterns (f32, f16 and BF16 readings of the same bytes).
            let at = rng.below(n / 4) * 4;
            let len = (rng.count(4096) * 4).min(n - at);
            let pat = *rng.pick(&[0x7FC0_7FC0u32, 0x7C00_7E00, 0x7F80_0000, 0xFFFF_FFFF]);
            for c in f.data[at..at + len].chunks_exact_mut(4) {
                c.copy_from_slice(&pat.to_le_bytes());
            }
        }
        _ => f.align = *rng.pick(&[0, 1, 3, 8, 64, 4096, 1 << 31]),
    }
}

/// One GGUF mutation of `seed` (a model or imatrix GGUF, by `kind`).
pub fn mutate(seed: &[u8], kind: Kind, rng: &mut Rng) -> Vec<u8> {
    let Some(mut f) = parse(seed) else {
        let mut b = seed.to_vec();
        super::bytes(&mut b, rng);
        return b;
    };
    let _ = kind;
    match rng.below(10) {
        0 => f.version = *rng.pick(&[0, 1, 2, 4, u32::MAX]),
        1..=3 => edit_kv(&mut f, rng),
        4..=6 => edit_tensor(&mut f, rng),
        7 => edit_data(&mut f, rng),
        _ => {}
    }
    let alignment = f.kvs.iter().find_map(|(k, v)| match v {
        Val::Scalar(T_U32, b) if k == b"general.alignment" => {
            Some(u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        }
        _ => None,
    });
    if let Some(a) = alignment.filter(|&a| a > 0 && rng.chance(3, 4)) {
        f.align = a;
    }
    let mut w = write(&f);
    if rng.chance(1, 4) && !w.fields.is_empty() {
        // One count, length, type id, dimension or offset set to an edge value.
        let (at, width) = *rng.pick(&w.fields);
        let v = interesting(rng).to_le_bytes();
        w.bytes[at..at + width].copy_from_slice(&v[..width]);
    }
    w.bytes
}
