#!/usr/bin/env python3
"""mutate_configs.py BIN CONFIG N [--seed S] [--keep DIR]: N mutated copies of CONFIG, each trained for
one step (`BIN train COPY --set train.steps=1 --out FRESH`) under `timeout 60` and an address-space limit
of 8 GB (so that a config asking for a huge model fails in malloc instead of taking the machine's memory).

A copy gets one to three mutations: a value of another type; a huge, negative, zero, fractional or
not-quite-integral number; an unknown key; wrong nesting (a key in another section, a value wrapped in
an object or a list, a section inside another); a deleted key or section; a string with odd bytes
(newlines, NUL, escapes, invalid UTF-8, very long, device and directory paths); a duplicated key; the
text cut short. Keys are drawn from CONFIG and from the resolved config of a one-step run of it (every
key with its default), so keys CONFIG leaves out are mutated too.

Outcomes: exit0; refused (exit 2, one stderr line); stopped (exit 2 after training started: the opening
line, progress, one final "cformer: " line); multiline (any other exit 2); other (another exit status);
crashed (killed by a signal); hung (timeout). Every one that is not exit0 or refused is listed (--keep
copies its config into DIR), then
  BENCH faults name=mutate_configs configs=N exit0=... refused=... stopped=... multiline=... other=...
        crashed=... hung=... seed=S
Standard library only."""
import argparse
import copy
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile

TIMEOUT_S = 60
AS_LIMIT = 8 << 30
RAW = "\u0001RAW\u0001"          # placeholder for raw bytes spliced into the text after json.dumps

NUMBERS = [0, -1, -7, 1, 2, 3, 0.5, 1.5, -0.0, 2.0000000001, 1e-320, 1e6, 65537, 1048576, 1048577, 4194305,
           2**31 - 1, 2**31, -2**31 - 1, 2**53 + 1, 2**63, 2**64, 1e308, -1e308, 1e400]
STRINGS = ["", " ", "\n", "a\nb", "\r\n", "\t", "\u0000", "x\u0000y", "\u001b[31mred", "\u00e9\u00e8",
           "\ud800", "\uffff", "x" * 5000, "../../../../etc/passwd", "/dev/zero", "/dev/null", "/proc/self/mem",
           "/", ".", "data/tiny", "full", "decoder", "none", "blocks", "1", "true", "null", RAW]
