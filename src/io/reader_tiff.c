/* io module: TIFF / BigTIFF input through libtiff.
 *
 * Open validates every page completely (sizes, sample format, codec, photometric, every
 * strip's/tile's byte count against the file size) so that reading later cannot run past the
 * end of a truncated file. A region read touches only the strips/tiles that overlap it:
 * compressed or tiled data are decoded one block at a time into a small LRU cache of decoded
 * blocks (grown to what one region needs, at most TMD_IO_CACHE_BYTES), so tile-by-tile reading
 * of a striped file decodes each strip about once per tile row; uncompressed strips are read
 * directly with pread, only the
 * requested bytes of the requested rows. libtiff's messages are captured into the reader
 * (TIFFOpenOptions handlers), never printed.
 */
#include "io_internal.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int on_tiff_error(TIFF *tif, void *ud, const char *module, const char *fmt, va_list ap)
{
    (void)tif;
    tmd_reader *r = ud;
    if (r && !r->msg[0]) { /* keep the first message since it was last cleared */
        char body[400];
        vsnprintf(body, sizeof body, fmt, ap);
        snprintf(r->msg, sizeof r->msg, "%s%s%s", module ? module : "", module ? ": " : "", body);
    }
    return 1; /* handled: libtiff must not print it */
}

static int on_tiff_warning(TIFF *tif, void *ud, const char *module, const char *fmt, va_list ap)
{
    (void)tif; (void)ud; (void)module; (void)fmt; (void)ap;
    return 1;
}

/* libtiff message for the error just seen, as ": message" or "". */
static const char *tmsg(tmd_reader *r, char *buf, size_t n)
{
    if (r->msg[0]) snprintf(buf, n, " (libtiff: %s)", r->msg);
    else buf[0] = 0;
    return buf;
}

/* Everything that must agree between the pages of a stack. */
typedef struct {
    uint32_t width, height;
    uint16_t bps, sf, spp, photometric, planar, compression;
    int tiled;
    uint32_t tile_w, tile_h, rps;
} page_desc;

static const char *compression_name(uint16_t c, char *buf, size_t n)
{
    switch (c) {
    case COMPRESSION_NONE: return "uncompressed";
    case COMPRESSION_LZW: return "LZW";
    case COMPRESSION_ADOBE_DEFLATE:
    case COMPRESSION_DEFLATE: return "Deflate";
    case COMPRESSION_PACKBITS: return "PackBits";
    case COMPRESSION_JPEG: return "JPEG";
    case COMPRESSION_OJPEG: return "old-style JPEG";
    case COMPRESSION_LZMA: return "LZMA";
    case COMPRESSION_ZSTD: return "ZSTD";
    case COMPRESSION_WEBP: return "WebP";
    case COMPRESSION_JBIG: return "JBIG";
    case COMPRESSION_CCITTFAX3: return "CCITT G3";
    case COMPRESSION_CCITTFAX4: return "CCITT G4";
    default: break;
    }
    const TIFFCodec *codec = TIFFFindCODEC(c);
    if (codec && codec->name) return codec->name;
    snprintf(buf, n, "compression scheme %u", (unsigned)c);
    return buf;
}

static const char *photometric_name(uint16_t p)
{
    switch (p) {
    case PHOTOMETRIC_MINISWHITE: return "min-is-white";
    case PHOTOMETRIC_MINISBLACK: return "min-is-black";
    case PHOTOMETRIC_RGB: return "RGB";
    case PHOTOMETRIC_PALETTE: return "palette";
    case PHOTOMETRIC_MASK: return "transparency mask";
    case PHOTOMETRIC_SEPARATED: return "separated (CMYK)";
    case PHOTOMETRIC_YCBCR: return "YCbCr";
    case PHOTOMETRIC_CIELAB: return "CIE L*a*b*";
    case PHOTOMETRIC_LOGL: return "LogL";
    case PHOTOMETRIC_LOGLUV: return "LogLuv";
    default: return "unknown photometric interpretation";
    }
}

