//! TNF: Taking Notes on the Fly (Wu, Xing, Li, Ke, He & Liu, "Taking Notes
//! on the Fly Helps Language Pre-Training", ICLR 2021).
//!
//! Rare words get poorly trained embeddings, and the sentences that hold
//! them carry a weak signal. TNF keeps a note dictionary, one vector per
//! rare word, outside autograd:
//! - **before the forward pass**, every sub-word token of a rare word that
//!   already has a note gets `(1−λ)·embedding + λ·note` as its input;
//! - **after it**, the note is updated from the detached last-layer outputs:
//!   `note ← (1−γ)·note + γ·mean(h over the word's tokens ± k)`, the window
//!   clipped at the sequence's edges; the first sighting initialises it.
//!
//! A note is read before it is written, so a sequence uses what earlier
//! sequences said about the word (the method's cross-sentence signal).
//!
//! The mix is applied to the embedding layer's output (after its LayerNorm
//! and dropout), where the embedding and the note, a post-LayerNorm
//! last-layer output, are on the same scale. Raw word embeddings are about
//! 50 times smaller (initialised at std 0.02), so mixing before the
//! LayerNorm would let the note drown the word.
//!
//! **Which words are rare.** The paper's band (100 to 500 occurrences in
//! 3.47 billion words) meant thousands of sightings per word, because the
//! corpus was read about 30 times. A short run on a small corpus sees a
//! word far less often, so brisk sets the band by *expected sightings in the
//! run*: `count × tokens the run will see ÷ corpus tokens`. The default
//! band, 20 to 200 sightings, lets a note be written and then read several
//! times. `notes.min_count`/`max_count` give an absolute band of corpus
//! counts instead.
//!
//! **Masked rare words.** A note carries its word's identity, so mixing it
//! into an occurrence the objective asks to predict would hand over the
//! answer. Occurrences with a token selected for prediction are not mixed
//! (they still update the note from their context).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::config::{ConfigSource, NotesConfig};
use crate::corpus::shards::WordId;
use crate::corpus::tokenizer::SpecialIds;
use crate::error::{Error, Result};
use crate::model::InputMix;

/// TNF's notes in a checkpoint directory.
pub const NOTES_FILE: &str = "notes.safetensors";

/// The rare-word band: word types (frequency ranks) `first..=last`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RareBand {
    /// Corpus counts of the band's words (inclusive).
    pub min_count: u64,
    pub max_count: u64,
    /// Expected sightings in this run at those counts.
    pub min_sightings: f64,
    pub max_sightings: f64,
    /// First and last word type (rank) in the band.
    pub first: u32,
    pub last: u32,
    /// Number of rare words.
    pub words: usize,
}

/// Chooses the rare band from the word table (most frequent first).
/// `run_tokens`: tokens the run will see; `corpus_tokens`: tokens of the
/// corpus the counts came from.
pub fn rare_band(
    counts: &[u64],
    cfg: &NotesConfig,
    run_tokens: f64,
    corpus_tokens: f64,
) -> Result<RareBand> {
    let reads = run_tokens / corpus_tokens;
    let (min_count, max_count) = if cfg.absolute_band() {
        (cfg.min_count, cfg.max_count)
    } else {
        (
            (cfg.min_sightings / reads).ceil() as u64,
            (cfg.max_sightings / reads).floor() as u64,
        )
    };
    // Counts fall with the rank, so the band is one run of ranks.
    let first = counts.partition_point(|&c| c > max_count);
    let end = counts.partition_point(|&c| c >= min_count);
    if first >= end {
        return Err(Error::Config(format!(
            "`notes`: no word has a corpus count between {min_count} and {max_count} \
             (expected sightings {:.1} to {:.1} in this run); widen notes.min_sightings/max_sightings \
             or set notes.min_count/max_count",
            min_count as f64 * reads,
            max_count as f64 * reads
        )));
    }
    Ok(RareBand {
        min_count,
        max_count,
        min_sightings: min_count as f64 * reads,
        max_sightings: max_count as f64 * reads,
        first: first as u32,
        last: (end - 1) as u32,
        words: end - first,
    })
}

