#!/usr/bin/env bash
# The smoke version of the attention-variant study (tools/study.sh, docs/study/README.md): every
# config of configs/study, cut to the size of configs/tiny.json by --set, trained a few steps on
# data/tiny, evaluated, benchmarked and reported; interrupted work continued; finished work kept;
# the real configs' parameter counts within 2%; bad usage refused. Prints a RESULT line for
# tests/run.sh. CFORMER names the binary (default build/cformer).
cd "$(dirname "$0")/.." || exit 1
CF=${CFORMER:-build/cformer}
TH=${OMP_NUM_THREADS:-1}
pass=0; fail=0
ok() { if eval "$2"; then pass=$((pass + 1)); else echo "FAIL $1"; fail=$((fail + 1)); fi; }
[ -x "$CF" ] || { echo "FAIL $CF missing (make)"; echo "RESULT passed=0 failed=1"; exit 1; }
[ -f data/tiny/train.bin ] || sh tools/make_tiny_data.sh >/dev/null
T=$(mktemp -d "${TMPDIR:-/tmp}/cformer-study.XXXXXX") || exit 1
[ -n "${KEEP:-}" ] && echo "keeping $T" || trap 'rm -rf -- "$T"' EXIT
names="full infini-delta infini-linear linear performer-relu performer-softmax sparse-fixed sparse-strided window xl"
ok "configs/study holds the ten variants" '[ "$(ls configs/study/*.json | sed "s|.*/||; s|\.json$||" | tr "\n" " ")" = "$names " ]'

# the tiny shape: configs/tiny.json's data and context, a narrower model, each variant's lengths cut to fit
TINY=(--set data.train=data/tiny/train.bin --set data.valid=data/tiny/valid.bin --set data.test=data/tiny/test.bin
      --set model.d_model=32 --set model.n_heads=2 --set model.n_layers=2 --set model.d_ff=64 --set model.max_seq_len=64
      --set train.seq_len=64 --set train.batch_size=2 --set train.log_every=1 --set train.eval_every=0
      --set train.eval_tokens=1000 --set train.checkpoint_every=1 --set model.attention.window=16
      --set model.attention.features=16 --set model.attention.mem_len=32 --set model.attention.segment_len=16
      --set eval.ctx=64 --set eval.stride=32 --set eval.bytes=1000)
SMALL=(--eval-bytes 2000 --contexts 32,128 --bench-ctx 64 --bench-tokens 128 --bench-steps 1
       --threads "$TH" --bench-threads "$TH" --cformer "$CF")
S=$T/study
study() { local t0=$(date +%s.%N); bash tools/study.sh "$@" > "$T/out.txt" 2>&1; local rc=$?; [ -n "${KEEP:-}" ] && echo "study took $(echo "$(date +%s.%N) - $t0" | bc) s"; return $rc; }

# 1. the real configs: parameter counts within 2% of full (the data file does not change the model)
study --only params --cformer "$CF" --threads "$TH" --set data.train=data/tiny/train.bin configs/study "$T/p"
ok "params: one count per config" '[ "$(grep -c "^study: params [a-z-]* [0-9]* (" "$T/out.txt")" = 10 ]'
ok "params: within 2%" 'grep -q "^study: params: every config within 2% of full" "$T/out.txt"'
ok "params: xl equalised by its d_ff" 'grep -q "^study: params xl 3356416 (+0.01% against full)" "$T/out.txt"'

# 2. a first sitting that stops at step 1 of 3, a run left without a checkpoint
study --steps 3 --until 1 "${SMALL[@]}" "${TINY[@]}" configs/study "$S"
ok "sitting 1: trained to step 1" '[ "$("$CF" info "$S/runs/xl/ckpt/latest.h5" | awk "\$1 == \"step\" { print \$2 }")" = 1 ]'
ok "sitting 1: unfinished runs not evaluated" '[ "$(grep -c "not trained to the end yet (step 1 of 3), no evaluation" "$T/out.txt")" = 10 ]'
rm -rf "$S/runs/window/ckpt"

