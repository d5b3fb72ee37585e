/*
 * The smallest program using an installed ckpt_manager: it prints the
 * library's version, saves a tensor with the built-in saver, and restores
 * it in a second manager.
 *
 * Usage: hello DIRECTORY
 *
 * tests/install.rs builds it against scripts/install's output twice: with
 * `cc hello.c $(pkg-config --cflags --libs ckpt_manager)` and with the
 * CMake project beside it (CMakeLists.txt, find_package(ckpt_manager)).
 */
#include <ckpt_manager.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Stops with the library's explanation when a call fails. */
static void check(ckpt_status status, const char *what) {
  if (status != CKPT_STATUS_OK) {
    fprintf(stderr, "%s failed: %s: %s\n", what, ckpt_status_name(status),
            ckpt_last_error_message());
    exit(1);
  }
}

/* A manager of DIRECTORY keeping 3 checkpoints, with WEIGHTS registered. */
static ckpt_manager *open_manager(const char *directory, float *weights) {
  static const uint64_t shape[1] = {4};
  ckpt_options *options = NULL;
  ckpt_manager *manager = NULL;
  check(ckpt_options_new(&options), "ckpt_options_new");
  check(ckpt_options_set_directory(options, directory), "ckpt_options_set_directory");
  check(ckpt_options_set_max_to_keep(options, 3), "ckpt_options_set_max_to_keep");
  check(ckpt_manager_new(options, &manager), "ckpt_manager_new");
  ckpt_options_free(options);
  check(ckpt_manager_register_tensor(manager, "weights", CKPT_DTYPE_F32, shape, 1, weights),
        "ckpt_manager_register_tensor");
  return manager;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s DIRECTORY\n", argv[0]);
    return 2;
  }
  char header_version[64];
  snprintf(header_version, sizeof header_version, "%d.%d.%d", CKPT_VERSION_MAJOR,
           CKPT_VERSION_MINOR, CKPT_VERSION_PATCH);
  printf("ckpt_manager %s (header %s)\n", ckpt_version(), header_version);
  if (strcmp(ckpt_version(), header_version) != 0) {
    fprintf(stderr, "the library and the header differ\n");
    return 1;
  }

  float weights[4] = {0.5f, -1.0f, 2.0f, 3.25f};
  ckpt_manager *writer = open_manager(argv[1], weights);
  char *saved = NULL;
  check(ckpt_manager_save(writer, NULL, false, &saved), "ckpt_manager_save");
  printf("saved %s\n", saved);
  ckpt_string_free(saved);
  ckpt_manager_free(writer);

  float restored[4] = {0};
  ckpt_manager *reader = open_manager(argv[1], restored);
  char *prefix = NULL;
  check(ckpt_manager_restore_or_initialize(reader, &prefix), "ckpt_manager_restore_or_initialize");
  if (prefix == NULL || memcmp(weights, restored, sizeof weights) != 0) {
    fprintf(stderr, "the restored weights differ from the saved ones\n");
    return 1;
  }
  printf("restored %s: %g %g %g %g\n", prefix, restored[0], restored[1], restored[2],
         restored[3]);
  ckpt_string_free(prefix);
  ckpt_manager_free(reader);
  return 0;
}
