/* The profiler (core.h: cf_prof): a profiled step gives bitwise the loss and gradients of an
 * unprofiled one; its parts sum to about the step; calls land on the right op kind and direction
 * (recompute under gradient checkpointing); FLOP counts match the shapes. */
#include <string.h>
#include "test.h"
#include "cformer/train.h"

enum { L = 3, D = 64, F = 256, B = 4, T = 48, V = 256 };

/* par: the parallel regions the step started (counted when profiled) */
typedef struct result { float loss; float *grads; int64_t numel; double wall; cf_prof_par par; } result;

static result run(int ckpt, cf_prof *prof) {
    char layers[32], width[32], ff[32], seq[32], len[32], batch[32];
    snprintf(layers, sizeof layers, "model.n_layers=%d", L);
    snprintf(width, sizeof width, "model.d_model=%d", D);
    snprintf(ff, sizeof ff, "model.d_ff=%d", F);
    snprintf(seq, sizeof seq, "model.max_seq_len=%d", T);
    snprintf(len, sizeof len, "train.seq_len=%d", T);
    snprintf(batch, sizeof batch, "train.batch_size=%d", B);
    const char *sets[] = {layers, width, ff, seq, len, batch, "model.n_heads=4", "model.dropout=0.1"};
    cf_config c;
    CF_ASSERT(cf_config_parse(&c, "{}", sets, 8, 0) == 0, "%s", cf_error_msg());
    cf_model m;
    CF_ASSERT(cf_model_init(&m, &c.model, 3) == 0, "%s", cf_error_msg());
    cf_model_set_checkpointing(&m, ckpt);
    int32_t *x = malloc(sizeof(int32_t) * B * T), *y = malloc(sizeof(int32_t) * B * T);
    for (int i = 0; i < B * T; i++) { x[i] = (i * 7 + 3) % V; y[i] = (i * 13 + 5) % V; }
    cf_ctx ctx;
    CF_ASSERT(cf_ctx_init(&ctx, cf_model_arena_bytes(&c.model, B, T), 1 << 16) == 0, "%s", cf_error_msg());
    ctx.training = 1;
    ctx.seed = 11;
    cf_ctx_begin(&ctx, 5);
    cf_params_zero_grad(&m.params);
    ctx.prof = prof;
    cf_prof_par par0, par;
    cf_prof_par_count(prof != NULL);
    cf_prof_par_read(&par0);
    double t0 = cf_prof_now();
    if (prof) cf_prof_start(prof);
    cf_tensor *loss = cf_model_loss(&m, &ctx, x, y, B, T, NULL);
    cf_backward(&ctx, loss, NULL);
    double wall = cf_prof_now() - t0;
    cf_prof_par_read(&par);
    cf_prof_par_count(0);
    cf_prof_par_sub(&par, &par0);
    if (prof) cf_prof_flush(prof);
    result r = {loss->data[0], malloc(sizeof(float) * m.params.numel), m.params.numel, wall, par};
    memcpy(r.grads, m.params.grads, sizeof(float) * m.params.numel);
    cf_ctx_free(&ctx);
    cf_model_free(&m);
    free(x); free(y);
    return r;
}

static double total(const cf_prof *p) {
    double s = 0;
    for (int op = 0; op < CF_OP_COUNT; op++)
        for (int d = 0; d < CF_PROF_DIRS; d++) s += p->cell[op][d].sec;
    return s;
}

/* every region the step started is charged to one op, inside that op's time */
static void check_regions(const cf_prof *p, const result *r, int ckpt) {
    cf_prof_par sum = {0};
    int inside = 1;
    for (int op = 0; op < CF_OP_COUNT; op++)
        for (int d = 0; d < CF_PROF_DIRS; d++) {
            const cf_prof_cell *c = &p->cell[op][d];
            cf_prof_par_add(&sum, &c->par);
            inside &= c->par.wall + c->par.solo <= c->sec * 1.0001 + 1e-6 && c->par.busy <= c->par.team * 1.0001 + 1e-6;
        }
    CHECK(r->par.regions > 0 && sum.regions == r->par.regions && sum.solo_regions == r->par.solo_regions,
          "ckpt=%d: %.0f + %.0f regions charged of %.0f + %.0f", ckpt, sum.regions, sum.solo_regions, r->par.regions,
          r->par.solo_regions);
    CHECK(inside, "ckpt=%d: an op's regions take more than its time, or their threads more than the team's", ckpt);
    const cf_prof_par *ln = &p->cell[CF_OP_LAYERNORM][CF_PROF_FORWARD].par;
    CHECK(ln->regions + ln->solo_regions > 0, "ckpt=%d: no layernorm regions", ckpt);
    printf("ckpt=%d: %.0f regions (%.0f solo), %.3f ms of the step in them\n", ckpt, r->par.regions,
           r->par.solo_regions, (r->par.wall + r->par.solo) * 1e3);
}

