/* xwd-check: is a screenshot blank? Reads an XWD file (what `xwd -root`
 * writes: ZPixmap, TrueColor, 24 or 32 bits per pixel), counts distinct
 * colours and the share of pixels unlike the most common one (the
 * background), writes it as a PNG when asked, and exits 1 if it looks blank.
 *
 *     xwd-check shot.xwd [shot.png]
 *     -> "xwd 1280x1024 colours=812 foreground=23.4%"
 *
 * Used by the MDI demo's test; the PNG is for a person to look at. */
#include <gdk-pixbuf/gdk-pixbuf.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static unsigned shift_of(uint32_t mask) {
    unsigned s = 0;
    while (mask && !(mask & 1)) { mask >>= 1; s++; }
    return s;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: xwd-check FILE.xwd [OUT.png]\n");
        return 2;
    }
    gsize len;
    gchar *buf;
    if (!g_file_get_contents(argv[1], &buf, &len, NULL) || len < 100) {
        fprintf(stderr, "xwd-check: cannot read %s\n", argv[1]);
        return 2;
    }
    const unsigned char *h = (const unsigned char *)buf;
    uint32_t header_size = be32(h), version = be32(h + 4), format = be32(h + 8);
    uint32_t width = be32(h + 16), height = be32(h + 20), byte_order = be32(h + 28);
    uint32_t bpp = be32(h + 44), bpl = be32(h + 48);
    uint32_t rmask = be32(h + 56), gmask = be32(h + 60), bmask = be32(h + 64);
    uint32_t ncolors = be32(h + 76);
    size_t off = (size_t)header_size + (size_t)ncolors * 12;
    if (version != 7 || format != 2 || (bpp != 32 && bpp != 24) || !width || !height ||
        off + (size_t)bpl * height > len) {
        fprintf(stderr, "xwd-check: %s: not a 24/32-bit ZPixmap XWD\n", argv[1]);
        return 2;
    }
    GdkPixbuf *pb = gdk_pixbuf_new(GDK_COLORSPACE_RGB, FALSE, 8, (int)width, (int)height);
    guchar *px = gdk_pixbuf_get_pixels(pb);
    int stride = gdk_pixbuf_get_rowstride(pb);
    unsigned rs = shift_of(rmask), gs = shift_of(gmask), bs = shift_of(bmask);
    GHashTable *counts = g_hash_table_new(NULL, NULL);
    for (uint32_t y = 0; y < height; y++) {
        const unsigned char *row = h + off + (size_t)y * bpl;
        for (uint32_t x = 0; x < width; x++) {
            const unsigned char *q = row + (size_t)x * (bpp / 8);
            uint32_t v = bpp == 32 ? (byte_order ? be32(q) : (uint32_t)q[0] | q[1] << 8 | q[2] << 16 | (uint32_t)q[3] << 24)
                                   : (byte_order ? (uint32_t)q[0] << 16 | q[1] << 8 | q[2] : (uint32_t)q[0] | q[1] << 8 | q[2] << 16);
            guchar r = (guchar)((v & rmask) >> rs), g = (guchar)((v & gmask) >> gs), b = (guchar)((v & bmask) >> bs);
            guchar *d = px + (size_t)y * stride + x * 3;
            d[0] = r; d[1] = g; d[2] = b;
            gpointer key = GUINT_TO_POINTER((guint)(r << 16 | g << 8 | b) + 1);
            g_hash_table_insert(counts, key, GUINT_TO_POINTER(GPOINTER_TO_UINT(g_hash_table_lookup(counts, key)) + 1));
        }
    }
    guint top = 0;
    GHashTableIter it;
    gpointer k, v;
    g_hash_table_iter_init(&it, counts);
    while (g_hash_table_iter_next(&it, &k, &v)) if (GPOINTER_TO_UINT(v) > top) top = GPOINTER_TO_UINT(v);
    guint colours = g_hash_table_size(counts);
    double total = (double)width * height, fg = 100.0 * (total - top) / total;
    printf("xwd %ux%u colours=%u foreground=%.1f%%\n", width, height, colours, fg);
    if (argc > 2 && !gdk_pixbuf_save(pb, argv[2], "png", NULL, NULL)) fprintf(stderr, "xwd-check: cannot write %s\n", argv[2]);
    g_hash_table_unref(counts);
    g_object_unref(pb);
    g_free(buf);
    return colours >= 16 && fg >= 1.0 ? 0 : 1;   /* a blank screen has one colour */
}
