#include "pgn/inception3.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/tfjs.h"
#include "pgn/report.h"

const char *const inc3_tap_names[INC3_TAPS] = {"activation_3", "activation_5", "mixed0", "mixed1", "mixed2"};

/* Geometry of conv2d_{i+1}: channels, square kernel, stride, and whether Keras pads it ("same"). */
typedef struct conv_geo {
    int cin, cout, k, s, same;
} conv_geo;

/* Index of the first conv of block b (mixed<b>); its seven convs are, in Keras numbering order:
 * 1x1 branch, 5x5 branch (1x1 48, 5x5 64), double-3x3 branch (1x1 64, 3x3 96, 3x3 96), pool branch 1x1. */
static int block_base(int b) { return 5 + 7 * b; }
static const int block_cin[INC3_BLOCKS] = {192, 256, 288};
static const int block_pool_out[INC3_BLOCKS] = {32, 64, 64};

static conv_geo geo_of(int i)
{
    static const conv_geo stem[5] = {{3, 32, 3, 2, 0}, {32, 32, 3, 1, 0}, {32, 64, 3, 1, 1}, {64, 80, 1, 1, 0},
                                     {80, 192, 3, 1, 0}};
    if (i < 5)
        return stem[i];
    int b = (i - 5) / 7, j = (i - 5) % 7, c = block_cin[b];
    static const conv_geo in_block[7] = {{0, 64, 1, 1, 1},  {0, 48, 1, 1, 1},  {48, 64, 5, 1, 1}, {0, 64, 1, 1, 1},
                                         {64, 96, 3, 1, 1}, {96, 96, 3, 1, 1}, {0, 0, 1, 1, 1}};
    conv_geo g = in_block[j];
    if (!g.cin)
        g.cin = c;
    if (j == 6)
        g.cout = block_pool_out[b];
    return g;
}

int inception3_init(inception3 *v, uint64_t seed, nn_err *e)
{
    memset(v, 0, sizeof *v);
    nn_rng rng;
    nn_rng_seed(&rng, seed);
    for (int i = 0; i < INC3_CONVS; i++) {
        conv_geo g = geo_of(i);
        int p = g.same ? (g.k - 1) / 2 : 0;
        if (nn_conv2d_init(&v->conv[i], g.cin, g.cout, g.k, g.k, g.s, g.s, p, p, 1, NN_PAD_ZERO, 1, &rng, e))
            return nn_err_prefix(e, "inception3 conv2d_%d", i + 1);
        v->conv[i].frozen = 1;
        v->conv[i].post_relu = 1; /* every conv is conv -> BN (folded) -> ReLU */
    }
    nn_pool2d_init(&v->maxpool, 1, 3, 2, 0);
    nn_pool2d_init(&v->avgpool, 0, 3, 1, 1);
    v->avgpool.avg_exclude_pad = 1;
    nn_eltwise_init(&v->relu, NN_RELU, 0);
    return 0;
}

void inception3_free(inception3 *v)
{
    for (int i = 0; i < INC3_CONVS; i++) {
        nn_conv2d_free(&v->conv[i]);
        nn_act_free(&v->out[i]);
        nn_act_free(&v->dout[i]);
    }
    for (int b = 0; b < INC3_BLOCKS; b++) {
        nn_act_free(&v->avg[b]);
        nn_act_free(&v->cat1[b]);
        nn_act_free(&v->cat2[b]);
        nn_act_free(&v->mixed[b]);
        nn_act_free(&v->dmixed[b]);
    }
    for (int t = 0; t < INC3_TAPS; t++)
        nn_act_free(&v->target[t]);
    for (int k = 0; k < 2; k++) {
        nn_act_free(&v->pool[k]);
        nn_act_free(&v->dpool[k]);
    }
    nn_act_free(&v->x);
    nn_act_free(&v->davg);
    nn_act_free(&v->dcat1);
    nn_act_free(&v->dcat2);
    nn_act_free(&v->dx);
    nn_act_free(&v->dmask);
    nn_pool2d_free(&v->maxpool);
    nn_pool2d_free(&v->avgpool);
    nn_eltwise_free(&v->relu);
    pgn_l1_taps_free(&v->sums);
    memset(v, 0, sizeof *v);
}

