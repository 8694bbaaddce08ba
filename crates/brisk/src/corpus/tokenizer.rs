//! WordPiece tokenizer: training from word counts, loading, and splitting text
//! into words.
//!
//! brisk uses HuggingFace `tokenizers` objects (BERT normaliser, BERT
//! pre-tokeniser, WordPiece model), so the saved `tokenizer.json` behaves the
//! same in Python. For speed, corpus preparation splits words itself
//! ([`WordSplitter`]): pure-ASCII lines take a byte-level path that gives the
//! same words as the BERT normaliser + pre-tokeniser (tested against them);
//! other lines go through the HF objects.
//!
//! Training learns WordPiece merges from the whole-word counts that corpus
//! preparation computes anyway, so the text is read once.

use std::collections::HashMap;
use std::path::Path;

use ahash::AHashMap;
use compact_str::CompactString;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{
    AddedToken, Model, NormalizedString, Normalizer, OffsetReferential, OffsetType,
    PreTokenizedString, PreTokenizer, Tokenizer,
};
use unicode_categories::UnicodeCategories;
use unicode_normalization_alignments::UnicodeNormalization;

use crate::error::{Error, Result};

/// The BERT special tokens, in the order a trained vocabulary puts them.
pub const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// Ids of the special tokens in a vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecialIds {
    pub pad: u32,
    pub unk: u32,
    pub cls: u32,
    pub sep: u32,
    pub mask: u32,
}

impl SpecialIds {
    /// Looks the special tokens up; a missing one is an error naming `source`.
    pub fn of(tokenizer: &Tokenizer, source: &str) -> Result<SpecialIds> {
        let id = |token: &str| {
            tokenizer.token_to_id(token).ok_or_else(|| {
                Error::Tokenizer(format!(
                    "{source}: the vocabulary has no {token} token (BERT's special tokens are {})",
                    SPECIAL_TOKENS.join(" ")
                ))
            })
        };
        Ok(SpecialIds {
            pad: id("[PAD]")?,
            unk: id("[UNK]")?,
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            mask: id("[MASK]")?,
        })
    }

    pub fn contains(&self, id: u32) -> bool {
        [self.pad, self.unk, self.cls, self.sep, self.mask].contains(&id)
    }
}

/// Wraps a WordPiece model in the BERT pipeline (normaliser, pre-tokeniser,
/// `[CLS] … [SEP]` post-processor, WordPiece decoder).
fn bert_pipeline(model: WordPiece, lowercase: bool) -> Result<Tokenizer> {
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))?;
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    tokenizer.with_decoder(Some(WordPieceDecoder::default()));
    let specials: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(t.to_string(), true))
        .collect();
    tokenizer.add_special_tokens(specials)?;
    let ids = SpecialIds::of(&tokenizer, "the tokenizer")?;
    tokenizer.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), ids.sep),
        ("[CLS]".into(), ids.cls),
    )));
    Ok(tokenizer)
}

/// Characters that may enter the initial WordPiece alphabet (as in BERT's tokenizer).
const ALPHABET_LIMIT: usize = 1000;

/// Learns a WordPiece vocabulary of at most `vocab_size` entries from whole-word
/// counts. Words seen fewer than `min_frequency` times are left out (they
/// could not support a merge of their own, and dropping them makes training
/// several times faster on real text). As in BERT's tokenizer, at most 1000
/// characters enter the initial alphabet, so rare symbols fall back to
/// `[UNK]` instead of taking up entries.
pub fn train_wordpiece(
    word_counts: &[(String, u64)],
    vocab_size: usize,
    min_frequency: u64,
    lowercase: bool,
) -> Result<Tokenizer> {
    // The trainer's result depends on the iteration order of this map and on
    // how ties at the alphabet limit are cut; a fixed hash seed and an
    // alphabet chosen here (by count, then by character) make it repeatable.
    let kept = word_counts.iter().filter(|(_, c)| *c >= min_frequency);
    let mut counts: AHashMap<CompactString, u64> =
        AHashMap::with_hasher(ahash::RandomState::with_seeds(7, 11, 13, 17));
    let mut chars: HashMap<char, u64> = HashMap::new();
    for (word, count) in kept {
        counts.insert(CompactString::from(word.as_str()), *count);
        for c in word.chars() {
            *chars.entry(c).or_default() += count;
        }
    }
    let mut alphabet: Vec<(char, u64)> = chars.into_iter().collect();
    alphabet.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    alphabet.truncate(ALPHABET_LIMIT);
    let trainer = BpeTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(min_frequency)
        .special_tokens(
            SPECIAL_TOKENS
                .iter()
                .map(|t| AddedToken::from(t.to_string(), true))
                .collect(),
        )
        .initial_alphabet(alphabet.iter().map(|(c, _)| *c).collect())
        .limit_alphabet(ALPHABET_LIMIT)
        .continuing_subword_prefix("##".into())
        .show_progress(false)
        .build();
    let mut bpe = BPE::default();
    trainer.do_train(&counts, &mut bpe)?;
    bert_pipeline(WordPiece::from_bpe(&bpe), lowercase)
}

