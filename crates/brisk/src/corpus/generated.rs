//! The built-in corpus: a small invented language, generated deterministically
//! from a seed, so that brisk runs (and its tests learn something) with no data.
//!
//! It is meant to be learnable in the ways that matter for pre-training:
//! - **Lexicon.** Several thousand invented content words (nouns with plurals,
//!   verbs with agreement forms, adjectives, adverbs) among real English
//!   function words, each drawn with a Zipfian profile.
//! - **Grammar.** Subject–verb agreement in number, across prepositional
//!   phrases and nested relative clauses (`, which … ,`), and clausal
//!   complements (`says that …`), so the verb form depends on a word that may
//!   be far away, with nouns of the other number in between.
//! - **A world.** Recurring people, places and organisations with fixed
//!   attributes (a person's job, home town and employer; a town's country; an
//!   organisation's seat and products). Documents are about one entity, so
//!   context predicts the names.
//! - **Rare words.** People are drawn Zipfian from a large pool and each has
//!   a surname of their own, giving a long tail of rare names (for TNF).
//!
//! Commas appear only around relative clauses, which lets [`agreement_stats`]
//! check agreement from the text alone.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use rayon::prelude::*;

use super::shards::splitmix64;
use super::text::TextSource;

/// A small deterministic random generator (SplitMix64 stream).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(splitmix64(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        splitmix64(self.0)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n.max(1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Zipf sampler over ranks `0..n`: `P(r) ∝ 1 / (r + 1)^s`.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Zipf {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (0..n)
            .map(|r| {
                acc += 1.0 / ((r + 1) as f64).powf(s);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf { cdf }
    }

    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// Grammatical number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Number {
    Sg,
    Pl,
}

/// A word with a singular and a plural form (nouns), or a verb with its
/// third-person-singular and plural present forms.
#[derive(Debug, Clone)]
pub struct Inflected {
    pub sg: String,
    pub pl: String,
}

impl Inflected {
    pub fn form(&self, n: Number) -> &str {
        match n {
            Number::Sg => &self.sg,
            Number::Pl => &self.pl,
        }
    }
}

/// The language's words.
#[derive(Debug, Clone)]
pub struct Lexicon {
    pub nouns: Vec<Inflected>,
    /// Nouns that name jobs (indices into `nouns`).
    pub occupations: Vec<usize>,
    pub intransitive: Vec<Inflected>,
    pub transitive: Vec<Inflected>,
    /// Verbs that take a `that`-clause.
    pub saying: Vec<Inflected>,
    pub adjectives: Vec<String>,
    pub adverbs: Vec<String>,
    pub first_names: Vec<String>,
    pub surnames: Vec<String>,
    pub places: Vec<String>,
    pub countries: Vec<String>,
    pub org_names: Vec<String>,
}

/// English function words and fixed verbs the grammar uses; invented words
/// never collide with these.
const FUNCTION_WORDS: &[&str] = &[
    "the", "a", "an", "every", "this", "some", "many", "these", "all", "which", "who", "whom",
    "that", "in", "near", "with", "from", "of", "on", "for", "by", "about", "he", "she", "it",
    "they", "his", "her", "its", "their", "is", "are", "works", "work", "lives", "live", "makes",
    "make", "employs", "employ", "based", "known", "town", "friend", "people", "person", "very",
    "often", "also", "not", "and", "guild", "company", "council", "bank", "society", "press",
    "union", "s", "es",
];
const PREPOSITIONS: &[&str] = &["in", "near", "with", "from", "of", "on", "by", "about"];
const ORG_KINDS: &[&str] = &[
    "Guild", "Company", "Council", "Bank", "Society", "Press", "Union",
];

const ONSETS: &[&str] = &[
    "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br",
    "cr", "dr", "fl", "gl", "gr", "pl", "pr", "sk", "sl", "sn", "st", "tr", "ch", "sh", "th", "",
];
const VOWELS: &[&str] = &[
    "a", "e", "i", "o", "u", "a", "e", "o", "ai", "ea", "ou", "oo", "y",
];
const CODAS: &[&str] = &[
    "", "", "", "n", "r", "l", "m", "t", "nd", "rk", "st", "ng", "x",
];

fn syllables(rng: &mut Rng, count: usize) -> String {
    let mut s = String::new();
    for _ in 0..count {
        for part in [ONSETS, VOWELS, CODAS] {
            let piece: &&str = rng.pick(part);
            s.push_str(piece);
        }
    }
    s
}

fn plural_of(stem: &str) -> String {
    if ["s", "x", "sh", "ch"].iter().any(|e| stem.ends_with(e)) {
        format!("{stem}es")
    } else {
        format!("{stem}s")
    }
}

