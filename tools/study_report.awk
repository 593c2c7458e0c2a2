# report.md of the attention-variant study (tools/study.sh): reads OUT_DIR/invocations.txt, then
# OUT_DIR/results.tsv (NAME TAB WHAT TAB key=value ...), and prints the markdown. Variables from
# study.sh: contexts, bench_ctx, bench_threads, bench_tokens, eval_bytes, pictures, reading (the path of
# OUT_DIR/reading.md, or "").

function kv(s, key,    m) {   # the value of key=value in s, or ""
    if (match(" " s " ", " " key "=[^ ]*")) { m = substr(" " s " ", RSTART + length(key) + 2, RLENGTH - length(key) - 2); return m }
    return ""
}
function na(s) { return s ~ /^na / }
function fmt(x) { return x == "" ? "-" : sprintf("%.4f", x) }
function delta(a, b) { return sprintf("%+.4f (%+.1f%%)", a - b, 100 * (a - b) / b) }
function comma(n,    s, r) {   # 3356160 -> 3,356,160
    s = sprintf("%d", n); r = ""
    while (length(s) > 3) { r = "," substr(s, length(s) - 2) r; s = substr(s, 1, length(s) - 3) }
    return s r
}
function protocol(s) {
    if (kv(s, "attention") == "xl") return sprintf("streamed, %s columns, segments of %s, memory %s", kv(s, "columns"), kv(s, "ctx"), kv(s, "mem_len"))
    if (kv(s, "attention") == "infini") return sprintf("streamed, %s columns, calls of %s, compressive memory over the whole column", kv(s, "columns"), kv(s, "ctx"))
    return sprintf("windows of %s bytes every %s", kv(s, "ctx"), kv(s, "stride"))
}
function note_of(reason,    i) {   # footnote number of a refusal's reason
    for (i = 1; i <= n_notes; i++) if (notes[i] == reason) return i
    notes[++n_notes] = reason
    return n_notes
}

