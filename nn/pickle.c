#include "nn/pickle.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Opcodes (names as in CPython's pickle.py). */
enum {
    OP_MARK = '(', OP_STOP = '.', OP_BININT = 'J', OP_BININT1 = 'K', OP_BININT2 = 'M', OP_NONE = 'N',
    OP_BINPERSID = 'Q', OP_REDUCE = 'R', OP_BINSTRING = 'T', OP_SHORT_BINSTRING = 'U', OP_BINUNICODE = 'X',
    OP_BINBYTES = 'B', OP_SHORT_BINBYTES = 'C', OP_APPEND = 'a', OP_BUILD = 'b', OP_GLOBAL = 'c',
    OP_APPENDS = 'e', OP_BINGET = 'h', OP_LONG_BINGET = 'j', OP_EMPTY_LIST = ']', OP_BINPUT = 'q',
    OP_LONG_BINPUT = 'r', OP_SETITEM = 's', OP_TUPLE = 't', OP_EMPTY_TUPLE = ')', OP_SETITEMS = 'u',
    OP_BINFLOAT = 'G', OP_EMPTY_DICT = '}', OP_PROTO = 0x80, OP_TUPLE1 = 0x85, OP_TUPLE2 = 0x86,
    OP_TUPLE3 = 0x87, OP_NEWTRUE = 0x88, OP_NEWFALSE = 0x89, OP_LONG1 = 0x8a, OP_SHORT_BINUNICODE = 0x8c,
    OP_STACK_GLOBAL = 0x93, OP_MEMOIZE = 0x94, OP_FRAME = 0x95
};

/* Opcodes that are valid pickle but outside what torch.save writes for tensors and dicts:
 * named in the error so the user knows the file is a pickle of something else. */
static const struct { uint8_t op; const char *name; } refused[] = {
    {0x81, "NEWOBJ"}, {0x92, "NEWOBJ_EX"}, {'i', "INST"}, {'o', "OBJ"}, {0x8f, "EMPTY_SET"},
    {0x90, "ADDITEMS"}, {0x91, "FROZENSET"}, {'P', "PERSID"}, {'I', "INT"}, {'L', "LONG"},
    {'S', "STRING"}, {'V', "UNICODE"}, {'F', "FLOAT"}, {0x8b, "LONG4"}, {'0', "POP"}, {'1', "POP_MARK"},
    {'2', "DUP"}, {'d', "DICT"}, {'l', "LIST"}, {'g', "GET"}, {'p', "PUT"}, {0x8d, "BINUNICODE8"},
    {0x8e, "BINBYTES8"}, {0x96, "BYTEARRAY8"}, {0x82, "EXT1"}, {0x83, "EXT2"}, {0x84, "EXT4"},
};

/* ---- arena: every value of a VM is freed at once by nn_pk_free (values are shared through the
 * memo, so there is no single owner to free them earlier) ---- */

#define BLOCK_BYTES 65536

/* No weights file needs this much memory for its pickle's objects (a state dict of 100k tensors
 * needs about 100 MiB); past it the file is refused instead of filling the daemon's memory. */
#define MAX_PICKLE_BYTES ((size_t)512 << 20)

struct nn_pk_block {
    nn_pk_block *next;
    size_t used, cap;
    max_align_t data[];
};

static void *arena_alloc(nn_pk_vm *vm, size_t n)
{
    n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    nn_pk_block *b = vm->arena;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > BLOCK_BYTES / 4 ? n : BLOCK_BYTES;
        if (cap > MAX_PICKLE_BYTES - vm->bytes || !(b = malloc(sizeof *b + cap)))
            return NULL;
        vm->bytes += cap;
        b->cap = cap;
        b->used = 0;
        /* A dedicated big block goes second so the current small block keeps being filled. */
        if (vm->arena && cap != BLOCK_BYTES) {
            b->next = vm->arena->next;
            vm->arena->next = b;
        } else {
            b->next = vm->arena;
            vm->arena = b;
        }
    }
    void *p = (char *)b->data + b->used;
    b->used += n;
    memset(p, 0, n);
    return p;
}

