# Makefile - builds the chapters, fetches the data, runs the tests.
#
#   make chapter1 ...  build one chapter's program (./chapter1)
#   make data          put the four Fashion-MNIST files into data/
#   make chapters      regenerate chapters/*.c from the marked sources in src/
#   make check-chapters  fail if a committed chapter differs from what src/ generates
#   make test          everything a change must pass (see README.md)
#   make check-outputs [SLOW=1]   the commands book.md shows still print what it shows
#   make bench         the machine's peak, every layer's speed, one epoch of each model (tools/bench.c),
#                      and the bf16 peak and step (tools/bench_ch8.c --bf16)
#   make bench-chapter FILE=mine4.c   the same measurements on another chapter (4 on)
#   make figures       the book's pictures of data, from real runs, into figures/ (tools/figures.c)
#   make fuzz          libFuzzer on every parser (FUZZ_SECONDS each, default 60; needs clang)
#   make clean         remove what the build made (not data/, not chapters/, not starter/)
#
# For a class (docs/INSTRUCTORS.md):
#   make starter                       starter/chapterN.c, the exercises left to do (never overwrites)
#   make check-exercise N=2.adam [FILE=...]   one exercise's checks (default FILE: starter/chapter2.c)
#   make test-chapter N=2 [FILE=...]   every exercise check and chapter 2's tests on one file
#   make check-answer N=5.no-bias A=...   a quick check's answer, right or not yet
#   make grade DIR=submissions         every check on every file in DIR, as a table
#   make handout [HANDOUT=DIR]         book, starters, checks and a Makefile for a class; no solutions

# What a build needs (the language standard, the libraries) stays apart from
# what a user may override: `make CFLAGS=-O0 chapter2` still compiles C11.
CC      ?= cc
CFLAGS  ?= -O3 -Wall -Wextra -pedantic
NEEDED  = -std=c11
LDLIBS  = -lm -pthread
STRICT  = $(NEEDED) -O3 -Wall -Wextra -pedantic -Werror
SANITIZE = $(NEEDED) -O1 -g -Wall -Wextra -pedantic -fno-omit-frame-pointer \
           -fsanitize=address,undefined -fno-sanitize-recover=undefined

# The chapters, and the marked sources they are generated from, in order.
CHAPTERS = 1 2 3 4 5 6 7 8 9
SOURCES  = src/preamble.c src/rng.c src/idx.c src/pictures.c src/explore.c src/options.c \
           src/layers.c src/conv.c src/threads.c src/gemm.c src/bf16.c src/conv_blocked.c src/batchnorm.c src/optim.c \
           src/train.c src/ann.c src/autodiff.c src/cnn.c src/resnet.c src/checkpoint.c src/protocol.c src/png.c src/compare.c src/transfer.c src/tune.c src/gradcheck.c src/main.c

PROGRAMS = $(CHAPTERS:%=chapter%)
TESTS    = build/test_tangle build/test_idx build/test_ann build/test_worked_example build/test_autodiff \
           build/test_conv build/test_gemm build/test_gemm_tsan build/test_bn build/test_checkpoint build/test_resume build/test_compare \
           build/test_bench build/test_resnet build/test_bf16 build/test_search build/test_transfer build/test_erase
SCRIPT_TESTS = tests/check_outputs.sh tests/test_get_data.sh tests/test_compare.sh tests/test_chapter8.sh tests/test_search.sh tests/test_transfer.sh tests/test_figures.sh tests/test_exercises.sh tests/check_solutions.sh tests/test_handout.sh tests/arm64.sh tests/determinism.sh tests/valgrind.sh tests/upper_halves.sh

.PHONY: all bench bench-chapter chapters check-chapters check-excerpts check-prose check-book check-outputs check-figures check-flags check-portable data test test-build warnings clean \
        starter handout check-exercise test-chapter check-answer grade fuzz fuzz-smoke plots compare figures
.DELETE_ON_ERROR:

