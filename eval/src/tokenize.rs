//! Text to token ids from a model's GGUF tokenizer metadata
//! (`tokenizer.ggml.*`), the way llama.cpp's `llama_tokenize` does it with
//! `parse_special = false`: byte-level BPE (`gpt2`, with the pre-tokenizer
//! regexes of `tokenizer.ggml.pre`) and SentencePiece (`llama`, greedy merge by
//! score, byte fallback). Hugging Face inputs go through the same code: their
//! `tokenizer.json` / `tokenizer.model` is converted to the same metadata by
//! `formats::tokenizer` when the checkpoint is loaded.
//!
//! What must stay true: the ids are the ones llama.cpp produces for the same
//! GGUF (so that perplexities are comparable with `llama-perplexity`); a
//! tokenizer kind or pre-tokenizer kiln does not implement is refused by name,
//! never approximated. Reference: llama.cpp `src/llama-vocab.cpp`
//! (`llm_tokenizer_bpe_session`, `llm_tokenizer_spm_session`,
//! `tokenizer_st_partition`) and `src/unicode.cpp` (`unicode_regex_split`).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use fancy_regex::Regex;
use passes::{MetaValue, Metadata};

use crate::error::{Error, Result};

// llama.cpp token types.
const TYPE_USER_DEFINED: i64 = 4;
const TYPE_BYTE: i64 = 6;