void nn_pk_init(nn_pk_vm *vm) { memset(vm, 0, sizeof *vm); }

void nn_pk_free(nn_pk_vm *vm)
{
    for (nn_pk_block *b = vm->arena, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    free(vm->stack);
    free(vm->marks);
    free(vm->memo);
    free(vm->storages);
    memset(vm, 0, sizeof *vm);
}

const char *nn_pk_kind_name(nn_pk_kind k)
{
    static const char *const names[] = {"None", "bool", "int", "int", "float", "str", "tuple", "list",
                                        "dict", "class or function", "storage", "tensor", "object"};
    return (unsigned)k < sizeof names / sizeof names[0] ? names[k] : "?";
}

/* ---- the running pickle ---- */

typedef struct run {
    nn_pk_vm *vm;
    const uint8_t *p;
    size_t len, pos;
    size_t base, op_pos; /* for messages */
    nn_err *e;
} run;

static int fail(run *r, const char *what)
{
    return nn_errf(r->e, "pickle at byte %zu: %s", r->base + r->op_pos, what);
}

#define FAILF(r, ...)                                                                                      \
    do {                                                                                                   \
        char what_[512];                                                                                   \
        snprintf(what_, sizeof what_, __VA_ARGS__);                                                        \
        return fail(r, what_);                                                                             \
    } while (0)

static int oom(run *r) { return fail(r, "out of memory (a pickle may build at most 512 MiB of objects)"); }

/* Grows an array to hold at least `need` elements, within the VM's memory budget. */
static int grow(run *r, void **arr, size_t *cap, size_t elem, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 64;
    while (n < need)
        n *= 2;
    if (n > MAX_PICKLE_BYTES / elem || (n - *cap) * elem > MAX_PICKLE_BYTES - r->vm->bytes)
        return oom(r);
    void *p = realloc(*arr, n * elem);
    if (!p)
        return oom(r);
    r->vm->bytes += (n - *cap) * elem;
    *arr = p;
    *cap = n;
    return 0;
}

static int take(run *r, size_t n, const uint8_t **out)
{
    if (r->len - r->pos < n)
        return fail(r, "truncated (the file ends inside the pickle)");
    *out = r->p + r->pos;
    r->pos += n;
    return 0;
}

static uint64_t le(const uint8_t *b, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | b[i];
    return v;
}

static nn_pk_value *new_value(run *r, nn_pk_kind kind)
{
    nn_pk_value *v = arena_alloc(r->vm, sizeof *v);
    if (v)
        v->kind = kind;
    return v;
}

static int push(run *r, nn_pk_value *v)
{
    nn_pk_vm *vm = r->vm;
    if (!v || grow(r, (void **)&vm->stack, &vm->stack_cap, sizeof *vm->stack, vm->sp + 1))
        return oom(r);
    vm->stack[vm->sp++] = v;
    return 0;
}

/* The stack bottom visible to the current opcode: items under the last MARK are not poppable. */
static size_t fence(const nn_pk_vm *vm) { return vm->nmarks ? vm->marks[vm->nmarks - 1] : 0; }

static int pop(run *r, nn_pk_value **out)
{
    if (r->vm->sp <= fence(r->vm))
        return fail(r, "stack underflow");
    *out = r->vm->stack[--r->vm->sp];
    return 0;
}

static int top(run *r, nn_pk_value **out)
{
    if (r->vm->sp <= fence(r->vm))
        return fail(r, "stack underflow");
    *out = r->vm->stack[r->vm->sp - 1];
    return 0;
}

/* Pops the items pushed since the last MARK and the MARK itself: they are items[0..n). */
static int pop_mark(run *r, nn_pk_value ***items, size_t *n)
{
    nn_pk_vm *vm = r->vm;
    if (!vm->nmarks)
        return fail(r, "no MARK on the stack");
    size_t start = vm->marks[--vm->nmarks];
    *items = vm->stack + start;
    *n = vm->sp - start;
    vm->sp = start;
    return 0;
}

static int seq_add(run *r, nn_pk_value *seq, nn_pk_value *item)
{
    if (seq->u.seq.len == seq->u.seq.cap) {
        size_t cap = seq->u.seq.cap ? seq->u.seq.cap * 2 : 8;
        nn_pk_value **v = arena_alloc(r->vm, cap * sizeof *v);
        if (!v)
            return oom(r);
        if (seq->u.seq.len)
            memcpy(v, seq->u.seq.v, seq->u.seq.len * sizeof *v);
        seq->u.seq.v = v;
        seq->u.seq.cap = cap;
    }
    seq->u.seq.v[seq->u.seq.len++] = item;
    return 0;
}

static nn_pk_value *new_seq(run *r, nn_pk_kind kind, nn_pk_value **items, size_t n)
{
    nn_pk_value *v = new_value(r, kind);
    if (!v || !n)
        return v;
    v->u.seq.v = arena_alloc(r->vm, n * sizeof *items);
    if (!v->u.seq.v)
        return NULL;
    memcpy(v->u.seq.v, items, n * sizeof *items);
    v->u.seq.len = v->u.seq.cap = n;
    return v;
}

static nn_pk_value *new_str(run *r, nn_pk_kind kind, const uint8_t *s, size_t n)
{
    nn_pk_value *v = new_value(r, kind);
    if (!v || !(v->u.str.s = arena_alloc(r->vm, n + 1)))
        return NULL;
    memcpy(v->u.str.s, s, n);
    v->u.str.len = n;
    return v;
}

static int push_str(run *r, int len_bytes, int is_signed)
{
    const uint8_t *b = NULL;
    if (take(r, (size_t)len_bytes, &b))
        return -1;
    uint64_t n = le(b, len_bytes);
    if (is_signed && (int32_t)n < 0)
        return fail(r, "negative string length");
    if (take(r, n, &b))
        return -1;
    return push(r, new_str(r, NN_PK_STR, b, n));
}

/* ---- GLOBAL: the allow-list; anything else is refused, never looked up ---- */

static int resolve_global(run *r, const char *module, const char *name)
{
    static const struct { const char *module, *name; nn_pk_global fn; } fns[] = {
        {"collections", "OrderedDict", NN_PK_ORDERED_DICT},
        {"torch._utils", "_rebuild_tensor", NN_PK_REBUILD_TENSOR},
        {"torch._utils", "_rebuild_tensor_v2", NN_PK_REBUILD_TENSOR_V2},
        {"torch._utils", "_rebuild_parameter", NN_PK_REBUILD_PARAMETER},
        {"torch._utils", "_rebuild_parameter_with_state", NN_PK_REBUILD_PARAMETER},
        {"torch", "device", NN_PK_DEVICE},
    };
    static const struct { const char *name; nn_dtype dtype; } storages[] = {
        {"FloatStorage", NN_F32}, {"DoubleStorage", NN_F64}, {"HalfStorage", NN_F16},
        {"BFloat16Storage", NN_BF16}, {"LongStorage", NN_I64}, {"IntStorage", NN_I32},
        {"ShortStorage", NN_I16}, {"CharStorage", NN_I8}, {"ByteStorage", NN_U8}, {"BoolStorage", NN_BOOL},
    };
    nn_pk_value *v = new_value(r, NN_PK_GLOBAL);
    if (!v)
        return oom(r);
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++)
        if (!strcmp(module, fns[i].module) && !strcmp(name, fns[i].name)) {
            v->u.global.fn = fns[i].fn;
            return push(r, v);
        }
    /* Old files saved from the GPU name the class torch.cuda.FloatStorage. */
    if (!strcmp(module, "torch") || !strcmp(module, "torch.cuda"))
        for (size_t i = 0; i < sizeof storages / sizeof storages[0]; i++)
            if (!strcmp(name, storages[i].name)) {
                v->u.global.fn = NN_PK_STORAGE_CLASS;
                v->u.global.dtype = storages[i].dtype;
                return push(r, v);
            }
    FAILF(r, "GLOBAL '%.100s.%.100s' is not allowed (a weights file only needs torch tensors, storages "
             "and OrderedDict)", module, name);
}

