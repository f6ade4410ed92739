//! Legacy `.dat` imatrix mutation: entries (name, ncall, values) and the
//! optional trailer (chunk count, dataset name) are parsed; an edit changes
//! a call count (0, negative, huge), the values (NaN, Inf, negative, fewer
//! or more than the tensor's columns), a name (another weight's, garbage),
//! removes or repeats entries, or drops or breaks the trailer; the writer
//! records every count and length so a last edit can set one to an edge
//! value.

use super::{interesting, string, Rng, INTERESTING_F32};

#[derive(Debug, Clone)]
struct Entry {
    name: Vec<u8>,
    ncall: i32,
    values: Vec<u32>,
}

struct Dat {
    entries: Vec<Entry>,
    trailer: Option<(i32, Vec<u8>)>,
}

fn i32_at(b: &[u8], pos: &mut usize) -> Option<i32> {
    let v = i32::from_le_bytes(b.get(*pos..*pos + 4)?.try_into().ok()?);
    *pos += 4;
    Some(v)
}

fn parse(b: &[u8]) -> Option<Dat> {
    let mut pos = 0;
    let n = usize::try_from(i32_at(b, &mut pos)?).ok()?;
    if n > b.len() {
        return None;
    }
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let len = usize::try_from(i32_at(b, &mut pos)?).ok()?;
        let name = b.get(pos..pos.checked_add(len)?)?.to_vec();
        pos += len;
        let ncall = i32_at(b, &mut pos)?;
        let nval = usize::try_from(i32_at(b, &mut pos)?).ok()?;
        let raw = b.get(pos..pos.checked_add(nval.checked_mul(4)?)?)?;
        pos += nval * 4;
        let values = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        entries.push(Entry {
            name,
            ncall,
            values,
        });
    }
    let trailer = if pos < b.len() {
        let chunks = i32_at(b, &mut pos)?;
        let len = usize::try_from(i32_at(b, &mut pos)?).ok()?;
        Some((chunks, b.get(pos..pos.checked_add(len)?)?.to_vec()))
    } else {
        None
    };
    Some(Dat { entries, trailer })
}

fn write(d: &Dat) -> (Vec<u8>, Vec<usize>) {
    let mut b = Vec::new();
    let mut fields = Vec::new();
    let mut int = |b: &mut Vec<u8>, v: i32| {
        fields.push(b.len());
        b.extend_from_slice(&v.to_le_bytes());
    };
    int(&mut b, d.entries.len() as i32);
    for e in &d.entries {
        int(&mut b, e.name.len() as i32);
        b.extend_from_slice(&e.name);
        int(&mut b, e.ncall);
        int(&mut b, e.values.len() as i32);
        for v in &e.values {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    if let Some((chunks, name)) = &d.trailer {
        int(&mut b, *chunks);
        int(&mut b, name.len() as i32);
        b.extend_from_slice(name);
    }
    (b, fields)
}

const NAMES: [&str; 6] = [
    "blk.0.attn_q.weight",
    "blk.0.ffn_down.weight",
    "output.weight",
    "token_embd.weight",
    "blk.9.attn_k.weight",
    "blk.0.ffn_gate_exps.weight",
];

/// One legacy imatrix mutation of `seed`.
pub fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let Some(mut d) = parse(seed) else {
        let mut b = seed.to_vec();
        super::bytes(&mut b, rng);
        return b;
    };
    let n = d.entries.len();
    let i = rng.below(n.max(1));
    match rng.below(9) {
        0 | 1 if n > 0 => {
            d.entries[i].ncall = *rng.pick(&[0, -1, 1, i32::MIN, i32::MAX, 1 << 24]);
        }
        2 | 3 if n > 0 => {
            let e = &mut d.entries[i];
            match rng.below(4) {
                0 => {
                    let len = rng.below(e.values.len() + 1);
                    e.values.truncate(len);
                }
                1 => {
                    let extra = rng.count(4096);
                    e.values.extend(std::iter::repeat_n(0x3F80_0000, extra));
                }
                _ if !e.values.is_empty() => {
                    let n = e.values.len();
                    let at = rng.below(n);
                    let k = rng.count(n - at);
                    let pat = *rng.pick(&INTERESTING_F32);
                    for v in &mut e.values[at..(at + k).min(n)] {
                        *v = pat;
                    }
                }
                _ => e.values.push(0x7FC0_0000),
            }
        }
        4 if n > 0 => {
            d.entries[i].name = if rng.chance(1, 2) {
                (*rng.pick(&NAMES)).as_bytes().to_vec()
            } else {
                string(rng).into_bytes()
            };
        }
        5 if n > 0 => {
            if rng.chance(1, 2) {
                d.entries.remove(i);
            } else {
                let e = d.entries[i].clone();
                d.entries.insert(rng.below(n + 1), e);
            }
        }
        6 => {
            d.trailer = match rng.below(3) {
                0 => None,
                1 => Some((*rng.pick(&[0, -1, i32::MAX]), string(rng).into_bytes())),
                _ => Some((10, vec![0xFF; rng.count(64)])),
            };
        }
        _ => {}
    }
    let (mut b, fields) = write(&d);
    if rng.chance(1, 3) && !fields.is_empty() {
        let at = *rng.pick(&fields);
        let v = interesting(rng) as u32;
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    b
}
