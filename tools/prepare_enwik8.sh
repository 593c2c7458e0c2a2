#!/bin/sh
# enwik8 for cformer (docs/architecture.md section 11, docs/attention.md section 9.5): the first 10^8 bytes of an
# English Wikipedia dump (Hutter Prize), split by byte offset into the standard
# data/enwik8/{train,valid,test}.bin = first 90,000,000 / next 5,000,000 / last 5,000,000 bytes.
# Usage: tools/prepare_enwik8.sh [enwik8.zip | enwik8]
#   With no argument, downloads http://mattmahoney.net/dc/enwik8.zip (curl or wget).
# The unzipped file is checked: 100,000,000 bytes, md5 a1fa5ffddb56f4953e226637dabbb36a (published
# by Matt Mahoney with the file) and sha256 2b49720e...c024a8 (as computed and reported by others).
set -eu
URL=http://mattmahoney.net/dc/enwik8.zip
SIZE=100000000
MD5=a1fa5ffddb56f4953e226637dabbb36a
SHA256=2b49720ec4d78c3c9fabaee6e4179a5e997302b3a70029f30f2d582218c024a8
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/data/enwik8
die() { echo "prepare_enwik8: $*" >&2; exit 1; }
[ $# -le 1 ] || { echo "usage: $0 [enwik8.zip | enwik8]" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

src=${1:-}
if [ -z "$src" ]; then
  echo "downloading $URL"
  if command -v curl >/dev/null 2>&1; then
    curl -fL --retry 2 --connect-timeout 20 -o "$work/enwik8.zip" "$URL" || rm -f "$work/enwik8.zip"
  elif command -v wget >/dev/null 2>&1; then
    wget -q -T 20 -t 2 -O "$work/enwik8.zip" "$URL" || rm -f "$work/enwik8.zip"
  else
    die "neither curl nor wget is installed; download $URL yourself and run: $0 PATH/enwik8.zip"
  fi
  [ -s "$work/enwik8.zip" ] || die "cannot download $URL (no network?); fetch it elsewhere and run: $0 PATH/enwik8.zip"
  src=$work/enwik8.zip
fi
[ -f "$src" ] || die "no such file: $src"

# A zip starts with "PK\003\004"; anything else is taken to be enwik8 itself.
if [ "$(head -c 4 "$src" | od -An -c | tr -d ' \n')" = 'PK003004' ]; then
  if command -v unzip >/dev/null 2>&1; then
    unzip -p "$src" enwik8 > "$work/enwik8" || die "$src: no member named enwik8"
  elif command -v python3 >/dev/null 2>&1; then
    python3 -c 'import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("enwik8") as f, open(sys.argv[2], "wb") as o:
    shutil.copyfileobj(f, o)' "$src" "$work/enwik8" || die "$src: cannot extract enwik8"
  else
    die "$src is a zip, but neither unzip nor python3 is installed to extract it"
  fi
  file=$work/enwik8
else
  file=$src
fi

n=$(wc -c < "$file" | tr -d ' ')
[ "$n" -eq "$SIZE" ] || die "$src: enwik8 has $SIZE bytes, this has $n"
md5=$(md5sum "$file" | cut -d' ' -f1)
[ "$md5" = "$MD5" ] || die "$src: md5 $md5, expected $MD5 (not enwik8, or corrupted)"
sha=$(sha256sum "$file" | cut -d' ' -f1)
[ "$sha" = "$SHA256" ] || die "$src: sha256 $sha, expected $SHA256 (not enwik8, or corrupted)"
echo "enwik8: $n bytes, md5 $md5 and sha256 verified"

mkdir -p "$out"
head -c 90000000 "$file" > "$out/train.bin.tmp"
tail -c +90000001 "$file" | head -c 5000000 > "$out/valid.bin.tmp"
tail -c 5000000 "$file" > "$out/test.bin.tmp"
for s in train valid test; do
  mv "$out/$s.bin.tmp" "$out/$s.bin"
  printf '%s/%s.bin: %s bytes\n' "$out" "$s" "$(wc -c < "$out/$s.bin" | tr -d ' ')"
done
