/* Image-folder dataset: see data.h. */
#include "pgn/data.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "pgn/image.h"
#include "pgn/teacher.h"

static int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* ---- listing ---- */

typedef struct dir_id {
    dev_t dev;
    ino_t ino;
} dir_id;

typedef struct lister {
    char **files;
    int n, cap;
    dir_id *seen;
    int n_seen, cap_seen;
    int oom;
} lister;

static int is_image_name(const char *name)
{
    const char *dot = strrchr(name, '.');
    if (!dot || dot == name)
        return 0;
    return !strcasecmp(dot, ".png") || !strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg");
}

static int add_file(lister *L, const char *path)
{
    if (L->n == L->cap) {
        int cap = L->cap ? 2 * L->cap : 64;
        char **f = realloc(L->files, (size_t)cap * sizeof *f);
        if (!f)
            return -1;
        L->files = f;
        L->cap = cap;
    }
    if (!(L->files[L->n] = strdup(path)))
        return -1;
    L->n++;
    return 0;
}

/* 1 if the directory was seen before (a loop or a second link to it), else records it. */
static int seen_dir(lister *L, const struct stat *st)
{
    for (int i = 0; i < L->n_seen; i++)
        if (L->seen[i].dev == st->st_dev && L->seen[i].ino == st->st_ino)
            return 1;
    if (L->n_seen == L->cap_seen) {
        int cap = L->cap_seen ? 2 * L->cap_seen : 16;
        dir_id *s = realloc(L->seen, (size_t)cap * sizeof *s);
        if (!s) {
            L->oom = 1;
            return 1;
        }
        L->seen = s;
        L->cap_seen = cap;
    }
    L->seen[L->n_seen++] = (dir_id){st->st_dev, st->st_ino};
    return 0;
}

