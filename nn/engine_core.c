/* The engine's context, activation buffers, layout conversions (cached reorders) and
 * gradient store-or-add. */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "nn/dnnl_util.h"
#include "nn/memstat.h"

#define REORDER_CACHE 64

struct nn_reorder_cache {
    struct {
        dnnl_memory_desc_t src, dst;
        dnnl_primitive_t prim;
        unsigned long last_use;
    } e[REORDER_CACHE];
    int count;
    unsigned long clock;
};

/* oneDNN memory objects, reused across executions: a steady-state step creates none (creating
 * one allocates). Keyed by layout; a slot is busy only during one execution. */
#define MEM_SLOTS 1024
#define MEM_PROBE 16

struct nn_mem_cache {
    struct {
        dnnl_memory_desc_t md;
        dnnl_memory_t mem;
        int busy;
    } s[MEM_SLOTS];
};

const char *nn_dnnl_status_str(dnnl_status_t st)
{
    switch (st) {
    case dnnl_success: return "success";
    case dnnl_out_of_memory: return "out of memory";
    case dnnl_invalid_arguments: return "invalid arguments";
    case dnnl_unimplemented: return "unimplemented";
    case dnnl_iterator_ends: return "iterator ends";
    case dnnl_runtime_error: return "runtime error";
    case dnnl_not_required: return "not required";
    default: return "unknown status";
    }
}

int nn_env_switch(int *state, const char *var)
{
    int v = __atomic_load_n(state, __ATOMIC_RELAXED);
    if (v < 0) {
        const char *s = getenv(var);
        v = !(s && !strcmp(s, "0"));
        __atomic_store_n(state, v, __ATOMIC_RELAXED);
    }
    return v;
}

void nn_env_switch_set(int *state, int on) { __atomic_store_n(state, on < 0 ? -1 : on ? 1 : 0, __ATOMIC_RELAXED); }

static int fused = -1; /* -1: not decided yet */

int nn_fused_enabled(void) { return nn_env_switch(&fused, "PGND_FUSED"); }

void nn_fused_set_enabled(int on) { nn_env_switch_set(&fused, on); }

int nn_cpu_has_avx512(void)
{
    static int v = -1;
    int r = __atomic_load_n(&v, __ATOMIC_RELAXED);
    if (r < 0) {
        __builtin_cpu_init();
        r = __builtin_cpu_supports("avx512f") ? 1 : 0;
        __atomic_store_n(&v, r, __ATOMIC_RELAXED);
    }
    return r;
}

int nn_ctx_init(nn_ctx *ctx, int threads, nn_err *e)
{
    memset(ctx, 0, sizeof *ctx);
    if (threads > 0)
        omp_set_num_threads(threads);
    ctx->threads = omp_get_max_threads();
    DNNL_TRY(e, dnnl_engine_create(&ctx->engine, dnnl_cpu, 0));
    DNNL_TRY(e, dnnl_stream_create(&ctx->stream, ctx->engine, dnnl_stream_default_flags));
    ctx->reorders = calloc(1, sizeof *ctx->reorders);
    ctx->mems = calloc(1, sizeof *ctx->mems);
    if (!ctx->reorders || !ctx->mems)
        return nn_errf(e, "out of memory");
    return 0;
}

void nn_ctx_free(nn_ctx *ctx)
{
    if (ctx->reorders) {
        for (int i = 0; i < ctx->reorders->count; i++)
            dnnl_primitive_destroy(ctx->reorders->e[i].prim);
        free(ctx->reorders);
    }
    if (ctx->mems) {
        for (int i = 0; i < MEM_SLOTS; i++)
            if (ctx->mems->s[i].mem)
                dnnl_memory_destroy(ctx->mems->s[i].mem);
        free(ctx->mems);
    }
    if (ctx->stream)
        dnnl_stream_destroy(ctx->stream);
    if (ctx->engine)
        dnnl_engine_destroy(ctx->engine);
    nn_free_kind(ctx->scratch, NN_MEM_SCRATCH);
    nn_free_kind(ctx->tmp, NN_MEM_SCRATCH);
    for (int i = 0; i < 2; i++)
        nn_free_kind(ctx->wbuf[i], NN_MEM_SCRATCH);
    for (int i = 0; i < 3; i++)
        nn_free_kind(ctx->cvt[i], NN_MEM_SCRATCH);
    nn_act_free(&ctx->pad);
    memset(ctx, 0, sizeof *ctx);
}

