#!/usr/bin/env bash
# The attention-variant study (docs/study/README.md): trains every config of CONFIG_DIR, evaluates
# each checkpoint on the whole validation and test splits and against the evaluation context,
# measures the training step's speed and memory at several contexts, and writes OUT_DIR/report.md
# with the tables and OUT_DIR/*.png with the pictures (tools/plot_study.py).
#
# Every phase can be interrupted and rerun: training continues with --resume from the run's last
# checkpoint and finished runs are skipped; each measurement is kept in OUT_DIR/results/ with the
# command and the checkpoint (step and checksum) that produced it, and is redone only when either
# changes. So the same command, run again (on this machine or another that has OUT_DIR), finishes
# the study.
set -u
usage() {
    cat <<'EOF'
usage: tools/study.sh [options] CONFIG_DIR OUT_DIR
Run it where the configs' data paths lead (the repository root for configs/study).
  --threads N       threads for training and evaluation (default: every core, nproc)
  --bench-threads N threads of the speed table (default 2)
  --steps N         train.steps of every run (default: each config's own)
  --until N         stop every run at step N in this sitting (cformer train --until); runs not yet
                    at their last step are neither evaluated nor reported
  --eval-bytes N    score only the first N bytes of each split (default: the whole splits)
  --contexts LIST   evaluation contexts, comma-separated (default 128,256,512,1024,2048,4096)
  --bench-ctx LIST  training contexts of the speed table (default 512,2048,8192)
  --bench-tokens N  tokens per benchmarked step: batch = max(1, N / context) (default 4096)
  --bench-steps N   timed steps per benchmark, after 2 warm-up steps (default 5)
  --set KEY=VALUE   a config override for every run and benchmark (repeatable)
  --only PHASES     some of params,train,eval,bench,report, comma-separated (default: all, in that order)
  --publish DIR     after the report, copy report.md, the pictures, results.tsv and invocations.txt to DIR
  --cformer PATH    the cformer binary (default $CFORMER, else build/cformer)
Phases: params (each config's parameter count from a one-step throwaway run, against the full-attention
config's: more than 2% apart is reported), train, eval, bench, report.
OUT_DIR/reading.md, when it exists, is a reading of the numbers written by hand after the study: the
report shows it in its last section.
Writes OUT_DIR/runs/NAME (run directories), OUT_DIR/logs/NAME.*.log, OUT_DIR/results/NAME/*,
OUT_DIR/results.tsv, OUT_DIR/report.md and OUT_DIR/*.png. Exit status: 0 done, 2 bad usage or
input, 1 a run or measurement failed (the message names it; rerun to continue).
EOF
}
die() { echo "study: $*" >&2; exit 2; }
fail() { echo "study: $*" >&2; exit 1; }
note() { echo "study: $*"; }

is_uint() { case $1 in ''|*[!0-9]*) return 1 ;; *) [ "$1" -ge 1 ] 2>/dev/null ;; esac; }
is_list() { case $1 in ''|,*|*,|*,,*|*[!0-9,]*) return 1 ;; esac; for x in ${1//,/ }; do [ "$x" -ge 1 ] || return 1; done; }

THREADS=$(nproc 2>/dev/null || echo 1)
BENCH_THREADS=2 STEPS="" UNTIL="" EVAL_BYTES="" CONTEXTS=128,256,512,1024,2048,4096 BENCH_CTX=512,2048,8192
BENCH_TOKENS=4096 BENCH_STEPS=5 ONLY=params,train,eval,bench,report CF=${CFORMER:-build/cformer} PUBLISH=""
SETS=() POS=()
ARGV_ALL=("$@")
while [ $# -gt 0 ]; do
    a=$1
    case $a in
        --help|-h) usage; exit 0 ;;
        --threads|--bench-threads|--steps|--until|--eval-bytes|--bench-tokens|--bench-steps)
            [ $# -ge 2 ] && is_uint "$2" || die "$a: expected a positive integer, got \"${2:-}\""
            case $a in
                --threads) THREADS=$2 ;; --bench-threads) BENCH_THREADS=$2 ;; --steps) STEPS=$2 ;; --until) UNTIL=$2 ;;
                --eval-bytes) EVAL_BYTES=$2 ;; --bench-tokens) BENCH_TOKENS=$2 ;; --bench-steps) BENCH_STEPS=$2 ;;
            esac
            shift 2 ;;
        --contexts|--bench-ctx)
            [ $# -ge 2 ] && is_list "$2" || die "$a: expected positive integers separated by commas, got \"${2:-}\""
            if [ "$a" = --contexts ]; then CONTEXTS=$2; else BENCH_CTX=$2; fi
            shift 2 ;;
        --set)
            [ $# -ge 2 ] && case $2 in *=*) true ;; *) false ;; esac || die "--set: expected KEY=VALUE, got \"${2:-}\""
            SETS+=(--set "$2"); shift 2 ;;
        --only)
            [ $# -ge 2 ] || die "--only: expected phases, got \"\""
            for p in ${2//,/ }; do
                case $p in params|train|eval|bench|report) ;; *) die "--only: unknown phase \"$p\" (params, train, eval, bench, report)" ;; esac
            done
            ONLY=$2; shift 2 ;;
        --cformer) [ $# -ge 2 ] || die "--cformer: expected a path"; CF=$2; shift 2 ;;
        --publish) [ $# -ge 2 ] && [ -n "$2" ] || die "--publish: expected a directory"; PUBLISH=$2; shift 2 ;;
        -*) die "unknown option \"$a\" (tools/study.sh --help)" ;;
        *) POS+=("$a"); shift ;;
    esac
done
[ ${#POS[@]} -eq 2 ] || { usage >&2; die "expected CONFIG_DIR and OUT_DIR, got ${#POS[@]} arguments"; }
CONFIG_DIR=${POS[0]} OUT=${POS[1]}
[ -d "$CONFIG_DIR" ] || die "CONFIG_DIR: \"$CONFIG_DIR\" is not a directory"
CONFIGS=()
for f in "$CONFIG_DIR"/*.json; do [ -f "$f" ] && CONFIGS+=("$f"); done
[ ${#CONFIGS[@]} -gt 0 ] || die "CONFIG_DIR: no *.json in \"$CONFIG_DIR\""
[ -x "$CF" ] || die "--cformer: \"$CF\" is not an executable (build it with make)"
mkdir -p "$OUT/runs" "$OUT/logs" "$OUT/results" || die "OUT_DIR: cannot create \"$OUT\""
phase() { case ",$ONLY," in *",$1,"*) return 0 ;; esac; return 1; }

STEP_SET=()
[ -n "$STEPS" ] && STEP_SET=(--set "train.steps=$STEPS")
UNTIL_OPT=()
[ -n "$UNTIL" ] && UNTIL_OPT=(--until "$UNTIL")
BYTES_OPT=()
[ -n "$EVAL_BYTES" ] && BYTES_OPT=(--bytes "$EVAL_BYTES")
name_of() { local b=${1##*/}; echo "${b%.json}"; }

# The command line, machine and date of every invocation, for the report.
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "command=tools/study.sh ${ARGV_ALL[*]}"
    echo "machine=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1), $(nproc 2>/dev/null) cores"
    echo "cformer=$("$CF" --version 2>/dev/null)"
    echo "commit=$(git -C "$(dirname "$0")/.." rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "threads=$THREADS bench_threads=$BENCH_THREADS phases=$ONLY"
    echo
} >> "$OUT/invocations.txt"