/* Unreadable subdirectories and dangling links are ignored; only the top folder must open. */
static void walk(lister *L, const char *dir, int depth)
{
    if (depth > PGN_DATA_MAX_DEPTH || L->oom)
        return;
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    size_t dl = strlen(dir);
    while ((de = readdir(d)) && !L->oom) {
        if (de->d_name[0] == '.' && (!de->d_name[1] || (de->d_name[1] == '.' && !de->d_name[2])))
            continue;
        size_t len = dl + 1 + strlen(de->d_name) + 1;
        char *p = malloc(len);
        if (!p) {
            L->oom = 1;
            break;
        }
        snprintf(p, len, "%s%s%s", dir, dl && dir[dl - 1] == '/' ? "" : "/", de->d_name);
        struct stat st;
        if (stat(p, &st) == 0) {
            if (S_ISDIR(st.st_mode)) {
                if (!seen_dir(L, &st))
                    walk(L, p, depth + 1);
            } else if (S_ISREG(st.st_mode) && is_image_name(de->d_name)) {
                if (add_file(L, p))
                    L->oom = 1;
            }
        }
        free(p);
    }
    closedir(d);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

void pgn_data_close(pgn_data *d)
{
    if (!d)
        return;
    for (int i = 0; i < d->n_files; i++)
        free(d->files[i]);
    free(d->files);
    free(d->train);
    free(d->val);
    free(d->bad);
    pgn_image_cache_free(&d->cache);
    memset(d, 0, sizeof *d);
}

const char *pgn_data_cache_describe(const pgn_data *d, char *buf, size_t len)
{
    const pgn_image_cache *c = &d->cache;
    int held = 0;
    for (int i = 0; i < c->n; i++)
        held += c->e[i].data != NULL;
    snprintf(buf, len, "image cache: %d images (%.1f MiB of %.0f), %ld reads, %ld decoded, %ld evicted", held,
             c->bytes / 1048576.0, c->budget / 1048576.0, c->hits + c->misses, c->misses, c->evictions);
    return buf;
}

int pgn_data_set_cache_mb(pgn_data *d, double mb)
{
    if (!(mb >= 0))
        return -1;
    pgn_image_cache_free(&d->cache);
    return pgn_image_cache_init(&d->cache, d->n_files, (size_t)(mb * 1024 * 1024));
}

int pgn_data_open(pgn_data *d, const char *folder, double val_fraction, uint64_t seed, char *err, size_t errlen)
{
    memset(d, 0, sizeof *d);
    if (!folder || !*folder)
        return fail(err, errlen, "dataset: no folder given");
    if (!(val_fraction >= 0 && val_fraction < 1))
        return fail(err, errlen, "%s: validation fraction %g is not in [0, 1)", folder, val_fraction);
    struct stat st;
    if (stat(folder, &st) != 0)
        return fail(err, errlen, "%s: cannot open: %s", folder, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return fail(err, errlen, "%s: cannot open: %s", folder, strerror(ENOTDIR));
    DIR *probe = opendir(folder);
    if (!probe)
        return fail(err, errlen, "%s: cannot open: %s", folder, strerror(errno));
    closedir(probe);

    lister L = {0};
    seen_dir(&L, &st);
    walk(&L, folder, 0);
    free(L.seen);
    d->files = L.files;
    d->n_files = L.n;
    if (L.oom) {
        pgn_data_close(d);
        return fail(err, errlen, "%s: out of memory while listing", folder);
    }
    if (d->n_files == 0) {
        pgn_data_close(d);
        return fail(err, errlen, "%s: no PNG or JPEG images found", folder);
    }
    qsort(d->files, (size_t)d->n_files, sizeof *d->files, cmp_str);
    snprintf(d->folder, sizeof d->folder, "%s", folder);
    d->seed = seed;

    int n = d->n_files;
    int n_val = 0;
    if (val_fraction > 0 && n >= 2) {
        n_val = (int)floor(n * val_fraction + 0.5);
        if (n_val < 1)
            n_val = 1;
        if (n_val > n - 1)
            n_val = n - 1;
    }
    int *perm = malloc((size_t)n * sizeof *perm);
    d->train = malloc((size_t)(n - n_val) * sizeof *d->train);
    d->val = malloc((size_t)(n_val ? n_val : 1) * sizeof *d->val);
    d->bad = calloc((size_t)n, 1);
    if (!perm || !d->train || !d->val || !d->bad ||
        pgn_image_cache_init(&d->cache, n, (size_t)PGN_DATA_CACHE_MB_DEFAULT * 1024 * 1024)) {
        free(perm);
        pgn_data_close(d);
        return fail(err, errlen, "%s: out of memory", folder);
    }
    /* The split's own RNG stream, so the sampler's stream does not depend on the split. */
    nn_rng sr;
    nn_rng_seed(&sr, seed ^ 0x9e3779b97f4a7c15ull);
    for (int i = 0; i < n; i++)
        perm[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)nn_rng_below(&sr, (uint32_t)i + 1);
        int t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    memcpy(d->val, perm, (size_t)n_val * sizeof *perm);
    memcpy(d->train, perm + n_val, (size_t)(n - n_val) * sizeof *perm);
    free(perm);
    d->n_val = n_val;
    d->n_train = n - n_val;
    qsort(d->val, (size_t)d->n_val, sizeof *d->val, cmp_int);
    qsort(d->train, (size_t)d->n_train, sizeof *d->train, cmp_int);
    nn_rng_seed(&d->rng, seed);
    return 0;
}

const char *pgn_data_val_path(const pgn_data *d, int i)
{
    return i >= 0 && i < d->n_val ? d->files[d->val[i]] : NULL;
}

const char *pgn_data_train_path(const pgn_data *d, int i)
{
    return i >= 0 && i < d->n_train ? d->files[d->train[i]] : NULL;
}

/* ---- transforms ---- */

/* Python's round() on a double: halves to even. */
static double py_round(double x)
{
    double r = floor(x + 0.5);
    if (r - x == 0.5 && fmod(r, 2.0) != 0)
        r -= 1.0;
    return r;
}

void pgn_data_rrc_params(nn_rng *rng, int h, int w, int *top, int *left, int *ch, int *cw)
{
    const double smin = 0.08, smax = 1.0, rmin = 3.0 / 4.0, rmax = 4.0 / 3.0;
    double area = (double)h * w;
    double lr0 = log(rmin), lr1 = log(rmax);
    for (int attempt = 0; attempt < 10; attempt++) {
        double target_area = area * (smin + (smax - smin) * (double)nn_rng_uniform(rng));
        double aspect = exp(lr0 + (lr1 - lr0) * (double)nn_rng_uniform(rng));
        int cw_ = (int)py_round(sqrt(target_area * aspect));
        int ch_ = (int)py_round(sqrt(target_area / aspect));
        if (cw_ > 0 && cw_ <= w && ch_ > 0 && ch_ <= h) {
            *top = (int)nn_rng_below(rng, (uint32_t)(h - ch_ + 1));
            *left = (int)nn_rng_below(rng, (uint32_t)(w - cw_ + 1));
            *ch = ch_;
            *cw = cw_;
            return;
        }
    }
    /* torchvision's fallback: a central crop at the nearest allowed aspect ratio */
    double in_ratio = (double)w / (double)h;
    int cw_, ch_;
    if (in_ratio < rmin) {
        cw_ = w;
        ch_ = (int)py_round(cw_ / rmin);
    } else if (in_ratio > rmax) {
        ch_ = h;
        cw_ = (int)py_round(ch_ * rmax);
    } else {
        cw_ = w;
        ch_ = h;
    }
    *top = (h - ch_) / 2;
    *left = (w - cw_) / 2;
    *ch = ch_;
    *cw = cw_;
}

/* One sample of a batch: its crop and flip, drawn; where it reads from; where it goes. */
typedef struct crop_job {
    const pgn_image_cache_entry *en; /* the cached image, or NULL: */
    float *img;                      /* the decoded one [3, h, w] (owned when the job is queued) */
    int h, w, top, left, ch, cw, flip;
    float *out;
} crop_job;

/* The draws of one crop, in torchvision's order (the crop, then the flip). */
static void crop_draw(nn_rng *rng, crop_job *j)
{
    pgn_data_rrc_params(rng, j->h, j->w, &j->top, &j->left, &j->ch, &j->cw);
    j->flip = nn_rng_uniform(rng) < 0.5f;
}

/* out [3, size, size] in [0, 1] (not normalised). Returns 0, -1 on out of memory. */
static int crop_run(const crop_job *j, int size)
{
    float *out = j->out;
    if (j->img) {
        float *tmp = malloc((size_t)3 * j->ch * j->cw * sizeof(float));
        if (!tmp)
            return -1;
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < j->ch; y++)
                memcpy(tmp + ((size_t)c * j->ch + y) * j->cw, j->img + ((size_t)c * j->h + j->top + y) * j->w + j->left,
                       (size_t)j->cw * sizeof(float));
        pgn_image_resize(tmp, 3, j->ch, j->cw, out, size, size);
        free(tmp);
    } else {
        pgn_image_cache_crop_resize(j->en, j->top, j->left, j->ch, j->cw, out, size, size);
    }
    if (j->flip)
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < size; y++) {
                float *r = out + ((size_t)c * size + y) * size;
                for (int a = 0, b = size - 1; a < b; a++, b--) {
                    float t = r[a];
                    r[a] = r[b];
                    r[b] = t;
                }
            }
    return 0;
}

