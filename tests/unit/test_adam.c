/* Adam (nn/adam.c) against torch.optim.Adam, and gradient-norm clipping against
 * torch.nn.utils.clip_grad_norm_. */
#include <math.h>
#include <omp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "nn/adam.h"
#include "nn/rng.h"

#define N 4

/* Gradients fed at steps 1..3 and the starting parameters. */
static const float START[N] = {0.5f, -1.0f, 2.0f, 0.0f};
static const float GRADS[3][N] = {{0.1f, -0.2f, 0.3f, 0.0f}, {-0.05f, 0.4f, 0.3f, 1e-3f}, {0.2f, 0.2f, -0.6f, -2.0f}};

/* Expected values produced with torch 1.13.1 (CPU), OPENBLAS_NUM_THREADS=1 python3:
 *   p = torch.tensor(START, requires_grad=True)
 *   opt = torch.optim.Adam([p], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD, foreach=False)
 *   for g in GRADS: p.grad = torch.tensor(g); opt.step(); print(p)      (printed with %.9g)
 * and opt.state[p]['exp_avg'] / ['exp_avg_sq'] after step 3. Step 1 by hand (WD = 0): m_hat = g,
 * v_hat = g^2, so p -= lr * sign(g): 0.4, -0.9, 1.9, 0. */
static const float P_NOWD[3][N] = {{0.400000006f, -0.899999976f, 1.89999998f, 0.0f},
                                   {0.373366296f, -0.936610341f, 1.79999995f, -0.074412629f},
                                   {0.307555139f, -0.988534391f, 1.80756485f, -0.0105600283f}};
static const float M_NOWD[N] = {0.0236000009f, 0.0397999994f, -0.00870000292f, -0.19991f};
static const float V_NOWD[N] = {5.24775132e-05f, 0.000239760047f, 0.000539730128f, 0.00400000112f};
static const float P_WD[3][N] = {{0.400000036f, -0.900000036f, 1.89999998f, 0.0f},
                                 {0.338095158f, -0.906901538f, 1.80005777f, -0.074412629f},
                                 {0.258484989f, -0.927774608f, 1.76670504f, -0.0105599165f}};
static const float M_WD[N] = {0.0346309505f, 0.0145309847f, 0.0426005684f, -0.200654134f};
static const float V_WD[N] = {7.72218191e-05f, 0.00019777265f, 0.00066575536f, 0.0040298216f};

/* Within 2 float ulps (nn/adam.c follows torch's float32 operation order; on this machine it
 * matches bit for bit, the slack only covers a libm pow() that rounds differently). */
static void assert_floats_near(const float *got, const float *want, int n, const char *what)
{
    for (int i = 0; i < n; i++) {
        const float tol = 2.0f * (nextafterf(fabsf(want[i]), INFINITY) - fabsf(want[i])) + 1e-12f;
        if (fabsf(got[i] - want[i]) > tol) {
            print_error("%s[%d] = %.9g, expected %.9g\n", what, i, got[i], want[i]);
            fail();
        }
    }
}

typedef struct fixture {
    nn_tensor value, grad;
    nn_param param;
    nn_adam opt;
} fixture;

static void fixture_init(fixture *f, float weight_decay)
{
    nn_err e;
    memset(f, 0, sizeof *f);
    assert_int_equal(nn_tensor_alloc1(&f->value, N, &e), 0);
    assert_int_equal(nn_tensor_alloc1(&f->grad, N, &e), 0);
    memcpy(f->value.data, START, sizeof START);
    f->param = (nn_param){&f->value, &f->grad};
    assert_int_equal(nn_adam_init(&f->opt, &f->param, 1, 0.1f, 0.9f, 0.999f, 1e-8f, weight_decay, &e), 0);
}

static void fixture_free(fixture *f)
{
    nn_adam_free(&f->opt);
    nn_tensor_free(&f->value);
    nn_tensor_free(&f->grad);
}

