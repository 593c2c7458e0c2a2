#!/bin/sh
# Two builds of cformer side by side on the training step (cformer bench), in interleaved rounds
# (A, B, A, B, ...) so that a noisy or shared machine weighs on both alike: one BENCH compare line
# per run, then the medians and B/A of tokens/s for each shape.
# Usage: tools/bench/compare.sh BUILD_A BUILD_B
# Environment: THREADS (2), ROUNDS (3), STEPS (timed steps a run, 5). Shapes: the enwik8-small
# config (4L d256, B8 T256) and 6L d512 (8 heads, d_ff 2048, B4 T512), the two of issue 17.
# Each build runs with its own defaults (its own OpenMP wait policy, say).
set -eu
a=$1/cformer b=$2/cformer
out=$(mktemp)
trap 'rm -f "$out"' EXIT
shape() {
  case $1 in
    small) echo "" ;;
    d512) echo "--set model.n_layers=6 --set model.d_model=512 --set model.n_heads=8 --set model.d_ff=2048 --set model.max_seq_len=512 --set train.seq_len=512 --set train.batch_size=4" ;;
  esac
}
for r in $(seq "${ROUNDS:-3}"); do
  for s in small d512; do
    for which in A B; do
      bin=$a; [ "$which" = B ] && bin=$b
      # shellcheck disable=SC2046
      tps=$("$bin" bench configs/enwik8-small.json --steps "${STEPS:-5}" --threads "${THREADS:-2}" $(shape $s) |
            sed -n 's/^BENCH train_step .*tokens_per_s=\([0-9.]*\).*/\1/p')
      echo "BENCH compare round=$r shape=$s build=$which threads=${THREADS:-2} tokens_per_s=$tps"
      echo "$s $which $tps" >> "$out"
    done
  done
done
med() { grep "^$1 $2 " "$out" | awk '{print $3}' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for s in small d512; do
  ta=$(med $s A) tb=$(med $s B)
  echo "BENCH compare shape=$s threads=${THREADS:-2} rounds=${ROUNDS:-3} a_tokens_per_s=$ta b_tokens_per_s=$tb ratio=$(echo "$tb $ta" | awk '{printf "%.3f", $1 / $2}')"
done
