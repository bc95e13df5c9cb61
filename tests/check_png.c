/* check_png.c - reads back a PNG that tools/figures.c wrote, and checks it
   whole: what a viewer would need, decoded by a reader of our own.

   What this is: a PNG reader for the files figures.c writes (8 bits per
   sample, grey or RGB, or 4-bit indexed colour; no interlace), with an inflater for deflate's
   stored and fixed-Huffman blocks, the only kinds figures.c writes. It
   checks the signature, every chunk's CRC-32, IHDR against the size
   expected, that IDAT inflates to exactly one filter byte and one row of
   pixels per row, with filter 0, and zlib's Adler-32 of it.
   What it is not: a general PNG decoder (no dynamic Huffman blocks, no
   other bit depths, no filters but 0). A file outside that is refused, not read.

       build/check_png FILE WIDTH HEIGHT ...   each file; "ok" or "FAIL" lines
       build/check_png --self-test             figures.c's deflate, round trips,
                                               and its tables against the RFC's

   Ends with "N passed, N failed"; exit code 0 when nothing failed, 1 when
   something did, 2 on a bad command line. */
#define FIGURES_NO_MAIN
#include "../tools/figures.c"

/* ---- Inflate: stored and fixed-Huffman blocks (RFC 1951) ------------------- */

/* The lengths and distances of RFC 1951 3.2.5, derived from the rule the
   RFC's table follows rather than copied from figures.c's tables, so that
   a wrong entry there cannot check itself. Lengths: codes 257-264 are 3-10
   with no extra bits, then each four codes take one extra bit more, and
   285 is 258. Distances: codes 0-3 are 1-4, then each two codes take one
   extra bit more. Each base is the one before plus 2^(its extra bits). */
static int length_base[29], length_extra[29], distance_base[30], distance_extra[30];

static void derive_tables(void) {
    for (int i = 0, base = 3; i < 28; i++) {
        length_extra[i] = i < 8 ? 0 : (i - 4) / 4;
        length_base[i] = base;
        base += 1 << length_extra[i];
    }
    length_base[28] = 258, length_extra[28] = 0;
    for (int i = 0, base = 1; i < 30; i++) {
        distance_extra[i] = i < 4 ? 0 : (i - 2) / 2;
        distance_base[i] = base;
        base += 1 << distance_extra[i];
    }
}

typedef struct {
    const unsigned char *bytes;
    size_t size, at;  // at: the next bit, counted from the start
} BitReader;

static long get_bits(BitReader *r, int n) {  // least significant bit first; -1 past the end
    long value = 0;
    for (int i = 0; i < n; i++, r->at++) {
        if (r->at / 8 >= r->size) return -1;
        value |= (long)(r->bytes[r->at / 8] >> (r->at % 8) & 1) << i;
    }
    return value;
}

// A literal/length symbol of the fixed code: its bits come most significant first.
static int get_fixed_symbol(BitReader *r) {
    int code = 0;
    for (int length = 1; length <= 9; length++) {
        long bit = get_bits(r, 1);
        if (bit < 0) return -1;
        code = code << 1 | (int)bit;
        if (length == 7 && code <= 0x17) return 256 + code;
        if (length == 8 && code >= 0x30 && code <= 0xBF) return code - 0x30;
        if (length == 8 && code >= 0xC0 && code <= 0xC7) return 280 + code - 0xC0;
        if (length == 9 && code >= 0x190) return 144 + code - 0x190;
    }
    return -1;
}

