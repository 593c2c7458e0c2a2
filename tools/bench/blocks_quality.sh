#!/bin/sh
# Quality of the block options on kdoc at the enwik8-small budget (configs/kdoc-small.json: d 256,
# 4 layers, 4 heads, seq 256, batch 8, the same seed and cosine schedule): the GPT-2 block, the
# llama-style block (configs/llama-small.json's model keys) and each switch alone, trained for
# STEPS steps each, then scored on the validation split at 1x, 2x and 4x the training context
# (`cformer eval --ctx`, stride ctx/2; learned positions stop at 1x, their table's length).
# Parameters stay near the baseline's 3.29M: a gated feed-forward takes d_ff 682 (8/3 d), grouped
# key/value heads (2 of 4) give the d^2 per layer they save to d_ff 1152 (the llama block: 768).
# Writes OUT/<case>/ (the runs), OUT/table.md (the table), OUT/curves.png (training and validation
# curves, tools/plot_runs.py) and prints one line per case:
#   BENCH blocks_quality case=<name> params=<n> steps=<n> bpb_1x=<bpb> bpb_2x=<bpb|-> bpb_4x=<bpb|->
# Usage: tools/bench/blocks_quality.sh [OUT_DIR] [BUILD_DIR]
# Environment: STEPS (2500), THREADS (--threads), EVAL_BYTES (validation bytes scored at each
# context, default 0 = the whole split), VALID_BYTES (validation bytes scored during training,
# default EVAL_BYTES), CASES (names to run, default all), DATA (kdoc directory, default data/kdoc:
# tools/prepare_kdoc.sh), SETS (more --set options for every case, e.g. another schedule), JOBS
# (cases trained at once, each pinned with taskset to its own THREADS cores; default 1, unpinned).
# A quick check of the script:
#   STEPS=20 EVAL_BYTES=20000 CASES="gpt2 llama alibi" tools/bench/blocks_quality.sh /tmp/bq
set -eu
out=${1:-runs/blocks_quality}
bin=${2:-build}/cformer
steps=${STEPS:-2500}
bytes=${EVAL_BYTES:-0}
vbytes=${VALID_BYTES:-$bytes}
data=${DATA:-data/kdoc}
mkdir -p "$out"
# the warm-up of kdoc-small (100 steps) is longer than a short check's whole run
warm=100
[ "$steps" -lt 1000 ] && warm=$((steps / 10))

cat >"$out/cases" <<'EOF'
gpt2|GPT-2 block (kdoc-small)|
llama|llama-style: RMSNorm, rope, SwiGLU, no biases, 2 kv heads|--set model.norm=rmsnorm --set model.position=rope --set model.activation=silu --set model.glu=true --set model.bias=false --set model.n_kv_heads=2 --set model.d_ff=768
rmsnorm|RMSNorm|--set model.norm=rmsnorm
rope|rope|--set model.position=rope
alibi|ALiBi|--set model.position=alibi
swiglu|SwiGLU (d_ff 682)|--set model.activation=silu --set model.glu=true --set model.d_ff=682
geglu|GEGLU (d_ff 682)|--set model.activation=gelu --set model.glu=true --set model.d_ff=682
gqa|2 kv heads of 4 (d_ff 1152)|--set model.n_kv_heads=2 --set model.d_ff=1152
qk_norm|QK-norm|--set model.qk_norm=true
no_bias|no biases|--set model.bias=false
EOF