/* ---- weights ---- */

static const char *const bn_parts[] = {"beta", "moving_mean", "moving_variance", "gamma"};

int inception3_needs_key(const char *name, void *arg)
{
    int i;
    char part[32];
    if (sscanf(name, "conv2d_%d/%31s", &i, part) == 2)
        return i >= 1 && i <= INC3_CONVS && !strcmp(part, "kernel");
    if (sscanf(name, "batch_normalization_%d/%31s", &i, part) == 2 && i >= 1 && i <= INC3_CONVS)
        for (int k = 0; k < 4; k++)
            if (!strcmp(part, bn_parts[k]))
                return 1;
    return 0;
}

static json_t *topology_layer(json_t *topo, const char *name)
{
    json_t *layers = json_object_get(json_object_get(json_object_get(topo, "model_config"), "config"), "layers");
    if (!layers) /* a topology that is the model config itself */
        layers = json_object_get(json_object_get(topo, "config"), "layers");
    for (size_t i = 0; i < json_array_size(layers); i++) {
        json_t *l = json_array_get(layers, i);
        const char *n = json_string_value(json_object_get(l, "name"));
        if (n && !strcmp(n, name))
            return l;
    }
    return NULL;
}

static int pair_is(json_t *a, int v) /* [v, v] */
{
    return json_array_size(a) == 2 && json_integer_value(json_array_get(a, 0)) == v &&
           json_integer_value(json_array_get(a, 1)) == v;
}

/* Compares the layers this network hard-codes with the model's own topology. */
static int check_topology(json_t *topo, char *report, size_t len, size_t *at)
{
    int problems = 0;
    char name[64];
    for (int i = 0; i < INC3_CONVS; i++) {
        conv_geo g = geo_of(i);
        snprintf(name, sizeof name, "conv2d_%d", i + 1);
        json_t *c = json_object_get(topology_layer(topo, name), "config");
        const char *pad = json_string_value(json_object_get(c, "padding"));
        if (!c || !pad) {
            *at = pgn_report_append(report, len, *at, "topology has no Conv2D layer %s\n", name);
            problems++;
        } else if (!pair_is(json_object_get(c, "strides"), g.s) || !pair_is(json_object_get(c, "kernel_size"), g.k) ||
                   strcmp(pad, g.same ? "same" : "valid") || json_integer_value(json_object_get(c, "filters")) != g.cout ||
                   json_is_true(json_object_get(c, "use_bias"))) {
            *at = pgn_report_append(report, len, *at, "topology layer %s is not a %dx%d/%d %s convolution to %d channels without bias\n",
                          name, g.k, g.k, g.s, g.same ? "same" : "valid", g.cout);
            problems++;
        }
        snprintf(name, sizeof name, "batch_normalization_%d", i + 1);
        c = json_object_get(topology_layer(topo, name), "config");
        if (!c || !json_is_false(json_object_get(c, "scale")) || !json_is_true(json_object_get(c, "center"))) {
            *at = pgn_report_append(report, len, *at, "topology layer %s is not a BatchNormalization with center and no scale\n", name);
            problems++;
        }
    }
    for (int k = 0; k < 2; k++) {
        snprintf(name, sizeof name, "max_pooling2d_%d", k + 1);
        json_t *c = json_object_get(topology_layer(topo, name), "config");
        if (!c || !pair_is(json_object_get(c, "pool_size"), 3) || !pair_is(json_object_get(c, "strides"), 2) ||
            strcmp(json_string_value(json_object_get(c, "padding")) ?: "", "valid")) {
            *at = pgn_report_append(report, len, *at, "topology layer %s is not a 3x3/2 valid max-pool\n", name);
            problems++;
        }
    }
    for (int b = 0; b < INC3_BLOCKS; b++) {
        snprintf(name, sizeof name, "average_pooling2d_%d", b + 1);
        json_t *c = json_object_get(topology_layer(topo, name), "config");
        if (!c || !pair_is(json_object_get(c, "pool_size"), 3) || !pair_is(json_object_get(c, "strides"), 1) ||
            strcmp(json_string_value(json_object_get(c, "padding")) ?: "", "same")) {
            *at = pgn_report_append(report, len, *at, "topology layer %s is not a 3x3/1 same average pool\n", name);
            problems++;
        }
        /* mixed<b> concatenates the four branches in this order */
        snprintf(name, sizeof name, "mixed%d", b);
        json_t *in = json_array_get(json_array_get(json_object_get(topology_layer(topo, name), "inbound_nodes"), 0), 0);
        int base = block_base(b) + 1, want[4] = {base, base + 2, base + 5, base + 6}, ok = 1;
        json_t *node = json_array_get(json_object_get(topology_layer(topo, name), "inbound_nodes"), 0);
        for (int k = 0; k < 4; k++) {
            char act[32];
            snprintf(act, sizeof act, "activation_%d", want[k]);
            const char *got = json_string_value(json_array_get(json_array_get(node, (size_t)k), 0));
            ok &= got && !strcmp(got, act);
        }
        if (!in || !ok || json_array_size(node) != 4) {
            *at = pgn_report_append(report, len, *at, "topology layer %s does not concatenate activation_%d, _%d, _%d, _%d\n", name,
                          want[0], want[1], want[2], want[3]);
            problems++;
        }
    }
    return problems;
}

