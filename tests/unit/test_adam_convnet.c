/* A 20-step PyTorch training run (tests/fixtures/adam_convnet.safetensors, see the README there)
 * reproduced twice: with the oneDNN engine layers and with the plain-C reference kernels.
 *
 *     c1 conv3x3(3->8, p1, no bias) -> bn(8, train) -> relu -> c2 conv3x3(8->8, s2, p1, no bias)
 *     -> leaky_relu(0.2) -> upsample bilinear x2 (align_corners) -> c3 conv1x1(8->3, bias)
 *     loss = mse(y, t); clip_grad_norm_(max_norm=0.1); Adam(lr=1e-2)
 *
 * Both paths keep their parameters in nn_tensors, so one driver (train_and_compare) does what
 * does not depend on the layers: loading init.*, zeroing gradients, clipping, Adam, and every
 * comparison with the fixture. Each path only supplies its forward + backward.
 *
 * Checked, each as max |got - want| / max |want| <= 1e-4:
 *   step0.y and step0.grad.* (first forward / raw gradients: localise a failure),
 *   losses[k] and grad_norms[k] (pre-clip) at every step, final.* (parameters, BN running stats). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "nn/adam.h"
#include "nn/engine.h"
#include "nn/ref.h"
#include "tests/unit/fixture.h"

#define FIXTURE "adam_convnet.safetensors"
#define STEPS 20
#define TOL 1e-4
#define MAX_NORM 0.1
#define LR 1e-2f

/* The net's dimensions. */
#define N 2
#define CIN 3
#define C 8
#define H 16
#define W 16
#define H2 8 /* after the stride-2 conv */
#define W2 8

/* Parameters in net.parameters() order, then BN's running statistics (fixture names). */
enum { C1W, BNW, BNB, C2W, C3W, C3B, NPARAM, BN_RM = NPARAM, BN_RV, NSTATE };
static const char *const STATE_NAMES[NSTATE] = {
    "c1.weight", "bn.weight", "bn.bias", "c2.weight", "c3.weight", "c3.bias", /* parameters */
    "bn.running_mean", "bn.running_var",                                      /* BN buffers */
};

/* One way of running the net, as the driver sees it. */
typedef struct trainee {
    const char *label;        /* "engine" / "ref", for messages */
    nn_tensor *state[NSTATE]; /* the tensors the forward reads and Adam updates (STATE_NAMES order) */
    nn_tensor *grad[NPARAM];  /* their gradients (zeroed by the driver before each step) */
    /* Forward on the fixture's x, MSE against t, backward into grad[]. Returns the loss; when y is
     * not NULL it also receives the output, NCHW. */
    double (*forward_backward)(void *net, float *y);
    void *net;
} trainee;

static void check_ok(int rc, const nn_err *e)
{
    if (rc) {
        print_error("%s\n", e->msg);
        fail();
    }
}

static void copy_expect_numel(nn_tensor *dst, const float *src, size_t numel, const char *name)
{
    if (numel != dst->numel) {
        print_error("fixture tensor %s has %zu elements, the net %zu\n", name, numel, dst->numel);
        fail();
    }
    memcpy(dst->data, src, numel * sizeof(float));
}

/* init.* into the trainee's tensors. */
static void load_init(const trainee *tr, const nn_weights *fx)
{
    for (int i = 0; i < NSTATE; i++) {
        char name[64];
        size_t numel;
        snprintf(name, sizeof name, "init.%s", STATE_NAMES[i]);
        const float *src = fx_get(fx, name, &numel);
        copy_expect_numel(tr->state[i], src, numel, name);
    }
}

/* Compares and returns the relative error (fails the test above TOL). */
static double expect_close(const trainee *tr, const char *what, const float *got, const float *want, size_t n)
{
    char label[96];
    snprintf(label, sizeof label, "%s: %s", tr->label, what);
    fx_expect_close(label, got, want, n, TOL);
    return fx_rel_err(got, want, n);
}

static double expect_scalar(const trainee *tr, const char *what, int step, double got, float want)
{
    const double err = fabs(got - (double)want) / fabs((double)want);
    if (!(err <= TOL)) {
        print_error("%s: %s at step %d is %.9g, PyTorch %.9g (relative error %.3g > %.3g)\n", tr->label, what, step,
                    got, (double)want, err, TOL);
        fail();
    }
    return err;
}

