#!/bin/sh
# Runs every test binary at 1 and 2 threads, sums their RESULT lines, ends with "N passed, M failed".
build=$1; shift
pass=0; fail=0
# On a shared or small machine OpenMP's spinning waits can cost tenfold; results do not depend on it.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
for t in "$@"; do
  for th in 1 2; do
    out=$(OMP_NUM_THREADS=$th "$t" 2>&1); rc=$?
    res=$(printf '%s\n' "$out" | sed -n 's/^RESULT passed=\([0-9]*\) failed=\([0-9]*\)$/\1 \2/p' | tail -1)
    if [ -z "$res" ] || [ $rc -ne 0 ]; then
      printf '%s\n' "$out" | grep -E '^(FAIL|cformer|==|.*ERROR)' | head -20
      echo "FAIL $(basename "$t") threads=$th (exit $rc)"
      p=$(echo "$res" | cut -d' ' -f1); pass=$((pass + ${p:-0})); fail=$((fail + 1))
      continue
    fi
    p=${res% *}; f=${res#* }
    printf '%s\n' "$out" | grep '^FAIL' | sed "s/^/  [threads=$th] /"
    [ "$th" = 1 ] && printf '%s\n' "$out" | grep '^SKIP'
    echo "$(basename "$t") threads=$th: $p passed, $f failed"
    pass=$((pass + p)); fail=$((fail + f))
  done
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
