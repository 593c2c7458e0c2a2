#!/bin/sh
# flip_bytes.sh BIN CKPT N [SEED]: N single-byte changes across a copy of checkpoint CKPT, one at a time
# (a random offset and a random new value that differs from the old, drawn from SEED, default 1), each
# followed by `BIN info COPY` under `timeout 20`, then the byte is put back. Counts:
#   refused   exit 2 with exactly one stderr line       multiline  exit 2 with more than one line
#   loaded    exit 0                                     crashed    killed by a signal (exit >= 128)
#   hung      timeout (exit 124)                         other      any other exit status
# and the changes that landed inside a weight dataset (/params/*) and how many of those were refused,
# from the datasets' byte ranges that h5py gives (/usr/bin/python3); without h5py those two are "na".
# Prints every change that was not refused, then
#   BENCH faults name=flip_bytes flips=N refused=... multiline=... loaded=... crashed=... hung=... other=...
#         in_weights=... in_weights_refused=... seed=SEED
set -u
[ $# -ge 3 ] || { echo "usage: $0 BIN CKPT N [SEED]" >&2; exit 2; }
bin=$1 ckpt=$2 n=$3 seed=${4:-1}
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT INT TERM
copy=$tmp/flip.h5
cp "$ckpt" "$copy" || exit 1
size=$(wc -c <"$copy")

# byte ranges [start, end) of the weight datasets, checked against the bytes found there
ranges=$tmp/ranges
if /usr/bin/python3 - "$ckpt" >"$ranges" 2>"$tmp/py.err" <<'EOF'
import sys
import h5py
path = sys.argv[1]
raw = open(path, "rb").read()
with h5py.File(path, "r") as f:
    for name, d in f["params"].items():
        off, n = d.id.get_offset(), d.id.get_storage_size()
        if off is None or raw[off:off + n] != d[()].astype("<f4").tobytes():
            sys.exit("params/%s: its bytes are not at the offset h5py gives" % name)
        print(off, off + n)
EOF
then weights=1; else weights=0; echo "flip_bytes: weight ranges unknown ($(tail -1 "$tmp/py.err")): in_weights=na" >&2; fi

# the changes: offset, new value (never the old one) and whether the offset lies in a weight dataset
od -An -v -tu1 -w1 "$copy" | awk -v n="$n" -v size="$size" -v seed="$seed" -v rf="$ranges" -v w="$weights" '
  BEGIN { srand(seed); k = 0; if (w) while ((getline line < rf) > 0) { split(line, r, " "); lo[k] = r[1]; hi[k++] = r[2] } }
  { old[NR - 1] = $1 }
  END {
    for (i = 0; i < n; i++) {
      off = int(rand() * size); v = (old[off] + 1 + int(rand() * 255)) % 256; inw = 0
      for (j = 0; j < k; j++) if (off >= lo[j] && off < hi[j]) inw = 1
      print off, old[off], v, inw
    }
  }' >"$tmp/plan"

byte() { printf "\\$(printf %03o "$1")"; }
refused=0 multiline=0 loaded=0 crashed=0 hung=0 other=0 inw=0 inw_refused=0
while read -r off old new in_w; do
  byte "$new" | dd of="$copy" bs=1 seek="$off" count=1 conv=notrunc 2>/dev/null
  timeout 20 "$bin" info "$copy" >/dev/null 2>"$tmp/err"
  rc=$?
  byte "$old" | dd of="$copy" bs=1 seek="$off" count=1 conv=notrunc 2>/dev/null
  lines=$(wc -l <"$tmp/err")
  if [ $rc -eq 2 ] && [ "$lines" -eq 1 ]; then what=refused; refused=$((refused + 1))
  elif [ $rc -eq 2 ]; then what=multiline; multiline=$((multiline + 1))
  elif [ $rc -eq 0 ]; then what=loaded; loaded=$((loaded + 1))
  elif [ $rc -eq 124 ]; then what=hung; hung=$((hung + 1))
  elif [ $rc -ge 128 ]; then what=crashed; crashed=$((crashed + 1))
  else what=other; other=$((other + 1)); fi
  if [ "$in_w" = 1 ]; then inw=$((inw + 1)); [ $what = refused ] && inw_refused=$((inw_refused + 1)); fi
  [ $what = refused ] || echo "offset $off: $old -> $new: $what (exit $rc, $lines stderr lines): $(head -c 300 "$tmp/err" | tr '\n' '|')"
done <"$tmp/plan"
cmp -s "$copy" "$ckpt" || echo "flip_bytes: the copy differs from $ckpt after the last change was put back" >&2
[ $weights = 1 ] || { inw=na; inw_refused=na; }
echo "BENCH faults name=flip_bytes flips=$n refused=$refused multiline=$multiline loaded=$loaded crashed=$crashed" \
     "hung=$hung other=$other in_weights=$inw in_weights_refused=$inw_refused seed=$seed"