static float *grow(float **buf, size_t *cap, size_t bytes, nn_err *e)
{
    if (bytes > *cap) {
        nn_free_kind(*buf, NN_MEM_SCRATCH);
        *buf = nn_alloc_kind(bytes, NN_MEM_SCRATCH);
        *cap = *buf ? bytes : 0;
        if (!*buf) {
            nn_errf(e, "out of memory (temporary of %zu bytes)", bytes);
            return NULL;
        }
    }
    return *buf;
}

float *nn_ctx_scratch(nn_ctx *ctx, size_t bytes, nn_err *e) { return grow(&ctx->scratch, &ctx->scratch_cap, bytes, e); }

float *nn_ctx_tmp(nn_ctx *ctx, size_t bytes, nn_err *e) { return grow(&ctx->tmp, &ctx->tmp_cap, bytes, e); }

float *nn_ctx_wbuf(nn_ctx *ctx, int i, size_t bytes, nn_err *e)
{
    return grow(&ctx->wbuf[i], &ctx->wbuf_cap[i], bytes, e);
}

float *nn_ctx_cvt(nn_ctx *ctx, int i, size_t bytes, nn_err *e)
{
    return grow(&ctx->cvt[i], &ctx->cvt_cap[i], bytes, e);
}

int nn_md_equal(const dnnl_memory_desc_t *a, const dnnl_memory_desc_t *b) { return dnnl_memory_desc_equal(a, b); }

size_t nn_md_bytes(const dnnl_memory_desc_t *md) { return dnnl_memory_desc_get_size(md); }

int nn_md_padded(const dnnl_memory_desc_t *md)
{
    for (int i = 0; i < md->ndims; i++)
        if (md->padded_dims[i] != md->dims[i])
            return 1;
    return 0;
}

dnnl_memory_desc_t nn_md_nchw(int n, int c, int h, int w)
{
    dnnl_memory_desc_t md;
    dnnl_dims_t d = {n, c, h, w};
    dnnl_memory_desc_init_by_tag(&md, 4, d, dnnl_f32, dnnl_nchw);
    return md;
}

dnnl_memory_desc_t nn_md_blocked(int n, int c, int h, int w, int blk)
{
    dnnl_memory_desc_t md;
    dnnl_dims_t d = {n, c, h, w};
    dnnl_memory_desc_init_by_tag(&md, 4, d, dnnl_f32, blk == 16 ? dnnl_nChw16c : blk == 8 ? dnnl_nChw8c : dnnl_nchw);
    return md;
}

int nn_view5_of(const dnnl_memory_desc_t *md, int n, int c, int h, int w, nn_view5 *v)
{
    static const int blks[] = {1, 16, 8};
    for (int i = 0; i < 3; i++) {
        dnnl_memory_desc_t m = nn_md_blocked(n, c, h, w, blks[i]);
        if (dnnl_memory_desc_equal(&m, md)) {
            *v = (nn_view5){n, c, h, w, blks[i], (c + blks[i] - 1) / blks[i]};
            return 0;
        }
    }
    return -1;
}

