/* test_search.c - chapter 9: the search and what it tunes.
   Successive halving on a synthetic objective whose best trial is known:
   it finds it, trains each rung's survivors to the planned epochs, and
   gives the same trials and the same choice twice. The plans a budget
   gives. The trials drawn: in their ranges, the same whoever asks.
   AdamW's decay against its formula, and a decay of 0 the same bits as
   chapter 8's Adam. --dropout's rates in the deeper CNN. The search's
   data: the training file alone, with no test set. */
#include "check.h"

#define main chapter9_main
#ifndef CHAPTER_FILE
#define CHAPTER_FILE "../chapters/chapter9.c"
#endif
#include CHAPTER_FILE
#undef main

/* ---- Successive halving on a synthetic objective --------------------------- */

/* The loss of a configuration after `epochs` epochs: a bowl in log10(lr)
   with its floor at lr = 10^-2.7 and a gentler one in log2(batch), plus a
   term that fades with training, larger for larger learning rates' trials
   so that rung 0 does not already tell the final order. */
static double asymptote(const TrialConfig *c) {
    double a = log10(c->learning_rate) + 2.7, b = log2(c->batch) - 6;
    return a * a + 0.01 * b * b;
}

static double synthetic_loss(const TrialConfig *c, int epochs) {
    return asymptote(c) + 0.3 * log10(c->learning_rate / 1e-4) / epochs;
}

typedef struct {
    int calls[8][64];  // [rung][trial index]: epochs asked for, 0 if not asked
    int rung_of_epochs[1000];
} Recorder;

static int synthetic_objective(void *context, Trial *t, int epochs, Error *err) {
    (void)err;
    Recorder *r = context;
    int rung = r->rung_of_epochs[epochs];
    r->calls[rung][t->index] = epochs;
    t->loss = (float)synthetic_loss(&t->config, epochs);
    return 0;
}

static void test_successive_halving(void) {
    section("successive halving on a synthetic objective");
    SearchPlan plan = search_plan(81);  // 4 * 27 = 108 > 81: 3 rungs of 9 trials, r_0 = 3
    CHECK_EQ_INT(plan.rungs, 3);
    CHECK_EQ_INT(plan.trials, 9);
    CHECK_EQ_INT(plan.first_epochs, 3);
    Recorder rec;
    memset(&rec, 0, sizeof rec);
    for (int rung = 0; rung < plan.rungs; rung++) rec.rung_of_epochs[rung_epochs(plan, rung)] = rung;
    Trial trials[9], again[9], *best = NULL, *best_again = NULL;
    Error err = {0};
    CHECK(successive_halving(plan, 7, 1, synthetic_objective, &rec, trials, &best, &err) == 0);
    // The known best: of the trials drawn, the lowest loss after the last rung's epochs.
    int known = 0;
    for (int i = 1; i < plan.trials; i++)
        if (synthetic_loss(&trials[i].config, 27) < synthetic_loss(&trials[known].config, 27)) known = i;
    CHECK_EQ_INT(best->index, known);
    // Rung by rung: all 9 to 3 epochs, then 3 to 9, then 1 to 27, the best of the rung before.
    int asked[3] = {0, 0, 0};
    for (int rung = 0; rung < 3; rung++)
        for (int i = 0; i < 9; i++) {
            if (rec.calls[rung][i]) asked[rung]++;
            if (rec.calls[rung][i]) CHECK_EQ_INT(rec.calls[rung][i], rung_epochs(plan, rung));
        }
    CHECK_EQ_INT(asked[0], 9);
    CHECK_EQ_INT(asked[1], 3);
    CHECK_EQ_INT(asked[2], 1);
    CHECK(rec.calls[2][known] == 27);
    // The three kept after rung 0 are the three lowest at 3 epochs.
    int kept_right = 1;
    for (int i = 0; i < 9; i++) {
        int lower = 0;
        for (int j = 0; j < 9; j++) lower += synthetic_loss(&trials[j].config, 3) < synthetic_loss(&trials[i].config, 3);
        if ((lower < 3) != (rec.calls[1][i] != 0)) kept_right = 0;
    }
    CHECK(kept_right);
    // The same seed: the same trials, the same choice.
    Recorder rec2 = rec;
    CHECK(successive_halving(plan, 7, 1, synthetic_objective, &rec2, again, &best_again, &err) == 0);
    CHECK(memcmp(trials, again, sizeof trials) == 0);
    CHECK_EQ_INT(best_again->index, best->index);
    // Another seed: other trials.
    CHECK(successive_halving(plan, 8, 1, synthetic_objective, &rec2, again, &best_again, &err) == 0);
    CHECK(again[0].config.learning_rate != trials[0].config.learning_rate);
}