/* Reads the current directory's description and checks that tmdflow can read it. */
static tmd_status describe_page(tmd_ctx *ctx, tmd_reader *r, int64_t page, page_desc *d)
{
    TIFF *t = r->tif;
    memset(d, 0, sizeof *d);
    char cb[64];
    if (!TIFFGetField(t, TIFFTAG_IMAGEWIDTH, &d->width) || !TIFFGetField(t, TIFFTAG_IMAGELENGTH, &d->height))
        return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: page %lld has no image width/height tags", r->path, (long long)page);
    if (d->width == 0 || d->height == 0 || d->width > TMD_IO_MAX_SIDE || d->height > TMD_IO_MAX_SIDE)
        return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: page %lld has an unusable size %u x %u (width x height; expected 1 to %lld)",
                        r->path, (long long)page, d->width, d->height, (long long)TMD_IO_MAX_SIDE);
    TIFFGetFieldDefaulted(t, TIFFTAG_BITSPERSAMPLE, &d->bps);
    TIFFGetFieldDefaulted(t, TIFFTAG_SAMPLEFORMAT, &d->sf);
    TIFFGetFieldDefaulted(t, TIFFTAG_SAMPLESPERPIXEL, &d->spp);
    TIFFGetFieldDefaulted(t, TIFFTAG_PLANARCONFIG, &d->planar);
    TIFFGetFieldDefaulted(t, TIFFTAG_COMPRESSION, &d->compression);
    if (!TIFFGetField(t, TIFFTAG_PHOTOMETRIC, &d->photometric)) d->photometric = PHOTOMETRIC_MINISBLACK;
    d->tiled = TIFFIsTiled(t) ? 1 : 0;
    if (d->tiled) {
        TIFFGetField(t, TIFFTAG_TILEWIDTH, &d->tile_w);
        TIFFGetField(t, TIFFTAG_TILELENGTH, &d->tile_h);
        if (d->tile_w == 0 || d->tile_h == 0 || d->tile_w > TMD_IO_MAX_SIDE || d->tile_h > TMD_IO_MAX_SIDE)
            return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: page %lld has an unusable tile size %u x %u", r->path,
                            (long long)page, d->tile_w, d->tile_h);
    } else {
        TIFFGetFieldDefaulted(t, TIFFTAG_ROWSPERSTRIP, &d->rps);
        if (d->rps == 0) return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: page %lld has RowsPerStrip = 0", r->path, (long long)page);
        if (d->rps > d->height) d->rps = d->height;
    }
    if (d->spp < 1 || d->spp > 16)
        return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: page %lld has %u samples per pixel (expected 1 for greyscale)", r->path,
                        (long long)page, d->spp);
    if (d->sf == SAMPLEFORMAT_COMPLEXINT || d->sf == SAMPLEFORMAT_COMPLEXIEEEFP)
        return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: page %lld holds complex samples; tmdflow reads real-valued images only",
                        r->path, (long long)page);
    int ok_bps = 0;
    if (d->sf == SAMPLEFORMAT_IEEEFP) ok_bps = d->bps == 32 || d->bps == 64;
    else if (d->sf == SAMPLEFORMAT_UINT || d->sf == SAMPLEFORMAT_INT || d->sf == SAMPLEFORMAT_VOID)
        ok_bps = d->bps == 8 || d->bps == 16 || d->bps == 32;
    if (!ok_bps)
        return TMD_FAIL(ctx, TMD_ERR_FORMAT,
                        "%s: page %lld has %u-bit %s samples; tmdflow reads 8-, 16- or 32-bit integer and 32- or 64-bit "
                        "float samples (convert %u-bit data to 16-bit first)",
                        r->path, (long long)page, d->bps,
                        d->sf == SAMPLEFORMAT_IEEEFP ? "float" : (d->sf == SAMPLEFORMAT_INT ? "signed" : "unsigned"),
                        d->bps);
    if (!TIFFIsCODECConfigured(d->compression))
        return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: page %lld is compressed with %s, which this libtiff cannot decode", r->path,
                        (long long)page, compression_name(d->compression, cb, sizeof cb));
    switch (d->photometric) {
    case PHOTOMETRIC_MINISBLACK:
    case PHOTOMETRIC_MINISWHITE: break;
    case PHOTOMETRIC_PALETTE:
        if (d->bps != 8 || d->spp != 1 || d->sf == SAMPLEFORMAT_IEEEFP)
            return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: page %lld is a %u-bit palette image; only 8-bit palettes are read",
                            r->path, (long long)page, d->bps);
        break;
    case PHOTOMETRIC_RGB:
        if (d->spp < 3)
            return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: page %lld is RGB with only %u samples per pixel", r->path,
                            (long long)page, d->spp);
        break;
    default:
        return TMD_FAIL(ctx, TMD_ERR_FORMAT,
                        "%s: page %lld is a %s image; tmdflow reads greyscale (min-is-black/white), 8-bit palette or RGB "
                        "(converted to grey)",
                        r->path, (long long)page, photometric_name(d->photometric));
    }
    if (d->spp > 1 && d->planar != PLANARCONFIG_CONTIG)
        return TMD_FAIL(ctx, TMD_ERR_FORMAT,
                        "%s: page %lld stores its %u samples per pixel in separate planes; only interleaved (contiguous) "
                        "multi-sample images are read",
                        r->path, (long long)page, d->spp);
    return TMD_OK;
}

