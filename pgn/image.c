#include "pgn/image.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

#define MAX_FILE_BYTES ((size_t)1 << 30)

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

static int check_dims(const char *name, unsigned long w, unsigned long h, char *err, size_t errlen)
{
    if (w == 0 || h == 0)
        return fail(err, errlen, "%s: image has no pixels (%lux%lu)", name, w, h);
    if (w > (unsigned long)PGN_IMAGE_MAX_PIXELS || h > (unsigned long)PGN_IMAGE_MAX_PIXELS ||
        (double)w * (double)h > (double)PGN_IMAGE_MAX_PIXELS)
        return fail(err, errlen, "%s: image %lux%lu is larger than the %ld-pixel limit", name, w, h,
                    (long)PGN_IMAGE_MAX_PIXELS);
    return 0;
}

/* ------------------------------------------------------------------ PNG */

typedef struct png_src {
    const uint8_t *buf;
    size_t len, pos;
} png_src;

typedef struct png_errctx {
    jmp_buf jb;
    char msg[256];
} png_errctx;

static void png_read_mem(png_structp png, png_bytep out, size_t n)
{
    png_src *s = png_get_io_ptr(png);
    if (n > s->len - s->pos)
        png_error(png, "the file ends early (truncated)");
    memcpy(out, s->buf + s->pos, n);
    s->pos += n;
}

static void png_on_error(png_structp png, png_const_charp msg)
{
    png_errctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg);
    longjmp(c->jb, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg; /* e.g. "iCCP: known incorrect sRGB profile": harmless for pixel values */
}

static int decode_png(const uint8_t *data, size_t len, const char *name, float **out, int *oh, int *ow, char *err,
                      size_t errlen)
{
    png_errctx ec = {.msg = ""};
    png_src src = {data, len, 0};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &ec, png_on_error, png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_read_struct(png ? &png : NULL, NULL, NULL);
        return fail(err, errlen, "%s: out of memory for the PNG decoder", name);
    }
    /* Written between setjmp and longjmp, read after: volatile. */
    uint8_t *volatile pixels = NULL;
    png_bytep *volatile rows = NULL;
    float *volatile img = NULL;
    if (setjmp(ec.jb)) {
        png_destroy_read_struct(&png, &info, NULL);
        free(pixels);
        free(rows);
        free(img);
        return fail(err, errlen, "%s: corrupt or truncated PNG: %s", name, ec.msg);
    }
    png_set_read_fn(png, &src, png_read_mem);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    int color = png_get_color_type(png, info);
    if (check_dims(name, w, h, err, errlen)) {
        png_destroy_read_struct(&png, &info, NULL);
        return -1;
    }
    png_set_expand(png); /* palette -> RGB, grey < 8 bits -> 8 bits, tRNS -> alpha */
    if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA)
        png_set_gray_to_rgb(png);
    png_set_strip_alpha(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    const int depth = png_get_bit_depth(png, info), channels = png_get_channels(png, info);
    const size_t rowbytes = png_get_rowbytes(png, info);
    if (channels != 3 || (depth != 8 && depth != 16) || rowbytes != (size_t)w * 3 * (depth / 8)) {
        png_destroy_read_struct(&png, &info, NULL);
        return fail(err, errlen, "%s: unsupported PNG layout after conversion (%d channels, %d bits)", name, channels,
                    depth);
    }
    pixels = malloc(rowbytes * h);
    rows = malloc(h * sizeof *rows);
    img = malloc((size_t)3 * w * h * sizeof(float));
    if (!pixels || !rows || !img) {
        png_destroy_read_struct(&png, &info, NULL);
        free(pixels);
        free(rows);
        free(img);
        return fail(err, errlen, "%s: out of memory for a %ux%u image", name, (unsigned)w, (unsigned)h);
    }
    for (png_uint_32 y = 0; y < h; y++)
        rows[y] = pixels + (size_t)y * rowbytes;
    png_read_image(png, rows);
    png_read_end(png, NULL); /* checks the chunks after the image data (and that the file has them) */
    png_destroy_read_struct(&png, &info, NULL);
    const size_t plane = (size_t)w * h;
    for (size_t y = 0; y < h; y++)
        for (size_t x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) {
                const uint8_t *p = pixels + y * rowbytes + (x * 3 + (size_t)c) * (depth / 8);
                img[c * plane + y * w + x] = depth == 8 ? p[0] / 255.0f : (float)((p[0] << 8) | p[1]) / 65535.0f;
            }
    free(pixels);
    free(rows);
    *out = img;
    *oh = (int)h;
    *ow = (int)w;
    return 0;
}

