#!/bin/sh
# English -> German parallel corpus from the gettext message catalogs (.mo) that Debian packages
# ship in usr/share/locale/de/LC_MESSAGES, for the encoder-decoder (configs/translate-en-de.json).
#
#   tools/make_mo_corpus.sh [OUTDIR]          default OUTDIR: data/mo-en-de
#
# Steps: apt-get download each package of the fixed list below (the versions of Debian 12
# "bookworm" that the corpus was made from; see "Versions"), unpack its German catalogs, decode
# them with msgunfmt (package gettext), and turn every message into a pair msgid -> msgstr:
#   - the header entry (empty msgid), entries with an empty msgstr and fuzzy entries are dropped
#     (msgfmt leaves fuzzy entries out of .mo files already; a "#, fuzzy" flag is honoured anyway);
#   - plural forms: msgid (the singular) -> msgstr[0];
#   - the message context (msgctxt) is dropped; format strings (%s, %d, ${var}) are kept verbatim;
#   - pairs whose translation equals the source ("%s: %s", "--help") are dropped: they are not
#     translations and would inflate exact match;
#   - one translation per source: when packages (or contexts) translate the same msgid
#     differently, the most frequent msgstr wins, ties to the smallest in byte order.
# Splits are by source, so the same English message never appears in two splits: a source goes
# to valid when the first 8 hex digits of its SHA-256, as a number, are 0..39 mod 1000, to test
# at 40..79, else to train (about 4% / 4% / 92%). Each file is ordered by that hash.
#
# Output: OUTDIR/{train,valid,test}.txt as pair files (include/cformer/pairs.h: SOURCE TAB TARGET
# per line, escapes \t \n \\), OUTDIR/MANIFEST (package versions, .mo SHA-256s, counts, output
# SHA-256s). Downloads go to OUTDIR/debs and are reused.
#
# Versions: each package is fetched as name=version. Debian's archive keeps only the newest
# bookworm version of a package, so a pinned version of a package that gets a point or security
# update disappears; the script then stops and names it. CF_MO_ANY_VERSION=1 takes the archive's
# current version instead (the MANIFEST records which); the catalogs rarely change in such
# updates, and the MANIFEST's SHA-256s of the outputs tell whether the corpus did.
# Needs: apt-get (with bookworm sources), dpkg-deb, msgunfmt (apt-get install gettext), python3.
set -eu

OUT=${1:-data/mo-en-de}
PACKAGES="
acl=2.3.1-3
adduser=3.134
apt=2.6.2
aspell=0.60.8-4+b1
attr=1:2.5.1-4
bash=5.2.15-2+b13
binutils-common=2.40-2
bison=2:3.8.2+dfsg-1+b1
coreutils=9.1-1
cpio=2.13+dfsg-7.1
debconf-i18n=1.5.82
diffutils=1:3.8-4
dpkg=1.21.23
e2fsprogs-l10n=1.47.0-2
enscript=1.6.5.90-3+b1
findutils=4.9.0-4
gawk=1:5.2.1-2
gettext=0.21-12
gettext-base=0.21-12
grep=3.8-5
hunspell=1.7.1-1
kbd=2.5.1-1+b1
libc-l10n=2.36-9+deb12u14
login=1:4.13+dfsg1-1+deb12u2
m4=1.4.19-3
make=4.3-4.1
man-db=2.11.2-2
nano=7.2-1+deb12u1
procps=2:4.0.2-3
psmisc=23.6-1
quota=4.06-1+b2
sed=4.9-1+deb12u1
sharutils=1:4.15.2-9
sudo=1.9.13p3-1+deb12u4
tar=1.34+dfsg-1.2+deb12u1
texinfo=6.8-6+b1
util-linux-locales=2.38.1-5+deb12u3
wdiff=1.2.2-5
wget=1.21.3-1+deb12u1
xz-utils=5.4.1-1+deb12u2
"

for tool in apt-get dpkg-deb msgunfmt python3; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "make_mo_corpus: $tool not found (msgunfmt: apt-get install gettext)" >&2; exit 2; }
done

