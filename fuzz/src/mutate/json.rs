//! JSON mutation (config.json, tokenizer.json, tokenizer_config.json, the
//! shard index, the safetensors header): parse, edit a node reached by a
//! random walk (a value set to an edge number, a string, null, a container;
//! a key removed, added, renamed; an array cut, repeated, reordered), with
//! per-kind edits that aim at the fields kiln reads (config dimensions,
//! BPE vocab ids and merges, added tokens, the weight map), then serialize
//! and sometimes edit the text (NaN and Infinity literals, which Python's
//! json writes and serde_json refuses, repeated keys, huge exponents).

use serde_json::{json, Map, Value};

use super::{interesting, string, Rng};
use crate::Kind;

/// Keys kiln and transformers read, inserted where a walk lands.
const KEYS: [&str; 44] = [
    "vocab_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_size",
    "intermediate_size",
    "head_dim",
    "max_position_embeddings",
    "rope_theta",
    "rms_norm_eps",
    "rope_scaling",
    "tie_word_embeddings",
    "architectures",
    "model_type",
    "torch_dtype",
    "num_local_experts",
    "num_experts_per_tok",
    "sliding_window",
    "attention_bias",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "quantization_config",
    "added_tokens",
    "vocab",
    "merges",
    "type",
    "pre_tokenizer",
    "byte_fallback",
    "special",
    "content",
    "id",
    "chat_template",
    "bos_token",
    "eos_token",
    "unk_token",
    "add_bos_token",
    "added_tokens_decoder",
    "weight_map",
    "total_size",
    "dtype",
    "shape",
    "data_offsets",
    "__metadata__",
];

/// The config fields that size things.
const CONFIG_NUMBERS: [&str; 14] = [
    "vocab_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_size",
    "intermediate_size",
    "head_dim",
    "max_position_embeddings",
    "rope_theta",
    "rms_norm_eps",
    "num_local_experts",
    "num_experts_per_tok",
    "sliding_window",
    "bos_token_id",
];

/// An edge number as JSON: unsigned, or signed when the top bit is set.
pub fn number(rng: &mut Rng) -> Value {
    if rng.chance(1, 5) {
        let f = *rng.pick(&[
            0.0, -0.0, 0.5, -1.0, 1e-300, 1e308, -1e308, 3.5e38, 1e-45, 1e19,
        ]);
        return json!(f);
    }
    let v = interesting(rng);
    if v >> 63 == 1 && rng.chance(1, 2) {
        json!(v as i64)
    } else {
        json!(v)
    }
}

fn scalar(rng: &mut Rng, like: &Value) -> Value {
    match rng.below(8) {
        0..=2 => number(rng),
        3 | 4 => Value::String(string(rng)),
        5 => rng.pick(&[Value::Null, json!(true), json!(false)]).clone(),
        6 => rng
            .pick(&[
                json!([]),
                json!({}),
                json!([like.clone()]),
                json!({ "x": like.clone() }),
            ])
            .clone(),
        _ => match like {
            Value::Number(n) => {
                let f = n.as_f64().unwrap_or(0.0);
                let i = n.as_i64().unwrap_or(0);
                match rng.below(5) {
                    0 => json!(i.wrapping_add(1)),
                    1 => json!(i.wrapping_sub(1)),
                    2 => json!(i.wrapping_mul(1 << rng.below(40))),
                    3 => json!(-f),
                    _ => json!(f * 0.5),
                }
            }
            _ => Value::String(string(rng)),
        },
    }
}

/// A node reached by a random walk from the root (stopping early at times).
fn walk<'a>(v: &'a mut Value, rng: &mut Rng) -> &'a mut Value {
    let mut cur = v;
    let mut depth = 0;
    loop {
        let n = match &*cur {
            Value::Array(a) => a.len(),
            Value::Object(m) => m.len(),
            _ => 0,
        };
        if n == 0 || (depth > 0 && rng.chance(1, 4)) {
            return cur;
        }
        let i = rng.below(n);
        depth += 1;
        cur = match cur {
            Value::Array(a) => &mut a[i],
            Value::Object(m) => m.values_mut().nth(i).expect("index below len"),
            _ => unreachable!("containers only"),
        };
    }
}