/* Runs the queued crops, one per thread at a time (they only read the cache), and frees their
 * decoded images. Returns 0, -1 on out of memory. */
static int crops_flush(crop_job *jobs, int n, int size)
{
    int oom = 0;
#pragma omp parallel for schedule(static) reduction(| : oom) if (n > 1)
    for (int i = 0; i < n; i++)
        oom |= crop_run(&jobs[i], size) != 0;
    for (int i = 0; i < n; i++) {
        free(jobs[i].img);
        jobs[i].img = NULL;
    }
    return oom ? -1 : 0;
}

/* out [3, size, size] in [0, 1] (not normalised), from the decoded image img [3, h, w] or, when
 * img is NULL, from the cache entry en. Returns 0, -1 on out of memory (the RNG advanced). */
static int crop_resize_flip(nn_rng *rng, const float *img, const pgn_image_cache_entry *en, int h, int w,
                            float *out, int size)
{
    crop_job j = {en, (float *)img, h, w, 0, 0, 0, 0, 0, out};
    crop_draw(rng, &j);
    return crop_run(&j, size);
}

void pgn_data_random_resized_crop(nn_rng *rng, const float *img, int h, int w, float *out, int size)
{
    if (crop_resize_flip(rng, img, NULL, h, w, out, size)) /* this entry point is for tests */
        abort();
    pgn_to_normalised(out, out, 1, size, size, PGN_SPACE_UNIT);
}

/* Marks file f bad with message msg (counted once). */
static void mark_bad(pgn_data *d, int f, const char *msg)
{
    if (d->bad[f])
        return;
    d->bad[f] = 1;
    d->n_skipped++;
    snprintf(d->last_error, sizeof d->last_error, "%s", msg);
    if (!d->quiet)
        fprintf(stderr, "pgnd: warning: skipping image: %s\n", msg);
}

/* Decodes file f; a bad file is marked and 1 returned; -1 only for out of memory. */
static int load_checked(pgn_data *d, int f, float **img, int *h, int *w, char *err, size_t errlen)
{
    char msg[1024];
    if (pgn_image_load(d->files[f], img, h, w, msg, sizeof msg)) {
        if (strstr(msg, "out of memory")) {
            snprintf(err, errlen, "%s", msg);
            return -1;
        }
        mark_bad(d, f, msg);
        snprintf(err, errlen, "%s", msg);
        return 1;
    }
    if (*h < PGN_DATA_MIN_SIDE || *w < PGN_DATA_MIN_SIDE) {
        snprintf(msg, sizeof msg, "%s: image too small (%dx%d, need at least %dx%d)", d->files[f], *w, *h,
                 PGN_DATA_MIN_SIDE, PGN_DATA_MIN_SIDE);
        free(*img);
        *img = NULL;
        mark_bad(d, f, msg);
        snprintf(err, errlen, "%s", msg);
        return 1;
    }
    return 0;
}