static int op_global(run *r)
{
    char part[2][256];
    for (int k = 0; k < 2; k++) {
        const uint8_t *nl = memchr(r->p + r->pos, '\n', r->len - r->pos);
        if (!nl)
            return fail(r, "truncated GLOBAL");
        size_t n = (size_t)(nl - (r->p + r->pos));
        if (n >= sizeof part[k])
            return fail(r, "GLOBAL name too long");
        memcpy(part[k], r->p + r->pos, n);
        part[k][n] = 0;
        r->pos += n + 1;
    }
    return resolve_global(r, part[0], part[1]);
}

static int op_stack_global(run *r)
{
    nn_pk_value *name, *module;
    if (pop(r, &name) || pop(r, &module))
        return -1;
    if (name->kind != NN_PK_STR || module->kind != NN_PK_STR)
        return fail(r, "STACK_GLOBAL needs two strings");
    return resolve_global(r, module->u.str.s, name->u.str.s);
}

/* ---- REDUCE: calls to allowed functions ---- */

static int int_arg(const nn_pk_value *v, int64_t *out)
{
    if (v->kind != NN_PK_INT)
        return -1;
    *out = v->u.i;
    return 0;
}

static int make_tensor(run *r, nn_pk_value **args, size_t n, nn_pk_value **out)
{
    if (n < 4)
        FAILF(r, "tensor rebuild needs at least 4 arguments, got %zu", n);
    if (args[0]->kind != NN_PK_STORAGE)
        FAILF(r, "tensor rebuild: argument 1 is a %s, not a storage", nn_pk_kind_name(args[0]->kind));
    const nn_pk_value *size = args[2], *stride = args[3];
    if (size->kind != NN_PK_TUPLE || stride->kind != NN_PK_TUPLE || size->u.seq.len != stride->u.seq.len)
        return fail(r, "tensor rebuild: size and stride must be tuples of the same length");
    if (size->u.seq.len > NN_MAX_DIMS)
        FAILF(r, "tensor has %zu dimensions (at most %d supported)", size->u.seq.len, NN_MAX_DIMS);
    nn_pk_value *v = new_value(r, NN_PK_TENSOR);
    if (!v)
        return oom(r);
    nn_pk_tensor *t = &v->u.tensor;
    t->storage = args[0];
    t->ndim = (int)size->u.seq.len;
    if (int_arg(args[1], &t->offset) || t->offset < 0)
        return fail(r, "tensor rebuild: storage offset must be a non-negative int");
    for (int d = 0; d < t->ndim; d++)
        if (int_arg(size->u.seq.v[d], &t->size[d]) || int_arg(stride->u.seq.v[d], &t->stride[d]) ||
            t->size[d] < 0 || t->stride[d] < 0)
            return fail(r, "tensor rebuild: sizes and strides must be non-negative ints");
    *out = v;
    return 0;
}