# 3. the second sitting: continues every run to step 3 with --resume, starts window over, measures, reports
study "${SMALL[@]}" "${TINY[@]}" --steps 3 configs/study "$S"; rc=$?
ok "sitting 2: exit 0 (rc $rc: $(tail -1 "$T/out.txt"))" '[ $rc -eq 0 ]'
ok "sitting 2: window started over" 'grep -q "window: .* has no checkpoint (stopped before its first save): starting over" "$T/out.txt"'
ok "sitting 2: nine runs continued" '[ "$(grep -c "training (continuing" "$T/out.txt")" = 9 ]'
ok "sitting 2: xl resumed from step 1" 'grep -q "resuming from .* at step 1" "$S/logs/xl.train.log"'
for n in $names; do
    ok "$n: trained to step 3" '[ "$("$CF" info "$S/runs/$n/ckpt/latest.h5" | awk "\$1 == \"step\" { print \$2 }")" = 3 ]'
    ok "$n: valid and test bpb" '[ "$(grep -cP "^$n\t(valid|test)\tbpb=[0-9]+\.[0-9]+ bytes=1999 " "$S/results.tsv")" = 2 ]'
    ok "$n: bpb at context 32" '[ "$(grep -cP "^$n\tctx-32\tbpb=[0-9]+\.[0-9]+ " "$S/results.tsv")" = 1 ]'
    ok "$n: speed and memory at 64" '[ "$(grep -cP "^$n\tbench-64\t.* tokens_per_s=[0-9]+ peak_rss_mb=[0-9]+ " "$S/results.tsv")" = 1 ]'
    ok "$n: a row in each table of the report" '[ "$(grep -c "^| $n |" "$S/report.md")" = 4 ]'
done
# what a variant allows: learned positions stop at max_seq_len; xl's memory and infini's stream go on
ok "full: context 128 refused, named in the report" 'grep -qP "^full\tctx-128\tna --ctx: 128 exceeds the model.s max_seq_len 64" "$S/results.tsv" && grep -q "^| full | .* n/a \[1\] |$" "$S/report.md"'
ok "xl: context 128 as segments of 64 with memory 64" 'grep -qP "^xl\tctx-128\tbpb=.* ctx=64 columns=2 attention=xl mem_len=64 " "$S/results.tsv"'
ok "infini: streamed" 'grep -qP "^infini-delta\tvalid\tbpb=.* attention=infini " "$S/results.tsv"'
ok "report: the command, machine and date" 'grep -q "^- [0-9-]* [0-9:]* UTC: \`tools/study.sh .*\` on .*, [0-9]* cores" "$S/report.md"'
ok "report: parameter counts within 2%" 'grep -q "within the study.s 2%" "$S/report.md"'
ok "report: a reading computed from the numbers" 'grep -q "^- Validation bits per byte, best first: " "$S/report.md"'
have_mpl=0
for p in ${PYTHON:-} python3 /usr/bin/python3; do
    command -v "$p" >/dev/null 2>&1 && "$p" -c "import matplotlib" 2>/dev/null && { have_mpl=1; break; }
done
if [ $have_mpl = 1 ]; then
    ok "pictures drawn" '[ -s "$S/loss_steps.png" ] && [ -s "$S/loss_time.png" ] && [ -s "$S/bpb_context.png" ]'
else
    echo "SKIP pictures: no python3 with matplotlib"
    ok "report: says why there are no pictures" 'grep -q "no pictures: no python3 with matplotlib" "$S/report.md"'
fi

# resumed training is the training that never stopped: xl (state carried across steps) straight to step 3
"$CF" train configs/study/xl.json --out "$T/straight" --quiet --threads "$TH" "${TINY[@]}" --set train.steps=3 >/dev/null 2>&1
bpb=$(OMP_NUM_THREADS=$TH "$CF" eval "$T/straight/ckpt/latest.h5" --data data/tiny/valid.bin --bytes 2000 | sed -n 's/.* bpb=\([^ ]*\) .*/\1/p')
ok "xl: resumed study run equals a straight run (bpb $bpb)" '[ -n "$bpb" ] && grep -qP "^xl\tvalid\tbpb=$bpb " "$S/results.tsv"'

