//! A checkpoint's tokenizer read into the neutral [`Tokenizer`] and its chat
//! templates, as llama.cpp's `convert_hf_to_gguf.py` reads them: byte-level
//! BPE (`tokenizer.json`) with merges and a pre-tokenizer name; SentencePiece
//! (`tokenizer.model`) with scores; special token ids, the add-BOS/EOS flags
//! and the chat template from `tokenizer_config.json` (falling back to
//! `config.json` and `generation_config.json`). The GGUF keys are built from
//! these when lowering to GGUF (`crate::gguf::metadata`).
//!
//! What must stay true: token i of the list is the token with id i, the list
//! is as long as the model's vocabulary (holes padded with `[PAD{i}]`, type
//! UNUSED), and a pre-tokenizer kiln cannot name is refused, not guessed.

use std::path::Path;

use passes::ir::{ChatTemplate, SpecialToken, TokenType, Tokenizer, TokenizerKind};
use passes::printable;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::hf::read_json;

use TokenType::{
    Byte as BYTE, Control as CONTROL, Normal as NORMAL, Unknown as UNKNOWN, Unused as UNUSED,
    UserDefined as USER_DEFINED,
};

/// Pre-tokenizer regexes of `tokenizer.json` files and llama.cpp's name for each.
pub(crate) const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub(crate) const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Options of the tokenizer conversion.
#[derive(Debug, Clone, Default)]
pub struct TokenizerOptions {
    /// Force llama.cpp's pre-tokenizer name (`tokenizer.ggml.pre`).
    pub pre_tokenizer: Option<String>,
}