static void run_three_steps(float weight_decay, const float want_p[3][N], const float *want_m, const float *want_v)
{
    fixture f;
    fixture_init(&f, weight_decay);
    for (int s = 0; s < 3; s++) {
        memcpy(f.grad.data, GRADS[s], sizeof GRADS[s]);
        nn_adam_step(&f.opt);
        assert_int_equal(f.opt.step, s + 1);
        assert_floats_near(f.value.data, want_p[s], N, "param");
    }
    assert_floats_near(f.opt.m[0].data, want_m, N, "exp_avg");
    assert_floats_near(f.opt.v[0].data, want_v, N, "exp_avg_sq");
    fixture_free(&f);
}

static void test_adam_matches_torch(void **state)
{
    (void)state;
    run_three_steps(0.0f, P_NOWD, M_NOWD, V_NOWD);
}

static void test_adam_weight_decay_matches_torch(void **state)
{
    (void)state;
    run_three_steps(0.1f, P_WD, M_WD, V_WD);
}

/* After a reset the next step is a first step again (bias corrections restart, moments are zero). */
static void test_adam_reset(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f, 0.0f);
    for (int s = 0; s < 2; s++) {
        memcpy(f.grad.data, GRADS[s], sizeof GRADS[s]);
        nn_adam_step(&f.opt);
    }
    nn_adam_reset(&f.opt);
    assert_int_equal(f.opt.step, 0);
    for (int i = 0; i < N; i++) {
        assert_true(f.opt.m[0].data[i] == 0.0f);
        assert_true(f.opt.v[0].data[i] == 0.0f);
    }
    float before[N], want[N];
    memcpy(before, f.value.data, sizeof before);
    memcpy(f.grad.data, GRADS[0], sizeof GRADS[0]);
    nn_adam_step(&f.opt);
    for (int i = 0; i < N; i++) /* first step moves by lr * sign(g) */
        want[i] = before[i] - 0.1f * (GRADS[0][i] > 0 ? 1.0f : (GRADS[0][i] < 0 ? -1.0f : 0.0f));
    assert_floats_near(f.value.data, want, N, "param after reset");
    fixture_free(&f);
}

static void test_zero_grad(void **state)
{
    (void)state;
    fixture f;
    fixture_init(&f, 0.0f);
    memcpy(f.grad.data, GRADS[2], sizeof GRADS[2]);
    nn_params_zero_grad(&f.param, 1);
    for (int i = 0; i < N; i++)
        assert_true(f.grad.data[i] == 0.0f);
    fixture_free(&f);
}

/* Two parameters with gradients {3} and {0, 4}: global norm 5. */
typedef struct two_params {
    nn_tensor v[2], g[2];
    nn_param p[2];
} two_params;

static void two_params_init(two_params *t)
{
    nn_err e;
    assert_int_equal(nn_tensor_alloc1(&t->v[0], 1, &e), 0);
    assert_int_equal(nn_tensor_alloc1(&t->g[0], 1, &e), 0);
    assert_int_equal(nn_tensor_alloc1(&t->v[1], 2, &e), 0);
    assert_int_equal(nn_tensor_alloc1(&t->g[1], 2, &e), 0);
    t->g[0].data[0] = 3.0f;
    t->g[1].data[0] = 0.0f;
    t->g[1].data[1] = -4.0f;
    for (int i = 0; i < 2; i++)
        t->p[i] = (nn_param){&t->v[i], &t->g[i]};
}

static void two_params_free(two_params *t)
{
    for (int i = 0; i < 2; i++) {
        nn_tensor_free(&t->v[i]);
        nn_tensor_free(&t->g[i]);
    }
}

static void test_grad_norm(void **state)
{
    (void)state;
    two_params t;
    two_params_init(&t);
    assert_float_equal(nn_grad_norm(t.p, 2), 5.0, 1e-12);
    two_params_free(&t);
}

