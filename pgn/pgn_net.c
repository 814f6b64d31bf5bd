#include "pgn/pgn_net.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int pgn_net_load(pgn_net *n, const char *path, nn_err *e) { return pgn_net_load_opts(n, path, 1, e); }

int pgn_checkpoint_read(nn_weights *w, const char *path, nn_err *e)
{
    if (nn_weights_read(w, path, e))
        return -1;
    const nn_weight_meta *f = nn_weights_meta(w, "format");
    if (f && !strcmp(f->str, "pgnd fit checkpoint v1") && nn_weights_select_prefix(w, "pgn/") == 0) {
        nn_weights_free(w);
        return nn_errf(e, "%s: a fit checkpoint without its PGN", path);
    }
    return 0;
}

/* The backbone's modules (convs and, unless folded, batch norms). */
static pgn_module *modules(pgn_net *n, int *count)
{
    if (n->resnet) {
        *count = n->resnet->nmod;
        return n->resnet->mod;
    }
    *count = PGN_UNET_MODULES;
    return n->unet->mod;
}

/* A folded net never trains: its convs' weight and bias gradients go. */
static void drop_grads(pgn_net *n)
{
    int count;
    pgn_module *mod = modules(n, &count);
    for (int m = 0; m < count; m++)
        if (mod[m].conv) {
            nn_tensor_free(&mod[m].conv->dweight);
            nn_tensor_free(&mod[m].conv->dbias);
        }
}

/* After a folded net's first forward oneDNN holds its weights in its own layout: the PyTorch-layout
 * copies go (our grouped kernels' convs keep theirs, which they read). */
static int release_plain(pgn_net *n, nn_err *e)
{
    int count;
    pgn_module *mod = modules(n, &count);
    for (int m = 0; m < count; m++)
        if (mod[m].conv && mod[m].conv->weight.data && nn_conv2d_release_plain(mod[m].conv, e))
            return nn_err_prefix(e, "PGN %s", mod[m].prefix);
    return 0;
}

int pgn_net_load_opts(pgn_net *n, const char *path, int fold, nn_err *e)
{
    memset(n, 0, sizeof *n);
    nn_weights w;
    if (pgn_checkpoint_read(&w, path, e))
        return nn_err_prefix(e, "PGN checkpoint");
    int rc = 0, blocks = 0;
    if (nn_weights_find(&w, "model.0.weight")) {
        n->resnet = calloc(1, sizeof *n->resnet);
        rc = !n->resnet || pgn_resnet_blocks_of(&w, &blocks, e) || pgn_resnet_init(n->resnet, blocks, 0, e) ||
             pgn_resnet_load(n->resnet, &w, e);
        n->head = pgn_proxy_default(PGN_GRAD_SCALE_RESNET);
        snprintf(n->desc, sizeof n->desc, "resnet%d", blocks);
    } else if (nn_weights_find(&w, "layer0.0.weight")) {
        n->unet = calloc(1, sizeof *n->unet);
        rc = !n->unet || pgn_unet_init(n->unet, 0, e) || pgn_unet_load(n->unet, &w, e);
        n->head = pgn_proxy_default(PGN_GRAD_SCALE_UNET);
        snprintf(n->desc, sizeof n->desc, "unet");
    } else {
        rc = nn_errf(e, "%s holds neither a PGN ResNet (model.0.weight) nor a PGN UNet (layer0.0.weight)", path);
    }
    /* The authors' legacy UNet files say 1e-3, meaning 0.048 (it was averaged over a batch of 48). */
    if (!rc)
        rc = pgn_proxy_from_meta(&n->head, &w, e);
    if (!rc && n->unet && n->head.grad_scale == 1e-3f)
        n->head.grad_scale = PGN_GRAD_SCALE_UNET;
    nn_weights_free(&w);
    if (rc) {
        pgn_net_free(n);
        return -1;
    }
    if (n->resnet)
        pgn_resnet_set_training(n->resnet, 0);
    else
        pgn_unet_set_training(n->unet, 0);
    if (fold) {
        /* Inference-only forwards too (freeing what the backward would need). */
        if (n->resnet ? pgn_resnet_fold_bn(n->resnet, e) || pgn_resnet_set_lean(n->resnet, 1, e)
                      : pgn_unet_fold_bn(n->unet, e) || pgn_unet_set_lean(n->unet, 1, e)) {
            nn_err_prefix(e, "PGN checkpoint %s", path);
            pgn_net_free(n);
            return -1;
        }
        n->folded = 1;
        n->lean = 1;
        drop_grads(n);
    }
    size_t len = strlen(n->desc);
    snprintf(n->desc + len, sizeof n->desc - len, ", %s head, grad scale %g",
             n->head.mode == PGN_PROXY_SIGMOID ? "proxy" : "direct", n->head.grad_scale);
    return 0;
}

void pgn_net_free(pgn_net *n)
{
    if (n->resnet)
        pgn_resnet_free(n->resnet);
    if (n->unet)
        pgn_unet_free(n->unet);
    free(n->resnet);
    free(n->unet);
    free(n->x);
    free(n->o);
    memset(n, 0, sizeof *n);
}

int pgn_net_predict(nn_ctx *ctx, pgn_net *n, const float *yhat, const float *y, int b, int h, int w, float *p,
                    float *g, nn_err *e)
{
    size_t img = (size_t)3 * h * w, count = (size_t)b * img;
    if (2 * count > n->cap) {
        free(n->x);
        free(n->o);
        n->x = malloc(2 * count * sizeof(float));
        n->o = malloc(count * sizeof(float));
        n->cap = n->x && n->o ? 2 * count : 0;
        if (!n->cap)
            return nn_errf(e, "out of memory");
    }
    if (n->resnet) {
        if (pgn_resnet_forward(ctx, n->resnet, yhat, y, b, h, w, n->o, e))
            return -1;
    } else {
        for (int i = 0; i < b; i++) { /* concat[y_hat, y] per sample */
            memcpy(n->x + (size_t)i * 2 * img, yhat + (size_t)i * img, img * sizeof(float));
            memcpy(n->x + (size_t)i * 2 * img + img, y + (size_t)i * img, img * sizeof(float));
        }
        if (pgn_unet_forward(ctx, n->unet, n->x, b, h, w, n->o, e))
            return -1;
    }
    if (n->folded && !n->released) {
        nn_err ignored; /* only memory is at stake: a failed release leaves the copies in place */
        release_plain(n, &ignored);
        n->released = 1;
    }
    pgn_proxy_forward(&n->head, n->o, yhat, b, h, w, p, g);
    return 0;
}