FNR == NR {   # invocations.txt: blocks of key=value lines
    if ($0 ~ /^date=/) { n_inv++ }
    if (n_inv && match($0, /^[a-z_]+=/)) inv[n_inv, substr($0, 1, RLENGTH - 1)] = substr($0, RLENGTH + 1)
    next
}
{
    name = $1; what = $2; val = $3
    if (!(name in seen)) { seen[name] = 1; order[++n] = name }
    r[name, what] = val
}
END {
    base = ""
    for (i = 1; i <= n; i++) if (kv(r[order[i], "attention"], "type") == "full") { base = order[i]; break }
    if (base == "" && n) base = order[1]
    nc = split(contexts, ctx, ","); nb = split(bench_ctx, bctx, ",")

    print "# Attention-variant study: bits per byte, context, memory and speed"
    print ""
    print "Written by `tools/study.sh` (docs/study/README.md has the protocol). Runs, in order:"
    print ""
    for (i = 1; i <= n_inv; i++)
        printf "- %s: `%s` on %s (%s, commit %s; %s)\n", inv[i, "date"], inv[i, "command"], inv[i, "machine"],
               inv[i, "cformer"], inv[i, "commit"], "threads=" inv[i, "threads"]
    print ""
    if (pictures != "") { print "*" pictures "*"; print "" }

    # ---- runs
    print "## Runs"
    print ""
    print "| variant | attention | parameters | vs " base " | steps | training bytes | training bpb (last 100 steps) | training wall time |"
    print "|---|---|---|---|---|---|---|---|"
    bp = kv(r[base, "params"], "params"); worst = 0
    for (i = 1; i <= n; i++) {
        v = order[i]; p = kv(r[v, "params"], "params"); t = r[v, "train"]
        d = (p != "" && bp != "") ? 100 * (p - bp) / bp : ""
        if (d != "" && (d < 0 ? -d : d) > worst) { worst = d < 0 ? -d : d; worst_v = v }
        printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", v, kv(r[v, "attention"], "type"), p == "" ? "-" : comma(p),
               d == "" ? "-" : sprintf("%+.2f%%", d), kv(t, "steps") == "" ? "-" : kv(t, "steps"),
               kv(r[v, "params"], "tokens") == "" ? "-" : comma(kv(r[v, "params"], "tokens")),
               fmt(kv(t, "train_bpb")), kv(t, "elapsed_s") == "" ? "-" : sprintf("%.0f s", kv(t, "elapsed_s"))
    }
    print ""
    if (bp != "")
        printf "Parameter counts: the largest difference from %s is %.2f%%%s%s.\n\n", base, worst,
               (worst_v != "" ? " (" worst_v ")" : ""), (worst > 2 ? ": MORE THAN THE STUDY'S 2%" : ", within the study's 2%")
    print "Wall time is the run's `elapsed_s` in log.jsonl: training and its periodic validation, continued across resumes"
    print "(a run spread over machines adds their times)."
    print ""

    # ---- 1. whole splits
    print "## 1. Bits per byte on the validation and test splits"
    print ""
    print "| variant | valid bpb | test bpb | vs " base " (valid) | bytes scored (valid) | protocol |"
    print "|---|---|---|---|---|---|"
    bv = na(r[base, "valid"]) ? "" : kv(r[base, "valid"], "bpb")
    for (i = 1; i <= n; i++) {
        v = order[i]; sv = r[v, "valid"]; st = r[v, "test"]
        if (sv == "" && st == "") { printf "| %s | - | - | - | - | not evaluated |\n", v; continue }
        x = na(sv) ? "" : kv(sv, "bpb"); y = na(st) ? "" : kv(st, "bpb")
        printf "| %s | %s | %s | %s | %s | %s |\n", v, fmt(x), fmt(y), (x != "" && bv != "") ? delta(x, bv) : "-",
               na(sv) || sv == "" ? "-" : comma(kv(sv, "bytes")), na(sv) ? substr(sv, 4) : protocol(sv)
        if (x != "") valid_bpb[v] = x
    }
    print ""
    printf "%s Every byte after the first is scored once. Windowed variants: each window of C bytes scores its last\n", (eval_bytes > 0 ? "Only the first " comma(eval_bytes) " bytes of each split were scored (`--eval-bytes`)." : "The whole splits were scored.")
    print "C - stride bytes (the first window all of them), so a scored byte sees between C - stride and C bytes."
    print "xl and infini read the split as contiguous columns (one per row of train.batch_size), each in order"
    print "with the state carried from one segment (call) to the next, as Transformer-XL is evaluated."
    print ""

    # ---- 2. context
    print "## 2. Bits per byte against the evaluation context (validation split)"
    print ""
    line = "| variant |"; sep = "|---|"
    for (j = 1; j <= nc; j++) { line = line " " ctx[j] " |"; sep = sep "---|" }
    print line; print sep
    for (i = 1; i <= n; i++) {
        v = order[i]; line = "| " v " |"
        for (j = 1; j <= nc; j++) {
            s = r[v, "ctx-" ctx[j]]
            if (s == "") cell = "-"
            else if (na(s)) cell = "n/a [" note_of(substr(s, 4)) "]"
            else { cell = fmt(kv(s, "bpb")); cbpb[v, j] = kv(s, "bpb") }
            line = line " " cell " |"
        }
        print line
    }
    print ""
    for (i = 1; i <= n_notes; i++) printf "[%d] cformer refused: %s  \n", i, notes[i]
    if (n_notes) print ""
    print "Context C: windowed variants score windows of C bytes every C/2 (each byte sees C/2 to C bytes); xl reads"
    print "segments of C/2 with a memory of C/2 hidden states per layer (`--mem-len`, the same span); infini is"
    print "streamed in calls of C bytes, its compressive memory reaching back to the start of the column at every C."
    print "A variant with learned absolute positions cannot be evaluated beyond its position table (max_seq_len)."
    print ""
    if (pictures == "") print "![bits per byte against the evaluation context](bpb_context.png)"
    if (pictures == "") print ""

    # ---- 3. speed
    printf "## 3. Training speed and peak memory (`cformer bench`, %s threads)\n\n", bench_threads
    line = "| variant |"; sep = "|---|"
    for (j = 1; j <= nb; j++) { line = line " tokens/s at " bctx[j] " |"; sep = sep "---|" }
    for (j = 1; j <= nb; j++) { line = line " peak MB at " bctx[j] " |"; sep = sep "---|" }
    print line; print sep
    for (i = 1; i <= n; i++) {
        v = order[i]; line = "| " v " |"
        for (j = 1; j <= nb; j++) {
            s = r[v, "bench-" bctx[j]]
            if (s != "" && !na(s)) tps[v, j] = kv(s, "tokens_per_s")
            line = line " " (s == "" ? "-" : na(s) ? "n/a [" note_of(substr(s, 4)) "]" : kv(s, "tokens_per_s")) " |"
        }
        for (j = 1; j <= nb; j++) {
            s = r[v, "bench-" bctx[j]]
            if (s != "" && !na(s)) mem[v, j] = kv(s, "peak_rss_mb")
            line = line " " (s == "" || na(s) ? "-" : kv(s, "peak_rss_mb")) " |"
        }
        print line
    }
    print ""
    printf "The median of the timed steps on random tokens, %s tokens a step (batch max(1, %s / context)); peak memory\n", bench_tokens, bench_tokens
    print "is the process's peak resident set (weights, gradients, AdamW state, activations)."
    print ""

    # ---- 4. curves
    print "## 4. Loss curves"
    print ""
    if (pictures != "") { print "(" pictures ")"; print "" }
    if (pictures == "") print "![training loss against steps](loss_steps.png)"
    if (pictures == "") print ""
    if (pictures == "") print "![training loss against wall time](loss_time.png)"
    if (pictures == "") print ""

    # ---- 5. reading: what the numbers above say, computed from them
    print "## 5. What the numbers say"
    print ""
    if (reading != "") {   # the hand-written reading of the numbers (OUT_DIR/reading.md), then the computed lines
        while ((getline l < reading) > 0) print l
        close(reading)
        print ""
        print "The lines below are computed from the tables by tools/study.sh:"
        print ""
    }
    k = 0
    for (v in valid_bpb) rank_v[++k] = v
    for (i = 2; i <= k; i++) for (j = i; j > 1 && valid_bpb[rank_v[j]] < valid_bpb[rank_v[j - 1]]; j--) { t = rank_v[j]; rank_v[j] = rank_v[j - 1]; rank_v[j - 1] = t }
    if (k) {
        line = "- Validation bits per byte, best first: "
        for (i = 1; i <= k; i++) line = line (i > 1 ? ", " : "") rank_v[i] " " sprintf("%.4f", valid_bpb[rank_v[i]])
        print line "."
        if (bv != "") {
            worse = ""; better = ""
            for (i = 1; i <= k; i++) {
                v = rank_v[i]; if (v == base) continue
                d = valid_bpb[v] - bv
                if (d > 0) worse = worse (worse == "" ? "" : ", ") v " (+" sprintf("%.4f", d) ")"
                else better = better (better == "" ? "" : ", ") v " (" sprintf("%.4f", d) ")"
            }
            if (better != "") print "- Better than " base " on validation: " better "."
            if (worse != "") print "- Worse than " base " on validation: " worse "."
        }
    }
    for (i = 1; i <= n; i++) {
        v = order[i]; first = 0; lastj = 0
        for (j = 1; j <= nc; j++) if ((v, j) in cbpb) { if (!first) first = j; lastj = j }
        if (first && lastj > first)
            printf "- %s: %.4f bpb at context %s, %.4f at %s (%s).\n", v, cbpb[v, first], ctx[first], cbpb[v, lastj], ctx[lastj],
                   cbpb[v, lastj] < cbpb[v, first] ? sprintf("%.4f better with the longer context", cbpb[v, first] - cbpb[v, lastj]) : sprintf("%.4f worse with the longer context", cbpb[v, lastj] - cbpb[v, first])
    }
    for (j = 1; j <= nb; j++) {
        if (!((base, j) in tps)) continue
        line = ""; fast = ""; fv = 0
        for (i = 1; i <= n; i++) {
            v = order[i]; if (!((v, j) in tps) || v == base) continue
            line = line (line == "" ? "" : ", ") v " " sprintf("%.2fx", tps[v, j] / tps[base, j])
        }
        for (i = 1; i <= n; i++) { v = order[i]; if ((v, j) in tps && tps[v, j] + 0 > fv) { fv = tps[v, j] + 0; fast = v } }
        printf "- Training speed at context %s against %s (%s tokens/s): %s; fastest %s.\n", bctx[j], base, tps[base, j], line, fast
        lo = ""; hi = ""
        for (i = 1; i <= n; i++) { v = order[i]; if (!((v, j) in mem)) continue
            if (lo == "" || mem[v, j] + 0 < mem[lo, j] + 0) lo = v
            if (hi == "" || mem[v, j] + 0 > mem[hi, j] + 0) hi = v }
        if (lo != "") printf "- Peak memory at context %s: least %s (%s MB), most %s (%s MB).\n", bctx[j], lo, mem[lo, j], hi, mem[hi, j]
    }
    if (reading == "") {
        print ""
        print "These lines are computed from the tables by tools/study.sh; a reading written after the study goes in"
        print "OUT_DIR/reading.md, which the report then shows above them."
    }
}