/// The GPT-2 pre-tokenizer regex. llama.cpp writes it without the final
/// `|\s+` but its hand-written matcher (`unicode_regex_split_custom_gpt2`)
/// behaves as the original with it.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's regex list and flags for a `tokenizer.ggml.pre` name (the
/// ones kiln's converter writes, plus their aliases).
fn pre_tokenizer(pre: &str) -> Option<(Vec<&'static str>, bool, bool)> {
    // (regexes, ignore_merges, add_bos default)
    Some(match pre {
        "default" | "gpt-2" | "phi-2" | "mpt" | "olmo" => (vec![GPT2], false, false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" => (vec![LLAMA3], true, true),
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" => (vec![QWEN2], false, false),
        "smollm" | "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" => {
            (vec![r"\p{N}", GPT2], false, false)
        }
        _ => return None,
    })
}

#[derive(Debug)]
enum Kind {
    Bpe {
        ranks: HashMap<(String, String), u32>,
        regexes: Vec<Regex>,
        ignore_merges: bool,
        /// gpt2's byte -> printable char map.
        byte_char: Box<[char; 256]>,
    },
    Spm {
        scores: Vec<f32>,
        add_space_prefix: bool,
        byte_tokens: Box<[Option<u32>; 256]>,
    },
}

/// A tokenizer built from GGUF metadata.
#[derive(Debug)]
pub struct Tokenizer {
    kind: Kind,
    to_id: HashMap<String, u32>,
    /// User-defined added tokens (matched in the text even without special
    /// parsing), longest first.
    user_defined: Vec<(String, u32)>,
    pub n_vocab: usize,
    pub bos: Option<u32>,
    /// Whether llama.cpp prepends BOS (`tokenizer.ggml.add_bos_token`, else
    /// the tokenizer kind's default).
    pub add_bos: bool,
}

fn strings(md: &Metadata, key: &str) -> Option<Vec<String>> {
    match md.get(key)? {
        MetaValue::Array(a) => a.iter().map(|v| v.as_str().map(str::to_string)).collect(),
        _ => None,
    }
}

fn ints(md: &Metadata, key: &str) -> Option<Vec<i64>> {
    match md.get(key)? {
        MetaValue::Array(a) => a
            .iter()
            .map(|v| match *v {
                MetaValue::I32(x) => Some(x as i64),
                MetaValue::I64(x) => Some(x),
                MetaValue::U32(x) => Some(x as i64),
                MetaValue::U8(x) => Some(x as i64),
                MetaValue::I8(x) => Some(x as i64),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn floats(md: &Metadata, key: &str) -> Option<Vec<f32>> {
    match md.get(key)? {
        MetaValue::Array(a) => a.iter().map(|v| v.as_f64().map(|x| x as f32)).collect(),
        _ => None,
    }
}

fn flag(md: &Metadata, key: &str) -> Option<bool> {
    match md.get(key)? {
        MetaValue::Bool(b) => Some(*b),
        v => v.as_u64().map(|x| x != 0),
    }
}

/// GPT-2's reversible byte -> char map (`bytes_to_unicode`).
fn byte_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        out[b as usize] = if printable {
            char::from_u32(b).expect("latin-1")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("small code point")
        };
    }
    out
}

impl Tokenizer {
    /// Build the tokenizer described by `md` (GGUF `tokenizer.ggml.*` keys).
    pub fn from_metadata(md: &Metadata) -> Result<Tokenizer> {
        let bad = |reason: String| Error::Tokenizer(reason);
        let model = md
            .get("tokenizer.ggml.model")
            .and_then(MetaValue::as_str)
            .ok_or_else(|| {
                bad("no tokenizer.ggml.model key: the model carries no tokenizer".into())
            })?;
        let tokens = strings(md, "tokenizer.ggml.tokens")
            .ok_or_else(|| bad("tokenizer.ggml.tokens is missing or not a string array".into()))?;
        if tokens.is_empty() || tokens.len() > u32::MAX as usize {
            return Err(bad(format!("{} tokens", tokens.len())));
        }
        let types = ints(md, "tokenizer.ggml.token_type").unwrap_or_else(|| vec![1; tokens.len()]);
        if types.len() != tokens.len() {
            return Err(bad(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let mut to_id = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            // llama.cpp keeps the first id of a duplicated text.
            to_id.entry(t.clone()).or_insert(i as u32);
        }
        let mut user_defined: Vec<(String, u32)> = types
            .iter()
            .enumerate()
            .filter(|&(_, &t)| t == TYPE_USER_DEFINED)
            .map(|(i, _)| (tokens[i].clone(), i as u32))
            .filter(|(t, _)| !t.is_empty())
            .collect();
        user_defined.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let bos = md
            .get("tokenizer.ggml.bos_token_id")
            .and_then(MetaValue::as_u64)
            .map(|b| b as u32)
            .filter(|&b| (b as usize) < tokens.len());
        let (kind, add_bos_default) = match model {
            "gpt2" => {
                let pre = md.get("tokenizer.ggml.pre").and_then(MetaValue::as_str).unwrap_or("default");
                let (exprs, ignore_merges, add_bos) = pre_tokenizer(pre).ok_or_else(|| {
                    bad(format!(
                        "pre-tokenizer `{pre}` is not implemented by kiln's evaluator (it implements gpt-2, llama-bpe, qwen2, smollm and their aliases)"
                    ))
                })?;
                let regexes = exprs
                    .iter()
                    .map(|e| Regex::new(e).map_err(|err| bad(format!("regex {e}: {err}"))))
                    .collect::<Result<Vec<_>>>()?;
                let merges = strings(md, "tokenizer.ggml.merges").unwrap_or_default();
                let mut ranks = HashMap::with_capacity(merges.len());
                for (i, m) in merges.iter().enumerate() {
                    // As llama.cpp: split at the first space after the first byte.
                    let Some(pos) = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
                        continue;
                    };
                    ranks.entry((m[..pos].to_string(), m[pos + 1..].to_string())).or_insert(i as u32);
                }
                (Kind::Bpe { ranks, regexes, ignore_merges, byte_char: Box::new(byte_chars()) }, add_bos)
            }
            "llama" => {
                let scores = floats(md, "tokenizer.ggml.scores").unwrap_or_else(|| vec![0.0; tokens.len()]);
                if scores.len() < tokens.len() {
                    return Err(bad(format!("{} scores for {} tokens", scores.len(), tokens.len())));
                }
                let mut byte_tokens = Box::new([None; 256]);
                for (i, t) in tokens.iter().enumerate() {
                    if types[i] != TYPE_BYTE {
                        continue;
                    }
                    if let Some(hex) = t.strip_prefix("<0x").and_then(|r| r.strip_suffix('>')) {
                        if let Ok(b) = u8::from_str_radix(hex, 16) {
                            byte_tokens[b as usize].get_or_insert(i as u32);
                        }
                    }
                }
                let add_space_prefix = flag(md, "tokenizer.ggml.add_space_prefix").unwrap_or(true);
                (Kind::Spm { scores, add_space_prefix, byte_tokens }, true)
            }
            other => {
                return Err(bad(format!(
                    "tokenizer model `{other}` is not implemented by kiln's evaluator (it implements gpt2 BPE and llama SentencePiece)"
                )))
            }
        };
        let add_bos = flag(md, "tokenizer.ggml.add_bos_token").unwrap_or(add_bos_default);
        if add_bos && bos.is_none() {
            return Err(bad(
                "add_bos_token is set but tokenizer.ggml.bos_token_id is missing".into(),
            ));
        }
        Ok(Tokenizer {
            kind,
            to_id,
            user_defined,
            n_vocab: tokens.len(),
            bos,
            add_bos,
        })
    }

    /// The ids of `text`, without BOS/EOS (llama.cpp's `add_special = false`,
    /// `parse_special = false`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3);
        let mut first = true;
        for frag in self.partition(text) {
            match frag {
                Frag::Token(id) => out.push(id),
                Frag::Text(s) => {
                    match &self.kind {
                        Kind::Bpe { .. } => self.bpe(s, &mut out)?,
                        Kind::Spm {
                            add_space_prefix, ..
                        } => {
                            // llama.cpp adds the prefix space to the first text fragment only.
                            let mut t = String::with_capacity(s.len() + 1);
                            if *add_space_prefix && first {
                                t.push(' ');
                            }
                            t.push_str(s);
                            self.spm(&t.replace(' ', "\u{2581}"), &mut out);
                        }
                    }
                }
            }
            first = false;
        }
        Ok(out)
    }

    /// Split the text on user-defined tokens (longest first, leftmost).
    fn partition<'a>(&self, text: &'a str) -> Vec<Frag<'a>> {
        let mut frags = vec![Frag::Text(text)];
        for (tok, id) in &self.user_defined {
            let mut next = Vec::with_capacity(frags.len());
            for f in frags {
                match f {
                    Frag::Text(s) if s.contains(tok.as_str()) => {
                        let mut rest = s;
                        while let Some(p) = rest.find(tok.as_str()) {
                            if p > 0 {
                                next.push(Frag::Text(&rest[..p]));
                            }
                            next.push(Frag::Token(*id));
                            rest = &rest[p + tok.len()..];
                        }
                        if !rest.is_empty() {
                            next.push(Frag::Text(rest));
                        }
                    }
                    other => next.push(other),
                }
            }
            frags = next;
        }
        frags
    }

    fn bpe(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        let Kind::Bpe {
            ranks,
            regexes,
            ignore_merges,
            byte_char,
        } = &self.kind
        else {
            unreachable!("bpe on a BPE tokenizer")
        };
        // Each regex splits every piece of the previous pass; matches and the
        // gaps between them are both kept (`unicode_regex_split`).
        let mut pieces: Vec<&str> = vec![text];
        for re in regexes {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for p in pieces {
                let mut last = 0;
                for m in re.find_iter(p) {
                    let m = m.map_err(|e| {
                        Error::Tokenizer(format!("pre-tokenizer regex failed: {e}"))
                    })?;
                    if m.start() > last {
                        next.push(&p[last..m.start()]);
                    }
                    if m.end() > m.start() {
                        next.push(m.as_str());
                    }
                    last = m.end();
                }
                if last < p.len() {
                    next.push(&p[last..]);
                }
            }
            pieces = next;
        }
        for word in pieces {
            let encoded: String = word.bytes().map(|b| byte_char[b as usize]).collect();
            if *ignore_merges {
                if let Some(&id) = self.to_id.get(&encoded) {
                    out.push(id);
                    continue;
                }
            }
            for sym in bpe_merge(&encoded, ranks) {
                match self.to_id.get(sym) {
                    Some(&id) => out.push(id),
                    None => {
                        // llama.cpp: each byte of the symbol's text, where it is a token.
                        for b in sym.bytes() {
                            let s = [b];
                            if let Some(&id) =
                                std::str::from_utf8(&s).ok().and_then(|s| self.to_id.get(s))
                            {
                                out.push(id);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn spm(&self, text: &str, out: &mut Vec<u32>) {
        let Kind::Spm {
            scores,
            byte_tokens,
            ..
        } = &self.kind
        else {
            unreachable!("spm on a SentencePiece tokenizer")
        };
        // Symbols: (start, len) byte spans of single UTF-8 chars, linked.
        let mut sym: Vec<Sym> = Vec::new();
        let n_chars = text.chars().count();
        for (i, (start, c)) in text.char_indices().enumerate() {
            sym.push(Sym {
                start,
                len: c.len_utf8(),
                prev: i as isize - 1,
                next: if i + 1 == n_chars { -1 } else { i as isize + 1 },
            });
        }
        let mut heap = BinaryHeap::new();
        let try_add = |sym: &[Sym], heap: &mut BinaryHeap<SpmBigram>, l: isize, r: isize| {
            if l < 0 || r < 0 {
                return;
            }
            let (l, r) = (l as usize, r as usize);
            let s = &text[sym[l].start..sym[l].start + sym[l].len + sym[r].len];
            if let Some(&id) = self.to_id.get(s) {
                heap.push(SpmBigram {
                    score: scores[id as usize],
                    left: l,
                    right: r,
                    size: s.len(),
                });
            }
        };
        for i in 1..sym.len() {
            try_add(&sym, &mut heap, i as isize - 1, i as isize);
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (b.left, b.right);
            if sym[l].len == 0 || sym[r].len == 0 || sym[l].len + sym[r].len != b.size {
                continue;
            }
            sym[l].len += sym[r].len;
            sym[r].len = 0;
            sym[l].next = sym[r].next;
            if sym[r].next >= 0 {
                let n = sym[r].next as usize;
                sym[n].prev = l as isize;
            }
            let (p, n) = (sym[l].prev, sym[l].next);
            try_add(&sym, &mut heap, p, l as isize);
            try_add(&sym, &mut heap, l as isize, n);
        }
        if sym.is_empty() {
            return;
        }
        // Every merge made a piece, so a final symbol is a piece or a single
        // char that is not one: that goes out as byte tokens (llama.cpp's
        // `resegment`, whose reverse-merge branch cannot be reached).
        let mut i = 0isize;
        while i != -1 {
            let s = sym[i as usize];
            let piece = &text[s.start..s.start + s.len];
            match self.to_id.get(piece) {
                Some(&id) => out.push(id),
                None => out.extend(piece.bytes().filter_map(|b| byte_tokens[b as usize])),
            }
            i = s.next;
        }
    }
}

enum Frag<'a> {
    Text(&'a str),
    Token(u32),
}

#[derive(Clone, Copy)]
struct Sym {
    start: usize,
    len: usize,
    prev: isize,
    next: isize,
}

/// llama.cpp's SPM work-queue order: highest score first, then leftmost.
struct SpmBigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for SpmBigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for SpmBigram {}
impl PartialOrd for SpmBigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for SpmBigram {
    fn cmp(&self, o: &Self) -> Ordering {
        self.score.total_cmp(&o.score).then(o.left.cmp(&self.left))
    }
}

/// BPE merges of one pre-tokenized word (already byte-encoded): repeatedly
/// merge the adjacent pair of lowest rank (leftmost on ties).
fn bpe_merge<'a>(word: &'a str, ranks: &HashMap<(String, String), u32>) -> Vec<&'a str> {
    let mut bounds: Vec<usize> = word.char_indices().map(|(i, _)| i).collect();
    bounds.push(word.len());
    // parts[i] = word[bounds[i]..bounds[i+1]]
    let mut key = (String::new(), String::new());
    loop {
        let mut best: Option<(u32, usize)> = None;
        for i in 0..bounds.len().saturating_sub(2) {
            key.0.clear();
            key.0.push_str(&word[bounds[i]..bounds[i + 1]]);
            key.1.clear();
            key.1.push_str(&word[bounds[i + 1]..bounds[i + 2]]);
            if let Some(&r) = ranks.get(&key) {
                if best.is_none_or(|(br, _)| r < br) {
                    best = Some((r, i));
                }
            }
        }
        match best {
            Some((_, i)) => {
                bounds.remove(i + 1);
            }
            None => break,
        }
    }
    bounds.windows(2).map(|w| &word[w[0]..w[1]]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: Vec<(&str, MetaValue)>) -> Metadata {
        Metadata(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    fn arr_s(v: &[&str]) -> MetaValue {
        MetaValue::Array(v.iter().map(|s| MetaValue::String(s.to_string())).collect())
    }

    #[test]
    fn bpe_merges_by_rank_and_splits_words() {
        // "Ġ" is the byte-encoded space.
        let m = md(vec![
            ("tokenizer.ggml.model", MetaValue::String("gpt2".into())),
            ("tokenizer.ggml.pre", MetaValue::String("gpt-2".into())),
            (
                "tokenizer.ggml.tokens",
                arr_s(&["a", "b", "Ġ", "ab", "Ġab", "c", "1", "2"]),
            ),
            ("tokenizer.ggml.merges", arr_s(&["a b", "Ġ ab"])),
        ]);
        let t = Tokenizer::from_metadata(&m).unwrap();
        assert!(!t.add_bos);
        assert_eq!(t.encode("ab ab").unwrap(), vec![3, 4]);
        assert_eq!(t.encode("abc").unwrap(), vec![3, 5]);
        assert_eq!(t.encode("ba").unwrap(), vec![1, 0]);
    }

    #[test]
    fn smollm_splits_digits_individually() {
        let m = md(vec![
            ("tokenizer.ggml.model", MetaValue::String("gpt2".into())),
            ("tokenizer.ggml.pre", MetaValue::String("smollm".into())),
            ("tokenizer.ggml.tokens", arr_s(&["1", "2", "12"])),
            ("tokenizer.ggml.merges", arr_s(&["1 2"])),
        ]);
        let t = Tokenizer::from_metadata(&m).unwrap();
        assert_eq!(t.encode("12").unwrap(), vec![0, 1]);
        let m = md(vec![
            ("tokenizer.ggml.model", MetaValue::String("gpt2".into())),
            ("tokenizer.ggml.pre", MetaValue::String("gpt-2".into())),
            ("tokenizer.ggml.tokens", arr_s(&["1", "2", "12"])),
            ("tokenizer.ggml.merges", arr_s(&["1 2"])),
        ]);
        assert_eq!(
            Tokenizer::from_metadata(&m).unwrap().encode("12").unwrap(),
            vec![2]
        );
    }

    #[test]
    fn spm_merges_by_score_with_byte_fallback() {
        let m = md(vec![
            ("tokenizer.ggml.model", MetaValue::String("llama".into())),
            (
                "tokenizer.ggml.tokens",
                arr_s(&[
                    "<unk>",
                    "<s>",
                    "\u{2581}",
                    "a",
                    "b",
                    "\u{2581}a",
                    "ab",
                    "\u{2581}ab",
                    "<0x21>",
                ]),
            ),
            (
                "tokenizer.ggml.scores",
                MetaValue::Array(
                    [0.0, 0.0, -1.0, -1.0, -1.0, -2.0, -0.5, -0.1, 0.0]
                        .iter()
                        .map(|&s| MetaValue::F32(s))
                        .collect(),
                ),
            ),
            (
                "tokenizer.ggml.token_type",
                MetaValue::Array(
                    [2, 3, 1, 1, 1, 1, 1, 1, 6]
                        .iter()
                        .map(|&t| MetaValue::I32(t))
                        .collect(),
                ),
            ),
            ("tokenizer.ggml.bos_token_id", MetaValue::U32(1)),
        ]);
        let t = Tokenizer::from_metadata(&m).unwrap();
        assert!(t.add_bos);
        // "▁ab": "ab" (-0.5) merges before "▁a" (-2), then "▁ab" (-0.1).
        assert_eq!(t.encode("ab").unwrap(), vec![7]);
        // "!" is not a piece: byte fallback.
        assert_eq!(t.encode("ab!").unwrap(), vec![7, 8]);
    }

    #[test]
    fn unknown_pre_tokenizer_is_refused_by_name() {
        let m = md(vec![
            ("tokenizer.ggml.model", MetaValue::String("gpt2".into())),
            ("tokenizer.ggml.pre", MetaValue::String("tekken".into())),
            ("tokenizer.ggml.tokens", arr_s(&["a"])),
        ]);
        let e = Tokenizer::from_metadata(&m).unwrap_err().to_string();
        assert!(e.contains("`tekken`"), "{e}");
    }
}