int inception3_check_weights(const nn_weights *w, char *report, size_t len)
{
    int problems = 0;
    size_t at = 0;
    if (len)
        report[0] = 0;
    for (int i = 0; i < INC3_CONVS; i++) {
        conv_geo g = geo_of(i);
        char k[64];
        snprintf(k, sizeof k, "conv2d_%d/kernel", i + 1);
        int64_t want[4] = {g.k, g.k, g.cin, g.cout};
        for (int part = -1; part < 3; part++) {
            if (part >= 0)
                snprintf(k, sizeof k, "batch_normalization_%d/%s", i + 1, bn_parts[part]);
            int nd = part < 0 ? 4 : 1;
            const int64_t *ws = part < 0 ? want : &want[3];
            const nn_weight_entry *t = nn_weights_find(w, k);
            if (!t) {
                at = pgn_report_append(report, len, at, "missing key %s\n", k);
                problems++;
            } else if (t->ndim != nd || memcmp(t->shape, ws, (size_t)nd * sizeof *ws)) {
                char have[96], exp[96];
                nn_shape_str(have, sizeof have, t->ndim, t->shape);
                nn_shape_str(exp, sizeof exp, nd, ws);
                at = pgn_report_append(report, len, at, "key %s has shape %s, expected %s\n", k, have, exp);
                problems++;
            }
        }
    }
    const nn_weight_meta *m = nn_weights_meta(w, NN_TFJS_TOPOLOGY_KEY);
    if (m) {
        json_t *topo = json_loads(m->str, 0, NULL);
        if (!topo) {
            at = pgn_report_append(report, len, at, "the model topology is not valid JSON\n");
            problems++;
        } else
            problems += check_topology(topo, report, len, &at);
        json_decref(topo);
    }
    return problems;
}

/* Keras BN eps of layer i from the topology (1e-3, its default, without one). */
static double bn_eps(json_t *topo, int i)
{
    char name[64];
    snprintf(name, sizeof name, "batch_normalization_%d", i + 1);
    json_t *eps = json_object_get(json_object_get(topology_layer(topo, name), "config"), "epsilon");
    return json_is_number(eps) ? json_number_value(eps) : 1e-3;
}