# 4. a third sitting with the same command: nothing is trained or measured again
wc_before=$(cat "$S"/logs/*.eval.log "$S"/logs/*.bench.log | wc -l)
study "${SMALL[@]}" "${TINY[@]}" --steps 3 --publish "$T/pub" configs/study "$S"; rc=$?
ok "sitting 3: exit 0" '[ $rc -eq 0 ]'
ok "sitting 3: every run trained already" '[ "$(grep -c ": nothing to train (step 3 of 3)" "$T/out.txt")" = 10 ]'
ok "sitting 3: no measurement repeated" '[ "$(cat "$S"/logs/*.eval.log "$S"/logs/*.bench.log | wc -l)" = "$wc_before" ]'
ok "sitting 3: the report lists the three sittings" '[ "$(grep -c "^- [0-9-]* [0-9:]* UTC: .*--steps 3" "$S/report.md")" = 3 ]'
ok "--publish: report and results copied" 'cmp -s "$S/report.md" "$T/pub/report.md" && cmp -s "$S/results.tsv" "$T/pub/results.tsv"'

# 5. a run that fails is reported and the study goes on with the others
mkdir -p "$T/mixed"
cp configs/study/full.json "$T/mixed/good.json"
printf '{"model": {"d_modle": 32}}\n' > "$T/mixed/broken.json"
study --only train,eval,report --steps 2 "${SMALL[@]}" "${TINY[@]}" "$T/mixed" "$T/m2"; rc=$?
ok "a failing run: status 1, named (rc $rc)" '[ $rc -eq 1 ] && grep -q "^study: training failed for: broken " "$T/out.txt"'
ok "a failing run: its error in the output" 'grep -q "broken: training failed with status 2: cformer: .*model.d_modle: unknown key" "$T/out.txt"'
ok "a failing run: the others evaluated and reported" 'grep -qP "^good\tvalid\tbpb=" "$T/m2/results.tsv" && grep -q "^| good |" "$T/m2/report.md"'

# 6. SIGTERM to the study (kill, a batch system's time limit): training stops after its step with a
# checkpoint, the study stops with it, nothing runs on; the same command continues from there
mkdir -p "$T/one"
cp configs/study/xl.json "$T/one/"
bash tools/study.sh --only train "${SMALL[@]}" "${TINY[@]}" --steps 100000 --set train.checkpoint_every=0 \
    "$T/one" "$T/sig" > "$T/sig.txt" 2>&1 &
pid=$!
for i in $(seq 200); do [ -s "$T/sig/runs/xl/log.jsonl" ] && break; sleep 0.1; done
kill -TERM $pid
wait $pid; rc=$?
ok "SIGTERM: the study stops with status 1 (rc $rc)" '[ $rc -eq 1 ] && grep -q "xl: training interrupted (status 143) after a checkpoint" "$T/sig.txt"'
ok "SIGTERM: cformer stopped after a step, with a checkpoint" 'grep -q "SIGTERM: stopped after step" "$T/sig/logs/xl.train.err" && [ -f "$T/sig/runs/xl/ckpt/latest.h5" ]'
at=$("$CF" info "$T/sig/runs/xl/ckpt/latest.h5" | awk '$1 == "step" { print $2 }')
n1=$(wc -l < "$T/sig/runs/xl/log.jsonl"); sleep 0.5; n2=$(wc -l < "$T/sig/runs/xl/log.jsonl")
ok "SIGTERM: no cformer left running (the log stays at $n1 lines)" '[ "$n1" = "$n2" ]'
study --only train "${SMALL[@]}" "${TINY[@]}" --steps 100000 --until $((at + 2)) --set train.checkpoint_every=0 "$T/one" "$T/sig"
ok "SIGTERM: the same command continues from step $at" 'grep -q "resuming from .* at step $at " "$T/sig/logs/xl.train.log" && [ "$("$CF" info "$T/sig/runs/xl/ckpt/latest.h5" | awk "\$1 == \"step\" { print \$2 }")" = $((at + 2)) ]'

# 7. bad usage: one line naming the thing, exit status 2
bad() {
    bash tools/study.sh "$@" > "$T/bad.txt" 2>&1; rc=$?
    ok "refused ($*): $(head -1 "$T/bad.txt")" '[ $rc -eq 2 ] && [ "$(wc -l < "$T/bad.txt")" = 1 ]'
}
bad --steps 0 configs/study "$T/b"
bad --contexts 128,,512 configs/study "$T/b"
bad --only train,plot configs/study "$T/b"
bad --frobnicate configs/study "$T/b"
bad "$T/nowhere" "$T/b"
bad --set novalue configs/study "$T/b"
ok "a config error names the key" 'bash tools/study.sh --only params --set model.d_modle=3 configs/study "$T/b" 2>&1 | grep -q "model.d_modle: unknown key"'

echo "RESULT passed=$pass failed=$fail"
[ "$fail" -eq 0 ]
