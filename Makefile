# The two commands of this project (see README.md):
#   make run   builds the library and runs the demo trainer, interrupted and resumed
#   (make tiny runs the small example, examples/tiny_trainer.c, the same way)
#   (make run-mpi runs its data-parallel variant over 4 MPI ranks, with
#   one rank killed, then resumed on 2 ranks)
#   make test  installs what the tests need and runs every test (the
#   library's and the ckpt command-line tool's, cli/)
#   (make install PREFIX=... installs the library; make bench, make bench-commit,
#   make bench-async, make bench-mpi, make bench-reshard, make bench-s3, make bench-tiers,
#   make torture; make header regenerates
#   include/ckpt_manager.h after a change to src/ffi)
CC ?= cc
CFLAGS ?= -std=c11 -O2 -Wall -Wextra -Wpedantic -Werror
RELEASE_DIR := $(CURDIR)/target/release
BUILD_DIR := build

.PHONY: run run-mpi tiny test bench library clean header

library:
	cargo build --release

$(BUILD_DIR)/tiny_trainer: examples/tiny_trainer.c include/ckpt_manager.h library
	mkdir -p $(BUILD_DIR)
	$(CC) $(CFLAGS) -Iinclude $< -o $@ -L$(RELEASE_DIR) -lckpt_manager -Wl,-rpath,$(RELEASE_DIR)

$(BUILD_DIR)/mlp_trainer: examples/mlp_trainer.c examples/mlp_model.h include/ckpt_manager.h library
	mkdir -p $(BUILD_DIR)
	$(CC) $(CFLAGS) -Iinclude $< -o $@ -L$(RELEASE_DIR) -lckpt_manager -Wl,-rpath,$(RELEASE_DIR) -lm

# The demo: interrupted at step 1250, resumed by the same command without
# --stop-at, then compared with a run straight through.
run: $(BUILD_DIR)/mlp_trainer
	rm -rf $(BUILD_DIR)/mlp-run $(BUILD_DIR)/mlp-straight
	@echo "== first run, interrupted at step 1250"
	$(BUILD_DIR)/mlp_trainer $(BUILD_DIR)/mlp-run --stop-at 1250
	@echo "== second run, resumes from the latest checkpoint"
	$(BUILD_DIR)/mlp_trainer $(BUILD_DIR)/mlp-run --export $(BUILD_DIR)/mlp-run.weights
	@echo "== the checkpoint directory"
	ls $(BUILD_DIR)/mlp-run
	@echo "== a run straight through, in another directory (its last line)"
	$(BUILD_DIR)/mlp_trainer $(BUILD_DIR)/mlp-straight --export $(BUILD_DIR)/mlp-straight.weights > $(BUILD_DIR)/mlp-straight.log
	tail -n 1 $(BUILD_DIR)/mlp-straight.log
	cmp $(BUILD_DIR)/mlp-run.weights $(BUILD_DIR)/mlp-straight.weights
	@echo "== the weights of the interrupted run and the straight run are identical"

$(BUILD_DIR)/mlp_trainer_mpi: examples/mlp_trainer_mpi.c examples/mlp_model.h include/ckpt_manager.h include/ckpt_manager_mpi.h library
	mkdir -p $(BUILD_DIR)
	mpicc $(CFLAGS) -Iinclude $< -o $@ -L$(RELEASE_DIR) -lckpt_manager -Wl,-rpath,$(RELEASE_DIR) -lm

# The data-parallel demo over 4 ranks (OpenMPI: scripts/setup): rank 1
# SIGKILLs itself at step 1250, the others time out at that step's save;
# the same command without the kill resumes, and its weights are compared
# with a run straight through; then 2 ranks resume the 4 ranks' last
# checkpoint and train on. orte_enable_recovery lets the other ranks
# reach their timeout instead of being killed by mpirun.
MPIRUN_NP := OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none \
	mpirun --allow-run-as-root --oversubscribe -np