impl RareBand {
    /// The band of word types `first..=last` (a band saved with notes);
    /// `reads`: how many times the run reads the corpus.
    pub fn of_ranks(
        counts: &[u64],
        first: u32,
        last: u32,
        reads: f64,
    ) -> std::result::Result<RareBand, String> {
        if first > last || last as usize >= counts.len() {
            return Err(format!(
                "the notes are for word types {first}..={last}, but the corpus has {} word types",
                counts.len()
            ));
        }
        let (max_count, min_count) = (counts[first as usize], counts[last as usize]);
        Ok(RareBand {
            min_count,
            max_count,
            min_sightings: min_count as f64 * reads,
            max_sightings: max_count as f64 * reads,
            first,
            last,
            words: (last - first + 1) as usize,
        })
    }
}

/// The band (first and last word type) a notes file was taken for.
pub fn saved_band(path: &Path) -> Result<(u32, u32)> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::data(path, format!("not a readable notes file: {e}")))?;
    let band: Vec<u32> = tensors
        .get("band")
        .ok_or_else(|| Error::data(path, "has no tensor band"))?
        .to_vec1()?;
    match band[..] {
        [first, last] => Ok((first, last)),
        _ => Err(Error::data(path, "tensor band should hold two word types")),
    }
}

/// One occurrence of a rare word in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occurrence {
    /// Row of the note dictionary.
    pub note: usize,
    pub sequence: usize,
    /// Its tokens: `start..end` within the sequence.
    pub start: usize,
    pub end: usize,
}

/// Running counts for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct NoteStats {
    pub sequences: u64,
    pub sequences_with_rare: u64,
    pub occurrences: u64,
    /// Occurrences whose word already had a note.
    pub with_note: u64,
    /// Occurrences whose input was mixed with the note (had one, not masked).
    pub mixed: u64,
}

impl NoteStats {
    fn as_array(&self) -> [f64; 5] {
        [
            self.sequences,
            self.sequences_with_rare,
            self.occurrences,
            self.with_note,
            self.mixed,
        ]
        .map(|v| v as f64)
    }

    fn from_array(a: &[f64]) -> NoteStats {
        NoteStats {
            sequences: a[0] as u64,
            sequences_with_rare: a[1] as u64,
            occurrences: a[2] as u64,
            with_note: a[3] as u64,
            mixed: a[4] as u64,
        }
    }

    fn share(part: u64, whole: u64) -> f64 {
        if whole == 0 {
            0.0
        } else {
            part as f64 / whole as f64
        }
    }

    /// Share of sequences that hold a rare word.
    pub fn sequence_share(&self) -> f64 {
        Self::share(self.sequences_with_rare, self.sequences)
    }

    /// Share of rare-word occurrences whose word already had a note.
    pub fn read_share(&self) -> f64 {
        Self::share(self.with_note, self.occurrences)
    }

    /// Share of rare-word occurrences whose input was mixed with a note.
    pub fn mixed_share(&self) -> f64 {
        Self::share(self.mixed, self.occurrences)
    }
}

/// The note dictionary: `[rare words, hidden]`, dense, outside autograd.
#[derive(Debug, Clone)]
pub struct NoteBook {
    pub band: RareBand,
    hidden: usize,
    half_window: usize,
    gamma: f32,
    lambda: f32,
    notes: Vec<f32>,
    written: Vec<bool>,
    pub stats: NoteStats,
}

impl NoteBook {
    pub fn new(band: RareBand, hidden: usize, cfg: &NotesConfig) -> NoteBook {
        let n = band.words;
        NoteBook {
            band,
            hidden,
            half_window: cfg.half_window,
            gamma: cfg.gamma as f32,
            lambda: cfg.lambda as f32,
            notes: vec![0.0; n * hidden],
            written: vec![false; n],
            stats: NoteStats::default(),
        }
    }

    /// The note of dictionary row `row`, if written.
    pub fn note(&self, row: usize) -> Option<&[f32]> {
        self.written[row].then(|| &self.notes[row * self.hidden..(row + 1) * self.hidden])
    }