/// Read the tokenizer and chat templates of a checkpoint directory.
pub fn convert(
    dir: &Path,
    config: &Value,
    vocab_size: usize,
    opts: &TokenizerOptions,
) -> Result<(Tokenizer, Vec<ChatTemplate>)> {
    let tok_json = dir.join("tokenizer.json");
    let tok_model = dir.join("tokenizer.model");
    let tok_config_path = dir.join("tokenizer_config.json");
    let tok_config = if tok_config_path.exists() {
        Some(read_json(&tok_config_path)?)
    } else {
        None
    };

    let (kind, pre, tokens, token_types, added) = if tok_json.exists() && !tok_model.exists() {
        let json = read_json(&tok_json)?;
        let model = json
            .get("model")
            .ok_or_else(|| Error::malformed(&tok_json, None, "no `model` object"))?;
        let kind = model.get("type").and_then(Value::as_str).unwrap_or("");
        if kind != "BPE" {
            return Err(Error::unsupported(
                &tok_json,
                None,
                format!("tokenizer model `{}` is not supported (kiln converts byte-level BPE tokenizer.json and SentencePiece tokenizer.model)", passes::printable(kind)),
            ));
        }
        let pre = match &opts.pre_tokenizer {
            Some(p) => p.clone(),
            None => pre_tokenizer_name(&json).ok_or_else(|| {
                Error::unsupported(
                    &tok_json,
                    None,
                    format!(
                        "pre-tokenizer {} is not one kiln recognizes; name llama.cpp's equivalent with --pre-tokenizer (e.g. gpt-2, llama-bpe, qwen2, smollm)",
                        json.get("pre_tokenizer").map(|p| p.to_string()).unwrap_or_else(|| "null".into())
                    ),
                )
            })?,
        };
        let (tokens, types, added) = bpe_vocab(&tok_json, &json, vocab_size)?;
        let merges = bpe_merges(&tok_json, model)?;
        (TokenizerKind::Bpe { merges }, pre, tokens, types, added)
    } else if tok_model.exists() {
        let bytes = crate::input::read(&tok_model)?;
        let spm = parse_sentencepiece(&tok_model, &bytes)?;
        if spm.pieces.len() > vocab_size {
            return Err(Error::malformed(
                &tok_model,
                None,
                format!(
                    "{} pieces but the model's vocab_size is {vocab_size}",
                    spm.pieces.len()
                ),
            ));
        }
        // As convert_hf_to_gguf.py: pad to vocab_size, fill from the pieces,
        // then let tokenizer_config.json's added tokens override.
        let mut tokens: Vec<String> = (0..vocab_size).map(|i| format!("[PAD{i}]")).collect();
        let mut scores = vec![-10000.0f32; vocab_size];
        let mut types = vec![UNUSED; vocab_size];
        for (i, p) in spm.pieces.iter().enumerate() {
            tokens[i] = p.piece.clone();
            scores[i] = p.score;
            types[i] = match p.kind {
                2 => UNKNOWN,
                3 => CONTROL,
                5 => UNUSED,
                6 => BYTE,
                _ => NORMAL,
            };
        }
        let mut added = Vec::new();
        if let Some(dec) = tok_config
            .as_ref()
            .and_then(|tc| tc.get("added_tokens_decoder"))
            .and_then(Value::as_object)
        {
            for (id, t) in dec {
                let (Ok(id), Some(content)) = (
                    id.parse::<usize>(),
                    t.get("content").and_then(Value::as_str),
                ) else {
                    continue;
                };
                if id >= vocab_size {
                    continue;
                }
                let special = t.get("special").and_then(Value::as_bool).unwrap_or(false)
                    || looks_special(content);
                added.push((content.to_string(), id));
                types[id] = if special { CONTROL } else { USER_DEFINED };
                tokens[id] = if special {
                    content.to_string()
                } else {
                    content.replace('\u{2581}', " ")
                };
                scores[id] = -1000.0;
            }
        }
        let declared = [
            (SpecialToken::Unknown, spm.unk_id),
            (SpecialToken::Bos, spm.bos_id),
            (SpecialToken::Eos, spm.eos_id),
        ]
        .into_iter()
        .filter_map(|(kind, id)| Some((kind, id.filter(|&i| i >= 0)? as u32)))
        .collect();
        let kind = TokenizerKind::SentencePiece {
            scores,
            add_space_prefix: spm.add_dummy_prefix,
            declared,
        };
        (kind, "default".to_string(), tokens, types, added)
    } else {
        return Err(Error::malformed(
            dir,
            None,
            "no tokenizer.json or tokenizer.model: llama.cpp needs a tokenizer in the GGUF",
        ));
    };

    let mut special = special_tokens(&tokens, &added, tok_config.as_ref(), config, dir);
    // The ids a SentencePiece model declares hold unless the configs name others.
    if let TokenizerKind::SentencePiece { declared, .. } = &kind {
        for &(k, id) in declared {
            if !special.iter().any(|&(s, _)| s == k) {
                special.push((k, id));
            }
        }
        special.sort_by_key(|&(k, _)| SpecialToken::ALL.iter().position(|&a| a == k));
    }
    let flag = |name: &str| {
        tok_config
            .as_ref()
            .and_then(|tc| tc.get(name))
            .and_then(Value::as_bool)
    };
    let tokenizer = Tokenizer {
        kind,
        pre,
        tokens,
        token_types,
        special,
        add_bos: flag("add_bos_token"),
        add_eos: flag("add_eos_token"),
    };
    let templates = chat_templates(dir, tok_config.as_ref())?;
    Ok((tokenizer, templates))
}

