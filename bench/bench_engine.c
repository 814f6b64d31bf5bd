/* pgnd side of `make bench`: prints `bench <name> <value> <unit>` lines.
 *   bench_engine conv3x3 [reps]          3x3 conv 64->64 @ 1x64x128x128: fwd, bwd-data, bwd-weights
 *   bench_engine vgg_perceptual [reps] [batch] [size]
 *   bench_engine teacher [reps] [batch] [size] [weights]   either teacher through pgn/teacher.h
 *                                        VGG-19 (avg pools) perceptual loss + gradient w.r.t. the input
 *   bench_engine fit_step [reps] [batch] [size] [arch]
 *                                        one online PGN fit step (pgn/fit.h), random teacher and
 *                                        targets, with its split: teacher, PGN fwd+bwd, autoencoders
 *   bench_engine collect [reps] [batch] [size] [bf16|f32]
 *                                        teacher-gradient collection (pgn/collect.h): data batch +
 *                                        generators + teacher + generator step, written into the
 *                                        shard buffer and checked as the job does, and
 *                                        the shard writes on the job's thread (with sha256; shards
 *                                        of the job's size; the sync on its thread apart) per
 *                                        sample; next to the bare teacher gradient (target features
 *                                        + loss + gradient) on the same batches, interleaved so
 *                                        noise hits both, before and after the step in turn
 * Each mode is meant to run in its own process so that the peak RSS it prints is its own. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <time.h>

#include "nn/engine.h"
#include "pgn/collect.h"
#include "pgn/data.h"
#include "pgn/fit.h"
#include "pgn/image.h"
#include "pgn/shards.h"
#include "pgn/teacher.h"
#include "pgn/vgg19.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static double peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0;
}

static void die(const nn_err *e)
{
    fprintf(stderr, "bench_engine: %s\n", e->msg);
    exit(1);
}

static void fill_random(float *p, size_t n, nn_rng *r, float lo, float hi)
{
    for (size_t i = 0; i < n; i++)
        p[i] = nn_rng_uniform_range(r, lo, hi);
}

#define WARMUP 2
#define MAXREPS 64

static void bench_conv(nn_ctx *ctx, int reps)
{
    nn_err e;
    nn_rng r;
    nn_rng_seed(&r, 1);
    const int C = 64, H = 128, W = 128;
    nn_conv2d conv;
    if (nn_conv2d_init(&conv, C, C, 3, 3, 1, 1, 1, 1, 1, NN_PAD_ZERO, 1, &r, &e))
        die(&e);
    size_t count = (size_t)C * H * W;
    float *buf = nn_alloc(count * sizeof(float));
    fill_random(buf, count, &r, -1, 1);
    nn_act x = {0}, y = {0}, dy = {0}, dx = {0};
    if (nn_act_from_nchw(ctx, &x, buf, 1, C, H, W, &e) || nn_conv2d_forward(ctx, &conv, &x, &y, &e))
        die(&e);
    /* The upstream gradient in the layout the forward produced, as inside a net. */
    fill_random(buf, count, &r, -1, 1);
    if (nn_act_from_nchw(ctx, &dy, buf, 1, C, H, W, &e) || nn_act_convert(ctx, &dy, &y.md, &e))
        die(&e);
    double t[3][MAXREPS];
    for (int i = 0; i < WARMUP + reps; i++) {
        double t0 = now_ms();
        if (nn_conv2d_forward(ctx, &conv, &x, &y, &e))
            die(&e);
        double t1 = now_ms();
        nn_act_grad_reset(&dx);
        if (nn_conv2d_backward(ctx, &conv, &x, &dy, &dx, 0, &e))
            die(&e);
        double t2 = now_ms();
        if (nn_conv2d_backward(ctx, &conv, &x, &dy, NULL, 1, &e))
            die(&e);
        double t3 = now_ms();
        if (i >= WARMUP) {
            t[0][i - WARMUP] = t1 - t0;
            t[1][i - WARMUP] = t2 - t1;
            t[2][i - WARMUP] = t3 - t2;
        }
    }
    double gflop = 2.0 * C * C * 9 * H * W / 1e9;
    const char *names[3] = {"fwd", "bwd_data", "bwd_weights"};
    for (int k = 0; k < 3; k++) {
        double m = median(t[k], reps);
        printf("bench pgnd_conv3x3_%s_ms %.3f ms\n", names[k], m);
        printf("bench pgnd_conv3x3_%s_gflops %.1f GFLOP/s\n", names[k], gflop / (m / 1e3));
    }
    nn_act_free(&x), nn_act_free(&y), nn_act_free(&dy), nn_act_free(&dx);
    nn_conv2d_free(&conv);
    nn_free(buf);
}

