//! Whole-word counting: every document becomes a sequence of word-type ids,
//! and the word table (sorted by frequency) is saved for TNF's rare-word
//! choice.
//!
//! Documents are split in parallel chunks, each with its own small table;
//! the tables are merged in parallel by hash bucket, so no lock is shared.

use std::io::Write;
use std::path::Path;

use ahash::AHashMap;
use compact_str::CompactString;
use rayon::prelude::*;

use super::tokenizer::{Scratch, WordSplitter};
use crate::error::{Error, Result};

/// The documents as word-type ids, and the word table they index.
pub struct WordIndex {
    /// `(word, count)`, most frequent first (ties by word), so a word's id is
    /// its frequency rank.
    pub words: Vec<(String, u64)>,
    /// Per document, the id of each word in order.
    pub docs: Vec<Vec<u32>>,
}

impl WordIndex {
    /// Total number of word occurrences.
    pub fn total(&self) -> u64 {
        self.words.iter().map(|(_, c)| c).sum()
    }
}

/// The word table of one chunk of documents.
struct LocalIndex {
    words: Vec<String>,
    /// Local ids of the words in each hash bucket.
    buckets: Vec<Vec<u32>>,
    counts: Vec<u64>,
    docs: Vec<Vec<u32>>,
}

const BUCKETS: usize = 256;
/// Bytes of text per parallel chunk: large enough that the per-chunk tables
/// stay few, small enough to balance two or more threads.
const CHUNK_BYTES: usize = 16 << 20;

fn bucket_of(word: &str) -> u16 {
    let hash = ahash::RandomState::with_seeds(1, 2, 3, 4).hash_one(word);
    (hash % BUCKETS as u64) as u16
}

/// One hash bucket after merging: its distinct words with their counts, and
/// `(chunk, local id, index in the bucket)` for every chunk word in it.
type MergedBucket = (Vec<(String, u64)>, Vec<(u32, u32, u32)>);

/// Splits every document into words and counts them.
pub fn index_words(docs: &[&str], splitter: &WordSplitter) -> Result<WordIndex> {
    let chunks = chunk_by_bytes(docs, CHUNK_BYTES);
    let locals: Vec<LocalIndex> = chunks
        .par_iter()
        .map(|range| index_chunk(&docs[range.clone()], splitter))
        .collect::<Result<_>>()?;
    Ok(merge(locals))
}

fn chunk_by_bytes(docs: &[&str], target: usize) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, doc) in docs.iter().enumerate() {
        bytes += doc.len();
        if bytes >= target {
            ranges.push(start..i + 1);
            (start, bytes) = (i + 1, 0);
        }
    }
    if start < docs.len() {
        ranges.push(start..docs.len());
    }
    ranges
}

fn index_chunk(docs: &[&str], splitter: &WordSplitter) -> Result<LocalIndex> {
    // Keys inline up to 24 bytes (almost every word), so a lookup touches one
    // cache line instead of chasing a heap pointer.
    let mut ids: AHashMap<CompactString, u32> = AHashMap::with_capacity(1 << 16);
    let mut local = LocalIndex {
        words: Vec::new(),
        buckets: vec![Vec::new(); BUCKETS],
        counts: Vec::new(),
        docs: Vec::with_capacity(docs.len()),
    };
    let mut scratch = Scratch::default();
    for doc in docs {
        // About one word per six bytes of English text.
        let mut seq = Vec::with_capacity(doc.len() / 6);
        splitter.for_each_word(doc, &mut scratch, |word| {
            let id = match ids.get(word) {
                Some(&id) => id,
                None => {
                    let id = local.words.len() as u32;
                    ids.insert(CompactString::from(word), id);
                    local.words.push(word.to_string());
                    local.buckets[bucket_of(word) as usize].push(id);
                    local.counts.push(0);
                    id
                }
            };
            local.counts[id as usize] += 1;
            seq.push(id);
        })?;
        local.docs.push(seq);
    }
    Ok(local)
}