int pgn_data_train_batch(pgn_data *d, float *out, int batch, int size, char *err, size_t errlen)
{
    if (!d || !d->files || d->n_train < 1)
        return fail(err, errlen, "dataset: not open or no training images");
    if (batch < 1 || size < 1)
        return fail(err, errlen, "%s: bad batch %d or size %d", d->folder, batch, size);
    size_t plane = (size_t)3 * size * size;
    char msg[1024] = "";
    /* The draws are made in order, sample after sample; the crops are queued and run on all
     * threads together, before any decode (a decode's cache put may evict an entry a queued crop
     * reads) and at the end. */
    crop_job *jobs = malloc((size_t)batch * sizeof *jobs);
    if (!jobs)
        return fail(err, errlen, "%s: out of memory", d->folder);
    int queued = 0, rc = 0;
    for (int b = 0; b < batch && !rc; b++) {
        int consecutive = 0;
        for (;;) {
            if (d->n_bad_train >= d->n_train) {
                rc = fail(err, errlen, "%s: every training image is unreadable (%ld skipped; last: %s)", d->folder,
                          d->n_skipped, d->last_error);
                break;
            }
            if (consecutive >= PGN_DATA_MAX_CONSECUTIVE_FAILURES) {
                rc = fail(err, errlen, "%s: %d images in a row failed to load (last: %s)", d->folder, consecutive,
                          d->last_error);
                break;
            }
            int f = d->train[nn_rng_below(&d->rng, (uint32_t)d->n_train)];
            if (d->bad[f])
                continue; /* known bad: draw again without decoding */
            crop_job *j = &jobs[queued];
            *j = (crop_job){.out = out + (size_t)b * plane};
            if ((j->en = pgn_image_cache_get(&d->cache, f))) {
                j->h = j->en->h, j->w = j->en->w;
            } else {
                if (crops_flush(jobs, queued, size)) {
                    queued = 0;
                    rc = fail(err, errlen, "%s: out of memory", d->folder);
                    break;
                }
                queued = 0;
                j = &jobs[0];
                *j = (crop_job){.out = out + (size_t)b * plane};
                int lr = load_checked(d, f, &j->img, &j->h, &j->w, msg, sizeof msg);
                if (lr < 0) {
                    rc = fail(err, errlen, "%s", msg);
                    break;
                }
                if (lr > 0) {
                    d->n_bad_train++;
                    consecutive++;
                    continue;
                }
                pgn_image_cache_put(&d->cache, f, j->img, j->h, j->w);
            }
            crop_draw(&d->rng, j);
            queued++;
            break;
        }
    }
    if (crops_flush(jobs, queued, size) && !rc)
        rc = fail(err, errlen, "%s: out of memory", d->folder);
    free(jobs);
    if (rc)
        return rc;
    pgn_to_normalised(out, out, batch, size, size, PGN_SPACE_UNIT);
    return 0;
}

int pgn_data_val_image(pgn_data *d, int i, int size, float *out, char *err, size_t errlen)
{
    if (!d || !d->files || i < 0 || i >= d->n_val)
        return fail(err, errlen, "dataset: no validation image %d", i);
    if (size < 1)
        return fail(err, errlen, "%s: bad image size %d", d->folder, size);
    int f = d->val[i];
    if (d->bad[f]) {
        snprintf(err, errlen, "%s: skipped (unreadable)", d->files[f]);
        return 1;
    }
    float *img;
    int h, w;
    const pgn_image_cache_entry *en = pgn_image_cache_get(&d->cache, f);
    if (en) {
        h = en->h, w = en->w;
        if (!(img = malloc((size_t)3 * h * w * sizeof(float))))
            return fail(err, errlen, "%s: out of memory", d->files[f]);
        pgn_image_cache_read(en, img);
    } else {
        int rc = load_checked(d, f, &img, &h, &w, err, errlen);
        if (rc)
            return rc;
        pgn_image_cache_put(&d->cache, f, img, h, w);
    }
    /* pgn_image_load_square's transform, on the already decoded image */
    int resize = (int)floor(size * 256.0 / 224.0 + 0.5);
    int oh, ow;
    pgn_image_shorter_side_size(h, w, resize, &oh, &ow);
    float *rs = oh == h && ow == w ? img : malloc((size_t)3 * oh * ow * sizeof(float));
    if (!rs) {
        free(img);
        return fail(err, errlen, "%s: out of memory", d->files[f]);
    }
    if (rs != img) {
        pgn_image_resize(img, 3, h, w, rs, oh, ow);
        free(img);
    }
    pgn_image_center_crop(rs, 3, oh, ow, out, size, size);
    free(rs);
    pgn_to_normalised(out, out, 1, size, size, PGN_SPACE_UNIT);
    return 0;
}
