//@ from 1 to 3
/* ----------------------------------------------------------------------------
   A first look at the data: shapes, class counts, pixel statistics, a few
   images in the terminal and a labelled sample grid on disk.

   What this is: the checks to make before training anything, because a model
   trained on the wrong data fails quietly.
   What it is not: a data pipeline; nothing here changes the data. */

void print_split_shape(const char *name, const Dataset *d) {
    printf("  %-10s images (%d, %d) float in [0,1]   labels (%d,) 0-9   targets (%d, %d) one-hot\n",
           name, d->count, IMAGE_SIZE, d->count, d->count, NUM_CLASSES);
}

void count_classes(const Dataset *d, int *counts) {  // counts: (10)
    memset(counts, 0, NUM_CLASSES * sizeof(int));
    for (int i = 0; i < d->count; i++) counts[d->labels[i]]++;
}

void print_class_counts(const FashionMnist *data) {
    const Dataset *splits[] = {&data->train, &data->validation, &data->test};
    const char *names[] = {"train", "validation", "test"};
    printf("\nimages per class:\n  %-13s %8s %11s %8s\n", "class", names[0], names[1], names[2]);
    int counts[3][NUM_CLASSES];
    for (int s = 0; s < 3; s++) count_classes(splits[s], counts[s]);
    for (int k = 0; k < NUM_CLASSES; k++)
        printf("  %d %-11s %8d %11d %8d\n", k, CLASS_NAMES[k], counts[0][k], counts[1][k], counts[2][k]);
}

// Mean and standard deviation of all pixels, summed in double: a float sum of
// 42 million values would lose the low digits long before the end.
void pixel_statistics(const Dataset *d, double *mean, double *std) {
    double sum = 0, sum_squares = 0;
    size_t n = (size_t)d->count * IMAGE_SIZE;
    for (size_t i = 0; i < n; i++) {
        sum += d->images[i];
        sum_squares += (double)d->images[i] * d->images[i];
    }
    *mean = n ? sum / n : 0;
    *std = n ? sqrt(fmax(0, sum_squares / n - *mean * *mean)) : 0;
}

/* Welford's running mean and variance: one value at a time, in one pass.
   The sum of squares above is fine for pixels in [0, 1], but its
   sum_squares / n - mean^2 subtracts two nearly equal numbers when the
   mean is large against the spread, and loses every digit; Welford's
   update never forms them. `m2` is the sum of the squared deviations from
   the mean so far. */
typedef struct {
    long count;
    double mean, m2;
} RunningStats;

void running_stats_add(RunningStats *s, double x) {
    //@ exercise 1 welford: count x, move the mean towards it, and add x's share to m2 (Welford's update).
    double before = x - s->mean;
    s->count += 1;
    s->mean += before / (double)s->count;
    s->m2 += before * (x - s->mean);
    //@ stub
    (void)s, (void)x;
    //@ end
}

// The variance of the values so far, divided by their count as
// pixel_statistics does (0 for none).
double running_stats_variance(const RunningStats *s) { return s->count > 0 ? s->m2 / (double)s->count : 0; }

// The first `per_class` training images of every class, one row per class,
// each row headed by the class name.
int write_sample_grid(const Dataset *d, int per_class, const char *path, Error *err) {
    const int scale = 2, cell = (IMAGE_COLS + 2) * scale, label_width = 12 * GLYPH_ADVANCE * scale;
    Picture p = picture_new(label_width + per_class * cell, NUM_CLASSES * cell, 1, 0);
    const unsigned char white[1] = {255};
    for (int k = 0; k < NUM_CLASSES; k++) {
        int y = k * cell;
        picture_draw_text(&p, scale, y + (cell - GLYPH_HEIGHT * scale) / 2, scale, CLASS_NAMES[k], white);
        for (int i = 0, shown = 0; i < d->count && shown < per_class; i++)
            if (d->labels[i] == k)
                picture_draw_image(&p, label_width + shown++ * cell + scale, y + scale, scale,
                                   d->images + (size_t)i * IMAGE_SIZE);
    }
    int status = picture_write(&p, path, err);
    picture_free(&p);
    return status;
}
//@ end