/* Every strip/tile must have data, lie inside the file and (uncompressed) hold all its bytes. */
static tmd_status check_blocks(tmd_ctx *ctx, tmd_reader *r, int64_t page, const page_desc *d, int64_t fsize)
{
    TIFF *t = r->tif;
    const char *kind = d->tiled ? "tile" : "strip";
    uint64_t *offs = NULL, *counts = NULL;
    uint32_t nblocks = d->tiled ? TIFFNumberOfTiles(t) : TIFFNumberOfStrips(t);
    int64_t across = d->tiled ? ((int64_t)d->width + d->tile_w - 1) / d->tile_w : 1;
    int64_t down = d->tiled ? ((int64_t)d->height + d->tile_h - 1) / d->tile_h
                            : ((int64_t)d->height + d->rps - 1) / d->rps;
    if ((int64_t)nblocks < across * down)
        return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: page %lld has %u %ss, expected %lld for its size", r->path,
                        (long long)page, nblocks, kind, (long long)(across * down));
    if (!TIFFGetField(t, d->tiled ? TIFFTAG_TILEOFFSETS : TIFFTAG_STRIPOFFSETS, &offs) ||
        !TIFFGetField(t, d->tiled ? TIFFTAG_TILEBYTECOUNTS : TIFFTAG_STRIPBYTECOUNTS, &counts) || !offs || !counts)
        return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: page %lld lacks %s offsets or byte counts", r->path, (long long)page,
                        kind);
    uint64_t line = d->tiled ? (uint64_t)TIFFTileRowSize64(t) : (uint64_t)TIFFScanlineSize64(t);
    for (uint32_t b = 0; b < nblocks && (int64_t)b < across * down; b++) {
        if (counts[b] == 0)
            return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: page %lld, %s %u has no data (byte count 0)", r->path,
                            (long long)page, kind, b);
        /* an offset inside the header (0 = "not written") would read the header as pixels */
        uint64_t header = TIFFIsBigTIFF(t) ? 16 : 8;
        if (offs[b] < header)
            return TMD_FAIL(ctx, TMD_ERR_FORMAT,
                            "%s: page %lld, %s %u starts at offset %llu, inside the %llu-byte TIFF header (not written "
                            "or corrupt)",
                            r->path, (long long)page, kind, b, (unsigned long long)offs[b], (unsigned long long)header);
        if (offs[b] > (uint64_t)fsize || counts[b] > (uint64_t)fsize - offs[b])
            return TMD_FAIL(ctx, TMD_ERR_FORMAT,
                            "%s: page %lld, %s %u promises %llu bytes at offset %llu but the file holds only %lld bytes "
                            "(truncated file?)",
                            r->path, (long long)page, kind, b, (unsigned long long)counts[b],
                            (unsigned long long)offs[b], (long long)fsize);
        if (d->compression == COMPRESSION_NONE) {
            uint64_t rows = d->tiled ? d->tile_h : d->rps;
            if (!d->tiled && (int64_t)(b + 1) * d->rps > d->height) rows = d->height - (uint64_t)b * d->rps;
            uint64_t need = rows * line;
            if (counts[b] < need)
                return TMD_FAIL(ctx, TMD_ERR_FORMAT,
                                "%s: page %lld, uncompressed %s %u holds %llu bytes, %llu expected (truncated or corrupt)",
                                r->path, (long long)page, kind, b, (unsigned long long)counts[b],
                                (unsigned long long)need);
        }
    }
    return TMD_OK;
}

/* Pixel size (Angstrom) from ImageJ metadata, or a plausible physical resolution; 0 if none. */
static double pixel_size_from_tags(TIFF *t)
{
    float xres = 0;
    uint16_t unit = RESUNIT_NONE;
    if (!TIFFGetField(t, TIFFTAG_XRESOLUTION, &xres) || !(xres > 0) || !isfinite(xres)) return 0;
    TIFFGetFieldDefaulted(t, TIFFTAG_RESOLUTIONUNIT, &unit);
    char *desc = NULL;
    if (TIFFGetField(t, TIFFTAG_IMAGEDESCRIPTION, &desc) && desc) {
        const char *u = strstr(desc, "unit=");
        if (u) {
            double scale = tmd_io_angstrom_per_unit(u + 5); /* Angstrom per unit */
            if (scale > 0) return scale / xres;
            return 0;
        }
    }
    double a = 0;
    if (unit == RESUNIT_CENTIMETER) a = 1e8 / xres;
    else if (unit == RESUNIT_INCH) a = 2.54e8 / xres;
    /* Only a pixel size that could be a STEM image's counts (0.001 .. 100 A). */
    return (a >= 1e-3 && a <= 100) ? a : 0;
}

/* When libtiff refuses a header, look at the first IFD ourselves for a more precise cause
 * (a zero width or height). Returns 1 and fills *w, *h if both tags were found. */
