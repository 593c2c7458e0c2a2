#!/usr/bin/env python3
"""Synthetic sequence-to-sequence tasks for encoder-decoder tests, as pair files (pairs.h format:
SOURCE<TAB>TARGET per line, escapes \\t \\n \\\\).

  copy     abc      -> abc
  reverse  abc      -> cba
  sort     cab      -> abc          (the bytes in ascending order)
  add      123+45   -> 168          (decimal, operands of 1..--max-len digits)

Sources are random strings over --alphabet (default: the ten letters a..j) with lengths in
[--min-len, --max-len]; addition draws operands instead. Every source is distinct, and the
validation and test splits hold sources that never occur in training (held-out strings). The
output depends only on the arguments: Python's random.Random(seed) is stable across versions
for the calls used here (randrange, choice).

usage: tools/make_seq2seq.py TASK OUTDIR [--train N] [--valid N] [--test N] [--seed S]
                             [--min-len N] [--max-len N] [--alphabet CHARS]
writes OUTDIR/train.txt, OUTDIR/valid.txt, OUTDIR/test.txt and prints one line of counts.
"""
import argparse
import os
import random
import sys


def escape(s):
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def make_source(task, rng, a):
    if task == "add":
        x = rng.randrange(10 ** rng.randrange(a.min_len, a.max_len + 1))
        y = rng.randrange(10 ** rng.randrange(a.min_len, a.max_len + 1))
        return "%d+%d" % (x, y)
    n = rng.randrange(a.min_len, a.max_len + 1)
    return "".join(rng.choice(a.alphabet) for _ in range(n))


def target(task, s):
    if task == "copy":
        return s
    if task == "reverse":
        return s[::-1]
    if task == "sort":
        return "".join(sorted(s))
    x, y = s.split("+")
    return str(int(x) + int(y))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task", choices=["copy", "reverse", "sort", "add"])
    p.add_argument("outdir")
    p.add_argument("--train", type=int, default=20000)
    p.add_argument("--valid", type=int, default=500)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--min-len", type=int, default=1)
    p.add_argument("--max-len", type=int, default=10)
    p.add_argument("--alphabet", default="abcdefghij")
    a = p.parse_args()
    if a.min_len < 1 or a.max_len < a.min_len or not a.alphabet:
        sys.exit("make_seq2seq: need 1 <= --min-len <= --max-len and a non-empty --alphabet")
    want = a.train + a.valid + a.test
    rng = random.Random(a.seed)
    seen, sources = set(), []
    tries = 0
    while len(sources) < want:
        tries += 1
        if tries > 50 * want + 1000:
            sys.exit("make_seq2seq: only %d distinct sources exist for these lengths and alphabet, %d wanted"
                     % (len(sources), want))
        s = make_source(a.task, rng, a)
        if s not in seen:
            seen.add(s)
            sources.append(s)
    # Shuffled before splitting, so that every length is held out in proportion: taking the
    # first sources drawn would put nearly all of the few short strings into the held-out splits.
    rng.shuffle(sources)
    os.makedirs(a.outdir, exist_ok=True)
    splits = [("valid", sources[:a.valid]), ("test", sources[a.valid:a.valid + a.test]),
              ("train", sources[a.valid + a.test:])]
    for name, part in splits:
        with open(os.path.join(a.outdir, name + ".txt"), "w", encoding="utf-8", newline="\n") as f:
            for s in part:
                f.write(escape(s) + "\t" + escape(target(a.task, s)) + "\n")
    print("make_seq2seq: %s: %d train, %d valid, %d test pairs in %s (seed %d, lengths %d..%d)"
          % (a.task, a.train, a.valid, a.test, a.outdir, a.seed, a.min_len, a.max_len))


if __name__ == "__main__":
    main()
