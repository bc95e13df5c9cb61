# Makefile of a class handout (written by `make handout` from tests/handout.mk).
#
#   make data                          the four Fashion-MNIST files into data/
#   make chapter2                      build starter/chapter2.c as ./chapter2
#   make check-exercise N=2.adam [FILE=...]   one exercise's check (default FILE: starter/chapter2.c)
#   make test-chapter N=2 [FILE=...]   every exercise check of the file
#   make check-answer N=5.no-bias A=...   a quick check's answer, right or not yet
#   make grade DIR=submissions         every check on every file in DIR, as a table
#
# The book (book.md) has the code listings; the starter chapters are the
# programs, with each exercise left to do. The solutions are not here.
CC      ?= cc
CFLAGS  ?= -O3 -Wall -Wextra -pedantic
NEEDED  = -std=c11
LDLIBS  = -lm -pthread
CHAPTERS = 1 2 3 4 5 6 7 8

.PHONY: all data check-exercise test-chapter check-answer grade clean
all: $(CHAPTERS:%=chapter%)

chapter%: starter/chapter%.c
	$(CC) $(NEEDED) $(CFLAGS) $< -o $@ $(LDLIBS)

data:
	@sh get-data.sh --install data

EXERCISE_CHAPTER = $(firstword $(subst ., ,$(N)))
check-exercise:
	@test -n "$(N)" || { echo "usage: make check-exercise N=2.adam [FILE=starter/chapter2.c]"; exit 2; }
	@sh tests/exercise.sh "$(EXERCISE_CHAPTER)" "$(or $(FILE),starter/chapter$(EXERCISE_CHAPTER).c)" "$(N)"

test-chapter:
	@test -n "$(N)" || { echo "usage: make test-chapter N=2 [FILE=starter/chapter2.c]"; exit 2; }
	@sh tests/exercise.sh "$(N)" "$(or $(FILE),starter/chapter$(N).c)"

build/answers: tests/answers.c
	@mkdir -p build
	@$(CC) $(NEEDED) -O2 $< -o $@

check-answer: build/answers
	@if [ -z "$(N)" ]; then build/answers; else build/answers "$(N)" "$(A)"; fi

grade:
	@test -n "$(DIR)" || { echo "usage: make grade DIR=directory-of-students-files"; exit 2; }
	@sh tests/grade.sh "$(DIR)"

clean:
	rm -rf build $(CHAPTERS:%=chapter%)