static int diverging_objective(void *context, Trial *t, int epochs, Error *err) {
    (void)context, (void)epochs, (void)err;
    t->loss = INFINITY;
    return 0;
}

static void test_all_diverged(void) {
    section("a search whose every trial diverges has nothing to choose");
    Trial trials[3], *best = NULL;
    Error err = {0};
    CHECK_EQ_INT(successive_halving(search_plan(9), 1, 0, diverging_objective, NULL, trials, &best, &err), EXIT_DIVERGED);
    CHECK(strstr(err.message, "every trial") != NULL);
}

// Finite losses, except that the finalist (the first trial to be trained
// to the last rung) diverges there.
static int finalist_diverges(void *context, Trial *t, int epochs, Error *err) {
    (void)err;
    Recorder *r = context;
    t->loss = epochs == 27 ? INFINITY : (float)synthetic_loss(&t->config, epochs);
    r->calls[0][t->index] = epochs;
    return 0;
}

static void test_finalist_diverges(void) {
    section("a finalist that diverges leaves the best of the rest");
    Recorder rec;
    memset(&rec, 0, sizeof rec);
    Trial trials[9], *best = NULL;
    Error err = {0};
    CHECK(successive_halving(search_plan(81), 7, 1, finalist_diverges, &rec, trials, &best, &err) == 0);
    int want = -1;  // the lowest finite loss, the lower index on a tie
    for (int i = 0; i < 9; i++)
        if (isfinite(trials[i].loss) && (want < 0 || trials[i].loss < trials[want].loss)) want = i;
    CHECK(best && isfinite(best->loss) && best->index == want);
    CHECK(best && best->epochs == 9);  // one of rung 2's, at 9 epochs
}

static void test_plans(void) {
    section("the plans a budget gives");
    int budgets[][4] = {{1, 1, 1, 1}, {5, 1, 1, 5}, {6, 2, 3, 1}, {9, 2, 3, 1}, {26, 2, 3, 4}, {27, 3, 9, 1},
                        {107, 3, 9, 3}, {108, 4, 27, 1}};
    for (size_t i = 0; i < sizeof budgets / sizeof budgets[0]; i++) {
        SearchPlan p = search_plan(budgets[i][0]);
        if (!CHECK(p.rungs == budgets[i][1] && p.trials == budgets[i][2] && p.first_epochs == budgets[i][3]))
            printf("     budget %d: %d rungs, %d trials, %d first epochs\n", budgets[i][0], p.rungs, p.trials,
                   p.first_epochs);
        // Each rung costs no more than B / R epochs.
        CHECK(p.trials * p.first_epochs * p.rungs <= budgets[i][0]);
    }
}

static void test_draws(void) {
    section("the trials drawn");
    int in_range = 1, batches_seen = 0, same = 1;
    for (int i = 0; i < 200; i++) {
        TrialConfig c = draw_trial(3, i, 1), d = draw_trial(3, i, 0);
        in_range &= c.learning_rate >= 1e-4 && c.learning_rate <= 1e-2 && c.dropout >= 0 && c.dropout <= 0.6 &&
                    c.weight_decay >= 1e-5 && c.weight_decay <= 1e-1;
        in_range &= c.batch == 32 || c.batch == 64 || c.batch == 128 || c.batch == 256;
        batches_seen |= c.batch;
        // Without dropout: the same draw, the dropout marked absent.
        same &= d.dropout == -1 && d.learning_rate == c.learning_rate && d.weight_decay == c.weight_decay &&
                d.batch == c.batch;
        same &= three_digits(c.learning_rate) == c.learning_rate;
    }
    CHECK(in_range);
    CHECK(same);
    CHECK_EQ_INT(batches_seen, 32 | 64 | 128 | 256);
    // Trial 5 is the same whether or not trials 0-4 were drawn first, and
    // it is not trial 4 (each has its own stream).
    TrialConfig a = draw_trial(11, 5, 1);
    for (int i = 0; i < 5; i++) draw_trial(11, i, 1);
    TrialConfig b = draw_trial(11, 5, 1), c = draw_trial(11, 4, 1);
    CHECK(memcmp(&a, &b, sizeof a) == 0);
    CHECK(memcmp(&a, &c, sizeof a) != 0);
}