/// Loads a `tokenizer.json`, or builds the BERT pipeline around a `vocab.txt`
/// (one token per line) with the given lowercasing.
pub fn load_tokenizer(path: &Path, lowercase: bool) -> Result<Tokenizer> {
    if !path.exists() {
        return Err(Error::data(path, "tokenizer file not found"));
    }
    let shown = path.display().to_string();
    let tokenizer = if path.extension().is_some_and(|e| e == "json") {
        crate::runtime::contain_panic(|| Tokenizer::from_file(path))
            .map_err(|panic| format!("the tokenizers library failed on it ({panic})"))
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|e| Error::data(path, format!("not a readable tokenizer.json: {e}")))?
    } else {
        let model = WordPiece::from_file(&shown)
            .build()
            .map_err(|e| Error::data(path, format!("not a readable vocab.txt: {e}")))?;
        bert_pipeline(model, lowercase)?
    };
    // The special tokens must be in the model's own vocabulary (added tokens
    // alone leave WordPiece without its [UNK]).
    for token in SPECIAL_TOKENS {
        if tokenizer.get_model().token_to_id(token).is_none() {
            return Err(Error::data(
                path,
                format!(
                    "the vocabulary has no {token} token (BERT's special tokens are {})",
                    SPECIAL_TOKENS.join(" ")
                ),
            ));
        }
    }
    Ok(tokenizer)
}

/// Splits text into the words the tokenizer's normaliser and pre-tokeniser
/// would produce.
pub struct WordSplitter<'t> {
    tokenizer: &'t Tokenizer,
    /// Set when the tokenizer is BERT's pipeline, which brisk reimplements.
    bert: Option<BertFlags>,
}

/// The options of a BERT normaliser that change which words come out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BertFlags {
    chinese: bool,
    strip_accents: bool,
    lowercase: bool,
}

/// Per-thread buffers of [`WordSplitter::for_each_word`].
#[derive(Default)]
pub struct Scratch {
    buf: String,
    normalized: String,
}

impl<'t> WordSplitter<'t> {
    pub fn new(tokenizer: &'t Tokenizer) -> Self {
        WordSplitter {
            tokenizer,
            bert: bert_flags(tokenizer),
        }
    }

    /// Calls `emit` with each word of `text`, in order. `scratch` is reused
    /// between calls (one per thread).
    ///
    /// For BERT pipelines, pure-ASCII stretches take a byte-level path and
    /// the whitespace-delimited pieces holding other characters a char-level
    /// one; both give the words of HF's BERT normaliser + pre-tokeniser
    /// (tested against them), two orders of magnitude faster. Other
    /// tokenizers go through their own HF objects.
    pub fn for_each_word(
        &self,
        text: &str,
        scratch: &mut Scratch,
        mut emit: impl FnMut(&str),
    ) -> Result<()> {
        let Some(flags) = self.bert else {
            return self.hf_words(text, &mut emit);
        };
        let lowercase = flags.lowercase;
        let mut rest = text;
        while !rest.is_empty() {
            let Some(first) = rest.bytes().position(|b| !b.is_ascii()) else {
                ascii_words(rest, lowercase, &mut scratch.buf, &mut emit);
                break;
            };
            let c = rest[first..].chars().next().unwrap();
            if breaks_words(c) {
                // Non-ASCII whitespace: a word break like any other.
                ascii_words(&rest[..first], lowercase, &mut scratch.buf, &mut emit);
                rest = &rest[first + c.len_utf8()..];
                continue;
            }
            // The whitespace-delimited piece around the first non-ASCII
            // character goes the char-level way, the ASCII text before it
            // the byte-level way.
            let start = rest.as_bytes()[..first]
                .iter()
                .rposition(|&b| b.is_ascii() && breaks_words(b as char))
                .map_or(0, |i| i + 1);
            let end = rest[first..]
                .find(breaks_words)
                .map_or(rest.len(), |i| first + i);
            ascii_words(&rest[..start], lowercase, &mut scratch.buf, &mut emit);
            unicode_words(&rest[start..end], flags, scratch, &mut emit);
            rest = &rest[end..];
        }
        Ok(())
    }

