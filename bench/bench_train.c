/* pgnd side of the generator-training bench (issue 9): one Deep Image Prior step per arm, as
 * pgn/train.c takes it, next to the authors' PyTorch step (bench/torch_ref.py dip_step).
 *   bench_train dip_step ARM [reps] [size] [pgn_checkpoint]
 *     ARM mse | vgg | pgn; reps timed steps after 2 warm-up steps (default 10); size 128.
 *     One step = zero_grad, DIP forward on the fixed noise, the arm's loss and gradient w.r.t. the
 *     DIP output, DIP backward, Adam step (lr 0.01), exactly as pgn/train.c's arm_step:
 *       mse  MSE in normalised space (its gradient through 1/std),
 *       vgg  the teacher's perceptual loss and gradient (target features cached, random teacher:
 *            the cost does not depend on the weights' values),
 *       pgn  pgn_net_predict (UNet, BN folded; default checkpoint tests/fixtures/pgn_unet_legacy.pth)
 *            on y_hat and y in normalised space; its predicted gradient through 1/std (§2.5).
 *     Prints (medians over the timed steps):
 *       bench pgnd_dip_<arm>_<size>_ms          the whole step (and _min_ms: the fastest step, a
 *                                               steadier figure on a loaded machine)
 *       bench pgnd_dip_<arm>_<size>_loss_ms     the loss and gradient (VGG forward+backward to the
 *                                               input; PGN forward + head; MSE)
 *       bench pgnd_dip_<arm>_<size>_dip_ms      zero_grad + DIP forward + backward + Adam
 *       bench pgnd_dip_<arm>_<size>_engine_peak_mb  engine-accounted memory (nn/memstat.h): the
 *                                               peak of everything the engine holds during the
 *                                               steps (counted from just before the first step,
 *                                               so construction transients such as weight-file
 *                                               buffers are out), plus oneDNN's largest library
 *                                               scratchpad; then each kind's own peak
 *                                               (_engine_{tensor,act,scratch,other}_peak_mb) and
 *                                               _engine_dnnl_scratchpad_mb
 *       bench pgnd_dip_<arm>_<size>_peak_rss_mb the process's peak RSS
 * Each arm is meant to run in its own process so that the memory figures are its own. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "nn/adam.h"
#include "nn/engine.h"
#include "nn/memstat.h"
#include "pgn/dip.h"
#include "pgn/pgn_net.h"
#include "pgn/teacher.h"

#define WARMUP 2
#define MAXREPS 200
#define DEFAULT_PGN "tests/fixtures/pgn_unet_legacy.pth"

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

static void die(const char *what, const nn_err *e)
{
    fprintf(stderr, "bench_train: %s: %s\n", what, e->msg);
    exit(1);
}

enum { ARM_MSE, ARM_VGG, ARM_PGN };

typedef struct bench {
    int arm, s;
    size_t count;
    nn_ctx ctx;
    pgn_dip dip;
    nn_adam opt;
    pgn_teacher teacher;
    pgn_net net;
    float *noise, *target, *target_n, *y, *yn, *grad, *p, *g;
} bench;

/* pgn/train.c's mse_loss_grad: MSE in normalised space, gradient w.r.t. the [0,1] image. */
static double mse_loss_grad(bench *b)
{
    size_t plane = (size_t)b->s * b->s;
    double sum = 0;
    pgn_to_normalised(b->yn, b->y, 1, b->s, b->s, PGN_SPACE_UNIT);
    for (size_t i = 0; i < b->count; i++) {
        double d = (double)b->yn[i] - b->target_n[i];
        sum += d * d;
        b->grad[i] = (float)(2.0 * d / (double)b->count / pgn_imagenet_std[i / plane]);
    }
    return sum / (double)b->count;
}

/* pgn/train.c's pgn_arm_grad (lambda 0): the PGN's predicted gradient through 1/std, and the
 * proxy-target loss mean (y_hat - p)^2 / s. */
static int pgn_loss_grad(bench *b, double *loss, nn_err *e)
{
    size_t plane = (size_t)b->s * b->s;
    pgn_to_normalised(b->yn, b->y, 1, b->s, b->s, PGN_SPACE_UNIT);
    if (pgn_net_predict(&b->ctx, &b->net, b->yn, b->target_n, 1, b->s, b->s, b->p, b->g, e))
        return -1;
    double proxy = 0;
    for (size_t i = 0; i < b->count; i++) {
        double d = (double)b->yn[i] - b->p[i];
        proxy += d * d;
        b->grad[i] = b->g[i] / pgn_imagenet_std[i / plane];
    }
    *loss = proxy / (double)b->count / b->net.head.grad_scale;
    return 0;
}

