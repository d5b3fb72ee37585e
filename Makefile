# The two commands of this project (see README.md):
#   make run   builds the library and runs the C example, interrupted and resumed
#   make test  installs what the tests need and runs every test
CC ?= cc
CFLAGS ?= -std=c11 -O2 -Wall -Wextra -Wpedantic -Werror
RELEASE_DIR := $(CURDIR)/target/release
BUILD_DIR := build

.PHONY: run test bench library clean

library:
	cargo build --release

$(BUILD_DIR)/tiny_trainer: examples/tiny_trainer.c include/ckpt_manager.h library
	mkdir -p $(BUILD_DIR)
	$(CC) $(CFLAGS) -Iinclude $< -o $@ -L$(RELEASE_DIR) -lckpt_manager -Wl,-rpath,$(RELEASE_DIR)

run: $(BUILD_DIR)/tiny_trainer
	rm -rf $(BUILD_DIR)/tiny-run
	@echo "== first run, interrupted at step 34"
	$(BUILD_DIR)/tiny_trainer $(BUILD_DIR)/tiny-run 50 34
	@echo "== second run, resumes from the latest checkpoint"
	$(BUILD_DIR)/tiny_trainer $(BUILD_DIR)/tiny-run 50
	@echo "== the checkpoint directory"
	ls $(BUILD_DIR)/tiny-run
	cat $(BUILD_DIR)/tiny-run/checkpoint

test:
	./scripts/setup
	cargo test
	@echo "== the C and C++ programs again, under valgrind"
	CKPT_VALGRIND=1 cargo test --test c_api --test header --test example

bench:
	cargo bench --bench save_restore

clean:
	cargo clean
	rm -rf $(BUILD_DIR)
