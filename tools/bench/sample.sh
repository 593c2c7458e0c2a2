#!/bin/sh
# BENCH sample lines: generation through the cache (cformer sample) for every attention variant,
# on checkpoints of the enwik8-small shape (configs/enwik8-small.json: 4 layers, d_model 256,
# 4 heads, d_ff 1024) at context CTX (128), each trained here for STEPS steps (or reused).
#   - bytes/s generating BYTES (4096) bytes at each thread count of THREADS, from a prompt of CTX
#     bytes of held-out text (so every byte has a full context), cached and uncached (--uncached:
#     the full forward on the window for every byte, the sampler before the cache; OLD_BYTES of
#     them): the ratio new / old at each thread count;
#   - the cost of the first and of the last 1,024 bytes (first_1k_s, last_1k_s) and their ratio;
#   - peak memory generating LONG (65536) bytes (first round only) against BYTES, for every
#     variant (the issue asks window and infini to stay within 5%);
#   - xl and infini: bits per byte of EVAL_BYTES of held-out text scored through the cache (eval
#     --cached), by streamed evaluation with one column (eval --columns 1), and through the cache
#     with the memory reset at every call (eval --reset-memory).
# Rounds interleave the cases (ROUNDS, 3); the summary gives medians.
#
# Usage: tools/bench/sample.sh [BUILD_DIR]
# Environment: VARIANTS (all eight), STEPS (training steps per checkpoint, 300), CTX (128), BYTES
# (4096), LONG (65536), OLD_BYTES (256), ROUNDS (3), THREADS ("1 2"), EVAL_BYTES (200000), DATA (a
# directory with train.bin, valid.bin, test.bin: data/enwik8, else data/kdoc, else data/tiny, made by
# tools/make_tiny_data.sh), RUNS (checkpoints, reused when present: runs/bench-sample), OUT (the
# BENCH lines and the summary also go to OUT/sample.txt when set).
set -eu
cd "$(dirname "$0")/../.."
bin=${1:-build}/cformer
[ -x "$bin" ] || { echo "sample.sh: $bin missing: run make first" >&2; exit 1; }
VARIANTS=${VARIANTS:-"full window sparse_strided sparse_fixed linear performer xl infini"}
STEPS=${STEPS:-300}
CTX=${CTX:-128}
BYTES=${BYTES:-4096}
LONG=${LONG:-65536}
OLD_BYTES=${OLD_BYTES:-256}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-"1 2"}
EVAL_BYTES=${EVAL_BYTES:-200000}
RUNS=${RUNS:-runs/bench-sample}
if [ -z "${DATA:-}" ]; then
  for d in data/enwik8 data/kdoc data/tiny; do [ -f "$d/train.bin" ] && { DATA=$d; break; }; done
  [ -n "${DATA:-}" ] || { sh tools/make_tiny_data.sh >/dev/null; DATA=data/tiny; }
fi
mkdir -p "$RUNS"
log=$RUNS/lines.txt
: > "$log"
say() { echo "$*"; echo "$*" >> "$log"; }

# the attention entry and position kind of each variant: window, linear and performer decode an
# unbounded stream (no absolute positions: constant memory and cost per byte however long the
# text); full and sparse keep every position and take learned positions, bounded by CTX
attn_of() {
  case $1 in
    full) echo '{"type":"full"}' ;;
    window) echo '{"type":"window","window":32}' ;;
    sparse_strided) echo '{"type":"sparse_strided","stride":16}' ;;
    sparse_fixed) echo '{"type":"sparse_fixed","stride":16,"c":4}' ;;
    linear) echo '{"type":"linear"}' ;;
    performer) echo '{"type":"performer","features":64}' ;;
    xl) echo "{\"type\":\"xl\",\"mem_len\":$CTX}" ;;
    infini) echo '{"type":"infini","segment_len":32,"update":"delta"}' ;;
    *) echo "sample.sh: unknown variant $1" >&2; exit 1 ;;
  esac
}
pos_of() { case $1 in window|linear|performer) echo none ;; *) echo learned ;; esac; }

prompt=$RUNS/prompt.bin
head -c "$CTX" "$DATA/valid.bin" > "$prompt"

for v in $VARIANTS; do
  ck=$RUNS/$v/ckpt/latest.h5
  [ -f "$ck" ] && continue
  echo "sample.sh: training $v for $STEPS steps on $DATA" >&2
  "$bin" train configs/enwik8-small.json --out "$RUNS/$v" --quiet \
    --set "model.attention=$(attn_of "$v")" --set "model.position=\"$(pos_of "$v")\"" \
    --set model.max_seq_len="$CTX" --set train.seq_len="$CTX" --set eval.ctx="$CTX" --set eval.stride=$((CTX / 2)) \
    --set train.steps="$STEPS" --set train.checkpoint_every="$STEPS" --set train.eval_every=0 --set eval.bytes=4096 \
    --set train.warmup_steps=$((STEPS / 10 + 1)) --set train.lr=1e-3 --set train.sampling='"ordered"' \
    --set "data.train=\"$DATA/train.bin\"" --set "data.valid=\"$DATA/valid.bin\"" --set "data.test=\"$DATA/test.bin\"" \
    >/dev/null