static int op_reduce(run *r)
{
    nn_pk_value *args, *fn, *res = NULL;
    if (pop(r, &args) || pop(r, &fn))
        return -1;
    if (fn->kind != NN_PK_GLOBAL)
        FAILF(r, "REDUCE calls a %s", nn_pk_kind_name(fn->kind));
    if (args->kind != NN_PK_TUPLE)
        FAILF(r, "REDUCE arguments are a %s, not a tuple", nn_pk_kind_name(args->kind));
    nn_pk_value **a = args->u.seq.v;
    size_t n = args->u.seq.len;
    switch (fn->u.global.fn) {
    case NN_PK_ORDERED_DICT:
        if (n)
            return fail(r, "OrderedDict called with arguments");
        res = new_value(r, NN_PK_DICT);
        break;
    case NN_PK_REBUILD_TENSOR:
    case NN_PK_REBUILD_TENSOR_V2:
        if (make_tensor(r, a, n, &res))
            return -1;
        break;
    case NN_PK_REBUILD_PARAMETER: /* a Parameter is its data tensor for us */
        if (!n || a[0]->kind != NN_PK_TENSOR)
            return fail(r, "_rebuild_parameter needs a tensor");
        res = a[0];
        break;
    case NN_PK_DEVICE:
        res = new_value(r, NN_PK_OBJECT);
        break;
    case NN_PK_STORAGE_CLASS:
        return fail(r, "REDUCE calls a storage class");
    }
    return push(r, res);
}

