#!/bin/sh
# data/kdoc/{train,valid,test}.bin: about 21 MB of English technical prose (the reStructuredText
# sources of Debian's linux-doc-6.1 documentation), split 90/5/5 by byte offset.
# tools/make_kdoc.sh builds the corpus. Needs apt-get (it downloads one .deb).
# Usage: tools/prepare_kdoc.sh
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
maker=$root/tools/make_kdoc.sh
out=$root/data/kdoc
mkdir -p "$out"
bash "$maker" "$out/kdoc.txt"
"$root/tools/split_bytes.sh" "$out/kdoc.txt" "$out" 0.9 0.05
rm -f "$out/kdoc.txt"
