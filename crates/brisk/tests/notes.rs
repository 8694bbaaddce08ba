//! TNF's note dictionary with a model: a rare word that recurs reads, on
//! its second forward pass, the note taken on its first; fine-tuning reads
//! the notes of a pre-training run and takes (F) or trains (U) them.

mod support;

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
    book.take_notes(&found, &hidden, None).unwrap();
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

/// Pre-trains a tiny model (with or without notes) for a few steps on the
/// built-in corpus; returns the run directory.
fn pretrain_with_notes(dir: &std::path::Path, notes: bool) -> std::path::PathBuf {
    let mut config = Preset::Tiny.config();
    config.data.generated_words = 20_000;
    config.data.seq_len = 32;
    config.model.vocab_size = 600;
    config.train.batch_size = 4;
    config.train.steps = 10;
    config.eval.batches = 2;
    config.notes = notes_config();
    config.notes.enabled = notes;
    (config.notes.min_count, config.notes.max_count) = (3, 60);
    let name = if notes { "run" } else { "plain" };
    support::pretrain_generated(dir, name, &mut config).0
}

#[test]
fn fine_tuning_reads_takes_and_trains_notes() {
    use brisk::corpus::tokenizer::load_tokenizer;
    use brisk::pretrain::notes::{open_run_notes, NOTES_FILE};
    use brisk::tasks::{finetune, NotesMode, Recipe, Task};

    let tmp = tempfile::tempdir().unwrap();
    let run = pretrain_with_notes(tmp.path(), true);
    let tokenizer = load_tokenizer(&run.join("tokenizer.json"), true).unwrap();
    let (book, lookup) = open_run_notes(&run, &tokenizer).unwrap();
    assert!(book.written() > 0, "pre-training wrote notes");

    // Sentences made of rare words that have notes.
    let words = brisk::corpus::words::read_word_counts(&run.join("word_counts.tsv")).unwrap();
    let rare: Vec<&str> = (book.band.first..=book.band.last)
        .filter(|&r| book.note((r - book.band.first) as usize).is_some())
        .map(|r| words[r as usize].0.as_str())
        .take(12)
        .collect();
    assert!(rare.len() >= 4, "{rare:?}");
    let line = |i: usize| {
        let label = if i.is_multiple_of(2) { "pos" } else { "neg" };
        let (a, b) = (rare[i % rare.len()], rare[(i + 1) % rare.len()]);
        format!("{i}\tthe {a} and the {b}\t{label}\n")
    };
    // The lookup finds both rare words of a sentence in its token ids.
    let ids = tokenizer
        .encode(format!("the {} and the {}", rare[0], rare[1]), true)
        .unwrap()
        .get_ids()
        .to_vec();
    let found = lookup.occurrences(&[ids]);
    assert_eq!(found.len(), 2, "{found:?}");
    let train: String = (0..16).map(line).collect();
    let dev: String = (16..20).map(line).collect();
    let task_dir = tmp.path().join("task");
    std::fs::create_dir_all(&task_dir).unwrap();
    std::fs::write(task_dir.join("train.tsv"), train).unwrap();
    std::fs::write(task_dir.join("dev.tsv"), dev).unwrap();
    std::fs::write(
        task_dir.join("task.toml"),
        "name = \"rare\"\nkind = \"classification\"\nlabels = [\"neg\", \"pos\"]\n\
         metrics = [\"accuracy\"]\nheader = false\ntext_a = 1\nlabel = 2\n\
         train = \"train.tsv\"\ndev = \"dev.tsv\"\n",
    )
    .unwrap();
    let task = Task::resolve(
        task_dir.join("task.toml").to_str().unwrap(),
        std::path::Path::new("/nowhere"),
    )
    .unwrap();
    let tune = |mode: NotesMode, name: &str| {
        let recipe = Recipe {
            learning_rate: 1e-3,
            epochs: 1,
            batch_size: 4,
            notes: mode,
            ..Recipe::default()
        };
        let out = tmp.path().join(name);
        std::fs::create_dir_all(&out).unwrap();
        finetune(&run, &task, &recipe, 1, &out, |_| {}).map(|_| out)
    };

    // F: the notes keep being taken on the fly, so they move.
    let out = tune(NotesMode::OnTheFly, "f").unwrap();
    let mut after = book.clone();
    after.load(&out.join(NOTES_FILE)).unwrap();
    // Rows that moved, of words in the task and of the other written words.
    let h = book.hidden();
    let in_task: Vec<bool> = (book.band.first..=book.band.last)
        .map(|r| rare.contains(&words[r as usize].0.as_str()))
        .collect();
    let moved = |values: &[f32]| -> (usize, usize) {
        let mut counts = (0, 0);
        for (row, (a, b)) in values.chunks(h).zip(book.values().chunks(h)).enumerate() {
            if a != b {
                if in_task[row] {
                    counts.0 += 1;
                } else {
                    counts.1 += 1;
                }
            }
        }
        counts
    };
    let (task_rows, _) = moved(after.values());
    assert!(task_rows > 0, "F takes notes of the task's rare words");

    // U: the notes are trained by back-propagation: the saved copy moved.
    let out = tune(NotesMode::Trained, "u").unwrap();
    let weights =
        candle_core::safetensors::load(out.join("best/model.safetensors"), &Device::Cpu).unwrap();
    let trained: Vec<f32> = weights["notes.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(trained.len(), book.values().len());
    let (task_rows, other_rows) = moved(&trained);
    assert!(task_rows > 0, "U trains the notes of the task's rare words");
    assert_eq!(
        other_rows, 0,
        "notes of words the task never shows get no gradient"
    );

    // Off: no notes at all.
    let out = tune(NotesMode::Off, "off").unwrap();
    assert!(!out.join(NOTES_FILE).exists());

    // A run without notes cannot fine-tune with them.
    let plain = pretrain_with_notes(tmp.path(), false);
    let recipe = Recipe {
        notes: NotesMode::OnTheFly,
        epochs: 1,
        ..Recipe::default()
    };
    let out = tmp.path().join("plain-f");
    std::fs::create_dir_all(&out).unwrap();
    let err = finetune(&plain, &task, &recipe, 1, &out, |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("not pre-trained with notes"), "{err}");
}