/* ---- BINPERSID: ('storage', class, key, location, numel[, view_metadata]) ---- */

static int op_binpersid(run *r)
{
    nn_pk_value *pid;
    if (pop(r, &pid))
        return -1;
    if (pid->kind != NN_PK_TUPLE || pid->u.seq.len < 1 || pid->u.seq.v[0]->kind != NN_PK_STR)
        return fail(r, "persistent id is not a tuple starting with a string");
    nn_pk_value **a = pid->u.seq.v;
    size_t n = pid->u.seq.len;
    if (strcmp(a[0]->u.str.s, "storage"))
        FAILF(r, "persistent id '%.64s' is not supported (only storages; a pickled nn.Module is not a "
                 "state_dict)", a[0]->u.str.s);
    nn_pk_value *v = new_value(r, NN_PK_STORAGE);
    if (!v)
        return oom(r);
    nn_pk_storage *s = &v->u.storage;
    s->view_numel = -1;
    if ((n != 5 && n != 6) || a[1]->kind != NN_PK_GLOBAL || a[1]->u.global.fn != NN_PK_STORAGE_CLASS ||
        a[2]->kind != NN_PK_STR || int_arg(a[4], &s->numel) || s->numel < 0)
        return fail(r, "malformed storage persistent id");
    s->dtype = a[1]->u.global.dtype;
    s->key = a[2]->u.str.s;
    if (n == 6 && a[5]->kind != NN_PK_NONE) {
        const nn_pk_value *view = a[5];
        if (view->kind != NN_PK_TUPLE || view->u.seq.len != 3 || view->u.seq.v[0]->kind != NN_PK_STR ||
            int_arg(view->u.seq.v[1], &s->view_offset) || int_arg(view->u.seq.v[2], &s->view_numel) ||
            s->view_offset < 0 || s->view_numel < 0)
            return fail(r, "malformed storage view metadata");
    }
    nn_pk_vm *vm = r->vm;
    if (grow(r, (void **)&vm->storages, &vm->storages_cap, sizeof *vm->storages, vm->nstorages + 1))
        return -1;
    vm->storages[vm->nstorages++] = v;
    return push(r, v);
}

/* ---- containers ---- */

static int op_setitems(run *r, int one)
{
    nn_pk_value **items, *pair[2], *dict;
    size_t n;
    if (one) {
        if (pop(r, &pair[1]) || pop(r, &pair[0]))
            return -1;
        items = pair;
        n = 2;
    } else if (pop_mark(r, &items, &n)) {
        return -1;
    }
    if (n % 2)
        return fail(r, "SETITEMS with an odd number of items");
    if (top(r, &dict))
        return -1;
    if (dict->kind != NN_PK_DICT)
        FAILF(r, "SETITEM on a %s", nn_pk_kind_name(dict->kind));
    for (size_t i = 0; i < n; i++)
        if (seq_add(r, dict, items[i]))
            return -1;
    return 0;
}

static int op_appends(run *r, int one)
{
    nn_pk_value **items, *item, *list;
    size_t n = 1;
    if (one ? pop(r, &item) : pop_mark(r, &items, &n))
        return -1;
    if (one)
        items = &item;
    if (top(r, &list))
        return -1;
    if (list->kind != NN_PK_LIST)
        FAILF(r, "APPEND on a %s", nn_pk_kind_name(list->kind));
    for (size_t i = 0; i < n; i++)
        if (seq_add(r, list, items[i]))
            return -1;
    return 0;
}

