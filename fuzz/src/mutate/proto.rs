//! SentencePiece `tokenizer.model` mutation: the protobuf is split into
//! fields (pieces, trainer spec, normalizer spec); an edit changes a piece
//! (text, score to NaN or Inf, type id to anything), removes, repeats or
//! reorders pieces, sets a trainer field (model type, vocab size, byte
//! fallback, the unk/bos/eos/pad ids, -1 included) or breaks the encoding
//! itself (a length past the end, a wire type protobuf does not have, an
//! unterminated varint).

use super::{interesting, string, Rng, INTERESTING_F32};

#[derive(Debug, Clone)]
enum Wire {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(Vec<u8>),
    Fixed32([u8; 4]),
}

type Msg = Vec<(u64, Wire)>;

fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn parse(b: &[u8]) -> Option<Msg> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < b.len() {
        let tag = varint(b, &mut pos)?;
        let w = match tag & 7 {
            0 => Wire::Varint(varint(b, &mut pos)?),
            1 => {
                let s = b.get(pos..pos + 8)?;
                pos += 8;
                Wire::Fixed64(s.try_into().ok()?)
            }
            2 => {
                let n = usize::try_from(varint(b, &mut pos)?).ok()?;
                let s = b.get(pos..pos.checked_add(n)?)?;
                pos += n;
                Wire::Bytes(s.to_vec())
            }
            5 => {
                let s = b.get(pos..pos + 4)?;
                pos += 4;
                Wire::Fixed32(s.try_into().ok()?)
            }
            _ => return None,
        };
        out.push((tag >> 3, w));
    }
    Some(out)
}

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn write(m: &Msg) -> Vec<u8> {
    let mut out = Vec::new();
    for (num, w) in m {
        let wt = match w {
            Wire::Varint(_) => 0,
            Wire::Fixed64(_) => 1,
            Wire::Bytes(_) => 2,
            Wire::Fixed32(_) => 5,
        };
        put_varint((num << 3) | wt, &mut out);
        match w {
            Wire::Varint(v) => put_varint(*v, &mut out),
            Wire::Fixed64(b) => out.extend_from_slice(b),
            Wire::Bytes(b) => {
                put_varint(b.len() as u64, &mut out);
                out.extend_from_slice(b);
            }
            Wire::Fixed32(b) => out.extend_from_slice(b),
        }
    }
    out
}

/// Set field `num` of a message to `w` (replacing the first one, or added).
fn set(m: &mut Msg, num: u64, w: Wire) {
    match m.iter_mut().find(|(n, _)| *n == num) {
        Some(f) => f.1 = w,
        None => m.push((num, w)),
    }
}

fn edit_piece(p: &[u8], rng: &mut Rng) -> Vec<u8> {
    let Some(mut m) = parse(p) else {
        return p.to_vec();
    };
    match rng.below(5) {
        0 => {
            let mut s = string(rng).into_bytes();
            if rng.chance(1, 4) {
                s.push(0xFF); // not UTF-8
            }
            set(&mut m, 1, Wire::Bytes(s));
        }
        1 | 2 => set(
            &mut m,
            2,
            Wire::Fixed32(rng.pick(&INTERESTING_F32).to_le_bytes()),
        ),
        3 => {
            let ty = *rng.pick(&[0, 1, 2, 3, 4, 5, 6, 7, 99, u64::MAX]);
            set(&mut m, 3, Wire::Varint(ty));
        }
        _ => {
            // The right number, the wrong wire type.
            let num = 1 + rng.below(3) as u64;
            set(&mut m, num, Wire::Varint(interesting(rng)));
        }
    }
    write(&m)
}

/// One `tokenizer.model` mutation of `seed`.
pub fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let Some(mut m) = parse(seed) else {
        let mut b = seed.to_vec();
        super::bytes(&mut b, rng);
        return b;
    };
    let pieces: Vec<usize> = (0..m.len()).filter(|&i| m[i].0 == 1).collect();
    match rng.below(8) {
        0..=2 if !pieces.is_empty() => {
            let i = *rng.pick(&pieces);
            if let Wire::Bytes(b) = &m[i].1 {
                m[i].1 = Wire::Bytes(edit_piece(b, rng));
            }
        }
        3 if !pieces.is_empty() => match rng.below(4) {
            0 => {
                // Keep only the first k pieces (0 too).
                let k = rng.below(pieces.len() + 1);
                let cut: Vec<usize> = pieces[k..].to_vec();
                for &i in cut.iter().rev() {
                    m.remove(i);
                }
            }
            1 => {
                let i = *rng.pick(&pieces);
                let f = m[i].clone();
                let n = rng.count(20_000);
                m.splice(i..i, std::iter::repeat_n(f, n));
            }
            2 => {
                let (a, b) = (*rng.pick(&pieces), *rng.pick(&pieces));
                m.swap(a, b);
            }
            _ => {
                m.remove(*rng.pick(&pieces));
            }
        },
        4 | 5 => {
            // The trainer spec: model type, vocab size, byte fallback, special ids.
            let num = *rng.pick(&[3u64, 4, 35, 40, 41, 42, 43]);
            let v = if rng.chance(1, 3) {
                u64::MAX // -1 as an int32 varint
            } else {
                interesting(rng)
            };
            match m.iter_mut().find(|(n, _)| *n == 2) {
                Some((_, Wire::Bytes(b))) => {
                    let mut t = parse(b).unwrap_or_default();
                    set(&mut t, num, Wire::Varint(v));
                    *b = write(&t);
                }
                _ => m.push((2, Wire::Bytes(write(&vec![(num, Wire::Varint(v))])))),
            }
        }
        6 => {
            // Normalizer spec: add_dummy_prefix and friends, or gone.
            match m.iter().position(|(n, _)| *n == 3) {
                Some(i) if rng.chance(1, 2) => {
                    m.remove(i);
                }
                _ => m.push((
                    3,
                    Wire::Bytes(write(&vec![(3, Wire::Varint(interesting(rng)))])),
                )),
            }
        }
        _ => {
            // A field of the top message with the wrong wire type.
            let num = 1 + rng.below(3) as u64;
            let w = match rng.below(3) {
                0 => Wire::Varint(interesting(rng)),
                1 => Wire::Fixed64(interesting(rng).to_le_bytes()),
                _ => Wire::Fixed32((interesting(rng) as u32).to_le_bytes()),
            };
            m.insert(rng.below(m.len() + 1), (num, w));
        }
    }
    let mut out = write(&m);
    match rng.below(12) {
        0 => {
            // A length past the end.
            put_varint(10, &mut out);
            put_varint(interesting(rng), &mut out);
        }
        1 => out.push(0x0B), // field 1, wire type 3 (group start)
        2 => out.extend_from_slice(&[0x08, 0xFF, 0xFF]), // an unterminated varint
        _ => {}
    }
    out
}