MPIRUN := $(MPIRUN_NP) 4
# Absolute: a collective restore from a relative directory joins the
# directory twice (reported on issue 12).
MPI_DEMO := $(CURDIR)/$(BUILD_DIR)
run-mpi: $(BUILD_DIR)/mlp_trainer_mpi
	rm -rf $(MPI_DEMO)/mlp-mpi-run $(MPI_DEMO)/mlp-mpi-straight
	@echo "== first run, rank 1 killed at step 1250"
	-OMPI_MCA_orte_enable_recovery=1 $(MPIRUN) $(BUILD_DIR)/mlp_trainer_mpi $(MPI_DEMO)/mlp-mpi-run \
		--kill-rank 1 --kill-at 1250 --timeout 5 --save-every 250
	@echo "== second run, every rank resumes from the latest checkpoint"
	$(MPIRUN) $(BUILD_DIR)/mlp_trainer_mpi $(MPI_DEMO)/mlp-mpi-run --save-every 250 \
		--export $(MPI_DEMO)/mlp-mpi-run.weights
	@echo "== the checkpoint directory"
	ls $(MPI_DEMO)/mlp-mpi-run
	@echo "== a run straight through, in another directory (its last line)"
	$(MPIRUN) $(BUILD_DIR)/mlp_trainer_mpi $(MPI_DEMO)/mlp-mpi-straight --save-every 250 \
		--export $(MPI_DEMO)/mlp-mpi-straight.weights > $(MPI_DEMO)/mlp-mpi-straight.log
	tail -n 1 $(MPI_DEMO)/mlp-mpi-straight.log
	cmp $(MPI_DEMO)/mlp-mpi-run.weights $(MPI_DEMO)/mlp-mpi-straight.weights
	@echo "== the weights of the killed-and-resumed run and the straight run are identical"
	@echo "== the 4-rank checkpoint resumed on 2 ranks, trained on to step 2500"
	$(MPIRUN_NP) 2 $(BUILD_DIR)/mlp_trainer_mpi $(MPI_DEMO)/mlp-mpi-run --steps 2500 --save-every 250 \
		--export-resumed $(MPI_DEMO)/mlp-mpi-2-ranks.resumed
	cmp $(MPI_DEMO)/mlp-mpi-run.weights $(MPI_DEMO)/mlp-mpi-2-ranks.resumed
	@echo "== the 2 ranks resumed with the weights 4 ranks saved at step 2000 (replicated tensors), bit for bit"

tiny: $(BUILD_DIR)/tiny_trainer
	rm -rf $(BUILD_DIR)/tiny-run
	@echo "== first run, interrupted at step 34"
	$(BUILD_DIR)/tiny_trainer $(BUILD_DIR)/tiny-run 50 34
	@echo "== second run, resumes from the latest checkpoint"
	$(BUILD_DIR)/tiny_trainer $(BUILD_DIR)/tiny-run 50
	@echo "== the checkpoint directory"
	ls $(BUILD_DIR)/tiny-run
	cat $(BUILD_DIR)/tiny-run/checkpoint

# What waits on the network (scripts/setup's packages, the Python tests'
# fresh virtual environment) runs in the background while the CPU lints and
# compiles; the tests start once it is done, after its log. The valgrind
# runs select the workspace as `cargo test --workspace` does, so the
# library is built with the tests' features once; the install test then
# leaves it built as the Python package's build wants it.
PY_VENV := $(BUILD_DIR)/py-venv
test:
	cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
	mkdir -p $(BUILD_DIR)
	( ./scripts/setup && rm -rf $(PY_VENV) && python3 -m venv $(PY_VENV) && \
	  $(PY_VENV)/bin/python -m pip install --quiet setuptools wheel pytest numpy mpi4py \
	    boto3==1.43.11 safetensors \
	) > $(BUILD_DIR)/setup.log 2>&1 & setup=$$!; \
	trap 'kill $$setup 2>/dev/null' EXIT; \
	$(MAKE) --no-print-directory test-compile || exit 1; \
	ready=0; wait $$setup || ready=$$?; trap - EXIT; \
	echo "== scripts/setup and the Python tests' virtual environment ($(BUILD_DIR)/setup.log)"; \
	cat $(BUILD_DIR)/setup.log; [ $$ready -eq 0 ]
	@# The valgrind runs use the CPU that the other tests, which wait on
	@# disks, servers and timers, leave idle; their log follows them.
	CKPT_VALGRIND=1 cargo test --workspace --test c_api --test header --test example \
		> $(BUILD_DIR)/valgrind.log 2>&1 & valgrind=$$!; \
	trap 'kill $$valgrind 2>/dev/null' EXIT; \
	tests=0; cargo test --workspace || tests=$$?; \
	checked=0; wait $$valgrind || checked=$$?; trap - EXIT; \
	echo "== the C and C++ programs under valgrind, any invalid access or definite leak fails ($(BUILD_DIR)/valgrind.log)"; \
	cat $(BUILD_DIR)/valgrind.log; [ $$tests -eq 0 ] && [ $$checked -eq 0 ]
	@echo "== the Python package, pip-installed into the fresh virtual environment"
	@# boto3 reads the S3 tests' buckets back; their moto server is the one
	@# scripts/setup installed into build/s3-venv (one pinned install of moto).
	@# The dev profile: the library the Rust tests built, not a second tree.
	CKPT_MANAGER_CARGO_PROFILE=dev $(PY_VENV)/bin/python -m pip install --quiet \
		--no-build-isolation ./bindings/python
	CKPT_MANAGER_CARGO_PROFILE=dev $(PY_VENV)/bin/python -m pytest bindings/python/tests

