//@ from 2
/* ----------------------------------------------------------------------------
   Random numbers: PCG32 (O'Neill, pcg-random.org), with streams.

   What this is: our own generator, so the same seed gives the same numbers on
   every machine and C library (rand() promises neither), and separate
   streams, so that drawing one more number for, say, shuffling never shifts
   the numbers that initialise the weights or drop units out.
   What it is not: cryptographic.

   PCG32 is a 64-bit linear congruential generator whose output is scrambled
   by a xorshift and a data-dependent rotation. The increment of the LCG
   must be odd; each odd increment gives an independent sequence, a stream. */

typedef struct {
    uint64_t state;
    uint64_t increment;  // odd: (stream << 1) | 1
} Rng;

// One stream per use, so the uses never disturb each other.
enum { STREAM_INIT = 1, STREAM_SHUFFLE = 2, STREAM_CHECK = 4 };
//@ from 5
enum { STREAM_DROPOUT = 3 };
//@ end
//@ from 7
enum { STREAM_AUGMENT = 5 };
//@ end
//@ from 9
enum { STREAM_SEARCH = 6, STREAM_ERASE = 7 };
//@ end

#define PCG_MULTIPLIER 6364136223846793005ULL
// The output: the old state's 64 bits scrambled down to 32.
uint32_t rng_output(uint64_t old) {
    uint32_t xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
    uint32_t rotation = (uint32_t)(old >> 59u);
    return (xorshifted >> rotation) | (xorshifted << ((32u - rotation) & 31u));
}

uint32_t rng_next(Rng *r) {
    uint64_t old = r->state;
    r->state = old * PCG_MULTIPLIER + r->increment;
    return rng_output(old);
}

// The seeding of the reference implementation (pcg32_srandom_r).
Rng rng_new(uint64_t seed, uint64_t stream) {
    Rng r = {0, (stream << 1u) | 1u};
    rng_next(&r);
    r.state += seed;
    rng_next(&r);
    return r;
}

/* A keyed stream: the numbers for one purpose at one place in the run, for
   instance (seed, STREAM_SHUFFLE, epoch 3, 0), the order of epoch 3. Anyone
   can open it at any time, in any order, on any thread, and get the same
   numbers; nothing depends on what was drawn before. The key is mixed into
   the starting state; the purpose picks the stream. */
Rng rng_keyed(uint64_t seed, uint64_t purpose, uint64_t step, uint64_t item) {
    return rng_new(mix64(mix64(mix64(seed) ^ step) ^ item), purpose);
}

// Uniform in [0, 1): the top 24 bits, exactly representable in a float.
float rng_unit(uint32_t x) { return (float)(x >> 8) * (1.0f / 16777216.0f); }
float rng_uniform(Rng *r) { return rng_unit(rng_next(r)); }

//@ from 5
/* n draws of rng_uniform at once: the same numbers in the same order, and
   the same state after. One draw at a time, each 64-bit multiply waits for
   the one before. But k steps s -> a s + c in a row are one step
       s -> A s + C,   A = a^k,   C = c (a^(k-1) + ... + a + 1)   (mod 2^64),
   so k = RNG_LANES states a draw apart can each jump k draws at once,
   independently, and the processor overlaps them. */
enum { RNG_LANES = 4 };

void rng_jump(uint64_t increment, int steps, uint64_t *A, uint64_t *C) {
    *A = 1, *C = 0;
    for (int i = 0; i < steps; i++) *A *= PCG_MULTIPLIER, *C = *C * PCG_MULTIPLIER + increment;
}

void rng_uniform_fill(Rng *r, float *out /* (n) */, size_t n) {
    size_t i = 0;
    if (n >= RNG_LANES) {
        uint64_t A, C, s[RNG_LANES] = {r->state};  // s[l]: the state of draw i + l
        rng_jump(r->increment, RNG_LANES, &A, &C);
        for (int l = 1; l < RNG_LANES; l++) s[l] = s[l - 1] * PCG_MULTIPLIER + r->increment;
        for (; i + RNG_LANES <= n; i += RNG_LANES)
            for (int l = 0; l < RNG_LANES; l++) {
                out[i + l] = rng_unit(rng_output(s[l]));
                s[l] = s[l] * A + C;
            }
        r->state = s[0];
    }
    for (; i < n; i++) out[i] = rng_uniform(r);
}

//@ end
// Uniform integer in [0, bound), without the bias of rng_next() % bound:
// values below 2^32 mod bound are rejected, leaving a multiple of bound.
uint32_t rng_below(Rng *r, uint32_t bound) {
    uint32_t threshold = (0u - bound) % bound;
    for (;;) {
        uint32_t x = rng_next(r);
        if (x >= threshold) return x % bound;
    }
}

// Fisher-Yates: every permutation equally likely.
void shuffle(int *items, int n, Rng *r) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)rng_below(r, (uint32_t)i + 1);
        int t = items[i];
        items[i] = items[j];
        items[j] = t;
    }
}
//@ end