static int raw_first_dims(const char *path, uint64_t *w, uint64_t *h)
{
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    unsigned char hd[16];
    int found = 0;
    *w = *h = UINT64_MAX;
    if (fread(hd, 1, 16, f) < 8) goto done;
    int le = hd[0] == 'I';
#define RD16(p) (le ? (uint64_t)(p)[0] | (uint64_t)(p)[1] << 8 : (uint64_t)(p)[1] | (uint64_t)(p)[0] << 8)
#define RD32(p) (le ? RD16(p) | RD16((p) + 2) << 16 : RD16((p) + 2) | RD16(p) << 16)
#define RD64(p) (le ? RD32(p) | RD32((p) + 4) << 32 : RD32((p) + 4) | RD32(p) << 32)
    int big = RD16(hd + 2) == 43;
    uint64_t ifd = big ? RD64(hd + 8) : RD32(hd + 4);
    unsigned char cnt[8], e[20];
    if (fseeko(f, (off_t)ifd, SEEK_SET) || fread(cnt, 1, big ? 8 : 2, f) != (size_t)(big ? 8 : 2)) goto done;
    uint64_t n = big ? RD64(cnt) : RD16(cnt);
    for (uint64_t i = 0; i < n && i < 4096; i++) {
        size_t es = big ? 20 : 12;
        if (fread(e, 1, es, f) != es) break;
        uint64_t tag = RD16(e), type = RD16(e + 2);
        const unsigned char *v = e + (big ? 12 : 8);
        uint64_t val = type == 3 ? RD16(v) : type == 4 ? RD32(v) : type == 16 ? RD64(v) : UINT64_MAX;
        if (tag == 256) *w = val;
        if (tag == 257) *h = val;
    }
    found = *w != UINT64_MAX && *h != UINT64_MAX;
#undef RD16
#undef RD32
#undef RD64
done:
    fclose(f);
    return found;
}