    fn hf_words(&self, line: &str, emit: &mut impl FnMut(&str)) -> Result<()> {
        let mut normalized = NormalizedString::from(line);
        if let Some(n) = self.tokenizer.get_normalizer() {
            n.normalize(&mut normalized)?;
        }
        let mut pieces = PreTokenizedString::from(normalized);
        if let Some(p) = self.tokenizer.get_pre_tokenizer() {
            p.pre_tokenize(&mut pieces)?;
        }
        for (word, _, _) in pieces.get_splits(OffsetReferential::Normalized, OffsetType::Byte) {
            emit(word);
        }
        Ok(())
    }
}

/// Whitespace that the BERT normaliser turns into a space. Controls that
/// Unicode also calls whitespace (`\x0b`, `\x0c`, `\u{85}`) are deleted by
/// the normaliser instead, so they do not break words.
fn breaks_words(c: char) -> bool {
    c.is_whitespace() && !matches!(c, '\x0b' | '\x0c' | '\u{85}')
}

/// The BERT normaliser's options when the tokenizer is BERT's pipeline
/// (cleaning text, BERT pre-tokeniser).
fn bert_flags(tokenizer: &Tokenizer) -> Option<BertFlags> {
    let normalizer = serde_json::to_value(tokenizer.get_normalizer()?).ok()?;
    let pre = serde_json::to_value(tokenizer.get_pre_tokenizer()?).ok()?;
    let field = |v: &serde_json::Value, key: &str| v.get(key).cloned().unwrap_or_default();
    let is_bert = field(&normalizer, "type") == "BertNormalizer"
        && field(&normalizer, "clean_text") == true
        && field(&pre, "type") == "BertPreTokenizer";
    if !is_bert {
        return None;
    }
    let lowercase = field(&normalizer, "lowercase").as_bool()?;
    Some(BertFlags {
        chinese: field(&normalizer, "handle_chinese_chars").as_bool()?,
        strip_accents: field(&normalizer, "strip_accents")
            .as_bool()
            .unwrap_or(lowercase),
        lowercase,
    })
}

/// Characters the BERT normaliser deletes: NUL, U+FFFD and the "other"
/// categories (Cc, Cf, Cn, Co) except tab and line breaks.
fn is_deleted(c: char) -> bool {
    c == '\0' || c == '\u{fffd}' || (!matches!(c, '\t' | '\n' | '\r') && c.is_other())
}

/// CJK ideographs, which BERT splits into words of one character.
fn is_chinese(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

fn is_bert_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.is_punctuation()
}

