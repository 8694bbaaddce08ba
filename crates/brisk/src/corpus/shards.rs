//! Packed token shards and the corpus manifest.
//!
//! Documents are packed into fixed-length sequences with no padding:
//! `[CLS]`, then `seq_len - 2` tokens of the document stream, then `[SEP]`.
//! In the stream each document is followed by `[SEP]`, so documents are
//! joined by `[SEP]`. The tail of the stream that does not fill a whole
//! sequence is dropped and counted in the manifest. There is no
//! next-sentence task.
//!
//! Each shard is two little-endian `u32` files of `[sequences, seq_len]`:
//! `*.tokens.u32` (token ids) and `*.words.u32` (word ids, [`WordId`]), so
//! TNF can recover which word every token belongs to.

use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::tokenizer::{PieceTable, SpecialIds};
use crate::error::{Error, Result};

#[cfg(not(target_endian = "little"))]
compile_error!("brisk's token shards are read in place and need a little-endian machine");

/// Version of the manifest and shard layout; readers refuse other versions.
pub const FORMAT_VERSION: u32 = 1;

/// The word id stored for each token: the word type (row of
/// `word_counts.tsv`, 0 = most frequent) in the low 31 bits, and the top bit
/// set on the first piece of each word occurrence. Special tokens store
/// [`WordId::NONE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WordId(pub u32);

impl WordId {
    pub const NONE: WordId = WordId(u32::MAX);
    const START: u32 = 1 << 31;

    pub fn new(word_type: u32, starts_word: bool) -> WordId {
        WordId(word_type | if starts_word { Self::START } else { 0 })
    }

    /// The word type, or `None` for special tokens.
    pub fn word_type(self) -> Option<u32> {
        (self != Self::NONE).then_some(self.0 & !Self::START)
    }

    /// True on the first piece of a word occurrence.
    pub fn starts_word(self) -> bool {
        self != Self::NONE && self.0 & Self::START != 0
    }
}

/// Which split a document or shard belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Validation,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
        }
    }
}

/// Deterministic, seeded choice of the validation documents: a document goes
/// to validation when its hash falls below `fraction`. At least one document
/// is held out when `fraction > 0` and there are two or more documents.
pub fn assign_splits(documents: usize, fraction: f64, seed: u64) -> Vec<Split> {
    let unit =
        |i: usize| (splitmix64(seed ^ splitmix64(i as u64)) >> 11) as f64 / (1u64 << 53) as f64;
    let mut splits: Vec<Split> = (0..documents)
        .map(|i| {
            if unit(i) < fraction {
                Split::Validation
            } else {
                Split::Train
            }
        })
        .collect();
    let none_held_out = !splits.contains(&Split::Validation);
    if fraction > 0.0 && documents >= 2 && none_held_out {
        let lowest = (0..documents)
            .min_by(|&a, &b| unit(a).total_cmp(&unit(b)))
            .unwrap();
        splits[lowest] = Split::Validation;
    }
    splits
}

/// The SplitMix64 mixing function: a fast, well-distributed 64-bit hash.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One shard's files and checksums.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub tokens_file: String,
    pub words_file: String,
    pub sequences: usize,
    pub tokens_sha256: String,
    pub words_sha256: String,
}

/// Counts and shards of one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    pub documents: usize,
    pub sequences: usize,
    /// Tokens in the packed sequences, special tokens included.
    pub tokens: u64,
    /// Tokens of the stream left over at the end (less than one sequence).
    pub dropped_tokens: u64,
    pub shards: Vec<ShardInfo>,
}

/// Where the text came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputInfo {
    pub path: String,
    /// Bytes of (decompressed) text.
    pub bytes: u64,
}

/// The tokenizer file and its fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    pub file: String,
    pub sha256: String,
    /// Trained on this corpus (true) or given (false).
    pub trained: bool,
    pub vocab_size: usize,
    pub lowercase: bool,
}

/// The word table's file and totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WordCountsInfo {
    pub file: String,
    pub types: usize,
    pub words: u64,
}

/// `manifest.json`: everything needed to use and check a prepared corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub brisk_version: String,
    pub seq_len: usize,
    pub special_ids: SpecialIds,
    pub tokenizer: TokenizerInfo,
    pub word_counts: WordCountsInfo,
    pub inputs: Vec<InputInfo>,
    pub documents: usize,
    pub text_bytes: u64,
    /// Entropy (nats) of the unigram distribution of the non-special tokens of
    /// the training split: the loss of a model that ignores context.
    pub unigram_entropy_nats: f64,
    pub train: SplitInfo,
    pub validation: SplitInfo,
}

