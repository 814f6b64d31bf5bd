/* pgn/image.h: PNG round trip (exact at multiples of 1/255, clamping, NaN), PNG variants written
 * here with libpng (grey 1/8/16-bit, grey+alpha, palette with tRNS, RGBA, 16-bit RGB, interlaced),
 * JPEGs written here with libjpeg (RGB, greyscale, CMYK -> refused), the evaluation transform, and
 * broken inputs (truncated PNG/JPEG, garbage, garbage after a valid signature, empty, missing,
 * directory): each an error naming the file, never a crash. Saving is atomic (no temporary left,
 * an existing file replaced, a missing directory an error naming the path). */
#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jpeglib.h>
#include <png.h>

#include "pgn/image.h"

static char dir[64];
static char err[1024];

static const char *path_of(const char *name)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    if ((size_t)snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name) >= sizeof buf[k])
        fail();
    return buf[k];
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/pgnd_test_image_XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)))
            if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
                unlink(path_of(de->d_name));
        closedir(d);
    }
    rmdir(path_of("subdir"));
    return rmdir(dir);
}

static void write_bytes(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

static uint8_t *read_bytes(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*len + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, *len, f), *len);
    fclose(f);
    return b;
}

static void expect_load_error(const char *path, const char *needle)
{
    float *img = (float *)1;
    int h = -1, w = -1;
    err[0] = 0;
    if (!pgn_image_load(path, &img, &h, &w, err, sizeof err)) {
        print_error("%s loaded (%dx%d), expected an error containing '%s'\n", path, h, w, needle);
        fail();
    }
    assert_null(img);
    if (!strstr(err, path) || !strstr(err, needle)) {
        print_error("error '%s' should name %s and contain '%s'\n", err, path, needle);
        fail();
    }
    print_message("  %s\n", err);
}

static float *load_ok(const char *path, int want_h, int want_w)
{
    float *img;
    int h, w;
    if (pgn_image_load(path, &img, &h, &w, err, sizeof err)) {
        print_error("%s\n", err);
        fail();
    }
    assert_int_equal(h, want_h);
    assert_int_equal(w, want_w);
    return img;
}

/* ------------------------------------------------------------------ PNG */

static void png_round_trip(void **state)
{
    (void)state;
    enum { H = 13, W = 17, COUNT = 3 * H * W };
    float img[COUNT];
    for (int i = 0; i < COUNT; i++)
        img[i] = (float)((i * 7 + 3) % 256) / 255.0f;
    const char *p = path_of("rt.png");
    if (pgn_image_save_png(p, img, H, W, err, sizeof err)) {
        print_error("%s\n", err);
        fail();
    }
    float *back = load_ok(p, H, W);
    for (int i = 0; i < COUNT; i++)
        assert_true(back[i] == img[i]);
    free(back);

    /* Clamping, rounding and NaN; saving over an existing file replaces it. */
    float odd[3 * 1 * 4] = {-0.5f, 1.7f, NAN, 0.5f, 0.1f, 0.2f, 0.3f, 0.4f, 1.0f, 0.0f, 0.998f, 0.002f};
    if (pgn_image_save_png(p, odd, 1, 4, err, sizeof err)) {
        print_error("%s\n", err);
        fail();
    }
    back = load_ok(p, 1, 4);
    const float want[12] = {0, 1, 0, 128 / 255.0f, 26 / 255.0f, 51 / 255.0f, 77 / 255.0f, 102 / 255.0f,
                            1, 0, 254 / 255.0f, 1 / 255.0f};
    for (int i = 0; i < 12; i++)
        if (back[i] != want[i]) {
            print_error("element %d: %g, want %g\n", i, back[i] * 255.0, want[i] * 255.0);
            fail();
        }
    free(back);
}

static void save_errors(void **state)
{
    (void)state;
    float img[3 * 2 * 2] = {0};
    const char *p = path_of("no_such_dir/out.png");
    assert_int_equal(pgn_image_save_png(p, img, 2, 2, err, sizeof err), -1);
    assert_non_null(strstr(err, p));
    print_message("  %s\n", err);
    assert_int_equal(pgn_image_save_png(path_of("zero.png"), img, 0, 2, err, sizeof err), -1);
    assert_non_null(strstr(err, "zero.png"));
    /* No temporary file is left in the directory after any of this. */
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)))
        assert_null(strstr(de->d_name, ".tmp."));
    closedir(d);
}

typedef struct png_spec {
    const char *name;
    int color, depth, interlace;
} png_spec;