# ---- signals ---------------------------------------------------------------------------------------
# cformer runs in its own session, in the background, and the study passes it one SIGTERM when the
# study itself gets SIGTERM, SIGINT (Ctrl-C) or SIGHUP: training then stops after its step with a
# checkpoint and the study stops with it. One signal only, because cformer takes a second as "stop
# at once" (losing the steps since the last checkpoint), and never none, so that no cformer goes on
# alone after the study is killed.
CHILD="" STOPPED=""
trap 'STOPPED=1; [ -n "$CHILD" ] && kill -TERM "$CHILD" 2>/dev/null' TERM INT HUP
SESSION=()
command -v setsid >/dev/null 2>&1 && SESSION=(setsid)
# child OUT ERR COMMAND...: runs COMMAND with stdout appended to OUT and stderr into ERR; its status
child() {
    local out=$1 err=$2 rc
    shift 2
    [ -z "$STOPPED" ] || fail "stopped by a signal; run the same command again to continue"
    "${SESSION[@]}" "$@" >> "$out" 2> "$err" &
    CHILD=$!
    while :; do   # a trapped signal ends wait early: wait again until the child is gone
        wait "$CHILD"; rc=$?
        kill -0 "$CHILD" 2>/dev/null || break
    done
    CHILD=""
    return $rc
}

