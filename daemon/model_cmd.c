#include "daemon/model_cmd.h"

#include <stdlib.h>
#include <string.h>

#include "nn/engine.h"
#include "pgn/autoencoder.h"
#include "pgn/dip.h"
#include "pgn/pgn_resnet.h"
#include "pgn/pgn_unet.h"

/* The module list all three nets expose: a conv or a BN per state-dict prefix. */
typedef struct module_ref {
    const char *prefix;
    nn_conv2d *conv;
    nn_batchnorm2d *bn;
} module_ref;

static void print_modules(FILE *out, const module_ref *m, int count, model_summary *sum)
{
    if (out)
        fprintf(out, "%-28s %-34s %-20s %10s %14s\n", "module", "layer", "output", "params", "MACs");
    for (int i = 0; i < count; i++) {
        char layer[64] = "", shape[48] = "-";
        size_t params = 0;
        double macs = 0;
        if (m[i].conv) {
            const nn_conv2d *c = m[i].conv;
            const nn_conv_shape *g = &c->geo;
            params = c->weight.numel + (g->has_bias ? (size_t)g->cout : 0);
            if (!c->weight.data) /* released (frozen nets only) */
                params = (size_t)g->cout * (g->cin / g->groups) * g->kh * g->kw + (g->has_bias ? (size_t)g->cout : 0);
            snprintf(layer, sizeof layer, "conv%dx%d s%d %d->%d%s%s", g->kh, g->kw, g->sh, g->cin, g->cout,
                     g->groups > 1 ? (g->groups == g->cin ? " dw" : " grouped") : "",
                     g->pad_mode == NN_PAD_REFLECT ? " reflect" : "");
            int n, h, w;
            if (nn_conv2d_last_input(c, &n, &h, &w) == 0) {
                int ph = g->pad_mode == NN_PAD_REFLECT ? 0 : g->ph, pw = g->pad_mode == NN_PAD_REFLECT ? 0 : g->pw;
                int oh = (h + 2 * ph - g->kh) / g->sh + 1, ow = (w + 2 * pw - g->kw) / g->sw + 1;
                snprintf(shape, sizeof shape, "[%d, %d, %d, %d]", n, g->cout, oh, ow);
                macs = (double)n * g->cout * (g->cin / g->groups) * g->kh * g->kw * oh * ow;
            }
        } else {
            params = 2 * (size_t)m[i].bn->c;
            snprintf(layer, sizeof layer, "batchnorm %d", m[i].bn->c);
        }
        sum->params += params;
        sum->macs += macs;
        if (out)
            fprintf(out, "%-28s %-34s %-20s %10zu %14.0f\n", m[i].prefix, layer, shape, params, macs);
    }
}

int model_summary_run(const char *arch, int batch, int h, int w, FILE *out, FILE *err, model_summary *sum)
{
    nn_ctx ctx;
    nn_err e;
    memset(sum, 0, sizeof *sum);
    if (nn_ctx_init(&ctx, 0, &e)) {
        fprintf(err, "pgnd model summary: %s\n", e.msg);
        return -1;
    }
    /* every layer through its own forward, so that each records the shape it ran at (a fused
     * kernel runs a convolution without it: nn/upsample_dwconv.h); a one-shot command, so the
     * process-wide switch is not shared with a job */
    nn_fused_set_enabled(0);
    size_t img = (size_t)batch * 3 * h * w;
    float *a = calloc(img, sizeof(float)), *b = calloc(img, sizeof(float)), *x = calloc(2 * img, sizeof(float));
    module_ref *m = NULL;
    int count = 0, rc = -1, blocks = 0;
    pgn_resnet *rn = NULL;
    pgn_unet *un = NULL;
    pgn_dip *dp = NULL;
    pgn_autoencoder *ae = NULL;
    if (!strncmp(arch, "resnet", 6) && (blocks = atoi(arch + 6)) > 0) {
        rn = calloc(1, sizeof *rn);
        if (rn && !pgn_resnet_init(rn, blocks, 0, &e)) {
            pgn_resnet_set_training(rn, 0);
            if (!pgn_resnet_forward(&ctx, rn, a, b, batch, h, w, NULL, &e)) {
                m = calloc((size_t)rn->nmod, sizeof *m);
                for (int i = 0; m && i < rn->nmod; i++)
                    m[count++] = (module_ref){rn->mod[i].prefix, rn->mod[i].conv, rn->mod[i].bn};
                rc = 0;
            }
        }
    } else if (!strcmp(arch, "unet")) {
        un = calloc(1, sizeof *un);
        if (un && !pgn_unet_init(un, 0, &e)) {
            pgn_unet_set_training(un, 0);
            if (!pgn_unet_forward(&ctx, un, x, batch, h, w, NULL, &e)) {
                m = calloc(PGN_UNET_MODULES, sizeof *m);
                for (int i = 0; m && i < PGN_UNET_MODULES; i++)
                    m[count++] = (module_ref){un->mod[i].prefix, un->mod[i].conv, un->mod[i].bn};
                rc = 0;
            }
        }
    } else if (!strcmp(arch, "dip")) {
        dp = calloc(1, sizeof *dp);
        if (dp && !pgn_dip_init(dp, 0, &e) && !pgn_dip_set_input(&ctx, dp, a, batch, h, w, &e) &&
            !pgn_dip_forward(&ctx, dp, NULL, &e)) {
            m = calloc(PGN_DIP_CONVS + PGN_DIP_BNS, sizeof *m);
            for (int i = 0; m && i < PGN_DIP_CONVS + PGN_DIP_BNS; i++)
                m[count++] = (module_ref){dp->mod[i].prefix, dp->mod[i].conv, dp->mod[i].bn};
            rc = 0;
        }
    } else if (!strncmp(arch, "ae", 2) && arch[2] >= '0' && arch[2] <= '2' && !arch[3]) {
        /* the fit's autoencoders, max_layer 0..2 (method.md §3.4) */
        ae = calloc(1, sizeof *ae);
        if (ae && !pgn_autoencoder_init(ae, arch[2] - '0', 0, &e)) {
            pgn_autoencoder_set_training(ae, 0);
            if (!pgn_autoencoder_forward(&ctx, ae, a, batch, h, w, NULL, &e)) {
                m = calloc((size_t)ae->nmod, sizeof *m);
                for (int i = 0; m && i < ae->nmod; i++)
                    m[count++] = (module_ref){ae->mod[i].prefix, ae->mod[i].conv, ae->mod[i].bn};
                rc = 0;
            }
        }
    } else {
        snprintf(e.msg, sizeof e.msg, "unknown architecture '%s' (unet, resnet4, resnet6, resnet8, dip, ae0, ae1, ae2)",
                 arch);
    }
    if (rc == 0) {
        if (out)
            fprintf(out, "%s at [%d, %s, %d, %d]\n", arch, batch, dp || ae ? "3" : "6", h, w);
        print_modules(out, m, count, sum);
        if (out)
            fprintf(out, "forward MACs %.0f (%.2f G)\nparams %zu\n", sum->macs, sum->macs / 1e9, sum->params);
    } else {
        fprintf(err, "pgnd model summary: %s\n", e.msg);
    }
    free(m);
    if (rn)
        pgn_resnet_free(rn);
    if (un)
        pgn_unet_free(un);
    if (dp)
        pgn_dip_free(dp);
    if (ae)
        pgn_autoencoder_free(ae);
    free(ae);
    free(rn), free(un), free(dp), free(a), free(b), free(x);
    nn_ctx_free(&ctx);
    nn_fused_set_enabled(-1);
    return rc;
}