int nn_act_reserve(nn_act *a, int n, int c, int h, int w, const dnnl_memory_desc_t *md, nn_err *e)
{
    dnnl_memory_desc_t plain;
    if (!md) {
        plain = nn_md_nchw(n, c, h, w);
        md = &plain;
    }
    size_t bytes = nn_md_bytes(md);
    if (bytes > a->cap && a->borrowed)
        return nn_errf(e, "internal: an activation of %zu bytes does not fit the %zu bytes borrowed for it", bytes,
                       a->cap);
    if (bytes > a->cap) {
        nn_free_kind(a->data, NN_MEM_ACT);
        a->data = nn_alloc_kind(bytes, NN_MEM_ACT);
        if (!a->data) {
            a->cap = 0;
            return nn_errf(e, "out of memory (activation of %zu bytes)", bytes);
        }
        a->cap = bytes;
        a->md.ndims = 0; /* force the padding check below */
    }
    /* Blocked layouts pad channels: the padding must read as zeros (oneDNN and our kernels rely
     * on it). Only padded layouts need it; dense ones are fully overwritten by every writer. */
    if (!nn_md_equal(md, &a->md) && nn_md_padded(md))
        memset(a->data, 0, bytes);
    a->n = n;
    a->c = c;
    a->h = h;
    a->w = w;
    a->md = *md;
    return 0;
}

void nn_act_free(nn_act *a)
{
    if (!a->borrowed)
        nn_free_kind(a->data, NN_MEM_ACT);
    memset(a, 0, sizeof *a);
}

int nn_act_borrow(nn_act *a, const nn_act *owner, size_t offset, size_t bytes, nn_err *e)
{
    if (!owner->data || offset % 64 || offset + bytes > owner->cap)
        return nn_errf(e, "internal: cannot borrow %zu bytes at %zu of an activation buffer of %zu", bytes, offset,
                       owner->cap);
    memset(a, 0, sizeof *a);
    a->data = (float *)((char *)owner->data + offset);
    a->cap = bytes;
    a->borrowed = 1;
    return 0;
}

size_t nn_act_count(const nn_act *a) { return (size_t)a->n * a->c * a->h * a->w; }

static unsigned md_hash(const dnnl_memory_desc_t *md)
{
    uint64_t h = 1469598103934665603ull;
#define MIX(v) (h = (h ^ (uint64_t)(v)) * 1099511628211ull)
    MIX(md->ndims);
    MIX(md->data_type);
    MIX(md->format_kind);
    for (int i = 0; i < md->ndims; i++) {
        MIX(md->dims[i]);
        MIX(md->padded_dims[i]);
        if (md->format_kind == dnnl_blocked)
            MIX(md->format_desc.blocking.strides[i]);
    }
    if (md->format_kind == dnnl_blocked)
        for (int i = 0; i < md->format_desc.blocking.inner_nblks; i++) {
            MIX(md->format_desc.blocking.inner_blks[i]);
            MIX(md->format_desc.blocking.inner_idxs[i]);
        }
#undef MIX
    return (unsigned)(h ^ (h >> 32));
}

/* A memory object for md pointing at ptr: a cached one when free, else a new one (cached when a
 * slot is empty, otherwise *temp is set and the caller destroys it). */
static dnnl_status_t mem_get(nn_ctx *ctx, const dnnl_memory_desc_t *md, void *ptr, dnnl_memory_t *out, int *slot)
{
    unsigned h = md_hash(md);
    int empty = -1;
    for (int k = 0; k < MEM_PROBE; k++) {
        int i = (h + k) % MEM_SLOTS;
        if (!ctx->mems->s[i].mem) {
            if (empty < 0)
                empty = i;
            continue;
        }
        if (!ctx->mems->s[i].busy && dnnl_memory_desc_equal(&ctx->mems->s[i].md, md)) {
            dnnl_status_t st = dnnl_memory_set_data_handle(ctx->mems->s[i].mem, ptr);
            if (st == dnnl_success) {
                ctx->mems->s[i].busy = 1;
                *out = ctx->mems->s[i].mem;
                *slot = i;
            }
            return st;
        }
    }
    dnnl_status_t st = dnnl_memory_create(out, md, ctx->engine, ptr);
    if (st != dnnl_success)
        return st;
    *slot = -1;
    if (empty >= 0) {
        ctx->mems->s[empty].md = *md;
        ctx->mems->s[empty].mem = *out;
        ctx->mems->s[empty].busy = 1;
        *slot = empty;
    }
    return dnnl_success;
}

