/* `pgnd model summary ARCH [--size H [W]] [--batch N]`: the layers of a network in state-dict order
 * with their output shapes at that input size, parameter counts and forward multiply-adds (convs),
 * in a stable format whose last line is `params <count>`. ARCH: unet, resnet4, resnet6, resnet8,
 * dip. */
#ifndef DAEMON_MODEL_CMD_H
#define DAEMON_MODEL_CMD_H

#include <stdio.h>

typedef struct model_summary {
    size_t params;
    double macs; /* per forward of the whole batch */
} model_summary;

/* Prints the summary to out (NULL: only fills *sum); 0, or -1 with a message on err. */
int model_summary_run(const char *arch, int batch, int h, int w, FILE *out, FILE *err, model_summary *sum);

#endif