static int op_tuple_n(run *r, size_t n)
{
    nn_pk_vm *vm = r->vm;
    if (vm->sp - fence(vm) < n)
        return fail(r, "stack underflow");
    vm->sp -= n;
    return push(r, new_seq(r, NN_PK_TUPLE, vm->stack + vm->sp, n));
}

static int op_mark(run *r)
{
    nn_pk_vm *vm = r->vm;
    if (grow(r, (void **)&vm->marks, &vm->marks_cap, sizeof *vm->marks, vm->nmarks + 1))
        return -1;
    vm->marks[vm->nmarks++] = vm->sp;
    return 0;
}

/* ---- memo ---- */

/* CPython's pickler numbers memo entries 0, 1, 2, ... as it stores them, so an index past the
 * number stored so far means a corrupt file; this also bounds the memo by the pickle's size. */
static int memo_put(run *r, uint64_t idx, size_t *memo_len)
{
    nn_pk_vm *vm = r->vm;
    nn_pk_value *v;
    size_t old = vm->memo_cap;
    if (top(r, &v))
        return -1;
    if (idx > *memo_len)
        FAILF(r, "memo index %llu out of sequence", (unsigned long long)idx);
    if (grow(r, (void **)&vm->memo, &vm->memo_cap, sizeof *vm->memo, (size_t)idx + 1))
        return -1;
    memset(vm->memo + old, 0, (vm->memo_cap - old) * sizeof *vm->memo);
    vm->memo[idx] = v;
    (*memo_len)++;
    return 0;
}

static int memo_get(run *r, uint64_t idx)
{
    if (idx >= r->vm->memo_cap || !r->vm->memo[idx])
        FAILF(r, "memo index %llu was never stored", (unsigned long long)idx);
    return push(r, r->vm->memo[idx]);
}

/* ---- the loop ---- */

