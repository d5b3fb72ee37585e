/*
 * The child of the crash torture test (tests/torture.rs): a trainer that
 * saves checkpoints in an endless loop until the parent kills it with
 * SIGKILL at a random instant.
 *
 * Usage: torture_child DIRECTORY [die-while-deleting]
 *
 * It opens a manager on DIRECTORY (max_to_keep 3, one checkpoint preserved
 * every TORTURE_KEEP_HOURS of a fake clock that advances 600 s per
 * checkpoint), restores the latest checkpoint, checking that every byte of
 * it is what the save callback wrote for that number, prints
 * "restored <prefix>" (or "restored none") on stdout, then saves forever.
 *
 * The fake clock is 1e6 + 600 * N, N being the number of the newest
 * checkpoint: read from the state file before the manager opens, then the
 * number being saved. So it continues monotonically across restarts
 * without the process keeping anything of its own.
 *
 * Checkpoint N holds files whose names and sizes (a few hundred bytes to
 * about 1 MiB) are derived from N: `<prefix>.index`, two
 * `<prefix>.data-0000K-of-00002` and, for every third N, a directory
 * `<prefix>` with a file `shard` inside. Each file starts with a header
 * (magic, N, its own length) followed by bytes derived from N, the file and
 * the offset. tests/torture.rs reimplements the same layout to check the
 * latest checkpoint from the parent.
 *
 * With `die-while-deleting`, the first checkpoint the sweep deletes has its
 * first data file removed (the built-in deletion removes data files first)
 * and the process then kills itself with SIGKILL: a kill at that instant of
 * a real run, made deterministic.
 *
 * Exit codes (the parent expects none of them: only death by SIGKILL):
 *   2 usage, 3 the state file cannot be read, 4 the manager cannot open,
 *   5 restore failed, 6 a save failed, 7 a save was skipped,
 *   42 a restored checkpoint's content is inconsistent.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "ckpt_manager.h"

#define MAX_TO_KEEP 3
/* With 600 s per checkpoint, one checkpoint in six is preserved. */
#define TORTURE_KEEP_HOURS 1.0
#define CLOCK_ORIGIN 1e6
#define CLOCK_STEP 600.0

#define HEADER_SIZE 24
static const char MAGIC[8] = {'C', 'K', 'P', 'T', 't', 'o', 'r', '1'};

enum { KIND_INDEX, KIND_DATA0, KIND_DATA1, KIND_SHARD, KIND_COUNT };
static const char *const SUFFIXES[KIND_COUNT] = {
    ".index", ".data-00000-of-00002", ".data-00001-of-00002", "/shard"};

/* The number whose clock the fake clock shows. */
static uint64_t clock_number;
/* Set by the restore callback when what it read is not what was saved. */
static bool inconsistent;

static uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

static bool has_kind(uint64_t number, int kind) {
  return kind != KIND_SHARD || number % 3 == 0;
}

/* Sizes from a few hundred bytes to a bit over 1 MiB. */
static uint64_t file_size(uint64_t number, int kind) {
  uint64_t h = mix(number * KIND_COUNT + (uint64_t)kind);
  switch (kind) {
    case KIND_INDEX: return HEADER_SIZE + 256 + h % 4096;
    case KIND_DATA0: return 4096 + h % (1u << 20);
    case KIND_DATA1: return 1024 + h % (64u << 10);
    default: return 512 + h % (32u << 10);
  }
}

static uint8_t body_byte(uint64_t seed, uint64_t offset) {
  return (uint8_t)((seed >> (offset % 7 * 8)) + offset * 7 + (offset >> 9));
}

static void put_u64(uint8_t *out, uint64_t value) {
  for (int i = 0; i < 8; i++) out[i] = (uint8_t)(value >> (8 * i));
}

static uint64_t get_u64(const uint8_t *in) {
  uint64_t value = 0;
  for (int i = 0; i < 8; i++) value |= (uint64_t)in[i] << (8 * i);
  return value;
}

/* The whole content of file `kind` of checkpoint `number` (malloc'd). */
static uint8_t *file_content(uint64_t number, int kind, uint64_t size) {
  uint8_t *bytes = malloc(size);
  if (bytes == NULL) return NULL;
  memcpy(bytes, MAGIC, sizeof MAGIC);
  put_u64(bytes + 8, number);
  put_u64(bytes + 16, size);
  uint64_t seed = mix(number ^ ((uint64_t)kind << 56));
  for (uint64_t i = HEADER_SIZE; i < size; i++) bytes[i] = body_byte(seed, i);
  return bytes;
}

static char *path_of(const char *prefix, const char *suffix) {
  size_t length = strlen(prefix) + strlen(suffix) + 1;
  char *path = malloc(length);
  if (path != NULL) snprintf(path, length, "%s%s", prefix, suffix);
  return path;
}

static int32_t save_files(void *user_data, const char *prefix, uint64_t number) {
  (void)user_data;
  clock_number = number; /* the clock is read after this callback */
  if (number % 3 == 0 && mkdir(prefix, 0755) != 0 && errno != EEXIST) return errno;
  for (int kind = 0; kind < KIND_COUNT; kind++) {
    if (!has_kind(number, kind)) continue;
    uint64_t size = file_size(number, kind);
    uint8_t *bytes = file_content(number, kind, size);
    char *path = path_of(prefix, SUFFIXES[kind]);
    if (bytes == NULL || path == NULL) return ENOMEM;
    FILE *file = fopen(path, "wb");
    int32_t result = file == NULL ? errno : 0;
    if (file != NULL) {
      if (fwrite(bytes, 1, size, file) != size) result = EIO;
      if (fclose(file) != 0 && result == 0) result = EIO;
    }
    free(bytes);
    free(path);
    if (result != 0) return result;
  }
  return 0;
}