fn capitalise(word: &str) -> String {
    let mut c = word.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Hands out invented words that collide with no earlier word or form.
struct WordMint {
    rng: Rng,
    taken: HashSet<String>,
}

impl WordMint {
    /// A fresh word whose derived forms are fresh too; all are reserved.
    fn fresh(
        &mut self,
        min_syl: usize,
        max_syl: usize,
        forms: impl Fn(&str) -> Vec<String>,
    ) -> String {
        loop {
            let n = min_syl + self.rng.below(max_syl - min_syl + 1);
            let stem = syllables(&mut self.rng, n);
            if stem.len() < 3 {
                continue;
            }
            let mut all = forms(&stem);
            all.push(stem.clone());
            if all.iter().all(|f| !self.taken.contains(f)) {
                self.taken.extend(all);
                return stem;
            }
        }
    }

    fn plain(&mut self, min_syl: usize, max_syl: usize) -> String {
        self.fresh(min_syl, max_syl, |_| Vec::new())
    }

    fn inflected(&mut self, min_syl: usize, max_syl: usize) -> Inflected {
        let stem = self.fresh(min_syl, max_syl, |s| vec![plural_of(s)]);
        Inflected {
            pl: plural_of(&stem),
            sg: stem,
        }
    }
}

impl Lexicon {
    /// Builds the lexicon; the same seed gives the same words.
    pub fn new(seed: u64) -> Lexicon {
        let mut mint = WordMint {
            rng: Rng::new(seed ^ 0x1e71c0),
            taken: FUNCTION_WORDS.iter().map(|w| w.to_string()).collect(),
        };
        let nouns: Vec<Inflected> = (0..1800).map(|_| mint.inflected(1, 3)).collect();
        let occupations = (0..60).map(|i| i * 7).collect();
        // Verbs: `pl` is the bare stem, `sg` adds -s (as in English).
        let verb = |mint: &mut WordMint| {
            let v = mint.inflected(1, 2);
            Inflected { sg: v.pl, pl: v.sg }
        };
        let intransitive = (0..220).map(|_| verb(&mut mint)).collect();
        let transitive = (0..260).map(|_| verb(&mut mint)).collect();
        let saying = (0..30).map(|_| verb(&mut mint)).collect();
        let adjectives: Vec<String> = (0..600).map(|_| mint.plain(1, 3)).collect();
        let adverbs = adjectives[..150]
            .iter()
            .filter_map(|a| {
                let ly = format!("{a}ly");
                mint.taken.insert(ly.clone()).then_some(ly)
            })
            .collect();
        let names = |mint: &mut WordMint, n: usize, min, max| -> Vec<String> {
            (0..n).map(|_| capitalise(&mint.plain(min, max))).collect()
        };
        let first_names = names(&mut mint, 500, 2, 2);
        let surnames = names(&mut mint, PEOPLE, 2, 3);
        let places = names(&mut mint, PLACES, 2, 3);
        let countries = names(&mut mint, 30, 2, 3);
        let org_names = names(&mut mint, ORGS, 1, 2);
        Lexicon {
            nouns,
            occupations,
            intransitive,
            transitive,
            saying,
            adjectives,
            adverbs,
            first_names,
            surnames,
            places,
            countries,
            org_names,
        }
    }

    /// Every word form with its part of speech (lowercased), for checking
    /// text without the generator's internals.
    pub fn tags(&self) -> HashMap<String, Tag> {
        let mut tags = HashMap::new();
        let mut add = |w: &str, t: Tag| {
            tags.insert(w.to_lowercase(), t);
        };
        for n in &self.nouns {
            add(&n.sg, Tag::Nominal(Number::Sg));
            add(&n.pl, Tag::Nominal(Number::Pl));
        }
        for v in self
            .intransitive
            .iter()
            .chain(&self.transitive)
            .chain(&self.saying)
        {
            add(&v.sg, Tag::Verb(Number::Sg));
            add(&v.pl, Tag::Verb(Number::Pl));
        }
        for (sg, pl) in FIXED_VERBS {
            add(sg, Tag::Verb(Number::Sg));
            add(pl, Tag::Verb(Number::Pl));
        }
        let names = self
            .first_names
            .iter()
            .chain(&self.surnames)
            .chain(&self.places);
        for n in names.chain(&self.countries).chain(&self.org_names) {
            add(n, Tag::Nominal(Number::Sg));
        }
        for k in ORG_KINDS {
            add(k, Tag::Nominal(Number::Sg));
        }
        for (w, n) in [
            ("he", Number::Sg),
            ("she", Number::Sg),
            ("it", Number::Sg),
            ("they", Number::Pl),
        ] {
            add(w, Tag::Nominal(n));
        }
        add("person", Tag::Nominal(Number::Sg));
        add("people", Tag::Nominal(Number::Pl));
        add("friend", Tag::Nominal(Number::Sg));
        add("town", Tag::Nominal(Number::Sg));
        for p in PREPOSITIONS.iter().chain(&["for"]) {
            add(p, Tag::Preposition);
        }
        for r in ["which", "who", "whom"] {
            add(r, Tag::Relative);
        }
        tags
    }
}

const FIXED_VERBS: &[(&str, &str)] = &[
    ("is", "are"),
    ("works", "work"),
    ("lives", "live"),
    ("makes", "make"),
    ("employs", "employ"),
];

/// Part of speech, as far as the agreement check needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// Nouns, names and pronouns.
    Nominal(Number),
    Verb(Number),
    Preposition,
    Relative,
}

const PEOPLE: usize = 4000;
const PLACES: usize = 600;
const ORGS: usize = 300;

