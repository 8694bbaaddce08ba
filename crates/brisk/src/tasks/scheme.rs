//! Span tag schemes and span scoring.
//!
//! A labelled span (an entity, a chunk) is written in one of three
//! schemes: IOB1 (CoNLL-2003 as shipped: `B-` only where a span follows
//! one of the same type), BIO (every span opens with `B-`) or BIOES (`S-`
//! for one-word spans, `E-` for the last word). Spans are read with
//! conlleval's rules, the ones `seqeval` ports as its default mode, which
//! read all three schemes (and forgive ill-formed sequences such as an
//! `I-` after `O`); the strict mode counts only well-formed spans of the
//! scheme, as `seqeval`'s `mode="strict"` does. Training converts to
//! BIOES; output goes back to the task's scheme.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How spans are written as tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Iob1,
    Bio,
    Bioes,
    /// Plain labels (parts of speech), no spans.
    None,
}

/// Which spans count when scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// conlleval's (and `seqeval`'s default).
    Conlleval,
    /// Only spans well formed in the scheme (`seqeval`'s strict mode).
    Strict(Scheme),
}

/// Words `start..end` labelled `label`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub label: String,
}

/// A tag's prefix (`B`, `I`, `E`, `S`, or `O` for outside) and type.
fn split(tag: &str) -> (char, &str) {
    if tag == "O" {
        return ('O', "");
    }
    match tag.split_once('-') {
        Some((p, t)) if p.len() == 1 => (p.chars().next().expect("one char"), t),
        _ => ('?', tag),
    }
}

impl Scheme {
    /// Checks that `tag` belongs to the scheme; the message says why not.
    pub fn check(self, tag: &str) -> std::result::Result<(), String> {
        let (prefix, kind) = split(tag);
        let prefixes = match self {
            Scheme::None => return Ok(()),
            Scheme::Iob1 | Scheme::Bio => "BIO",
            Scheme::Bioes => "BIOES",
        };
        if prefixes.contains(prefix) && (prefix == 'O' || !kind.is_empty()) {
            Ok(())
        } else {
            Err(format!(
                "tag {tag:?} is not in the {self:?} scheme (O, or {}-TYPE)",
                prefixes
                    .chars()
                    .filter(|&c| c != 'O')
                    .map(String::from)
                    .collect::<Vec<_>>()
                    .join("-TYPE, ")
            ))
        }
    }

    /// The tags of `spans` over `len` words in this scheme.
    pub fn encode(self, spans: &[Span], len: usize) -> Vec<String> {
        let mut tags = vec!["O".to_string(); len];
        let mut previous: Option<&Span> = None;
        for span in spans {
            let follows_same =
                previous.is_some_and(|p| p.end == span.start && p.label == span.label);
            for (i, tag) in tags[span.start..span.end].iter_mut().enumerate() {
                let one = span.end - span.start == 1;
                let prefix = match self {
                    Scheme::Iob1 => {
                        if i == 0 && follows_same {
                            "B"
                        } else {
                            "I"
                        }
                    }
                    Scheme::Bio => {
                        if i == 0 {
                            "B"
                        } else {
                            "I"
                        }
                    }
                    Scheme::Bioes => {
                        if one {
                            "S"
                        } else if i == 0 {
                            "B"
                        } else if span.start + i + 1 == span.end {
                            "E"
                        } else {
                            "I"
                        }
                    }
                    Scheme::None => return vec![String::new(); len],
                };
                *tag = format!("{prefix}-{}", span.label);
            }
            previous = Some(span);
        }
        tags
    }

    /// Every tag of the scheme for these span types, `O` first.
    pub fn tag_set(self, types: &[String]) -> Vec<String> {
        let prefixes: &[&str] = match self {
            Scheme::None => return types.to_vec(),
            Scheme::Iob1 | Scheme::Bio => &["B", "I"],
            Scheme::Bioes => &["B", "I", "E", "S"],
        };
        let mut out = vec!["O".to_string()];
        for t in types {
            out.extend(prefixes.iter().map(|p| format!("{p}-{t}")));
        }
        out
    }