/* The N of ".../ckpt-N", or 0. */
static uint64_t number_of(const char *prefix) {
  const char *dash = strrchr(prefix, '-');
  return dash == NULL ? 0 : strtoull(dash + 1, NULL, 10);
}

static bool file_is_consistent(const char *prefix, uint64_t number, int kind) {
  char *path = path_of(prefix, SUFFIXES[kind]);
  FILE *file = path == NULL ? NULL : fopen(path, "rb");
  if (file == NULL) {
    fprintf(stderr, "torture_child: cannot open %s%s\n", prefix, SUFFIXES[kind]);
    free(path);
    return false;
  }
  uint64_t expected = file_size(number, kind);
  uint8_t *want = file_content(number, kind, expected);
  uint8_t *got = malloc(expected + 1);
  size_t read = got == NULL ? 0 : fread(got, 1, expected + 1, file);
  fclose(file);
  bool ok = want != NULL && got != NULL && read == expected &&
            memcmp(got, MAGIC, sizeof MAGIC) == 0 && get_u64(got + 8) == number &&
            get_u64(got + 16) == read && memcmp(got, want, expected) == 0;
  if (!ok)
    fprintf(stderr, "torture_child: %s has %zu bytes not matching checkpoint %llu\n",
            path, read, (unsigned long long)number);
  free(want);
  free(got);
  free(path);
  return ok;
}

static int32_t restore_files(void *user_data, const char *prefix) {
  (void)user_data;
  uint64_t number = number_of(prefix);
  bool ok = number > 0;
  for (int kind = 0; ok && kind < KIND_COUNT; kind++)
    if (has_kind(number, kind)) ok = file_is_consistent(prefix, number, kind);
  if (!ok) {
    inconsistent = true;
    return 42;
  }
  return 0;
}

static double fake_clock(void *user_data) {
  (void)user_data;
  return CLOCK_ORIGIN + CLOCK_STEP * (double)clock_number;
}

/* Deletes like the built-in deletion, data first, and dies after one file. */
static int32_t die_while_deleting(void *user_data, const char *prefix) {
  (void)user_data;
  char *path = path_of(prefix, SUFFIXES[KIND_DATA0]);
  if (path == NULL || unlink(path) != 0) return EIO;
  free(path);
  raise(SIGKILL);
  return EIO; /* not reached */
}

static void fail(int code, const char *what, ckpt_status status) {
  fprintf(stderr, "torture_child: %s: %s: %s\n", what, ckpt_status_name((uint32_t)status),
          ckpt_last_error_message());
  exit(code);
}

int main(int argc, char **argv) {
  bool die_in_sweep = argc == 3 && strcmp(argv[2], "die-while-deleting") == 0;
  if (argc != 2 && !die_in_sweep) {
    fprintf(stderr, "usage: %s DIRECTORY [die-while-deleting]\n", argv[0]);
    return 2;
  }
  const char *directory = argv[1];

  /* The clock starts at the newest committed checkpoint's time. */
  ckpt_checkpoint_state *state = NULL;
  ckpt_status status = ckpt_get_checkpoint_state(directory, &state);
  if (status != CKPT_STATUS_OK) fail(3, "reading the state file", status);
  if (state != NULL) clock_number = number_of(ckpt_checkpoint_state_model_checkpoint_path(state));
  ckpt_checkpoint_state_free(state);

  ckpt_options *options = NULL;
  if (ckpt_options_new(&options) != CKPT_STATUS_OK ||
      ckpt_options_set_directory(options, directory) != CKPT_STATUS_OK ||
      ckpt_options_set_max_to_keep(options, MAX_TO_KEEP) != CKPT_STATUS_OK ||
      ckpt_options_set_keep_checkpoint_every_n_hours(options, TORTURE_KEEP_HOURS) !=
          CKPT_STATUS_OK ||
      ckpt_options_set_save_callback(options, save_files, NULL, NULL) != CKPT_STATUS_OK ||
      ckpt_options_set_restore_callback(options, restore_files, NULL, NULL) !=
          CKPT_STATUS_OK ||
      ckpt_options_set_clock_callback(options, fake_clock, NULL, NULL) != CKPT_STATUS_OK ||
      (die_in_sweep && ckpt_options_set_delete_callback(options, die_while_deleting, NULL,
                                                        NULL) != CKPT_STATUS_OK))
    fail(4, "setting options", CKPT_STATUS_INVALID_ARGUMENT);
  ckpt_manager *manager = NULL;
  status = ckpt_manager_new(options, &manager);
  ckpt_options_free(options);
  if (status != CKPT_STATUS_OK) fail(4, "opening the manager", status);

  uint64_t counter = 0;
  if (ckpt_manager_save_counter(manager, &counter) != CKPT_STATUS_OK || counter < clock_number) {
    fprintf(stderr, "torture_child: save counter %llu is behind the latest checkpoint %llu\n",
            (unsigned long long)counter, (unsigned long long)clock_number);
    return 4;
  }

  char *restored = NULL;
  status = ckpt_manager_restore_or_initialize(manager, &restored);
  if (inconsistent) {
    fprintf(stderr, "torture_child: restored an inconsistent checkpoint\n");
    return 42;
  }
  if (status != CKPT_STATUS_OK) fail(5, "restoring", status);
  printf("restored %s\n", restored != NULL ? restored : "none");
  fflush(stdout);
  ckpt_string_free(restored);

  for (;;) {
    char *saved = NULL;
    status = ckpt_manager_save(manager, NULL, true, &saved);
    if (status != CKPT_STATUS_OK) fail(6, "saving", status);
    if (saved == NULL) {
      fprintf(stderr, "torture_child: a save was skipped\n");
      return 7;
    }
    ckpt_string_free(saved);
  }
}