done

# one sample run: the BENCH line tagged with the round and the case
run() {  # round variant threads case tokens [options]
  r=$1 v=$2 t=$3 c=$4 n=$5
  shift 5
  line=$(OMP_NUM_THREADS=$t "$bin" sample "$RUNS/$v/ckpt/latest.h5" --prompt-file "$prompt" --tokens "$n" \
         --seed "$r" "$@" 2>&1 >/dev/null | grep '^BENCH sample') || { echo "sample.sh: $v $c failed" >&2; exit 1; }
  say "$line case=$c round=$r"
}

for r in $(seq 1 "$ROUNDS"); do
  for v in $VARIANTS; do
    for t in $THREADS; do
      run "$r" "$v" "$t" new "$BYTES"
      run "$r" "$v" "$t" old "$OLD_BYTES" --uncached
    done
    [ "$r" -gt 1 ] || run "$r" "$v" 1 long "$LONG"        # memory: once is enough
  done
done

for v in xl infini; do
  case " $VARIANTS " in *" $v "*) ;; *) continue ;; esac
  ck=$RUNS/$v/ckpt/latest.h5
  s=$("$bin" eval "$ck" --data "$DATA/test.bin" --bytes "$EVAL_BYTES" --columns 1 | sed -n 's/^BENCH eval bpb=\([^ ]*\).*/\1/p')
  c=$("$bin" eval "$ck" --data "$DATA/test.bin" --bytes "$EVAL_BYTES" --cached | sed -n 's/^BENCH eval bpb=\([^ ]*\).*/\1/p')
  z=$("$bin" eval "$ck" --data "$DATA/test.bin" --bytes "$EVAL_BYTES" --reset-memory | sed -n 's/^BENCH eval bpb=\([^ ]*\).*/\1/p')
  say "BENCH sample_bpb variant=$v bytes=$EVAL_BYTES streamed_bpb=$s cached_bpb=$c reset_memory_bpb=$z" \
      "diff=$(awk -v a="$s" -v b="$c" 'BEGIN { d = a - b; printf "%.2e", d < 0 ? -d : d }')"
done

# medians over the rounds
echo "# summary (medians of $ROUNDS rounds)"
awk -v threads="$THREADS" '
  function get(line, key,   i, n, f) { n = split(line, f, " "); for (i = 1; i <= n; i++) if (index(f[i], key "=") == 1) return substr(f[i], length(key) + 2); return "" }
  function median(s,   a, n, i, j, t) { n = split(s, a, " "); for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t } return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  /^BENCH sample / {
    v = get($0, "variant"); c = get($0, "case"); t = get($0, "threads"); seen[v] = 1
    k = v SUBSEP c SUBSEP t
    bps[k] = bps[k] " " get($0, "bytes_per_s"); rss[k] = rss[k] " " get($0, "peak_rss_mb")
    if (c == "new") { f[k] = f[k] " " get($0, "first_1k_s"); l[k] = l[k] " " get($0, "last_1k_s") }
  }
  END {
    for (v in seen) {
      nt = split(threads, T, " ")
      for (i = 1; i <= nt; i++) {
        k = v SUBSEP "new" SUBSEP T[i]
        if (!(k in bps)) continue
        fm = median(f[k]); lm = median(l[k])
        printf "BENCH sample_summary variant=%s threads=%s bytes_per_s=%.1f first_1k_s=%.4f last_1k_s=%.4f last_over_first=%.3f\n", v, T[i], median(bps[k]), fm, lm, (fm > 0 ? lm / fm : 0)
      }
      for (i = 1; i <= nt; i++) {
        n1 = median(bps[v SUBSEP "new" SUBSEP T[i]]); o1 = median(bps[v SUBSEP "old" SUBSEP T[i]])
        printf "BENCH sample_speedup variant=%s threads=%s new_bytes_per_s=%.1f old_bytes_per_s=%.1f ratio=%.1f\n", v, T[i], n1, o1, (o1 > 0 ? n1 / o1 : 0)
      }
      a = median(rss[v SUBSEP "new" SUBSEP 1]); b = median(rss[v SUBSEP "long" SUBSEP 1])
      printf "BENCH sample_memory variant=%s peak_rss_mb_short=%.1f peak_rss_mb_long=%.1f long_over_short=%.3f\n", v, a, b, (a > 0 ? b / a : 0)
    }
  }' "$log" | sort | tee -a "$log"
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT"; cp "$log" "$OUT/sample.txt"; fi