/// Edit a container: keys removed, added, renamed; elements cut, repeated,
/// swapped; or a scalar replaced.
pub fn edit(v: &mut Value, rng: &mut Rng) {
    match v {
        Value::Object(m) if rng.chance(2, 3) && !m.is_empty() => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = rng.pick(&keys).clone();
            match rng.below(5) {
                0 => {
                    m.remove(&k);
                }
                1 => {
                    let nk = if rng.chance(1, 2) {
                        (*rng.pick(&KEYS)).to_string()
                    } else {
                        string(rng)
                    };
                    let val = m.remove(&k).unwrap_or(Value::Null);
                    m.insert(nk, val);
                }
                2 => {
                    let like = m[&k].clone();
                    let val = scalar(rng, &like);
                    m.insert((*rng.pick(&KEYS)).to_string(), val);
                }
                3 => {
                    // Another key's value under this key.
                    let other = rng.pick(&keys).clone();
                    let val = m[&other].clone();
                    m.insert(k, val);
                }
                _ => {
                    let like = m[&k].clone();
                    m.insert(k, scalar(rng, &like));
                }
            }
        }
        Value::Array(a) if rng.chance(2, 3) && !a.is_empty() => {
            let n = a.len();
            let i = rng.below(n);
            match rng.below(6) {
                0 => {
                    a.remove(i);
                }
                1 => {
                    let len = rng.count(n);
                    a.truncate(len.min(n));
                }
                2 => {
                    let x = a[i].clone();
                    let times = rng.count(2000);
                    a.extend(std::iter::repeat_n(x, times));
                }
                3 => a.swap(i, rng.below(n)),
                4 => a.reverse(),
                _ => {
                    let like = a[i].clone();
                    a[i] = scalar(rng, &like);
                }
            }
        }
        _ => {
            let like = v.clone();
            *v = scalar(rng, &like);
        }
    }
}

/// Aimed edits of `tokenizer.json`: vocab ids, merges, added tokens, the
/// model type.
fn tokenizer(doc: &mut Value, rng: &mut Rng) {
    match rng.below(5) {
        0 | 1 => {
            let Some(merges) = doc
                .pointer_mut("/model/merges")
                .and_then(Value::as_array_mut)
            else {
                return;
            };
            if merges.is_empty() {
                merges.push(json!("a b"));
            }
            let i = rng.below(merges.len());
            merges[i] = rng
                .pick(&[
                    json!("abc"),
                    json!("a b c"),
                    json!(""),
                    json!(" "),
                    json!("a  b"),
                    json!("zz qq"),
                    json!(["a"]),
                    json!(["a", "b", "c"]),
                    json!([1, 2]),
                    json!(null),
                ])
                .clone();
        }
        2 => {
            let Some(vocab) = doc
                .pointer_mut("/model/vocab")
                .and_then(Value::as_object_mut)
            else {
                return;
            };
            match rng.below(4) {
                0 if !vocab.is_empty() => {
                    let i = rng.below(vocab.len());
                    let id = number(rng);
                    if let Some(v) = vocab.values_mut().nth(i) {
                        *v = id;
                    }
                }
                1 if !vocab.is_empty() => {
                    // Two tokens with one id.
                    let ids: Vec<Value> = vocab.values().cloned().collect();
                    let id = rng.pick(&ids).clone();
                    let i = rng.below(vocab.len());
                    if let Some(v) = vocab.values_mut().nth(i) {
                        *v = id;
                    }
                }
                2 => {
                    let keep = rng.below(vocab.len() + 1);
                    let kept: Map<String, Value> =
                        std::mem::take(vocab).into_iter().take(keep).collect();
                    *vocab = kept;
                }
                _ => {
                    vocab.insert(string(rng), number(rng));
                }
            }
        }
        3 => {
            let Some(added) = doc
                .pointer_mut("/added_tokens")
                .and_then(Value::as_array_mut)
            else {
                return;
            };
            if added.is_empty() || rng.chance(1, 3) {
                added.push(json!({"id": number(rng), "content": string(rng), "special": true}));
            } else {
                let i = rng.below(added.len());
                let field = *rng.pick(&["id", "content", "special"]);
                let like = added[i][field].clone();
                let v = scalar(rng, &like);
                match added[i].as_object_mut() {
                    Some(o) => {
                        o.insert(field.into(), v);
                    }
                    None => added[i] = v,
                }
            }
        }
        _ => {
            let p = *rng.pick(&["/model/type", "/pre_tokenizer", "/model/byte_fallback"]);
            if let Some(v) = doc.pointer_mut(p) {
                let like = v.clone();
                *v = scalar(rng, &like);
            }
        }
    }
}

