/* A small pickle virtual machine for the subset torch.save writes (protocols 2 to 4).
 * It builds a tree of plain values (ints, floats, strings, tuples, lists, dicts) plus the storages
 * and tensors torch's rebuild functions describe. It never runs code: a GLOBAL outside a short
 * allow-list, or any opcode it does not know, is an error. Every read is bounds-checked. */
#ifndef NN_PICKLE_H
#define NN_PICKLE_H

#include <stddef.h>
#include <stdint.h>

#include "nn/err.h"
#include "nn/weights.h"

typedef enum nn_pk_kind {
    NN_PK_NONE,
    NN_PK_BOOL,
    NN_PK_INT,
    NN_PK_BIGINT, /* LONG1 wider than 64 bits (the legacy magic number) */
    NN_PK_FLOAT,
    NN_PK_STR,    /* unicode or bytes (Python 2 pickles write keys as bytes) */
    NN_PK_TUPLE,
    NN_PK_LIST,
    NN_PK_DICT,   /* dict or OrderedDict; keys and values in insertion order */
    NN_PK_GLOBAL, /* an allowed callable or class */
    NN_PK_STORAGE,
    NN_PK_TENSOR,
    NN_PK_OBJECT  /* an allowed object we never look inside (torch.device) */
} nn_pk_kind;

typedef enum nn_pk_global {
    NN_PK_ORDERED_DICT,
    NN_PK_REBUILD_TENSOR,    /* torch._utils._rebuild_tensor(storage, offset, size, stride) */
    NN_PK_REBUILD_TENSOR_V2, /* ... plus requires_grad, backward_hooks[, metadata] */
    NN_PK_REBUILD_PARAMETER, /* _rebuild_parameter(data, ...) and _rebuild_parameter_with_state */
    NN_PK_DEVICE,
    NN_PK_STORAGE_CLASS      /* torch.FloatStorage etc.; dtype says which */
} nn_pk_global;

typedef struct nn_pk_value nn_pk_value;

/* A persistent id ('storage', class, key, location, numel[, view_metadata]). */
typedef struct nn_pk_storage {
    nn_dtype dtype;
    const char *key;     /* zip: entry name under data/; legacy: root key */
    int64_t numel;       /* elements of the root storage */
    int64_t view_offset; /* legacy storage view: elements [view_offset, view_offset + view_numel) */
    int64_t view_numel;  /* -1: no view, the whole root storage */
} nn_pk_storage;

typedef struct nn_pk_tensor {
    const nn_pk_value *storage; /* an NN_PK_STORAGE value */
    int64_t offset;
    int ndim;
    int64_t size[NN_MAX_DIMS];
    int64_t stride[NN_MAX_DIMS];
} nn_pk_tensor;

struct nn_pk_value {
    nn_pk_kind kind;
    union {
        int64_t i;                              /* BOOL, INT */
        double f;                               /* FLOAT */
        struct { char *s; size_t len; } str;    /* STR (NUL-terminated), BIGINT (little-endian bytes) */
        struct { nn_pk_value **v; size_t len, cap; } seq; /* TUPLE, LIST; DICT: v[2k] key, v[2k+1] value */
        struct { nn_pk_global fn; nn_dtype dtype; } global;
        nn_pk_storage storage;
        nn_pk_tensor tensor;
    } u;
};

typedef struct nn_pk_block nn_pk_block;

/* One VM can load several pickles in a row (the legacy layout has five); the values of all of
 * them live until nn_pk_free. */
typedef struct nn_pk_vm {
    nn_pk_block *arena;
    size_t bytes; /* arena and arrays together, held under a fixed budget */
    nn_pk_value **stack;
    size_t sp, stack_cap;
    size_t *marks;
    size_t nmarks, marks_cap;
    nn_pk_value **memo;
    size_t memo_cap;
    nn_pk_value **storages; /* every storage a persistent id created, in order */
    size_t nstorages, storages_cap;
} nn_pk_vm;

void nn_pk_init(nn_pk_vm *vm);
void nn_pk_free(nn_pk_vm *vm);

/* Runs one pickle from buf[0..len) up to its STOP. *used gets the bytes consumed; base is the
 * pickle's offset in the file, for messages ("pickle at byte N: ..."). */
int nn_pk_load(nn_pk_vm *vm, const uint8_t *buf, size_t len, size_t base, size_t *used, nn_pk_value **out,
               nn_err *e);

/* The value stored under string key `key` in a DICT, or NULL. */
const nn_pk_value *nn_pk_dict_get(const nn_pk_value *dict, const char *key);

/* "int", "dict", ... for messages. */
const char *nn_pk_kind_name(nn_pk_kind k);

#endif