all: $(PROGRAMS)

chapter%: chapters/chapter%.c
	$(CC) $(NEEDED) $(CFLAGS) $< -o $@ $(LDLIBS)

build/tangle: src/tangle.c
	@mkdir -p build
	$(CC) $(STRICT) $< -o $@

# Chapters are regenerated only when asked, so that `make chapter2` never
# overwrites a chapter a reader has edited. tangle writes to a temporary file
# first, so a failed run never leaves half a chapter; mktemp makes that file
# anew (never through a link planted at its name), and mv renames it over
# the chapter (never writing through a link there either).
chapters: build/tangle
	@mkdir -p chapters
	@for n in $(CHAPTERS); do \
	  tmp=$$(mktemp chapters/.chapter$$n.c.XXXXXX) || exit 1; \
	  build/tangle $$n $(SOURCES) > $$tmp || { rm -f $$tmp; exit 1; }; \
	  chmod 644 $$tmp && mv $$tmp chapters/chapter$$n.c; echo "  chapters/chapter$$n.c"; \
	done

# The committed chapters must be what src/ generates, and every starter
# version must generate too (its exercise markers well formed).
check-chapters: build/tangle
	@mkdir -p build/check; status=0; \
	for n in $(CHAPTERS); do \
	  build/tangle $$n $(SOURCES) > build/check/chapter$$n.c || exit 1; \
	  build/tangle --starter $$n $(SOURCES) > build/check/starter$$n.c || exit 1; \
	  if ! cmp -s build/check/chapter$$n.c chapters/chapter$$n.c; then \
	    echo "chapters/chapter$$n.c differs from what src/ generates."; \
	    echo "  Students: nothing here overwrites your work; test your file with"; \
	    echo "  'make test-chapter N=$$n FILE=chapters/chapter$$n.c' (better: work in a copy, or in 'make starter')."; \
	    echo "  Maintainers who changed src/: regenerate with 'make chapters' and commit both."; \
	    diff -u chapters/chapter$$n.c build/check/chapter$$n.c | head -n 20; status=1; \
	  fi; \
	done; exit $$status

data:
	@sh src/get-data.sh --install data

# The front door: the data if it is not there, chapter 7 built, and the
# comparison run (`make compare ARGS="--seeds 3"`, `ARGS=--quick`, ...).
compare: data chapter7
	./chapter7 $(ARGS)

# The curves and bars of chapter 7 (and chapter 4's roofline), drawn by
# gnuplot from the scripts the chapters write into plots/ (and plots/quick/). The chapters
# never need gnuplot: their pictures (PPM and PNG) are their own.
plots:
	@command -v gnuplot > /dev/null 2>&1 || { echo "make plots needs gnuplot, which is not installed: sudo apt-get \
	install gnuplot-nox (Debian, Ubuntu) or brew install gnuplot (macOS). The PPM and PNG pictures in plots/ need nothing."; exit 1; }
	@ls plots/*.gp plots/*/*.gp 2> /dev/null | grep -q . || { echo "no gnuplot scripts in plots/ yet: run ./chapter7 (or ./chapter7 --quick) first"; exit 1; }
	@for g in plots/*.gp plots/*/*.gp; do [ -f "$$g" ] || continue; \
	  case $$g in plots/roofline.gp) gnuplot $$g || exit 1; echo "  $$g -> plots/roofline.svg";; \
	  *) (cd $$(dirname $$g) && gnuplot $$(basename $$g)) || exit 1; echo "  $$g -> $${g%.gp}.svg, $${g%.gp}.png";; esac; \
	done