    /// Whether tag `to` may follow tag `from` (`None`: the sentence's
    /// start or end) in well-formed sequences of the scheme.
    pub fn allows(self, from: Option<&str>, to: Option<&str>) -> bool {
        let (fp, ft) = from.map(split).unwrap_or(('O', ""));
        let (tp, tt) = to.map(split).unwrap_or(('O', ""));
        match self {
            Scheme::None | Scheme::Iob1 => true,
            Scheme::Bio => tp != 'I' || (matches!(fp, 'B' | 'I') && ft == tt),
            Scheme::Bioes => {
                let inside = matches!(fp, 'B' | 'I');
                let continues = matches!(tp, 'I' | 'E');
                if inside {
                    continues && ft == tt
                } else {
                    !continues
                }
            }
        }
    }
}

/// The spans in a tag sequence under `mode`.
pub fn spans(tags: &[&str], mode: Mode) -> Vec<Span> {
    match mode {
        Mode::Conlleval => conlleval_spans(tags),
        Mode::Strict(scheme) => strict_spans(tags, scheme),
    }
}

/// conlleval's reading: a span ends where the tag after it cannot
/// continue it, and a span starts at every tag that cannot continue the
/// one before (an `I-` after `O` or after another type included).
fn conlleval_spans(tags: &[&str]) -> Vec<Span> {
    let mut out = Vec::new();
    let mut begin = 0;
    let mut prev = ('O', "");
    for i in 0..=tags.len() {
        let cur = if i < tags.len() {
            split(tags[i])
        } else {
            ('O', "")
        };
        let ends = matches!(prev.0, 'E' | 'S')
            || (matches!(prev.0, 'B' | 'I') && matches!(cur.0, 'B' | 'S' | 'O'))
            || (prev.0 != 'O' && prev.1 != cur.1);
        if ends {
            out.push(Span {
                start: begin,
                end: i,
                label: prev.1.to_string(),
            });
        }
        let starts = matches!(cur.0, 'B' | 'S')
            || (matches!(prev.0, 'E' | 'S' | 'O') && matches!(cur.0, 'E' | 'I'))
            || (cur.0 != 'O' && prev.1 != cur.1);
        if starts {
            begin = i;
        }
        prev = cur;
    }
    out
}

/// Only well-formed spans: BIO `B (I)*`, BIOES `S` or `B (I)* E`, IOB1
/// as BIO where a span may also open with `I` after `O` or another type.
fn strict_spans(tags: &[&str], scheme: Scheme) -> Vec<Span> {
    let mut out = Vec::new();
    let mut open: Option<(usize, &str)> = None;
    for (i, tag) in tags.iter().enumerate() {
        let (p, t) = split(tag);
        let continues = open.is_some_and(|(_, ot)| ot == t);
        match (scheme, p) {
            (Scheme::Bioes, 'S') => {
                open = None;
                out.push(Span {
                    start: i,
                    end: i + 1,
                    label: t.to_string(),
                });
            }
            (Scheme::Bioes, 'E') => {
                if let (true, Some((start, _))) = (continues, open) {
                    out.push(Span {
                        start,
                        end: i + 1,
                        label: t.to_string(),
                    });
                }
                open = None;
            }
            (_, 'B') => {
                close(&mut out, &mut open, i, scheme);
                open = Some((i, t));
            }
            (_, 'I') if continues => {}
            (Scheme::Iob1, 'I') => {
                close(&mut out, &mut open, i, scheme);
                open = Some((i, t));
            }
            _ => {
                close(&mut out, &mut open, i, scheme);
            }
        }
    }
    close(&mut out, &mut open, tags.len(), scheme);
    out
}

/// Ends an open span at `end` (BIOES spans must end with `E`: dropped).
fn close(out: &mut Vec<Span>, open: &mut Option<(usize, &str)>, end: usize, scheme: Scheme) {
    if let Some((start, label)) = open.take() {
        if scheme != Scheme::Bioes {
            out.push(Span {
                start,
                end,
                label: label.to_string(),
            });
        }
    }
}

/// Precision, recall and F1 of predicted spans against gold ones, over all
/// types and per type.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SpanScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub gold: usize,
    pub predicted: usize,
    pub correct: usize,
    pub per_type: BTreeMap<String, (f64, f64, f64)>,
}

fn prf(correct: usize, predicted: usize, gold: usize) -> (f64, f64, f64) {
    let p = if predicted == 0 {
        0.0
    } else {
        correct as f64 / predicted as f64
    };
    let r = if gold == 0 {
        0.0
    } else {
        correct as f64 / gold as f64
    };
    let f = if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    };
    (p, r, f)
}