mkdir -p "$OUT/debs" "$OUT/po"
DEBS=$(cd "$OUT/debs" && pwd)
for spec in $PACKAGES; do
  name=${spec%%=*}
  ver=${spec#*=}
  # apt-get download names files name_version_arch.deb with ':' in the version as %3a
  if ls "$DEBS/${name}_"*.deb >/dev/null 2>&1; then continue; fi
  if ! (cd "$DEBS" && apt-get download -q "$spec" >/dev/null 2>&1); then
    if [ "${CF_MO_ANY_VERSION:-0}" = 1 ]; then
      (cd "$DEBS" && apt-get download -q "$name" >/dev/null 2>&1) || {
        echo "make_mo_corpus: apt-get download $name failed (no network or no bookworm sources?)" >&2; exit 1; }
    else
      echo "make_mo_corpus: $spec is not in the archive (a newer version replaced it?); rerun with" \
           "CF_MO_ANY_VERSION=1 to take the current version, or apt-get update first" >&2
      exit 1
    fi
  fi
done

# unpack the German catalogs and decode them: po/<package>__<domain>.po
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
rm -f "$OUT/po/"*.po
for deb in "$DEBS"/*.deb; do
  pkg=$(dpkg-deb -f "$deb" Package)
  dpkg-deb -x "$deb" "$TMP/$pkg"
  for mo in "$TMP/$pkg"/usr/share/locale/de/LC_MESSAGES/*.mo; do
    [ -e "$mo" ] || continue
    # msgunfmt warns about \a, \b, \v escapes in a few messages (kept verbatim): show only failures
    msgunfmt --no-wrap -o "$OUT/po/${pkg}__$(basename "$mo" .mo).po" "$mo" 2>"$TMP/msgunfmt.err" || {
      cat "$TMP/msgunfmt.err" >&2; echo "make_mo_corpus: msgunfmt failed on $mo ($pkg)" >&2; exit 1; }
  done
done

python3 - "$OUT" "$DEBS" "$TMP" <<'PY'
import collections, hashlib, os, re, subprocess, sys

out, debs, tmp = sys.argv[1], sys.argv[2], sys.argv[3]
ESC = {b"n": b"\n", b"t": b"\t", b"r": b"\r", b"a": b"\a", b"b": b"\b", b"f": b"\f", b"v": b"\v",
       b"\\": b"\\", b'"': b'"', b"'": b"'", b"?": b"?"}

def c_unquote(s):
    """the bytes of one quoted PO string (C escapes)"""
    s = s.strip()
    assert s[:1] == b'"' and s[-1:] == b'"', s
    s, o, i = s[1:-1], bytearray(), 0
    while i < len(s):
        c = s[i:i + 1]
        if c != b"\\":
            o += c; i += 1; continue
        e = s[i + 1:i + 2]
        if e in ESC:
            o += ESC[e]; i += 2
        elif e == b"x":
            m = re.match(rb"[0-9a-fA-F]+", s[i + 2:]); o.append(int(m.group(), 16) & 255); i += 2 + len(m.group())
        elif e.isdigit():
            m = re.match(rb"[0-7]{1,3}", s[i + 1:]); o.append(int(m.group(), 8) & 255); i += 1 + len(m.group())
        else:
            raise ValueError("bad escape %r" % s)
    return bytes(o)

def entries(path):
    """(msgid, msgstr, fuzzy) of each entry; plural entries give msgstr[0]"""
    cur, key, fuzzy = {}, None, False
    def flush():
        if "msgid" in cur:
            yield cur.get("msgid"), cur.get("msgstr", cur.get("msgstr[0]", b"")), fuzzy
    lines = open(path, "rb").read().split(b"\n") + [b""]
    for line in lines:
        if not line.strip():
            yield from flush(); cur, key, fuzzy = {}, None, False
        elif line.startswith(b"#,"):
            fuzzy |= b"fuzzy" in line
        elif line.startswith(b"#"):
            continue
        elif line.startswith(b'"'):
            cur[key] += c_unquote(line)
        else:
            kw, rest = line.split(b" ", 1)
            key = kw.decode()
            cur[key] = c_unquote(rest)

def charset(header):
    m = re.search(rb"charset=([-\w]+)", header)
    return m.group(1).decode() if m else "UTF-8"

votes = collections.defaultdict(collections.Counter)
stats = collections.Counter()
catalogs = []
for name in sorted(os.listdir(os.path.join(out, "po"))):
    path = os.path.join(out, "po", name)
    ents = list(entries(path))
    cs = "UTF-8"
    for mid, mstr, _ in ents:
        if mid == b"":
            cs = charset(mstr)
    n = 0
    for mid, mstr, fuzzy in ents:
        if mid == b"":
            continue
        stats["entries"] += 1
        if fuzzy:
            stats["fuzzy"] += 1; continue
        if mstr == b"":
            stats["untranslated"] += 1; continue
        src = mid.decode(cs).encode("utf-8")
        tgt = mstr.decode(cs).encode("utf-8")
        if src == tgt:
            stats["identical"] += 1; continue
        votes[src][tgt] += 1
        n += 1
    pkg, dom = name[:-3].split("__")
    mo = os.path.join(tmp, pkg, "usr/share/locale/de/LC_MESSAGES", dom + ".mo")
    catalogs.append((pkg, dom, cs, n, hashlib.sha256(open(mo, "rb").read()).hexdigest()))

def esc(b):
    return b.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n")

splits = {"train": [], "valid": [], "test": []}
for src, c in votes.items():
    best = max(c.values())
    tgt = min(t for t, k in c.items() if k == best)
    stats["conflicting"] += len(c) > 1
    h = hashlib.sha256(src).hexdigest()
    b = int(h[:8], 16) % 1000
    splits["valid" if b < 40 else "test" if b < 80 else "train"].append((h, src, tgt))

sums = {}
for name, rows in splits.items():
    rows.sort()
    p = os.path.join(out, name + ".txt")
    with open(p, "wb") as f:
        for _, s, t in rows:
            f.write(esc(s) + b"\t" + esc(t) + b"\n")
    sums[name] = hashlib.sha256(open(p, "rb").read()).hexdigest()

vers = {}
for deb in sorted(os.listdir(debs)):
    info = subprocess.run(["dpkg-deb", "-f", os.path.join(debs, deb), "Package", "Version"],
                          capture_output=True, text=True, check=True).stdout.split("\n")
    vers[info[0].split(": ", 1)[1]] = info[1].split(": ", 1)[1]

with open(os.path.join(out, "MANIFEST"), "w") as f:
    f.write("# tools/make_mo_corpus.sh: English -> German pairs from Debian gettext catalogs\n")
    f.write("packages (%d):\n" % len(vers))
    for p, v in sorted(vers.items()):
        f.write("  %s=%s\n" % (p, v))
    f.write("catalogs (package, domain, charset, pairs kept, sha256 of the .mo):\n")
    for c in catalogs:
        f.write("  %s %s %s %d %s\n" % c)
    f.write("entries %d: fuzzy %d, untranslated %d, translation = source %d; distinct sources %d "
            "(with conflicting translations %d)\n" % (stats["entries"], stats["fuzzy"], stats["untranslated"],
                                                       stats["identical"], len(votes), stats["conflicting"]))
    for name in ("train", "valid", "test"):
        rows = splits[name]
        nb = sum(len(s) + len(t) for _, s, t in rows)
        f.write("%s.txt: %d pairs, %d bytes of text, sha256 %s\n" % (name, len(rows), nb, sums[name]))
print("make_mo_corpus: %s: train %d, valid %d, test %d pairs from %d catalogs of %d packages (MANIFEST)"
      % (out, len(splits["train"]), len(splits["valid"]), len(splits["test"]), len(catalogs), len(vers)))
PY
rm -rf "$OUT/po"