# ---- parameter counts ------------------------------------------------------------------------------
# One step at 8 bytes into a throwaway run, which announces its parameter count: the counts of the
# models the configs build, before hours are spent training them.
params_all() {
    local c name dir p base="" bp="" worst=0 rc=0 lines=()
    dir=$OUT/params
    rm -rf -- "$dir"
    mkdir -p "$dir"
    for c in "${CONFIGS[@]}"; do
        name=$(name_of "$c")
        if ! "$CF" train "$c" --out "$dir/$name" --quiet --threads "$THREADS" "${SETS[@]}" --set train.steps=1 \
               --set train.seq_len=8 --set train.batch_size=1 --set train.eval_every=0 --set train.checkpoint_every=0 \
               --set 'data.valid=""' --set 'data.test=""' > "$dir/$name.log" 2>&1; then
            fail "$name: the one-step run for the parameter count failed: $(tail -1 "$dir/$name.log")"
        fi
        # the count the run announces ("training NAME: N parameters, ..."), else the checkpoint's
        p=$(sed -n 's/^cformer: training .*: \([0-9]*\) parameters, .*/\1/p' "$dir/$name.log" | head -1)
        [ -n "$p" ] || p=$("$CF" info "$dir/$name/ckpt/latest.h5" | awk '$1 == "total" { print $2 }')
        [ -n "$p" ] || fail "$name: no parameter count from cformer info"
        lines+=("$name $p")
        if [ -z "$base" ] && grep -q '^ *"type": "full"' "$dir/$name/config.json"; then base=$name bp=$p; fi
        rm -rf -- "${dir:?}/$name"
    done
    [ -n "$base" ] || { base=${lines[0]%% *} bp=${lines[0]##* }; }
    local l d
    for l in "${lines[@]}"; do
        name=${l%% *} p=${l##* }
        d=$(awk -v p="$p" -v b="$bp" 'BEGIN { printf "%+.2f", 100 * (p - b) / b }')
        if awk -v d="$d" 'BEGIN { exit !(d > 2 || d < -2) }'; then
            note "params $name $p ($d% against $base): MORE THAN 2% APART"; rc=1
        else
            note "params $name $p ($d% against $base)"
        fi
    done
    rm -rf -- "$dir"
    [ $rc -eq 0 ] && note "params: every config within 2% of $base" || note "params: some configs are more than 2% apart from $base"
}

# ---- training ------------------------------------------------------------------------------------
# A run is finished when `cformer train --resume` says there is nothing to train; one without a
# checkpoint was stopped before its first save and starts over. A run that fails (a loss that is
# not finite, say) is reported and the study goes on with the others; an interrupted one (SIGINT,
# SIGTERM: it saved a checkpoint) stops the study.
train_one() {
    local cfg=$1 name run log rc
    name=$(name_of "$cfg") run=$OUT/runs/$name log=$OUT/logs/$name.train.log
    if [ -d "$run" ] && [ ! -f "$run/ckpt/latest.h5" ]; then
        note "$name: $run has no checkpoint (stopped before its first save): starting over"
        rm -rf -- "$run"
    fi
    local args=("$cfg" --out "$run" --threads "$THREADS" "${SETS[@]}" "${STEP_SET[@]}" "${UNTIL_OPT[@]}")
    if [ -f "$run/ckpt/latest.h5" ]; then
        args+=(--resume "$run")
        note "$name: training (continuing $run)"
    else
        note "$name: training into $run"
    fi
    echo "== $(date -u '+%F %T') $CF train ${args[*]}" >> "$log"
    child "$log" "$OUT/logs/$name.train.err" "$CF" train "${args[@]}"; rc=$?
    cat "$OUT/logs/$name.train.err" >> "$log"
    if [ $rc -ne 0 ] && grep -q "nothing to train" "$OUT/logs/$name.train.err"; then
        note "$name: nothing to train ($(ckpt_progress "$run/ckpt/latest.h5"))"
        return 0
    fi
    [ $rc -eq 0 ] && [ -z "$STOPPED" ] && return 0
    [ -n "$STOPPED" ] && rc=143
    case $rc in
        130|143) fail "$name: training interrupted (status $rc) after a checkpoint; run the same command again to continue" ;;
    esac
    echo "study: $name: training failed with status $rc: $(tail -1 "$OUT/logs/$name.train.err") (log: $log)" >&2
    return 1
}

# "step S of N" of a checkpoint, or nothing
ckpt_progress() { "$CF" info "$1" 2>/dev/null | awk '$1 == "step" { print "step " $2 " of " $4; exit }'; }

# ---- measurements --------------------------------------------------------------------------------
# measure FILE KEY LOG WHAT -- COMMAND...: runs COMMAND unless FILE already holds the result of
# the same KEY (the command and the checkpoint); appends its output to LOG; keeps its line
# "BENCH WHAT ...", or "na REASON" when cformer
# refuses the request as bad input (exit status 2: a context beyond what the model allows).
measure() {
    local file=$1 key=$2 log=$3 what=$4 out rc
    shift 5
    if [ -f "$file" ] && [ "$(head -1 "$file")" = "# $key" ]; then return 0; fi
    echo "== $(date -u '+%F %T') $*" >> "$log"
    rm -f "$file.out"
    child "$file.out" "$file.err" "$@"; rc=$?
    [ -n "$STOPPED" ] && fail "stopped by a signal during \"$*\"; run the same command again to continue"
    out=$(cat "$file.out")
    rm -f "$file.out"
    printf '%s\n' "$out" >> "$log"
    cat "$file.err" >> "$log"
    local line
    line=$(printf '%s\n' "$out" | grep "^BENCH $what " | tail -1)
    if [ $rc -eq 0 ] && [ -n "$line" ]; then
        printf '# %s\n%s\n' "$key" "$line" > "$file"
    elif [ $rc -eq 0 ]; then
        fail "$(basename "$(dirname "$file")"): \"$*\" printed no \"BENCH $what\" line (log: $log)"
    elif [ $rc -eq 2 ]; then
        printf '# %s\nna %s\n' "$key" "$(tail -1 "$file.err" | sed 's/^cformer: //')" > "$file"
    else
        fail "$(basename "$(dirname "$file")"): \"$*\" failed with status $rc: $(tail -1 "$file.err") (log: $log)"
    fi
    rm -f "$file.err"
}

eval_one() {
    local cfg=$1 name run ckpt step dir log
    name=$(name_of "$cfg") run=$OUT/runs/$name ckpt=$OUT/runs/$name/ckpt/latest.h5
    dir=$OUT/results/$name log=$OUT/logs/$name.eval.log
    [ -f "$ckpt" ] || { note "$name: not trained yet, no evaluation"; return 0; }
    local prog
    prog=$(ckpt_progress "$ckpt")
    [ -n "$prog" ] || fail "$name: cannot read $ckpt (cformer info)"
    set -- $prog
    if [ "$2" != "$4" ]; then note "$name: not trained to the end yet ($prog), no evaluation"; return 0; fi
    # the measurements' key: the step and the checkpoint's checksum (a run trained again differs)
    step="$2 ckpt=$(cksum < "$ckpt" | cut -d' ' -f1)"
    mkdir -p "$dir"
    note "$name: evaluating the checkpoint of step ${step%% *}"
    local E=(env OMP_NUM_THREADS="$THREADS" "$CF" eval "$ckpt")
    "$CF" info "$ckpt" | awk '$1 == "step" { s = $2 } $1 == "tokens" { t = $3 } $1 == "total" { p = $2 }
        END { printf "params=%s tokens=%s step=%s\n", p, t, s }' > "$dir/params.txt"
    # the protocol of the run's config (eval.ctx, eval.stride; xl its training memory; xl and infini streamed)
    local split
    for split in valid test; do
        local data
        data=$(sed -n "s/^ *\"$split\": \"\(.*\)\",\{0,1\}\$/\1/p" "$run/config.json" | head -1)
        [ -n "$data" ] || { printf '# none\nna no data.%s in the config\n' "$split" > "$dir/$split.bench"; continue; }
        measure "$dir/$split.bench" "step=$step ${BYTES_OPT[*]} $data" "$log" eval -- "${E[@]}" --data "$data" "${BYTES_OPT[@]}"
    done
    # against the context, on the validation split: windows of C bytes every C/2 (each scored byte
    # sees C/2 to C bytes); xl: segments of C/2 with a memory of C/2 (the same span); infini:
    # streamed in calls of C bytes (its memory reaches back to the column's start)
    local valid kind C
    valid=$(sed -n "s/^ *\"valid\": \"\(.*\)\",\{0,1\}\$/\1/p" "$run/config.json" | head -1)
    [ -n "$valid" ] || return 0
    kind=$(sed -n 's/.*attention=\([a-z]*\).*/\1/p' "$dir/valid.bench")
    for C in ${CONTEXTS//,/ }; do
        local opt=()
        case $kind in
            xl) opt=(--ctx $((C / 2 > 0 ? C / 2 : 1)) --mem-len $((C / 2))) ;;
            infini) opt=(--ctx "$C") ;;
            *) opt=(--ctx "$C" --stride $((C / 2 > 0 ? C / 2 : 1))) ;;
        esac
        measure "$dir/ctx-$C.bench" "step=$step ${opt[*]} ${BYTES_OPT[*]} $valid" "$log" eval -- \
            "${E[@]}" --data "$valid" "${opt[@]}" "${BYTES_OPT[@]}"
    done
}