/// Borrowed tags.
pub fn as_strs(tags: &[String]) -> Vec<&str> {
    tags.iter().map(String::as_str).collect()
}

/// Span F1 over sentences (micro-averaged), as conlleval and `seqeval`
/// report it.
pub fn span_f1(gold: &[Vec<String>], predicted: &[Vec<String>], mode: Mode) -> SpanScores {
    let mut counts: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    for (g, p) in gold.iter().zip(predicted) {
        let gs = spans(&as_strs(g), mode);
        let ps = spans(&as_strs(p), mode);
        for s in &gs {
            counts.entry(s.label.clone()).or_default()[0] += 1;
        }
        for s in &ps {
            let c = counts.entry(s.label.clone()).or_default();
            c[1] += 1;
            if gs.contains(s) {
                c[2] += 1;
            }
        }
    }
    let sum = |k: usize| counts.values().map(|c| c[k]).sum::<usize>();
    let (g, p, c) = (sum(0), sum(1), sum(2));
    let (precision, recall, f1) = prf(c, p, g);
    SpanScores {
        precision,
        recall,
        f1,
        gold: g,
        predicted: p,
        correct: c,
        per_type: counts
            .into_iter()
            .map(|(t, c)| (t, prf(c[2], c[1], c[0])))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(s: &str) -> Vec<&str> {
        s.split_whitespace().collect()
    }

    fn span(start: usize, end: usize, label: &str) -> Span {
        Span {
            start,
            end,
            label: label.into(),
        }
    }

    #[test]
    fn conlleval_reads_all_three_schemes() {
        let iob1 = tags("I-PER I-PER B-PER O I-LOC I-ORG");
        let bio = tags("B-PER I-PER B-PER O B-LOC B-ORG");
        let bioes = tags("B-PER E-PER S-PER O S-LOC S-ORG");
        let want = vec![
            span(0, 2, "PER"),
            span(2, 3, "PER"),
            span(4, 5, "LOC"),
            span(5, 6, "ORG"),
        ];
        for t in [iob1, bio, bioes] {
            assert_eq!(spans(&t, Mode::Conlleval), want, "{t:?}");
        }
    }

    #[test]
    fn encoding_round_trips_through_every_scheme() {
        let s = vec![span(0, 2, "PER"), span(2, 3, "PER"), span(4, 7, "LOC")];
        for scheme in [Scheme::Iob1, Scheme::Bio, Scheme::Bioes] {
            let t = scheme.encode(&s, 8);
            let t: Vec<&str> = t.iter().map(String::as_str).collect();
            assert_eq!(spans(&t, Mode::Conlleval), s, "{scheme:?}: {t:?}");
            assert_eq!(spans(&t, Mode::Strict(scheme)), s, "{scheme:?}: {t:?}");
            for w in t.windows(2) {
                assert!(scheme.allows(Some(w[0]), Some(w[1])), "{w:?}");
            }
            assert!(t.iter().all(|x| scheme.check(x).is_ok()));
        }
    }

    #[test]
    fn strict_mode_drops_ill_formed_spans() {
        let t = tags("I-PER I-PER O B-LOC I-LOC");
        assert_eq!(
            spans(&t, Mode::Strict(Scheme::Bio)),
            vec![span(3, 5, "LOC")]
        );
        assert_eq!(spans(&t, Mode::Conlleval).len(), 2);
        let t = tags("B-PER I-PER O S-LOC");
        assert_eq!(
            spans(&t, Mode::Strict(Scheme::Bioes)),
            vec![span(3, 4, "LOC")]
        );
    }

    #[test]
    fn schemes_refuse_foreign_tags() {
        assert!(Scheme::Bio.check("E-PER").is_err());
        assert!(Scheme::Bio.check("PER").is_err());
        assert!(Scheme::Bio.check("B-").is_err());
        assert!(Scheme::Bioes.check("E-PER").is_ok());
        assert!(!Scheme::Bio.allows(Some("O"), Some("I-PER")));
        assert!(!Scheme::Bio.allows(None, Some("I-PER")));
        assert!(!Scheme::Bioes.allows(Some("B-PER"), None));
        assert!(!Scheme::Bioes.allows(Some("B-PER"), Some("E-LOC")));
    }
}
