# cformer: make | make test | make bench | make fuzz | make clean | make deps | make plot-deps
# Switches: PORTABLE=1 (no -march=native: the portable C kernels), SAN=1 (ASan + UBSan),
#           BUILD=dir (build directory, default build), MPI=1 (data-parallel training over MPI:
#           mpicc and -DCF_MPI into build-mpi by default; `make deps MPI=1` installs Open MPI).
ifeq ($(MPI),1)
  BUILD  ?= build-mpi
  CC     := mpicc
  ifeq ($(filter deps clean,$(MAKECMDGOALS)),)
    ifeq ($(shell command -v mpicc 2>/dev/null),)
      $(error MPI=1: mpicc not found (`make deps MPI=1` installs libopenmpi-dev and openmpi-bin))
    endif
  endif
endif
BUILD    ?= build
CC       ?= cc
PKGS     := libhdf5-dev libcjson-dev pkg-config
BENCHPKG := libopenblas-dev
FUZZPKG  := clang libclang-rt-dev libomp-dev
PLOTPKG  := python3-matplotlib

HDF5_CFLAGS := $(shell pkg-config --cflags hdf5 2>/dev/null)
HDF5_LIBS   := $(shell pkg-config --libs hdf5 2>/dev/null || echo -lhdf5)

CFLAGS  := -std=c11 -D_GNU_SOURCE -Wall -Wextra -fopenmp -Iinclude $(HDF5_CFLAGS)
LDLIBS  := -fopenmp $(HDF5_LIBS) -lcjson -lm
ifeq ($(SAN),1)
  CFLAGS  += -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
  LDLIBS  += -fsanitize=address,undefined
else
  CFLAGS  += -O3 -g
endif
ifneq ($(PORTABLE),1)
  CFLAGS  += -march=native
endif
ifeq ($(MPI),1)
  CFLAGS  += -DCF_MPI
  PKGS    += libopenmpi-dev openmpi-bin
endif

LIB_SRC  := $(wildcard src/core/*.c src/kernels/*.c src/autograd/*.c src/ops/*.c src/attention/*.c src/nn/*.c \
                       src/model/*.c src/optim/*.c src/data/*.c src/dist/*.c src/io/*.c src/decode/*.c src/train/*.c)
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_SRC  := $(wildcard src/cli/*.c)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
LIB      := $(BUILD)/libcformer.a

.PHONY: all test bench fuzz fuzz-deps plot-deps clean deps quickstart
all: $(LIB) $(BUILD)/cformer

$(BUILD)/%.o: %.c $(wildcard include/cformer/*.h) $(wildcard src/*/*.h)
	@mkdir -p $(dir $@)
	@echo "CC $<"
	@$(CC) $(CFLAGS) -c $< -o $@

# The bf16 kernels that must give bitwise the same numbers (gemm_bf16_internal.h): no multiply-add
# contracted into an FMA, which would round once where the emulated instruction rounds twice.
# (-std=c11 already means this; the flag keeps it so under any CFLAGS.) Their extensions come
# from target attributes in the sources, not from -march: they run where cpu.c finds them.
$(BUILD)/src/kernels/gemm_bf16_portable.o $(BUILD)/src/kernels/gemm_bf16_avx512.o \
  $(BUILD)/src/kernels/attn_bf16.o $(BUILD)/src/kernels/attn_bf16_avx512.o: CFLAGS += -ffp-contract=off

$(LIB): $(LIB_OBJ)
	@rm -f $@
	@ar rcs $@ $^

# Programs link the objects themselves (not the archive), so every definition is seen at once.
$(BUILD)/cformer: $(CLI_OBJ) $(LIB_OBJ) | $(LIB)
	@echo "LD $@"
	@$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/%: tests/%.c tests/test.h tests/gradcheck.h tests/attn_fixture.h $(LIB_OBJ)
	@mkdir -p $(dir $@)
	@echo "LD $@"
	@$(CC) $(CFLAGS) -Itests $< $(LIB_OBJ) -o $@ $(LDLIBS)

# Every test binary runs at 1 thread and at 2; the last line is "N passed, M failed".
test: all $(TEST_BIN) data/tiny/train.bin
	@CFORMER=$(BUILD)/cformer sh tests/run.sh $(BUILD) $(TEST_BIN) tests/test_layers.sh tests/test_study.sh