/* The first step's output and raw gradients, against step0.* when the fixture has them. */
static void compare_step0(const trainee *tr, const nn_weights *fx, const float *y)
{
    size_t numel;
    const float *want = fx_find(fx, "step0.y", &numel);
    if (want) {
        assert_int_equal(numel, (size_t)N * CIN * H * W);
        double err = expect_close(tr, "step0.y", y, want, numel);
        print_message("%s: step0.y error %.3g\n", tr->label, err);
    }
    double worst = 0;
    int found = 0;
    for (int i = 0; i < NPARAM; i++) {
        char name[64];
        snprintf(name, sizeof name, "step0.grad.%s", STATE_NAMES[i]);
        want = fx_find(fx, name, &numel);
        if (!want)
            continue;
        assert_int_equal(numel, tr->grad[i]->numel);
        found++;
        worst = fmax(worst, expect_close(tr, name, tr->grad[i]->data, want, numel));
    }
    if (found)
        print_message("%s: step0 gradients, max error %.3g (%d tensors)\n", tr->label, worst, found);
}

/* The shared step loop and every comparison. The trainee's tensors must hold init.* already. */
static void train_and_compare(const trainee *tr, const nn_weights *fx)
{
    nn_err e;
    nn_param params[NPARAM];
    for (int i = 0; i < NPARAM; i++)
        params[i] = (nn_param){tr->state[i], tr->grad[i]};
    nn_adam opt;
    check_ok(nn_adam_init(&opt, params, NPARAM, LR, 0.9f, 0.999f, 1e-8f, 0.0f, &e), &e);

    size_t nl, nn;
    const float *losses = fx_get(fx, "losses", &nl), *norms = fx_get(fx, "grad_norms", &nn);
    assert_int_equal(nl, STEPS);
    assert_int_equal(nn, STEPS);

    float *y0 = malloc((size_t)N * CIN * H * W * sizeof(float));
    assert_non_null(y0);
    double loss_err = 0, norm_err = 0;
    for (int k = 0; k < STEPS; k++) {
        nn_params_zero_grad(params, NPARAM);
        const double loss = tr->forward_backward(tr->net, k == 0 ? y0 : NULL);
        if (k == 0)
            compare_step0(tr, fx, y0);
        const double norm = nn_clip_grad_norm(params, NPARAM, MAX_NORM);
        loss_err = fmax(loss_err, expect_scalar(tr, "loss", k, loss, losses[k]));
        norm_err = fmax(norm_err, expect_scalar(tr, "pre-clip gradient norm", k, norm, norms[k]));
        nn_adam_step(&opt);
    }
    free(y0);
    nn_adam_free(&opt);

    double final_err = 0;
    for (int i = 0; i < NSTATE; i++) {
        char name[64];
        size_t numel;
        snprintf(name, sizeof name, "final.%s", STATE_NAMES[i]);
        const float *want = fx_get(fx, name, &numel);
        assert_int_equal(numel, tr->state[i]->numel);
        const double err = expect_close(tr, name, tr->state[i]->data, want, numel);
        print_message("%s: %-22s error %.3g\n", tr->label, name, err);
        final_err = fmax(final_err, err);
    }
    print_message("%s: max relative errors over %d steps: loss %.3g, gradient norm %.3g, final tensors %.3g\n",
                  tr->label, STEPS, loss_err, norm_err, final_err);
}

/* ------------------------------------------------------------------ engine (oneDNN) path */

typedef struct engine_net {
    nn_ctx ctx;
    nn_conv2d c1, c2, c3;
    nn_batchnorm2d bn;
    nn_eltwise relu, lrelu;
    nn_upsample2x up;
    nn_act x, t;                       /* fixed input and target */
    nn_act a1, b1, r1, a2, l2, u, y;   /* activations, in forward order */
    nn_act dy, du, dl2, da2, dr1, db1; /* their gradients (da1: BN's dx, c1's dy) */
    nn_act da1;
} engine_net;

