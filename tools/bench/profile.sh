#!/bin/sh
# Profiles of the training step (cformer bench --profile) of the two shapes of issue 17: the
# enwik8-small config (4L d256, B8 T256) and 6L d512 (8 heads, d_ff 2048, B4 T512).
# Usage: tools/bench/profile.sh [BUILD_DIR]
# Environment: THREADS (--threads; default: OMP_NUM_THREADS or all), STEPS (timed steps, 5).
set -eu
bin=${1:-build}/cformer
run() { "$bin" bench configs/enwik8-small.json --profile --steps "${STEPS:-5}" ${THREADS:+--threads "$THREADS"} "$@"; }
run
run --set model.n_layers=6 --set model.d_model=512 --set model.n_heads=8 --set model.d_ff=2048 \
    --set model.max_seq_len=512 --set train.seq_len=512 --set train.batch_size=4