/* One step; t[0] the whole, t[1] the loss part, t[2] the DIP part. ph (may be NULL) receives
 * the memory counters before the step and after the forward, the loss and the backward. */
static void step(bench *b, double t[3], double *loss, nn_memstat ph[4])
{
    nn_err e;
    if (ph)
        nn_memstat_get(&ph[0]);
    double t0 = now_ms();
    pgn_dip_zero_grad(&b->dip);
    if (pgn_dip_forward(&b->ctx, &b->dip, b->y, &e))
        die("dip forward", &e);
    double t1 = now_ms();
    if (ph)
        nn_memstat_get(&ph[1]);
    if (b->arm == ARM_VGG) {
        if (pgn_teacher_loss_grad(&b->ctx, &b->teacher, b->y, 1, b->s, b->s, PGN_SPACE_UNIT, NULL, loss, b->grad, &e))
            die("teacher", &e);
    } else if (b->arm == ARM_MSE) {
        *loss = mse_loss_grad(b);
    } else if (pgn_loss_grad(b, loss, &e)) {
        die("pgn", &e);
    }
    double t2 = now_ms();
    if (ph)
        nn_memstat_get(&ph[2]);
    if (pgn_dip_backward(&b->ctx, &b->dip, b->grad, &e))
        die("dip backward", &e);
    nn_adam_step(&b->opt);
    double t3 = now_ms();
    if (ph)
        nn_memstat_get(&ph[3]);
    t[0] = t3 - t0, t[1] = t2 - t1, t[2] = (t1 - t0) + (t3 - t2);
}

static float *must_alloc(size_t count)
{
    float *p = malloc(count * sizeof(float));
    if (!p) {
        fprintf(stderr, "bench_train: out of memory\n");
        exit(1);
    }
    return p;
}