/* ---- AdamW ------------------------------------------------------------------ */

static void test_weight_decay(void) {
    section("AdamW: decay, then Adam's step; a decay of 0 is Adam");
    enum { N = 37 };
    float p0[N], g[N], with[N], plain[N], by_hand[N];
    Rng rng = rng_new(5, STREAM_CHECK);
    for (int i = 0; i < N; i++) p0[i] = rng_uniform(&rng) - 0.5f, g[i] = rng_uniform(&rng) - 0.5f;
    Optimizer a = optimizer_new(OPTIMIZER_ADAM, 0.01f, N), b = optimizer_new(OPTIMIZER_ADAM, 0.01f, N),
              c = optimizer_new(OPTIMIZER_ADAM, 0.01f, N);
    a.weight_decay = 0.1f;
    memcpy(with, p0, sizeof p0), memcpy(plain, p0, sizeof p0), memcpy(by_hand, p0, sizeof p0);
    for (int step = 0; step < 3; step++) {
        optimizer_update(&a, with, g, N);
        optimizer_update(&b, plain, g, N);
        for (int i = 0; i < N; i++) by_hand[i] *= 1.0f - 0.01f * 0.1f;
        adam_update(&c, by_hand, g, N);
    }
    CHECK(memcmp(with, by_hand, sizeof with) == 0);
    CHECK(memcmp(with, plain, sizeof with) != 0);
    // (A decay of 0 multiplies by 1.0f, exactly: test_search.sh checks that
    // chapter 9's defaults train chapter 8's weights.)
    optimizer_free(&a), optimizer_free(&b), optimizer_free(&c);
}

/* ---- --dropout -------------------------------------------------------------- */

static void test_dropout_rates(void) {
    section("--dropout: the last dropout RATE, the others RATE / 2");
    GraphClassifier deeper = build_model("deeper", 4, 1, KERNEL_NAIVE, NULL);
    CHECK_EQ_INT(set_dropout_rates(deeper.graph, 0.4), 3);
    float rates[3];
    int n = 0;
    for (int i = 0; i < deeper.graph->count; i++)
        if (deeper.graph->nodes[i].op == &OPS[OP_DROPOUT] && n < 3) rates[n++] = deeper.graph->nodes[i].rate;
    CHECK(n == 3 && rates[0] == 0.2f && rates[1] == 0.2f && rates[2] == 0.4f);
    graph_free(deeper.graph);
    GraphClassifier basic = build_model("basic", 4, 1, KERNEL_NAIVE, NULL);
    CHECK_EQ_INT(set_dropout_rates(basic.graph, 0.4), 0);
    graph_free(basic.graph);
}

/* ---- The search's data ------------------------------------------------------ */

static void test_training_split(void) {
    section("the search loads the training file alone");
    FashionMnist data;
    Error err = {0};
    if (load_training_split("../data", &data, &err) != 0 && load_training_split("data", &data, &err) != 0) {
        skip("no Fashion-MNIST in data/ (make data)");
        return;
    }
    CHECK_EQ_INT(data.train.count, 54000);
    CHECK_EQ_INT(data.validation.count, 6000);
    CHECK(data.test.count == 0 && data.test.images == NULL);
    free_fashion_mnist(&data);
}

int main(void) {
    test_plans();
    test_successive_halving();
    test_all_diverged();
    test_finalist_diverges();
    test_draws();
    test_weight_decay();
    test_dropout_rates();
    test_training_split();
    return check_summary();
}