#[derive(Debug, Clone)]
struct Person {
    first: usize,
    female: bool,
    occupation: usize,
    home: usize,
    employer: usize,
    friend: usize,
}

#[derive(Debug, Clone)]
struct Org {
    kind: usize,
    seat: usize,
    product: usize,
}

/// The recurring entities and their fixed attributes.
#[derive(Debug, Clone)]
struct World {
    people: Vec<Person>,
    place_country: Vec<usize>,
    place_known_for: Vec<usize>,
    orgs: Vec<Org>,
    residents: Vec<Vec<usize>>,
    employees: Vec<Vec<usize>>,
}

impl World {
    fn new(lex: &Lexicon, seed: u64) -> World {
        let mut rng = Rng::new(seed ^ 0x3071d);
        let place_zipf = Zipf::new(PLACES, 1.0);
        let org_zipf = Zipf::new(ORGS, 1.0);
        let first_zipf = Zipf::new(lex.first_names.len(), 1.0);
        let orgs: Vec<Org> = (0..ORGS)
            .map(|_| Org {
                kind: rng.below(ORG_KINDS.len()),
                seat: place_zipf.sample(&mut rng),
                product: rng.below(lex.nouns.len()),
            })
            .collect();
        let people: Vec<Person> = (0..PEOPLE)
            .map(|_| Person {
                first: first_zipf.sample(&mut rng),
                female: rng.chance(0.5),
                occupation: lex.occupations[rng.below(lex.occupations.len())],
                home: place_zipf.sample(&mut rng),
                employer: org_zipf.sample(&mut rng),
                friend: rng.below(PEOPLE),
            })
            .collect();
        let mut residents = vec![Vec::new(); PLACES];
        let mut employees = vec![Vec::new(); ORGS];
        for (i, p) in people.iter().enumerate() {
            residents[p.home].push(i);
            employees[p.employer].push(i);
        }
        World {
            people,
            place_country: (0..PLACES)
                .map(|_| rng.below(lex.countries.len()))
                .collect(),
            place_known_for: (0..PLACES).map(|_| rng.below(lex.nouns.len())).collect(),
            orgs,
            residents,
            employees,
        }
    }
}

/// What a document is about.
#[derive(Debug, Clone, Copy)]
enum Topic {
    Person(usize),
    Place(usize),
    Org(usize),
}

/// Generates one document's sentences as token lists.
struct Writer<'a> {
    lex: &'a Lexicon,
    world: &'a World,
    dist: &'a Distributions,
    rng: Rng,
    out: Vec<String>,
    sentences: Vec<String>,
}

/// Zipf samplers shared by all documents.
struct Distributions {
    noun: Zipf,
    intransitive: Zipf,
    transitive: Zipf,
    saying: Zipf,
    adjective: Zipf,
    adverb: Zipf,
    person: Zipf,
    place: Zipf,
    org: Zipf,
}

impl Distributions {
    fn new(lex: &Lexicon) -> Distributions {
        Distributions {
            noun: Zipf::new(lex.nouns.len(), 1.0),
            intransitive: Zipf::new(lex.intransitive.len(), 1.0),
            transitive: Zipf::new(lex.transitive.len(), 1.0),
            saying: Zipf::new(lex.saying.len(), 1.0),
            adjective: Zipf::new(lex.adjectives.len(), 1.0),
            adverb: Zipf::new(lex.adverbs.len(), 1.0),
            person: Zipf::new(PEOPLE, 1.0),
            place: Zipf::new(PLACES, 1.0),
            org: Zipf::new(ORGS, 1.0),
        }
    }
}

impl<'a> Writer<'a> {
    fn word(&mut self, w: &str) {
        self.out.push(w.to_string());
    }

    fn end_sentence(&mut self) {
        self.word(".");
        self.sentences.push(render(&self.out));
        self.out.clear();
    }

    fn person_name(&mut self, p: usize) {
        let first = self.lex.first_names[self.world.people[p].first].clone();
        self.word(&first);
        let last = self.lex.surnames[p].clone();
        self.word(&last);
    }

    fn org_name(&mut self, o: usize) {
        self.word("the");
        let name = self.lex.org_names[o].clone();
        self.word(&name);
        self.word(ORG_KINDS[self.world.orgs[o].kind]);
    }

    fn noun(&mut self, n: Number) {
        let i = self.dist.noun.sample(&mut self.rng);
        let w = self.lex.nouns[i].form(n).to_string();
        self.word(&w);
    }

    fn determiner(&mut self, n: Number) {
        let d = match n {
            Number::Sg => *self.rng.pick(&["the", "the", "a", "every", "this"]),
            Number::Pl => *self
                .rng
                .pick(&["the", "the", "some", "many", "these", "all"]),
        };
        self.word(d);
    }

    fn verb(&mut self, class: &'a [Inflected], zipf: fn(&Distributions) -> &Zipf, n: Number) {
        let i = zipf(self.dist).sample(&mut self.rng);
        self.word(class[i].form(n));
    }

    fn random_number(&mut self) -> Number {
        if self.rng.chance(0.45) {
            Number::Pl
        } else {
            Number::Sg
        }
    }