/* ------------------------------------------------------------------ JPEG */

typedef struct jpeg_errctx {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX + 64];
} jpeg_errctx;

static void jpeg_on_error(j_common_ptr cinfo)
{
    jpeg_errctx *c = (jpeg_errctx *)cinfo->err;
    char buf[JMSG_LENGTH_MAX];
    cinfo->err->format_message(cinfo, buf);
    snprintf(c->msg, sizeof c->msg, "%s", buf);
    longjmp(c->jb, 1);
}

/* Warnings (level -1): running out of data is fatal (libjpeg would pad the image with grey);
 * the others are tolerated. Trace messages (level >= 0) are ignored. Nothing is printed. */
static void jpeg_on_message(j_common_ptr cinfo, int level)
{
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
        jpeg_errctx *c = (jpeg_errctx *)cinfo->err;
        snprintf(c->msg, sizeof c->msg, "the file ends early (truncated)");
        longjmp(c->jb, 1);
    }
}

static void jpeg_no_output(j_common_ptr cinfo) { (void)cinfo; }

static int decode_jpeg(const uint8_t *data, size_t len, const char *name, float **out, int *oh, int *ow, char *err,
                       size_t errlen)
{
    struct jpeg_decompress_struct cinfo;
    jpeg_errctx ec;
    memset(&cinfo, 0, sizeof cinfo);
    cinfo.err = jpeg_std_error(&ec.pub);
    ec.pub.error_exit = jpeg_on_error;
    ec.pub.emit_message = jpeg_on_message;
    ec.pub.output_message = jpeg_no_output;
    ec.msg[0] = 0;
    uint8_t *volatile row = NULL;
    float *volatile img = NULL;
    if (setjmp(ec.jb)) {
        jpeg_destroy_decompress(&cinfo);
        free(row);
        free(img);
        return fail(err, errlen, "%s: corrupt or truncated JPEG: %s", name, ec.msg);
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, (unsigned char *)data, (unsigned long)len);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        jpeg_destroy_decompress(&cinfo);
        return fail(err, errlen, "%s: CMYK JPEG images are not supported (convert it to RGB first)", name);
    }
    const int grey = cinfo.num_components == 1;
    cinfo.out_color_space = grey ? JCS_GRAYSCALE : JCS_RGB;
    if (check_dims(name, cinfo.image_width, cinfo.image_height, err, errlen)) {
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    jpeg_start_decompress(&cinfo);
    const size_t w = cinfo.output_width, h = cinfo.output_height, comps = (size_t)cinfo.output_components;
    if (comps != (grey ? 1u : 3u)) {
        jpeg_destroy_decompress(&cinfo);
        return fail(err, errlen, "%s: unsupported JPEG (%zu output components)", name, comps);
    }
    row = malloc(w * comps);
    img = malloc(3 * w * h * sizeof(float));
    if (!row || !img) {
        jpeg_destroy_decompress(&cinfo);
        free(row);
        free(img);
        return fail(err, errlen, "%s: out of memory for a %zux%zu image", name, w, h);
    }
    const size_t plane = w * h;
    while (cinfo.output_scanline < h) {
        const size_t y = cinfo.output_scanline;
        JSAMPROW r = row;
        if (jpeg_read_scanlines(&cinfo, &r, 1) != 1)
            continue; /* suspension cannot happen with a memory source; keep reading */
        for (size_t x = 0; x < w; x++)
            for (int c = 0; c < 3; c++)
                img[c * plane + y * w + x] = row[x * comps + (grey ? 0 : (size_t)c)] / 255.0f;
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    free(row);
    *out = img;
    *oh = (int)h;
    *ow = (int)w;
    return 0;
}

/* ------------------------------------------------------------------ loading */

int pgn_image_decode(const void *data, size_t len, const char *name, float **out, int *h, int *w, char *err,
                     size_t errlen)
{
    static const uint8_t png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    const uint8_t *d = data;
    *out = NULL;
    if (len == 0)
        return fail(err, errlen, "%s: empty file", name);
    if (len >= 8 && !memcmp(d, png_magic, 8))
        return decode_png(d, len, name, out, h, w, err, errlen);
    if (len >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF)
        return decode_jpeg(d, len, name, out, h, w, err, errlen);
    char hex[3 * 8 + 1] = "";
    for (size_t i = 0, at = 0; i < len && i < 8; i++)
        at += (size_t)snprintf(hex + at, sizeof hex - at, "%s%02x", i ? " " : "", d[i]);
    return fail(err, errlen, "%s: not a PNG or JPEG file (it starts with %s)", name, hex);
}

int pgn_image_load(const char *path, float **out, int *h, int *w, char *err, size_t errlen)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return fail(err, errlen, "%s: not a regular file", path);
    }
    if ((size_t)st.st_size > MAX_FILE_BYTES) {
        close(fd);
        return fail(err, errlen, "%s: file of %lld bytes is too large for an image", path, (long long)st.st_size);
    }
    size_t len = (size_t)st.st_size, got = 0;
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) {
        close(fd);
        return fail(err, errlen, "%s: out of memory reading %zu bytes", path, len);
    }
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int en = errno;
            close(fd);
            free(buf);
            return fail(err, errlen, "%s: read error: %s", path, strerror(en));
        }
        if (n == 0)
            break; /* shrank while reading: decode what is there */
        got += (size_t)n;
    }
    close(fd);
    int rc = pgn_image_decode(buf, got, path, out, h, w, err, errlen);
    free(buf);
    return rc;
}

