#!/bin/sh
# kill9.sh BIN CONFIG N [SEED] [STEPS]: N training runs of CONFIG with a checkpoint after every step, each
# killed with SIGKILL at a random moment drawn from SEED (default 1): once the run has logged a random
# number of steps (0 to STEPS - 2), after a random part of one step's time (from an uninterrupted run),
# so that kills land in the start-up, in steps and in checkpoint writes whatever the machine's speed.
# Then each run is checked:
#   verified  RUN/ckpt/latest.h5 exists and `BIN info --verify` passes
#   resumed   `BIN train CONFIG --resume RUN` finished the run (STEPS steps, default 50)
#   bitwise   its final /params and /optimizer are bitwise those of the uninterrupted run (h5py under
#             /usr/bin/python3; without it `BIN eval` on data.valid must print the same line, "compare=eval")
# Runs killed before their first checkpoint cannot be resumed (no_checkpoint); runs that ended before the
# kill are counted as finished, runs that failed by themselves are listed. mid_save counts the kills that
# left a temporary checkpoint file (a save cut short), leftover_temps those still there after the resume.
# Prints every run that failed a check, then
#   BENCH faults name=kill9 runs=N killed=... mid_save=... no_checkpoint=... verified=... resumed=... bitwise=...
#         finished=... leftover_temps=... steps=STEPS step_ms=... seed=SEED compare=h5py|eval
set -u
[ $# -ge 3 ] || { echo "usage: $0 BIN CONFIG N [SEED] [STEPS]" >&2; exit 2; }
bin=$1 config=$2 n=$3 seed=${4:-1} steps=${5:-50}
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT INT TERM
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
set_args="--set train.checkpoint_every=1 --set train.steps=$steps --set train.eval_every=0 --set train.log_every=1 --quiet"

# the uninterrupted run, then the same again timed in milliseconds (the first warms the caches)
"$bin" train "$config" --out "$tmp/ref" $set_args >/dev/null 2>"$tmp/ref.err" || { cat "$tmp/ref.err"; exit 1; }
ref=$tmp/ref/ckpt/latest.h5
t0=$(date +%s%N)
"$bin" train "$config" --out "$tmp/timed" $set_args >/dev/null 2>&1
ms=$((($(date +%s%N) - t0) / 1000000))
rm -rf "$tmp/timed"

if /usr/bin/python3 -c "import h5py" 2>/dev/null; then compare=h5py; else compare=eval; fi
# 0 when the final checkpoint $1 holds the reference's weights and optimizer state to the bit
same() {
  if [ $compare = h5py ]; then
    /usr/bin/python3 - "$ref" "$1" <<'EOF'
import sys
import h5py
import numpy as np
def tensors(path):
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and name.split("/")[0] in ("params", "optimizer"):
                out[name] = np.asarray(obj[()])
        f.visititems(visit)
    return out
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
sys.exit(0 if a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a) else 1)
EOF
  else
    valid=$("$bin" info "$ref" | sed -n 's/^ *"valid": "\(.*\)",*$/\1/p')
    [ "$("$bin" eval "$ref" --data "$valid" | cut -d' ' -f1-4)" = "$("$bin" eval "$1" --data "$valid" | cut -d' ' -f1-4)" ]
  fi
}

# per run: the steps to wait for in log.jsonl, then the delay in seconds
step_ms=$((ms / steps))
awk -v n="$n" -v steps="$steps" -v ms="$step_ms" -v seed="$seed" \
  'BEGIN { srand(seed); for (i = 0; i < n; i++) printf "%d %.3f\n", int(rand() * (steps - 1)), rand() * ms / 1000 }' >"$tmp/moments"
killed=0 mid_save=0 none=0 verified=0 resumed=0 bitwise=0 finished=0 temps=0 i=0
while read -r after delay; do
  i=$((i + 1)); run=$tmp/run$i; ckpt=$run/ckpt/latest.h5
  "$bin" train "$config" --out "$run" $set_args >/dev/null 2>"$run.err" &
  pid=$!
  while [ "$(cat "$run/log.jsonl" 2>/dev/null | wc -l)" -lt "$after" ] && kill -0 $pid 2>/dev/null; do sleep 0.002; done
  sleep "$delay"
  kill -9 $pid 2>/dev/null
  wait $pid 2>/dev/null
  st=$?
  if [ $st -eq 137 ]; then killed=$((killed + 1))
  elif [ $st -eq 0 ]; then finished=$((finished + 1))
  else echo "run $i: exit $st before the kill: $(tr '\n' '|' <"$run.err")"; fi
  [ "$(ls -a "$run/ckpt" 2>/dev/null | grep -c '\.tmp\.')" -gt 0 ] && mid_save=$((mid_save + 1))
  if [ ! -e "$ckpt" ]; then none=$((none + 1)); rm -rf "$run"; continue; fi
  if "$bin" info --verify "$ckpt" >/dev/null 2>"$tmp/err"; then verified=$((verified + 1))
  else echo "run $i (killed ${delay}s after step $after): info --verify: $(tr '\n' '|' <"$tmp/err")"; fi
  step=$("$bin" info "$ckpt" 2>/dev/null | sed -n 's/^step *\([0-9]*\) of.*/\1/p')
  if [ "$step" != "$steps" ] && ! "$bin" train "$config" --resume "$run" $set_args >/dev/null 2>"$tmp/err"; then
    echo "run $i (killed ${delay}s after step $after at step $step): resume failed: $(tr '\n' '|' <"$tmp/err")"
  else
    resumed=$((resumed + 1))
    if same "$ckpt"; then bitwise=$((bitwise + 1))
    else echo "run $i (killed ${delay}s after step $after at step $step): the final weights differ from the uninterrupted run's"; fi
  fi
  left=$(ls -a "$run/ckpt" | grep -c '\.tmp\.')
  temps=$((temps + left))
  rm -rf "$run"
done <"$tmp/moments"
echo "BENCH faults name=kill9 runs=$n killed=$killed mid_save=$mid_save no_checkpoint=$none verified=$verified resumed=$resumed" \
     "bitwise=$bitwise finished=$finished leftover_temps=$temps steps=$steps step_ms=$step_ms seed=$seed compare=$compare"
