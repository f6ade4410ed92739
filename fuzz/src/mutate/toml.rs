//! Target profile (TOML) mutation, line by line (the profiles are flat
//! `key = value` lines under a few `[tables]`): a value replaced by an edge
//! literal (nan, inf, negative, huge integers, empty strings, arrays and
//! tables where a number belongs), a line removed, repeated (a duplicate
//! key) or moved to another table, a key renamed to another one of the
//! file's keys, a table header repeated or removed.

use super::{Rng, STRINGS};

const VALUES: [&str; 26] = [
    "0",
    "-1",
    "1e308",
    "-1e308",
    "nan",
    "inf",
    "-inf",
    "+nan",
    "1e-320",
    "0.0",
    "2147483648",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "\"\"",
    "\"x\"",
    "\"\\u001b[31m\\n\"",
    "true",
    "[]",
    "[1, 2]",
    "[\"gguf\", \"\"]",
    "{}",
    "{ value = 1 }",
    "1979-05-27T07:32:00Z",
    "\"gpu\"",
    "\"cpu\"",
];

/// The key of a `key = value` line.
fn key(line: &str) -> Option<&str> {
    let (k, _) = line.split_once('=')?;
    let k = k.trim();
    (!k.is_empty() && !k.starts_with('#') && !k.starts_with('[')).then_some(k)
}

/// One TOML mutation of `seed`.
pub fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(seed) else {
        let mut b = seed.to_vec();
        super::bytes(&mut b, rng);
        return b;
    };
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let kv: Vec<usize> = (0..lines.len())
        .filter(|&i| key(&lines[i]).is_some())
        .collect();
    let tables: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].trim_start().starts_with('['))
        .collect();
    let keys: Vec<String> = kv
        .iter()
        .filter_map(|&i| key(&lines[i]).map(str::to_string))
        .collect();
    if kv.is_empty() {
        lines.push(format!("id = {}", rng.pick(&VALUES)));
        return lines.join("\n").into_bytes();
    }
    let i = *rng.pick(&kv);
    let k = key(&lines[i]).unwrap_or("x").to_string();
    match rng.below(9) {
        0..=3 => lines[i] = format!("{k} = {}", rng.pick(&VALUES)),
        4 => {
            lines.remove(i);
        }
        5 => {
            let l = lines[i].clone();
            lines.insert(rng.below(lines.len() + 1), l);
        }
        6 => {
            let other = rng.pick(&keys).clone();
            let v = lines[i].split_once('=').map_or("", |(_, v)| v).to_string();
            lines[i] = format!("{other} ={v}");
        }
        7 if !tables.is_empty() => {
            let t = *rng.pick(&tables);
            if rng.chance(1, 2) {
                lines.remove(t);
            } else {
                let h = lines[t].clone();
                lines.push(h);
                lines.push(format!("{k} = {}", rng.pick(&VALUES)));
            }
        }
        _ => {
            let s = rng
                .pick(&STRINGS)
                .replace('\\', "\\\\")
                .replace('"', "\\\"");
            let s = s
                .replace('\n', "\\n")
                .replace('\u{1b}', "\\u001b")
                .replace('\0', "\\u0000");
            lines[i] = format!("{k} = \"{s}\"");
        }
    }
    lines.join("\n").into_bytes()
}
