/* test_transfer.c - chapter 9: what transfer learning is built from.
   --freeze on the deeper CNN: the parameters up to the last convolution
   and their batch norms' running statistics bit for bit unchanged by
   training steps, the rest changed, the frozen count what the layers add
   up to, and no backward pass through a frozen node. The subsets of the
   classes: only those classes, the first N of each, a small training split
   repeated to a full epoch, the validation and test splits whole.
   --classes parsed and refused. */
#include "check.h"

#define main chapter9_main
#ifndef CHAPTER_FILE
#define CHAPTER_FILE "../chapters/chapter9.c"
#endif
#include CHAPTER_FILE
#undef main

static Node *node_labelled(Graph *g, const char *label) {
    for (int i = 0; i < g->count; i++)
        if (g->nodes[i].label && strcmp(g->nodes[i].label, label) == 0) return &g->nodes[i];
    return NULL;
}

static void test_freeze(void) {
    section("--freeze: the features stay as they are, the rest trains");
    enum { B = 6 };
    GraphClassifier net = build_model("deeper", B, 3, KERNEL_NAIVE, NULL);
    Graph *g = net.graph;
    size_t frozen = freeze_features(g);
    // kernel1-4 and bias1-4, and batch norm 1-3's gamma and beta: made before conv 4.
    size_t expected = (9 * 1 * 32 + 32) + (9 * 32 * 32 + 32) + (9 * 32 * 64 + 64) + (9 * 64 * 64 + 64) + 2 * (32 + 32 + 64);
    CHECK_EQ_INT(frozen, expected);
    CHECK(node_labelled(g, "bn4.gamma") && !node_labelled(g, "bn4.gamma")->frozen);
    CHECK(node_labelled(g, "kernel4") && node_labelled(g, "kernel4")->frozen);
    Model m = graph_model(&net, "deeper");
    CHECK_EQ_INT(m.frozen, expected);
    // Batch norm 1-3's running statistics come first in the state; 4 and 5's after.
    size_t frozen_state = 2 * (32 + 32 + 64);
    float *params0 = malloc(g->param_count * sizeof(float)), *state0 = malloc(g->state_count * sizeof(float));
    memcpy(params0, g->params, g->param_count * sizeof(float));
    memcpy(state0, g->state, g->state_count * sizeof(float));
    float images[B * IMAGE_SIZE], targets[B * NUM_CLASSES] = {0};
    Rng rng = rng_new(9, STREAM_CHECK);
    for (int i = 0; i < B * IMAGE_SIZE; i++) images[i] = rng_uniform(&rng);
    for (int i = 0; i < B; i++) targets[i * NUM_CLASSES + i % NUM_CLASSES] = 1;
    Optimizer opt = optimizer_new(OPTIMIZER_ADAM, 0.01f, m.count);
    opt.frozen = m.frozen, opt.weight_decay = 0.1f;  // the decay must skip them too
    float probs[B * NUM_CLASSES];
    for (int step = 0; step < 3; step++) {
        Batch batch = {.images = images, .targets = targets, .count = B, .step = step};
        graph_zero_grad(g);
        m.compute_gradients(m.net, &batch, probs);
        optimizer_update(&opt, m.params, m.grads, m.count);
    }
    CHECK(memcmp(g->params, params0, frozen * sizeof(float)) == 0);
    CHECK(memcmp(g->state, state0, frozen_state * sizeof(float)) == 0);
    int rest_changed = 0, state_changed = 0;
    for (size_t i = frozen; i < g->param_count; i++) rest_changed += g->params[i] != params0[i];
    for (size_t i = frozen_state; i < g->state_count; i++) state_changed += g->state[i] != state0[i];
    CHECK(rest_changed > (int)(g->param_count - frozen) / 2);
    CHECK(state_changed > 0);  // batch norm 4 and 5 learn their statistics
    // No backward through the frozen part: its parameters' gradients stay zero.
    int nonzero = 0;
    for (size_t i = 0; i < frozen; i++) nonzero += g->grads[i] != 0;
    CHECK_EQ_INT(nonzero, 0);
    // Unfrozen, the same steps move the features.
    GraphClassifier free_net = build_model("deeper", B, 3, KERNEL_NAIVE, NULL);
    Model fm = graph_model(&free_net, "deeper");
    Optimizer fopt = optimizer_new(OPTIMIZER_ADAM, 0.01f, fm.count);
    Batch batch = {.images = images, .targets = targets, .count = B, .step = 0};
    graph_zero_grad(free_net.graph);
    fm.compute_gradients(fm.net, &batch, probs);
    optimizer_update(&fopt, fm.params, fm.grads, fm.count);
    CHECK(memcmp(free_net.graph->params, params0, frozen * sizeof(float)) != 0);
    optimizer_free(&opt), optimizer_free(&fopt);
    graph_free(g), graph_free(free_net.graph);
    free(params0), free(state0);
}

