#!/bin/sh
# Selective recompute (train.recompute) against storing everything and against full recompute:
# the training step of a deep stack of the kdoc-small width (d 256, 4 heads, seq 1024) with
# train.grad_checkpoint "none", and "blocks" with recompute "selective" and "full", in
# interleaved rounds. Prints one BENCH recompute line per run, then per mode the medians and
# their ratios to "none": time_ratio (issue 17: at most 1.25 for selective at 64 layers, batch 4)
# and mem_ratio, the arena's peak (activations) over none's (at most 1/3).
# Usage: tools/bench/recompute.sh [BUILD_DIR]
# Environment: LAYERS (64), BATCH (4), SEQ (1024), ROUNDS (3), STEPS (timed steps a run, 3),
# THREADS (--threads; default: OMP_NUM_THREADS or all).
set -eu
bin=${1:-build}/cformer
L=${LAYERS:-64} B=${BATCH:-4} T=${SEQ:-1024}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for r in $(seq "${ROUNDS:-3}"); do
  for mode in none selective full; do
    ck=blocks rc=$mode
    [ "$mode" = none ] && ck=none rc=selective
    line=$("$bin" bench configs/kdoc-small.json --steps "${STEPS:-3}" ${THREADS:+--threads "$THREADS"} \
      --set model.n_layers=$L --set model.max_seq_len=$T --set train.seq_len=$T --set train.batch_size=$B \
      --set "train.grad_checkpoint=\"$ck\"" --set "train.recompute=\"$rc\"" | grep '^BENCH train_step')
    step=$(echo "$line" | sed 's/.*step_ms=\([0-9.]*\).*/\1/')
    arena=$(echo "$line" | sed 's/.*arena_mb=\([0-9.]*\).*/\1/')
    rss=$(echo "$line" | sed 's/.*peak_rss_mb=\([0-9.]*\).*/\1/')
    echo "BENCH recompute round=$r mode=$mode layers=$L B=$B T=$T step_ms=$step arena_mb=$arena peak_rss_mb=$rss"
    echo "$mode $step $arena $rss" >> "$out"
  done
done
med() { grep "^$1 " "$out" | awk -v c="$2" '{print $c}' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
n_step=$(med none 2) n_arena=$(med none 3)
for mode in none selective full; do
  s=$(med $mode 2) a=$(med $mode 3) m=$(med $mode 4)
  echo "BENCH recompute mode=$mode layers=$L B=$B T=$T step_ms=$s arena_mb=$a peak_rss_mb=$m" \
       "time_ratio=$(echo "$s $n_step" | awk '{printf "%.3f", $1 / $2}') mem_ratio=$(echo "$a $n_arena" | awk '{printf "%.3f", $1 / $2}')"
done