static int step(run *r, int op, size_t *memo_len)
{
    const uint8_t *b = NULL;
    nn_pk_value *v;
    switch (op) {
    case OP_PROTO:
        if (take(r, 1, &b))
            return -1;
        if (*b > 5)
            FAILF(r, "pickle protocol %d is not supported", *b);
        return 0;
    case OP_FRAME: /* framing only groups reads; the data is already in memory */
        return take(r, 8, &b);
    case OP_MARK:
        return op_mark(r);
    case OP_NONE:
        return push(r, new_value(r, NN_PK_NONE));
    case OP_NEWTRUE:
    case OP_NEWFALSE:
        if ((v = new_value(r, NN_PK_BOOL)))
            v->u.i = op == OP_NEWTRUE;
        return push(r, v);
    case OP_BININT1:
    case OP_BININT2:
    case OP_BININT: {
        int n = op == OP_BININT1 ? 1 : op == OP_BININT2 ? 2 : 4;
        if (take(r, (size_t)n, &b))
            return -1;
        if ((v = new_value(r, NN_PK_INT)))
            v->u.i = n == 4 ? (int64_t)(int32_t)le(b, 4) : (int64_t)le(b, n);
        return push(r, v);
    }
    case OP_LONG1: {
        const uint8_t *d = NULL;
        if (take(r, 1, &b) || take(r, *b, &d))
            return -1;
        if (*b > 8)
            return push(r, new_str(r, NN_PK_BIGINT, d, *b));
        if ((v = new_value(r, NN_PK_INT))) {
            uint64_t u = le(d, *b);
            if (*b && *b < 8 && (d[*b - 1] & 0x80)) /* sign-extend two's complement */
                u |= ~UINT64_C(0) << (8 * *b);
            v->u.i = (int64_t)u;
        }
        return push(r, v);
    }
    case OP_BINFLOAT: {
        if (take(r, 8, &b))
            return -1;
        uint64_t u = 0;
        for (int i = 0; i < 8; i++) /* big-endian, unlike everything else */
            u = u << 8 | b[i];
        if ((v = new_value(r, NN_PK_FLOAT)))
            memcpy(&v->u.f, &u, sizeof u);
        return push(r, v);
    }
    case OP_SHORT_BINUNICODE:
    case OP_SHORT_BINSTRING:
    case OP_SHORT_BINBYTES:
        return push_str(r, 1, 0);
    case OP_BINUNICODE:
    case OP_BINBYTES:
        return push_str(r, 4, 0);
    case OP_BINSTRING:
        return push_str(r, 4, 1);
    case OP_EMPTY_TUPLE:
        return push(r, new_value(r, NN_PK_TUPLE));
    case OP_EMPTY_LIST:
        return push(r, new_value(r, NN_PK_LIST));
    case OP_EMPTY_DICT:
        return push(r, new_value(r, NN_PK_DICT));
    case OP_TUPLE: {
        nn_pk_value **items;
        size_t n;
        if (pop_mark(r, &items, &n))
            return -1;
        return push(r, new_seq(r, NN_PK_TUPLE, items, n));
    }
    case OP_TUPLE1:
    case OP_TUPLE2:
    case OP_TUPLE3:
        return op_tuple_n(r, (size_t)(op - OP_TUPLE1 + 1));
    case OP_APPEND:
    case OP_APPENDS:
        return op_appends(r, op == OP_APPEND);
    case OP_SETITEM:
    case OP_SETITEMS:
        return op_setitems(r, op == OP_SETITEM);
    case OP_BUILD: /* state for the object below: OrderedDict's _metadata, which we do not need */
        return pop(r, &v) || top(r, &v) ? -1 : 0;
    case OP_GLOBAL:
        return op_global(r);
    case OP_STACK_GLOBAL:
        return op_stack_global(r);
    case OP_REDUCE:
        return op_reduce(r);
    case OP_BINPERSID:
        return op_binpersid(r);
    case OP_BINPUT:
    case OP_LONG_BINPUT:
        if (take(r, op == OP_BINPUT ? 1 : 4, &b))
            return -1;
        return memo_put(r, le(b, op == OP_BINPUT ? 1 : 4), memo_len);
    case OP_MEMOIZE:
        return memo_put(r, *memo_len, memo_len);
    case OP_BINGET:
    case OP_LONG_BINGET:
        if (take(r, op == OP_BINGET ? 1 : 4, &b))
            return -1;
        return memo_get(r, le(b, op == OP_BINGET ? 1 : 4));
    }
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        if (refused[i].op == op)
            FAILF(r, "unsupported pickle opcode %s (0x%02x): not something torch.save writes for tensors",
                  refused[i].name, op);
    FAILF(r, "unknown pickle opcode 0x%02x", op);
}

int nn_pk_load(nn_pk_vm *vm, const uint8_t *buf, size_t len, size_t base, size_t *used, nn_pk_value **out,
               nn_err *e)
{
    run r = {.vm = vm, .p = buf, .len = len, .base = base, .e = e};
    size_t memo_len = 0;
    vm->sp = vm->nmarks = 0;
    if (vm->memo)
        memset(vm->memo, 0, vm->memo_cap * sizeof *vm->memo);
    for (;;) {
        r.op_pos = r.pos;
        if (r.pos >= r.len)
            return fail(&r, "truncated (the file ends before the pickle's STOP)");
        int op = r.p[r.pos++];
        if (op == OP_STOP) {
            if (pop(&r, out))
                return -1;
            *used = r.pos;
            return 0;
        }
        if (step(&r, op, &memo_len))
            return -1;
    }
}

const nn_pk_value *nn_pk_dict_get(const nn_pk_value *dict, const char *key)
{
    if (dict->kind != NN_PK_DICT)
        return NULL;
    size_t n = strlen(key);
    /* The last match wins, as in Python when a key is set twice. */
    for (size_t i = dict->u.seq.len; i >= 2; i -= 2) {
        const nn_pk_value *k = dict->u.seq.v[i - 2];
        if (k->kind == NN_PK_STR && k->u.str.len == n && !memcmp(k->u.str.s, key, n))
            return dict->u.seq.v[i - 1];
    }
    return NULL;
}