int nn_exec(nn_ctx *ctx, dnnl_primitive_t prim, int nargs, const nn_arg *args, nn_err *e)
{
    dnnl_exec_arg_t ea[12];
    int slots[12], got = 0, rc = 0;
    if (nargs > 12)
        return nn_errf(e, "internal: too many primitive arguments (%d)", nargs);
    for (int i = 0; i < nargs; i++) {
        dnnl_status_t st = mem_get(ctx, args[i].md, args[i].ptr, &ea[i].memory, &slots[i]);
        if (st != dnnl_success) {
            rc = nn_errf(e, "oneDNN: memory create failed (%s)", nn_dnnl_status_str(st));
            goto out;
        }
        got++;
        ea[i].arg = args[i].arg;
    }
    dnnl_status_t st = dnnl_primitive_execute(prim, ctx->stream, nargs, ea);
    if (st == dnnl_success)
        st = dnnl_stream_wait(ctx->stream);
    if (st != dnnl_success)
        rc = nn_errf(e, "oneDNN: execute failed (%s)", nn_dnnl_status_str(st));
out:
    for (int i = 0; i < got; i++) {
        if (slots[i] >= 0)
            ctx->mems->s[slots[i]].busy = 0;
        else
            dnnl_memory_destroy(ea[i].memory);
    }
    return rc;
}

int nn_make_prim(nn_ctx *ctx, const void *op_desc, const_dnnl_primitive_desc_t hint, dnnl_primitive_desc_t *pd,
                 dnnl_primitive_t *prim, nn_err *e)
{
    return nn_make_prim_attr(ctx, op_desc, NULL, hint, pd, prim, e);
}

int nn_make_prim_attr(nn_ctx *ctx, const void *op_desc, const_dnnl_primitive_attr_t attr,
                      const_dnnl_primitive_desc_t hint, dnnl_primitive_desc_t *pd, dnnl_primitive_t *prim, nn_err *e)
{
    DNNL_TRY(e, dnnl_primitive_desc_create(pd, op_desc, attr, ctx->engine, hint));
    int64_t sp = 0; /* the library scratchpad this primitive needs (memory accounting only) */
    if (dnnl_primitive_desc_query(*pd, dnnl_query_memory_consumption_s64, 0, &sp) == dnnl_success)
        nn_memstat_note_scratchpad(sp);
    dnnl_status_t st = dnnl_primitive_create(prim, *pd);
    if (st != dnnl_success) {
        dnnl_primitive_desc_destroy(*pd);
        *pd = NULL;
        return nn_errf(e, "oneDNN: primitive create failed (%s)", nn_dnnl_status_str(st));
    }
    return 0;
}

const dnnl_memory_desc_t *nn_pd_md(const_dnnl_primitive_desc_t pd, dnnl_query_t what, int index)
{
    return dnnl_primitive_desc_query_md(pd, what, index);
}

int nn_reorder(nn_ctx *ctx, const dnnl_memory_desc_t *src_md, const void *src, const dnnl_memory_desc_t *dst_md,
               void *dst, nn_err *e)
{
    if (nn_md_equal(src_md, dst_md)) {
        if (src != dst)
            memcpy(dst, src, nn_md_bytes(src_md));
        return 0;
    }
    nn_reorder_cache *rc = ctx->reorders;
    int hit = -1;
    for (int i = 0; i < rc->count; i++)
        if (nn_md_equal(&rc->e[i].src, src_md) && nn_md_equal(&rc->e[i].dst, dst_md)) {
            hit = i;
            break;
        }
    if (hit < 0) {
        if (rc->count == REORDER_CACHE) { /* evict the least recently used */
            hit = 0;
            for (int i = 1; i < rc->count; i++)
                if (rc->e[i].last_use < rc->e[hit].last_use)
                    hit = i;
            dnnl_primitive_destroy(rc->e[hit].prim);
        } else {
            hit = rc->count++;
        }
        dnnl_primitive_desc_t pd;
        dnnl_status_t st = dnnl_reorder_primitive_desc_create(&pd, src_md, ctx->engine, dst_md, ctx->engine, NULL);
        if (st == dnnl_success) {
            st = dnnl_primitive_create(&rc->e[hit].prim, pd);
            dnnl_primitive_desc_destroy(pd);
        }
        if (st != dnnl_success) {
            rc->e[hit] = rc->e[--rc->count];
            return nn_errf(e, "oneDNN: reorder create failed (%s)", nn_dnnl_status_str(st));
        }
        rc->e[hit].src = *src_md;
        rc->e[hit].dst = *dst_md;
    }
    rc->e[hit].last_use = ++rc->clock;
    nn_arg args[] = {{DNNL_ARG_FROM, src_md, (void *)src}, {DNNL_ARG_TO, dst_md, dst}};
    return nn_exec(ctx, rc->e[hit].prim, 2, args, e);
}

