/* test_erase.c - chapter 9's random erasing (--erase), on 4,000 draws: half
   of the images erased; what is erased is one rectangle, painted with
   values in [0, 1), of 2% to 40% of the image (to the rounding of its
   sides) with a height over width of 0.3 to 3.3; nothing outside it
   changes; the same key draws the same; areas and shapes spread over their
   ranges. */
#include "check.h"

#define main chapter9_main
#ifndef CHAPTER_FILE
#define CHAPTER_FILE "../chapters/chapter9.c"
#endif
#include CHAPTER_FILE
#undef main

int main(void) {
    section("random erasing");
    enum { DRAWS = 4000 };
    int erased = 0, rectangles = 1, in_range = 1, painted = 1, same = 1, tall = 0, wide = 0, small = 0, large = 0;
    for (int k = 0; k < DRAWS; k++) {
        float image[IMAGE_SIZE], again[IMAGE_SIZE];
        for (int i = 0; i < IMAGE_SIZE; i++) image[i] = again[i] = 2.0f;  // outside [0, 1): a change shows
        erase_image(image, 5, 1 + k % 7, k);
        erase_image(again, 5, 1 + k % 7, k);
        same &= memcmp(image, again, sizeof image) == 0;
        int top = IMAGE_ROWS, bottom = -1, left = IMAGE_COLS, right = -1, changed = 0;
        for (int r = 0; r < IMAGE_ROWS; r++)
            for (int c = 0; c < IMAGE_COLS; c++) {
                float v = image[r * IMAGE_COLS + c];
                if (v == 2.0f) continue;
                changed++;
                painted &= v >= 0 && v < 1;
                if (r < top) top = r;
                if (r > bottom) bottom = r;
                if (c < left) left = c;
                if (c > right) right = c;
            }
        if (!changed) continue;
        erased++;
        int h = bottom - top + 1, w = right - left + 1;
        rectangles &= changed == h * w;  // every pixel of its bounding box: one rectangle
        double area = (double)h * w / IMAGE_SIZE, ratio = (double)h / w;
        // Each side is rounded, so the area may miss its range by a side's half pixel.
        in_range &= area >= 0.02 * 0.6 && area <= 0.4 * 1.2 && ratio >= 0.3 * 0.8 && ratio <= 3.34 * 1.25;
        tall += ratio > 2, wide += ratio < 0.5, small += area < 0.08, large += area > 0.3;
    }
    CHECK(same);
    CHECK(erased > DRAWS * 0.46 && erased < DRAWS * 0.54);
    CHECK(rectangles);
    CHECK(painted);
    CHECK(in_range);
    CHECK(tall > 100 && wide > 100 && small > 100 && large > 100);
    // Another seed, another rectangle.
    float a[IMAGE_SIZE], b[IMAGE_SIZE];
    int differ = 0;
    for (int k = 0; k < 20; k++) {
        memset(a, 0, sizeof a), memset(b, 0, sizeof b);
        erase_image(a, 5, 1, k), erase_image(b, 6, 1, k);
        differ += memcmp(a, b, sizeof a) != 0;
    }
    CHECK(differ >= 10);
    printf("%d of %d erased\n", erased, DRAWS);
    return check_summary();
}
