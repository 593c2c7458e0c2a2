#!/bin/sh
# data/kdoc/{train,valid,test}.bin: about 21 MB of English technical prose (the reStructuredText
# sources of Debian's linux-doc-6.1 documentation), split 90/5/5 by byte offset.
# The corpus is built by make_kdoc.sh: ../shared/data/make_kdoc.sh when that checkout is beside
# this repository, else the copy in data/make_kdoc.sh. Needs apt-get (it downloads one .deb).
# Usage: tools/prepare_kdoc.sh
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
maker=$root/../shared/data/make_kdoc.sh
[ -f "$maker" ] || maker=$root/data/make_kdoc.sh
[ -f "$maker" ] || { echo "prepare_kdoc: make_kdoc.sh not found (looked in ../shared/data and data/)" >&2; exit 1; }
out=$root/data/kdoc
mkdir -p "$out"
bash "$maker" "$out/kdoc.txt"
"$root/tools/split_bytes.sh" "$out/kdoc.txt" "$out" 0.9 0.05
rm -f "$out/kdoc.txt"
