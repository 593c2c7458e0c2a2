#!/bin/sh
# Split a byte file into OUTDIR/{train,valid,test}.bin by byte offset: the first train_frac of the
# bytes, the next valid_frac, and the rest as test (docs/architecture.md section 11).
# Usage: tools/split_bytes.sh FILE OUTDIR [train_frac valid_frac]     (default 0.9 0.05)
# Sizes are n*frac rounded to the nearest byte; every split must get at least one byte.
set -eu
usage() { echo "usage: $0 FILE OUTDIR [train_frac valid_frac]   (default 0.9 0.05; test gets the rest)" >&2; exit 2; }
[ $# -eq 2 ] || [ $# -eq 4 ] || usage
file=$1 out=$2 tf=${3:-0.9} vf=${4:-0.05}
[ -f "$file" ] || { echo "$0: no such file: $file" >&2; exit 2; }
n=$(wc -c < "$file" | tr -d ' ')
# awk, not the shell, for the fractions; it also rejects what is not a number in (0, 1).
sizes=$(awk -v n="$n" -v tf="$tf" -v vf="$vf" 'BEGIN {
  if (tf !~ /^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$/ || vf !~ /^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$/) exit 1
  if (tf <= 0 || vf <= 0 || tf + vf >= 1) exit 1
  t = int(n * tf + 0.5); v = int(n * vf + 0.5)
  if (t < 1 || v < 1 || n - t - v < 1) exit 1
  printf "%d %d %d\n", t, v, n - t - v }') || {
  echo "$0: cannot split $n bytes as train $tf, valid $vf, test the rest (fractions in (0, 1) with a sum below 1, each split at least 1 byte)" >&2
  exit 2; }
set -- $sizes
mkdir -p "$out"
head -c "$1" "$file" > "$out/train.bin"
tail -c +"$(($1 + 1))" "$file" | head -c "$2" > "$out/valid.bin"
tail -c "$3" "$file" > "$out/test.bin"
for s in train valid test; do
  printf '%s/%s.bin: %s bytes\n' "$out" "$s" "$(wc -c < "$out/$s.bin" | tr -d ' ')"
done
