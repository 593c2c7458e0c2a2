#!/bin/sh
# cformer against PyTorch on the training step, side by side: for each shape, thread count and
# precision, `cformer bench` and `tools/torch_gpt.py --bench --sdpa` (PyTorch's fused attention;
# with --bf16 its bfloat16 autocast) run back to back in each round, pinned to the same cores
# (taskset -c 0..t-1), rounds interleaved so that a shared machine's slow spells hit both. Prints
# one BENCH line per run, then per case the medians and the median of the per-round ratios:
#   BENCH vs_torch shape=small threads=2 precision=bf16 rounds=3 cformer=8545 torch=8728 ratio=1.04 per_round=1.04,0.78,1.08
# Shapes: small = configs/enwik8-small.json (4L d256, B8 T256); medium = the same with 6 layers,
# d 512, 8 heads, d_ff 1024, B4 T512 (issues 16 and 17).
# Usage: tools/bench/vs_torch.sh [BUILD_DIR]
# Environment: SHAPES ("small medium"), THREADS ("2 16"), PRECISIONS ("fp32 bf16"), ROUNDS (3),
# STEPS (8), PYTHON (the interpreter with torch: /usr/bin/python3, else python3), OUT (a file that
# gets the BENCH lines too).
set -eu
bin=${1:-build}/cformer
[ -x "$bin" ] || { echo "vs_torch.sh: $bin missing: run make first" >&2; exit 2; }
py=${PYTHON:-}
if [ -z "$py" ]; then
  for p in /usr/bin/python3 python3; do
    if "$p" -c 'import torch' 2>/dev/null; then py=$p; break; fi
  done
fi
[ -n "$py" ] || { echo "vs_torch.sh: no python3 with torch (Debian: python3-torch)" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" - "$tmp/medium.json" <<'EOF'
import json, sys
c = json.load(open("configs/enwik8-small.json"))
c["model"].update(n_layers=6, d_model=512, n_heads=8, d_ff=1024, max_seq_len=512)
c["train"].update(seq_len=512, batch_size=4)
c["eval"]["ctx"] = 512
json.dump(c, open(sys.argv[1], "w"))
EOF
config_of() { case $1 in small) echo configs/enwik8-small.json ;; medium) echo "$tmp/medium.json" ;;
                          *) echo "vs_torch.sh: unknown shape $1 (small, medium)" >&2; exit 2 ;; esac; }
say() { echo "$*"; [ -z "${OUT:-}" ] || echo "$*" >> "$OUT"; }
steps=${STEPS:-8}
for r in $(seq "${ROUNDS:-3}"); do
  for s in ${SHAPES:-small medium}; do
    cfg=$(config_of "$s")
    for t in ${THREADS:-2 16}; do
      pin="taskset -c 0-$((t - 1))"
      for p in ${PRECISIONS:-fp32 bf16}; do
        c=$($pin env OMP_NUM_THREADS="$t" "$bin" bench "$cfg" --steps "$steps" --set train.precision="$p" |
            sed -n 's/^BENCH train_step .*tokens_per_s=\([0-9.]*\).*/\1/p')
        flag=""; [ "$p" = bf16 ] && flag=--bf16
        # shellcheck disable=SC2086
        y=$($pin "$py" tools/torch_gpt.py --config "$cfg" --bench --sdpa $flag --threads "$t" --steps "$steps" |
            sed -n 's/^BENCH torch_train_step .*tokens_per_s=\([0-9.]*\).*/\1/p')
        say "BENCH vs_torch_round round=$r shape=$s threads=$t precision=$p cformer=$c torch=$y"
        echo "$s $t $p $c $y" >> "$tmp/runs"
      done
    done
  done
done
awk '
function median(a, n,   i, j, x) {
  for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { x = a[j]; a[j] = a[j - 1]; a[j - 1] = x }
  return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{ k = $1 " " $2 " " $3; if (!(k in n)) order[++nk] = k; i = ++n[k]; c[k, i] = $4; y[k, i] = $5 }
END {
  for (o = 1; o <= nk; o++) {
    k = order[o]; split(k, f, " "); m = n[k]; per = ""
    for (i = 1; i <= m; i++) { a[i] = c[k, i]; b[i] = y[k, i]; q[i] = y[k, i] > 0 ? c[k, i] / y[k, i] : 0
                               per = per (i > 1 ? "," : "") sprintf("%.2f", q[i]) }
    printf "BENCH vs_torch shape=%s threads=%s precision=%s rounds=%d cformer=%.0f torch=%.0f ratio=%.2f per_round=%s\n",
           f[1], f[2], f[3], m, median(a, m), median(b, m), median(q, m), per
  }
}' "$tmp/runs" | while read -r line; do say "$line"; done