tmd_status tmd_io_tiff_open(tmd_ctx *ctx, tmd_reader *r)
{
    tmd_status st = TMD_OK;
    char mb[600], cb[64];
    int64_t fsize = tmd_io_file_size(r->path);
    tmd_io_tiff_quiet();
    TIFFOpenOptions *opts = TIFFOpenOptionsAlloc();
    if (!opts) return TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory opening %s", r->path);
    TIFFOpenOptionsSetErrorHandlerExtR(opts, on_tiff_error, r);
    TIFFOpenOptionsSetWarningHandlerExtR(opts, on_tiff_warning, r);
    TIFFOpenOptionsSetMaxSingleMemAlloc(opts, (tmsize_t)1 << 31);
    r->msg[0] = 0;
    r->tif = TIFFOpenExt(r->path, "rm", opts); /* "m": no memory mapping (a truncated mapped file would SIGBUS) */
    TIFFOpenOptionsFree(opts);
    if (!r->tif) {
        uint64_t w = 0, h = 0;
        if (raw_first_dims(r->path, &w, &h) &&
            (w == 0 || h == 0 || w > (uint64_t)TMD_IO_MAX_SIDE || h > (uint64_t)TMD_IO_MAX_SIDE))
            return TMD_FAIL(ctx, TMD_ERR_FORMAT,
                            "%s: page 0 has an unusable size %llu x %llu (width x height; expected 1 to %lld)%s",
                            r->path, (unsigned long long)w, (unsigned long long)h, (long long)TMD_IO_MAX_SIDE,
                            tmsg(r, mb, sizeof mb));
        return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: cannot read the TIFF header; the file is truncated or damaged%s",
                        r->path, tmsg(r, mb, sizeof mb));
    }
    snprintf(r->info.format, sizeof r->info.format, "%s", TIFFIsBigTIFF(r->tif) ? "BigTIFF" : "TIFF");

    /* Walk every page: validate it, record its directory offset, check it matches page 0. */
    page_desc d0, d;
    memset(&d0, 0, sizeof d0);
    int64_t cap = 16, n = 0, page = 0;
    r->dir_offset = malloc((size_t)cap * sizeof *r->dir_offset);
    if (!r->dir_offset) return TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory opening %s", r->path);
    for (;;) {
        /* Reduced-resolution pages (thumbnails, previews) are not frames: skip them. */
        uint32_t subtype = 0;
        int reduced = TIFFGetField(r->tif, TIFFTAG_SUBFILETYPE, &subtype) && (subtype & FILETYPE_REDUCEDIMAGE);
        if (!reduced) {
            TMD_CHECK(describe_page(ctx, r, page, &d));
            if (n == 0) {
                d0 = d;
            } else if (d.width != d0.width || d.height != d0.height || d.bps != d0.bps || d.sf != d0.sf ||
                       d.spp != d0.spp || d.photometric != d0.photometric) {
                return TMD_FAIL(ctx, TMD_ERR_FORMAT,
                                "%s: page %lld (%u x %u, %u-bit, %u samples/pixel) differs from the first page (%u x %u, "
                                "%u-bit, %u samples/pixel); every page of a stack must have the same size and sample type",
                                r->path, (long long)page, d.width, d.height, d.bps, d.spp, d0.width, d0.height, d0.bps,
                                d0.spp);
            } else if (d.tiled != d0.tiled || d.tile_w != d0.tile_w || d.tile_h != d0.tile_h || d.rps != d0.rps ||
                       d.compression != d0.compression) {
                return TMD_FAIL(ctx, TMD_ERR_FORMAT,
                                "%s: page %lld is stored differently from the first page (strips/tiles or compression); "
                                "tmdflow needs a stack with one layout",
                                r->path, (long long)page);
            }
            TMD_CHECK(check_blocks(ctx, r, page, &d, fsize));
            if (n == cap) {
                cap *= 2;
                uint64_t *p = realloc(r->dir_offset, (size_t)cap * sizeof *p);
                if (!p) return TMD_FAIL(ctx, TMD_ERR_NOMEM, "out of memory indexing the pages of %s", r->path);
                r->dir_offset = p;
            }
            r->dir_offset[n++] = TIFFCurrentDirOffset(r->tif);
            if (n > TMD_IO_MAX_FRAMES)
                return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: more than %lld pages", r->path, (long long)TMD_IO_MAX_FRAMES);
        }
        page++;
        r->msg[0] = 0;
        if (!TIFFReadDirectory(r->tif)) {
            if (r->msg[0])
                return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: the header of page %lld cannot be read%s", r->path,
                                (long long)page, tmsg(r, mb, sizeof mb));
            break;
        }
    }
    if (n == 0) return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: holds only reduced-resolution (thumbnail) pages", r->path);
    r->cur_frame = -1; /* libtiff sits on the last page now */

    /* Geometry and conversion, from page 0 (all pages agree). */
    r->info.frames = n;
    r->info.height = d0.height;
    r->info.width = d0.width;
    r->spp = d0.spp;
    r->tiled = d0.tiled;
    r->block_h = d0.tiled ? d0.tile_h : d0.rps;
    r->block_w = d0.tiled ? d0.tile_w : d0.width;
    r->blocks_across = d0.tiled ? ((int64_t)d0.width + d0.tile_w - 1) / d0.tile_w : 1;
    size_t pix;
    TMD_CHECK(tmd_mul_size(ctx, (size_t)d0.width, (size_t)d0.height, &pix, r->path));
    TMD_CHECK(tmd_mul_size(ctx, pix, (size_t)d0.spp, &pix, r->path));
    TMD_CHECK(tmd_mul_size(ctx, pix, (size_t)d0.bps / 8, &pix, r->path));
    int sgn = d0.sf == SAMPLEFORMAT_INT, flt = d0.sf == SAMPLEFORMAT_IEEEFP;
    switch (d0.bps) {
    case 8: r->stored = sgn ? TMD_I8 : TMD_U8; break;
    case 16: r->stored = sgn ? TMD_I16 : TMD_U16; break;
    case 32: r->stored = flt ? TMD_F32 : (sgn ? TMD_I32 : TMD_U32); break;
    default: r->stored = TMD_F64; break;
    }
    r->info.sample = r->stored;
    r->conv = TMD_CONV_PLAIN;
    if (d0.photometric == PHOTOMETRIC_MINISWHITE) r->conv = TMD_CONV_INVERT;
    if (d0.photometric == PHOTOMETRIC_RGB) r->conv = TMD_CONV_RGB;
    if (d0.photometric == PHOTOMETRIC_PALETTE) {
        r->conv = TMD_CONV_PALETTE;
        /* The colormap of page 0 (read back after seeking there). */
        r->msg[0] = 0;
        if (!TIFFSetSubDirectory(r->tif, r->dir_offset[0]))
            return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: cannot return to page 0%s", r->path, tmsg(r, mb, sizeof mb));
        r->cur_frame = 0;
        uint16_t *red = NULL, *green = NULL, *blue = NULL;
        if (!TIFFGetField(r->tif, TIFFTAG_COLORMAP, &red, &green, &blue) || !red || !green || !blue)
            return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: palette image without a colour map", r->path);
        for (int i = 0; i < 256; i++)
            r->palette[i] = (float)((0.299 * red[i] + 0.587 * green[i] + 0.114 * blue[i]) / 257.0);
    }

    /* Scratch: one scanline (uncompressed strips are read row by row) or one decoded block. */
    int direct = !d0.tiled && d0.compression == COMPRESSION_NONE;
    tmsize_t bs = direct ? TIFFScanlineSize(r->tif) : (d0.tiled ? TIFFTileSize(r->tif) : TIFFStripSize(r->tif));
    if (bs <= 0) return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: cannot size a %s%s", r->path, d0.tiled ? "tile" : "strip", tmsg(r, mb, sizeof mb));
    r->scratch_size = (size_t)bs;
    if (direct) {
        TMD_CHECK(tmd_calloc(ctx, (void **)&r->scratch, r->scratch_size, 1, "a TIFF scanline buffer"));
    } else {
        /* One cache slot now; more are added when a region needs them. */
        TMD_CHECK(tmd_calloc(ctx, (void **)&r->cache, 1, sizeof *r->cache, "the TIFF block cache"));
        TMD_CHECK(tmd_calloc(ctx, (void **)&r->cache[0].buf, r->scratch_size, 1, "a TIFF strip/tile buffer"));
        r->cache[0].frame = r->cache[0].block = -1;
        r->ncache = 1;
    }

    /* Layout text and pixel size (page 0). */
    if (r->cur_frame != 0) {
        r->msg[0] = 0;
        if (!TIFFSetSubDirectory(r->tif, r->dir_offset[0]))
            return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: cannot return to page 0%s", r->path, tmsg(r, mb, sizeof mb));
        r->cur_frame = 0;
    }
    r->info.pixel_size = pixel_size_from_tags(r->tif);
    const char *extra = r->conv == TMD_CONV_INVERT    ? ", min-is-white (inverted)"
                        : r->conv == TMD_CONV_PALETTE ? ", 8-bit palette (mapped to grey)"
                        : r->conv == TMD_CONV_RGB     ? ", RGB (converted to grey luminance)"
                        : d0.spp > 1                  ? ", extra samples ignored"
                                                      : "";
    if (d0.tiled)
        snprintf(r->info.layout, sizeof r->info.layout, "tiled %ux%u, %s%s", d0.tile_w, d0.tile_h,
                 compression_name(d0.compression, cb, sizeof cb), extra);
    else
        snprintf(r->info.layout, sizeof r->info.layout, "striped %u rows/strip, %s%s", d0.rps,
                 compression_name(d0.compression, cb, sizeof cb), extra);
    (void)st;

    /* ImageJ writes stacks beyond 4 GiB as ONE IFD whose description says "images=N", with
     * the N frames stored back to back (uncompressed). Read those as N frames. */
    char *desc = NULL;
    if (n == 1 && direct && TIFFGetField(r->tif, TIFFTAG_IMAGEDESCRIPTION, &desc) && desc &&
        !strncmp(desc, "ImageJ=", 7)) {
        const char *im = strstr(desc, "\nimages=");
        long long k = im ? atoll(im + 8) : 0;
        uint64_t *offs = NULL, *counts = NULL;
        uint32_t ns = TIFFNumberOfStrips(r->tif);
        if (k > 1 && k <= TMD_IO_MAX_FRAMES && TIFFGetField(r->tif, TIFFTAG_STRIPOFFSETS, &offs) &&
            TIFFGetField(r->tif, TIFFTAG_STRIPBYTECOUNTS, &counts) && offs && counts) {
            int contiguous = 1;
            for (uint32_t i = 0; i + 1 < ns; i++) contiguous &= offs[i + 1] == offs[i] + counts[i];
            uint64_t fb = (uint64_t)pix; /* bytes of one frame */
            if (contiguous) {
                if ((double)offs[0] + (double)k * (double)fb > (double)fsize)
                    return TMD_FAIL(ctx, TMD_ERR_FORMAT,
                                    "%s: ImageJ stack of %lld images needs %.0f bytes from offset %llu but the file "
                                    "holds only %lld bytes (truncated file?)",
                                    r->path, k, (double)k * (double)fb, (unsigned long long)offs[0], (long long)fsize);
                r->raw_base = offs[0];
                r->raw_frame_bytes = fb;
                r->info.frames = k;
                size_t len = strlen(r->info.layout);
                snprintf(r->info.layout + len, sizeof r->info.layout - len, ", ImageJ raw stack (one header)");
            }
        }
    }
    return TMD_OK;
}

