/* pgnd side of `make bench`: prints `bench <name> <value> <unit>` lines.
 *   bench_engine conv3x3 [reps]          3x3 conv 64->64 @ 1x64x128x128: fwd, bwd-data, bwd-weights
 *   bench_engine vgg_perceptual [reps] [batch] [size]
 *                                        VGG-19 (avg pools) perceptual loss + gradient w.r.t. the input
 *   bench_engine fit_step [reps] [batch] [size] [arch]
 *                                        one online PGN fit step (pgn/fit.h), random teacher and
 *                                        targets, with its split: teacher, PGN fwd+bwd, autoencoders
 * Each mode is meant to run in its own process so that the peak RSS it prints is its own. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "nn/engine.h"
#include "pgn/fit.h"
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
    free(y);
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
    else if (!strcmp(mode, "fit_step"))
        bench_fit(threads, reps, argc > 3 ? atoi(argv[3]) : 6, argc > 4 ? atoi(argv[4]) : 64,
                  argc > 5 ? argv[5] : "unet");
    else if (!strcmp(mode, "rss_baseline"))
        printf("bench pgnd_baseline_rss_mb %.1f MB\n", peak_rss_mb());
    else {
        fprintf(stderr, "usage: bench_engine conv3x3|vgg_perceptual|fit_step|rss_baseline [reps] [batch] [size] [arch]\n");
        return 2;
    }
    nn_ctx_free(&ctx);
    return 0;
}
