/* test_worked_example.c - the worked example of book.md, section 2.5, "One
   image, by hand": a network of 2 inputs, 2 hidden ReLU units and 3
   classes, one image, forward, backward and one SGD step.

   What it is: the source of the example's numbers. It runs chapter 2's own
   dense_forward, relu_forward, softmax_cross_entropy_forward, their
   backward functions and sgd_update on exactly the book's numbers, prints
   every value to four decimals, and checks each number the book quotes,
   as the book prints it (to four decimals), so that the book and the code
   cannot drift apart unnoticed.
   What it is not: a gradient check (tests/test_ann.c checks the backward
   passes against finite differences), and it needs no data.

   Run with:  make build/test_worked_example && build/test_worked_example */
#include "check.h"

#define main chapter2_main
// `make test-chapter N=2 FILE=...` builds this against a student's chapter.
#ifndef CHAPTER_FILE
#define CHAPTER_FILE "../chapters/chapter2.c"
#endif
#include CHAPTER_FILE
#undef main

enum { C = 2, H = 2, K = 3 };  // inputs, hidden units, classes; one image (B = 1)

// The parameters in one flat array, carved into named pointers as chapter 2
// carves its own (section 2.2), so one sgd_update steps them all; the
// gradients in another array, carved in the same order.
enum { PARAMETER_COUNT = C * H + H + H * K + K };

typedef struct {
    float *w1, *b1;  // (C, H) (H)
    float *w2, *b2;  // (H, K) (K)
} ExampleParameters;

static ExampleParameters carve_example(float *memory) {
    return (ExampleParameters){memory, memory + C * H, memory + C * H + H, memory + C * H + H + H * K};
}

static const float X[C] = {1.0f, 2.0f};
static const float T[K] = {0.0f, 1.0f, 0.0f};  // the image is of class 1
static const float LEARNING_RATE = 0.1f;

// The forward pass: a = x W1 + b1, h = relu(a), z = h W2 + b2, p = softmax(z).
static float forward_example(const ExampleParameters *p, float *a, float *h, float *z, float *probs) {
    dense_forward(a, X, p->w1, p->b1, 1, C, H);
    relu_forward(h, a, H);
    dense_forward(z, h, p->w2, p->b2, 1, H, K);
    return softmax_cross_entropy_forward(probs, z, T, 1, K);
}

// A vector as the book prints it: four decimals, no "-0.0000".
static void print_vector(const char *name, const float *v, int n) {
    printf("%-22s (", name);
    for (int i = 0; i < n; i++) printf("%s%.4f", i ? ", " : "", (double)(v[i] + 0.0f));
    printf(")\n");
}

