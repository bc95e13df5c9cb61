//@ from 7
/* ----------------------------------------------------------------------------
   PNG without zlib (book.md 7.9).

   What this is: the smallest honest PNG writer, so that a browser, a
   Markdown viewer and book.md can show the PPM pictures chapter 7 draws.
   What it is not: a compressor. The pixels are stored as they are, in
   deflate's "stored" blocks, so a PNG is a few hundred bytes larger than
   its PPM; the format allows it, and every decoder reads it.

   A PNG is an 8-byte signature and then chunks. Each chunk is

     length u32 (big-endian, of the data only)   type, four letters
     data                                        CRC-32 of type and data

   IHDR says width, height, 8 bits per sample, colour type 0 (grey) or 2
   (RGB); IDAT holds the pixels; IEND ends the file. The pixels, row by
   row, each row led by a filter byte (0: none), form a zlib stream:

     0x78 0x01 (deflate, 32K window, no preset dictionary; 0x7801 is a
     multiple of 31, the header's own check), then deflate blocks, then
     Adler-32 of the uncompressed bytes (big-endian).

   A stored deflate block is one byte (1 for the last block, 0 before),
   LEN and NLEN = ~LEN (16 bits each, little-endian: deflate's order, not
   PNG's), then LEN bytes as they are, at most 65,535. */

enum { STORED_BLOCK_MAX = 65535 };

// Adler-32 (zlib's check): two sums modulo 65,521, the largest prime
// below 2^16; b, the sum of the running sums, depends on the bytes' order.
uint32_t adler32_update(uint32_t adler, const unsigned char *bytes, size_t size) {
    uint32_t a = adler & 0xFFFF, b = adler >> 16;
    for (size_t i = 0; i < size; i++) {
        a = (a + bytes[i]) % 65521;
        b = (b + a) % 65521;
    }
    return b << 16 | a;
}

void put_u32_big_endian(ByteBuffer *b, uint32_t value) {
    unsigned char bytes[4] = {(unsigned char)(value >> 24), (unsigned char)(value >> 16),
                              (unsigned char)(value >> 8), (unsigned char)value};
    put_bytes(b, bytes, 4);
}

void put_png_chunk(ByteBuffer *file, const char type[4], const unsigned char *data, size_t size) {
    put_u32_big_endian(file, (uint32_t)size);
    size_t start = file->used;
    put_bytes(file, type, 4);
    if (size) put_bytes(file, data, size);
    put_u32_big_endian(file, crc32_update(0, file->bytes + start, 4 + size));
}

// The zlib stream of the picture's rows, each led by filter byte 0.
ByteBuffer png_pixel_stream(const Picture *p) {
    size_t row_bytes = (size_t)p->width * p->channels, raw_size = (row_bytes + 1) * p->height;
    unsigned char *raw = xmalloc(raw_size);  // (height, 1 + width * channels)
    for (int y = 0; y < p->height; y++) {
        raw[y * (row_bytes + 1)] = 0;
        memcpy(raw + y * (row_bytes + 1) + 1, p->pixels + y * row_bytes, row_bytes);
    }
    ByteBuffer z = {0};
    put_bytes(&z, "\x78\x01", 2);
    size_t at = 0;
    do {
        size_t length = raw_size - at < STORED_BLOCK_MAX ? raw_size - at : STORED_BLOCK_MAX;
        unsigned char header[5] = {at + length == raw_size, (unsigned char)length, (unsigned char)(length >> 8),
                                   (unsigned char)~length, (unsigned char)(~length >> 8)};
        put_bytes(&z, header, 5);
        put_bytes(&z, raw + at, length);
        at += length;
    } while (at < raw_size);
    put_u32_big_endian(&z, adler32_update(1, raw, raw_size));
    free(raw);
    return z;
}

ByteBuffer png_bytes(const Picture *p) {
    require(p->channels == 1 || p->channels == 3, "a PNG of %d channels", p->channels);
    ByteBuffer file = {0}, header = {0};
    put_bytes(&file, "\x89PNG\r\n\x1a\n", 8);
    put_u32_big_endian(&header, (uint32_t)p->width);
    put_u32_big_endian(&header, (uint32_t)p->height);
    unsigned char depth_and_kind[5] = {8, p->channels == 1 ? 0 : 2, 0, 0, 0};  // bits, colour type, deflate, filters, no interlace
    put_bytes(&header, depth_and_kind, 5);
    put_png_chunk(&file, "IHDR", header.bytes, header.used);
    ByteBuffer pixels = png_pixel_stream(p);
    put_png_chunk(&file, "IDAT", pixels.bytes, pixels.used);
    put_png_chunk(&file, "IEND", NULL, 0);
    free(header.bytes);
    free(pixels.bytes);
    return file;
}
//@ end