int inception3_load(inception3 *v, const nn_weights *w, nn_err *e)
{
    char report[4096];
    int problems = inception3_check_weights(w, report, sizeof report);
    if (problems) {
        pgn_report_one_line(report);
        return nn_errf(e, "not a usable InceptionV3 teacher (%d problem%s): %s", problems, problems == 1 ? "" : "s",
                       report);
    }
    const nn_weight_meta *m = nn_weights_meta(w, NN_TFJS_TOPOLOGY_KEY);
    json_t *topo = m ? json_loads(m->str, 0, NULL) : NULL;
    int rc = 0;
    for (int i = 0; i < INC3_CONVS && !rc; i++) {
        conv_geo g = geo_of(i);
        char k[64];
        snprintf(k, sizeof k, "conv2d_%d/kernel", i + 1);
        const nn_weight_entry *ker = nn_weights_find(w, k);
        const float *bn[4];
        for (int part = 0; part < 4; part++) {
            snprintf(k, sizeof k, "batch_normalization_%d/%s", i + 1, bn_parts[part]);
            const nn_weight_entry *t = nn_weights_find(w, k);
            bn[part] = t && t->dtype == NN_F32 && t->numel == (size_t)g.cout ? t->data : NULL;
        }
        if (!ker->data || ker->dtype != NN_F32 || !bn[0] || !bn[1] || !bn[2]) {
            rc = nn_errf(e, "inception3: conv2d_%d or its batch norm was not read as float32", i + 1);
            break;
        }
        double eps = bn_eps(topo, i);
        float *bias = malloc((size_t)g.cout * sizeof *bias);
        if (!bias) {
            rc = nn_errf(e, "out of memory");
            break;
        }
        /* Keras [kh, kw, cin, cout] -> [cout, cin, kh, kw], times the BN scale gamma / sqrt(var + eps) */
        const float *src = ker->data;
        float *dst = v->conv[i].weight.data;
        for (int co = 0; co < g.cout; co++) {
            double s = (bn[3] ? bn[3][co] : 1.0) / sqrt((double)bn[2][co] + eps);
            bias[co] = (float)(bn[0][co] - bn[1][co] * s);
            for (int ci = 0; ci < g.cin; ci++)
                for (int y = 0; y < g.k; y++)
                    for (int x = 0; x < g.k; x++)
                        dst[(((size_t)co * g.cin + ci) * g.k + y) * g.k + x] =
                            (float)(src[(((size_t)y * g.k + x) * g.cin + ci) * g.cout + co] * s);
        }
        v->conv[i].weights_stale = 1;
        rc = nn_conv2d_set_bias(&v->conv[i], bias, e);
        free(bias);
    }
    json_decref(topo);
    return rc;
}

/* ---- forward ---- */

static int conv(nn_ctx *ctx, inception3 *v, int i, const nn_act *in, nn_err *e)
{
    if (nn_conv2d_forward(ctx, &v->conv[i], in, &v->out[i], e))
        return nn_err_prefix(e, "inception3 conv2d_%d", i + 1);
    return 0;
}