bench_one() {
    local cfg=$1 name dir log T B
    name=$(name_of "$cfg") dir=$OUT/results/$(name_of "$cfg") log=$OUT/logs/$(name_of "$cfg").bench.log
    mkdir -p "$dir"
    note "$name: benchmarking the training step at contexts $BENCH_CTX, $BENCH_THREADS threads"
    for T in ${BENCH_CTX//,/ }; do
        B=$((BENCH_TOKENS / T)); [ $B -ge 1 ] || B=1
        local args=(bench "$cfg" --threads "$BENCH_THREADS" --steps "$BENCH_STEPS" "${SETS[@]}"
                    --set "train.seq_len=$T" --set "model.max_seq_len=$T" --set "train.batch_size=$B"
                    --set "eval.ctx=$T" --set "eval.stride=$((T / 2 > 0 ? T / 2 : 1))")
        measure "$dir/bench-$T.bench" "$(cksum < "$cfg") ${args[*]}" "$log" train_step -- "$CF" "${args[@]}"
    done
}

n=${#CONFIGS[@]}
if phase params; then params_all; fi
FAILED=""
if phase train; then for c in "${CONFIGS[@]}"; do train_one "$c" || FAILED="$FAILED $(name_of "$c")"; done; fi
if phase eval; then for c in "${CONFIGS[@]}"; do eval_one "$c"; done; fi
if phase bench; then for c in "${CONFIGS[@]}"; do bench_one "$c"; done; fi

# ---- results.tsv and the report -------------------------------------------------------------------
# results.tsv: one line per figure, NAME TAB WHAT TAB key=value ..., what the report and the
# pictures are drawn from.
collect() {
    local c name dir f what
    for c in "${CONFIGS[@]}"; do
        name=$(name_of "$c") dir=$OUT/results/$name
        [ -d "$dir" ] || [ -f "$OUT/runs/$name/log.jsonl" ] || continue
        [ -s "$dir/params.txt" ] && printf '%s\tparams\t%s\n' "$name" "$(cat "$dir/params.txt")"
        local attn
        attn=$(sed -n 's/^ *"type": "\(.*\)",\{0,1\}$/\1/p' "$OUT/runs/$name/config.json" 2>/dev/null | head -1)
        [ -n "$attn" ] && printf '%s\tattention\ttype=%s\n' "$name" "$attn"
        for f in "$dir"/*.bench; do
            [ -f "$f" ] || continue
            what=$(basename "$f" .bench)
            printf '%s\t%s\t%s\n' "$name" "$what" "$(sed -n '2p' "$f" | sed 's/^BENCH [a-z_]* //')"
        done
        local log=$OUT/runs/$name/log.jsonl
        [ -f "$log" ] && awk -v n="$name" '
            /"loss":/ { s = $0; sub(/.*"step": /, "", s); sub(/,.*/, "", s)
                        b = $0; sub(/.*"bpb": /, "", b); sub(/,.*/, "", b)
                        t = $0; sub(/.*"elapsed_s": /, "", t); sub(/[,}].*/, "", t)
                        step[s] = b; el[s] = t; if (s + 0 > last) last = s + 0 }
            END { if (last) { k = 0; sum = 0
                    for (s in step) if (s + 0 > last - 100) { sum += step[s]; k++ }
                    printf "%s\ttrain\tsteps=%d train_bpb=%.4f elapsed_s=%s\n", n, last, sum / k, el[last] } }' "$log"
    done
}