# Every chapter, and the tools built on them, must compile without a
# warning, under gcc and (where it is installed) clang; the benchmark also
# on the first chapter it measures (make bench-chapter), chapter 4; and
# tests/check_png.c, the reader of the pictures tools/figures.c writes.
# gcc compiles at -O3, as the chapters are built: some of its warnings
# come from its optimiser. clang's all come from its front end, so it only
# checks the syntax (-fsyntax-only). Two compilers run at a time.
TOOLS = bench bench_pass bench_ch8 bf16_mcnemar figures
warnings:
	@mkdir -p build/warnings
	@for f in $(CHAPTERS:%=chapters/chapter%.c) $(TOOLS:%=tools/%.c) tests/check_png.c tools/bench.c:4; do \
	  echo "$(CC) $$f"; command -v clang > /dev/null 2>&1 && echo "clang $$f"; done | \
	xargs -P 2 -n 2 sh -c 'cc=$$1 src=$${2%:*} on=""; case $$2 in *:*) on=chapter$${2#*:};; esac; \
	  echo "  $$cc -Werror $$src$${on:+ on chapters/$$on.c}"; \
	  if [ $$cc = clang ]; then clang $(STRICT) -fsyntax-only $${on:+"-DCHAPTER_FILE=\"../chapters/$$on.c\""} $$src; \
	  else $$cc $(STRICT) $${on:+"-DCHAPTER_FILE=\"../chapters/$$on.c\""} $$src \
	    -o build/warnings/$$(basename $$src .c)$${on:+-$$on} $(LDLIBS); fi' sh

# A user's CFLAGS must not drop what the build needs.
check-flags:
	@$(MAKE) -s -n -B chapter1 CFLAGS=-O0 | grep -q -- '$(NEEDED) -O0' || \
	  { echo "FAIL: make CFLAGS=-O0 chapter1 no longer compiles with $(NEEDED)"; exit 1; }

# Chapter 4 on as another machine builds it: no SIMD kernels (-DNO_SIMD, as on
# arm64) and no threads (-DNO_THREADS); it must still build without a
# warning and train, on the portable kernel.
check-portable:
	@mkdir -p build
	@$(CC) $(STRICT) -DNO_SIMD -DNO_THREADS chapters/chapter4.c -o build/chapter4-portable $(LDLIBS)
	@build/chapter4-portable --overfit 8 --batch 8 > build/chapter4-portable.log 2>&1 && \
	  grep -q 'portable micro-kernel, 1 thread' build/chapter4-portable.log && grep -q '^all 8 images right' build/chapter4-portable.log || \
	  { echo "FAIL: chapter 4 without SIMD and threads"; tail -n 5 build/chapter4-portable.log; exit 1; }
	@echo "chapter 4 without SIMD and threads: builds and trains on the portable kernel"

# Code quoted in book.md must be in the chapter it names (tests/check_excerpts.c).
build/check_excerpts: tests/check_excerpts.c
	@mkdir -p build
	$(CC) $(SANITIZE) $< -o $@

check-excerpts: build/check_excerpts
	@build/check_excerpts book.md > build/excerpts.log || { cat build/excerpts.log; exit 1; }; \
	  echo "book.md excerpts: $$(tail -n 1 build/excerpts.log)"

# book.md's sentences: no chapter's mean over 25 words, at most 10% over 40
# (tests/check_prose.c says how a sentence is counted).
build/check_prose: tests/check_prose.c
	@mkdir -p build
	$(CC) $(SANITIZE) $< -o $@

check-prose: build/check_prose
	@build/check_prose book.md > build/prose.log || { cat build/prose.log; exit 1; }; \
	  echo "book.md prose: $$(tail -n 1 build/prose.log)"

# book.md's figures all there and all used, and no commit named in it
# (tests/check_book.sh says the rule).
check-book:
	@mkdir -p build; sh tests/check_book.sh book.md > build/book.log 2>&1 || { cat build/book.log; exit 1; }; \
	  echo "book.md figures and commits: $$(tail -n 1 build/book.log)"

# book.md's commands shown with their output still print it, numbers and
# messages alike (tests/check_outputs.sh says how). SLOW=1 adds the blocks
# marked slow, whole training runs: minutes, not seconds.
check-outputs:
	@sh tests/check_outputs.sh book.md $(if $(SLOW),--slow)