    /// Rare-word occurrences in a batch of word ids (`[batch·len]`, as
    /// stored in the shards), in order.
    pub fn occurrences(&self, words: &[u32], len: usize) -> Vec<Occurrence> {
        let mut found = Vec::new();
        for (sequence, ids) in words.chunks(len).enumerate() {
            let mut i = 0;
            while i < ids.len() {
                let w = WordId(ids[i]);
                let mut end = i + 1;
                if w.starts_word() {
                    while end < ids.len()
                        && !WordId(ids[end]).starts_word()
                        && WordId(ids[end]).word_type() == w.word_type()
                    {
                        end += 1;
                    }
                    let ty = w.word_type().expect("a word start has a type");
                    if (self.band.first..=self.band.last).contains(&ty) {
                        found.push(Occurrence {
                            note: (ty - self.band.first) as usize,
                            sequence,
                            start: i,
                            end,
                        });
                    }
                }
                i = end;
            }
        }
        found
    }

    /// The input change for a batch (`[batch, len]`): occurrences whose word
    /// has a note and none of whose tokens is in `predicted` (flattened
    /// positions the objective predicts) are mixed. Updates the counts;
    /// `None` when nothing is mixed.
    pub fn mix(
        &mut self,
        found: &[Occurrence],
        (batch, len): (usize, usize),
        predicted: &[u32],
        dtype: DType,
        device: &Device,
    ) -> Result<Option<InputMix>> {
        let h = self.hidden;
        let mut hit = vec![false; batch * len];
        for &r in predicted {
            hit[r as usize] = true;
        }
        let mut sequences = vec![false; batch];
        let mut keep = vec![1f32; batch * len];
        // The notes this batch mixes, once each, then a zero row: the
        // device gathers `add` from them, so only these rows cross to it.
        let mut table: Vec<f32> = Vec::new();
        let mut slot_of = std::collections::HashMap::new();
        let mut slots = vec![u32::MAX; batch * len];
        let (mut mixed, mut with_note) = (0, 0);
        for o in found {
            sequences[o.sequence] = true;
            let Some(note) = self.note(o.note) else {
                continue;
            };
            with_note += 1;
            let rows = o.sequence * len + o.start..o.sequence * len + o.end;
            if rows.clone().any(|r| hit[r]) {
                continue;
            }
            mixed += 1;
            let slot = *slot_of.entry(o.note).or_insert_with(|| {
                table.extend_from_slice(note);
                (table.len() / h - 1) as u32
            });
            for r in rows {
                keep[r] = 1.0 - self.lambda;
                slots[r] = slot;
            }
        }
        self.stats.occurrences += found.len() as u64;
        self.stats.with_note += with_note;
        self.stats.mixed += mixed;
        self.stats.sequences += batch as u64;
        self.stats.sequences_with_rare += sequences.iter().filter(|&&s| s).count() as u64;
        if mixed == 0 {
            return Ok(None);
        }
        let zero_row = (table.len() / h) as u32;
        table.resize(table.len() + h, 0.0);
        for s in slots.iter_mut().filter(|s| **s == u32::MAX) {
            *s = zero_row;
        }
        let table = Tensor::from_vec(table, (zero_row as usize + 1, h), device)?;
        let slots = Tensor::from_vec(slots, batch * len, device)?;
        let add = table
            .index_select(&slots, 0)?
            .affine(self.lambda as f64, 0.0)?
            .reshape((batch, len, h))?;
        Ok(Some(InputMix {
            keep: Tensor::from_vec(keep, (batch, len, 1), device)?.to_dtype(dtype)?,
            add: add.to_dtype(dtype)?,
        }))
    }

    /// The input change of [`NoteBook::mix`] with the notes read from
    /// `notes` (`[rare words, hidden]`, a trainable copy: fine-tuning mode
    /// U back-propagates into it). Only words with a note take part; the
    /// counts are not updated. Always a mix (of zeros when no word has a
    /// note), so that `notes` is in every graph and gets a gradient.
    pub fn mix_from(
        &self,
        notes: &Tensor,
        found: &[Occurrence],
        (batch, len): (usize, usize),
    ) -> Result<InputMix> {
        let (n, h) = notes.dims2()?;
        let dev = notes.device();
        // Row `n` is a zero row for the tokens without a note.
        let mut rows = vec![n as u32; batch * len];
        let mut keep = vec![1f32; batch * len];
        for o in found.iter().filter(|o| self.written[o.note]) {
            for r in o.sequence * len + o.start..o.sequence * len + o.end {
                rows[r] = o.note as u32;
                keep[r] = 1.0 - self.lambda;
            }
        }
        let table = Tensor::cat(&[notes, &Tensor::zeros((1, h), notes.dtype(), dev)?], 0)?;
        let rows = Tensor::from_vec(rows, batch * len, dev)?;
        let add = (table.index_select(&rows, 0)? * self.lambda as f64)?.reshape((batch, len, h))?;
        Ok(InputMix {
            keep: Tensor::from_vec(keep, (batch, len, 1), dev)?.to_dtype(notes.dtype())?,
            add,
        })
    }