/* Writes a w x h PNG whose pixel (x, y) has sample s of channel k = value(x, y, k) (raw units). */
static unsigned value(int x, int y, int k, int depth)
{
    unsigned max = (1u << depth) - 1;
    return (unsigned)(x * 37 + y * 101 + k * 53) % (max + 1);
}

static void write_png(const char *path, const png_spec *s, int w, int h)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    assert_true(png && info);
    if (setjmp(png_jmpbuf(png)))
        fail();
    png_init_io(png, f);
    png_set_IHDR(png, info, w, h, s->depth, s->color, s->interlace, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (s->color == PNG_COLOR_TYPE_PALETTE) {
        png_color pal[16];
        png_byte trans[16];
        for (int i = 0; i < 16; i++) {
            pal[i] = (png_color){(png_byte)(i * 16), (png_byte)(255 - i * 16), (png_byte)(i * 7)};
            trans[i] = (png_byte)(i * 17);
        }
        png_set_PLTE(png, info, pal, 16);
        png_set_tRNS(png, info, trans, 16, NULL);
    }
    png_write_info(png, info);
    const int ch = s->color == PNG_COLOR_TYPE_GRAY || s->color == PNG_COLOR_TYPE_PALETTE ? 1
                   : s->color == PNG_COLOR_TYPE_GRAY_ALPHA                              ? 2
                   : s->color == PNG_COLOR_TYPE_RGB                                     ? 3
                                                                                        : 4;
    const size_t rowbytes = ((size_t)w * ch * s->depth + 7) / 8;
    png_bytep *rows = malloc(sizeof *rows * h);
    assert_non_null(rows);
    for (int y = 0; y < h; y++) {
        rows[y] = calloc(1, rowbytes);
        for (int x = 0; x < w; x++)
            for (int k = 0; k < ch; k++) {
                unsigned v = value(x, y, k, s->color == PNG_COLOR_TYPE_PALETTE ? 4 : s->depth);
                if (s->depth == 16) {
                    rows[y][(x * ch + k) * 2] = (png_byte)(v >> 8);
                    rows[y][(x * ch + k) * 2 + 1] = (png_byte)v;
                } else if (s->depth == 8)
                    rows[y][x * ch + k] = (png_byte)v;
                else { /* 1, 2, 4 bits, single channel, MSB first */
                    const int per = 8 / s->depth, at = x / per, shift = 8 - s->depth * (x % per + 1);
                    rows[y][at] |= (png_byte)(v << shift);
                }
            }
    }
    png_write_image(png, rows);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    for (int y = 0; y < h; y++)
        free(rows[y]);
    free(rows);
    fclose(f);
}

static void png_variants(void **state)
{
    (void)state;
    const png_spec specs[] = {
        {"grey8.png", PNG_COLOR_TYPE_GRAY, 8, PNG_INTERLACE_NONE},
        {"grey1.png", PNG_COLOR_TYPE_GRAY, 1, PNG_INTERLACE_NONE},
        {"grey16.png", PNG_COLOR_TYPE_GRAY, 16, PNG_INTERLACE_NONE},
        {"greya8.png", PNG_COLOR_TYPE_GRAY_ALPHA, 8, PNG_INTERLACE_NONE},
        {"pal4.png", PNG_COLOR_TYPE_PALETTE, 4, PNG_INTERLACE_NONE},
        {"rgba8.png", PNG_COLOR_TYPE_RGB_ALPHA, 8, PNG_INTERLACE_NONE},
        {"rgb16.png", PNG_COLOR_TYPE_RGB, 16, PNG_INTERLACE_NONE},
        {"rgb8_adam7.png", PNG_COLOR_TYPE_RGB, 8, PNG_INTERLACE_ADAM7},
    };
    const int W = 11, H = 7;
    for (size_t s = 0; s < sizeof specs / sizeof *specs; s++) {
        const png_spec *sp = &specs[s];
        const char *p = path_of(sp->name);
        write_png(p, sp, W, H);
        float *img = load_ok(p, H, W);
        double worst = 0;
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                for (int k = 0; k < 3; k++) {
                    double want;
                    if (sp->color == PNG_COLOR_TYPE_PALETTE) {
                        const unsigned i = value(x, y, 0, 4);
                        const unsigned rgb[3] = {i * 16, 255 - i * 16, i * 7};
                        want = rgb[k] / 255.0;
                    } else {
                        const int grey = sp->color == PNG_COLOR_TYPE_GRAY || sp->color == PNG_COLOR_TYPE_GRAY_ALPHA;
                        want = value(x, y, grey ? 0 : k, sp->depth) / (double)((1u << sp->depth) - 1);
                    }
                    worst = fmax(worst, fabs(img[(k * H + y) * W + x] - want));
                }
        if (!(worst < 1e-6)) {
            print_error("%s: max error %g\n", sp->name, worst);
            fail();
        }
        free(img);
    }
}

