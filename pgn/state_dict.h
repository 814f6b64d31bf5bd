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

#endif