static double engine_forward_backward(void *p, float *y_out)
{
    engine_net *n = p;
    nn_ctx *ctx = &n->ctx;
    nn_err e;
    check_ok(nn_conv2d_forward(ctx, &n->c1, &n->x, &n->a1, &e), &e);
    check_ok(nn_batchnorm2d_forward(ctx, &n->bn, &n->a1, &n->b1, &e), &e);
    check_ok(nn_eltwise_forward(ctx, &n->relu, &n->b1, &n->r1, &e), &e);
    check_ok(nn_conv2d_forward(ctx, &n->c2, &n->r1, &n->a2, &e), &e);
    check_ok(nn_eltwise_forward(ctx, &n->lrelu, &n->a2, &n->l2, &e), &e);
    check_ok(nn_upsample2x_forward(ctx, &n->up, &n->l2, &n->u, &e), &e);
    check_ok(nn_conv2d_forward(ctx, &n->c3, &n->u, &n->y, &e), &e);
    if (y_out)
        check_ok(nn_act_to_nchw(ctx, &n->y, y_out, &e), &e);
    double loss;
    check_ok(nn_mse_loss(ctx, &n->y, &n->t, &loss, NULL, &e), &e);

    nn_act *grads[] = {&n->dy, &n->du, &n->dl2, &n->da2, &n->dr1, &n->db1, &n->da1};
    for (size_t i = 0; i < sizeof grads / sizeof *grads; i++)
        nn_act_grad_reset(grads[i]);
    check_ok(nn_mse_loss_backward(ctx, &n->y, &n->t, 1.0f, &n->dy, &e), &e);
    check_ok(nn_conv2d_backward(ctx, &n->c3, &n->u, &n->dy, &n->du, 1, &e), &e);
    check_ok(nn_upsample2x_backward(ctx, &n->up, &n->du, &n->dl2, &e), &e);
    check_ok(nn_eltwise_backward(ctx, &n->lrelu, &n->a2, &n->dl2, &n->da2, &e), &e);
    check_ok(nn_conv2d_backward(ctx, &n->c2, &n->r1, &n->da2, &n->dr1, 1, &e), &e);
    check_ok(nn_eltwise_backward(ctx, &n->relu, &n->b1, &n->dr1, &n->db1, &e), &e);
    check_ok(nn_batchnorm2d_backward(ctx, &n->bn, &n->a1, &n->db1, &n->da1, &e), &e);
    check_ok(nn_conv2d_backward(ctx, &n->c1, &n->x, &n->da1, NULL, 1, &e), &e);
    return loss;
}