static void png_broken(void **state)
{
    (void)state;
    enum { H = 40, W = 50 };
    float *img = malloc(3 * H * W * sizeof *img);
    assert_non_null(img);
    for (int i = 0; i < 3 * H * W; i++)
        img[i] = (float)((i * 7919) % 1000) / 999.0f; /* poorly compressible */
    const char *good = path_of("good.png");
    if (pgn_image_save_png(good, img, H, W, err, sizeof err))
        fail();
    free(img);
    size_t len;
    uint8_t *bytes = read_bytes(good, &len);

    write_bytes(path_of("trunc_half.png"), bytes, len / 2);
    expect_load_error(path_of("trunc_half.png"), "truncated");
    write_bytes(path_of("trunc_end.png"), bytes, len - 6); /* inside the IEND chunk */
    expect_load_error(path_of("trunc_end.png"), "PNG");
    write_bytes(path_of("trunc_header.png"), bytes, 20); /* inside IHDR */
    expect_load_error(path_of("trunc_header.png"), "PNG");
    write_bytes(path_of("sig_only.png"), bytes, 8);
    expect_load_error(path_of("sig_only.png"), "PNG");
    /* Flip bytes in the middle of the image data: a CRC / zlib error. */
    for (size_t i = len / 2; i < len / 2 + 16; i++)
        bytes[i] ^= 0x5a;
    write_bytes(path_of("corrupt.png"), bytes, len);
    expect_load_error(path_of("corrupt.png"), "corrupt or truncated PNG");
    /* A valid signature followed by garbage. */
    uint8_t junk[200];
    memcpy(junk, bytes, 8);
    for (size_t i = 8; i < sizeof junk; i++)
        junk[i] = (uint8_t)(i * 131 + 7);
    write_bytes(path_of("sig_garbage.png"), junk, sizeof junk);
    expect_load_error(path_of("sig_garbage.png"), "PNG");
    free(bytes);
}

/* ------------------------------------------------------------------ JPEG */

/* Writes a w x h JPEG with `comps` components of colour space cs (RGB, grey or CMYK). */
static void write_jpeg(const char *path, int w, int h, int comps, J_COLOR_SPACE cs, int quality)
{
    struct jpeg_compress_struct cinfo;
    struct jpeg_error_mgr jerr;
    cinfo.err = jpeg_std_error(&jerr);
    jpeg_create_compress(&cinfo);
    unsigned char *mem = NULL;
    unsigned long memlen = 0;
    jpeg_mem_dest(&cinfo, &mem, &memlen);
    cinfo.image_width = (JDIMENSION)w;
    cinfo.image_height = (JDIMENSION)h;
    cinfo.input_components = comps;
    cinfo.in_color_space = cs;
    jpeg_set_defaults(&cinfo);
    jpeg_set_quality(&cinfo, quality, TRUE);
    jpeg_start_compress(&cinfo, TRUE);
    unsigned char *row = malloc((size_t)w * comps);
    assert_non_null(row);
    while (cinfo.next_scanline < cinfo.image_height) {
        const int y = (int)cinfo.next_scanline;
        for (int x = 0; x < w; x++)
            for (int k = 0; k < comps; k++) /* smooth gradients */
                row[x * comps + k] = (unsigned char)(k == 0 ? 255 * x / (w - 1) : k == 1 ? 255 * y / (h - 1)
                                                                                           : 128 + 60 * (k - 2));
        JSAMPROW r = row;
        jpeg_write_scanlines(&cinfo, &r, 1);
    }
    jpeg_finish_compress(&cinfo);
    jpeg_destroy_compress(&cinfo);
    write_bytes(path, mem, memlen);
    free(mem);
    free(row);
}