static void bench_vgg(nn_ctx *ctx, int reps, int n, int size)
{
    nn_err e;
    nn_rng r;
    nn_rng_seed(&r, 2);
    vgg19 v;
    if (vgg19_init(&v, 0, &e))
        die(&e);
    /* The teacher's own policy by default (Winograd backward-data for batches up to 2).
     * PGND_WINOGRAD=1 also runs the forward as Winograd (faster still, but its rounding flips a few
     * ReLU / L1-sign decisions); PGND_WINOGRAD=0 runs everything direct. */
    const char *wenv = getenv("PGND_WINOGRAD");
    int wino = wenv && *wenv && atoi(wenv) == 1, direct = wenv && *wenv && atoi(wenv) == 0;
    if (wino || direct) {
        v.winograd_auto = 0;
        for (int i = 0; i < VGG19_CONVS; i++)
            v.conv[i].winograd = wino ? NN_WINO_FWD | NN_WINO_BWD_DATA : 0;
    }
    size_t count = (size_t)n * 3 * size * size;
    float *x = nn_alloc(count * sizeof(float)), *y = nn_alloc(count * sizeof(float)),
          *g = nn_alloc(count * sizeof(float));
    fill_random(x, count, &r, 0, 1);
    fill_random(y, count, &r, 0, 1);
    if (vgg19_set_target(ctx, &v, y, n, size, size, &e))
        die(&e);
    double t[MAXREPS], loss;
    for (int i = 0; i < WARMUP + reps; i++) {
        double t0 = now_ms();
        if (vgg19_perceptual(ctx, &v, x, n, size, size, &loss, NULL, g, &e))
            die(&e);
        if (i >= WARMUP)
            t[i - WARMUP] = now_ms() - t0;
    }
    char name[64];
    if (n == 1)
        snprintf(name, sizeof name, "%d%s", size, wino ? "_allwino" : direct ? "_direct" : "");
    else
        snprintf(name, sizeof name, "%dx%d%s", n, size, wino ? "_allwino" : direct ? "_direct" : "");
    printf("bench pgnd_vgg_perceptual_%s_ms %.3f ms\n", name, median(t, reps));
    printf("bench pgnd_vgg_perceptual_%s_peak_rss_mb %.1f MB\n", name, peak_rss_mb());
    fprintf(stderr, "loss %.6f\n", loss);
    vgg19_free(&v);
    nn_free(x), nn_free(y), nn_free(g);
}

/* Loss and gradient through the teacher interface (either teacher; weights "" = random VGG-19),
 * [0,1] inputs as the DIP arms hand them. */