int inception3_forward(nn_ctx *ctx, inception3 *v, const float *x, int n, int h, int w, nn_err *e)
{
    if (h < INC3_MIN_SIZE || w < INC3_MIN_SIZE)
        return nn_errf(e, "inception3: input %dx%d is smaller than %dx%d (the least for which mixed2 is 1x1)", h, w,
                       INC3_MIN_SIZE, INC3_MIN_SIZE);
    if (nn_act_from_nchw(ctx, &v->x, x, n, 3, h, w, e))
        return -1;
    if (conv(ctx, v, 0, &v->x, e) || conv(ctx, v, 1, &v->out[0], e) || conv(ctx, v, 2, &v->out[1], e) ||
        nn_pool2d_forward(ctx, &v->maxpool, &v->out[2], &v->pool[0], e) || conv(ctx, v, 3, &v->pool[0], e) ||
        conv(ctx, v, 4, &v->out[3], e) || nn_pool2d_forward(ctx, &v->maxpool, &v->out[4], &v->pool[1], e))
        return -1;
    const nn_act *in = &v->pool[1];
    for (int b = 0; b < INC3_BLOCKS; b++) {
        int c = block_base(b);
        if (conv(ctx, v, c, in, e) || conv(ctx, v, c + 1, in, e) || conv(ctx, v, c + 2, &v->out[c + 1], e) ||
            conv(ctx, v, c + 3, in, e) || conv(ctx, v, c + 4, &v->out[c + 3], e) ||
            conv(ctx, v, c + 5, &v->out[c + 4], e) || nn_pool2d_forward(ctx, &v->avgpool, in, &v->avg[b], e) ||
            conv(ctx, v, c + 6, &v->avg[b], e) ||
            nn_concat_forward(ctx, &v->out[c], &v->out[c + 2], &v->cat1[b], e) ||
            nn_concat_forward(ctx, &v->cat1[b], &v->out[c + 5], &v->cat2[b], e) ||
            nn_concat_forward(ctx, &v->cat2[b], &v->out[c + 6], &v->mixed[b], e))
            return nn_err_prefix(e, "inception3 mixed%d", b);
        in = &v->mixed[b];
    }
    return 0;
}

const nn_act *inception3_tap(const inception3 *v, int t)
{
    return t == 0 ? &v->out[2] : t == 1 ? &v->out[4] : &v->mixed[t - 2];
}

int inception3_set_target(nn_ctx *ctx, inception3 *v, const float *target, int n, int h, int w, nn_err *e)
{
    if (inception3_forward(ctx, v, target, n, h, w, e))
        return -1;
    for (int t = 0; t < INC3_TAPS; t++) {
        const nn_act *f = inception3_tap(v, t);
        if (nn_act_reserve(&v->target[t], f->n, f->c, f->h, f->w, &f->md, e))
            return -1;
        memcpy(v->target[t].data, f->data, nn_md_bytes(&f->md));
        v->target[t].valid = 1;
    }
    v->target_n = n;
    v->target_h = h;
    v->target_w = w;
    return 0;
}

/* ---- backward ---- */

/* dy is d/d out[i] not yet through the ReLU (intermediate branch outputs): masks it, then goes
 * through conv i into dx (accumulating). */
static int back_relu_conv(nn_ctx *ctx, inception3 *v, int i, const nn_act *in, nn_act *dx, nn_err *e)
{
    nn_act_grad_reset(&v->dmask);
    if (nn_eltwise_backward(ctx, &v->relu, &v->out[i], &v->dout[i], &v->dmask, e))
        return -1;
    return nn_conv2d_backward(ctx, &v->conv[i], in, &v->dmask, dx, 0, e);
}