/// BERT normalisation + pre-tokenisation of one piece of text, char by char,
/// in the normaliser's order: clean, space out CJK, strip accents (NFD, drop
/// non-spacing marks), lowercase; then split at whitespace and isolate
/// punctuation.
fn unicode_words(
    piece: &str,
    flags: BertFlags,
    scratch: &mut Scratch,
    emit: &mut impl FnMut(&str),
) {
    let cleaned = &mut scratch.buf;
    cleaned.clear();
    for c in piece.chars().filter(|&c| !is_deleted(c)) {
        if c.is_whitespace() {
            cleaned.push(' ');
        } else if flags.chinese && is_chinese(c) {
            cleaned.extend([' ', c, ' ']);
        } else {
            cleaned.push(c);
        }
    }
    let out = &mut scratch.normalized;
    out.clear();
    let mut push = |c: char| {
        if flags.lowercase {
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    };
    if flags.strip_accents {
        cleaned
            .as_str()
            .nfd()
            .map(|(c, _)| c)
            .filter(|c| !c.is_mark_nonspacing())
            .for_each(&mut push);
    } else {
        cleaned.chars().for_each(&mut push);
    }
    for word in out.split(char::is_whitespace).filter(|w| !w.is_empty()) {
        let mut from = 0;
        for (i, c) in word.char_indices().filter(|&(_, c)| is_bert_punctuation(c)) {
            if i > from {
                emit(&word[from..i]);
            }
            emit(&word[i..i + c.len_utf8()]);
            from = i + c.len_utf8();
        }
        if from < word.len() {
            emit(&word[from..]);
        }
    }
}

/// What the BERT pipeline does with one ASCII byte.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AsciiClass {
    /// Control character: deleted.
    Drop,
    /// Whitespace: ends a word.
    Space,
    /// Punctuation: a word of its own.
    Punct,
    /// Part of a word.
    Word,
}

const fn ascii_class(b: u8) -> AsciiClass {
    match b {
        b' ' | b'\t' | b'\n' | b'\r' => AsciiClass::Space,
        0..=0x1f | 0x7f => AsciiClass::Drop,
        _ if b.is_ascii_punctuation() => AsciiClass::Punct,
        _ => AsciiClass::Word,
    }
}

const ASCII_CLASSES: [AsciiClass; 128] = {
    let mut table = [AsciiClass::Drop; 128];
    let mut b = 0;
    while b < 128 {
        table[b] = ascii_class(b as u8);
        b += 1;
    }
    table
};

/// BERT normalisation + pre-tokenisation of a pure-ASCII line: control
/// characters are dropped, whitespace splits words, and each ASCII
/// punctuation character is a word of its own.
fn ascii_words(line: &str, lowercase: bool, buf: &mut String, emit: &mut impl FnMut(&str)) {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match ASCII_CLASSES[bytes[i] as usize & 0x7f] {
            AsciiClass::Space | AsciiClass::Drop => i += 1,
            AsciiClass::Punct => {
                emit(&line[i..i + 1]);
                i += 1;
            }
            AsciiClass::Word => {
                let start = i;
                let mut clean = true;
                while i < bytes.len() {
                    match ASCII_CLASSES[bytes[i] as usize & 0x7f] {
                        AsciiClass::Word => clean &= !(lowercase && bytes[i].is_ascii_uppercase()),
                        AsciiClass::Drop => clean = false,
                        _ => break,
                    }
                    i += 1;
                }
                if clean {
                    emit(&line[start..i]);
                } else {
                    buf.clear();
                    for &b in &bytes[start..i] {
                        if ASCII_CLASSES[b as usize & 0x7f] == AsciiClass::Word {
                            buf.push(if lowercase { b.to_ascii_lowercase() } else { b } as char);
                        }
                    }
                    emit(buf);
                }
            }
        }
    }
}

/// WordPiece ids of each word type, computed once per type (in parallel)
/// and stored flat.
pub struct PieceTable {
    offsets: Vec<u32>,
    ids: Vec<u32>,
}

impl PieceTable {
    pub fn build(tokenizer: &Tokenizer, words: &[(String, u64)]) -> Result<PieceTable> {
        use rayon::prelude::*;
        let model = tokenizer.get_model();
        let pieces: Vec<Vec<u32>> = words
            .par_iter()
            .map(|(word, _)| {
                Ok(model
                    .tokenize(word)
                    .map_err(Error::from)?
                    .into_iter()
                    .map(|t| t.id)
                    .collect())
            })
            .collect::<Result<_>>()?;
        let mut offsets = Vec::with_capacity(pieces.len() + 1);
        let mut ids = Vec::with_capacity(pieces.iter().map(Vec::len).sum());
        offsets.push(0);
        for p in pieces {
            ids.extend_from_slice(&p);
            offsets.push(ids.len() as u32);
        }
        Ok(PieceTable { offsets, ids })
    }