// Inflates a raw deflate stream into out (capacity bytes). Returns the
// size, or -1 with a reason in *why.
static long inflate_blocks(const unsigned char *in, size_t size, unsigned char *out, size_t capacity, const char **why) {
    BitReader r = {in, size, 0};
    size_t used = 0;
    long last;
    do {
        last = get_bits(&r, 1);
        long type = get_bits(&r, 2);
        if (last < 0 || type < 0) return *why = "the stream ends inside a block header", -1;
        if (type == 0) {
            r.at = (r.at + 7) / 8 * 8;
            long length = get_bits(&r, 16), complement = get_bits(&r, 16);
            if (length < 0 || complement < 0 || (length ^ 0xFFFF) != complement) return *why = "a stored block's LEN and NLEN disagree", -1;
            if (r.at / 8 + (size_t)length > size || used + (size_t)length > capacity) return *why = "a stored block too long", -1;
            memcpy(out + used, in + r.at / 8, (size_t)length);
            used += (size_t)length, r.at += 8 * (size_t)length;
        } else if (type == 1) {
            for (;;) {
                int s = get_fixed_symbol(&r);
                if (s < 0 || s > 285) return *why = "a literal/length code that is not one", -1;
                if (s == 256) break;
                if (s < 256) {
                    if (used == capacity) return *why = "more bytes than the picture has", -1;
                    out[used++] = (unsigned char)s;
                    continue;
                }
                long extra = get_bits(&r, length_extra[s - 257]), code = 0;
                for (int i = 0; i < 5 && code >= 0; i++) {  // 5 bits, most significant first
                    long bit = get_bits(&r, 1);
                    code = bit < 0 ? -1 : code << 1 | bit;
                }
                if (extra < 0 || code < 0 || code > 29) return *why = "a distance code that is not one", -1;
                long extra_bits = get_bits(&r, distance_extra[code]);
                if (extra_bits < 0) return *why = "the stream ends inside a match", -1;
                size_t length = (size_t)(length_base[s - 257] + extra), distance = (size_t)(distance_base[code] + extra_bits);
                if (distance > used) return *why = "a match reaching back before the start", -1;
                if (used + length > capacity) return *why = "more bytes than the picture has", -1;
                for (size_t i = 0; i < length; i++, used++) out[used] = out[used - distance];
            }
        } else {
            return *why = "a block of dynamic codes (type 2) or of the reserved type 3", -1;
        }
    } while (!last);
    if ((r.at + 7) / 8 != size) return *why = "bytes after the last block", -1;
    return (long)used;
}

/* ---- One PNG file -------------------------------------------------------------- */

static uint32_t read_u32(const unsigned char *b) {
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

// Returns NULL when the file is right, else what is wrong.
static const char *check_png(const unsigned char *file, size_t size, uint32_t width, uint32_t height) {
    if (size < 8 || memcmp(file, "\x89PNG\r\n\x1a\n", 8) != 0) return "no PNG signature";
    ByteBuffer idat = {0};
    int channels = 0, colours = 0, saw_end = 0;
    const char *why = NULL;
    for (size_t at = 8; at < size && !why && !saw_end;) {
        if (size - at < 12) { why = "a chunk cut short"; break; }
        uint32_t length = read_u32(file + at);
        if (length > size - at - 12) { why = "a chunk longer than the file"; break; }
        const unsigned char *type = file + at + 4, *data = type + 4;
        if (crc32_update(0, type, 4 + (size_t)length) != read_u32(data + length)) why = "a chunk's CRC-32 is wrong";
        else if (at == 8 && memcmp(type, "IHDR", 4) != 0) why = "the first chunk is not IHDR";
        else if (memcmp(type, "IHDR", 4) == 0) {
            if (length != 13 || at != 8) why = "IHDR of the wrong length, or not first";
            else if (read_u32(data) != width || read_u32(data + 4) != height) why = "not the size expected";
            else if (!((data[8] == 8 && (data[9] == 0 || data[9] == 2)) || (data[8] == 4 && data[9] == 3)) ||
                     data[10] || data[11] || data[12])
                why = "not 8-bit grey or RGB or 4-bit indexed, deflate, filter method 0, no interlace";
            else channels = data[9] == 0 ? 1 : data[9] == 2 ? 3 : 0;  // 0: indexed, two pixels a byte
        } else if (memcmp(type, "PLTE", 4) == 0) {
            if (length == 0 || length % 3 != 0 || length > 3 * 16 || idat.used) why = "a PLTE of other than 1 to 16 colours, or after IDAT";
            else colours = (int)length / 3;
        } else if (memcmp(type, "IDAT", 4) == 0) {
            if (length) put_bytes(&idat, data, length);
        } else if (memcmp(type, "IEND", 4) == 0) {
            if (length != 0 || at + 12 != size) why = "IEND with data, or not at the end";
            saw_end = 1;
        }
        at += 12 + (size_t)length;
    }
    if (!why && !saw_end) why = "no IEND";
    if (!why && channels == 0 && colours == 0) why = "an indexed PNG without a PLTE";
    size_t row = 1 + (channels ? (size_t)width * channels : ((size_t)width + 1) / 2), expected = row * height;
    unsigned char *raw = NULL;
    if (!why && (idat.used < 6 || idat.bytes[0] != 0x78 || (idat.bytes[0] << 8 | idat.bytes[1]) % 31 != 0 || idat.bytes[1] & 0x20))
        why = "IDAT is not a zlib stream of deflate without a preset dictionary";
    if (!why) {
        raw = xmalloc(expected + 1);
        long got = inflate_blocks(idat.bytes + 2, idat.used - 6, raw, expected, &why);
        if (!why && got != (long)expected) why = "IDAT inflates to another size than the picture's";
        for (uint32_t y = 0; !why && y < height; y++)
            if (raw[y * row] != 0) why = "a row filter other than 0";
        for (size_t i = 0; !why && channels == 0 && i < expected; i++)
            if (i % row != 0 && ((raw[i] >> 4) >= colours || ((i % row) * 2 <= width && (raw[i] & 15) >= colours)))
                why = "a pixel whose colour is not in PLTE";
        if (!why && adler32_update(1, raw, expected) != read_u32(idat.bytes + idat.used - 4)) why = "zlib's Adler-32 is wrong";
    }
    free(raw);
    free(idat.bytes);
    return why;
}

static int passed = 0, failed = 0;

static void report(int ok, const char *what, const char *why) {
    if (ok) passed++, printf("ok %s\n", what);
    else failed++, printf("FAIL %s: %s\n", what, why);
}

static void check_file(const char *path, long width, long height) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        report(0, path, "cannot be opened");
        return;
    }
    ByteBuffer b = {0};
    unsigned char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) put_bytes(&b, chunk, n);
    fclose(f);
    const char *why = b.used ? check_png(b.bytes, b.used, (uint32_t)width, (uint32_t)height) : "empty";
    char what[1200];
    snprintf(what, sizeof what, "%s is a whole %ldx%ld PNG", path, width, height);
    report(why == NULL, what, why);
    free(b.bytes);
}