/// llama.cpp's pre-tokenizer name for a `tokenizer.json`, judged from its
/// pre-tokenizer structure (llama.cpp hashes the tokenization of a test text
/// instead; the structures below are what produce those hashes).
fn pre_tokenizer_name(json: &Value) -> Option<String> {
    let pre = json.get("pre_tokenizer")?;
    let kind = |v: &Value| {
        v.get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let byte_level_regex = |v: &Value| {
        kind(v) == "ByteLevel" && v.get("use_regex").and_then(Value::as_bool).unwrap_or(true)
    };
    if byte_level_regex(pre) {
        return Some("gpt-2".into());
    }
    if kind(pre) != "Sequence" {
        return None;
    }
    let items = pre.get("pretokenizers")?.as_array()?;
    let shape: Vec<String> = items
        .iter()
        .map(|p| match kind(p).as_str() {
            "Split" => {
                let re = p
                    .get("pattern")
                    .and_then(|x| x.get("Regex"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if re == LLAMA3_REGEX {
                    "split:llama3".into()
                } else if re == QWEN2_REGEX {
                    "split:qwen2".into()
                } else {
                    format!("split:{re}")
                }
            }
            "Digits" if p.get("individual_digits").and_then(Value::as_bool) == Some(true) => {
                "digits".into()
            }
            "ByteLevel" if byte_level_regex(p) => "bytelevel+regex".into(),
            "ByteLevel" => "bytelevel".into(),
            other => other.to_string(),
        })
        .collect();
    let shape: Vec<&str> = shape.iter().map(String::as_str).collect();
    match shape.as_slice() {
        ["split:llama3", "bytelevel"] => Some("llama-bpe".into()),
        ["split:qwen2", "bytelevel"] => Some("qwen2".into()),
        ["digits", "bytelevel+regex"] => Some("smollm".into()),
        ["bytelevel+regex"] => Some("gpt-2".into()),
        _ => None,
    }
}

type BpeVocab = (Vec<String>, Vec<TokenType>, Vec<(String, usize)>);

fn bpe_vocab(path: &Path, json: &Value, vocab_size: usize) -> Result<BpeVocab> {
    let vocab = json
        .get("model")
        .and_then(|m| m.get("vocab"))
        .and_then(Value::as_object)
        .ok_or_else(|| Error::malformed(path, None, "BPE model has no `vocab` object"))?;
    if vocab.is_empty() {
        return Err(Error::malformed(
            path,
            None,
            "BPE model has 0 tokens in its `vocab`",
        ));
    }
    let mut by_id: Vec<Option<String>> = Vec::new();
    // `replace`: an added token may restate a vocab entry (same id, same
    // text); two different tokens for one id are a broken file.
    let mut put = |id: u64, tok: &str, replace: bool| -> Result<()> {
        if id >= vocab_size as u64 {
            return Err(Error::malformed(
                path,
                None,
                format!(
                    "token `{}` has id {id}, past the model's vocab_size {vocab_size}",
                    printable(tok)
                ),
            ));
        }
        let id = id as usize;
        if by_id.len() <= id {
            by_id.resize(id + 1, None);
        }
        match &by_id[id] {
            Some(old) if old != tok && !replace => {
                return Err(Error::malformed(
                    path,
                    None,
                    format!(
                        "duplicate token id {id}: `{}` and `{}`",
                        printable(old),
                        printable(tok)
                    ),
                ));
            }
            _ => by_id[id] = Some(tok.to_string()),
        }
        Ok(())
    };
    for (tok, id) in vocab {
        let id = id.as_u64().ok_or_else(|| {
            Error::malformed(
                path,
                None,
                format!("token `{}` has a non-integer id", printable(tok)),
            )
        })?;
        put(id, tok, false)?;
    }
    let mut added = Vec::new();
    let mut special_ids = Vec::new();
    if let Some(list) = json.get("added_tokens").and_then(Value::as_array) {
        for t in list {
            let (Some(id), Some(content)) = (
                t.get("id").and_then(Value::as_u64),
                t.get("content").and_then(Value::as_str),
            ) else {
                continue;
            };
            put(id, content, true)?;
            let special = t.get("special").and_then(Value::as_bool).unwrap_or(false);
            added.push((content.to_string(), id as usize));
            special_ids.push((id as usize, special || looks_special(content)));
        }
    }
    let mut tokens = Vec::with_capacity(vocab_size);
    let mut types = Vec::with_capacity(vocab_size);
    for i in 0..vocab_size {
        match by_id.get(i).cloned().flatten() {
            None => {
                tokens.push(format!("[PAD{i}]"));
                types.push(UNUSED);
            }
            Some(tok) => {
                match special_ids.iter().find(|(id, _)| *id == i) {
                    Some((_, true)) => types.push(CONTROL),
                    Some((_, false)) => types.push(USER_DEFINED),
                    None => types.push(NORMAL),
                }
                tokens.push(tok);
            }
        }
    }
    Ok((tokens, types, added))
}

/// llama.cpp's `does_token_look_special`.
fn looks_special(t: &str) -> bool {
    (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || t == "<think>"
        || t == "</think>"
}

fn bpe_merges(path: &Path, model: &Value) -> Result<Vec<String>> {
    let Some(merges) = model.get("merges").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    merges
        .iter()
        .map(|m| match m {
            // Two non-empty tokens joined by one space, as llama.cpp splits it.
            Value::String(s)
                if s.split(' ').count() == 2 && s.split(' ').all(|p| !p.is_empty()) =>
            {
                Ok(s.clone())
            }
            Value::Array(pair) if pair.len() == 2 => match (pair[0].as_str(), pair[1].as_str()) {
                (Some(a), Some(b)) => Ok(format!("{a} {b}")),
                _ => Err(Error::malformed(
                    path,
                    None,
                    format!("merge {m} is not a pair of strings"),
                )),
            },
            _ => Err(Error::malformed(
                path,
                None,
                format!("merge {m} is neither \"a b\" (two tokens, one space) nor [a, b]"),
            )),
        })
        .collect()
}

/// The special token ids the configs name, in [`SpecialToken::ALL`] order.
fn special_tokens(
    tokens: &[String],
    added: &[(String, usize)],
    tok_config: Option<&Value>,
    config: &Value,
    dir: &Path,
) -> Vec<(SpecialToken, u32)> {
    let generation = read_json(&dir.join("generation_config.json")).ok();
    let mut found = Vec::new();
    for special in SpecialToken::ALL {
        let kind = match special {
            SpecialToken::Bos => "bos",
            SpecialToken::Eos => "eos",
            SpecialToken::Unknown => "unk",
            SpecialToken::Pad => "pad",
            SpecialToken::Separator => "sep",
            SpecialToken::Cls => "cls",
            SpecialToken::Mask => "mask",
        };
        // tokenizer_config.json names the token (a string or an AddedToken object).
        let named = tok_config
            .and_then(|tc| tc.get(format!("{kind}_token")))
            .and_then(|v| {
                v.as_str()
                    .or_else(|| v.get("content").and_then(Value::as_str))
            });
        let from_name = named.and_then(|n| {
            added
                .iter()
                .find(|(c, _)| c == n)
                .map(|(_, id)| *id)
                .or_else(|| tokens.iter().position(|t| t == n))
        });
        let id_from = |v: Option<&Value>| {
            v.and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_array().and_then(|a| a.first()).and_then(Value::as_u64))
            })
        };
        let id = from_name
            .map(|i| i as u64)
            .or_else(|| id_from(config.get(format!("{kind}_token_id"))))
            .or_else(|| {
                id_from(
                    generation
                        .as_ref()
                        .and_then(|g| g.get(format!("{kind}_token_id"))),
                )
            });
        if let Some(id) = id.filter(|&i| (i as usize) < tokens.len()) {
            found.push((special, id as u32));
        }
    }
    found
}

/// The chat templates: `chat_template.jinja`, else `tokenizer_config.json`'s
/// (one string, or a list of named ones), in file order.
fn chat_templates(dir: &Path, tok_config: Option<&Value>) -> Result<Vec<ChatTemplate>> {
    let default = |template: String| ChatTemplate {
        name: "default".into(),
        template,
    };
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        let t = String::from_utf8(crate::input::read(&jinja)?)
            .map_err(|_| Error::malformed(&jinja, None, "not UTF-8"))?;
        return Ok(vec![default(t)]);
    }
    Ok(match tok_config.and_then(|tc| tc.get("chat_template")) {
        Some(Value::String(t)) => vec![default(t.clone())],
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|item| {
                Some(ChatTemplate {
                    name: item.get("name")?.as_str()?.to_string(),
                    template: item.get("template")?.as_str()?.to_string(),
                })
            })
            .collect(),
        _ => Vec::new(),
    })
}