static void engine_reproduces_torch_adam_run(void **state)
{
    (void)state;
    nn_weights fx;
    fx_open(&fx, FIXTURE);
    engine_net *n = calloc(1, sizeof *n);
    assert_non_null(n);
    nn_err e;
    check_ok(nn_ctx_init(&n->ctx, 0, &e), &e);
    check_ok(nn_conv2d_init(&n->c1, CIN, C, 3, 3, 1, 1, 1, 1, 1, NN_PAD_ZERO, 0, NULL, &e), &e);
    check_ok(nn_batchnorm2d_init(&n->bn, C, 1e-5f, 0.1f, &e), &e);
    nn_eltwise_init(&n->relu, NN_RELU, 0.0f);
    check_ok(nn_conv2d_init(&n->c2, C, C, 3, 3, 2, 2, 1, 1, 1, NN_PAD_ZERO, 0, NULL, &e), &e);
    nn_eltwise_init(&n->lrelu, NN_LEAKY_RELU, 0.2f);
    nn_upsample2x_init(&n->up, 1);
    check_ok(nn_conv2d_init(&n->c3, C, CIN, 1, 1, 1, 1, 0, 0, 1, NN_PAD_ZERO, 1, NULL, &e), &e);
    n->bn.training = 1;
    /* Trained layers: frozen stays 0, so every forward reorders the weights Adam just changed. */
    assert_int_equal(n->c1.frozen | n->c2.frozen | n->c3.frozen, 0);

    fx_act_from(&n->ctx, &n->x, fx_get(&fx, "x", NULL), N, CIN, H, W);
    fx_act_from(&n->ctx, &n->t, fx_get(&fx, "t", NULL), N, CIN, H, W);

    trainee tr = {
        .label = "engine",
        .state = {&n->c1.weight, &n->bn.gamma, &n->bn.beta, &n->c2.weight, &n->c3.weight, &n->c3.bias,
                  &n->bn.running_mean, &n->bn.running_var},
        .grad = {&n->c1.dweight, &n->bn.dgamma, &n->bn.dbeta, &n->c2.dweight, &n->c3.dweight, &n->c3.dbias},
        .forward_backward = engine_forward_backward,
        .net = n,
    };
    load_init(&tr, &fx);
    n->c1.weights_stale = n->c2.weights_stale = n->c3.weights_stale = 1;
    train_and_compare(&tr, &fx);

    nn_act *acts[] = {&n->x,  &n->t,  &n->a1,  &n->b1,  &n->r1,  &n->a2,  &n->l2,  &n->u,
                      &n->y,  &n->dy, &n->du,  &n->dl2, &n->da2, &n->dr1, &n->db1, &n->da1};
    for (size_t i = 0; i < sizeof acts / sizeof *acts; i++)
        nn_act_free(acts[i]);
    nn_conv2d_free(&n->c1);
    nn_conv2d_free(&n->c2);
    nn_conv2d_free(&n->c3);
    nn_batchnorm2d_free(&n->bn);
    nn_eltwise_free(&n->relu);
    nn_eltwise_free(&n->lrelu);
    nn_upsample2x_free(&n->up);
    nn_ctx_free(&n->ctx);
    free(n);
    nn_weights_free(&fx);
}

/* ------------------------------------------------------------------ reference-kernel path */

/* Sizes of the activations. */
#define SZ_X ((size_t)N * CIN * H * W)  /* x, t, y */
#define SZ_A ((size_t)N * C * H * W)    /* a1, b1, r1, u */
#define SZ_B ((size_t)N * C * H2 * W2)  /* a2, l2 */

typedef struct ref_net {
    nn_conv_shape s1, s2, s3;
    nn_tensor value[NSTATE], grad[NPARAM];
    const float *x, *t;                      /* the fixture's */
    float *a1, *b1, *r1, *a2, *l2, *u, *y;   /* activations */
    float *dy, *du, *dl2, *da2, *dr1, *db1, *da1;
    float save_mean[C], save_invstd[C];
} ref_net;

static double ref_forward_backward(void *p, float *y_out)
{
    ref_net *n = p;
    float *v[NSTATE];
    for (int i = 0; i < NSTATE; i++)
        v[i] = n->value[i].data;
    ref_conv2d_forward(n->a1, n->x, v[C1W], NULL, &n->s1);
    ref_batchnorm_forward_train(n->b1, n->save_mean, n->save_invstd, v[BN_RM], v[BN_RV], n->a1, v[BNW], v[BNB], N, C,
                                H, W, 1e-5f, 0.1f);
    ref_relu_forward(n->r1, n->b1, SZ_A);
    ref_conv2d_forward(n->a2, n->r1, v[C2W], NULL, &n->s2);
    ref_leaky_relu_forward(n->l2, n->a2, SZ_B, 0.2f);
    ref_upsample_bilinear2x_forward(n->u, n->l2, N, C, H2, W2);
    ref_conv2d_forward(n->y, n->u, v[C3W], v[C3B], &n->s3);
    if (y_out)
        memcpy(y_out, n->y, SZ_X * sizeof(float));
    const double loss = ref_mse_loss(n->y, n->t, SZ_X);

    /* The reference backwards accumulate: start every activation gradient from zero. */
    memset(n->dy, 0, SZ_X * sizeof(float));
    memset(n->du, 0, SZ_A * sizeof(float));
    memset(n->dl2, 0, SZ_B * sizeof(float));
    memset(n->da2, 0, SZ_B * sizeof(float));
    memset(n->dr1, 0, SZ_A * sizeof(float));
    memset(n->db1, 0, SZ_A * sizeof(float));
    memset(n->da1, 0, SZ_A * sizeof(float));
    ref_mse_loss_backward(n->dy, n->y, n->t, SZ_X, 1.0f);
    ref_conv2d_backward(n->du, n->grad[C3W].data, n->grad[C3B].data, n->dy, n->u, v[C3W], &n->s3);
    ref_upsample_bilinear2x_backward(n->dl2, n->du, N, C, H2, W2);
    ref_leaky_relu_backward(n->da2, n->dl2, n->a2, SZ_B, 0.2f);
    ref_conv2d_backward(n->dr1, n->grad[C2W].data, NULL, n->da2, n->r1, v[C2W], &n->s2);
    ref_relu_backward(n->db1, n->dr1, n->b1, SZ_A);
    ref_batchnorm_backward_train(n->da1, n->grad[BNW].data, n->grad[BNB].data, n->db1, n->a1, v[BNW], n->save_mean,
                                 n->save_invstd, N, C, H, W);
    ref_conv2d_backward(NULL, n->grad[C1W].data, NULL, n->da1, n->x, v[C1W], &n->s1);
    return loss;
}