static void bench_dip_step(const char *arm_name, int reps, int size, const char *ckpt)
{
    static bench b; /* the DIP's layer state is large: off the stack */
    nn_err e;
    if (!strcmp(arm_name, "mse"))
        b.arm = ARM_MSE;
    else if (!strcmp(arm_name, "vgg"))
        b.arm = ARM_VGG;
    else if (!strcmp(arm_name, "pgn"))
        b.arm = ARM_PGN;
    else {
        fprintf(stderr, "bench_train: unknown arm '%s' (mse, vgg, pgn)\n", arm_name);
        exit(2);
    }
    if (pgn_dip_check_size(size, size, &e))
        die("size", &e);
    int threads = getenv("PGND_THREADS") ? atoi(getenv("PGND_THREADS")) : 2;
    if (nn_ctx_init(&b.ctx, threads, &e))
        die("context", &e);
    b.s = size;
    b.count = (size_t)3 * size * size;
    b.noise = must_alloc(b.count), b.target = must_alloc(b.count), b.target_n = must_alloc(b.count);
    b.y = must_alloc(b.count), b.yn = must_alloc(b.count), b.grad = must_alloc(b.count);
    /* A random target in [0,1] (the cost does not depend on the image), the DIP's U[0, 0.1) noise. */
    nn_rng r;
    nn_rng_seed(&r, 7);
    for (size_t i = 0; i < b.count; i++)
        b.target[i] = nn_rng_uniform_range(&r, 0, 1);
    pgn_to_normalised(b.target_n, b.target, 1, size, size, PGN_SPACE_UNIT);
    pgn_dip_noise(b.noise, b.count, 0);
    if (pgn_dip_init(&b.dip, 0, &e) || pgn_dip_set_input(&b.ctx, &b.dip, b.noise, 1, size, size, &e))
        die("dip", &e);
    int np;
    const nn_param *ps = pgn_dip_params(&b.dip, &np);
    if (nn_adam_init(&b.opt, ps, np, 0.01f, 0.9f, 0.999f, 1e-8f, 0.0f, &e))
        die("adam", &e);
    if (b.arm == ARM_VGG) {
        const char *w = getenv("PGND_TEACHER_WEIGHTS");
        if (pgn_teacher_open(&b.teacher, w, 0, &e) ||
            pgn_teacher_set_target(&b.ctx, &b.teacher, b.target, 1, size, size, PGN_SPACE_UNIT, &e))
            die("teacher", &e);
    } else if (b.arm == ARM_PGN) {
        if (pgn_net_load(&b.net, ckpt, &e))
            die("pgn checkpoint", &e);
        b.p = must_alloc(b.count), b.g = must_alloc(b.count);
        fprintf(stderr, "pgn: %s from %s\n", b.net.desc, ckpt);
    }
    /* Everything built: from here on, what the steps hold and allocate. The first steps make
     * the per-shape state (activations, oneDNN's weight copies; the teacher then drops its
     * PyTorch-layout weights): their peak is reported apart from the steady state's. */
    nn_memstat_reset_peak();
    nn_memstat m0, mw, m, ph[4];
    nn_memstat_get(&m0);
    double t[3][MAXREPS], loss = 0, first = 0;
    for (int i = 0; i < WARMUP + reps; i++) {
        double ti[3];
        step(&b, ti, &loss, i == 0 ? ph : NULL);
        if (i == 0)
            first = loss;
        if (i == WARMUP - 1) {
            nn_memstat_get(&mw);
            nn_memstat_reset_peak();
        }
        if (i >= WARMUP)
            for (int k = 0; k < 3; k++)
                t[k][i - WARMUP] = ti[k];
    }
    nn_memstat_get(&m);
    char tag[64];
    snprintf(tag, sizeof tag, "pgnd_dip_%s_%d", arm_name, size);
    static const char *const part[3] = {"", "_loss", "_dip"};
    for (int k = 0; k < 3; k++)
        printf("bench %s%s_ms %.3f ms\n", tag, part[k], median(t[k], reps));
    printf("bench %s_min_ms %.3f ms\n", tag, t[0][0]); /* sorted by median() */
    const double MB = 1024.0 * 1024.0;
    printf("bench %s_engine_peak_mb %.2f MB\n", tag, (double)(m.total_peak + m.dnnl_scratchpad) / MB);
    printf("bench %s_engine_first_peak_mb %.2f MB\n", tag, (double)(mw.total_peak + mw.dnnl_scratchpad) / MB);
    for (int k = 0; k < NN_MEM_KINDS; k++)
        printf("bench %s_engine_%s_peak_mb %.2f MB\n", tag, nn_mem_kind_name((nn_mem_kind)k), (double)m.peak[k] / MB);
    printf("bench %s_engine_dnnl_scratchpad_mb %.2f MB\n", tag, (double)m.dnnl_scratchpad / MB);
    printf("bench %s_peak_rss_mb %.1f MB\n", tag, peak_rss_mb());
    fprintf(stderr, "%s: loss %.6g -> %.6g over %d steps\n", tag, first, loss, WARMUP + reps);
    fprintf(stderr, "  engine (MB)  built  +fwd1  +loss1 +bwd1  warm-up-peak  steady-cur  steady-peak\n");
    for (int k = 0; k <= NN_MEM_KINDS; k++) {
        const char *name = k < NN_MEM_KINDS ? nn_mem_kind_name((nn_mem_kind)k) : "total";
#define CUR(x) (k < NN_MEM_KINDS ? (x).cur[k] : (x).total)
#define PEAK(x) (k < NN_MEM_KINDS ? (x).peak[k] : (x).total_peak)
        fprintf(stderr, "  %-8s %8.2f %6.2f %6.2f %6.2f %12.2f %11.2f %12.2f\n", name, (double)CUR(m0) / MB,
                (double)(CUR(ph[1]) - CUR(ph[0])) / MB, (double)(CUR(ph[2]) - CUR(ph[1])) / MB,
                (double)(CUR(ph[3]) - CUR(ph[2])) / MB, (double)PEAK(mw) / MB, (double)CUR(m) / MB,
                (double)PEAK(m) / MB);
#undef CUR
#undef PEAK
    }
    if (!isfinite(loss)) {
        fprintf(stderr, "bench_train: loss is not finite\n");
        exit(1);
    }
    if (b.arm == ARM_VGG)
        pgn_teacher_close(&b.teacher);
    if (b.arm == ARM_PGN)
        pgn_net_free(&b.net), free(b.p), free(b.g);
    nn_adam_free(&b.opt);
    pgn_dip_free(&b.dip);
    free(b.noise), free(b.target), free(b.target_n), free(b.y), free(b.yn), free(b.grad);
    nn_ctx_free(&b.ctx);
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "dip_step") && argc > 2) {
        int reps = argc > 3 ? atoi(argv[3]) : 10;
        if (reps < 1 || reps > MAXREPS)
            reps = 10;
        bench_dip_step(argv[2], reps, argc > 4 ? atoi(argv[4]) : 128, argc > 5 ? argv[5] : DEFAULT_PGN);
        return 0;
    }
    fprintf(stderr, "usage: bench_train dip_step mse|vgg|pgn [reps] [size] [pgn_checkpoint]\n");
    return 2;
}