/// One piece of a SentencePiece model.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    /// sentencepiece `Type`: NORMAL=1 UNKNOWN=2 CONTROL=3 USER_DEFINED=4 UNUSED=5 BYTE=6.
    pub kind: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SentencePiece {
    pub pieces: Vec<Piece>,
    pub unk_id: Option<i64>,
    pub bos_id: Option<i64>,
    pub eos_id: Option<i64>,
    pub add_dummy_prefix: bool,
}

/// A minimal protobuf reader for sentencepiece's `ModelProto`.
struct Proto<'a> {
    path: &'a Path,
    b: &'a [u8],
    pos: usize,
}

impl<'a> Proto<'a> {
    fn err(&self, what: &str) -> Error {
        Error::malformed(
            self.path,
            None,
            format!("invalid SentencePiece model: {what} at byte {}", self.pos),
        )
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .b
                .get(self.pos)
                .ok_or_else(|| self.err("truncated varint"))?;
            self.pos += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint too long"))
    }

    /// Next (field, wire type, payload) where payload is the bytes of a
    /// length-delimited field or the little-endian/varint value.
    fn field(&mut self) -> Result<Option<(u64, Field<'a>)>> {
        if self.pos >= self.b.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (num, wire) = (key >> 3, key & 7);
        let f = match wire {
            0 => Field::Varint(self.varint()?),
            1 => {
                let s = self
                    .b
                    .get(self.pos..self.pos + 8)
                    .ok_or_else(|| self.err("truncated fixed64"))?;
                self.pos += 8;
                let _ = s;
                Field::Fixed64
            }
            2 => {
                let n = self.varint()? as usize;
                let end = self
                    .pos
                    .checked_add(n)
                    .filter(|&e| e <= self.b.len())
                    .ok_or_else(|| self.err("length past the end"))?;
                let s = &self.b[self.pos..end];
                self.pos = end;
                Field::Bytes(s)
            }
            5 => {
                let s = self
                    .b
                    .get(self.pos..self.pos + 4)
                    .ok_or_else(|| self.err("truncated fixed32"))?;
                self.pos += 4;
                Field::Fixed32(u32::from_le_bytes(s.try_into().expect("4")))
            }
            w => return Err(self.err(&format!("unsupported wire type {w}"))),
        };
        Ok(Some((num, f)))
    }
}

