/* bf16_mcnemar.c - the same model and seed trained in fp32 and in bf16:
   their test accuracies and McNemar's exact test between them (book.md,
   chapter 8, part 2).

       make build/bf16_mcnemar
       build/bf16_mcnemar DATA FP32_DIR BF16_DIR MODEL SEED [MODEL SEED ...]

   What this is: for each pair, the best weights of the two runs' last
   checkpoints (DIR/MODEL-seedSEED-last.ckpt, as ./chapter8 --checkpoints
   DIR writes them), each tested on the 10,000 test images in the precision
   it was trained in; then the images only one of them gets right, and
   McNemar's p (compare.c's mcnemar_exact_p). What it is not: a comparison
   of more than two runs; ./chapter8 does that between models.
   Exit codes: 0 done, 2 usage, or the chapter's code for a data file or
   checkpoint it cannot use. */
#define main chapter8_main
#ifndef CHAPTER_FILE
#define CHAPTER_FILE "../chapters/chapter8.c"
#endif
#include CHAPTER_FILE
#undef main

// Tests one run's best weights; guesses gets each test image's class.
static int test_run(const char *dir, const char *model, int seed, int bf16, const FashionMnist *data,
                    unsigned char *guesses, double *accuracy, Error *err) {
    char path[1100];
    snprintf(path, sizeof path, "%s/%s-seed%d-last.ckpt", dir, model, seed);
    CheckpointFile f;
    if (open_checkpoint(path, &f, err)) return err->code;
    if (f.key.precision != (uint32_t)bf16) {
        checkpoint_file_free(&f);
        return fail(err, EXIT_CHECKPOINT_PRECISION, "%s: a run in %s, not %s", path, f.key.precision ? "bf16" : "fp32",
                    bf16 ? "bf16" : "fp32");
    }
    GemmContext *ctx = bf16 ? gemm_context_new_bf16(bf16_best_kernel(), online_cpus())
                            : gemm_context_new(gemm_best_kernel(), online_cpus());
    GraphClassifier net = build_model(model, (int)f.key.batch, (uint64_t)seed, KERNEL_BLOCKED, ctx);
    Model m = graph_model(&net, model);
    Options o = default_options();
    o.data_dir = "(the data given)";
    Result result;
    int status = evaluate_checkpoint(&m, &f, &o, data, &result, err);
    if (!status) {
        float *confidence = xmalloc((size_t)data->test.count * sizeof(float));
        *accuracy = evaluate_each(&m, &data->test, guesses, confidence).accuracy;
        free(confidence);
    }
    checkpoint_file_free(&f);
    graph_free(net.graph);
    return status;
}

int main(int argc, char **argv) {
    if (argc < 6 || (argc - 4) % 2) {
        fprintf(stderr, "usage: %s DATA FP32_DIR BF16_DIR MODEL SEED [MODEL SEED ...]\n", argv[0]);
        return 2;
    }
    FashionMnist data;
    Error err = {0};
    if (load_fashion_mnist(argv[1], &data, &err)) {
        fprintf(stderr, "%s: %s\n", argv[0], err.message);
        return err.code;
    }
    int n = data.test.count, status = 0;
    unsigned char *g32 = xmalloc((size_t)n), *g16 = xmalloc((size_t)n);
    printf("| model | seed | fp32 test accuracy %% | bf16 test accuracy %% | only fp32 right | only bf16 right | McNemar p |\n");
    printf("| --- | --: | --: | --: | --: | --: | --: |\n");
    for (int a = 4; a < argc && !status; a += 2) {
        const char *model = argv[a];
        int seed = atoi(argv[a + 1]);
        double acc32 = 0, acc16 = 0;
        status = test_run(argv[2], model, seed, 0, &data, g32, &acc32, &err);
        if (!status) status = test_run(argv[3], model, seed, 1, &data, g16, &acc16, &err);
        if (status) break;
        long b = 0, c = 0;
        for (int i = 0; i < n; i++) {
            int right32 = g32[i] == data.test.labels[i], right16 = g16[i] == data.test.labels[i];
            b += right32 && !right16, c += right16 && !right32;
        }
        printf("| %s | %d | %.2f | %.2f | %ld | %ld | %.3g |\n", model, seed, 100 * acc32, 100 * acc16, b, c,
               mcnemar_exact_p(b, c));
    }
    if (status) fprintf(stderr, "%s: %s\n", argv[0], err.message);
    free(g32), free(g16);
    free_fashion_mnist(&data);
    return status;
}
