#!/bin/sh
# data/tiny/{train,valid,test}.bin: about 240 KB of English text for smoke tests (configs/tiny.json),
# built offline from the license texts in /usr/share/common-licenses, which Debian's essential
# base-files package installs on every system. Each file is split 90/5/5 by byte offset and the
# pieces are concatenated (files in C-locale name order), so all three splits hold every license
# rather than the test split being one of them. Deterministic for a given base-files version.
# Usage: tools/make_tiny_data.sh [OUTDIR]      (default data/tiny in the repository)
set -eu
src=/usr/share/common-licenses
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/data/tiny}
[ -d "$src" ] || { echo "make_tiny_data: $src not found (it comes with Debian's base-files)" >&2; exit 1; }
mkdir -p "$out"
: > "$out/train.bin"; : > "$out/valid.bin"; : > "$out/test.bin"
found=0
for f in $(cd "$src" && LC_ALL=C ls); do
  p=$src/$f
  # GPL, LGPL and GFDL are symlinks to a versioned file: count each text once
  [ -f "$p" ] && [ ! -L "$p" ] || continue
  n=$(wc -c < "$p" | tr -d ' ')
  t=$((n * 90 / 100)) v=$((n * 5 / 100))
  head -c "$t" "$p" >> "$out/train.bin"
  tail -c +"$((t + 1))" "$p" | head -c "$v" >> "$out/valid.bin"
  tail -c +"$((t + v + 1))" "$p" >> "$out/test.bin"
  found=$((found + 1))
done
[ "$found" -gt 0 ] || { echo "make_tiny_data: no license texts in $src" >&2; exit 1; }
for s in train valid test; do
  printf '%s/%s.bin: %s bytes\n' "$out" "$s" "$(wc -c < "$out/$s.bin" | tr -d ' ')"
done
echo "from $found files of $src, sha256 of train.bin $(sha256sum "$out/train.bin" | cut -d' ' -f1)"