static void bench_teacher(nn_ctx *ctx, int reps, int n, int size, const char *weights)
{
    nn_err e;
    nn_rng r;
    nn_rng_seed(&r, 2);
    pgn_teacher t;
    if (pgn_teacher_open(&t, weights, 0, &e))
        die(&e);
    size_t count = (size_t)n * 3 * size * size;
    float *x = nn_alloc(count * sizeof(float)), *y = nn_alloc(count * sizeof(float)),
          *g = nn_alloc(count * sizeof(float));
    fill_random(x, count, &r, 0, 1);
    fill_random(y, count, &r, 0, 1);
    if (pgn_teacher_set_target(ctx, &t, y, n, size, size, PGN_SPACE_UNIT, &e))
        die(&e);
    double tm[MAXREPS], loss;
    for (int i = 0; i < WARMUP + reps; i++) {
        double t0 = now_ms();
        if (pgn_teacher_loss_grad(ctx, &t, x, n, size, size, PGN_SPACE_UNIT, NULL, &loss, g, &e))
            die(&e);
        if (i >= WARMUP)
            tm[i - WARMUP] = now_ms() - t0;
    }
    printf("bench pgnd_teacher_%s%s_%dx%d_ms %.3f ms\n", t.name, t.random ? "_random" : "", n, size, median(tm, reps));
    printf("bench pgnd_teacher_%s%s_%dx%d_peak_rss_mb %.1f MB\n", t.name, t.random ? "_random" : "", n, size,
           peak_rss_mb());
    pgn_teacher_close(&t);
    nn_free(x), nn_free(y), nn_free(g);
}

static void bench_fit(int threads, int reps, int batch, int size, const char *arch)
{
    nn_err e;
    nn_rng r;
    nn_rng_seed(&r, 3);
    pgn_fit_params p;
    pgn_fit_params_default(&p);
    p.batch = batch, p.size = size;
    snprintf(p.arch, sizeof p.arch, "%s", arch);
    pgn_fit *f;
    if (pgn_fit_open(&f, &p, NULL, threads, &e))
        die(&e);
    size_t count = (size_t)batch * 3 * size * size;
    float *y = malloc(count * sizeof(float));
    double t[5][MAXREPS];
    pgn_fit_stats st;
    for (int i = 0; i < WARMUP + reps; i++) {
        fill_random(y, count, &r, -2, 2);
        double t0 = now_ms();
        if (pgn_fit_step(f, y, &st, &e))
            die(&e);
        if (i >= WARMUP) {
            t[0][i - WARMUP] = now_ms() - t0;
            t[1][i - WARMUP] = st.ms_teacher;
            t[2][i - WARMUP] = st.ms_pgn;
            t[3][i - WARMUP] = st.ms_ae;
            t[4][i - WARMUP] = st.ms_update;
        }
    }
    static const char *const part[5] = {"", "_teacher", "_pgn", "_ae", "_update"};
    for (int k = 0; k < 5; k++)
        printf("bench pgnd_fit_step_%dx%d%s_ms %.3f ms\n", batch, size, part[k], median(t[k], reps));
    printf("bench pgnd_fit_step_%dx%d_peak_rss_mb %.1f MB\n", batch, size, peak_rss_mb());
    pgn_fit_close(f);
    /* Issue 5: a step from a collection (pgn_fit_step_pairs: the PGN alone; shard reading not
     * included), with the teacher's proxy term (the default) and without it (w_proxy_perceptual 0). */
    float *yh = malloc(count * sizeof(float)), *g = malloc(count * sizeof(float));
    for (int variant = 0; variant < 2; variant++) {
        p.w_proxy_perceptual = variant ? 0.0 : 0.2;
        if (pgn_fit_open(&f, &p, NULL, threads, &e))
            die(&e);
        double tp[MAXREPS];
        for (int i = 0; i < WARMUP + reps; i++) {
            fill_random(y, count, &r, -2, 2);
            fill_random(yh, count, &r, -2, 2);
            fill_random(g, count, &r, -1e-4, 1e-4);
            double t0 = now_ms();
            if (pgn_fit_step_pairs(f, yh, y, g, &st, &e))
                die(&e);
            if (i >= WARMUP)
                tp[i - WARMUP] = now_ms() - t0;
        }
        printf("bench pgnd_fit_step_pairs_%dx%d%s_ms %.3f ms\n", batch, size, variant ? "_no_proxy_perceptual" : "",
               median(tp, reps));
        pgn_fit_close(f);
    }
    free(yh), free(g);
    free(y);
}

