//! TNF's note dictionary with a model: a rare word that recurs reads, on
//! its second forward pass, the note taken on its first.

use brisk::config::{NotesConfig, Preset};
use brisk::corpus::shards::WordId;
use brisk::model::{BertForMaskedLm, Ctx, Params};
use brisk::pretrain::notes::{rare_band, NoteBook};
use candle_core::{DType, Device, Tensor};

fn notes_config() -> NotesConfig {
    let mut cfg = Preset::Tiny.config().notes;
    cfg.enabled = true;
    (cfg.min_count, cfg.max_count) = (5, 20);
    cfg.half_window = 2;
    cfg
}

#[test]
fn a_recurring_rare_word_reads_its_note_on_the_second_pass() {
    let mut model_cfg = Preset::Tiny.config().model;
    model_cfg.vocab_size = 40;
    model_cfg.hidden_size = 16;
    model_cfg.num_attention_heads = 2;
    model_cfg.intermediate_size = 32;
    model_cfg.num_hidden_layers = 2;
    let mut params = Params::new(Device::Cpu, DType::F32);
    let model = BertForMaskedLm::new(&model_cfg, &mut params, 1).unwrap();

    // Word types by rank: 0 and 1 are frequent, 2 (count 12) is rare.
    let counts = [100u64, 50, 12, 3];
    let cfg = notes_config();
    let band = rare_band(&counts, &cfg, 1.0, 1.0).unwrap();
    assert_eq!((band.first, band.last), (2, 2));
    let mut book = NoteBook::new(band, model_cfg.hidden_size, &cfg);

    // One sequence of 8: [CLS] w0 w2 w2' w1 w0 w1 [SEP]; the rare word is
    // tokens 2..4.
    let none = WordId::NONE.0;
    let words = [
        none,
        WordId::new(0, true).0,
        WordId::new(2, true).0,
        WordId::new(2, false).0,
        WordId::new(1, true).0,
        WordId::new(0, true).0,
        WordId::new(1, true).0,
        none,
    ];
    let dev = Device::Cpu;
    let ids = Tensor::new(&[[2u32, 10, 21, 22, 11, 10, 11, 3]], &dev).unwrap();
    let rows = Tensor::new(&[5u32], &dev).unwrap();
    let targets = Tensor::new(&[10u32], &dev).unwrap();
    let found = book.occurrences(&words, 8);
    assert_eq!(found.len(), 1);

    // First sighting: no note to read, so the input is unchanged; the pass
    // writes the note.
    let mix = book.mix(&found, (1, 8), &[5], DType::F32, &dev).unwrap();
    assert!(mix.is_none());
    let (_, hidden) = model
        .loss_and_hidden(&ids, None, None, &rows, &targets, &mut Ctx::eval())
        .unwrap();
    book.take_notes(&found, &hidden).unwrap();
    let note = book
        .note(0)
        .expect("the first sighting writes a note")
        .to_vec();
    // The note is the mean of the last-layer outputs over tokens 0..6
    // (the word's two tokens ± 2).
    let h: Vec<Vec<f32>> = hidden.squeeze(0).unwrap().to_vec2().unwrap();
    for (c, n) in note.iter().enumerate() {
        let mean = (0..6).map(|t| h[t][c]).sum::<f32>() / 6.0;
        assert!((n - mean).abs() < 1e-6);
    }

    // Second sighting: the word's tokens read (1 − λ)·embedding + λ·note.
    let mix = book
        .mix(&found, (1, 8), &[5], DType::F32, &dev)
        .unwrap()
        .expect("the second sighting reads the note");
    let keep: Vec<f32> = mix.keep.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(keep, [1., 1., 0.5, 0.5, 1., 1., 1., 1.]);
    let add: Vec<Vec<f32>> = mix.add.squeeze(0).unwrap().to_vec2().unwrap();
    for (t, row) in add.iter().enumerate() {
        for (a, n) in row.iter().zip(&note) {
            let want = if (2..4).contains(&t) { 0.5 * n } else { 0.0 };
            assert_eq!(*a, want);
        }
    }
    let (loss_with, hidden_with) = model
        .loss_and_hidden(&ids, None, Some(&mix), &rows, &targets, &mut Ctx::eval())
        .unwrap();
    let (loss_without, _) = model
        .loss_and_hidden(&ids, None, None, &rows, &targets, &mut Ctx::eval())
        .unwrap();
    let changed = (hidden_with - &hidden)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(changed > 1e-3, "the note changes the forward pass");
    assert_ne!(
        loss_with.to_scalar::<f32>().unwrap(),
        loss_without.to_scalar::<f32>().unwrap()
    );
    let s = book.stats;
    assert_eq!((s.occurrences, s.with_note, s.mixed), (2, 1, 1));

    // A predicted token in the word: the note is not mixed in (it would
    // give the answer away).
    assert!(book
        .mix(&found, (1, 8), &[3], DType::F32, &dev)
        .unwrap()
        .is_none());
}
