"""word2vec (gensim skip-gram) on the text a brisk senses run read, scored
on the same similarity sets: the anchor of bench/word2vec.sh.

The text is split as brisk splits it (lowercase, accents stripped,
punctuation apart), tokens without a letter dropped (brisk's
cooc.letters_only), and the vocabulary is exactly the run's vocab.tsv, so
both models see the same words. Prints one JSON object.
"""
import argparse
import glob
import gzip
import json
import os
import re
import time
import unicodedata

import numpy as np
from gensim.models import Word2Vec
from scipy.stats import spearmanr

TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def words(line):
    text = unicodedata.normalize("NFD", line.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    return [t for t in TOKEN.findall(text) if any(c.isalpha() for c in t)]


def documents(paths):
    """One list of words per article (articles end at a blank line), cut
    into pieces of at most 10,000 words, gensim's sentence limit."""
    for path in paths:
        doc = []
        with gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    if doc:
                        yield doc
                    doc = []
                    continue
                doc.extend(words(line))
                while len(doc) > 10000:
                    yield doc[:10000]
                    doc = doc[10000:]
        if doc:
            yield doc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--text", required=True)
    ap.add_argument("--vocab", required=True)
    ap.add_argument("--sets", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--sample", type=float, default=1e-5)
    ap.add_argument("--dim", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    vocab = {line.split("\t")[0] for line in open(args.vocab, encoding="utf-8") if line.strip()}
    paths = sorted(glob.glob(os.path.join(args.text, "*"))) if os.path.isdir(args.text) else [args.text]
    start = time.time()
    corpus = list(documents(paths))
    read_s = time.time() - start
    start = time.time()
    model = Word2Vec(
        vector_size=args.dim, window=args.window, sample=args.sample, sg=1, negative=5,
        min_count=1, workers=args.threads, seed=args.seed, epochs=args.epochs,
    )
    keep = lambda word, count, min_count: 2 if word in vocab else 1  # RULE_KEEP / RULE_DISCARD
    model.build_vocab(corpus, trim_rule=keep)
    model.train(corpus, total_examples=len(corpus), epochs=args.epochs)
    train_s = time.time() - start
    kv = model.wv
    results = []
    for path in sorted(glob.glob(os.path.join(args.sets, "*.txt"))):
        human, model_scores, pairs = [], [], 0
        for line in open(path, encoding="utf-8"):
            fields = line.split()
            if len(fields) != 3:
                continue
            pairs += 1
            a, b = fields[0].lower(), fields[1].lower()
            if a in kv and b in kv:
                human.append(float(fields[2]))
                model_scores.append(float(kv.similarity(a, b)))
        rho = float(spearmanr(model_scores, human).correlation) if len(human) >= 3 else None
        results.append(dict(set=os.path.splitext(os.path.basename(path))[0], pairs=pairs, found=len(human), spearman=rho))
    print(json.dumps(dict(
        words=sum(len(d) for d in corpus), vocab=len(kv), read_s=read_s, train_s=train_s,
        threads=args.threads, dim=args.dim, epochs=args.epochs, sets=results,
    )))


if __name__ == "__main__":
    main()
