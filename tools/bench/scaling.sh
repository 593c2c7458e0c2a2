#!/bin/sh
# Thread scaling of one process's training step (issue 17: 16 threads at least 12x one, 75%
# efficiency): `cformer bench` of each CONFIG at 1, 2, 4, 8, 16 threads (those the machine has),
# each pinned to cores 0..t-1 with taskset when there is one, in interleaved rounds; prints
#   BENCH scaling config= threads= rounds= tokens_per_s= speedup= efficiency=
# (medians over the rounds; speedup against 1 thread, efficiency = speedup / threads), then with
# PROFILE=1 one profiled run at 2 threads and at the most threads, whose `serial:` lines and
# BENCH serial lines say how much of the step is serial and how busy the threads are in the
# parallel regions (docs/perf/README.md, "The serial part").
# Usage: tools/bench/scaling.sh [BUILD_DIR]
# Environment: CONFIGS ("enwik8-small enwik8-base"), THREADS ("1 2 4 8 16", capped at the cores),
# ROUNDS (3), STEPS (timed steps per run, 4), PROFILE (1), PIN (1: taskset when present).
set -eu
bin=${1:-build}/cformer
[ -x "$bin" ] || { echo "scaling: $bin not found (make first)" >&2; exit 2; }
cores=$(nproc)
threads=""
for t in ${THREADS:-1 2 4 8 16}; do [ "$t" -le "$cores" ] && threads="$threads $t"; done
rounds=${ROUNDS:-3}
steps=${STEPS:-4}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

pin() {   # pin T CMD...: run CMD on cores 0..T-1
  t=$1; shift
  if [ "${PIN:-1}" = 1 ] && command -v taskset >/dev/null 2>&1; then taskset -c "0-$((t - 1))" "$@"; else "$@"; fi
}

median() { sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

for cfg in ${CONFIGS:-enwik8-small enwik8-base}; do
  r=1
  while [ "$r" -le "$rounds" ]; do
    for t in $threads; do
      pin "$t" "$bin" bench "configs/$cfg.json" --threads "$t" --steps "$steps" |
        sed -n 's/^BENCH train_step .*tokens_per_s=\([0-9.]*\).*/\1/p' >> "$tmp/$cfg.$t"
    done
    r=$((r + 1))
  done
  one=$(median < "$tmp/$cfg.1" 2>/dev/null || echo 0)
  for t in $threads; do
    tps=$(median < "$tmp/$cfg.$t")
    awk -v c="$cfg" -v t="$t" -v r="$rounds" -v x="$tps" -v o="$one" 'BEGIN {
      s = o > 0 ? x / o : 0
      printf "BENCH scaling config=%s threads=%d rounds=%d tokens_per_s=%.0f speedup=%.2f efficiency=%.3f\n", c, t, r, x, s, s / t }'
  done
  if [ "${PROFILE:-1}" = 1 ]; then
    most=$(echo $threads | awk '{print $NF}')
    for t in $(echo 2 "$most" | tr ' ' '\n' | sort -nu); do
      [ "$t" -le "$cores" ] || continue
      pin "$t" "$bin" bench "configs/$cfg.json" --threads "$t" --steps "$steps" --profile |
        grep -E '^(serial:|  serial \+|BENCH serial)'
    done
  fi
done