    /// A noun phrase; returns its number. `rel_depth` is how many more
    /// relative clauses may nest; `closed` says whether a relative clause
    /// here must end with a comma (it need not at the end of the sentence).
    fn noun_phrase(&mut self, topic: Option<usize>, rel_depth: usize, closed: bool) -> Number {
        if self.rng.chance(0.12) {
            let p = match topic {
                Some(p) if self.rng.chance(0.5) => p,
                _ => self.dist.person.sample(&mut self.rng),
            };
            self.person_name(p);
            return Number::Sg;
        }
        let n = self.random_number();
        self.determiner(n);
        for _ in 0..[0, 0, 1, 1, 2][self.rng.below(5)] {
            let a = self.dist.adjective.sample(&mut self.rng);
            let a = self.lex.adjectives[a].clone();
            self.word(&a);
        }
        self.noun(n);
        if rel_depth > 0 && self.rng.chance(0.3) {
            self.relative_clause(n, topic, rel_depth - 1, closed);
        } else if self.rng.chance(0.2) {
            self.prepositional_phrase();
        }
        n
    }

    fn prepositional_phrase(&mut self) {
        let p = *self.rng.pick(PREPOSITIONS);
        self.word(p);
        let n = self.random_number();
        self.determiner(n);
        self.noun(n);
    }

    /// `, which V …,` (subject relative) or `, which NP V ,` (object relative).
    fn relative_clause(
        &mut self,
        head: Number,
        topic: Option<usize>,
        rel_depth: usize,
        closed: bool,
    ) {
        self.word(",");
        if self.rng.chance(0.55) {
            let w = *self.rng.pick(&["which", "who"]);
            self.word(w);
            if self.rng.chance(0.5) {
                self.verb(&self.lex.intransitive, |d| &d.intransitive, head);
            } else {
                self.verb(&self.lex.transitive, |d| &d.transitive, head);
                self.noun_phrase(topic, 0, true);
            }
        } else {
            let w = *self.rng.pick(&["which", "whom"]);
            self.word(w);
            let n = self.noun_phrase(topic, rel_depth, true);
            self.verb(&self.lex.transitive, |d| &d.transitive, n);
        }
        if closed {
            self.word(",");
        }
    }

    fn verb_phrase(&mut self, n: Number, topic: Option<usize>, depth: usize) {
        let roll = self.rng.unit();
        if roll < 0.3 {
            self.verb(&self.lex.intransitive, |d| &d.intransitive, n);
            if self.rng.chance(0.3) {
                let a = self.dist.adverb.sample(&mut self.rng);
                let a = self.lex.adverbs[a].clone();
                self.word(&a);
            } else if self.rng.chance(0.3) {
                self.prepositional_phrase();
            }
        } else if roll < 0.85 || depth >= 2 {
            self.verb(&self.lex.transitive, |d| &d.transitive, n);
            self.noun_phrase(topic, 1, false);
        } else {
            self.verb(&self.lex.saying, |d| &d.saying, n);
            self.word("that");
            self.clause(topic, depth + 1);
        }
    }

    fn clause(&mut self, topic: Option<usize>, depth: usize) {
        let n = self.noun_phrase(topic, 2, true);
        self.verb_phrase(n, topic, depth);
    }

    fn generic_sentence(&mut self, topic: Option<usize>) {
        self.clause(topic, 0);
        self.end_sentence();
    }

