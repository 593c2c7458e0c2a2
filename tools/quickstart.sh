#!/bin/sh
# The main job end to end, for a newcomer (README, `make quickstart`): prepare data, train a small
# decoder for a couple of minutes with a progress line, evaluate bits per byte on held-out text,
# print a sample. Data: enwik8 when present or downloadable, else the kdoc corpus (built from a
# Debian package), else the license texts every Debian system ships.
# Usage: tools/quickstart.sh [BUILD_DIR]
set -eu
cd "$(dirname "$0")/.."
bin=${1:-build}/cformer
[ -x "$bin" ] || { echo "quickstart: $bin not built (run make)" >&2; exit 1; }

if [ -s data/enwik8/train.bin ]; then set=enwik8
elif [ -f data/enwik8.zip ] && tools/prepare_enwik8.sh data/enwik8.zip; then set=enwik8
elif [ -f data/enwik8 ] && tools/prepare_enwik8.sh data/enwik8; then set=enwik8
elif [ -s data/kdoc/train.bin ]; then set=kdoc
elif timeout 60 tools/prepare_enwik8.sh 2>/dev/null; then set=enwik8
elif tools/prepare_kdoc.sh; then set=kdoc
else sh tools/make_tiny_data.sh; set=tiny
fi
echo "quickstart: data/$set"

run=runs/quickstart-$(date +%Y%m%d-%H%M%S)
"$bin" train configs/quickstart.json --out "$run" \
  --set data.train=\"data/$set/train.bin\" --set data.valid=\"data/$set/valid.bin\" --set data.test=\"data/$set/test.bin\"
echo "quickstart: bits per byte on the first 200 KB of data/$set/test.bin"
"$bin" eval "$run/ckpt/latest.h5" --data "data/$set/test.bin" --bytes 200000
echo "quickstart: a sample"
"$bin" sample "$run/ckpt/latest.h5" --prompt "The " --tokens 300 --temperature 0.8 --top-k 40 --seed 1
echo
echo "quickstart: run directory $run (config.json, log.jsonl, ckpt/)"
