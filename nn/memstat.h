/* Engine-accounted memory: current and peak bytes of what the engine allocates, by kind.
 *
 *   NN_MEM_TENSOR   nn_tensor_alloc: parameters, their gradients, BN statistics, optimiser moments
 *                   (large tensors are mapped pages: counted in full even where never written)
 *   NN_MEM_ACT      nn_act buffers (nn_act_reserve, nn_act_convert): activations, their gradients,
 *                   everything a layer keeps for its backward, the ctx's reflection-padded input
 *   NN_MEM_SCRATCH  the ctx's scratch, tmp and transient weight buffers (nn_ctx_scratch /
 *                   nn_ctx_tmp / nn_ctx_wbuf: oneDNN-layout weights and weight gradients of layers
 *                   that learn) and layer workspaces (pooling's)
 *   NN_MEM_OTHER    every other nn_alloc: oneDNN-layout weight copies of frozen layers, weight
 *                   files being read, callers' own nn_alloc buffers
 *
 * Sizes are the allocator's usable sizes (malloc_usable_size; a few bytes over the request). What
 * oneDNN allocates itself is not in the kinds: its library scratchpad (one buffer per thread,
 * sized to the largest need of the primitives made) is reported apart, as the largest scratchpad
 * a primitive made since the start (dnnl_scratchpad). Plain malloc in callers is not counted.
 *
 * Thread-safe and cheap (relaxed atomic adds; a compare-and-swap only when a peak rises). The
 * engine allocates nothing in a steady-state step, so the counting costs nothing there. */
#ifndef NN_MEMSTAT_H
#define NN_MEMSTAT_H

#include <stddef.h>
#include <stdint.h>

typedef enum nn_mem_kind { NN_MEM_TENSOR = 0, NN_MEM_ACT, NN_MEM_SCRATCH, NN_MEM_OTHER, NN_MEM_KINDS } nn_mem_kind;

typedef struct nn_memstat {
    int64_t cur[NN_MEM_KINDS], peak[NN_MEM_KINDS]; /* bytes; peak: each kind's own high-water mark */
    int64_t total, total_peak;                     /* all kinds together (peak of the sum) */
    int64_t dnnl_scratchpad;                       /* largest oneDNN library scratchpad of a primitive */
} nn_memstat;

/* A snapshot of the counters (each read atomically; the set is not one instant across threads). */
void nn_memstat_get(nn_memstat *s);
/* Peaks := current values, to measure the high-water mark of what follows. */
void nn_memstat_reset_peak(void);
const char *nn_mem_kind_name(nn_mem_kind k); /* "tensor", "act", "scratch", "other" */

/* Hooks for the engine's allocators. */
void *nn_alloc_kind(size_t bytes, nn_mem_kind k); /* nn_alloc, counted as k */
void nn_free_kind(void *p, nn_mem_kind k);        /* nn_free of a buffer counted as k */
void nn_memstat_add(nn_mem_kind k, int64_t bytes); /* memory not from nn_alloc (mapped tensors) */
void nn_memstat_note_scratchpad(int64_t bytes);
/* The usable size nn_alloc_kind counted for p (0 for NULL). */
size_t nn_memstat_size_of(const void *p);

#endif