    /// A sentence stating one of the topic's fixed attributes.
    fn fact(&mut self, topic: Topic, first: bool) {
        let w = self.world;
        match topic {
            Topic::Person(p) => {
                let person = &w.people[p];
                let subject = |s: &mut Self| {
                    if first || s.rng.chance(0.5) {
                        s.person_name(p)
                    } else {
                        s.word(if person.female { "she" } else { "he" })
                    }
                };
                match if first { 0 } else { self.rng.below(6) } {
                    0 => {
                        subject(self);
                        self.word("is");
                        self.word("a");
                        self.word(&self.lex.nouns[person.occupation].sg.clone());
                        self.word("from");
                        self.word(&self.lex.places[person.home].clone());
                    }
                    1 => {
                        subject(self);
                        self.word("works");
                        self.word("for");
                        self.org_name(person.employer);
                    }
                    2 => {
                        subject(self);
                        self.word("lives");
                        self.word("in");
                        self.word(&self.lex.places[person.home].clone());
                        self.word(",");
                        self.word("which");
                        self.word("is");
                        self.word("in");
                        self.word(&self.lex.countries[w.place_country[person.home]].clone());
                    }
                    3 => {
                        self.org_name(person.employer);
                        self.word(",");
                        self.word("which");
                        self.word("employs");
                        self.person_name(p);
                        self.word(",");
                        self.word("is");
                        self.word("based");
                        self.word("in");
                        self.word(&self.lex.places[w.orgs[person.employer].seat].clone());
                    }
                    4 => {
                        self.person_name(person.friend);
                        self.word("is");
                        self.word("a");
                        self.word("friend");
                        self.word("of");
                        self.person_name(p);
                    }
                    _ => {
                        let w = *self.rng.pick(&["many", "some"]);
                        self.word(w);
                        self.word(&self.lex.nouns[person.occupation].pl.clone());
                        self.word("in");
                        self.word(&self.lex.places[person.home].clone());
                        self.verb(&self.lex.transitive, |d| &d.transitive, Number::Pl);
                        self.person_name(p);
                    }
                }
            }
            Topic::Place(l) => match if first { 0 } else { self.rng.below(4) } {
                0 => {
                    self.word(&self.lex.places[l].clone());
                    self.word("is");
                    self.word("a");
                    self.word("town");
                    self.word("in");
                    self.word(&self.lex.countries[w.place_country[l]].clone());
                }
                1 => {
                    self.word(&self.lex.places[l].clone());
                    self.word("is");
                    self.word("known");
                    self.word("for");
                    self.word("its");
                    self.word(&self.lex.nouns[w.place_known_for[l]].pl.clone());
                }
                2 if !w.residents[l].is_empty() => {
                    let r = *self.rng.pick(&w.residents[l]);
                    self.person_name(r);
                    self.word("lives");
                    self.word("in");
                    self.word(&self.lex.places[l].clone());
                }
                _ => {
                    self.word("the");
                    self.word("people");
                    self.word("of");
                    self.word(&self.lex.places[l].clone());
                    self.verb(&self.lex.transitive, |d| &d.transitive, Number::Pl);
                    self.noun_phrase(None, 0, false);
                }
            },
            Topic::Org(o) => match if first { 0 } else { self.rng.below(3) } {
                0 => {
                    self.org_name(o);
                    self.word("is");
                    self.word("based");
                    self.word("in");
                    self.word(&self.lex.places[w.orgs[o].seat].clone());
                }
                1 => {
                    self.org_name(o);
                    self.word("makes");
                    self.word(&self.lex.nouns[w.orgs[o].product].pl.clone());
                }
                _ => {
                    let staff = &w.employees[o];
                    if staff.is_empty() {
                        self.org_name(o);
                        self.word("makes");
                        self.word(&self.lex.nouns[w.orgs[o].product].pl.clone());
                    } else {
                        let e = *self.rng.pick(staff);
                        self.person_name(e);
                        self.word("works");
                        self.word("for");
                        self.org_name(o);
                    }
                }
            },
        }
        self.end_sentence();
    }

    fn document(&mut self) -> String {
        let topic = match self.rng.below(10) {
            0..=5 => Topic::Person(self.dist.person.sample(&mut self.rng)),
            6..=7 => Topic::Place(self.dist.place.sample(&mut self.rng)),
            _ => Topic::Org(self.dist.org.sample(&mut self.rng)),
        };
        let person = match topic {
            Topic::Person(p) => Some(p),
            _ => None,
        };
        let sentences = 4 + self.rng.below(9);
        self.fact(topic, true);
        for _ in 1..sentences {
            if self.rng.chance(0.4) {
                self.fact(topic, false);
            } else {
                self.generic_sentence(person);
            }
        }
        let mut doc = self.sentences.join("\n");
        doc.push('\n');
        self.sentences.clear();
        doc
    }
}

/// Joins tokens into a sentence: punctuation attaches to the word before it,
/// and the first letter is capitalised.
fn render(tokens: &[String]) -> String {
    let mut s = String::new();
    for t in tokens {
        if !s.is_empty() && t != "," && t != "." {
            s.push(' ');
        }
        s.push_str(t);
    }
    capitalise(&s)
}

/// Generates documents until at least `words` words (punctuation included)
/// are written. The text is the same for a given seed whatever the thread
/// count: documents are generated in parallel blocks, each from its own seed.
pub fn generate(words: usize, seed: u64) -> String {
    let lex = Lexicon::new(seed);
    let world = World::new(&lex, seed);
    let dist = Distributions::new(&lex);
    let mut text = String::new();
    let mut written = 0usize;
    let block = 512;
    let mut next_doc = 0u64;
    while written < words {
        let docs: Vec<String> = (next_doc..next_doc + block)
            .into_par_iter()
            .map(|d| {
                let mut w = Writer {
                    lex: &lex,
                    world: &world,
                    dist: &dist,
                    rng: Rng::new(seed.wrapping_mul(0x100_0000_01b3) ^ splitmix64(d)),
                    out: Vec::new(),
                    sentences: Vec::new(),
                };
                w.document()
            })
            .collect();
        next_doc += block;
        for doc in docs {
            if written >= words {
                break;
            }
            written += count_words(&doc);
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&doc);
        }
    }
    text
}

/// The generated corpus as a text source for the corpus pipeline. Its
/// path names the seed, so a prepared corpus records which language it
/// holds ([`seed_of_source`]).
pub fn generate_source(words: usize, seed: u64) -> TextSource {
    TextSource {
        path: PathBuf::from(format!("<generated: {words} words, seed {seed}>")),
        text: generate(words, seed),
    }
}

/// The seed of a [`generate_source`] path (as a manifest lists its
/// inputs), or `None` for any other input.
pub fn seed_of_source(path: &str) -> Option<u64> {
    let inner = path.strip_prefix("<generated: ")?.strip_suffix('>')?;
    inner.split(", seed ").nth(1)?.parse().ok()
}