# one case: train, then score the validation split at 1x, 2x and 4x the training context; writes
# OUT/<name>.row (its table row) and OUT/<name>.bench (its BENCH line). $1: the first core when pinned.
run_case() {
  name=$1 title=$2 sets=$3 core=$4
  dir="$out/$name"
  rm -rf "$dir"
  pin=""
  [ -n "$core" ] && pin="taskset -c $core-$((core + ${THREADS:-1} - 1))"
  # shellcheck disable=SC2086
  $pin "$bin" train configs/kdoc-small.json --out "$dir" --quiet ${THREADS:+--threads "$THREADS"} \
    --set data.train="$data/train.bin" --set data.valid="$data/valid.bin" --set data.test= \
    --set train.steps="$steps" --set train.warmup_steps="$warm" --set train.checkpoint_every=0 \
    --set train.eval_every=$(( steps / 10 > 0 ? steps / 10 : 1 )) --set train.eval_tokens="$vbytes" \
    --set eval.bytes="$bytes" ${SETS:-} $sets 2>"$dir.log" >/dev/null || { cat "$dir.log" >&2; return 2; }
  params=$(sed -n 's/.*: \([0-9]*\) parameters.*/\1/p' "$dir.log" | head -1)
  b1=- b2=- b4=-
  for mult in 1 2 4; do
    ctx=$((256 * mult))
    # shellcheck disable=SC2086
    line=$($pin "$bin" eval "$dir/ckpt/latest.h5" --data "$data/valid.bin" --ctx "$ctx" \
      $( [ "$bytes" -gt 0 ] && echo --bytes "$bytes" ) 2>/dev/null | grep '^BENCH eval' || true)
    v=$(printf '%s\n' "$line" | sed -n 's/.* bpb=\([0-9.]*\).*/\1/p')
    [ -n "$v" ] || v=-
    case $mult in 1) b1=$v ;; 2) b2=$v ;; 4) b4=$v ;; esac
  done
  printf '%s|%s|%s|%s|%s\n' "$title" "$params" "$b1" "$b2" "$b4" >"$out/$name.row"
  echo "BENCH blocks_quality case=$name params=$params steps=$steps bpb_1x=$b1 bpb_2x=$b2 bpb_4x=$b4" \
    >"$out/$name.bench"
}

# JOBS cases at a time, each pinned to its own THREADS cores (JOBS x THREADS <= the cores)
jobs=${JOBS:-1}
names=""
slot=0
pids=""
while IFS='|' read -r name title sets; do
  case " ${CASES:-$name} " in *" $name "*) ;; *) continue ;; esac
  names="$names $name"
  if [ "$jobs" -le 1 ]; then
    run_case "$name" "$title" "$sets" "" || exit 2
    cat "$out/$name.bench"
    continue
  fi
  run_case "$name" "$title" "$sets" $((slot * ${THREADS:-1})) &
  pids="$pids $!"
  slot=$((slot + 1))
  if [ "$slot" -ge "$jobs" ]; then
    for p in $pids; do wait "$p" || exit 2; done
    pids="" slot=0
  fi
done <"$out/cases"
for p in $pids; do wait "$p" || exit 2; done

runs=""
labels=""
base=""
printf '| block | parameters | valid bpb, ctx 256 (trained) | ctx 512 | ctx 1024 | vs GPT-2 at 256 |\n|---|---|---|---|---|---|\n' >"$out/table.body"
for name in $names; do
  IFS='|' read -r title params b1 b2 b4 <"$out/$name.row"
  [ "$name" = gpt2 ] && base=$b1
  delta=-
  [ -n "$base" ] && [ "$b1" != - ] && delta=$(awk -v a="$b1" -v b="$base" 'BEGIN { printf "%+.4f", a - b }')
  printf '| %s | %s | %s | %s | %s | %s |\n' "$title" "$params" "$b1" "$b2" "$b4" "$delta" >>"$out/table.body"
  [ "$jobs" -le 1 ] || cat "$out/$name.bench"
  rm -f "$out/$name.row" "$out/$name.bench"
  runs="$runs $out/$name"
  labels="${labels:+$labels,}$name"
done

{
  echo "Validation bits per byte on kdoc after $steps steps (batch 8, seq 256, kdoc-small's seed and cosine schedule${SETS:+, with $SETS}),"
  echo "scored on ${bytes} bytes (0: the whole split) with stride ctx/2; '-': learned positions have no row past 256."
  echo
  cat "$out/table.body"
} >"$out/table.md"
rm -f "$out/table.body" "$out/cases"
cat "$out/table.md"
# shellcheck disable=SC2086
/usr/bin/python3 tools/plot_runs.py $runs --labels "$labels" -o "$out/curves.png"