// figures.c's deflate, inflated back, on data of the kinds it meets.
static void self_test(void) {
    enum { MOST = 200000 };
    unsigned char *data = xmalloc(MOST), *back = xmalloc(MOST);
    Rng rng = rng_keyed(1, STREAM_CHECK, 0, 0);
    struct { const char *what; size_t size, pixel, row; int kind; } cases[] = {
        {"nothing", 0, 3, 100, 0},         {"one byte", 1, 3, 100, 0},        {"a run of 258", 258, 1, 300, 0},
        {"a run of 259", 259, 1, 300, 0},  {"a run of 70,000", 70000, 3, 901, 0}, {"noise", 50000, 3, 301, 1},
        {"rows that repeat", 60000, 3, 1201, 2}, {"a plot-like mix", MOST, 3, 2251, 3},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        for (size_t i = 0; i < cases[c].size; i++) {
            int kind = cases[c].kind;
            data[i] = kind == 0 ? 7 : kind == 1 ? (unsigned char)rng_below(&rng, 256)
                    : kind == 2 ? (unsigned char)(i % cases[c].row * 13 % 251)
                    : (unsigned char)(rng_below(&rng, 50) == 0 ? rng_below(&rng, 256) : i % 7 == 0 ? 255 : 200);
        }
        ByteBuffer z = deflate_fixed(data, cases[c].size, cases[c].pixel, cases[c].row);
        const char *why = NULL;
        long got = inflate_blocks(z.bytes + 2, z.used - 6, back, MOST, &why);
        int ok = !why && got == (long)cases[c].size && memcmp(data, back, cases[c].size) == 0 &&
                 adler32_update(1, data, cases[c].size) == read_u32(z.bytes + z.used - 4);
        char what[128];
        snprintf(what, sizeof what, "deflate_fixed round trip: %s (%zu bytes -> %zu)", cases[c].what, cases[c].size, z.used);
        report(ok, what, why ? why : "other bytes, or a wrong Adler-32");
        free(z.bytes);
    }
    free(data);
    free(back);
    int same = memcmp(LENGTH_BASE, length_base, sizeof length_base) == 0 &&
               memcmp(LENGTH_EXTRA, length_extra, sizeof length_extra) == 0 &&
               memcmp(DISTANCE_BASE, distance_base, sizeof distance_base) == 0 &&
               memcmp(DISTANCE_EXTRA, distance_extra, sizeof distance_extra) == 0;
    report(same, "figures.c's length and distance tables are RFC 1951's", "an entry differs");
}

int main(int argc, char **argv) {
    derive_tables();
    if (argc == 2 && strcmp(argv[1], "--self-test") == 0) self_test();
    else if (argc >= 4 && (argc - 1) % 3 == 0)
        for (int i = 1; i < argc; i += 3) check_file(argv[i], strtol(argv[i + 1], NULL, 10), strtol(argv[i + 2], NULL, 10));
    else {
        fprintf(stderr, "usage: %s FILE WIDTH HEIGHT ... | --self-test\n", argv[0]);
        return 2;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
