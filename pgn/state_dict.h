/* PyTorch state dicts for the nets built on the engine (DIP, PGN ResNet, PGN UNet): a net lists
 * its modules in state-dict order, each a conv ("<prefix>.weight" [, ".bias"]) or a BatchNorm2d
 * (weight, bias, running_mean, running_var, num_batches_tracked); checking and loading are the
 * same for all of them. */
#ifndef PGN_STATE_DICT_H
#define PGN_STATE_DICT_H

#include <stddef.h>

#include "nn/engine.h"
#include "nn/weights.h"

typedef struct pgn_module {
    char prefix[32];
    nn_conv2d *conv; /* exactly one of conv / bn is set */
    nn_batchnorm2d *bn;
} pgn_module;

/* Number of state-dict keys the modules have. */
int pgn_state_key_count(const pgn_module *mods, int n);
/* One problem per line into report ("missing key K", "key K has shape [..], expected [..]", "key K
 * has dtype D, expected ...", "unexpected key K"); returns the number of problems (0 = loadable). */
int pgn_state_check(const pgn_module *mods, int n, const nn_weights *w, char *report, size_t len);
/* Loads every key (floats of any dtype to float32, num_batches_tracked as an integer), or loads
 * nothing and fails with "FILE is not a <what> state dict (N problems<hint>): p1; p2; ...". */
int pgn_state_load(const pgn_module *mods, int n, const nn_weights *w, const char *what, const char *hint, nn_err *e);

/* The state dict as named tensors, for writing (nn_safetensors_write) or reading back a pgnd
 * checkpoint: n_keys = pgn_state_key_count entries, names "<prefix><key>" (prefix may be ""),
 * num_batches_tracked as a 0-dim float tensor holding the count (exact below 2^24). The export
 * owns its memory (pgn_state_export_free); after filling its tensors from a file call
 * pgn_state_export_apply to copy the counts back and mark the convs' weights as changed. */
typedef struct pgn_state_export {
    int n;
    char (*names)[96];
    const nn_tensor **t;
    nn_tensor *counts;     /* one per BN */
    float *count_vals;
    long **count_dst;      /* per BN: where the count lives */
    int n_counts;
    const pgn_module *mods;
    int nmods;
} pgn_state_export;

int pgn_state_export_init(pgn_state_export *x, const pgn_module *mods, int n, const char *prefix, nn_err *e);
void pgn_state_export_free(pgn_state_export *x);
/* Reads every exported tensor from w (names as exported), then applies the counts. */
int pgn_state_export_read(pgn_state_export *x, const nn_weights *w, nn_err *e);

#endif