# The data pictures in figures/ are made by commands book.md names; this runs
# the cheap one, ./chapter1, on 500 images, and checks the picture it writes
# (figures/fashion-samples.png is that picture, converted to PNG).
check-figures: chapter1
	@if [ ! -f data/t10k-labels-idx1-ubyte ]; then echo "skip: book.md's data figures (no Fashion-MNIST)"; exit 0; fi; \
	rm -rf build/figures && mkdir -p build/figures/plots && sh tests/small_data.sh data build/figures/data 500 100 && \
	(cd build/figures && ../../chapter1 --data data > chapter1.log 2>&1) && \
	printf 'P5\n624 600\n255\n' > build/figures/want && head -c 15 build/figures/plots/fashion_samples.pgm > build/figures/got && \
	cmp -s build/figures/want build/figures/got && [ "$$(wc -c < build/figures/plots/fashion_samples.pgm)" -eq 374415 ] || \
	{ echo "FAIL: ./chapter1 no longer writes the 624 x 600 sample grid book.md shows (build/figures/chapter1.log)"; exit 1; }; \
	echo "book.md's data figures: ./chapter1 still draws the sample grid"

build/test_tangle: tests/test_tangle.c src/tangle.c tests/check.h
	@mkdir -p build
	$(CC) $(SANITIZE) $< -o $@ $(LDLIBS)

# The thread pool and the blocked GEMM again under ThreadSanitizer, which
# finds data races; it cannot be combined with AddressSanitizer.
TSAN = $(NEEDED) -O1 -g -Wall -Wextra -pedantic -fsanitize=thread
build/test_gemm_tsan: tests/test_gemm.c tests/check.h chapters/chapter4.c
	@mkdir -p build
	$(CC) $(TSAN) $< -o $@ $(LDLIBS)

# Whole runs of chapter 6, many of them: optimised, with UndefinedBehaviorSanitizer
# only (AddressSanitizer would make them ten times slower; test_checkpoint
# has the checkpoint reader under it).
build/test_resume: tests/test_resume.c tests/check.h chapters/chapter6.c
	@mkdir -p build
	$(CC) $(NEEDED) -O2 -g -Wall -Wextra -pedantic -fsanitize=undefined -fno-sanitize-recover=undefined $< -o $@ $(LDLIBS)

build/test_%: tests/test_%.c tests/check.h $(CHAPTERS:%=chapters/chapter%.c)
	@mkdir -p build
	$(CC) $(SANITIZE) $< -o $@ $(LDLIBS)

# The benchmark (tools/bench.c, on chapter 7), and one pass of one layer
# timed alone for comparing two builds (tools/bench_pass.c, book.md 4.15,
# 4.21). `make test` builds both with -Werror (warnings) and never runs
# them; tests/test_bench.c checks the benchmark's parts that take seconds.
build/bench: tools/bench.c chapters/chapter7.c
	@mkdir -p build
	$(CC) $(NEEDED) $(CFLAGS) $< -o $@ $(LDLIBS)

# The same measurements on another chapter, from 4 on: a student's copy
# (book.md's exercises of chapter 4), or one built with other CFLAGS.
bench-chapter:
	@test -n "$(FILE)" || { echo "usage: make bench-chapter FILE=mine4.c [CFLAGS=...] [BENCH_ARGS=...]"; exit 2; }
	@mkdir -p build
	$(CC) $(NEEDED) $(CFLAGS) '-DCHAPTER_FILE="$(abspath $(FILE))"' tools/bench.c -o build/bench-chapter $(LDLIBS)
	build/bench-chapter $(BENCH_ARGS)

build/bench_pass: tools/bench_pass.c tools/bench.c chapters/chapter7.c
	@mkdir -p build
	$(CC) $(NEEDED) $(CFLAGS) $< -o $@ $(LDLIBS)