/* Converts n pixels starting at src (spp samples each, stored type) to float grey. */
static void convert_pixels(const tmd_reader *r, const uint8_t *src, int64_t n, float *dst)
{
    const int spp = r->spp;
    if (r->conv == TMD_CONV_PALETTE) {
        for (int64_t i = 0; i < n; i++) dst[i] = r->palette[src[i]];
        return;
    }
#define TMD_CONV_LOOP(T, MAXV)                                                                     \
    do {                                                                                           \
        const T *s = (const T *)(const void *)src;                                                 \
        if (r->conv == TMD_CONV_RGB) {                                                             \
            for (int64_t i = 0; i < n; i++)                                                        \
                dst[i] = (float)(0.299 * s[i * spp] + 0.587 * s[i * spp + 1] + 0.114 * s[i * spp + 2]); \
        } else if (r->conv == TMD_CONV_INVERT) {                                                   \
            for (int64_t i = 0; i < n; i++) dst[i] = (float)((MAXV) - (double)s[i * spp]);         \
        } else {                                                                                   \
            for (int64_t i = 0; i < n; i++) dst[i] = (float)s[i * spp];                            \
        }                                                                                          \
    } while (0)
    switch (r->stored) {
    case TMD_U8: TMD_CONV_LOOP(uint8_t, 255.0); break;
    case TMD_I8: TMD_CONV_LOOP(int8_t, 0.0); break;
    case TMD_U16: TMD_CONV_LOOP(uint16_t, 65535.0); break;
    case TMD_I16: TMD_CONV_LOOP(int16_t, 0.0); break;
    case TMD_U32: TMD_CONV_LOOP(uint32_t, 4294967295.0); break;
    case TMD_I32: TMD_CONV_LOOP(int32_t, 0.0); break;
    case TMD_F32: TMD_CONV_LOOP(float, 0.0); break;
    case TMD_F64: TMD_CONV_LOOP(double, 0.0); break;
    default: break;
    }
#undef TMD_CONV_LOOP
}