/* ------------------------------------------------------------------ saving */

static uint8_t to_u8(float v)
{
    if (!(v > 0.0f)) /* also NaN */
        return 0;
    if (v >= 1.0f)
        return 255;
    return (uint8_t)(v * 255.0f + 0.5f);
}

typedef struct png_wctx {
    jmp_buf jb;
    char msg[256];
} png_wctx;

static void png_w_error(png_structp png, png_const_charp msg)
{
    png_wctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg);
    longjmp(c->jb, 1);
}

int pgn_image_save_png(const char *path, const float *chw, int h, int w, char *err, size_t errlen)
{
    if (h <= 0 || w <= 0 || (double)h * w > (double)PGN_IMAGE_MAX_PIXELS)
        return fail(err, errlen, "%s: cannot save a %dx%d image", path, h, w);
    /* A name no other writer uses: this process's id and a per-process sequence number (two
     * threads saving the same path must not share a temporary). */
    static unsigned seq;
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%ld.%u", path, (long)getpid(),
                         __atomic_fetch_add(&seq, 1, __ATOMIC_RELAXED)) >= sizeof tmp)
        return fail(err, errlen, "%s: path too long", path);
    FILE *volatile f = fopen(tmp, "wb");
    if (!f)
        return fail(err, errlen, "%s: cannot create %s: %s", path, tmp, strerror(errno));
    uint8_t *volatile row = malloc((size_t)w * 3);
    png_wctx ec = {.msg = ""};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &ec, png_w_error, png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!row || !png || !info) {
        png_destroy_write_struct(png ? &png : NULL, NULL);
        free(row);
        fclose(f);
        unlink(tmp);
        return fail(err, errlen, "%s: out of memory", path);
    }
    if (setjmp(ec.jb)) {
        png_destroy_write_struct(&png, &info);
        free(row);
        fclose(f);
        unlink(tmp);
        return fail(err, errlen, "%s: PNG encoding failed: %s", path, ec.msg);
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    const size_t plane = (size_t)h * w;
    for (int y = 0; y < h; y++) {
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++)
                row[(size_t)x * 3 + c] = to_u8(chw[c * plane + (size_t)y * w + x]);
        png_write_row(png, row);
    }
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(row);
    int bad = fflush(f) != 0 || fsync(fileno(f)) != 0;
    int en = errno;
    if (fclose(f) != 0 && !bad)
        bad = 1, en = errno;
    if (bad) {
        unlink(tmp);
        return fail(err, errlen, "%s: write error: %s", path, strerror(en));
    }
    if (rename(tmp, path)) {
        en = errno;
        unlink(tmp);
        return fail(err, errlen, "%s: cannot rename %s into place: %s", path, tmp, strerror(en));
    }
    /* Make the rename durable (best effort: a directory that cannot be opened is not an error). */
    char dirbuf[4096];
    snprintf(dirbuf, sizeof dirbuf, "%s", path);
    char *slash = strrchr(dirbuf, '/');
    const char *dirname = slash ? (slash == dirbuf ? "/" : (*slash = 0, dirbuf)) : ".";
    int dfd = open(dirname, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

/* ------------------------------------------------------------------ resizing and cropping */

void pgn_image_resize(const float *src, int c, int h, int w, float *dst, int oh, int ow)
{
    const float sh = (float)h / (float)oh, sw = (float)w / (float)ow;
    for (int i = 0; i < oh; i++) {
        int y0, y1;
        float ly0, ly1;
        pgn_resize_coord(i, sh, h, &y0, &y1, &ly0, &ly1);
        for (int j = 0; j < ow; j++) {
            int x0, x1;
            float lx0, lx1;
            pgn_resize_coord(j, sw, w, &x0, &x1, &lx0, &lx1);
            for (int ch = 0; ch < c; ch++) {
                const float *p = src + (size_t)ch * h * w;
                dst[((size_t)ch * oh + i) * ow + j] = pgn_bilerp(p[(size_t)y0 * w + x0], p[(size_t)y0 * w + x1],
                                                                  p[(size_t)y1 * w + x0], p[(size_t)y1 * w + x1],
                                                                  lx0, lx1, ly0, ly1);
            }
        }
    }
}

void pgn_image_shorter_side_size(int h, int w, int size, int *oh, int *ow)
{
    if (w <= h) {
        *ow = size;
        *oh = (int)((double)size * h / w);
    } else {
        *oh = size;
        *ow = (int)((double)size * w / h);
    }
}

void pgn_image_center_crop(const float *src, int c, int h, int w, float *dst, int ch, int cw)
{
    const int top = (int)rint((h - ch) / 2.0), left = (int)rint((w - cw) / 2.0);
    for (int k = 0; k < c; k++)
        for (int i = 0; i < ch; i++)
            memcpy(dst + ((size_t)k * ch + i) * cw, src + ((size_t)k * h + top + i) * w + left,
                   (size_t)cw * sizeof(float));
}

int pgn_image_load_eval(const char *path, int resize, int crop, float **out, char *err, size_t errlen)
{
    *out = NULL;
    if (crop < 1 || resize < crop)
        return fail(err, errlen, "%s: bad evaluation transform (resize %d, crop %d)", path, resize, crop);
    float *img;
    int h, w;
    if (pgn_image_load(path, &img, &h, &w, err, errlen))
        return -1;
    int oh, ow;
    pgn_image_shorter_side_size(h, w, resize, &oh, &ow);
    float *rs = oh == h && ow == w ? img : malloc((size_t)3 * oh * ow * sizeof(float));
    float *res = malloc((size_t)3 * crop * crop * sizeof(float));
    if (!rs || !res) {
        if (rs != img)
            free(rs);
        free(img);
        free(res);
        return fail(err, errlen, "%s: out of memory", path);
    }
    if (rs != img) {
        pgn_image_resize(img, 3, h, w, rs, oh, ow);
        free(img);
    }
    pgn_image_center_crop(rs, 3, oh, ow, res, crop, crop);
    free(rs);
    *out = res;
    return 0;
}

int pgn_image_load_square(const char *path, int size, float **out, char *err, size_t errlen)
{
    if (size < 1)
        return fail(err, errlen, "%s: bad image size %d", path, size);
    return pgn_image_load_eval(path, (int)floor(size * 256.0 / 224.0 + 0.5), size, out, err, errlen);
}