# Chapter 8's new ops against the memory's bandwidth and the peak
# (tools/bench_ch8.c, on chapter 8): `make build/bench_ch8 && build/bench_ch8 [THREADS]`.
build/bench_ch8: tools/bench_ch8.c tools/bench.c chapters/chapter8.c
	@mkdir -p build
	$(CC) $(NEEDED) $(CFLAGS) $< -o $@ $(LDLIBS)

# The book's pictures of data (tools/figures.c, on chapter 7): chapters 2,
# 5 and 6 of book.md. `make figures` trains what each needs (under a
# minute on two cores) and writes the PNGs into figures/, listing each;
# FIGURES_ARGS=--quick writes small versions into build/figures-quick/.
# tests/test_figures.sh runs --quick and reads the files back with
# tests/check_png.c.
build/make_figures: tools/figures.c chapters/chapter7.c
	@mkdir -p build
	$(CC) $(NEEDED) $(CFLAGS) $< -o $@ $(LDLIBS)

build/check_png: tests/check_png.c tools/figures.c chapters/chapter7.c
	@mkdir -p build
	$(CC) $(NEEDED) $(CFLAGS) $< -o $@ $(LDLIBS)

figures: data build/make_figures
	build/make_figures $(FIGURES_ARGS)

# McNemar between a run in fp32 and the same run in bf16 (tools/bf16_mcnemar.c).
build/bf16_mcnemar: tools/bf16_mcnemar.c chapters/chapter8.c
	@mkdir -p build
	$(CC) $(NEEDED) $(CFLAGS) $< -o $@ $(LDLIBS)

build/test_bench: tests/test_bench.c tests/check.h tools/bench.c chapters/chapter7.c
	@mkdir -p build
	$(CC) $(SANITIZE) $< -o $@ $(LDLIBS)

test-build: $(TESTS)

# The tests that need Fashion-MNIST skip (and say so) when `make data` cannot
# get it; CI installs the Debian package first, so nothing is skipped there.
# Everything the tests run is built first, two at a time (most of the
# suite's building is compiling a whole chapter into each test program).
# Then tests/run_test.sh runs the tests two at a time, the slowest first,
# each into build/NAME.log; the logs are printed whole in the suite's order.
# Each test ends with "N passed, N failed"; the last line adds them up, and
# counts a test that died before its summary as one failure.
SLOW_TESTS = tests/determinism.sh build/test_resnet tests/test_exercises.sh build/test_conv build/test_autodiff \
             tests/arm64.sh tests/valgrind.sh tests/check_outputs.sh
test: warnings check-chapters check-flags check-excerpts check-prose check-book
	@$(MAKE) -s -j2 test-build $(PROGRAMS) build/make_figures build/check_png
	@sh src/get-data.sh data || echo "warning: no Fashion-MNIST; the tests that need it will be skipped"
	@$(MAKE) -s check-figures
	@if [ -f data/t10k-labels-idx1-ubyte ]; then $(MAKE) -s check-portable; \
	  else echo "skip: chapter 4 without SIMD and threads (no Fashion-MNIST)"; fi
	@$(MAKE) -s fuzz-smoke
	@echo "running $(words $(TESTS) $(SCRIPT_TESTS)) tests, two at a time:"; \
	printf '%s\n' $(SLOW_TESTS) $(filter-out $(SLOW_TESTS),$(TESTS) $(SCRIPT_TESTS)) | xargs -P 2 -n 1 sh tests/run_test.sh; \
	status=$$?; \
	for t in $(TESTS) $(SCRIPT_TESTS); do echo "== $$t"; cat build/$$(basename $$t .sh).log; done; \
	for t in $(TESTS) $(SCRIPT_TESTS); do cat build/$$(basename $$t .sh).log; done | awk '/^[0-9]+ passed, [0-9]+ failed/ { p += $$1; f += $$3; s += $$5 } \
	  END { printf "total: %d passed, %d failed", p, f; if (s) printf ", %d skipped", s; printf "\n" }'; \
	exit $$status

