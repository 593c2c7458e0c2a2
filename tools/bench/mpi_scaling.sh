#!/bin/bash
# Data-parallel scaling of the training step: on one machine of CORES cores (16), the
# training step of CONFIG (configs/enwik8-base.json, global batch train.batch_size) as
#   1 process x CORES threads (no mpirun), then 1, 2, 4, 8 ranks x CORES/ranks threads
# under mpirun, each rank bound to its own cores. Prints the BENCH mpi lines of `cformer bench`
# (tokens_per_s of the whole job; allreduce_ms = per step, the time inside MPI for the gradient
# that backward did not hide: src/train/bench.c) and a table.
#
#   tools/bench/mpi_scaling.sh pack    here, on a machine with the package archive and the MPI build
#                                      (make MPI=1): puts what the run needs under .device/ (ignored
#                                      by git): .device/mpi-debs/ Open MPI's runtime packages
#                                      (apt-get download), .device/mpi-bin/ the MPI cformer binary
#                                      and the libraries it needs besides MPI and glibc
#   tools/bench/mpi_scaling.sh [run]   on the 16-core machine, from the repository root; uses the
#                                      mpirun on PATH when there is one, else unpacks .device/mpi-debs
#                                      with dpkg -x into MPI_PREFIX (/tmp/cformer-openmpi) and runs
#                                      that copy (OPAL_PREFIX, PATH, LD_LIBRARY_PATH); nothing is
#                                      written outside MPI_PREFIX and RESULTS
# Environment: CONFIG, CORES (16), STEPS (timed steps per case, 10), ROUNDS (3: the table gives medians;
# the cases take turns within a round), RANKS ("1 2 4 8"), USE_DEBS=1
# (the carried packages even where a system mpirun exists: how this was tested),
# CFORMER (the binary: .device/mpi-bin/cformer, else build-mpi/cformer), MPI_PREFIX,
# RESULTS (directory for the outputs: $OUT/mpi-scaling when $OUT is set, else runs/mpi-scaling).
set -u
cd "$(dirname "$0")/../.."
mode=${1:-run}
DEBS=.device/mpi-debs
BINDIR=.device/mpi-bin
PKGS="openmpi-bin openmpi-common libopenmpi3 libpmix2 libevent-core-2.1-7 libevent-pthreads-2.1-7 libhwloc15
      libmunge2 libfabric1 libucx0 libibverbs1 ibverbs-providers librdmacm1 libnl-3-200 libnl-route-3-200 libnuma1
      libpsm2-2 libpsm-infinipath1 libltdl7 libudev1 libatomic1"

if [ "$mode" = pack ]; then
  set -e
  [ -x build-mpi/cformer ] || { echo "mpi_scaling: build-mpi/cformer missing: make MPI=1 first" >&2; exit 1; }
  rm -rf "$DEBS" "$BINDIR"
  mkdir -p "$DEBS/glibc-2.31" "$BINDIR/lib"
  (cd "$DEBS" && apt-get download $PKGS)
  # Debian 12's libevent needs glibc 2.36; bullseye's (the same 2.1.12, glibc 2.25) for older systems
  st=$(mktemp -d)
  mkdir -p "$st/lists/partial" "$st/cache/archives/partial"
  echo "deb http://deb.debian.org/debian bullseye main" > "$st/sources.list"
  o="-o Dir::Etc::SourceList=$st/sources.list -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=$st/lists -o Dir::Cache=$st/cache"
  if apt-get $o update >/dev/null 2>&1; then
    v=$(apt-cache $o madison libevent-core-2.1-7 | awk -F'|' '/bullseye/ {gsub(/ /, "", $2); print $2; exit}')
    (cd "$DEBS/glibc-2.31" && apt-get $o download "libevent-core-2.1-7=$v" "libevent-pthreads-2.1-7=$v")
  else
    echo "mpi_scaling: bullseye's libevent not fetched: the run needs glibc >= 2.36 there" >&2
  fi
  rm -rf "$st"
  cp build-mpi/cformer "$BINDIR/"
  # every library the binary loads except glibc's and MPI's own (those come from the packages)
  ldd build-mpi/cformer | awk '$3 ~ /^\// {print $3}' | while read -r lib; do
    case $(basename "$lib") in
      libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|libresolv.so*|ld-linux*) ;;
      libmpi*|libopen-rte*|libopen-pal*|libhwloc*|libevent*|libudev*|libpmix*) ;;
      *) cp -L "$lib" "$BINDIR/lib/" ;;
    esac
  done
  du -sh "$DEBS" "$BINDIR"
  echo "carry: $DEBS $BINDIR"
  exit 0
