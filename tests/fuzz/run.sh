#!/bin/sh
# make fuzz: runs each libFuzzer target SECONDS seconds (tests/fuzz/README.md) and prints one line a target,
#   BENCH fuzz target=T seconds=S runs=N crashes=C timeouts=H ooms=O in_libhdf5=L in_cformer=K not_again=A corpus=F
# The seeds of tests/fuzz/corpus/T are read, new inputs go to BUILD/corpus/T (kept between runs), the
# failing inputs to BUILD/artifacts/T/ (emptied first). Fork mode goes on after a failure, so C, H and
# O count failing inputs (several may be one bug). Each failing input is run again and placed by the
# first frame of its stack outside the sanitizers, libFuzzer and libc (names starting with __, the
# allocator, mem* and str*): L in libhdf5, K in cformer (src/, the harness, or a library it calls),
# A did not fail again. Exit status 1 when K > 0.
build=$1; seconds=$2; shift 2
status=0
tmp=$build/tmp          # the checkpoint target's scratch files; a crashed job leaves its own here
export UBSAN_OPTIONS=print_stacktrace=1
opts="-timeout=3 -rss_limit_mb=2048 -malloc_limit_mb=1024"

# where the failure of input $2 of target $1 happened: libhdf5, cformer (also when no frame says), or
# none (it did not fail again)
place() {
  out=$("$1" $opts "$2" 2>&1)
  printf '%s\n' "$out" | grep -qE '^==[0-9]+== ?ERROR|^SUMMARY|ALARM' || { echo none; return; }
  printf '%s\n' "$out" | grep -E '^ *#[0-9]+ ' |
    grep -vE ' in (__|fuzzer::|(malloc|calloc|realloc|free|abort|raise|mem[a-z]*|str[a-z]*) )|libc\.so|libFuzzer' |
    awk '/libhdf5/ { print "libhdf5"; found = 1; exit } / in / { print "cformer"; found = 1; exit } END { if (!found) print "cformer" }'
}

for bin in "$@"; do
  t=${bin##*/fuzz_}
  work=$build/corpus/$t; art=$build/artifacts/$t; log=$build/fuzz_$t.log
  rm -rf "$art" "$tmp"; mkdir -p "$work" "$art" "$tmp"
  dict=; [ -f "tests/fuzz/$t.dict" ] && dict=-dict=tests/fuzz/$t.dict
  TMPDIR=$tmp "$bin" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 $opts \
    -max_total_time="$seconds" -artifact_prefix="$art/" $dict "$work" "tests/fuzz/corpus/$t" >"$log" 2>&1
  # the last progress line: "#RUNS: cov: ... corp: F exec/s ... oom/timeout/crash: O/H/C time: ..."
  last=$(grep -E '^#[0-9]+: cov:' "$log" | tail -1)
  if [ -z "$last" ]; then
    echo "fuzz $t: no progress line; the log $log ends:"; tail -5 "$log"; status=1; continue
  fi
  runs=$(printf '%s\n' "$last" | sed -n 's/^#\([0-9]*\):.*/\1/p')
  corp=$(printf '%s\n' "$last" | sed -n 's/.* corp: \([0-9]*\).*/\1/p')
  counts=$(printf '%s\n' "$last" | sed -n 's#.*oom/timeout/crash: \([0-9]*\)/\([0-9]*\)/\([0-9]*\).*#\1 \2 \3#p')
  ooms=$(echo $counts | cut -d' ' -f1) timeouts=$(echo $counts | cut -d' ' -f2) crashes=$(echo $counts | cut -d' ' -f3)
  hdf5=0 ours=0 again=0
  for f in "$art"/*; do
    [ -f "$f" ] || continue
    where=$(TMPDIR=$tmp place "$bin" "$f")
    case $where in
      libhdf5) hdf5=$((hdf5 + 1)) ;;
      cformer) ours=$((ours + 1)); echo "  in cformer: $bin $f" ;;
      *) again=$((again + 1)); echo "  did not fail again: $bin $f" ;;
    esac
  done
  echo "BENCH fuzz target=$t seconds=$seconds runs=$runs crashes=$crashes timeouts=$timeouts ooms=$ooms" \
       "in_libhdf5=$hdf5 in_cformer=$ours not_again=$again corpus=$corp"
  [ $hdf5 -gt 0 ] && echo "  $hdf5 failing inputs inside libhdf5 (tests/fuzz/README.md): $art/"
  [ $ours -gt 0 ] && status=1
done
rm -rf "$tmp"
exit $status
