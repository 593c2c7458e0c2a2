#!/bin/sh
# BENCH blocks lines: what the block options cost per training step (docs/attention.md section 11).
#   positions: the kdoc-small shape (d 256, 4 heads, 4 layers) at seq 1024, batch 4, with learned,
#              rope and alibi positions, under full attention and under a window of 128 (the
#              masked kernel), so rope/learned and alibi/learned say what each scheme adds to a step;
#   kv heads:  d 512, 8 heads of 64, 4 layers at seq 1024, batch 2, with 8 (multi-head), 2
#              (grouped, n_heads / 4) and 1 (multi-query) key/value heads.
# Every case is one `cformer bench` process (median of STEPS steps after two warm-up steps). The
# cases run interleaved, round after round, so that a slow spell of a shared machine hits them
# alike; each ratio is taken within a round and the median over the rounds is printed:
#   BENCH blocks case=<name> step_ms=<median over rounds> tokens_per_s=<median over rounds>
#   BENCH blocks_ratio case=<name> over=<baseline> ratio=<median of per-round ratios> rounds=<n>
# Usage: tools/bench/blocks.sh [BUILD_DIR]
# Environment: ROUNDS (5), STEPS (5), THREADS (--threads; default: OMP_NUM_THREADS or all),
# CASES (names to run, default all), EXTRA (more --set options for every case, after its own: a
# quick check of the script on a small machine, e.g. EXTRA="--set train.seq_len=128 --set eval.ctx=128").
set -eu
bin=${1:-build}/cformer
rounds=${ROUNDS:-5}
steps=${STEPS:-5}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

pos="--set model.max_seq_len=1024 --set train.seq_len=1024 --set eval.ctx=1024 --set train.batch_size=4"
win="--set model.attention={\"type\":\"window\",\"window\":128}"
kv="--set model.d_model=512 --set model.n_heads=8 --set model.d_ff=2048 --set model.max_seq_len=1024 \
--set train.seq_len=1024 --set eval.ctx=1024 --set train.batch_size=2"
# name|overrides
cat >"$tmp/cases" <<EOF
learned|$pos --set model.position=learned
rope|$pos --set model.position=rope
alibi|$pos --set model.position=alibi
window_learned|$pos $win --set model.position=learned
window_rope|$pos $win --set model.position=rope
window_alibi|$pos $win --set model.position=alibi
mha|$kv --set model.n_kv_heads=8
gqa|$kv --set model.n_kv_heads=2
mqa|$kv --set model.n_kv_heads=1
EOF
ratios="rope:learned alibi:learned window_rope:window_learned window_alibi:window_learned gqa:mha mqa:mha"

r=1
while [ "$r" -le "$rounds" ]; do
  while IFS='|' read -r name sets; do
    case " ${CASES:-$name} " in *" $name "*) ;; *) continue ;; esac
    # shellcheck disable=SC2086
    line=$("$bin" bench configs/kdoc-small.json --steps "$steps" ${THREADS:+--threads "$THREADS"} $sets ${EXTRA:-} | grep '^BENCH train_step')
    ms=$(printf '%s\n' "$line" | sed -n 's/.* step_ms=\([0-9.]*\).*/\1/p')
    tps=$(printf '%s\n' "$line" | sed -n 's/.* tokens_per_s=\([0-9.]*\).*/\1/p')
    echo "$r $name $ms $tps" >>"$tmp/runs"
    echo "round $r $name step_ms=$ms" >&2
  done <"$tmp/cases"
  r=$((r + 1))
done

awk -v ratios="$ratios" '
function median(a, n,   i, j, t) {
  for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
  return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{ ms[$1, $2] = $3; tps[$1, $2] = $4; if (!($2 in seen)) { seen[$2] = 1; order[++nc] = $2 } if ($1 > nr) nr = $1 }
END {
  for (c = 1; c <= nc; c++) {
    name = order[c]; n = 0
    for (r = 1; r <= nr; r++) if ((r, name) in ms) { v[++n] = ms[r, name]; w[n] = tps[r, name] }
    printf "BENCH blocks case=%s step_ms=%.1f tokens_per_s=%.0f rounds=%d\n", name, median(v, n), median(w, n), n
  }
  k = split(ratios, pairs, " ")
  for (i = 1; i <= k; i++) {
    split(pairs[i], ab, ":"); n = 0
    for (r = 1; r <= nr; r++) if ((r, ab[1]) in ms && (r, ab[2]) in ms) v[++n] = ms[r, ab[1]] / ms[r, ab[2]]
    if (n) printf "BENCH blocks_ratio case=%s over=%s ratio=%.3f rounds=%d\n", ab[1], ab[2], median(v, n), n
  }
}' "$tmp/runs"