/* A few synthetic photographs in a temporary folder (RandomResizedCrop needs real decodes). */
static void synthetic_folder(char *dir, size_t len, int side)
{
    snprintf(dir, len, "/tmp/pgnd-bench-collect-%d", (int)getpid());
    mkdir(dir, 0755);
    nn_rng r;
    nn_rng_seed(&r, 4);
    float *img = malloc((size_t)3 * side * side * sizeof(float));
    for (int k = 0; k < 8; k++) {
        float fx = nn_rng_uniform_range(&r, 0.02f, 0.2f), fy = nn_rng_uniform_range(&r, 0.02f, 0.2f);
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < side; y++)
                for (int x = 0; x < side; x++)
                    img[((size_t)c * side + y) * side + x] =
                        0.5f + 0.4f * sinf(fx * x * (c + 1) + fy * y + k) * cosf(fy * y * 0.7f + c);
        char path[400], err[256];
        snprintf(path, sizeof path, "%s/img%02d.png", dir, k);
        if (pgn_image_save_png(path, img, side, side, err, sizeof err)) {
            fprintf(stderr, "bench_engine: %s\n", err);
            exit(1);
        }
    }
    free(img);
}

static void bench_collect(int threads, int reps, int batch, int size, const char *precision)
{
    nn_err e;
    char dir[256], err[1024], cmd[600];
    synthetic_folder(dir, sizeof dir, size * 2 > 256 ? size * 2 : 256);
    pgn_collect_params p;
    pgn_collect_params_default(&p);
    p.batch = batch, p.size = size;
    if (precision) /* the lines of a run with f32 generators are named pgnd_collect_<size>_f32_* */
        snprintf(p.generator_precision, sizeof p.generator_precision, "%s", precision);
    char tag[32];
    snprintf(tag, sizeof tag, "%d%s", size, precision && !strcmp(precision, "f32") ? "_f32" : "");
    snprintf(p.data, sizeof p.data, "%s", dir);
    pgn_data d;
    pgn_collect *c;
    if (pgn_data_open(&d, dir, 0.0, 0, err, sizeof err)) {
        fprintf(stderr, "bench_engine: %s\n", err);
        exit(1);
    }
    if (pgn_collect_open(&c, &p, NULL, threads, &e))
        die(&e);
    /* The shard buffer of the job's size, made once and touched before the steps as the job's is
     * (it fills the same buffer again for every shard); the steps write into it in turn. */
    const size_t cnt = (size_t)3 * size * size, ns = (size_t)p.samples_per_shard;
    const size_t span = ns / (size_t)batch * (size_t)batch; /* positions a whole step fits at */
    float *g = malloc((size_t)batch * cnt * sizeof(float));
    float *wy = malloc(ns * cnt * sizeof(float)), *wh = malloc(ns * cnt * sizeof(float)),
          *wg = malloc(ns * cnt * sizeof(float)), *wl = malloc(ns * sizeof(float));
    if (span == 0) {
        fprintf(stderr, "bench_engine: batch %d is larger than a shard (%zu samples)\n", batch, ns);
        exit(1);
    }
    if (!g || !wy || !wh || !wg || !wl) {
        fprintf(stderr, "bench_engine: out of memory for a shard of %zu samples\n", ns);
        exit(1);
    }
    memset(wy, 0, ns * cnt * sizeof(float)), memset(wh, 0, ns * cnt * sizeof(float));
    memset(wg, 0, ns * cnt * sizeof(float)), memset(wl, 0, ns * sizeof(float));
    double tc[MAXREPS], tt[MAXREPS], tae[MAXREPS], tin[MAXREPS], tdata[MAXREPS], tother[MAXREPS];
    pgn_collect_stats st;
    pgn_teacher *t = pgn_collect_teacher(c);
    nn_ctx *ctx = pgn_collect_ctx(c);
    for (int i = 0; i < WARMUP + reps; i++) {
        /* The bare teacher gradient runs after the collect step in even reps (on its pairs), before
         * it in odd ones (on the previous rep's pairs): what runs just before a pass changes its time
         * by a few ms here (caches, the threads' state), and neither side should always have the
         * same neighbour. */
        const int bare_first = i % 2 == 1;
        double b0 = 0, b1 = 0;
        const size_t at = (size_t)i * batch % span * cnt;
        if (bare_first) {
            const size_t prev = (size_t)(i - 1) * batch % span * cnt;
            b0 = now_ms();
            if (pgn_teacher_set_target(ctx, t, wy + prev, batch, size, size, PGN_SPACE_NORMALISED, &e) ||
                pgn_teacher_loss_grad(ctx, t, wh + prev, batch, size, size, PGN_SPACE_NORMALISED, NULL, NULL, g, &e))
                die(&e);
            b1 = now_ms();
        }
        /* as the job does: the batch drawn, y_hat and g_true written straight into the shard
         * buffer, every value checked finite, the losses copied */
        float *yb = wy + at;
        double t0 = now_ms();
        if (pgn_data_train_batch(&d, yb, batch, size, err, sizeof err)) {
            fprintf(stderr, "bench_engine: %s\n", err);
            exit(1);
        }
        double td = now_ms();
        if (pgn_collect_step_into(c, yb, wh + at, wg + at, &st, &e))
            die(&e);
        const float *yh, *gt;
        const double *loss;
        pgn_collect_last(c, &yh, &gt, &loss);
        int finite = 1;
        for (size_t q = 0; q < (size_t)batch * cnt; q++)
            finite &= isfinite(yh[q]) && isfinite(gt[q]);
        if (!finite)
            fprintf(stderr, "bench_engine: a non-finite sample (the job would drop it)\n");
        for (int k = 0; k < batch; k++)
            wl[at / cnt + (size_t)k] = (float)loss[k];
        double t1 = now_ms();
        if (!bare_first) {
            b0 = t1;
            if (pgn_teacher_set_target(ctx, t, yb, batch, size, size, PGN_SPACE_NORMALISED, &e) ||
                pgn_teacher_loss_grad(ctx, t, yh, batch, size, size, PGN_SPACE_NORMALISED, NULL, NULL, g, &e))
                die(&e);
            b1 = now_ms();
        }
        if (i >= WARMUP) {
            int k = i - WARMUP;
            tc[k] = t1 - t0, tt[k] = b1 - b0, tae[k] = st.ms_ae, tin[k] = st.ms_teacher, tdata[k] = td - t0;
            tother[k] = tc[k] - tdata[k] - st.ms_ae - st.ms_teacher; /* bookkeeping, checks */
        }
    }
    /* The shard, written once after the steps that filled its buffer, as the job writes it (per
     * sample): on the job's thread, the file with its sha256 under a temporary name, then the
     * manifest; the sync and rename on the job's sync thread while the next steps run (on its own
     * line, not added to the steps). Once per process (make bench takes the median over its
     * rounds), not in a loop: right after another shard, this VM writes one 37 MB shard in about
     * 21 ms; after seconds of steps that rewrote the buffer, as in the job, 25-75 ms. */
    const double rss = peak_rss_mb(); /* the collect's, with its shard buffer */
    pgn_shard_entry ent;
    char tmp[600], path[600];
    double w0 = now_ms();
    if (pgn_shard_write_unsynced(dir, pgn_collect_info(c), 0, (int)ns, wh, wy, wg, wl, &ent, tmp, sizeof tmp, &e))
        die(&e);
    double w1 = now_ms();
    snprintf(path, sizeof path, "%s/%s", dir, ent.file);
    if (pgn_shard_commit(tmp, path, &e))
        die(&e);
    double w2 = now_ms();
    if (pgn_manifest_write(dir, pgn_collect_info(c), &ent, 1, 0, &e))
        die(&e);
    const double write_per_sample = ((w1 - w0) + (now_ms() - w2)) / (double)ns, sync_per_sample = (w2 - w1) / (double)ns;
    free(wh), free(wy), free(wg), free(wl);
    /* The overhead per rep, from the collect step and the bare teacher next to it (the same phase
     * of a noisy machine), then the median of those; the shard write per sample on the job's
     * thread (above) is added to every rep's step. */
    double ov[MAXREPS];
    for (int k = 0; k < reps; k++)
        ov[k] = 100.0 * ((tc[k] / batch + write_per_sample) / (tt[k] / batch) - 1.0);
    double mc = median(tc, reps), mt = median(tt, reps); /* (median sorts: after the pairs) */
    double per_sample = mc / batch + write_per_sample;
    printf("bench pgnd_collect_%s_samples_per_s %.2f samples/s\n", tag, 1e3 / per_sample);
    printf("bench pgnd_collect_%s_teacher_only_samples_per_s %.2f samples/s\n", tag, 1e3 * batch / mt);
    printf("bench pgnd_collect_%s_overhead_pct %.1f %%\n", tag, median(ov, reps));
    printf("bench pgnd_collect_%s_step_ms %.3f ms\n", tag, mc);
    printf("bench pgnd_collect_%s_step_teacher_ms %.3f ms\n", tag, median(tin, reps));
    printf("bench pgnd_collect_%s_step_ae_ms %.3f ms\n", tag, median(tae, reps));
    printf("bench pgnd_collect_%s_step_data_ms %.3f ms\n", tag, median(tdata, reps));
    printf("bench pgnd_collect_%s_step_other_ms %.3f ms\n", tag, median(tother, reps));
    printf("bench pgnd_collect_%s_teacher_only_ms %.3f ms\n", tag, mt);
    printf("bench pgnd_collect_%s_write_ms_per_sample %.3f ms\n", tag, write_per_sample);
    printf("bench pgnd_collect_%s_write_sync_ms_per_sample %.3f ms\n", tag, sync_per_sample);
    printf("bench pgnd_collect_%s_peak_rss_mb %.1f MB\n", tag, rss);
    pgn_collect_close(c);
    pgn_data_close(&d);
    free(g);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd))
        fprintf(stderr, "bench_engine: could not remove %s\n", dir);
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "conv3x3";
    int reps = argc > 2 ? atoi(argv[2]) : 7;
    if (reps < 1 || reps > MAXREPS)
        reps = 7;
    nn_ctx ctx;
    nn_err e;
    int threads = getenv("PGND_THREADS") ? atoi(getenv("PGND_THREADS")) : 2;
    if (nn_ctx_init(&ctx, threads, &e))
        die(&e);
    if (!strcmp(mode, "conv3x3"))
        bench_conv(&ctx, reps);
    else if (!strcmp(mode, "vgg_perceptual"))
        bench_vgg(&ctx, reps, argc > 3 ? atoi(argv[3]) : 1, argc > 4 ? atoi(argv[4]) : 256);
    else if (!strcmp(mode, "teacher"))
        bench_teacher(&ctx, reps, argc > 3 ? atoi(argv[3]) : 6, argc > 4 ? atoi(argv[4]) : 64, argc > 5 ? argv[5] : "");
    else if (!strcmp(mode, "fit_step"))
        bench_fit(threads, reps, argc > 3 ? atoi(argv[3]) : 6, argc > 4 ? atoi(argv[4]) : 64,
                  argc > 5 ? argv[5] : "unet");
    else if (!strcmp(mode, "collect"))
        bench_collect(threads, reps, argc > 3 ? atoi(argv[3]) : 6, argc > 4 ? atoi(argv[4]) : 64,
                      argc > 5 ? argv[5] : NULL);
    else if (!strcmp(mode, "rss_baseline"))
        printf("bench pgnd_baseline_rss_mb %.1f MB\n", peak_rss_mb());
    else {
        fprintf(stderr, "usage: bench_engine conv3x3|vgg_perceptual|teacher|fit_step|collect|rss_baseline [reps] [batch] [size] [arch|weights]\n");
        return 2;
    }
    nn_ctx_free(&ctx);
    return 0;
}
