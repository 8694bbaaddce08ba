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
        Tokenizer::from_file(path)
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
    /// `Some(lowercase)` when the byte-level ASCII path applies.
    ascii_path: Option<bool>,
}

impl<'t> WordSplitter<'t> {
    pub fn new(tokenizer: &'t Tokenizer) -> Self {
        WordSplitter {
            tokenizer,
            ascii_path: bert_ascii_equivalent(tokenizer),
        }
    }

    /// Calls `emit` with each word of `text`, in order. `scratch` is reused
    /// between calls (one per thread).
    ///
    /// Text is cut at whitespace first (both pipelines turn it into a word
    /// break); pure-ASCII pieces take the byte-level path, the rest go
    /// through the tokenizer's own normaliser and pre-tokeniser.
    pub fn for_each_word(
        &self,
        text: &str,
        scratch: &mut Scratch,
        mut emit: impl FnMut(&str),
    ) -> Result<()> {
        let Some(lowercase) = self.ascii_path else {
            return self.hf_words(text, &mut emit);
        };
        for line in text.split('\n') {
            if line.is_ascii() {
                ascii_words(line, lowercase, &mut scratch.buf, &mut emit);
                continue;
            }
            for piece in line.split(breaks_words).filter(|p| !p.is_empty()) {
                if piece.is_ascii() {
                    ascii_words(piece, lowercase, &mut scratch.buf, &mut emit);
                } else {
                    self.cached_hf_words(piece, scratch, &mut emit)?;
                }
            }
        }
        Ok(())
    }

    /// The HF path is two orders of magnitude slower per word than the byte
    /// path, and the same non-ASCII pieces recur, so their words are cached.
    fn cached_hf_words(&self, piece: &str, scratch: &mut Scratch, emit: &mut impl FnMut(&str)) -> Result<()> {
        if let Some(words) = scratch.cache.get(piece) {
            words.iter().for_each(|w| emit(w));
            return Ok(());
        }
        let mut words = Vec::new();
        self.hf_words(piece, &mut |w| words.push(w.to_string()))?;
        words.iter().for_each(|w| emit(w));
        if scratch.cache.len() >= Scratch::MAX_CACHED {
            scratch.cache.clear();
        }
        scratch.cache.insert(piece.to_string(), words);
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

/// Per-thread buffers of [`WordSplitter::for_each_word`].
#[derive(Default)]
pub struct Scratch {
    buf: String,
    cache: AHashMap<String, Vec<String>>,
}

impl Scratch {
    /// Bound on cached pieces, so memory stays small on any input.
    const MAX_CACHED: usize = 1 << 16;
}

/// Whitespace that the BERT normaliser turns into a space. Controls that
/// Unicode also calls whitespace (`\x0b`, `\x0c`, `\u{85}`) are deleted by
/// the normaliser instead, so they do not break words.
fn breaks_words(c: char) -> bool {
    c.is_whitespace() && !matches!(c, '\x0b' | '\x0c' | '\u{85}')
}

/// The byte-level path applies when the tokenizer is BERT's pipeline
/// (cleaning text, BERT pre-tokeniser); it returns the lowercasing flag.
fn bert_ascii_equivalent(tokenizer: &Tokenizer) -> Option<bool> {
    let normalizer = serde_json::to_value(tokenizer.get_normalizer()?).ok()?;
    let pre = serde_json::to_value(tokenizer.get_pre_tokenizer()?).ok()?;
    let is = |v: &serde_json::Value, key: &str, want: &str| {
        v.get(key).map(|x| x.to_string()) == Some(want.into())
    };
    (is(&normalizer, "type", "\"BertNormalizer\"")
        && is(&normalizer, "clean_text", "true")
        && is(&pre, "type", "\"BertPreTokenizer\""))
    .then(|| normalizer.get("lowercase").and_then(|v| v.as_bool()))
    .flatten()
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

/// Vocabulary as `token -> id`, for tests and tools.
pub fn vocab_of(tokenizer: &Tokenizer) -> HashMap<String, u32> {
    tokenizer.get_vocab(true)
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
    fn ascii_path_is_used_for_bert_pipelines() {
        assert_eq!(bert_ascii_equivalent(&tiny_tokenizer(true)), Some(true));
        assert_eq!(bert_ascii_equivalent(&tiny_tokenizer(false)), Some(false));
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
