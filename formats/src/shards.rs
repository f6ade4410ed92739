//! Hugging Face checkpoint shards, as `save_pretrained` writes them: the
//! split of a state dict into files of at most `max_shard_size` bytes
//! (huggingface_hub's `split_state_dict_into_shards`), the file names, and
//! `model.safetensors.index.json`.
//!
//! What must stay true: the split is huggingface_hub's, a pure function of
//! the sizes in order; the index
//! names every stored tensor once, with the bytes of all of them as
//! `metadata.total_size`, serialized as transformers serializes it.

use std::collections::BTreeMap;

use serde_json::{json, Map};

/// The default shard size: 5 GB, as transformers 4 wrote checkpoints (5 writes 50 GB).
pub const DEFAULT_MAX_SHARD: u64 = 5_000_000_000;

/// A shard size as `--max-shard-size` takes it, in the forms transformers and
/// huggingface_hub accept: a number of bytes, or a number and a unit, decimal
/// (`KB`, `MB`, `GB`, `TB`) or binary (`KiB`, `MiB`, `GiB`, `TiB`), case-insensitive,
/// fractions allowed (`1.5GB`).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let units: [(&str, f64); 8] = [
        ("kib", 1024.0),
        ("mib", 1024f64.powi(2)),
        ("gib", 1024f64.powi(3)),
        ("tib", 1024f64.powi(4)),
        ("kb", 1e3),
        ("mb", 1e6),
        ("gb", 1e9),
        ("tb", 1e12),
    ];
    let (num, mult) = units
        .iter()
        .find_map(|(u, m)| lower.strip_suffix(u).map(|n| (n.trim(), *m)))
        .unwrap_or((lower.as_str(), 1.0));
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{t}` is not a size (a number of bytes, or 500MB, 2GiB, 5GB)"))?;
    let bytes = v * mult;
    if !(1.0..1e18).contains(&bytes) {
        return Err(format!("`{t}`: a shard size is at least 1 byte"));
    }
    Ok(bytes as u64)
}

/// Split tensors of `sizes` bytes, in order, into shards of at most `max`
/// bytes as huggingface_hub does: a new shard when the next tensor would push
/// the current one past the limit, and a tensor larger than the limit in a
/// shard of its own, numbered when it is met (before the shard being
/// filled). Returns each tensor's shard and the number of shards (at least 1).
pub fn split(sizes: &[u64], max: u64) -> (Vec<usize>, usize) {
    let mut shard = vec![0; sizes.len()];
    let mut n = 0;
    let mut current = Vec::new();
    let mut size = 0u64;
    for (i, &b) in sizes.iter().enumerate() {
        if b > max {
            shard[i] = n;
            n += 1;
            continue;
        }
        if size + b > max && !current.is_empty() {
            for j in current.drain(..) {
                shard[j] = n;
            }
            n += 1;
            size = 0;
        }
        current.push(i);
        size += b;
    }
    if !current.is_empty() || n == 0 {
        for j in current {
            shard[j] = n;
        }
        n += 1;
    }
    (shard, n)
}

/// The name of shard `i` of `n`: `model.safetensors` alone, else
/// `model-0000i-of-0000N.safetensors`.
pub fn file_name(i: usize, n: usize) -> String {
    if n == 1 {
        "model.safetensors".into()
    } else {
        format!("model-{:05}-of-{n:05}.safetensors", i + 1)
    }
}

/// `model.safetensors.index.json` for shards given as (file name, [(tensor
/// name, bytes)]), as transformers writes it (`json.dumps(index, indent=2,
/// sort_keys=True)` and a newline).
pub fn index<'a>(shards: impl IntoIterator<Item = (&'a str, Vec<(String, u64)>)>) -> Vec<u8> {
    let mut map = BTreeMap::new();
    let mut total = 0u64;
    for (file, tensors) in shards {
        for (name, bytes) in tensors {
            map.insert(name, json!(file));
            total += bytes;
        }
    }
    let index = json!({
        "metadata": {"total_size": total},
        "weight_map": map.into_iter().collect::<Map<_, _>>(),
    });
    let mut text = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"  ");
    let mut ser = serde_json::Serializer::with_formatter(&mut text, fmt);
    serde::Serialize::serialize(&index, &mut ser).expect("JSON serializes");
    text.push(b'\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_as_huggingface_hub_does() {
        assert_eq!(split(&[4, 4, 4], 10), (vec![0, 0, 1], 2));
        assert_eq!(split(&[4, 6, 1], 10), (vec![0, 0, 1], 2));
        // The oversized tensor is shard 0; the one being filled closes after it.
        assert_eq!(split(&[4, 20, 4], 10), (vec![1, 0, 1], 2));
        assert_eq!(split(&[], 10), (vec![], 1));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5gb"), Ok(1_500_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("5XB").is_err() && parse_size("0").is_err());
    }
}