int nn_act_from_nchw(nn_ctx *ctx, nn_act *a, const float *src, int n, int c, int h, int w, nn_err *e)
{
    if (nn_act_reserve(a, n, c, h, w, NULL, e))
        return -1;
    memcpy(a->data, src, nn_act_count(a) * sizeof(float));
    a->valid = 1;
    return 0;
}

int nn_act_to_nchw(nn_ctx *ctx, const nn_act *a, float *dst, nn_err *e)
{
    dnnl_memory_desc_t plain = nn_md_nchw(a->n, a->c, a->h, a->w);
    return nn_reorder(ctx, &a->md, a->data, &plain, dst, e);
}

int nn_act_convert(nn_ctx *ctx, nn_act *a, const dnnl_memory_desc_t *md, nn_err *e)
{
    if (nn_md_equal(&a->md, md))
        return 0;
    if (a->borrowed)
        return nn_errf(e, "internal: a borrowed activation buffer cannot change its layout");
    size_t bytes = nn_md_bytes(md);
    float *tmp = nn_alloc_kind(bytes, NN_MEM_ACT);
    if (!tmp)
        return nn_errf(e, "out of memory (layout conversion of %zu bytes)", bytes);
    if (nn_reorder(ctx, &a->md, a->data, md, tmp, e)) {
        nn_free_kind(tmp, NN_MEM_ACT);
        return -1;
    }
    nn_free_kind(a->data, NN_MEM_ACT);
    a->data = tmp;
    a->cap = bytes;
    a->md = *md;
    return 0;
}

int nn_act_view5(nn_ctx *ctx, nn_act *a, nn_view5 *v, nn_err *e)
{
    if (nn_view5_of(&a->md, a->n, a->c, a->h, a->w, v) == 0)
        return 0;
    dnnl_memory_desc_t plain = nn_md_nchw(a->n, a->c, a->h, a->w);
    if (nn_act_convert(ctx, a, &plain, e))
        return -1;
    return nn_view5_of(&a->md, a->n, a->c, a->h, a->w, v);
}

int nn_act_accumulate(nn_ctx *ctx, nn_act *acc, const dnnl_memory_desc_t *md, const float *g, int n, int c, int h,
                      int w, nn_err *e)
{
    if (!acc->valid) {
        if (nn_act_reserve(acc, n, c, h, w, md, e))
            return -1;
        if (g != acc->data)
            memcpy(acc->data, g, nn_md_bytes(md));
        acc->valid = 1;
        return 0;
    }
    if (acc->n != n || acc->c != c || acc->h != h || acc->w != w)
        return nn_errf(e, "gradient shape mismatch: [%d, %d, %d, %d] into [%d, %d, %d, %d]", n, c, h, w, acc->n,
                       acc->c, acc->h, acc->w);
    const float *src = g;
    if (!nn_md_equal(md, &acc->md)) {
        float *tmp = nn_ctx_scratch(ctx, nn_md_bytes(&acc->md), e);
        if (!tmp)
            return -1;
        if (g == tmp)
            return nn_errf(e, "internal: gradient already in scratch");
        if (nn_reorder(ctx, md, g, &acc->md, tmp, e))
            return -1;
        src = tmp;
    }
    size_t count = nn_md_bytes(&acc->md) / sizeof(float);
    float *d = acc->data;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < count; i++)
        d[i] += src[i];
    return 0;
}