static void check_step(int ckpt) {
    result off = run(ckpt, NULL);
    CHECK(off.par.regions == 0, "ckpt=%d: regions counted with counting off", ckpt);
    cf_prof p;
    cf_prof_clear(&p);
    result on = run(ckpt, &p);
    CHECK(on.loss == off.loss && !memcmp(on.grads, off.grads, sizeof(float) * off.numel),
          "ckpt=%d: profiling changed the loss (%.9g vs %.9g) or the gradients", ckpt, on.loss, off.loss);
    double sum = total(&p);
    CHECK(sum <= on.wall * 1.0001 && sum >= 0.8 * on.wall, "ckpt=%d: parts sum to %.3f ms of a %.3f ms step", ckpt,
          sum * 1e3, on.wall * 1e3);
    printf("ckpt=%d: parts %.3f ms of %.3f ms (%.1f%%)\n", ckpt, sum * 1e3, on.wall * 1e3, 100 * sum / on.wall);
    check_regions(&p, &on, ckpt);

    /* per layer: qkv, attention proj, mlp proj, and fc as linear_gelu; then the output head */
    const cf_prof_cell *lf = &p.cell[CF_OP_LINEAR][CF_PROF_FORWARD], *lb = &p.cell[CF_OP_LINEAR][CF_PROF_BACKWARD];
    const cf_prof_cell *lr = &p.cell[CF_OP_LINEAR][CF_PROF_RECOMPUTE], *gf = &p.cell[CF_OP_LINEAR_GELU][CF_PROF_FORWARD];
    const cf_prof_cell *gb = &p.cell[CF_OP_LINEAR_GELU][CF_PROF_BACKWARD];
    CHECK(lf->calls == 3 * L + 1 && lb->calls == 3 * L + 1 && gf->calls == L && gb->calls == L,
          "ckpt=%d: linear calls %lld forward, %lld backward; linear_gelu %lld, %lld", ckpt, (long long)lf->calls,
          (long long)lb->calls, (long long)gf->calls, (long long)gb->calls);
    CHECK(lr->calls == (ckpt ? 3 * L : 0) && p.cell[CF_OP_LINEAR_GELU][CF_PROF_RECOMPUTE].calls == (ckpt ? L : 0),
          "ckpt=%d: %lld linear recomputes", ckpt, (long long)lr->calls);
    CHECK(p.cell[CF_OP_CHECKPOINT][CF_PROF_BACKWARD].calls == (ckpt ? L : 0), "ckpt=%d: %lld checkpoint backwards",
          ckpt, (long long)p.cell[CF_OP_CHECKPOINT][CF_PROF_BACKWARD].calls);
    CHECK(p.cell[CF_OP_CROSS_ENTROPY][CF_PROF_FORWARD].calls == 1 && p.cell[CF_OP_EMBEDDING][CF_PROF_BACKWARD].calls == 1,
          "ckpt=%d: cross-entropy or embedding missing", ckpt);
    double rows = (double)B * T, lin = 2 * rows * (3.0 * D * D + D * D + (double)D * F), head = 2 * rows * D * V;
    double fc = 2 * rows * D * F;
    CHECK(lf->flops == L * lin + head && gf->flops == L * fc, "ckpt=%d: linear forward %.0f FLOPs, want %.0f", ckpt,
          lf->flops, L * lin + head);
    /* the head's input needs a gradient and so does the tied embedding: two products */
    CHECK(lb->flops == 2 * (L * lin + head) && gb->flops == 2 * L * fc, "ckpt=%d: linear backward %.0f FLOPs", ckpt,
          lb->flops);
    /* a selective replay skips the two output projections of each layer: no FLOPs counted for them */
    double skipped = 2 * rows * (D * D + (double)F * D);
    CHECK(lr->flops == (ckpt ? L * (lin - skipped) : 0), "ckpt=%d: linear recompute %.0f FLOPs, want %.0f", ckpt,
          lr->flops, L * (lin - skipped));
    /* causal: T (T + 1) / 2 scored pairs, 4 D FLOPs each; an unrecorded (checkpointed) forward has
     * no causal flag, so its count is unknown and its time is not in the rate */
    const cf_prof_cell *af = &p.cell[CF_OP_ATTENTION][CF_PROF_FORWARD];
    double pairs = (double)T * (T + 1) / 2, att = 4.0 * B * pairs * D;
    CHECK(af->calls == L && af->flops == (ckpt ? 0 : L * att), "ckpt=%d: attention %lld calls, %.0f FLOPs", ckpt,
          (long long)af->calls, af->flops);
    CHECK(p.cell[CF_OP_ATTENTION][CF_PROF_BACKWARD].flops == L * att * 2.5, "ckpt=%d: attention backward FLOPs", ckpt);
    for (int d = 0; d < CF_PROF_DIRS; d++)
        CHECK(p.cell[CF_OP_LAYERNORM][d].flops == 0, "layernorm has no FLOP count, got %g", p.cell[CF_OP_LAYERNORM][d].flops);
    free(off.grads);
    free(on.grads);
}

int main(void) {
    CHECK(cf_op_table_check() == 0, "%s", cf_error_msg());
    CHECK(!strcmp(cf_prof_dir_names[CF_PROF_RECOMPUTE], "recompute"), "direction names");
    check_step(0);
    check_step(1);
    TEST_MAIN_END();
}