impl Manifest {
    pub fn split(&self, split: Split) -> &SplitInfo {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
        }
    }
}

/// One split packed into sequences, before it is written.
pub struct Packed {
    /// `[sequences, seq_len]` token ids.
    pub tokens: Vec<u32>,
    /// `[sequences, seq_len]` word ids ([`WordId`]).
    pub words: Vec<u32>,
    pub sequences: usize,
    pub dropped_tokens: u64,
}

/// Packs documents (as word-type ids) into `[CLS] … [SEP]` sequences.
///
/// Every document's pieces, followed by `[SEP]`, form one stream; sequence
/// `i` is `[CLS]`, stream tokens `i·(L−2) .. (i+1)·(L−2)`, `[SEP]`. Each
/// document knows its stream offset (a prefix sum), so documents are written
/// straight to their final positions in parallel.
pub fn pack(docs: &[&[u32]], table: &PieceTable, seq_len: usize, special: SpecialIds) -> Packed {
    let lens: Vec<usize> = docs
        .par_iter()
        .map(|d| d.iter().map(|&w| table.pieces(w).len()).sum::<usize>() + 1)
        .collect();
    let mut offsets = Vec::with_capacity(docs.len());
    let mut total = 0usize;
    for &len in &lens {
        offsets.push(total);
        total += len;
    }
    let body = seq_len - 2;
    let sequences = total / body;
    let kept = sequences * body;
    let mut tokens = vec![0u32; sequences * seq_len];
    let mut words = vec![0u32; sequences * seq_len];
    tokens
        .par_chunks_mut(seq_len)
        .zip(words.par_chunks_mut(seq_len))
        .for_each(|(t, w)| {
            (t[0], t[seq_len - 1]) = (special.cls, special.sep);
            (w[0], w[seq_len - 1]) = (WordId::NONE.0, WordId::NONE.0);
        });
    let (token_out, word_out) = (
        SharedOut(tokens.as_mut_ptr()),
        SharedOut(words.as_mut_ptr()),
    );
    docs.par_iter().zip(&offsets).for_each(|(doc, &offset)| {
        let mut k = offset;
        let mut put = |token: u32, word: WordId| {
            if k < kept {
                let at = k / body * seq_len + 1 + k % body;
                // Safety: stream position k maps to exactly one slot in
                // range, and documents cover disjoint stream ranges.
                unsafe {
                    token_out.write(at, token);
                    word_out.write(at, word.0);
                }
            }
            k += 1;
        };
        for &word in doc.iter() {
            for (i, &piece) in table.pieces(word).iter().enumerate() {
                put(piece, WordId::new(word, i == 0));
            }
        }
        put(special.sep, WordId::NONE);
    });
    Packed {
        tokens,
        words,
        sequences,
        dropped_tokens: (total - kept) as u64,
    }
}

/// An output buffer written by several threads at disjoint positions.
#[derive(Clone, Copy)]
struct SharedOut(*mut u32);