static float *alloc_floats(size_t count)
{
    float *p = calloc(count, sizeof(float));
    assert_non_null(p);
    return p;
}

static void reference_kernels_reproduce_torch_adam_run(void **state)
{
    (void)state;
    nn_weights fx;
    fx_open(&fx, FIXTURE);
    ref_net *n = calloc(1, sizeof *n);
    assert_non_null(n);
    /* {n, cin, h, w, cout, kh, kw, sh, sw, ph, pw, groups, pad_mode, has_bias} */
    n->s1 = (nn_conv_shape){N, CIN, H, W, C, 3, 3, 1, 1, 1, 1, 1, NN_PAD_ZERO, 0};
    n->s2 = (nn_conv_shape){N, C, H, W, C, 3, 3, 2, 2, 1, 1, 1, NN_PAD_ZERO, 0};
    n->s3 = (nn_conv_shape){N, C, H, W, CIN, 1, 1, 1, 1, 0, 0, 1, NN_PAD_ZERO, 1};
    assert_int_equal(nn_conv_oh(&n->s2), H2);
    assert_int_equal(nn_conv_ow(&n->s2), W2);

    nn_err e;
    const int64_t shapes[NSTATE][4] = {{C, CIN, 3, 3}, {C}, {C}, {C, C, 3, 3}, {CIN, C, 1, 1}, {CIN}, {C}, {C}};
    for (int i = 0; i < NSTATE; i++) {
        const int ndim = shapes[i][1] ? 4 : 1;
        check_ok(nn_tensor_alloc(&n->value[i], ndim, shapes[i], &e), &e);
        if (i < NPARAM)
            check_ok(nn_tensor_alloc(&n->grad[i], ndim, shapes[i], &e), &e);
    }
    n->x = fx_get(&fx, "x", NULL);
    n->t = fx_get(&fx, "t", NULL);
    float **bufs[] = {&n->a1, &n->b1, &n->r1, &n->a2, &n->l2, &n->u, &n->y,
                      &n->dy, &n->du, &n->dl2, &n->da2, &n->dr1, &n->db1, &n->da1};
    const size_t sizes[] = {SZ_A, SZ_A, SZ_A, SZ_B, SZ_B, SZ_A, SZ_X, SZ_X, SZ_A, SZ_B, SZ_B, SZ_A, SZ_A, SZ_A};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        *bufs[i] = alloc_floats(sizes[i]);

    trainee tr = {.label = "ref", .forward_backward = ref_forward_backward, .net = n};
    for (int i = 0; i < NSTATE; i++) {
        tr.state[i] = &n->value[i];
        if (i < NPARAM)
            tr.grad[i] = &n->grad[i];
    }
    load_init(&tr, &fx);
    train_and_compare(&tr, &fx);

    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        free(*bufs[i]);
    for (int i = 0; i < NSTATE; i++) {
        nn_tensor_free(&n->value[i]);
        if (i < NPARAM)
            nn_tensor_free(&n->grad[i]);
    }
    free(n);
    nn_weights_free(&fx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(engine_reproduces_torch_adam_run),
        cmocka_unit_test(reference_kernels_reproduce_torch_adam_run),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