    /// Takes notes from the last-layer outputs `hidden` (`[batch, len,
    /// hidden]`, read as values: no gradient flows) for each occurrence, in
    /// order. Windows are clipped at each sequence's edges: `lengths` gives
    /// the real length of padded sequences (`None`: all `len` tokens).
    pub fn take_notes(
        &mut self,
        found: &[Occurrence],
        hidden: &Tensor,
        lengths: Option<&[usize]>,
    ) -> Result<()> {
        if found.is_empty() {
            return Ok(());
        }
        let (_, len, h) = hidden.dims3()?;
        let window = |o: &Occurrence| {
            let end = lengths.map_or(len, |l| l[o.sequence]);
            let from = o.start.saturating_sub(self.half_window);
            (from, (o.end + self.half_window).min(end))
        };
        // Only the windows' rows are read back from the device.
        let mut needed: Vec<u32> = found
            .iter()
            .flat_map(|o| {
                let (from, to) = window(o);
                (from..to).map(move |t| (o.sequence * len + t) as u32)
            })
            .collect();
        needed.sort_unstable();
        needed.dedup();
        let index = Tensor::new(needed.as_slice(), hidden.device())?;
        let values: Vec<f32> = hidden
            .detach()
            .flatten(0, 1)?
            .index_select(&index, 0)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let mut mean = vec![0f32; h];
        for o in found {
            let (from, to) = window(o);
            mean.fill(0.0);
            for t in from..to {
                let at = needed
                    .binary_search(&((o.sequence * len + t) as u32))
                    .expect("every window row was read");
                let row = &values[at * h..][..h];
                for (m, v) in mean.iter_mut().zip(row) {
                    *m += v;
                }
            }
            let scale = 1.0 / (to - from) as f32;
            let note = &mut self.notes[o.note * h..(o.note + 1) * h];
            if self.written[o.note] {
                for (n, m) in note.iter_mut().zip(&mean) {
                    *n = (1.0 - self.gamma) * *n + self.gamma * m * scale;
                }
            } else {
                for (n, m) in note.iter_mut().zip(&mean) {
                    *n = m * scale;
                }
                self.written[o.note] = true;
            }
        }
        Ok(())
    }

    /// Number of words that have a note.
    pub fn written(&self) -> usize {
        self.written.iter().filter(|&&w| w).count()
    }

    /// The notes, `[rare words, hidden]` row-major (rows without a note
    /// are zeros).
    pub fn values(&self) -> &[f32] {
        &self.notes
    }

    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// Writes the notes, which words have one, and the counts to a
    /// safetensors file (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let dev = Device::Cpu;
        let n = self.written.len();
        let written: Vec<u8> = self.written.iter().map(|&w| w as u8).collect();
        let tensors = [
            (
                "notes",
                Tensor::from_slice(&self.notes, (n, self.hidden), &dev)?,
            ),
            ("written", Tensor::from_vec(written, n, &dev)?),
            (
                "band",
                Tensor::new(&[self.band.first, self.band.last], &dev)?,
            ),
            ("stats", Tensor::new(&self.stats.as_array(), &dev)?),
        ];
        let map: std::collections::HashMap<String, Tensor> = tensors
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        crate::run::save_safetensors(&map, path)
    }

    /// Restores what [`NoteBook::save`] wrote; the file must hold the same
    /// band and width.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| Error::data(path, format!("not a readable notes file: {e}")))?;
        let get = |name: &str| {
            tensors
                .get(name)
                .ok_or_else(|| Error::data(path, format!("has no tensor {name}")))
        };
        let band: Vec<u32> = get("band")?.to_vec1()?;
        if band != [self.band.first, self.band.last] {
            return Err(Error::data(
                path,
                format!(
                    "notes for word types {}..={}, but this run's rare band is {}..={}",
                    band[0], band[1], self.band.first, self.band.last
                ),
            ));
        }
        let notes = get("notes")?;
        if notes.dims() != [self.written.len(), self.hidden] {
            return Err(Error::data(
                path,
                format!(
                    "notes have shape {:?}, expected [{}, {}]",
                    notes.dims(),
                    self.written.len(),
                    self.hidden
                ),
            ));
        }
        let written = get("written")?.to_vec1::<u8>()?;
        let stats = get("stats")?.to_vec1::<f64>()?;
        if written.len() != self.written.len() || stats.len() != 5 {
            return Err(Error::data(
                path,
                format!(
                    "tensors written ({}) and stats ({}) should hold {} and 5 values",
                    written.len(),
                    stats.len(),
                    self.written.len()
                ),
            ));
        }
        self.notes = notes.flatten_all()?.to_vec1()?;
        self.written = written.into_iter().map(|w| w != 0).collect();
        self.stats = NoteStats::from_array(&stats);
        Ok(())
    }
}