/// What a cloze probe of the built-in language tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// The verb's number agrees with the subject just before it.
    Agreement,
    /// The verb's number agrees with its subject across a noun of the other
    /// number (in a prepositional phrase or an object relative clause): a
    /// model that copies the nearest noun's number gets these wrong.
    Attraction,
    /// A person's employer, named earlier in the document.
    Employer,
    /// A person's home town, named earlier in the document.
    Home,
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 4] = [
        ProbeKind::Agreement,
        ProbeKind::Attraction,
        ProbeKind::Employer,
        ProbeKind::Home,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Agreement => "agreement",
            ProbeKind::Attraction => "attraction",
            ProbeKind::Employer => "employer",
            ProbeKind::Home => "home",
        }
    }
}

/// A cloze item: a short document in the built-in language with one word
/// replaced by `[MASK]`, the words that may fill it, and the one that does.
/// Only the context decides between the candidates: the subject's number,
/// or a name given earlier in the same document.
///
/// Each item comes with a contrast: the same document with only the deciding
/// context changed (the subject's number flipped, another organisation or
/// town named), so that another candidate is right. A model that prefers the
/// answer more in the item than in its contrast reads the context, whatever
/// its bias towards frequent candidates (the minimal-pair score).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClozeItem {
    pub kind: ProbeKind,
    /// Sentences (one per line) with exactly one `[MASK]`.
    pub text: String,
    /// Lowercase words; `candidates[answer]` fills the blank.
    pub candidates: Vec<String>,
    pub answer: usize,
    /// The contrast's text (one `[MASK]`), whose blank `candidates[contrast_answer]` fills.
    pub contrast: String,
    pub contrast_answer: usize,
}

/// The blank in a cloze item's text.
pub const BLANK: &str = "[MASK]";

fn flip(n: Number) -> Number {
    match n {
        Number::Sg => Number::Pl,
        Number::Pl => Number::Sg,
    }
}

/// `per_kind` cloze items of each [`ProbeKind`] for the language of `seed`,
/// drawn from their own stream (`probe_seed`), so that a fixed set is
/// scored at every evaluation.
///
/// The people in them are invented for the probe (a first name and a
/// surname of the language, with an employer and home drawn at random, not
/// the world's), so remembering the world cannot answer them: only reading
/// the document can. Candidates are every name of the kind (organisations,
/// places) or the verb's two forms.
pub fn cloze_items(seed: u64, probe_seed: u64, per_kind: usize) -> Vec<ClozeItem> {
    let lex = Lexicon::new(seed);
    let world = World::new(&lex, seed);
    let dist = Distributions::new(&lex);
    let mut rng = Rng::new(probe_seed ^ 0xc10e);
    let lower = |w: &str| w.to_lowercase();
    let orgs: Vec<String> = lex.org_names.iter().map(|n| lower(n)).collect();
    let places: Vec<String> = lex.places.iter().map(|n| lower(n)).collect();
    let strings = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    let sentence = |words: &[&str]| render(&strings(words));
    let mut items = Vec::new();
    for _ in 0..per_kind {
        let noun = |rng: &mut Rng| &lex.nouns[dist.noun.sample(rng)];
        let number = |rng: &mut Rng| {
            if rng.chance(0.5) {
                Number::Sg
            } else {
                Number::Pl
            }
        };
        let verb_pair = |verb: &Inflected| vec![lower(&verb.sg), lower(&verb.pl)];
        let slot = |n: Number| usize::from(n == Number::Pl);

        // Agreement: `the N1 VERB the N3 .`, contrasted with N1's other form.
        let (n, subject, object) = (number(&mut rng), noun(&mut rng), noun(&mut rng));
        let verb = &lex.transitive[dist.transitive.sample(&mut rng)];
        let agreement =
            |n: Number| sentence(&["the", subject.form(n), BLANK, "the", &object.sg, "."]);
        items.push(ClozeItem {
            kind: ProbeKind::Agreement,
            text: agreement(n),
            candidates: verb_pair(verb),
            answer: slot(n),
            contrast: agreement(flip(n)),
            contrast_answer: slot(flip(n)),
        });

        // Attraction: `the N1 PREP the N2s VERB the N3 .` or `the N1 , which
        // the N2s V2 , VERB the N3 .`, N2 of the other number; contrasted
        // with both numbers flipped.
        let n = number(&mut rng);
        let verb = &lex.transitive[dist.transitive.sample(&mut rng)];
        let (subject, attractor, object) = (noun(&mut rng), noun(&mut rng), noun(&mut rng));
        let preposition = rng.chance(0.5).then(|| *rng.pick(PREPOSITIONS));
        let inner = &lex.transitive[dist.transitive.sample(&mut rng)];
        let attraction = |n: Number| {
            let other = flip(n);
            let mut words = vec!["the", subject.form(n)];
            match preposition {
                Some(p) => words.extend([p, "the", attractor.form(other)]),
                None => words.extend([
                    ",",
                    "which",
                    "the",
                    attractor.form(other),
                    inner.form(other),
                    ",",
                ]),
            }
            words.extend([BLANK, "the", &object.sg, "."]);
            sentence(&words)
        };
        items.push(ClozeItem {
            kind: ProbeKind::Attraction,
            text: attraction(n),
            candidates: verb_pair(verb),
            answer: slot(n),
            contrast: attraction(flip(n)),
            contrast_answer: slot(flip(n)),
        });

        // Employer and home: an invented person, introduced with the fact,
        // one unrelated sentence, then the fact asked about.
        let surname = rng.below(PEOPLE);
        let name = [
            lex.first_names[rng.below(lex.first_names.len())].clone(),
            lex.surnames[surname].clone(),
        ];
        let occupation = lex.nouns[lex.occupations[rng.below(lex.occupations.len())]]
            .sg
            .clone();
        let filler = |rng: &mut Rng| {
            let (a, b) = (noun(rng).pl.clone(), noun(rng).sg.clone());
            let v = lex.transitive[dist.transitive.sample(rng)].pl.clone();
            render(&["many".into(), a, v, "the".into(), b, ".".into()])
        };
        // Two organisations and two towns, none the world's for this surname.
        let distinct = |n: usize, avoid: usize, rng: &mut Rng| loop {
            let (a, b) = (rng.below(n), rng.below(n));
            if a != b && a != avoid && b != avoid {
                break (a, b);
            }
        };
        let (employer, other_employer) = distinct(ORGS, world.people[surname].employer, &mut rng);
        let (home, other_home) = distinct(PLACES, world.people[surname].home, &mut rng);
        let kind = |o: usize| ORG_KINDS[world.orgs[o].kind];
        let filler_employer = filler(&mut rng);
        let employer_doc = |o: usize| {
            let intro = sentence(&[
                &name[0],
                &name[1],
                "is",
                "a",
                &occupation,
                "from",
                &lex.places[home],
                ".",
            ]);
            let seat = &lex.places[world.orgs[o].seat];
            let employs = sentence(&[
                "the",
                &lex.org_names[o],
                kind(o),
                ",",
                "which",
                "employs",
                &name[0],
                &name[1],
                ",",
                "is",
                "based",
                "in",
                seat,
                ".",
            ]);
            let asked = sentence(&[
                &name[0],
                &name[1],
                "works",
                "for",
                "the",
                BLANK,
                kind(o),
                ".",
            ]);
            [intro, employs, filler_employer.clone(), asked].join("\n")
        };
        items.push(ClozeItem {
            kind: ProbeKind::Employer,
            text: employer_doc(employer),
            candidates: orgs.clone(),
            answer: employer,
            contrast: employer_doc(other_employer),
            contrast_answer: other_employer,
        });

        let filler_home = filler(&mut rng);
        let home_doc = |l: usize| {
            let country = &lex.countries[world.place_country[l]];
            let lives = sentence(&[
                &name[0],
                &name[1],
                "lives",
                "in",
                &lex.places[l],
                ",",
                "which",
                "is",
                "in",
                country,
                ".",
            ]);
            let works = sentence(&[
                &name[0],
                &name[1],
                "works",
                "for",
                "the",
                &lex.org_names[employer],
                kind(employer),
                ".",
            ]);
            let asked = sentence(&[
                &name[0],
                &name[1],
                "is",
                "a",
                &occupation,
                "from",
                BLANK,
                ".",
            ]);
            [lives, works, filler_home.clone(), asked].join("\n")
        };
        items.push(ClozeItem {
            kind: ProbeKind::Home,
            text: home_doc(home),
            candidates: places.clone(),
            answer: home,
            contrast: home_doc(other_home),
            contrast_answer: other_home,
        });
    }
    items
}