if phase report; then
    collect > "$OUT/results.tsv"
    # the first of $PYTHON, python3 and /usr/bin/python3 that has matplotlib draws the pictures
    PY=""
    for p in ${PYTHON:-} python3 /usr/bin/python3; do
        if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import matplotlib' 2>/dev/null; then PY=$p; break; fi
    done
    PICTURES=""
    rm -f "$OUT/loss_steps.png" "$OUT/loss_time.png" "$OUT/bpb_context.png"
    if [ -n "$PY" ]; then
        "$PY" "$(dirname "$0")/plot_study.py" "$OUT" || fail "tools/plot_study.py failed"
    else
        PICTURES="no pictures: no python3 with matplotlib found (make plot-deps, or PYTHON=...)"
        note "$PICTURES"
    fi
    awk -F'\t' -v contexts="$CONTEXTS" -v bench_ctx="$BENCH_CTX" -v bench_threads="$BENCH_THREADS" \
        -v bench_tokens="$BENCH_TOKENS" -v eval_bytes="${EVAL_BYTES:-0}" -v pictures="$PICTURES" \
        -v reading="$([ -f "$OUT/reading.md" ] && echo "$OUT/reading.md")" \
        -f "$(dirname "$0")/study_report.awk" "$OUT/invocations.txt" "$OUT/results.tsv" > "$OUT/report.md.tmp" \
        && mv "$OUT/report.md.tmp" "$OUT/report.md" || fail "writing $OUT/report.md failed"
    note "wrote $OUT/report.md"
fi
if [ -n "$PUBLISH" ]; then
    mkdir -p "$PUBLISH" || die "--publish: cannot create \"$PUBLISH\""
    for f in report.md reading.md results.tsv invocations.txt loss_steps.png loss_time.png bpb_context.png; do
        [ -f "$OUT/$f" ] && cp "$OUT/$f" "$PUBLISH/"
    done
    note "copied the report, the pictures and results.tsv to $PUBLISH"
fi
[ -z "$FAILED" ] || fail "training failed for:$FAILED (their logs are in $OUT/logs; the report leaves them out)"