RAW_BYTES = [b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\x80abc", b"\xf4\x90\x80\x80"]
KEYS = ["foo", "d_modle", "Model", "", " d_model", "d_model ", "\u00e9", "a\nb", "model", "train", "x" * 300]


def paths(node, prefix=()):
    """every (path, value) below node; a path is a tuple of keys and list indices"""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((prefix + (k,), v))
            out.extend(paths(v, prefix + (k,)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((prefix + (i,), v))
            out.extend(paths(v, prefix + (i,)))
    return out


def get(node, path):
    for p in path:
        node = node[p]
    return node


def put(root, path, value):
    """set path in root, making missing objects on the way (a non-container on the way is replaced)"""
    node = root
    for p in path[:-1]:
        if isinstance(node, dict):
            if not isinstance(node.get(p), (dict, list)):
                node[p] = {}
            node = node[p]
        elif isinstance(node, list) and isinstance(p, int) and p < len(node):
            node = node[p]
        else:
            return
    if isinstance(node, dict) or (isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node)):
        node[path[-1]] = value


def delete(root, path):
    parent = get(root, path[:-1])
    if isinstance(parent, dict):
        parent.pop(path[-1], None)
    else:
        del parent[path[-1]]


def other_type(rng, v):
    choices = [rng.choice(STRINGS[:12]), rng.choice(NUMBERS), rng.random() < 0.5, None, [v], {"value": v}, [], {}]
    same = lambda x: type(x) is type(v) or (isinstance(x, (int, float)) and isinstance(v, (int, float))
                                             and not isinstance(x, bool) and not isinstance(v, bool))
    return rng.choice([c for c in choices if not same(c)] or choices)


def mutate(rng, cfg, known):
    """one mutation of cfg in place; returns (description, raw edit or None)"""
    present = paths(cfg)
    pool = present + [(p, None) for p in known]
    path, _ = rng.choice(pool) if pool else ((), None)
    where = ".".join(str(p) for p in path)
    kind = rng.choice(["type", "number", "number", "unknown", "nesting", "delete", "string", "string", "duplicate",
                       "truncate"])
    if kind == "type":
        v = other_type(rng, get(cfg, path) if path in dict(present) else 0)
        put(cfg, path, v)
        return "type %s=%s" % (where, json.dumps(v)[:40]), None
    if kind == "number":
        v = rng.choice(NUMBERS)
        put(cfg, path, v)
        return "number %s=%r" % (where, v), None
    if kind == "unknown":
        objs = [p for p, v in present if isinstance(v, dict)] + [()]
        at = rng.choice(objs)
        k = rng.choice(KEYS)
        get(cfg, at)[k] = rng.choice([1, "x", {}, [1]])
        return "unknown key %r in %s" % (k, ".".join(map(str, at)) or "top"), None
    if kind == "nesting":
        how = rng.choice(["move", "wrap_object", "wrap_list", "section_in_section"])
        if how == "section_in_section" and isinstance(cfg, dict) and len(cfg) >= 2:
            a, b = rng.sample(sorted(cfg.keys()), 2)
            if isinstance(cfg[b], dict):
                cfg[b][a] = cfg.pop(a)
                return "nesting %s moved into %s" % (a, b), None
        if path and path in dict(present):
            v = get(cfg, path)
            if how == "move" and len(path) >= 2:
                delete(cfg, path)
                target = rng.choice([k for k in cfg if isinstance(cfg[k], dict) and k != path[0]] or [None])
                if target is not None:
                    cfg[target][path[-1]] = v
                    return "nesting %s moved to %s.%s" % (where, target, path[-1]), None
                cfg[path[-1]] = v
                return "nesting %s moved to the top" % where, None
            wrapped = {"value": v} if how == "wrap_object" else [v]
            put(cfg, path, wrapped)
            return "nesting %s wrapped in %s" % (where, "an object" if how == "wrap_object" else "a list"), None
        return mutate(rng, cfg, known)
    if kind == "delete":
        if path and path in dict(present):
            delete(cfg, path)
            return "delete %s" % where, None
        return mutate(rng, cfg, known)
    if kind == "string":
        s = rng.choice(STRINGS)
        put(cfg, path, s)
        raw = rng.choice(RAW_BYTES) if s == RAW else None
        return "string %s=%s" % (where, json.dumps(s)[:40] if raw is None else repr(raw)), raw
    if kind == "duplicate":
        return "duplicate key", "DUPLICATE"
    return "truncate", "TRUNCATE"


def render(rng, cfg, edits):
    text = json.dumps(cfg, indent=2, ensure_ascii=rng.random() < 0.5, allow_nan=True).encode("utf-8", "surrogatepass")
    for e in edits:
        if e == "DUPLICATE":
            # a line "key": scalar again just before itself, so that the object holds the key twice
            lines = text.split(b"\n")
            keyed = [i for i, l in enumerate(lines) if l.lstrip().startswith(b'"') and b'": ' in l
                     and not l.rstrip(b",").endswith((b"{", b"["))]
            if keyed:
                i = rng.choice(keyed)
                lines.insert(i, lines[i].rstrip(b",") + b",")
                text = b"\n".join(lines)
        elif e == "TRUNCATE":
            text = text[:rng.randrange(len(text) + 1)]
    placeholder = json.dumps(RAW, ensure_ascii=True)[1:-1].encode()
    for e in edits:
        if isinstance(e, bytes):
            text = text.replace(placeholder, e, 1).replace(RAW.encode(), e, 1)
    return text


def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def run(bin_path, cfg_path, out_dir):
    """(outcome, exit status, stderr text)"""
    try:
        p = subprocess.run([bin_path, "train", cfg_path, "--set", "train.steps=1", "--out", out_dir],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=TIMEOUT_S,
                           preexec_fn=limit_memory)
    except subprocess.TimeoutExpired as e:
        return "hung", None, (e.stderr or b"").decode("utf-8", "replace")
    err = p.stderr.decode("utf-8", "replace")
    lines = err.splitlines()
    rc = p.returncode
    if rc < 0:
        return "crashed", "signal %s" % signal.Signals(-rc).name, err
    if rc == 0:
        return "exit0", rc, err
    if rc == 2 and len(lines) == 1 and err.endswith("\n"):
        return "refused", rc, err
    if rc == 2 and len(lines) >= 2 and lines[0].startswith("cformer: training ") and lines[-1].startswith("cformer: ") \
            and not any(l.startswith("cformer: ") for l in lines[1:-1]) and len(err.split("\n")) == len(lines) + 1:
        return "stopped", rc, err
    if rc == 2:
        return "multiline", rc, err
    if rc >= 128:
        return "crashed", rc, err
    return "other", rc, err


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bin")
    ap.add_argument("config")
    ap.add_argument("n", type=int)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", help="copy the configs that were not exit0 or refused into this directory")
    a = ap.parse_args()
    bin_path = os.path.abspath(a.bin)
    with open(a.config, "rb") as f:
        base = json.loads(f.read())
    tmp = tempfile.mkdtemp(prefix="mutate_configs.")
    try:
        # the resolved config: every key, so that keys CONFIG leaves out are drawn too
        outcome, rc, err = run(bin_path, a.config, os.path.join(tmp, "base"))
        if outcome != "exit0":
            sys.exit("mutate_configs: %s does not train (%s): %s" % (a.config, outcome, err.strip()))
        with open(os.path.join(tmp, "base", "config.json")) as f:
            known = [p for p, _ in paths(json.load(f))]
        shutil.rmtree(os.path.join(tmp, "base"))
        rng = random.Random(a.seed)
        counts = dict.fromkeys(["exit0", "refused", "stopped", "multiline", "other", "crashed", "hung"], 0)
        if a.keep:
            os.makedirs(a.keep, exist_ok=True)
        for i in range(a.n):
            cfg = copy.deepcopy(base)
            muts = [mutate(rng, cfg, known) for _ in range(rng.choice([1, 1, 2, 3]))]
            text = render(rng, cfg, [e for _, e in muts if e is not None])
            path = os.path.join(tmp, "config%d.json" % i)
            with open(path, "wb") as f:
                f.write(text)
            # the data paths of CONFIG are relative to the directory it is run from, as for CONFIG itself
            outcome, rc, err = run(bin_path, path, os.path.join(tmp, "out%d" % i))
            counts[outcome] += 1
            if outcome not in ("exit0", "refused"):
                what = "; ".join(d for d, _ in muts)
                tail = " | ".join(err.strip().splitlines()[-3:])[:400]
                print("config %d (%s): %s, exit %s, %d stderr lines: %s" % (i, what, outcome, rc,
                                                                           len(err.splitlines()), tail))
                if a.keep:
                    shutil.copy(path, os.path.join(a.keep, "config%d.json" % i))
            shutil.rmtree(os.path.join(tmp, "out%d" % i), ignore_errors=True)
            os.unlink(path)
        print("BENCH faults name=mutate_configs configs=%d %s seed=%d"
              % (a.n, " ".join("%s=%d" % kv for kv in counts.items()), a.seed))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