/// Finds rare words in WordPiece token ids, for text that comes without
/// word ids (fine-tuning batches): a token that does not start with `##`
/// begins a word, the `##` tokens after it continue it, and the word is its
/// pieces joined: the normalised word that the corpus counted.
#[derive(Debug, Clone)]
pub struct NoteLookup {
    /// The note row of each rare word.
    rows: HashMap<String, usize>,
    /// Each token id's piece; `None` for special tokens.
    pieces: Vec<Option<String>>,
}

impl NoteLookup {
    /// `words`: the corpus's word table, most frequent first (the ranks the
    /// band indexes).
    pub fn new(
        words: &[(String, u64)],
        band: &RareBand,
        tokenizer: &Tokenizer,
    ) -> Result<NoteLookup> {
        let rows = (band.first..=band.last)
            .map(|r| (words[r as usize].0.clone(), (r - band.first) as usize))
            .collect();
        let special = SpecialIds::of(tokenizer, "the run's tokenizer")?;
        let vocab = tokenizer.get_vocab(true);
        let size = vocab.values().max().map_or(0, |&m| m as usize + 1);
        let mut pieces = vec![None; size];
        for (piece, id) in vocab {
            if !special.contains(id) {
                pieces[id as usize] = Some(piece);
            }
        }
        Ok(NoteLookup { rows, pieces })
    }

    fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize)?.as_deref()
    }

    /// The rare-word occurrences in `tokens` (one id list per sequence).
    pub fn occurrences(&self, tokens: &[Vec<u32>]) -> Vec<Occurrence> {
        let mut found = Vec::new();
        for (sequence, ids) in tokens.iter().enumerate() {
            let mut i = 0;
            while i < ids.len() {
                let Some(first) = self.piece(ids[i]).filter(|p| !p.starts_with("##")) else {
                    i += 1;
                    continue;
                };
                let mut word = first.to_string();
                let mut end = i + 1;
                while let Some(rest) = ids
                    .get(end)
                    .and_then(|&t| self.piece(t))
                    .and_then(|p| p.strip_prefix("##"))
                {
                    word.push_str(rest);
                    end += 1;
                }
                if let Some(&note) = self.rows.get(&word) {
                    found.push(Occurrence {
                        note,
                        sequence,
                        start: i,
                        end,
                    });
                }
                i = end;
            }
        }
        found
    }
}

