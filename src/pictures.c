//@ from 1 to 3 and from 7
/* ----------------------------------------------------------------------------
   Pictures: images in the terminal and in PGM/PPM files.

   What this is: the smallest way to look at data without a library. PGM
   (grey) and PPM (colour) are a text header and raw bytes, which every image
   viewer and `convert` read; a 5x7 pixel font puts labels on them.
   What it is not: a plotting library. Curves are left to gnuplot (chapter 7).

   A binary PGM is "P5\n<width> <height>\n255\n" followed by width*height
   bytes, row by row; a PPM is the same with "P6" and three bytes (R,G,B)
   per pixel. */

typedef struct {
    int width, height, channels;  // channels: 1 grey (PGM), 3 colour (PPM)
    unsigned char *pixels;        // (height, width, channels)
} Picture;

Picture picture_new(int width, int height, int channels, unsigned char background) {
    Picture p = {.width = width, .height = height, .channels = channels};
    size_t size = (size_t)width * height * channels;
    p.pixels = xmalloc(size);
    memset(p.pixels, background, size);
    return p;
}

void picture_free(Picture *p) {
    free(p->pixels);
    p->pixels = NULL;
}

// Sets a square of scale x scale pixels to one colour (grey: colour[0]).
void picture_put(Picture *p, int x, int y, int scale, const unsigned char *colour) {
    for (int dy = 0; dy < scale; dy++)
        for (int dx = 0; dx < scale; dx++) {
            int px = x + dx, py = y + dy;
            if (px < 0 || py < 0 || px >= p->width || py >= p->height) continue;
            memcpy(p->pixels + ((size_t)py * p->width + px) * p->channels, colour, p->channels);
        }
}

// Draws a 28x28 image with pixels in [0,1], each pixel as scale x scale.
void picture_draw_image(Picture *p, int x, int y, int scale, const float *image) {  // (28,28)
    for (int r = 0; r < IMAGE_ROWS; r++)
        for (int c = 0; c < IMAGE_COLS; c++) {
            unsigned char v = (unsigned char)lroundf(255.0f * image[r * IMAGE_COLS + c]);
            unsigned char colour[3] = {v, v, v};
            picture_put(p, x + c * scale, y + r * scale, scale, colour);
        }
}

/* A 5x7 font: seven rows per character, the five low bits of each row are
   its pixels, most significant on the left. Lower case is drawn as upper. */
enum { GLYPH_WIDTH = 5, GLYPH_HEIGHT = 7, GLYPH_ADVANCE = 6 };
static const unsigned char FONT[128][GLYPH_HEIGHT] = {
    ['A'] = {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}, ['B'] = {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E},
    ['C'] = {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E}, ['D'] = {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C},
    ['E'] = {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F}, ['F'] = {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10},
    ['G'] = {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F}, ['H'] = {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11},
    ['I'] = {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}, ['J'] = {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C},
    ['K'] = {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11}, ['L'] = {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F},
    ['M'] = {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11}, ['N'] = {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11},
    ['O'] = {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}, ['P'] = {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10},
    ['Q'] = {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D}, ['R'] = {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11},
    ['S'] = {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E}, ['T'] = {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04},
    ['U'] = {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}, ['V'] = {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04},
    ['W'] = {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A}, ['X'] = {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11},
    ['Y'] = {0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04}, ['Z'] = {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F},
    ['0'] = {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}, ['1'] = {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E},
    ['2'] = {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}, ['3'] = {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E},
    ['4'] = {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}, ['5'] = {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E},
    ['6'] = {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}, ['7'] = {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08},
    ['8'] = {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}, ['9'] = {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C},
    ['-'] = {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00}, ['/'] = {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00},
    ['.'] = {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C}, [':'] = {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00},
    ['%'] = {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03}, ['='] = {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00},
//@ from 7
    [','] = {0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08}, ['\''] = {0x0C, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00},
    ['('] = {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}, [')'] = {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08},
    ['+'] = {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00}, ['>'] = {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08},
    [';'] = {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x04, 0x08},
//@ end
};

// Draws text with its top-left corner at (x, y); each font pixel is
// scale x scale. Returns the x just after the last character.
int picture_draw_text(Picture *p, int x, int y, int scale, const char *text,
                      const unsigned char *colour) {
    for (; *text; text++, x += GLYPH_ADVANCE * scale) {
        unsigned char ch = (unsigned char)*text;
        if (ch >= 'a' && ch <= 'z') ch = (unsigned char)(ch - 'a' + 'A');
        if (ch >= 128) continue;
        for (int row = 0; row < GLYPH_HEIGHT; row++)
            for (int col = 0; col < GLYPH_WIDTH; col++)
                if (FONT[ch][row] >> (GLYPH_WIDTH - 1 - col) & 1)
                    picture_put(p, x + col * scale, y + row * scale, scale, colour);
    }
    return x;
}

int picture_write(const Picture *p, const char *path, Error *err) {
    char header[64];
    int header_size = snprintf(header, sizeof header, "P%d\n%d %d\n255\n",
                               p->channels == 1 ? 5 : 6, p->width, p->height);
    size_t body = (size_t)p->width * p->height * p->channels;
    unsigned char *file = xmalloc(header_size + body);
    memcpy(file, header, header_size);
    memcpy(file + header_size, p->pixels, body);
    int status = write_file_atomically(path, file, header_size + body, err);
    free(file);
    return status;
}

//@ end
//@ from 1 to 3
/* In the terminal: one character per pixel pair. Two image rows are averaged
   into one text row, because a character cell is about twice as tall as it is
   wide; the ramp runs from dark (space) to bright (@). */
void print_images_as_text(const Dataset *d, const int *items, int n) {
    static const char RAMP[] = " .:-=+*#%@";
    const int levels = (int)sizeof RAMP - 1;
    for (int i = 0; i < n; i++)
        printf("%-*.*s", IMAGE_COLS + 2, IMAGE_COLS, CLASS_NAMES[d->labels[items[i]]]);
    printf("\n");
    for (int r = 0; r < IMAGE_ROWS; r += 2) {
        for (int i = 0; i < n; i++) {
            const float *image = d->images + (size_t)items[i] * IMAGE_SIZE;  // (28,28)
            for (int c = 0; c < IMAGE_COLS; c++) {
                float v = 0.5f * (image[r * IMAGE_COLS + c] + image[(r + 1) * IMAGE_COLS + c]);
                int level = (int)(v * levels);
                putchar(RAMP[level < levels ? level : levels - 1]);
            }
            printf("  ");
        }
        printf("\n");
    }
}
//@ end