enum Field<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Parse a sentencepiece `tokenizer.model`.
pub fn parse_sentencepiece(path: &Path, bytes: &[u8]) -> Result<SentencePiece> {
    let mut spm = SentencePiece {
        pieces: Vec::new(),
        unk_id: Some(0),
        bos_id: Some(1),
        eos_id: Some(2),
        add_dummy_prefix: true,
    };
    let mut top = Proto {
        path,
        b: bytes,
        pos: 0,
    };
    while let Some((num, f)) = top.field()? {
        match (num, f) {
            (1, Field::Bytes(b)) => {
                let mut p = Proto { path, b, pos: 0 };
                let mut piece = Piece {
                    piece: String::new(),
                    score: 0.0,
                    kind: 1,
                };
                while let Some((n, f)) = p.field()? {
                    match (n, f) {
                        (1, Field::Bytes(s)) => {
                            piece.piece = String::from_utf8_lossy(s).into_owned()
                        }
                        (2, Field::Fixed32(v)) => piece.score = f32::from_bits(v),
                        (3, Field::Varint(v)) => piece.kind = v,
                        _ => {}
                    }
                }
                spm.pieces.push(piece);
            }
            (2, Field::Bytes(b)) => {
                let mut p = Proto { path, b, pos: 0 };
                while let Some((n, f)) = p.field()? {
                    if let Field::Varint(v) = f {
                        let id = Some(v as i32 as i64);
                        match n {
                            40 => spm.unk_id = id,
                            41 => spm.bos_id = id,
                            42 => spm.eos_id = id,
                            _ => {}
                        }
                    }
                }
            }
            (3, Field::Bytes(b)) => {
                let mut p = Proto { path, b, pos: 0 };
                while let Some((n, f)) = p.field()? {
                    if let (3, Field::Varint(v)) = (n, f) {
                        spm.add_dummy_prefix = v != 0;
                    }
                }
            }
            _ => {}
        }
    }
    for (i, p) in spm.pieces.iter().enumerate() {
        let bad = |reason: String| {
            Error::malformed(
                path,
                None,
                format!("piece {i} (`{}`): {reason}", printable(&p.piece)),
            )
        };
        if !(1..=6).contains(&p.kind) {
            return Err(bad(format!(
                "type {} is not a SentencePiece piece type (1 to 6)",
                p.kind
            )));
        }
        if !p.score.is_finite() {
            return Err(bad(format!("score {} is not finite", p.score)));
        }
    }
    if spm.pieces.is_empty() {
        return Err(Error::malformed(
            path,
            None,
            "SentencePiece model has no pieces",
        ));
    }
    Ok(spm)
}
