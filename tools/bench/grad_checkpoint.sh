#!/bin/sh
# BENCH grad_checkpoint lines (gradient checkpointing for deep stacks): peak RSS and step
# time of the training step with and without recomputation, for 64- and 128-layer stacks of the
# kdoc-small width (d 256, 4 heads) at seq 1024, batch 1. Each case runs in its own process, so
# peak RSS is that case's alone.
# Usage: tools/bench/grad_checkpoint.sh [BUILD_DIR] [LAYERS...]
# Environment: BATCH (train.batch_size, 1), THREADS (--threads; default: OMP_NUM_THREADS or all),
# STEPS (timed steps, 3), RECOMPUTE (train.recompute of the "blocks" runs: "full", as these lines
# have always measured; tools/bench/recompute.sh compares "selective" with it).
set -eu
bin=${1:-build}/cformer
shift || true
layers=${*:-64 128}
batch=${BATCH:-1}
for L in $layers; do
  for mode in none blocks; do
    "$bin" bench configs/kdoc-small.json --steps "${STEPS:-3}" ${THREADS:+--threads "$THREADS"} \
      --set model.n_layers=$L --set model.max_seq_len=1024 --set train.seq_len=1024 \
      --set train.batch_size=$batch --set eval.ctx=1024 --set "train.grad_checkpoint=\"$mode\"" \
      --set "train.recompute=\"${RECOMPUTE:-full}\"" \
      | sed -n "s/^BENCH train_step config=[^ ]* /BENCH grad_checkpoint layers=$L mode=$mode /p"
  done
done
