/* ----------------------------------------------------------------------------
   The program. */

enum { CONTINUE = -1 };

// Parses the options and loads the data. Returns CONTINUE when there is work
// to do, otherwise the exit code (0 after --help).
int begin(int argc, char **argv, Options *options, FashionMnist *data) {
    Error err = {0};
    if (parse_options(argc, argv, options, &err)) {
        fprintf(stderr, "%s: %s\n\n", argv[0], err.message);
        print_usage(stderr, argv[0]);
        return err.code;
    }
    if (options->help) {
        print_usage(stdout, argv[0]);
        return 0;
    }
//@ from 1 to 8
    if (load_fashion_mnist(options->data_dir, data, &err)) {
//@ end
//@ from 9
    // A search must not see the test set, so it is not even loaded (tune.c).
    if ((options->search ? load_training_split : load_fashion_mnist)(options->data_dir, data, &err)) {
//@ end
        fprintf(stderr, "%s: %s\n", argv[0], err.message);
        return err.code;
    }
//@ from 2 to 8
    printf("Fashion-MNIST: %d training, %d validation, %d test images\n",
           data->train.count, data->validation.count, data->test.count);
//@ end
//@ from 9
    if (options->search)
        printf("Fashion-MNIST: %d training, %d validation images (the test set is loaded after the search)\n",
               data->train.count, data->validation.count);
    else
        printf("Fashion-MNIST: %d training, %d validation, %d test images\n",
               data->train.count, data->validation.count, data->test.count);
//@ end
    return CONTINUE;
}

//@ from 1 to 1
int main(int argc, char **argv) {
    Options options;
    FashionMnist data;
    int status = begin(argc, argv, &options, &data);
    if (status != CONTINUE) return finish_output(argv[0], status);

    printf("Fashion-MNIST from %s/\n\nshapes:\n", options.data_dir);
    print_split_shape("train", &data.train);
    print_split_shape("validation", &data.validation);
    print_split_shape("test", &data.test);
    print_class_counts(&data);

    double mean, std;
    pixel_statistics(&data.train, &mean, &std);
    printf("\npixels of the training split: mean %.4f, standard deviation %.4f\n", mean, std);
    if (mean < 0.2)
        printf("  (Fashion-MNIST's mean is about 0.286; MNIST digits give 0.131. "
               "Are these the right files?)\n");

    printf("\nthe first training images:\n\n");
    int first[3] = {0, 1, 2};
    print_images_as_text(&data.train, first, data.train.count < 3 ? data.train.count : 3);

    Error err = {0};
    const char *grid = "plots/fashion_samples.pgm";
    if (write_sample_grid(&data.train, 8, grid, &err) == 0)
        printf("\nwrote %s (eight training images of each class)\n", grid);
    else
        fprintf(stderr, "%s: %s\n", argv[0], err.message);
    free_fashion_mnist(&data);
    return finish_output(argv[0], err.code);
}
//@ end
//@ from 2 to 2
int main(int argc, char **argv) {
    Options options;
    FashionMnist data;
    int status = begin(argc, argv, &options, &data);
    if (status != CONTINUE) return finish_output(argv[0], status);

    Ann ann = ann_new(options.batch, (uint64_t)options.seed);
    Model model = ann_model(&ann);
    History *history = NULL;
    Result result;
    Error err = {0};
    status = fit_and_test(&model, &data, &options, &history, &result, &err);
    if (status) fprintf(stderr, "%s: %s\n", argv[0], err.message);
    else if (!options.overfit) print_result(&result);

    history_free(history);
    ann_free(&ann);
    free_fashion_mnist(&data);
    return finish_output(argv[0], status);
}
//@ end
//@ from 3 to 3
int main(int argc, char **argv) {
    Options options;
    FashionMnist data;
    int status = begin(argc, argv, &options, &data);
    if (status != CONTINUE) return finish_output(argv[0], status);

    // Eight images, or all there are when a small --data set has fewer.
    int check_batch = data.train.count < 8 ? data.train.count : 8;
    printf("\ngradients of the ANN on %d training image%s, three ways:\n", check_batch, check_batch == 1 ? "" : "s");
    if (!check_ann_gradients(&data.train, check_batch, (uint64_t)options.seed, 50, 1e-3)) {
        fprintf(stderr, "%s: the gradient check failed: the engine, chapter 2 and the finite "
                "differences disagree (see the table above)\n", argv[0]);
        free_fashion_mnist(&data);
        return finish_output(argv[0], EXIT_BAD_GRADIENT);
    }

    GraphClassifier ann = ann_graph(options.batch, (uint64_t)options.seed);
    printf("\nthe ANN as a graph, in the order it runs:\n");
    graph_print(ann.graph);
    Model model = graph_model(&ann, "ann");
    History *history = NULL;
    Result result;
    Error err = {0};
    status = fit_and_test(&model, &data, &options, &history, &result, &err);
    if (!status && !options.overfit && !options.no_compare)
        status = compare_with_hand_written(&data, &options, history, &err);
    if (status) fprintf(stderr, "%s: %s\n", argv[0], err.message);
    else if (!options.overfit) print_result(&result);

    history_free(history);
    graph_free(ann.graph);
    free_fashion_mnist(&data);
    return finish_output(argv[0], status);
}
//@ end
//@ from 4
/* What --kernel and --threads ask for: the kind, and for the blocked GEMM a
   context (micro-kernel, threads, packing buffers). A micro-kernel the CPU
   lacks is refused here, before it could run an instruction it lacks. */
int choose_kernel(const Options *o, KernelKind *kind, GemmContext **gemm, Error *err) {
    *gemm = NULL;
    *kind = strcmp(o->kernel, "naive") == 0 ? KERNEL_NAIVE : strcmp(o->kernel, "im2col") == 0 ? KERNEL_IM2COL
                                                                                             : KERNEL_BLOCKED;
    if (*kind != KERNEL_BLOCKED) {
        if (o->threads > 1) printf("note: --threads has no effect on --kernel %s, a one-thread reference\n", o->kernel);
        return 0;
    }
//@ from 8
    if (strcmp(o->precision, "bf16") == 0) {  // the bf16 kernels have the same names, and one more
        const Bf16Kernel *b = strcmp(o->kernel, "auto") == 0 ? bf16_best_kernel() : bf16_kernel_by_name(o->kernel);
        if (!bf16_kernel_supported(b))
            return fail(err, EXIT_NO_KERNEL, "--kernel %s with --precision bf16: %s. Use --kernel auto, which "
                        "picks the fastest bf16 kernel this CPU runs (here: %s).", o->kernel, b ?
                        "this CPU does not have the instructions it needs" : "this build has no such kernel (the "
                        "SIMD kernels exist only in x86-64 builds)", bf16_best_kernel()->name);
        *gemm = gemm_context_new_bf16(b, o->threads ? o->threads : online_cpus());
        return 0;
    }
//@ end
    const GemmKernel *k = strcmp(o->kernel, "auto") == 0 ? gemm_best_kernel() : gemm_kernel_by_name(o->kernel);
    if (!gemm_kernel_supported(k))
        return fail(err, EXIT_NO_KERNEL, "--kernel %s: %s. Use --kernel auto, which picks the widest kernel "
                    "this CPU runs (here: %s).", o->kernel, k ? "this CPU does not have the instructions it needs"
                    : "this build has no such kernel (the SIMD kernels exist only in x86-64 builds)",
                    gemm_best_kernel()->name);
    *gemm = gemm_context_new(k, o->threads ? o->threads : online_cpus());
    return 0;
}

// Everything before the models: the options, the kernel and the data.
// Returns CONTINUE when there is a model to train, else the exit code.
int prepare(int argc, char **argv, Options *options, FashionMnist *data, KernelKind *kernel, GemmContext **gemm) {
    Error err = {0};
    *kernel = KERNEL_NAIVE;
    *gemm = NULL;
    // The kernel is asked for first, so a --kernel this CPU lacks is refused
    // before hundreds of megabytes of images are read (begin() parses the
    // options again, and reports any other mistake in them).
    if (parse_options(argc, argv, options, &err) == 0 && !options->help &&
        choose_kernel(options, kernel, gemm, &err)) {
        fprintf(stderr, "%s: %s\n", argv[0], err.message);
        return err.code;
    }
    int status = begin(argc, argv, options, data);
    if (status != CONTINUE) gemm_context_free(*gemm);
    return status;
}

//@ from 4 to 6
int main(int argc, char **argv) {
    Options options;
    FashionMnist data;
    Error err = {0};
    KernelKind kernel;
    GemmContext *gemm;
    int status = prepare(argc, argv, &options, &data, &kernel, &gemm);
    if (status != CONTINUE) return finish_output(argv[0], status);

//@ from 6
    // --evaluate builds the model its checkpoint names, whatever --model says.
    CheckpointFile checkpoint = {0};
    if (options.evaluate && open_checkpoint(options.evaluate, &checkpoint, &err)) {
        fprintf(stderr, "%s: %s\n", argv[0], err.message);
        gemm_context_free(gemm);
        free_fashion_mnist(&data);
        return finish_output(argv[0], err.code);
    }
    if (options.evaluate) options.model = checkpoint.key.model;
//@ end
    GraphClassifier net = build_model(options.model, options.batch, (uint64_t)options.seed, kernel, gemm);
    print_model_summary(&net, options.model);
    if (gemm) printf("matrix multiplies: the blocked GEMM, %s micro-kernel, %d thread%s\n\n", gemm->kernel->name,
                     gemm->workers->threads, gemm->workers->threads == 1 ? "" : "s");
    else printf("matrix multiplies: %s (a reference: one thread, no SIMD beyond what the compiler finds)\n\n",
                options.kernel);
    Model model = graph_model(&net, options.model);
    History *history = NULL;
    Result result;
//@ from 4 to 5
    status = fit_and_test(&model, &data, &options, &history, &result, &err);
//@ end
//@ from 6
    if (options.evaluate) {
        status = evaluate_checkpoint(&model, &checkpoint, &options, &data, &result, &err);
        if (!status) test_model(&model, &data.test, &result);
        checkpoint_file_free(&checkpoint);
    } else {
        status = fit_and_test(&model, &data, &options, &history, &result, &err);
    }
//@ end
    if (status) fprintf(stderr, "%s: %s\n", argv[0], err.message);
    else if (!options.overfit) {
        print_peak_memory();
        print_result(&result);
    }

    history_free(history);
    graph_free(net.graph);
    free_fashion_mnist(&data);
    return finish_output(argv[0], status);
}
//@ end
//@ from 7
int main(int argc, char **argv) {
    Options options;
    FashionMnist data;
    KernelKind kernel;
    GemmContext *gemm;
    int status = prepare(argc, argv, &options, &data, &kernel, &gemm);
    if (status != CONTINUE) return finish_output(argv[0], status);
//@ from 7 to 7
    if (gemm) printf("matrix multiplies: the blocked GEMM, %s micro-kernel, %d thread%s\n\n", gemm->kernel->name,
                     gemm->workers->threads, gemm->workers->threads == 1 ? "" : "s");
//@ end
//@ from 8
    if (gemm) printf("matrix multiplies: the blocked GEMM in %s, %s micro-kernel, %d thread%s\n\n",
                     gemm->bf16 ? "bf16" : "fp32", gemm->bf16 ? gemm->bf16->name : gemm->kernel->name,
                     gemm->workers->threads, gemm->workers->threads == 1 ? "" : "s");
//@ end
    Error err = {0};
//@ from 7 to 8
    status = compare_models(&options, &data, kernel, gemm, &err);
//@ end
//@ from 9
    status = options.transfer ? transfer_experiment(&options, &data, kernel, gemm, &err)
                              : narrow_data(&options, &data, &err);
    if (!status && !options.transfer)
        status = options.search ? search_and_test(&options, &data, kernel, gemm, &err)
                                : compare_models(&options, &data, kernel, gemm, &err);
//@ end
    if (status) fprintf(stderr, "%s: %s\n", argv[0], err.message);
    gemm_context_free(gemm);
    free_fashion_mnist(&data);
    return finish_output(argv[0], status);
}
//@ end
//@ end