static tmd_status goto_frame(tmd_ctx *ctx, tmd_reader *r, int64_t frame)
{
    if (r->cur_frame == frame) return TMD_OK;
    char mb[600];
    r->msg[0] = 0;
    if (!TIFFSetSubDirectory(r->tif, r->dir_offset[frame])) {
        r->cur_frame = -1;
        return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: cannot read the header of page %lld%s", r->path, (long long)frame,
                        tmsg(r, mb, sizeof mb));
    }
    r->cur_frame = frame;
    return TMD_OK;
}

/* Uncompressed strips: pread exactly the requested bytes of each requested row. */
static tmd_status read_direct(tmd_ctx *ctx, tmd_reader *r, int64_t frame, int64_t y0, int64_t x0, int64_t h,
                              int64_t w, float *out)
{
    uint64_t *offs = NULL;
    if (!TIFFGetField(r->tif, TIFFTAG_STRIPOFFSETS, &offs) || !offs)
        return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: page %lld lacks strip offsets", r->path, (long long)frame);
    int fd = TIFFFileno(r->tif);
    size_t ps = tmd_dtype_size(r->stored) * (size_t)r->spp; /* bytes per pixel */
    size_t rowbytes = (size_t)r->info.width * ps;
    size_t want = (size_t)w * ps;
    int swab = TIFFIsByteSwapped(r->tif);
    for (int64_t y = y0; y < y0 + h; y++) {
        int64_t s = y / r->block_h;
        off_t at = r->raw_frame_bytes
                       ? (off_t)(r->raw_base + (uint64_t)frame * r->raw_frame_bytes + (uint64_t)y * rowbytes +
                                 (uint64_t)x0 * ps)
                       : (off_t)(offs[s] + (uint64_t)(y - s * r->block_h) * rowbytes + (uint64_t)x0 * ps);
        size_t done = 0;
        while (done < want) {
            ssize_t k = pread(fd, r->scratch + done, want - done, at + (off_t)done);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0)
                return TMD_FAIL(ctx, TMD_ERR_IO, "%s: page %lld, row %lld: read failed (%s)", r->path, (long long)frame,
                                (long long)y, k < 0 ? strerror(errno) : "unexpected end of file");
            done += (size_t)k;
        }
        if (swab) {
            size_t ns = (size_t)w * (size_t)r->spp;
            switch (tmd_dtype_size(r->stored)) {
            case 2: TIFFSwabArrayOfShort((uint16_t *)(void *)r->scratch, (tmsize_t)ns); break;
            case 4: TIFFSwabArrayOfLong((uint32_t *)(void *)r->scratch, (tmsize_t)ns); break;
            case 8: TIFFSwabArrayOfDouble((double *)(void *)r->scratch, (tmsize_t)ns); break;
            default: break;
            }
        }
        convert_pixels(r, r->scratch, w, out + (y - y0) * w);
    }
    return TMD_OK;
}

/* Grows the block cache to `want` slots (bounded by TMD_IO_CACHE_BYTES). A failed allocation
 * just leaves fewer slots: the cache is an optimisation. */
static void cache_grow(tmd_reader *r, int64_t want)
{
    int64_t cap = (int64_t)(TMD_IO_CACHE_BYTES / (r->scratch_size ? r->scratch_size : 1));
    if (want > cap) want = cap;
    if (want > 4096) want = 4096;
    if (want <= r->ncache) return;
    struct tmd_io_block *c = realloc(r->cache, (size_t)want * sizeof *c);
    if (!c) return;
    r->cache = c;
    while (r->ncache < want) {
        uint8_t *b = malloc(r->scratch_size);
        if (!b) return;
        c[r->ncache].buf = b;
        c[r->ncache].frame = c[r->ncache].block = -1;
        c[r->ncache].used = 0;
        r->ncache++;
    }
}