fi

[ "$mode" = run ] || { echo "usage: tools/bench/mpi_scaling.sh [pack|run]" >&2; exit 2; }
CONFIG=${CONFIG:-configs/enwik8-base.json}
CORES=${CORES:-16}
STEPS=${STEPS:-10}
ROUNDS=${ROUNDS:-3}
RANKS=${RANKS:-"1 2 4 8"}
if [ -n "${OUT:-}" ]; then RESULTS=${RESULTS:-$OUT/mpi-scaling}; else RESULTS=${RESULTS:-runs/mpi-scaling}; fi
mkdir -p "$RESULTS"
if [ -z "${CFORMER:-}" ]; then
  if [ -x "$BINDIR/cformer" ]; then CFORMER=$BINDIR/cformer; else CFORMER=build-mpi/cformer; fi
fi
[ -d "$BINDIR/lib" ] && export LD_LIBRARY_PATH=$PWD/$BINDIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=passive

# ---- Open MPI: the system's, or the carried packages unpacked into a private prefix ----------------
if [ -n "${USE_DEBS:-}" ] || ! command -v mpirun >/dev/null 2>&1; then
  MPI_PREFIX=${MPI_PREFIX:-/tmp/cformer-openmpi}
  ls "$DEBS"/*.deb >/dev/null 2>&1 || { echo "mpi_scaling: no mpirun and no $DEBS/*.deb (run 'pack' where apt works)" >&2; exit 1; }
  # dpkg -x, or where there is no dpkg the same in Python (a .deb is an ar archive holding data.tar.xz)
  unpack() {
    if command -v dpkg >/dev/null 2>&1; then dpkg -x "$1" "$2"; return; fi
    python3 - "$1" "$2" <<'PY'
import io, sys, tarfile
deb, dest = sys.argv[1], sys.argv[2]
b = open(deb, "rb").read()
assert b[:8] == b"!<arch>\n", deb
i = 8
while i < len(b):
    name, size = b[i:i + 16].decode().strip().rstrip("/"), int(b[i + 48:i + 58])
    if name.startswith("data.tar"):
        tarfile.open(fileobj=io.BytesIO(b[i + 60:i + 60 + size])).extractall(dest)
    i += 60 + size + (size & 1)
PY
  }
  if [ ! -x "$MPI_PREFIX/usr/bin/orterun" ]; then
    mkdir -p "$MPI_PREFIX"
    for f in "$DEBS"/*.deb; do unpack "$f" "$MPI_PREFIX"; done
    glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
    if [ -n "$glibc" ] && [ "$(printf '%s\n2.36\n' "$glibc" | sort -V | head -1)" != 2.36 ]; then
      echo "mpi_scaling: glibc $glibc < 2.36: libevent from $DEBS/glibc-2.31"
      for f in "$DEBS"/glibc-2.31/*.deb; do unpack "$f" "$MPI_PREFIX"; done
    fi
    mkdir -p "$MPI_PREFIX/bin"
    ln -sf ../usr/bin/orterun "$MPI_PREFIX/bin/mpirun"
  fi
  L=$MPI_PREFIX/usr/lib/x86_64-linux-gnu
  export PATH=$MPI_PREFIX/bin:$MPI_PREFIX/usr/bin:$PATH OPAL_PREFIX=$MPI_PREFIX/usr OPAL_SYSCONFDIR=$MPI_PREFIX/etc/openmpi
  export LD_LIBRARY_PATH=$L:$MPI_PREFIX/lib/x86_64-linux-gnu:$L/openmpi/lib:$L/pmix2/lib:$LD_LIBRARY_PATH
  export HWLOC_PLUGINS_PATH=$MPI_PREFIX/no-hwloc-plugins   # hwloc's optional plugins need X11 and friends
  echo "mpi_scaling: Open MPI from $MPI_PREFIX (PMIx may warn that help-pcompress.txt is missing: harmless)"
fi
echo "mpirun: $(command -v mpirun) ($(mpirun --version 2>&1 | head -1))"
echo "cformer: $CFORMER; libmpi: $(ldd "$CFORMER" | awk '/libmpi/ {print $3}')"
lscpu | grep -E '^Model name|^CPU\(s\)|^Thread|^Core|^Socket|^NUMA node\(s\)' | sed 's/^/  /'

# ---- a probe: what this machine allows (binding, single-copy shared memory) -----------------------
BIND=""
for b in "--use-hwthread-cpus --bind-to hwthread" "--bind-to none"; do
  for copy in default none; do
    if [ $copy = none ]; then export OMPI_MCA_btl_vader_single_copy_mechanism=none; else unset OMPI_MCA_btl_vader_single_copy_mechanism; fi
    map=""; [ "$b" = "--bind-to none" ] || map="--map-by slot:PE=1"
    if timeout 120 mpirun -np 2 --oversubscribe $b $map "$CFORMER" bench configs/tiny.json --steps 1 >"$RESULTS/probe.out" 2>&1; then
      BIND=$b; break 2
    fi
  done
done
[ -n "$BIND" ] || { echo "mpi_scaling: mpirun -np 2 fails even unbound:" >&2; cat "$RESULTS/probe.out" >&2; exit 1; }
echo "mpirun options: $BIND${OMPI_MCA_btl_vader_single_copy_mechanism:+ (btl_vader_single_copy_mechanism=none)}"

# ---- the runs ----------------------------------------------------------------------------------------
# bound ranks pin their threads inside their own cores; unbound ones must not (every rank would
# put its first thread on CPU 0)
if [ "$BIND" = "--bind-to none" ]; then unset OMP_PROC_BIND OMP_PLACES; else export OMP_PROC_BIND=close OMP_PLACES=threads; fi
one() {   # name, command...: appends the run's BENCH mpi line to $RESULTS/$name.lines
  local name=$1; shift
  echo "== $name (round $round): $*"
  timeout 240 "$@" >"$RESULTS/$name.r$round.out" 2>&1
  local rc=$?
  grep '^BENCH' "$RESULTS/$name.r$round.out"
  [ $rc -eq 0 ] || { echo "   (exit $rc)"; tail -5 "$RESULTS/$name.r$round.out"; }
  grep '^BENCH mpi' "$RESULTS/$name.r$round.out" | tail -1 >>"$RESULTS/$name.lines"
}
pin="taskset -c 0-$((CORES - 1))"
$pin true 2>/dev/null || pin=""
names=("single-x$CORES")
for n in $RANKS; do names+=("ranks$n-x$((CORES / n))"); done
for name in "${names[@]}"; do rm -f "$RESULTS/$name.lines"; done
# the cases take turns, round after round, so that a slow spell of the machine falls on all of them
for round in $(seq 1 "$ROUNDS"); do
  one "single-x$CORES" env OMP_NUM_THREADS=$CORES $pin "$CFORMER" bench "$CONFIG" --steps "$STEPS" --threads "$CORES"
  for n in $RANKS; do
    t=$((CORES / n))
    if [ "$BIND" = "--bind-to none" ]; then map=""; else map="--map-by slot:PE=$t"; fi
    [ "$round" = 1 ] && [ -n "$map" ] && map="$map --report-bindings"
    one "ranks$n-x$t" mpirun -np "$n" $BIND $map -x OMP_NUM_THREADS=$t -x OMP_WAIT_POLICY -x LD_LIBRARY_PATH \
        ${OMP_PROC_BIND:+-x OMP_PROC_BIND -x OMP_PLACES} "$CFORMER" bench "$CONFIG" --steps "$STEPS" --threads "$t"
  done
done

# medians over the rounds of each case's tokens/s, step time and all-reduce time
med() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" | sort -g | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
echo
echo "medians of $ROUNDS rounds, $STEPS timed steps each, $CONFIG"
echo "| processes | ranks x threads | tokens/s | speed-up | step ms | all-reduce ms/step (share) | tokens/s of the rounds |"
echo "|---|---|---|---|---|---|---|"
base=""
for i in "${!names[@]}"; do
  f=$RESULTS/${names[$i]}.lines
  [ -s "$f" ] || continue
  r=$(sed -n 's/.* ranks=\([0-9]*\).*/\1/p' "$f" | head -1); th=$(sed -n 's/.* threads=\([0-9]*\).*/\1/p' "$f" | head -1)
  tps=$(med tokens_per_s <"$f"); ms=$(med step_ms <"$f"); ar=$(med allreduce_ms <"$f")
  all=$(sed -n 's/.* tokens_per_s=\([0-9]*\).*/\1/p' "$f" | paste -sd' ')
  [ -n "$base" ] || base=$tps
  how=mpirun; [ "$i" = 0 ] && how="plain"
  awk -v how="$how" -v r="$r" -v th="$th" -v tps="$tps" -v b="$base" -v ms="$ms" -v ar="$ar" -v all="$all" \
    'BEGIN { printf "| %s | %s x %s | %.0f | %.2f | %.1f | %.1f (%.1f%%) | %s |\n", how, r, th, tps, tps / b, ms, ar, 100 * ar / ms, all }'
done | tee "$RESULTS/table.md"