// value, printed with four decimals, is the text the book quotes.
#define CHECK_QUOTED(value, text)                                                                       \
    do {                                                                                                \
        char printed_[32];                                                                              \
        snprintf(printed_, sizeof printed_, "%.4f", (double)((value) + 0.0f));                          \
        if (!CHECK(strcmp(printed_, (text)) == 0))                                                      \
            printf("     %s prints %s; the book says %s\n", #value, printed_, (text));                 \
    } while (0)

int main(void) {
    float param_memory[PARAMETER_COUNT] = {
        1.0f, -1.5f,        // W1, row 0: from x_0 to the two hidden units
        0.5f, 0.5f,         // W1, row 1: from x_1
        0.0f, 0.0f,         // b1
        0.5f, 0.0f, -0.5f,  // W2, row 0: from h_0 to the three logits
        1.0f, -1.0f, 0.5f,  // W2, row 1: from h_1
        0.0f, 0.0f, 0.0f,   // b2
    };
    float grad_memory[PARAMETER_COUNT] = {0};  // zeroed, since backward functions add
    ExampleParameters params = carve_example(param_memory), grads = carve_example(grad_memory);
    float a[H], h[H], z[K], probs[K];

    section("forward");
    float loss = forward_example(&params, a, h, z, probs);
    print_vector("a = x W1 + b1", a, H);
    print_vector("h = relu(a)", h, H);
    print_vector("z = h W2 + b2", z, K);
    print_vector("p = softmax(z)", probs, K);
    printf("%-22s %.4f\n", "L = -log p_1", (double)loss);
    CHECK_QUOTED(a[0], "2.0000");
    CHECK_QUOTED(a[1], "-0.5000");
    CHECK_QUOTED(h[0], "2.0000");
    CHECK_QUOTED(h[1], "0.0000");
    CHECK_QUOTED(z[0], "1.0000");
    CHECK_QUOTED(z[1], "0.0000");
    CHECK_QUOTED(z[2], "-1.0000");
    CHECK_QUOTED(probs[0], "0.6652");
    CHECK_QUOTED(probs[1], "0.2447");
    CHECK_QUOTED(probs[2], "0.0900");
    CHECK_QUOTED(loss, "1.4076");

    section("backward");
    // The gradients of the activations, zeroed, since backward functions add.
    float dz[K] = {0}, dh[H] = {0}, da[H] = {0};
    softmax_cross_entropy_backward(dz, 1.0f, probs, T, 1, K);
    dense_backward(dh, grads.w2, grads.b2, dz, h, params.w2, 1, H, K);
    relu_backward(da, dh, a, H);
    dense_backward(NULL, grads.w1, grads.b1, da, X, params.w1, 1, C, H);  // nothing learns from x
    print_vector("dz = p - t", dz, K);
    print_vector("dW2, row 0 = h_0 dz", grads.w2, K);
    print_vector("dW2, row 1 = h_1 dz", grads.w2 + K, K);
    print_vector("db2 = dz", grads.b2, K);
    print_vector("dh = dz W2^T", dh, H);
    print_vector("da = dh where a > 0", da, H);
    print_vector("dW1, row 0 = x_0 da", grads.w1, H);
    print_vector("dW1, row 1 = x_1 da", grads.w1 + H, H);
    print_vector("db1 = da", grads.b1, H);
    CHECK_QUOTED(dz[0], "0.6652");
    CHECK_QUOTED(dz[1], "-0.7553");
    CHECK_QUOTED(dz[2], "0.0900");
    CHECK_QUOTED(grads.w2[0], "1.3305");
    CHECK_QUOTED(grads.w2[1], "-1.5105");
    CHECK_QUOTED(grads.w2[2], "0.1801");
    for (int k = 0; k < K; k++) CHECK(grads.w2[K + k] == 0.0f);  // h_1 = 0
    for (int k = 0; k < K; k++) CHECK(grads.b2[k] == dz[k]);
    CHECK_QUOTED(dh[0], "0.2876");
    CHECK_QUOTED(dh[1], "1.4655");
    CHECK_QUOTED(da[0], "0.2876");
    CHECK(da[1] == 0.0f);  // a_1 = -0.5: the ReLU stops the gradient
    CHECK_QUOTED(grads.w1[0], "0.2876");
    CHECK_QUOTED(grads.w1[2], "0.5752");
    CHECK(grads.w1[1] == 0.0f && grads.w1[3] == 0.0f);
    CHECK_QUOTED(grads.b1[0], "0.2876");
    CHECK(grads.b1[1] == 0.0f);

    section("one SGD step, learning rate 0.1");
    sgd_update(param_memory, grad_memory, PARAMETER_COUNT, LEARNING_RATE);
    print_vector("W1, row 0", params.w1, H);
    print_vector("W1, row 1", params.w1 + H, H);
    print_vector("b1", params.b1, H);
    print_vector("W2, row 0", params.w2, K);
    print_vector("W2, row 1", params.w2 + K, K);
    print_vector("b2", params.b2, K);
    CHECK_QUOTED(params.w1[0], "0.9712");
    CHECK_QUOTED(params.w1[2], "0.4425");
    CHECK_QUOTED(params.b1[0], "-0.0288");
    CHECK_QUOTED(params.w2[0], "0.3670");
    CHECK_QUOTED(params.w2[1], "0.1511");
    CHECK_QUOTED(params.w2[2], "-0.5180");
    CHECK_QUOTED(params.b2[0], "-0.0665");
    CHECK_QUOTED(params.b2[1], "0.0755");
    CHECK_QUOTED(params.b2[2], "-0.0090");
    CHECK(params.w1[1] == -1.5f && params.w1[3] == 0.5f && params.b1[1] == 0.0f);  // no gradient, no step
    CHECK(params.w2[3] == 1.0f && params.w2[4] == -1.0f && params.w2[5] == 0.5f);

    section("forward again");
    float after = forward_example(&params, a, h, z, probs);
    print_vector("a", a, H);
    print_vector("z", z, K);
    print_vector("p", probs, K);
    printf("%-22s %.4f\n", "L", (double)after);
    CHECK_QUOTED(a[0], "1.8274");
    CHECK_QUOTED(probs[1], "0.3910");
    CHECK_QUOTED(after, "0.9391");
    CHECK(after < loss);
    return check_summary();
}