/// Words as the agreement check sees them: lowercase, punctuation split off.
fn simple_words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split_whitespace().flat_map(|w| {
        let (body, punct) = match w.strip_suffix([',', '.']) {
            Some(b) => (b, Some(&w[b.len()..])),
            None => (w, None),
        };
        std::iter::once(body.to_lowercase())
            .chain(punct.map(str::to_string))
            .filter(|s| !s.is_empty())
    })
}

fn count_words(text: &str) -> usize {
    simple_words(text).count()
}

/// Subject–verb agreement measured from text.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct AgreementStats {
    /// Verbs whose subject was found.
    pub verbs: u64,
    /// Of those, verbs whose number matches their subject.
    pub agreeing: u64,
    /// Verbs with a noun of the other number between subject and verb.
    pub attracted: u64,
    /// Sentences with at least one relative clause.
    pub sentences_with_relative: u64,
    pub sentences: u64,
}

/// Checks agreement in text of this language. Each verb's subject is the last
/// nominal of its clause that is not inside a prepositional phrase; a
/// relative clause (`, which …`) starts with its antecedent (the last nominal
/// before it) as subject and ends at the next comma or the full stop.
pub fn agreement_stats(text: &str, tags: &HashMap<String, Tag>) -> AgreementStats {
    let mut stats = AgreementStats::default();
    // Per open clause: the current subject candidate.
    let mut frames: Vec<Option<Number>> = vec![None];
    let mut last_nominal: Option<Number> = None;
    let mut after_preposition = false;
    let mut pending_comma = false;
    let mut has_relative = false;
    for word in simple_words(text) {
        let tag = tags.get(&word).copied();
        if pending_comma {
            pending_comma = false;
            if tag == Some(Tag::Relative) {
                frames.push(last_nominal);
                has_relative = true;
                continue;
            }
            if frames.len() > 1 {
                frames.pop();
            }
        }
        match (word.as_str(), tag) {
            (".", _) => {
                stats.sentences += 1;
                stats.sentences_with_relative += u64::from(has_relative);
                frames = vec![None];
                (last_nominal, after_preposition, has_relative) = (None, false, false);
            }
            (",", _) => pending_comma = true,
            (_, Some(Tag::Preposition)) => after_preposition = true,
            (_, Some(Tag::Nominal(n))) => {
                if !after_preposition {
                    *frames.last_mut().unwrap() = Some(n);
                }
                last_nominal = Some(n);
                after_preposition = false;
            }
            (_, Some(Tag::Verb(n))) => {
                if let Some(subject) = *frames.last().unwrap() {
                    stats.verbs += 1;
                    stats.agreeing += u64::from(subject == n);
                    stats.attracted += u64::from(last_nominal.is_some_and(|l| l != subject));
                }
            }
            _ => {}
        }
    }
    stats
}