impl SharedOut {
    /// Safety: `at` is in bounds and no other thread writes it.
    unsafe fn write(self, at: usize, value: u32) {
        unsafe { self.0.add(at).write(value) }
    }
}
// Safety: only used by `pack`, whose writers touch disjoint elements.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// How often each non-special token id occurs in packed sequences.
pub fn token_counts(tokens: &[u32], vocab_size: usize, special: SpecialIds) -> Vec<u64> {
    tokens
        .par_chunks(1 << 16)
        .fold(
            || vec![0u64; vocab_size],
            |mut counts, chunk| {
                for &t in chunk {
                    if !special.contains(t) {
                        counts[t as usize] += 1;
                    }
                }
                counts
            },
        )
        .reduce(
            || vec![0u64; vocab_size],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

/// Writes a packed split as shards of `shard_sequences` sequences (in
/// parallel) and returns the split's manifest entry.
pub fn write_split(
    dir: &Path,
    split: Split,
    packed: &Packed,
    documents: usize,
    seq_len: usize,
    shard_sequences: usize,
) -> Result<SplitInfo> {
    let per_shard = shard_sequences * seq_len;
    let shards = packed
        .tokens
        .par_chunks(per_shard)
        .zip(packed.words.par_chunks(per_shard))
        .enumerate()
        .map(|(index, (tokens, words))| {
            let stem = format!("{}-{index:05}", split.name());
            let tokens_file = format!("{stem}.tokens.u32");
            let words_file = format!("{stem}.words.u32");
            Ok(ShardInfo {
                tokens_sha256: write_u32s(&dir.join(&tokens_file), tokens)?,
                words_sha256: write_u32s(&dir.join(&words_file), words)?,
                tokens_file,
                words_file,
                sequences: tokens.len() / seq_len,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(SplitInfo {
        documents,
        sequences: packed.sequences,
        tokens: packed.tokens.len() as u64,
        dropped_tokens: packed.dropped_tokens,
        shards,
    })
}

/// Writes `values` as little-endian bytes and returns their SHA-256.
///
/// Written to a temporary name and renamed, but not synced: shards are
/// derived data, their sizes and checksums are in the manifest (which is
/// synced, and written after them), so a shard torn by a crash is detected
/// on opening or by [`PreparedCorpus::verify_checksums`]. Syncing would cost
/// a tenth of the preparation time on large corpora.
fn write_u32s(path: &Path, values: &[u32]) -> Result<String> {
    // Safety: u32 has no padding and any byte pattern is a valid u8; the
    // machine is little-endian (checked at compile time above).
    let bytes =
        unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), values.len() * 4) };
    let digest = crate::integrity::sha256(bytes);
    let tmp = crate::run::temporary_sibling(path);
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    Ok(digest)
}

/// A prepared corpus opened for reading: the manifest and memory-mapped shards.
pub struct PreparedCorpus {
    pub dir: PathBuf,
    pub manifest: Manifest,
    train: Vec<MappedShard>,
    validation: Vec<MappedShard>,
}

struct MappedShard {
    tokens: Mmap,
    words: Mmap,
    sequences: usize,
}

/// One packed sequence: its token ids and word ids.
#[derive(Debug, Clone, Copy)]
pub struct Sequence<'a> {
    pub tokens: &'a [u32],
    pub words: &'a [u32],
}

impl PreparedCorpus {
    /// Opens `dir/manifest.json` and maps every shard, checking the format
    /// version, the file sizes and the checksums.
    pub fn open(dir: &Path) -> Result<PreparedCorpus> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::data(
                &path,
                format!("cannot read the corpus manifest ({e}); is this a directory made by `brisk corpus prepare`?"),
            )
        })?;
        let version: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::data(&path, format!("not valid JSON: {e}")))?;
        let found = version.get("format_version").and_then(|v| v.as_u64());
        if found != Some(FORMAT_VERSION as u64) {
            return Err(Error::data(
                &path,
                format!(
                    "corpus format version {} is not supported (this brisk reads version {FORMAT_VERSION}); prepare the corpus again",
                    found.map_or("missing".to_string(), |v| v.to_string())
                ),
            ));
        }
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| Error::data(&path, format!("bad manifest: {e}")))?;
        let map_split = |split: Split| -> Result<Vec<MappedShard>> {
            manifest
                .split(split)
                .shards
                .iter()
                .map(|s| {
                    let expect = s
                        .sequences
                        .checked_mul(manifest.seq_len)
                        .and_then(|n| n.checked_mul(4));
                    let map = |file: &String| {
                        map_file(&dir.join(file), expect).map_err(|e| {
                            Error::data(&path, format!("lists a shard that does not match it: {e}"))
                        })
                    };
                    Ok(MappedShard {
                        tokens: map(&s.tokens_file)?,
                        words: map(&s.words_file)?,
                        sequences: s.sequences,
                    })
                })
                .collect()
        };
        let corpus = PreparedCorpus {
            dir: dir.to_path_buf(),
            train: map_split(Split::Train)?,
            validation: map_split(Split::Validation)?,
            manifest,
        };
        corpus.verify_checksums()?;
        Ok(corpus)
    }

    /// Recomputes the SHA-256 of every shard (from its mapping, in
    /// parallel) and of the tokenizer file, and compares them with the
    /// manifest: a damaged file is an error naming it. [`open`] calls this,
    /// so a corpus is checked once per run; the pages it reads are the ones
    /// training reads next.
    ///
    /// [`open`]: PreparedCorpus::open
    pub fn verify_checksums(&self) -> Result<()> {
        let manifest = self.dir.join("manifest.json");
        let shards = [Split::Train, Split::Validation]
            .into_iter()
            .flat_map(|split| {
                self.manifest
                    .split(split)
                    .shards
                    .iter()
                    .zip(self.shards(split))
            });
        let files: Vec<(&String, &String, &Mmap)> = shards
            .flat_map(|(info, map)| {
                [
                    (&info.tokens_file, &info.tokens_sha256, &map.tokens),
                    (&info.words_file, &info.words_sha256, &map.words),
                ]
            })
            .collect();
        files.par_iter().try_for_each(|(file, want, map)| {
            match &crate::integrity::sha256(map) == *want {
                true => Ok(()),
                false => Err(Error::data(
                    self.dir.join(file),
                    format!(
                        "is damaged: its SHA-256 does not match {}; prepare the corpus again",
                        manifest.display()
                    ),
                )),
            }
        })?;
        let tokenizer = self.dir.join(&self.manifest.tokenizer.file);
        let sum = crate::integrity::sha256_file(&tokenizer).map_err(|e| {
            Error::data(
                &manifest,
                format!("lists a tokenizer that cannot be read: {e}"),
            )
        })?;
        if sum != self.manifest.tokenizer.sha256 {
            return Err(Error::data(
                &tokenizer,
                format!(
                    "is damaged or was replaced: its SHA-256 does not match {}",
                    manifest.display()
                ),
            ));
        }
        Ok(())
    }

    fn shards(&self, split: Split) -> &[MappedShard] {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
        }
    }

    pub fn num_sequences(&self, split: Split) -> usize {
        self.shards(split).iter().map(|s| s.sequences).sum()
    }

    /// The `index`-th sequence of a split (panics when out of range, like
    /// slice indexing).
    pub fn sequence(&self, split: Split, mut index: usize) -> Sequence<'_> {
        let len = self.manifest.seq_len;
        for shard in self.shards(split) {
            if index < shard.sequences {
                let range = index * len..(index + 1) * len;
                return Sequence {
                    tokens: &as_u32s(&shard.tokens)[range.clone()],
                    words: &as_u32s(&shard.words)[range],
                };
            }
            index -= shard.sequences;
        }
        panic!("sequence index out of range for the {} split", split.name());
    }
}

