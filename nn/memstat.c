#include "nn/memstat.h"

#include <malloc.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "nn/tensor.h"

static _Atomic int64_t cur[NN_MEM_KINDS], peak[NN_MEM_KINDS], total, total_peak, scratchpad;

static void raise_to(_Atomic int64_t *p, int64_t v)
{
    int64_t old = atomic_load_explicit(p, memory_order_relaxed);
    while (v > old && !atomic_compare_exchange_weak_explicit(p, &old, v, memory_order_relaxed, memory_order_relaxed))
        ;
}

void nn_memstat_add(nn_mem_kind k, int64_t bytes)
{
    if ((unsigned)k >= NN_MEM_KINDS || bytes == 0)
        return;
    int64_t c = atomic_fetch_add_explicit(&cur[k], bytes, memory_order_relaxed) + bytes;
    int64_t t = atomic_fetch_add_explicit(&total, bytes, memory_order_relaxed) + bytes;
    if (bytes > 0) {
        raise_to(&peak[k], c);
        raise_to(&total_peak, t);
    }
}

void nn_memstat_note_scratchpad(int64_t bytes) { raise_to(&scratchpad, bytes); }

size_t nn_memstat_size_of(const void *p) { return p ? malloc_usable_size((void *)p) : 0; }

void *nn_alloc_kind(size_t bytes, nn_mem_kind k)
{
    void *p = NULL;
    if (bytes == 0)
        bytes = NN_ALIGN;
    /* Round up: aligned_alloc wants a multiple of the alignment. */
    bytes = (bytes + NN_ALIGN - 1) / NN_ALIGN * NN_ALIGN;
    if (posix_memalign(&p, NN_ALIGN, bytes) != 0)
        return NULL;
    nn_memstat_add(k, (int64_t)malloc_usable_size(p));
    return p;
}

void nn_free_kind(void *p, nn_mem_kind k)
{
    if (!p)
        return;
    nn_memstat_add(k, -(int64_t)malloc_usable_size(p));
    free(p);
}

void nn_memstat_get(nn_memstat *s)
{
    for (int k = 0; k < NN_MEM_KINDS; k++) {
        s->cur[k] = atomic_load_explicit(&cur[k], memory_order_relaxed);
        s->peak[k] = atomic_load_explicit(&peak[k], memory_order_relaxed);
    }
    s->total = atomic_load_explicit(&total, memory_order_relaxed);
    s->total_peak = atomic_load_explicit(&total_peak, memory_order_relaxed);
    s->dnnl_scratchpad = atomic_load_explicit(&scratchpad, memory_order_relaxed);
}

void nn_memstat_reset_peak(void)
{
    for (int k = 0; k < NN_MEM_KINDS; k++)
        atomic_store_explicit(&peak[k], atomic_load_explicit(&cur[k], memory_order_relaxed), memory_order_relaxed);
    atomic_store_explicit(&total_peak, atomic_load_explicit(&total, memory_order_relaxed), memory_order_relaxed);
}

const char *nn_mem_kind_name(nn_mem_kind k)
{
    static const char *const names[NN_MEM_KINDS] = {"tensor", "act", "scratch", "other"};
    return (unsigned)k < NN_MEM_KINDS ? names[k] : "?";
}