/// Least-squares slope of log(frequency) against log(rank) over the given
/// 1-based ranks of a frequency-sorted count list.
pub fn zipf_slope(sorted_counts: &[u64], ranks: std::ops::RangeInclusive<usize>) -> f64 {
    let points: Vec<(f64, f64)> = ranks
        .filter(|&r| r >= 1 && r <= sorted_counts.len() && sorted_counts[r - 1] > 0)
        .map(|r| ((r as f64).ln(), (sorted_counts[r - 1] as f64).ln()))
        .collect();
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    sxy / sxx
}

/// Summary statistics of a generated text.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GeneratedStats {
    pub documents: usize,
    pub words: u64,
    pub word_types: usize,
    /// Slope of log frequency against log rank, ranks 10 to 5000.
    pub zipf_slope: f64,
    /// Word types seen at most 5 times.
    pub rare_types: usize,
    /// Surnames (one per person) seen at most 5 times.
    pub rare_surnames: usize,
    pub agreement: AgreementStats,
}

/// Measures a generated text (as produced by [`generate`] with `seed`).
pub fn statistics(text: &str, seed: u64) -> GeneratedStats {
    let lex = Lexicon::new(seed);
    let mut counts: HashMap<String, u64> = HashMap::new();
    for w in simple_words(text) {
        *counts.entry(w).or_default() += 1;
    }
    let mut sorted: Vec<u64> = counts.values().copied().collect();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let rare_surnames = lex
        .surnames
        .iter()
        .filter(|s| counts.get(&s.to_lowercase()).copied().unwrap_or(0) <= 5)
        .count();
    GeneratedStats {
        documents: super::text::documents(text).count(),
        words: sorted.iter().sum(),
        word_types: counts.len(),
        zipf_slope: zipf_slope(&sorted, 10..=5000),
        rare_types: sorted.iter().filter(|&&c| c <= 5).count(),
        rare_surnames,
        agreement: agreement_stats(text, &lex.tags()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_sampler_follows_its_law() {
        let z = Zipf::new(100, 1.0);
        let mut rng = Rng::new(3);
        let mut counts = [0u64; 100];
        for _ in 0..200_000 {
            counts[z.sample(&mut rng)] += 1;
        }
        // P(0) / P(1) = 2 and P(0) / P(9) = 10 for s = 1.
        let r1 = counts[0] as f64 / counts[1] as f64;
        let r9 = counts[0] as f64 / counts[9] as f64;
        assert!((r1 - 2.0).abs() < 0.1, "{r1}");
        assert!((r9 - 10.0).abs() < 1.0, "{r9}");
    }

    #[test]
    fn generation_is_deterministic_and_seeded() {
        let a = generate(5_000, 9);
        assert_eq!(a, generate(5_000, 9));
        assert_ne!(a, generate(5_000, 10));
        assert!(count_words(&a) >= 5_000);
    }

    #[test]
    fn generated_sources_name_their_seed() {
        let path = generate_source(1000, 77).path.display().to_string();
        assert_eq!(seed_of_source(&path), Some(77));
        assert_eq!(seed_of_source("../shared/data/wiki/wiki-00.txt.gz"), None);
    }

    #[test]
    fn checker_finds_disagreement() {
        let lex = Lexicon::new(1);
        let tags = lex.tags();
        let (n, v) = (&lex.nouns[0], &lex.intransitive[0]);
        let good = format!("The {} {}.\nThe {} {}.", n.sg, v.sg, n.pl, v.pl);
        let bad = format!("The {} {}.", n.pl, v.sg);
        let s = agreement_stats(&good, &tags);
        assert_eq!((s.verbs, s.agreeing), (2, 2));
        let s = agreement_stats(&bad, &tags);
        assert_eq!((s.verbs, s.agreeing), (1, 0));
        // Across a relative clause whose noun has the other number.
        let (t, m) = (&lex.transitive[0], &lex.nouns[1]);
        let nested = format!("The {}, which the {} {}, {}.", n.sg, m.pl, t.pl, v.sg);
        let s = agreement_stats(&nested, &tags);
        assert_eq!((s.verbs, s.agreeing, s.attracted), (2, 2, 1), "{nested}");
    }
}