// Every model with a convolution: what comes before the last one is a
// prefix of the parameters (freeze_features stops the program if not),
// and what follows it includes the classifier.
static void test_freeze_every_model(void) {
    section("--freeze on every model with a convolution");
    static const char *const MODELS[] = {"basic", "deeper", "deeper-nodropout", "deeper-nobn", "resnet", "plain",
                                         "resnet8", "plain8", "separable"};
    for (size_t k = 0; k < sizeof MODELS / sizeof MODELS[0]; k++) {
        GraphClassifier net = build_model(MODELS[k], 2, 1, KERNEL_NAIVE, NULL);
        size_t frozen = freeze_features(net.graph);
        Node *weight, *bias;
        classifier_parameters(&net, &weight, &bias);
        if (!CHECK(frozen > 0 && !weight->frozen && weight->value - net.graph->params >= (ptrdiff_t)frozen))
            printf("     %s: %zu frozen\n", MODELS[k], frozen);
        graph_free(net.graph);
    }
}

static void test_subsets(void) {
    section("the subsets of the classes");
    enum { TRAIN = 300, VALIDATION = 100, TEST = 80 };
    FashionMnist all = {0};
    all.all_training = dataset_new(TRAIN + VALIDATION);
    all.test = dataset_new(TEST);
    for (int i = 0; i < TRAIN + VALIDATION; i++) all.all_training.labels[i] = (unsigned char)(i * 3 % NUM_CLASSES);
    for (int i = 0; i < TEST; i++) all.test.labels[i] = (unsigned char)(i % NUM_CLASSES);
    for (int i = 0; i < (TRAIN + VALIDATION) * IMAGE_SIZE; i++) all.all_training.images[i] = (float)(i / IMAGE_SIZE);
    for (int i = 0; i < TEST * IMAGE_SIZE; i++) all.test.images[i] = (float)(i / IMAGE_SIZE);
    memset(all.all_training.targets, 0, (TRAIN + VALIDATION) * NUM_CLASSES * sizeof(float));
    all.train = dataset_slice(&all.all_training, 0, TRAIN);
    all.validation = dataset_slice(&all.all_training, TRAIN, VALIDATION);
    FashionMnist cut;
    Error err = {0};
    unsigned classes = 1u << 5 | 1u << 8;
    CHECK(fashion_mnist_subset(&all, classes, 4, &cut, &err) == 0);
    // 4 images of each of 2 classes, 8, repeated to 5000: 625 copies.
    CHECK_EQ_INT(cut.train.count, 5000);
    int right = 1;
    for (int i = 0; i < cut.train.count; i++) {
        int k = i % 8;  // the 8: the first 4 of class 5 and of class 8, in order
        right &= cut.train.labels[i] == cut.train.labels[k] && cut.train.images[(size_t)i * IMAGE_SIZE] ==
                                                                   cut.train.images[(size_t)k * IMAGE_SIZE];
        right &= cut.train.labels[i] == 5 || cut.train.labels[i] == 8;
    }
    CHECK(right);
    // The first 8: training items 5, 15, 25, 35 (class 5) and 6, 16, 26, 36 (class 8: 6 * 3 = 18), in order.
    float first[8];
    for (int i = 0; i < 8; i++) first[i] = cut.train.images[(size_t)i * IMAGE_SIZE];
    CHECK(first[0] == 5 && first[1] == 6 && first[2] == 15 && first[3] == 16 && first[6] == 35 && first[7] == 36);
    CHECK_EQ_INT(cut.validation.count, 20);  // all of the 2 classes: 10 each in 100
    CHECK_EQ_INT(cut.test.count, 16);        // 8 each in 80
    int only = 1;
    for (int i = 0; i < cut.validation.count; i++) only &= cut.validation.labels[i] == 5 || cut.validation.labels[i] == 8;
    for (int i = 0; i < cut.test.count; i++) only &= cut.test.labels[i] == 5 || cut.test.labels[i] == 8;
    CHECK(only);
    // The validation split follows the training split in one block, as load_fashion_mnist leaves it.
    CHECK(cut.validation.images == cut.all_training.images + (size_t)cut.train.count * IMAGE_SIZE);
    free_fashion_mnist(&cut);
    // No per-class limit: no repetition, all of the classes.
    CHECK(fashion_mnist_subset(&all, classes, 0, &cut, &err) == 0);
    CHECK_EQ_INT(cut.train.count, 60);
    free_fashion_mnist(&cut);
    // A class the validation split lacks entirely.
    for (int i = 0; i < VALIDATION; i++) all.validation.labels[i] = 0;
    CHECK_EQ_INT(fashion_mnist_subset(&all, 1u << 7, 0, &cut, &err), EXIT_TOO_FEW);
    CHECK(strstr(err.message, "validation split 0") != NULL);
    free_fashion_mnist(&all);
}

static void test_class_list(void) {
    section("--classes");
    unsigned classes = 0;
    Error err = {0};
    CHECK(parse_class_list("5,6,7,8,9", &classes, &err) == 0 && classes == 0x3e0);
    CHECK(parse_class_list("0", &classes, &err) == 0 && classes == 1);
    const char *bad[] = {"", "10", "5,", ",5", "5,,6", "a", "5 6", "5,5"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (!CHECK(parse_class_list(bad[i], &classes, &err) == EXIT_USAGE)) printf("     '%s' accepted\n", bad[i]);
}

int main(void) {
    test_freeze();
    test_freeze_every_model();
    test_subsets();
    test_class_list();
    return check_summary();
}