# Speed, measured: the machine's peak, every layer against it, the blocking
# swept and a training step of each model op by op (build/bench, from
# tools/bench.c; it writes plots/bench.dat and plots/roofline.gp), then one
# epoch of each model. Numbers vary from run to run; the book quotes what
# it measured. `make bench BENCH_ARGS="--threads 1"` passes options on.
bench: build/bench build/bench_ch8 chapter2 chapter3 chapter4 chapter5
	build/bench $(BENCH_ARGS)
	build/bench_ch8 --bf16
	./chapter2 --epochs 1 | grep -E '^epoch 1/1  train|^result'
	./chapter3 --epochs 1 --no-compare | grep -E '^epoch 1/1  train|^result'
	./chapter4 --model ann --epochs 1 | grep -E '^epoch 1/1  train|^result'
	./chapter4 --epochs 1 | grep -E '^epoch 1/1  train|^peak|^result'
	./chapter5 --epochs 1 | grep -E '^epoch 1/1  train|^peak|^result'

# ---- Fuzzing (tests/fuzz) --------------------------------------------------------
# Each parser a user can feed, under libFuzzer with AddressSanitizer and
# UndefinedBehaviorSanitizer: clang only. The committed seeds are in
# tests/fuzz/corpus/NAME; what a run finds goes to build/fuzz/NAME.
FUZZERS = idx options checkpoint
FUZZ_SECONDS = 60
FUZZ_CC = clang
build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c chapters/chapter6.c
	@mkdir -p build/fuzz
	$(FUZZ_CC) $(NEEDED) -g -O1 -Wall -Wextra -pedantic -Werror -fsanitize=fuzzer,address,undefined \
	  -fno-sanitize-recover=undefined $< -o $@ $(LDLIBS)

fuzz: $(FUZZERS:%=build/fuzz/fuzz_%)
	@for f in $(FUZZERS); do mkdir -p build/fuzz/$$f; echo "== fuzz_$$f, $(FUZZ_SECONDS) s"; \
	  build/fuzz/fuzz_$$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -artifact_prefix=build/fuzz/$$f- \
	    build/fuzz/$$f tests/fuzz/corpus/$$f 2>&1 | grep -E '^stat::number_of_executed_units|^==[0-9]+==|ERROR|SUMMARY' \
	    || true; \
	  ls build/fuzz/$$f-crash-* build/fuzz/$$f-leak-* build/fuzz/$$f-timeout-* 2>/dev/null && exit 1; \
	done; true

# A few seconds of each, in `make test`, where clang's libFuzzer is installed.
fuzz-smoke:
	@if ! printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' | \
	     $(FUZZ_CC) -x c -fsanitize=fuzzer - -o build/fuzz-probe > /dev/null 2>&1; then \
	  echo "skip: fuzzing (no clang with libFuzzer)"; exit 0; fi; \
	$(MAKE) -s -j2 $(FUZZERS:%=build/fuzz/fuzz_%) && $(MAKE) -s fuzz FUZZ_SECONDS=5

# ---- For a class ------------------------------------------------------------
# Starters are written once: a student's work in starter/ is never overwritten.
# Each is written to a fresh temporary beside it (mktemp), then renamed.
STARTER_DIR = starter
starter: build/tangle
	@mkdir -p $(STARTER_DIR)
	@for n in $(CHAPTERS); do f=$(STARTER_DIR)/chapter$$n.c; \
	  if [ -e $$f ] || [ -L $$f ]; then echo "  $$f exists: kept as it is (delete it for a fresh copy)"; continue; fi; \
	  tmp=$$(mktemp $(STARTER_DIR)/.chapter$$n.c.XXXXXX) || exit 1; \
	  if build/tangle --starter $$n $(SOURCES) > $$tmp; then chmod 644 $$tmp && mv $$tmp $$f && echo "  $$f"; \
	  else rm -f $$tmp; exit 1; fi; \
	done