/* The decoded block idx of frame, from the cache or decoded into the least recently used slot. */
static tmd_status get_block(tmd_ctx *ctx, tmd_reader *r, int64_t frame, int64_t idx, size_t need, const uint8_t **out)
{
    char mb[600];
    int lru = 0;
    for (int i = 0; i < r->ncache; i++) {
        if (r->cache[i].frame == frame && r->cache[i].block == idx) {
            r->cache[i].used = ++r->clock;
            *out = r->cache[i].buf;
            return TMD_OK;
        }
        if (r->cache[i].used < r->cache[lru].used) lru = i;
    }
    struct tmd_io_block *b = &r->cache[lru];
    b->frame = b->block = -1;
    r->msg[0] = 0;
    tmsize_t got = r->tiled ? TIFFReadEncodedTile(r->tif, (uint32_t)idx, b->buf, (tmsize_t)r->scratch_size)
                            : TIFFReadEncodedStrip(r->tif, (uint32_t)idx, b->buf, (tmsize_t)r->scratch_size);
    if (got < 0 || (size_t)got < need)
        return TMD_FAIL(ctx, TMD_ERR_FORMAT, "%s: page %lld, %s %lld could not be decoded (%lld of %zu bytes)%s",
                        r->path, (long long)frame, r->tiled ? "tile" : "strip", (long long)idx, (long long)got, need,
                        tmsg(r, mb, sizeof mb));
    b->frame = frame;
    b->block = idx;
    b->used = ++r->clock;
    *out = b->buf;
    return TMD_OK;
}

/* Compressed strips or tiles: decode each overlapping block (cached) and copy its overlap. */
static tmd_status read_blocks(tmd_ctx *ctx, tmd_reader *r, int64_t frame, int64_t y0, int64_t x0, int64_t h,
                              int64_t w, float *out)
{
    size_t ps = tmd_dtype_size(r->stored) * (size_t)r->spp;
    int64_t by0 = y0 / r->block_h, by1 = (y0 + h - 1) / r->block_h;
    int64_t bx0 = x0 / r->block_w, bx1 = (x0 + w - 1) / r->block_w;
    /* Enough slots for this region plus one more band, so that the next region of the same
     * tile row finds its blocks decoded. */
    cache_grow(r, (by1 - by0 + 1) * (bx1 - bx0 + 2));
    for (int64_t by = by0; by <= by1; by++) {
        for (int64_t bx = bx0; bx <= bx1; bx++) {
            int64_t idx = by * r->blocks_across + bx;
            /* Rows of this block that are valid: strips at the bottom are short. */
            int64_t rows = r->block_h;
            if (!r->tiled && (by + 1) * r->block_h > r->info.height) rows = r->info.height - by * r->block_h;
            size_t need = (size_t)rows * (size_t)r->block_w * ps;
            const uint8_t *blk = NULL;
            TMD_CHECK(get_block(ctx, r, frame, idx, need, &blk));
            int64_t ys = by * r->block_h > y0 ? by * r->block_h : y0;
            int64_t ye = (by + 1) * r->block_h < y0 + h ? (by + 1) * r->block_h : y0 + h;
            int64_t xs = bx * r->block_w > x0 ? bx * r->block_w : x0;
            int64_t xe = (bx + 1) * r->block_w < x0 + w ? (bx + 1) * r->block_w : x0 + w;
            for (int64_t y = ys; y < ye; y++) {
                const uint8_t *src = blk + ((size_t)(y - by * r->block_h) * (size_t)r->block_w +
                                            (size_t)(xs - bx * r->block_w)) * ps;
                convert_pixels(r, src, xe - xs, out + (y - y0) * w + (xs - x0));
            }
        }
    }
    return TMD_OK;
}

tmd_status tmd_io_tiff_read(tmd_ctx *ctx, tmd_reader *r, int64_t frame, int64_t y0, int64_t x0, int64_t h, int64_t w,
                            float *out)
{
    TMD_CHECK(goto_frame(ctx, r, r->raw_frame_bytes ? 0 : frame)); /* ImageJ raw stack: page 0 */
    uint16_t comp = COMPRESSION_NONE;
    TIFFGetFieldDefaulted(r->tif, TIFFTAG_COMPRESSION, &comp);
    if (!r->tiled && comp == COMPRESSION_NONE) return read_direct(ctx, r, frame, y0, x0, h, w, out);
    return read_blocks(ctx, r, frame, y0, x0, h, w, out);
}

void tmd_io_tiff_close(tmd_reader *r)
{
    if (r->tif) TIFFClose(r->tif);
    r->tif = NULL;
    free(r->dir_offset);
    r->dir_offset = NULL;
    free(r->scratch);
    r->scratch = NULL;
    for (int i = 0; i < r->ncache; i++) free(r->cache[i].buf);
    free(r->cache);
    r->cache = NULL;
    r->ncache = 0;
}