    /// The WordPiece ids of word type `word`.
    pub fn pieces(&self, word: u32) -> &[u32] {
        let w = word as usize;
        &self.ids[self.offsets[w] as usize..self.offsets[w + 1] as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tiny_tokenizer(lowercase: bool) -> Tokenizer {
        let words: Vec<(String, u64)> =
            ["the", "cat", "sat", "on", "mat", "hello", "world", ",", "."]
                .iter()
                .map(|w| (w.to_string(), 10))
                .collect();
        train_wordpiece(&words, 100, 1, lowercase).unwrap()
    }

    fn split(splitter: &WordSplitter, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut scratch = Scratch::default();
        splitter
            .for_each_word(text, &mut scratch, |w| out.push(w.to_string()))
            .unwrap();
        out
    }

    fn split_hf(splitter: &WordSplitter, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for line in text.split('\n') {
            splitter
                .hf_words(line, &mut |w| out.push(w.to_string()))
                .unwrap();
        }
        out
    }

    #[test]
    fn trained_vocab_starts_with_special_tokens() {
        let t = tiny_tokenizer(true);
        let ids = SpecialIds::of(&t, "test").unwrap();
        assert_eq!(
            (ids.pad, ids.unk, ids.cls, ids.sep, ids.mask),
            (0, 1, 2, 3, 4)
        );
        let enc = t.encode("Hello, world.", true).unwrap();
        assert_eq!(
            enc.get_tokens(),
            ["[CLS]", "hello", ",", "world", ".", "[SEP]"]
        );
    }

    #[test]
    fn a_malformed_decoder_is_an_error_naming_the_file_not_a_panic() {
        // The tokenizers crate panics on a decoder it cannot read (found by
        // tests/fuzz.rs in brisk-cli).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tiny_tokenizer(true).save(&path, false).unwrap();
        // A syntax error inside the decoder's object: the library buffers
        // that object for an untagged enum and unwraps the result.
        let text = std::fs::read_to_string(&path).unwrap();
        let broken = text.replacen("\"decoder\":{\"type\":", "\"decoder\":{\"type\" ", 1);
        assert_ne!(broken, text);
        std::fs::write(&path, broken).unwrap();
        let err = load_tokenizer(&path, true).unwrap_err().to_string();
        assert!(
            err.contains("tokenizer.json") && err.contains("the tokenizers library failed on it"),
            "{err}"
        );
    }

    #[test]
    fn native_path_is_used_for_bert_pipelines() {
        let flags = |lowercase| BertFlags {
            chinese: true,
            strip_accents: lowercase,
            lowercase,
        };
        assert_eq!(bert_flags(&tiny_tokenizer(true)), Some(flags(true)));
        assert_eq!(bert_flags(&tiny_tokenizer(false)), Some(flags(false)));
    }

    #[test]
    fn ascii_examples() {
        let t = tiny_tokenizer(true);
        let s = WordSplitter::new(&t);
        assert_eq!(split(&s, "Don't stop!\r\n"), ["don", "'", "t", "stop", "!"]);
        assert_eq!(split(&s, "a\x01b\tc\x7f"), ["ab", "c"]);
        assert_eq!(split(&s, "Café  naïve"), ["cafe", "naive"]);
    }

    proptest! {
        #[test]
        fn ascii_path_matches_hf_normaliser_and_pre_tokeniser(
            text in "[ -~\\t\\r\\n\\x00-\\x1f\\x7f]{0,80}",
            lowercase in any::<bool>(),
        ) {
            let t = tiny_tokenizer(lowercase);
            let s = WordSplitter::new(&t);
            prop_assert_eq!(split(&s, &text), split_hf(&s, &text));
        }

        #[test]
        fn mixed_path_matches_hf_on_unicode_text(
            text in "([a-zA-Z.,!'\\- \t\n\x0b\x0c\u{85}\u{a0}\u{2009}\u{3000}\u{200b}\u{301}]|[àéîõüÅÉß]|[Σσςİ]|[中文字]|[–—“”…]|\\PC){0,60}",
            lowercase in any::<bool>(),
        ) {
            let t = tiny_tokenizer(lowercase);
            let s = WordSplitter::new(&t);
            prop_assert_eq!(split(&s, &text), split_hf(&s, &text));
        }
    }
}