# a small offline corpus for end-to-end tests (tools/make_tiny_data.sh)
data/tiny/train.bin:
	sh tools/make_tiny_data.sh >/dev/null

# Benchmarks print BENCH lines (docs/architecture.md section 13). OpenBLAS is linked only here, when present.
BLAS_LIBS := $(shell pkg-config --libs openblas 2>/dev/null || (test -e /usr/lib/x86_64-linux-gnu/libopenblas.so && echo -lopenblas))
ifneq ($(strip $(BLAS_LIBS)),)
  BENCH_BLAS := -DCF_HAVE_OPENBLAS $(shell pkg-config --cflags openblas 2>/dev/null)
endif
$(BUILD)/bench/%: tools/bench/%.c tools/bench/bench.h $(LIB_OBJ)
	@mkdir -p $(dir $@)
	@echo "LD $@"
	@$(CC) $(CFLAGS) $(BENCH_BLAS) $< $(LIB_OBJ) -o $@ $(LDLIBS) $(BLAS_LIBS)

BENCH_BIN := $(patsubst tools/bench/%.c,$(BUILD)/bench/%,$(wildcard tools/bench/*.c))
bench: all $(BENCH_BIN)
	@for b in $(BENCH_BIN); do $$b || exit 1; done
	@sh tools/bench/grad_checkpoint.sh $(BUILD)

# the README's first command: install, build, prepare data, train ~2 minutes, evaluate, sample
quickstart: deps
	@$(MAKE) --no-print-directory -j2 all
	@sh tools/quickstart.sh $(BUILD)

# shell: install the Debian packages of $(1) that are missing (apt-get; through sudo unless root)
define install_missing
missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
 if [ -n "$$missing" ]; then echo "installing:$$missing"; \
   SUDO=$$( [ $$(id -u) -eq 0 ] || echo sudo ); \
   $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
 else echo "$(2): all present ($(1))"; fi
endef

deps:
	@$(call install_missing,$(PKGS),deps)

# matplotlib for the pictures of tools/plot_runs.py and tools/study.sh (optional: without it the study
# writes its report without pictures)
plot-deps:
	@$(call install_missing,$(PLOTPKG),plot-deps)

# libFuzzer targets (tests/fuzz/README.md): clang with ASan and UBSan into build-fuzz/; the library is
# instrumented for coverage (fuzzer-no-link), each target links libFuzzer's main. `make fuzz` runs
# every target FUZZ_SECONDS and prints "BENCH fuzz target=... runs=... crashes=..."; it fails when an
# input fails in cformer's code (failures inside libhdf5 are counted apart).
FUZZ_BUILD   := build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_CFLAGS  := -std=c11 -D_GNU_SOURCE -Wall -Wextra -fopenmp -Iinclude $(HDF5_CFLAGS) -O1 -g \
                -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined -Wno-pass-failed
FUZZ_OBJ     := $(LIB_SRC:%.c=$(FUZZ_BUILD)/%.o)
FUZZ_BIN     := $(patsubst tests/fuzz/%.c,$(FUZZ_BUILD)/%,$(wildcard tests/fuzz/fuzz_*.c))
.SECONDARY: $(FUZZ_OBJ)

$(FUZZ_BUILD)/%.o: %.c $(wildcard include/cformer/*.h) $(wildcard src/*/*.h) | fuzz-deps
	@mkdir -p $(dir $@)
	@echo "CC (fuzz) $<"
	@clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_OBJ)
	@echo "LD $@"
	@clang $(FUZZ_CFLAGS) -fsanitize=fuzzer $< $(FUZZ_OBJ) -o $@ $(LDLIBS)

fuzz: $(FUZZ_BIN)
	@sh tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_BIN)

# clang with its libFuzzer and OpenMP runtimes, installed when missing (optional packages, as BENCHPKG)
fuzz-deps:
	@echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { (void)d; return (int)n * 0; }' | \
	 clang -fsanitize=fuzzer -fopenmp -x c - -o /dev/null 2>/dev/null || { $(call install_missing,$(FUZZPKG),fuzz-deps); }

clean:
	rm -rf $(BUILD) build-*