/// The notes a pre-training run ended with, for fine-tuning: the note book
/// of its newest checkpoint and the lookup of its rare words in the run's
/// tokenizer. An error says so when the run was not trained with notes.
pub fn open_run_notes(run: &Path, tokenizer: &Tokenizer) -> Result<(NoteBook, NoteLookup)> {
    if !run.join("config.toml").exists() {
        return Err(Error::Usage(format!(
            "{} is not a `brisk pretrain` run: fine-tuning with notes needs one pre-trained \
             with notes.enabled = true",
            run.display()
        )));
    }
    let config = crate::config::resolve(&ConfigSource {
        file: Some(run.join("config.toml")),
        ..Default::default()
    })?;
    let checkpoint = crate::train::checkpoint::newest_usable(run)?;
    let file = checkpoint.join(NOTES_FILE);
    if !file.exists() {
        return Err(Error::Usage(format!(
            "{} was not pre-trained with notes ({} has no {NOTES_FILE}); fine-tuning with notes \
             needs a run with notes.enabled = true",
            run.display(),
            checkpoint.display()
        )));
    }
    // The run's own copy of the word table, else the corpus's.
    let corpus = (!config.data.corpus.is_empty()).then(|| Path::new(&config.data.corpus));
    let table = std::iter::once(run.join("word_counts.tsv"))
        .chain(corpus.map(|c| c.join("word_counts.tsv")))
        .find(|p| p.exists())
        .ok_or_else(|| {
            Error::data(
                run,
                "has no word_counts.tsv, and its corpus (data.corpus) has none either: \
             the notes cannot be matched to words",
            )
        })?;
    let words = crate::corpus::words::read_word_counts(&table)?;
    let counts: Vec<u64> = words.iter().map(|(_, c)| *c).collect();
    let (first, last) = saved_band(&file)?;
    let band =
        RareBand::of_ranks(&counts, first, last, f64::NAN).map_err(|e| Error::data(&file, e))?;
    let mut book = NoteBook::new(band, config.model.hidden_size, &config.notes);
    book.load(&file)?;
    let lookup = NoteLookup::new(&words, &book.band, tokenizer)?;
    Ok((book, lookup))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    fn cfg() -> NotesConfig {
        let mut c = Preset::Tiny.config().notes;
        c.enabled = true;
        c
    }

    #[test]
    fn the_band_follows_expected_sightings_or_absolute_counts() {
        // Ranks 0..10 with counts 1000, 900, ..., 100.
        let counts: Vec<u64> = (0..10).map(|i| 1000 - 100 * i).collect();
        let mut c = cfg();
        (c.min_sightings, c.max_sightings) = (20.0, 60.0);
        // The run reads a tenth of the corpus: counts 200 to 600.
        let band = rare_band(&counts, &c, 1e6, 1e7).unwrap();
        assert_eq!((band.min_count, band.max_count), (200, 600));
        assert_eq!((band.first, band.last, band.words), (4, 8, 5));
        (c.min_count, c.max_count) = (850, 1000);
        let band = rare_band(&counts, &c, 1e6, 1e7).unwrap();
        assert_eq!((band.first, band.last), (0, 1));
        (c.min_count, c.max_count) = (1, 50);
        let err = rare_band(&counts, &c, 1e6, 1e7).unwrap_err().to_string();
        assert!(
            err.contains("notes") && err.contains("between 1 and 50"),
            "{err}"
        );
    }

    fn book(hidden: usize, half_window: usize) -> NoteBook {
        let counts = [50u64, 40, 30, 20, 10];
        let mut c = cfg();
        (c.min_count, c.max_count) = (20, 40);
        c.half_window = half_window;
        (c.gamma, c.lambda) = (0.25, 0.5);
        NoteBook::new(rare_band(&counts, &c, 1.0, 1.0).unwrap(), hidden, &c)
    }

    #[test]
    fn occurrences_cover_every_piece_of_a_rare_word() {
        let b = book(2, 1);
        assert_eq!((b.band.first, b.band.last), (1, 3));
        let s = |ty: u32| WordId::new(ty, true).0;
        let c = |ty: u32| WordId::new(ty, false).0;
        let none = WordId::NONE.0;
        // [CLS] w0 w2 w2' w2'' w4 w3 [SEP] | [CLS] w1 w1' w0 w0' w3 w3 [SEP]
        let words = [
            none,
            s(0),
            s(2),
            c(2),
            c(2),
            s(4),
            s(3),
            none,
            none,
            s(1),
            c(1),
            s(0),
            c(0),
            s(3),
            s(3),
            none,
        ];
        let found = b.occurrences(&words, 8);
        let spans: Vec<_> = found
            .iter()
            .map(|o| (o.note, o.sequence, o.start, o.end))
            .collect();
        assert_eq!(
            spans,
            [
                (1, 0, 2, 5),
                (2, 0, 6, 7),
                (0, 1, 1, 3),
                (2, 1, 5, 6),
                (2, 1, 6, 7)
            ]
        );
    }

    #[test]
    fn the_update_rule_on_a_hand_made_example() {
        let mut b = book(2, 1);
        // One sequence of 5 tokens; the rare word (note 1) covers tokens 2..4.
        let found = [Occurrence {
            note: 1,
            sequence: 0,
            start: 2,
            end: 4,
        }];
        let hidden =
            |rows: [[f32; 2]; 5]| Tensor::from_vec(rows.concat(), (1, 5, 2), &Device::Cpu).unwrap();
        // Window: tokens 1..5 (one each side, clipped at the end).
        let first = hidden([[9., 9.], [1., 2.], [3., 4.], [5., 6.], [7., 8.]]);
        b.take_notes(&found, &first, None).unwrap();
        // The first sighting initialises the note with the mean: (4, 5).
        assert_eq!(b.note(1).unwrap(), &[4.0, 5.0]);
        assert!(b.note(0).is_none() && b.note(2).is_none());
        let second = hidden([[0., 0.], [8., 8.], [8., 8.], [8., 8.], [8., 8.]]);
        b.take_notes(&found, &second, None).unwrap();
        // (1 − γ)·note + γ·mean with γ = 0.25: 0.75·(4, 5) + 0.25·(8, 8).
        assert_eq!(b.note(1).unwrap(), &[5.0, 5.75]);
        // At the sequence start the window is clipped too.
        let at_start = [Occurrence {
            note: 0,
            sequence: 0,
            start: 0,
            end: 1,
        }];
        b.take_notes(&at_start, &first, None).unwrap();
        assert_eq!(b.note(0).unwrap(), &[5.0, 5.5]);
    }

    #[test]
    fn notes_are_mixed_into_unpredicted_occurrences_only() {
        let mut b = book(2, 0);
        let dev = Device::Cpu;
        let found = [
            Occurrence {
                note: 0,
                sequence: 0,
                start: 1,
                end: 3,
            },
            Occurrence {
                note: 1,
                sequence: 1,
                start: 1,
                end: 2,
            },
            Occurrence {
                note: 2,
                sequence: 1,
                start: 2,
                end: 3,
            },
        ];
        // No notes yet: nothing is mixed.
        assert!(b
            .mix(&found, (2, 4), &[], DType::F32, &dev)
            .unwrap()
            .is_none());
        let h = Tensor::from_vec(
            vec![
                0f32, 0., 2., 4., 2., 4., 0., 0., 0., 0., 6., 6., 1., 1., 0., 0.,
            ],
            (2, 4, 2),
            &dev,
        )
        .unwrap();
        b.take_notes(&found, &h, None).unwrap();
        // Position 6 (sequence 1, token 2) is predicted: note 2 is not mixed.
        let mix = b
            .mix(&found, (2, 4), &[6], DType::F32, &dev)
            .unwrap()
            .unwrap();
        let keep: Vec<f32> = mix.keep.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(keep, [1., 0.5, 0.5, 1., 1., 0.5, 1., 1.]);
        let add: Vec<f32> = mix.add.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(
            add,
            [0., 0., 1., 2., 1., 2., 0., 0., 0., 0., 3., 3., 0., 0., 0., 0.]
        );
        let s = b.stats;
        assert_eq!((s.sequences, s.sequences_with_rare), (4, 4));
        assert_eq!((s.occurrences, s.with_note, s.mixed), (6, 3, 2));
    }

    #[test]
    fn notes_survive_save_and_load() {
        let mut b = book(3, 2);
        let h = Tensor::from_vec(
            (0..15).map(|v| v as f32).collect::<Vec<_>>(),
            (1, 5, 3),
            &Device::Cpu,
        )
        .unwrap();
        let found = b.occurrences(
            &[
                WordId::NONE.0,
                WordId::new(2, true).0,
                WordId::new(0, true).0,
                WordId::new(3, true).0,
                WordId::NONE.0,
            ],
            5,
        );
        b.take_notes(&found, &h, None).unwrap();
        b.stats.occurrences = 7;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.safetensors");
        b.save(&path).unwrap();
        let mut back = book(3, 2);
        back.load(&path).unwrap();
        assert_eq!(back.notes, b.notes);
        assert_eq!(back.written, b.written);
        assert_eq!(back.stats, b.stats);
        assert_eq!(back.written(), 2);
    }
}