static void jpeg_loading(void **state)
{
    (void)state;
    enum { W = 48, H = 32 };
    const char *p = path_of("rgb.jpg");
    write_jpeg(p, W, H, 3, JCS_RGB, 95);
    float *img = load_ok(p, H, W);
    double mean_err = 0, max_err = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int k = 0; k < 3; k++) {
                const double want = (k == 0 ? 255 * x / (W - 1) : k == 1 ? 255 * y / (H - 1) : 128) / 255.0;
                const double d = fabs(img[(k * H + y) * W + x] - want);
                mean_err += d;
                max_err = fmax(max_err, d);
            }
    mean_err /= 3.0 * W * H;
    print_message("RGB JPEG q95: mean error %.4f, max %.4f\n", mean_err, max_err);
    assert_true(mean_err < 0.01 && max_err < 0.1);
    free(img);

    /* Greyscale: replicated into R, G, B. */
    p = path_of("grey.jpg");
    write_jpeg(p, W, H, 1, JCS_GRAYSCALE, 90);
    img = load_ok(p, H, W);
    for (int i = 0; i < H * W; i++) {
        assert_true(img[i] == img[H * W + i] && img[i] == img[2 * H * W + i]);
        assert_true(fabs(img[i] - (255 * (i % W) / (W - 1)) / 255.0) < 0.05);
    }
    free(img);

    /* A file named .png that holds a JPEG: told by its bytes. */
    size_t len;
    uint8_t *bytes = read_bytes(path_of("rgb.jpg"), &len);
    write_bytes(path_of("really_a_jpeg.png"), bytes, len);
    free(load_ok(path_of("really_a_jpeg.png"), H, W));

    /* CMYK: refused. */
    p = path_of("cmyk.jpg");
    write_jpeg(p, W, H, 4, JCS_CMYK, 90);
    expect_load_error(p, "CMYK");

    /* Truncated and corrupt. */
    write_bytes(path_of("trunc.jpg"), bytes, len * 2 / 3);
    expect_load_error(path_of("trunc.jpg"), "truncated");
    write_bytes(path_of("trunc_header.jpg"), bytes, 40);
    expect_load_error(path_of("trunc_header.jpg"), "JPEG");
    uint8_t junk[300];
    junk[0] = 0xFF, junk[1] = 0xD8, junk[2] = 0xFF;
    for (size_t i = 3; i < sizeof junk; i++)
        junk[i] = (uint8_t)(i * 73 + 11);
    write_bytes(path_of("sig_garbage.jpg"), junk, sizeof junk);
    expect_load_error(path_of("sig_garbage.jpg"), "corrupt or truncated JPEG");
    free(bytes);
}

/* ------------------------------------------------------------------ other files */

static void not_images(void **state)
{
    (void)state;
    write_bytes(path_of("empty.png"), "", 0);
    expect_load_error(path_of("empty.png"), "empty file");
    write_bytes(path_of("text.png"), "hello, world\n", 13);
    expect_load_error(path_of("text.png"), "not a PNG or JPEG file (it starts with 68 65 6c 6c 6f 2c 20 77)");
    write_bytes(path_of("two.bin"), "\x89P", 2);
    expect_load_error(path_of("two.bin"), "not a PNG or JPEG");
    expect_load_error(path_of("missing.png"), "No such file");
    assert_int_equal(mkdir(path_of("subdir"), 0700), 0);
    expect_load_error(path_of("subdir"), "not a regular file");
}

static void evaluation_transform(void **state)
{
    (void)state;
    enum { H = 30, W = 45 };
    float img[3 * H * W];
    for (int i = 0; i < 3 * H * W; i++)
        img[i] = (float)(i % 251) / 255.0f;
    const char *p = path_of("eval.png");
    if (pgn_image_save_png(p, img, H, W, err, sizeof err))
        fail();
    float *full = load_ok(p, H, W);
    /* Resize(20): 20x30, then CenterCrop(16): top round(2) = 2, left round(7) = 7. */
    float rs[3 * 20 * 30], want[3 * 16 * 16];
    pgn_image_resize(full, 3, H, W, rs, 20, 30);
    pgn_image_center_crop(rs, 3, 20, 30, want, 16, 16);
    float *got;
    if (pgn_image_load_eval(p, 20, 16, &got, err, sizeof err)) {
        print_error("%s\n", err);
        fail();
    }
    assert_memory_equal(got, want, sizeof want);
    free(got);
    /* The square helper: size 16 -> Resize(round(16 * 256 / 224) = 18) + CenterCrop(16). */
    float rs2[3 * 18 * 27];
    pgn_image_resize(full, 3, H, W, rs2, 18, 27);
    pgn_image_center_crop(rs2, 3, 18, 27, want, 16, 16);
    if (pgn_image_load_square(p, 16, &got, err, sizeof err)) {
        print_error("%s\n", err);
        fail();
    }
    assert_memory_equal(got, want, sizeof want);
    free(got);
    free(full);
    assert_int_equal(pgn_image_load_eval(p, 10, 16, &got, err, sizeof err), -1);
    assert_null(got);
    assert_int_equal(pgn_image_load_square(path_of("missing.png"), 16, &got, err, sizeof err), -1);
    assert_non_null(strstr(err, "missing.png"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(png_round_trip),  cmocka_unit_test(save_errors),  cmocka_unit_test(png_variants),
        cmocka_unit_test(png_broken),      cmocka_unit_test(jpeg_loading), cmocka_unit_test(not_images),
        cmocka_unit_test(evaluation_transform),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