/// Merges chunk tables into one frequency-sorted table and renumbers the
/// documents.
fn merge(locals: Vec<LocalIndex>) -> WordIndex {
    // Per bucket: the bucket's distinct words with counts, and for every
    // (chunk, local id) in the bucket its index in the bucket.
    let per_bucket: Vec<MergedBucket> = (0..BUCKETS)
        .into_par_iter()
        .map(|b| {
            let mut index: AHashMap<&str, u32> = AHashMap::new();
            let mut words: Vec<(String, u64)> = Vec::new();
            let mut placements = Vec::new();
            for (c, local) in locals.iter().enumerate() {
                for &l in &local.buckets[b] {
                    let (l, word) = (l as usize, &local.words[l as usize]);
                    let id = *index.entry(word.as_str()).or_insert_with(|| {
                        words.push((word.clone(), 0));
                        (words.len() - 1) as u32
                    });
                    words[id as usize].1 += local.counts[l];
                    placements.push((c as u32, l as u32, id));
                }
            }
            (words, placements)
        })
        .collect();

    let mut remap: Vec<Vec<u32>> = locals.iter().map(|l| vec![0; l.words.len()]).collect();
    let mut all_words = Vec::new();
    for (words, placements) in per_bucket {
        let offset = all_words.len() as u32;
        for (c, l, id) in placements {
            remap[c as usize][l as usize] = offset + id;
        }
        all_words.extend(words);
    }

    // Rank by frequency: most frequent first, ties by word for determinism.
    let mut order: Vec<u32> = (0..all_words.len() as u32).collect();
    order.par_sort_unstable_by(|&a, &b| {
        let (wa, ca) = &all_words[a as usize];
        let (wb, cb) = &all_words[b as usize];
        cb.cmp(ca).then_with(|| wa.cmp(wb))
    });
    let mut rank = vec![0u32; all_words.len()];
    for (r, &old) in order.iter().enumerate() {
        rank[old as usize] = r as u32;
    }
    let mut slots: Vec<Option<(String, u64)>> = all_words.into_iter().map(Some).collect();
    let words: Vec<(String, u64)> = order
        .iter()
        .map(|&old| slots[old as usize].take().unwrap())
        .collect();

    let docs: Vec<Vec<u32>> = locals
        .into_par_iter()
        .zip(remap.into_par_iter())
        .flat_map_iter(|(local, remap)| {
            let rank = &rank;
            local.docs.into_iter().map(move |doc| {
                doc.into_iter()
                    .map(|l| rank[remap[l as usize] as usize])
                    .collect::<Vec<u32>>()
            })
        })
        .collect();
    WordIndex { words, docs }
}

/// Writes the word table as `word<TAB>count` lines, most frequent first.
pub fn write_word_counts(path: &Path, words: &[(String, u64)]) -> Result<()> {
    let tmp = crate::run::temporary_sibling(path);
    let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    for (word, count) in words {
        writeln!(out, "{word}\t{count}").map_err(|e| Error::io(&tmp, e))?;
    }
    out.into_inner()
        .map_err(|e| Error::io(&tmp, e.into_error()))?
        .sync_all()
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Reads a word table written by [`write_word_counts`].
pub fn read_word_counts(path: &Path) -> Result<Vec<(String, u64)>> {
    let text = crate::run::read_text(path)?;
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let parsed = line
                .rsplit_once('\t')
                .and_then(|(w, c)| Some((w.to_string(), c.parse().ok()?)));
            parsed.ok_or_else(|| {
                Error::data(path, format!("line {}: expected word<TAB>count", i + 1))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::tokenizer::train_wordpiece;

    #[test]
    fn counts_and_ids_agree_across_chunks() {
        let t = train_wordpiece(&[("a".into(), 1)], 50, 1, true).unwrap();
        let splitter = WordSplitter::new(&t);
        let docs = ["The cat. the dog", "a cat", "dog dog dog the"];
        // One chunk per document, to exercise the merge.
        let locals: Vec<LocalIndex> = docs
            .iter()
            .map(|d| index_chunk(&[*d], &splitter).unwrap())
            .collect();
        let index = merge(locals);
        let table: Vec<(&str, u64)> = index.words.iter().map(|(w, c)| (w.as_str(), *c)).collect();
        assert_eq!(
            table,
            [("dog", 4), ("the", 3), ("cat", 2), (".", 1), ("a", 1)]
        );
        let words = |d: usize| -> Vec<&str> {
            index.docs[d]
                .iter()
                .map(|&i| index.words[i as usize].0.as_str())
                .collect()
        };
        assert_eq!(words(0), ["the", "cat", ".", "the", "dog"]);
        assert_eq!(words(2), ["dog", "dog", "dog", "the"]);
        assert_eq!(index.total(), 11);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.tsv");
        write_word_counts(&path, &index.words).unwrap();
        assert_eq!(read_word_counts(&path).unwrap(), index.words);
    }
}