EXERCISE_CHAPTER = $(firstword $(subst ., ,$(N)))
check-exercise:
	@test -n "$(N)" || { echo "usage: make check-exercise N=2.adam [FILE=starter/chapter2.c]"; exit 2; }
	@sh tests/exercise.sh $(EXERCISE_CHAPTER) "$(or $(FILE),starter/chapter$(EXERCISE_CHAPTER).c)" $(N)

# Each chapter's own test programs, which test_chapter builds against FILE.
CHAPTER_TESTS_1 = idx
CHAPTER_TESTS_2 = ann worked_example
CHAPTER_TESTS_3 = autodiff
CHAPTER_TESTS_4 = conv gemm
CHAPTER_TESTS_5 = bn
CHAPTER_TESTS_6 = checkpoint resume
CHAPTER_TESTS_7 = compare
CHAPTER_TESTS_8 = resnet bf16
CHAPTER_TESTS_9 = search transfer erase
test-chapter:
	@test -n "$(N)" || { echo "usage: make test-chapter N=2 [FILE=starter/chapter2.c]"; exit 2; }
	@file="$(or $(FILE),starter/chapter$(N).c)"; status=0; mkdir -p build/chapter-tests; \
	echo "== the exercises of $$file"; sh tests/exercise.sh $(N) "$$file" || status=1; \
	for t in $(CHAPTER_TESTS_$(N)); do \
	  echo "== tests/test_$$t.c on $$file"; \
	  $(CC) $(NEEDED) -O2 -g -I. -fsanitize=undefined "-DCHAPTER_FILE=\"$$file\"" tests/test_$$t.c \
	    -o build/chapter-tests/test_$$t $(LDLIBS) || { status=1; continue; }; \
	  build/chapter-tests/test_$$t > build/chapter-tests/test_$$t.log 2>&1 || status=1; \
	  grep -E -A1 '^FAIL|passed,' build/chapter-tests/test_$$t.log; \
	done; exit $$status

build/answers: tests/answers.c
	@mkdir -p build
	@$(CC) $(STRICT) $< -o $@

check-answer: build/answers
	@if [ -z "$(N)" ]; then build/answers; else build/answers "$(N)" "$(A)"; fi

grade:
	@test -n "$(DIR)" || { echo "usage: make grade DIR=directory-of-students-files"; exit 2; }
	@sh tests/grade.sh "$(DIR)"

# A class's handout: the book and its figures, the starter chapters, the
# checks (exercises.c; answers.c, which holds fingerprints only), the
# scripts that run them, the data fetcher and a Makefile of its own
# (tests/handout.mk). Not chapters/ and not src/: the solutions stay here.
# HANDOUT must not exist yet, or be empty, so that nothing is overwritten.
HANDOUT = handout
handout: build/tangle
	@if [ -e "$(HANDOUT)" ] && [ -n "$$(ls -A "$(HANDOUT)" 2>/dev/null)" ]; then \
	  echo "$(HANDOUT) exists and is not empty: give a new HANDOUT=DIR, or delete it first"; exit 1; fi
	@mkdir -p "$(HANDOUT)/tests" "$(HANDOUT)/figures"
	@$(MAKE) -s starter STARTER_DIR="$(HANDOUT)/starter" > /dev/null
	@cp book.md "$(HANDOUT)/book.md" && cp figures/* "$(HANDOUT)/figures/" && cp src/get-data.sh "$(HANDOUT)/get-data.sh"
	@cp tests/exercises.c tests/answers.c tests/exercise.sh tests/grade.sh tests/small_data.sh "$(HANDOUT)/tests/"
	@cp tests/handout.mk "$(HANDOUT)/Makefile"
	@echo "$(HANDOUT)/: book.md, figures/, starter/chapter1.c ... chapter9.c, tests/, get-data.sh, Makefile"

clean:
	rm -rf build $(PROGRAMS)