int inception3_perceptual(nn_ctx *ctx, inception3 *v, const float *x, int n, int h, int w, double *loss,
                          double *per_sample, float *grad, nn_err *e)
{
    if (n != v->target_n || h != v->target_h || w != v->target_w)
        return nn_errf(e, "inception3: input [%d, 3, %d, %d] does not match the cached target [%d, 3, %d, %d]", n, h,
                       w, v->target_n, v->target_h, v->target_w);
    if (inception3_forward(ctx, v, x, n, h, w, e))
        return -1;
    const nn_act *taps[INC3_TAPS];
    for (int t = 0; t < INC3_TAPS; t++)
        taps[t] = inception3_tap(v, t);
    if (pgn_l1_taps_sum(ctx, &v->sums, taps, v->target, INC3_TAPS, n, loss, per_sample, e))
        return -1;
    if (!grad)
        return 0;

    /* Blocks, last to first. dmixed[b] arrives holding the gradient from the block above (none for
     * mixed2); the tap term and the ReLU mask are added in one pass (a concatenation of ReLU outputs
     * is positive exactly where its branch's ReLU passed). dn is the block input's gradient. */
    float dl = (float)n;
    nn_act_grad_reset(&v->dmixed[INC3_BLOCKS - 1]);
    for (int b = INC3_BLOCKS - 1; b >= 0; b--) {
        int c = block_base(b);
        const nn_act *in = b ? &v->mixed[b - 1] : &v->pool[1];
        nn_act *din = b ? &v->dmixed[b - 1] : &v->dpool[1];
        nn_act_grad_reset(din);
        nn_act_grad_reset(&v->dcat2);
        nn_act_grad_reset(&v->dcat1);
        for (int k = 0; k < 7; k++)
            nn_act_grad_reset(&v->dout[c + k]);
        if (nn_l1_loss_backward_relu(ctx, &v->mixed[b], &v->target[2 + b], dl, &v->dmixed[b], e) ||
            nn_concat_backward(ctx, &v->dmixed[b], v->cat2[b].c, &v->dcat2, &v->dout[c + 6], e) ||
            nn_concat_backward(ctx, &v->dcat2, v->cat1[b].c, &v->dcat1, &v->dout[c + 5], e) ||
            nn_concat_backward(ctx, &v->dcat1, v->out[c].c, &v->dout[c], &v->dout[c + 2], e))
            return nn_err_prefix(e, "inception3 mixed%d backward", b);
        /* branch outputs are already through their ReLU */
        nn_act_grad_reset(&v->davg);
        if (nn_conv2d_backward(ctx, &v->conv[c], in, &v->dout[c], din, 0, e) ||
            nn_conv2d_backward(ctx, &v->conv[c + 2], &v->out[c + 1], &v->dout[c + 2], &v->dout[c + 1], 0, e) ||
            back_relu_conv(ctx, v, c + 1, in, din, e) ||
            nn_conv2d_backward(ctx, &v->conv[c + 5], &v->out[c + 4], &v->dout[c + 5], &v->dout[c + 4], 0, e) ||
            back_relu_conv(ctx, v, c + 4, &v->out[c + 3], &v->dout[c + 3], e) ||
            back_relu_conv(ctx, v, c + 3, in, din, e) ||
            nn_conv2d_backward(ctx, &v->conv[c + 6], &v->avg[b], &v->dout[c + 6], &v->davg, 0, e) ||
            nn_pool2d_backward(ctx, &v->avgpool, in, &v->davg, din, e))
            return nn_err_prefix(e, "inception3 mixed%d backward", b);
    }
    /* The stem. */
    for (int i = 0; i < 5; i++)
        nn_act_grad_reset(&v->dout[i]);
    nn_act_grad_reset(&v->dpool[0]);
    nn_act_grad_reset(&v->dx);
    if (nn_pool2d_backward(ctx, &v->maxpool, &v->out[4], &v->dpool[1], &v->dout[4], e) ||
        nn_l1_loss_backward_relu(ctx, &v->out[4], &v->target[1], dl, &v->dout[4], e) ||
        nn_conv2d_backward(ctx, &v->conv[4], &v->out[3], &v->dout[4], &v->dout[3], 0, e) ||
        back_relu_conv(ctx, v, 3, &v->pool[0], &v->dpool[0], e) ||
        nn_pool2d_backward(ctx, &v->maxpool, &v->out[2], &v->dpool[0], &v->dout[2], e) ||
        nn_l1_loss_backward_relu(ctx, &v->out[2], &v->target[0], dl, &v->dout[2], e) ||
        nn_conv2d_backward(ctx, &v->conv[2], &v->out[1], &v->dout[2], &v->dout[1], 0, e) ||
        back_relu_conv(ctx, v, 1, &v->out[0], &v->dout[0], e) || back_relu_conv(ctx, v, 0, &v->x, &v->dx, e))
        return nn_err_prefix(e, "inception3 stem backward");
    for (int i = 0; i < INC3_CONVS; i++) /* frozen: oneDNN's copies suffice once both layouts exist */
        if (v->conv[i].weight.data && nn_conv2d_release_plain(&v->conv[i], e))
            return -1;
    return nn_act_to_nchw(ctx, &v->dx, grad, e);
}