static void test_clip_below_threshold_untouched(void **state)
{
    (void)state;
    two_params t;
    two_params_init(&t);
    assert_float_equal(nn_clip_grad_norm(t.p, 2, 10.0), 5.0, 1e-12);
    assert_true(t.g[0].data[0] == 3.0f);
    assert_true(t.g[1].data[0] == 0.0f);
    assert_true(t.g[1].data[1] == -4.0f);
    /* max_norm equal to the norm: coefficient 5 / (5 + 1e-6) < 1, so torch scales (barely). */
    assert_float_equal(nn_clip_grad_norm(t.p, 2, 5.0), 5.0, 1e-12);
    assert_float_equal(t.g[0].data[0], 3.0 * 5.0 / (5.0 + 1e-6), 1e-6);
    two_params_free(&t);
}

static void test_clip_above_threshold_scaled(void **state)
{
    (void)state;
    two_params t;
    two_params_init(&t);
    /* returns the pre-clip norm; grads scaled by max_norm / (norm + 1e-6) */
    assert_float_equal(nn_clip_grad_norm(t.p, 2, 1.0), 5.0, 1e-12);
    const double coef = 1.0 / (5.0 + 1e-6);
    assert_float_equal(t.g[0].data[0], 3.0 * coef, 1e-7);
    assert_float_equal(t.g[1].data[0], 0.0, 0.0);
    assert_float_equal(t.g[1].data[1], -4.0 * coef, 1e-7);
    assert_float_equal(nn_grad_norm(t.p, 2), 1.0, 1e-6);
    two_params_free(&t);
}

/* Tensors of several chunks, one of a single element and one without a gradient: the norm is the
 * plain sum of squares (in long double here), bitwise the same on 1 and 2 threads; zeroing and
 * clipping reach every element. */
static void test_grad_norm_many_chunks(void **state)
{
    (void)state;
    enum { T = 4 };
    const size_t sizes[T] = {40000, 1, 16385, 100};
    nn_tensor v[T], g[T];
    nn_param p[T];
    nn_err e;
    nn_rng r;
    nn_rng_seed(&r, 11);
    long double ref = 0;
    for (int i = 0; i < T; i++) {
        assert_int_equal(nn_tensor_alloc1(&v[i], sizes[i], &e), 0);
        assert_int_equal(nn_tensor_alloc1(&g[i], sizes[i], &e), 0);
        for (size_t j = 0; j < sizes[i]; j++) {
            g[i].data[j] = nn_rng_uniform(&r) - 0.5f;
            if (i != 3)
                ref += (long double)g[i].data[j] * g[i].data[j];
        }
        p[i] = (nn_param){&v[i], i == 3 ? NULL : &g[i]};
    }
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    const double one = nn_grad_norm(p, T);
    omp_set_num_threads(2);
    const double two = nn_grad_norm(p, T);
    omp_set_num_threads(threads);
    assert_true(one == two);
    assert_float_equal(two, sqrtl(ref), 1e-12 * two);
    assert_float_equal(nn_clip_grad_norm(p, T, two / 2), two, 1e-12 * two);
    assert_float_equal(nn_grad_norm(p, T), two / 2, 1e-6 * two);
    nn_params_zero_grad(p, T);
    assert_true(nn_grad_norm(p, T) == 0.0);
    for (int i = 0; i < 3; i++)
        for (size_t j = 0; j < sizes[i]; j++)
            assert_true(g[i].data[j] == 0.0f);
    for (int i = 0; i < T; i++) {
        nn_tensor_free(&v[i]);
        nn_tensor_free(&g[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adam_matches_torch),
        cmocka_unit_test(test_adam_weight_decay_matches_torch),
        cmocka_unit_test(test_adam_reset),
        cmocka_unit_test(test_zero_grad),
        cmocka_unit_test(test_grad_norm),
        cmocka_unit_test(test_grad_norm_many_chunks),
        cmocka_unit_test(test_clip_below_threshold_untouched),
        cmocka_unit_test(test_clip_above_threshold_scaled),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