/// Maps a shard, checking its size against the manifest's (`None`: a
/// size that overflows, which no file has).
fn map_file(path: &Path, expect_bytes: Option<usize>) -> Result<Mmap> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // Safety: shards are written once (atomically) and never modified; a
    // concurrent external edit would be a user error we cannot guard against.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    if Some(map.len()) != expect_bytes {
        let expect = expect_bytes.map_or("more than any file holds".into(), |n| n.to_string());
        return Err(Error::data(
            path,
            format!(
                "shard has {} bytes, the manifest implies {expect}",
                map.len()
            ),
        ));
    }
    Ok(map)
}

fn as_u32s(bytes: &[u8]) -> &[u32] {
    // Mappings are page-aligned and sizes are checked to be multiples of 4.
    let (head, body, tail) = unsafe { bytes.align_to::<u32>() };
    assert!(
        head.is_empty() && tail.is_empty(),
        "shard mapping is not u32-aligned"
    );
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_ids_pack_type_and_start() {
        let w = WordId::new(12345, true);
        assert_eq!((w.word_type(), w.starts_word()), (Some(12345), true));
        let w = WordId::new(7, false);
        assert_eq!((w.word_type(), w.starts_word()), (Some(7), false));
        assert_eq!(WordId::NONE.word_type(), None);
        assert!(!WordId::NONE.starts_word());
    }

    #[test]
    fn splits_are_seeded_and_hold_out_about_the_fraction() {
        let a = assign_splits(10_000, 0.05, 7);
        assert_eq!(a, assign_splits(10_000, 0.05, 7));
        assert_ne!(a, assign_splits(10_000, 0.05, 8));
        let held = a.iter().filter(|s| **s == Split::Validation).count();
        assert!((400..600).contains(&held), "{held}");
        assert_eq!(
            assign_splits(2, 0.01, 1)
                .iter()
                .filter(|s| **s == Split::Validation)
                .count(),
            1
        );
        assert!(assign_splits(5, 0.0, 1).iter().all(|s| *s == Split::Train));
    }
}