/// Aimed edits of `model.safetensors.index.json`: shard names and tensor names.
fn index(doc: &mut Value, rng: &mut Rng) {
    let Some(map) = doc
        .pointer_mut("/weight_map")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    if map.is_empty() {
        map.insert("model.norm.weight".into(), json!("model.safetensors"));
        return;
    }
    let i = rng.below(map.len());
    match rng.below(3) {
        0 => {
            let name = *rng.pick(&[
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "model-00003-of-00002.safetensors",
                "model.safetensors",
                "",
                ".",
                "..",
                "/etc/passwd",
                "config.json",
                "tokenizer.json",
            ]);
            if let Some(v) = map.values_mut().nth(i) {
                *v = json!(name);
            }
        }
        1 => {
            let k = map.keys().nth(i).cloned().unwrap_or_default();
            let v = map.remove(&k).unwrap_or(Value::Null);
            map.insert(string(rng), v);
        }
        _ => {
            let k = map.keys().nth(i).cloned().unwrap_or_default();
            map.remove(&k);
        }
    }
}

/// Aimed edits of `config.json`: a sizing field set to an edge value.
fn config(doc: &mut Value, rng: &mut Rng) {
    let Some(m) = doc.as_object_mut() else {
        return;
    };
    let k = *rng.pick(&CONFIG_NUMBERS);
    let v = if rng.chance(1, 6) {
        json!(null)
    } else {
        number(rng)
    };
    m.insert(k.to_string(), v);
}

/// Edit the serialized text: a number token replaced by a literal serde_json
/// refuses or rounds (NaN, Infinity, 1e999), a key repeated.
fn text(b: &mut Vec<u8>, rng: &mut Rng) {
    let starts: Vec<usize> = (0..b.len())
        .filter(|&i| {
            (b[i].is_ascii_digit() || b[i] == b'-') && (i == 0 || b" :[,".contains(&b[i - 1]))
        })
        .collect();
    if starts.is_empty() || rng.chance(1, 4) {
        // Repeat the first key of the top-level object.
        if let Some(open) = b.iter().position(|&c| c == b'{') {
            if let Some(end) = b[open..].iter().position(|&c| c == b',') {
                let entry = b[open + 1..open + end + 1].to_vec();
                b.splice(open + 1..open + 1, entry);
            }
        }
        return;
    }
    let s = *rng.pick(&starts);
    let e = (s..b.len())
        .find(|&i| !(b[i].is_ascii_digit() || b"-+.eE".contains(&b[i])))
        .unwrap_or(b.len());
    let lit = *rng.pick(&[
        "NaN",
        "Infinity",
        "-Infinity",
        "1e999",
        "-0",
        "00",
        "1.0e+400",
    ]);
    b.splice(s..e, lit.bytes());
}

/// One JSON mutation of `seed` (a file of `kind`).
pub fn mutate(seed: &[u8], kind: Kind, rng: &mut Rng) -> Vec<u8> {
    let Ok(mut doc) = serde_json::from_slice::<Value>(seed) else {
        let mut b = seed.to_vec();
        super::bytes(&mut b, rng);
        return b;
    };
    mutate_value(&mut doc, kind, rng);
    let mut out = if rng.chance(1, 2) {
        serde_json::to_vec_pretty(&doc)
    } else {
        serde_json::to_vec(&doc)
    }
    .unwrap_or_default();
    if rng.chance(1, 8) {
        text(&mut out, rng);
    }
    out
}

/// One edit of a parsed document: aimed at `kind`'s fields a third of the
/// time, anywhere otherwise.
pub fn mutate_value(doc: &mut Value, kind: Kind, rng: &mut Rng) {
    if rng.chance(1, 3) {
        match kind {
            Kind::TokenizerJson => return tokenizer(doc, rng),
            Kind::ShardIndex => return index(doc, rng),
            Kind::Config => return config(doc, rng),
            _ => {}
        }
    }
    let node = walk(doc, rng);
    edit(node, rng);
}
