//! safetensors mutation: the 8-byte header length, the JSON header and the
//! data. Edits aim at a tensor entry (dtype, shape, `data_offsets`, name,
//! removed) or `__metadata__`, fall back to any JSON edit, then write the
//! length back (usually right, sometimes an edge value); data edits cut the
//! file or plant NaN and Inf patterns among the weights.

use serde_json::{json, Value};

use super::json::{edit, number};
use super::{interesting, string, Rng, INTERESTING_F32};

const DTYPES: [&str; 15] = [
    "F32", "F16", "BF16", "F64", "I8", "U8", "I16", "I32", "I64", "BOOL", "F8_E4M3", "F8_E5M2", "",
    "f32", "Q4_0",
];

fn edit_entry(e: &mut Value, others: &[(u64, u64)], rng: &mut Rng) {
    let Some(m) = e.as_object_mut() else {
        return;
    };
    match rng.below(4) {
        0 => {
            m.insert("dtype".into(), json!(*rng.pick(&DTYPES)));
        }
        1 => {
            let mut shape: Vec<Value> = m
                .get("shape")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            match rng.below(5) {
                0 => shape.push(json!(*rng.pick(&[0u64, 1, 2, 32]))),
                1 => {
                    shape.pop();
                }
                2 => shape.reverse(),
                3 => shape = vec![json!(1u64 << 32), json!(1u64 << 32)],
                _ if !shape.is_empty() => {
                    let i = rng.below(shape.len());
                    shape[i] = number(rng);
                }
                _ => shape.push(number(rng)),
            }
            m.insert("shape".into(), Value::Array(shape));
        }
        2 => {
            let (a, b) = m
                .get("data_offsets")
                .and_then(Value::as_array)
                .and_then(|o| Some((o.first()?.as_u64()?, o.get(1)?.as_u64()?)))
                .unwrap_or((0, 0));
            let (oa, ob) = if others.is_empty() {
                (0, 0)
            } else {
                *rng.pick(others)
            };
            let offsets = match rng.below(7) {
                0 => json!([b, a]),
                1 => json!([oa, ob]),
                2 => json!([a, ob]),
                3 => json!([a, b.wrapping_add(interesting(rng))]),
                4 => json!([interesting(rng), interesting(rng)]),
                5 => json!([a]),
                _ => json!([a as i64 - 1, b]),
            };
            m.insert("data_offsets".into(), offsets);
        }
        _ => {
            let key = *rng.pick(&["dtype", "shape", "data_offsets"]);
            if rng.chance(1, 2) {
                m.remove(key);
            } else {
                m.insert(key.into(), number(rng));
            }
        }
    }
}

fn edit_header(h: &mut Value, rng: &mut Rng) {
    let Some(m) = h.as_object_mut() else {
        return edit(h, rng);
    };
    let names: Vec<String> = m.keys().filter(|k| *k != "__metadata__").cloned().collect();
    let offsets: Vec<(u64, u64)> = m
        .values()
        .filter_map(|e| {
            let o = e.get("data_offsets")?.as_array()?;
            Some((o.first()?.as_u64()?, o.get(1)?.as_u64()?))
        })
        .collect();
    if names.is_empty() {
        m.insert(
            "x".into(),
            json!({"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}),
        );
        return;
    }
    let name = rng.pick(&names).clone();
    match rng.below(8) {
        0..=3 => {
            if let Some(e) = m.get_mut(&name) {
                edit_entry(e, &offsets, rng);
            }
        }
        4 => {
            let e = m.remove(&name).unwrap_or(Value::Null);
            let nn = if rng.chance(1, 2) {
                rng.pick(&names).clone()
            } else {
                string(rng)
            };
            m.insert(nn, e);
        }
        5 => {
            m.remove(&name);
        }
        6 => {
            let v = if rng.chance(1, 2) {
                json!({"format": number(rng)})
            } else {
                json!(string(rng))
            };
            m.insert("__metadata__".into(), v);
        }
        _ => {
            // A copy of an entry under a new name: two tensors, one range.
            let e = m[&name].clone();
            m.insert(format!("{name}.copy"), e);
        }
    }
}

fn edit_data(data: &mut Vec<u8>, rng: &mut Rng) {
    let n = data.len();
    match rng.below(3) {
        0 => data.truncate(rng.below(n + 1)),
        1 => data.extend(std::iter::repeat_n(0u8, rng.count(4096))),
        _ if n >= 4 => {
            let at = rng.below(n / 4) * 4;
            let len = (rng.count(1024) * 4).min(n - at);
            let pat = *rng.pick(&INTERESTING_F32);
            let pat = if rng.chance(1, 2) {
                pat
            } else {
                0x7FC0_7C00 // BF16 NaN and F16 Inf side by side
            };
            for c in data[at..at + len].chunks_exact_mut(4) {
                c.copy_from_slice(&pat.to_le_bytes());
            }
        }
        _ => {}
    }
}

/// One safetensors mutation of `seed`.
pub fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let parsed = seed
        .get(..8)
        .map(|l| u64::from_le_bytes(l.try_into().expect("8 bytes")) as usize)
        .and_then(|n| Some((n, seed.get(8..8usize.checked_add(n)?)?)))
        .and_then(|(n, h)| Some((n, serde_json::from_slice::<Value>(h).ok()?)));
    let Some((hlen, mut header)) = parsed else {
        let mut b = seed.to_vec();
        super::bytes(&mut b, rng);
        return b;
    };
    let mut data = seed[8 + hlen..].to_vec();
    match rng.below(8) {
        0..=4 => edit_header(&mut header, rng),
        5 => edit(&mut header, rng),
        _ => edit_data(&mut data, rng),
    }
    let mut text = serde_json::to_vec(&header).unwrap_or_default();
    if rng.chance(3, 4) {
        // Pad to 8 bytes as the Python library does.
        while text.len() % 8 != 0 {
            text.push(b' ');
        }
    }
    let len = match rng.below(10) {
        0 => interesting(rng),
        1 => (text.len() as u64).wrapping_add(1),
        _ => text.len() as u64,
    };
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&data);
    out
}