# make test's lints, the local-only build's own tests, and the compilation
# of every test program.
.PHONY: test-compile
test-compile:
	cargo clippy --workspace --all-targets -- -D warnings
	@echo "== the library without object storage (cargo feature s3): lints and its own tests"
	@# --lib only: an integration test would build this variant's
	@# libckpt_manager.so over the default one in target/debug/deps.
	cargo clippy --no-default-features --all-targets -- -D warnings
	cargo test --no-default-features --lib
	cargo test --workspace --no-run

bench:
	cargo bench --bench save_restore

#   (make install PREFIX=... installs the library; make bench, make bench-commit,
# A save against the disk's floor in the same run, and its syscalls (scripts/bench-commit).
.PHONY: bench-commit
bench-commit:
	./scripts/bench-commit

# The time save_async blocks against memcpy, and a training loop with async,
# sync and no saves (benches/async_save.rs).
.PHONY: bench-async
bench-async:
	cargo bench --bench async_save

# A collective save across 4 MPI ranks against one process saving the same
# bytes (scripts/bench-mpi, benches/mpi_commit.c).
.PHONY: bench-mpi
bench-mpi:
	./scripts/bench-mpi

# A checkpoint saved by 4 MPI ranks restored onto 2, 3 and 4: time, and bytes
# each rank reads against the bytes it needs (scripts/bench-reshard,
# benches/mpi_reshard.c).
.PHONY: bench-reshard
bench-reshard:
	./scripts/bench-reshard

# Upload and download of 1 GiB of tensors through the library's S3 store
# against boto3's transfer manager on one moto server (scripts/bench-s3,
# benches/s3_transfer.py).
.PHONY: bench-s3
bench-s3:
	./scripts/bench-s3

# The remote tier on one moto server: save() with and without a remote, the
# background copy against boto3, a training loop's loss (scripts/bench-tiers,
# benches/tiers.py).
.PHONY: bench-tiers
bench-tiers:
	./scripts/bench-tiers

# cbindgen runs only here (and in the test that checks the header is current).
.PHONY: header
header:
	CKPT_UPDATE_HEADER=1 cargo test --test header checked_in_header_is_current

# The crash torture's long mode: 5,000 SIGKILLs (cargo test does 300).
.PHONY: torture
torture:
	CKPT_TORTURE_KILLS=5000 cargo test --release --test torture -- --nocapture

PREFIX ?= /usr/local
DESTDIR ?=

# Installs the library, headers, pkg-config file, CMake package and the
# ckpt command-line tool (bin/ckpt) into
# $(PREFIX) (DESTDIR stages it), in cargo-c's layout: see docs/installing.md.
.PHONY: install
install:
	./scripts/install --prefix "$(PREFIX)" --destdir "$(DESTDIR)"

clean:
	cargo clean
	rm -rf $(BUILD_DIR)
