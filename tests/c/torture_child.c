/*
 * The child of the crash torture test (tests/torture.rs): a trainer that
 * saves checkpoints in an endless loop until the parent kills it with
 * SIGKILL at a random instant.
 *
 * Usage: torture_child DIRECTORY [die-while-deleting | async]
 *
 * It opens a manager on DIRECTORY (max_to_keep 3, one checkpoint preserved
 * every TORTURE_KEEP_HOURS of a fake clock that advances 600 s per save),
 * restores the latest checkpoint, checking that every byte of it is what
 * one save wrote, prints "restored <prefix> save <G> by <P>" (or "restored
 * none") on stdout, then saves forever. Each save it knows is committed
 * it prints as "committed <prefix> save <G> by <P>".
 *
 * With `async`, saves go to the library's background thread
 * (ckpt_manager_save_async), except every SYNC_EVERY-th, which blocks. A
 * background save is known committed only when a later call says so: the
 * next save (it waits for the one in flight, and would return its
 * failure) or ckpt_manager_wait_until_finished returning OK; save_async
 * returning its prefix says nothing of the save it started. A save that
 * reuses a number first waits for the save in flight, so that it picks
 * from the list as that save leaves it.
 *
 * Saves are numbered by generation G: the committed saves so far, plus
 * one. The fake clock shows 1e6 + 600 * G, so the state file's newest
 * timestamp tells a restarted child the last committed generation. Most
 * saves take the next checkpoint number; every RESAVE_LATEST_EVERY-th
 * generation saves the latest number again, every RESAVE_OLDER_EVERY-th
 * an older number still listed.
 *
 * Save G of checkpoint N by process P writes `<prefix>.index`, one or two
 * `<prefix>.data-0000K-of-0000S` and sometimes a directory `<prefix>` with
 * a file `shard` inside, the layout and sizes (a few hundred bytes to
 * about 1 MiB) derived from N and G. Each file starts with a header
 * (magic, N, its own length, G, P) followed by bytes derived from all of
 * them, so that any file tells which save wrote it. tests/torture.rs
 * reimplements the same layout.
 *
 * With `die-while-deleting`, the first checkpoint the sweep deletes loses
 * its index file (a delete callback) and the process then kills itself
 * with SIGKILL: a kill at that instant of a real run, made deterministic.
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
/* With 600 s per save, one checkpoint in six is preserved. */
#define TORTURE_KEEP_HOURS 1.0
#define CLOCK_ORIGIN 1e6
#define CLOCK_STEP 600.0
#define RESAVE_LATEST_EVERY 7
#define RESAVE_OLDER_EVERY 11
/* With `async`: every SYNC_EVERY-th generation saves blocking. */
#define SYNC_EVERY 5

#define HEADER_SIZE 40
static const char MAGIC[8] = {'C', 'K', 'P', 'T', 't', 'o', 'r', '2'};

/* File kinds: the index, data shards 0 and 1, the file in the directory. */
enum { KIND_INDEX, KIND_DATA0, KIND_DATA1, KIND_SHARD, KIND_COUNT };

/* Which save wrote a checkpoint's files. */
typedef struct {
  uint64_t number, generation, nonce;
} save_id;

/* The generation the fake clock shows, set before each save. */
static uint64_t clock_generation;
/* The save being written: its generation (the clock's at the call, taken
 * by the prepare callback on the calling thread, since a background save's
 * callback runs later on another) and this process. */
static uint64_t save_generation, nonce;
/* Set by the restore callback: what it read, or that it was inconsistent. */
static save_id restored_id;
static bool inconsistent;

static uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

static uint64_t layout(uint64_t number, uint64_t generation) {
  return mix(number ^ (generation << 32) ^ 0xa5a5);
}

static int data_shards(uint64_t number, uint64_t generation) {
  return 1 + (int)(layout(number, generation) % 2);
}

static bool has_kind(uint64_t number, uint64_t generation, int kind) {
  switch (kind) {
    case KIND_DATA1: return data_shards(number, generation) == 2;
    case KIND_SHARD: return layout(number, generation) / 2 % 3 == 0;
    default: return true;
  }
}

/* `suffix` receives the file's suffix after the prefix. */
static void suffix_of(uint64_t number, uint64_t generation, int kind, char suffix[32]) {
  switch (kind) {
    case KIND_INDEX: snprintf(suffix, 32, ".index"); break;
    case KIND_SHARD: snprintf(suffix, 32, "/shard"); break;
    default:
      snprintf(suffix, 32, ".data-%05d-of-%05d", kind - KIND_DATA0,
               data_shards(number, generation));
  }
}

/* Sizes from a few hundred bytes to a bit over 1 MiB. */
static uint64_t file_size(uint64_t number, uint64_t generation, int kind) {
  uint64_t h = mix((number * KIND_COUNT + (uint64_t)kind) ^ mix(generation));
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

/* The whole content of file `kind` of save `id` (malloc'd). */
static uint8_t *file_content(save_id id, int kind, uint64_t size) {
  uint8_t *bytes = malloc(size);
  if (bytes == NULL) return NULL;
  memcpy(bytes, MAGIC, sizeof MAGIC);
  put_u64(bytes + 8, id.number);
  put_u64(bytes + 16, size);
  put_u64(bytes + 24, id.generation);
  put_u64(bytes + 32, id.nonce);
  uint64_t seed = mix(id.number ^ ((uint64_t)kind << 56)) ^ mix(id.generation ^ (id.nonce << 24));
  for (uint64_t i = HEADER_SIZE; i < size; i++) bytes[i] = body_byte(seed, i);
  return bytes;
}

static char *path_of(const char *prefix, const char *suffix) {
  size_t length = strlen(prefix) + strlen(suffix) + 1;
  char *path = malloc(length);
  if (path != NULL) snprintf(path, length, "%s%s", prefix, suffix);
  return path;
}

static int32_t begin_save(void *user_data, uint64_t number) {
  (void)user_data;
  (void)number;
  save_generation = clock_generation;
  return 0;
}

static int32_t save_files(void *user_data, const char *prefix, uint64_t number) {
  (void)user_data;
  save_id id = {number, save_generation, nonce};
  if (has_kind(number, id.generation, KIND_SHARD) && mkdir(prefix, 0755) != 0) return errno;
  for (int kind = 0; kind < KIND_COUNT; kind++) {
    if (!has_kind(number, id.generation, kind)) continue;
    uint64_t size = file_size(number, id.generation, kind);
    uint8_t *bytes = file_content(id, kind, size);
    char suffix[32];
    suffix_of(number, id.generation, kind, suffix);
    char *path = path_of(prefix, suffix);
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

/* Reads the whole file (up to `limit` bytes) into `*out`; its length. */
static size_t read_file(const char *path, size_t limit, uint8_t **out) {
  FILE *file = fopen(path, "rb");
  *out = file == NULL ? NULL : malloc(limit + 1);
  size_t read = *out == NULL ? 0 : fread(*out, 1, limit + 1, file);
  if (file != NULL) fclose(file);
  return read;
}

static bool file_is_consistent(const char *prefix, save_id id, int kind) {
  char suffix[32];
  suffix_of(id.number, id.generation, kind, suffix);
  char *path = path_of(prefix, suffix);
  uint64_t expected = file_size(id.number, id.generation, kind);
  uint8_t *want = file_content(id, kind, expected);
  uint8_t *got = NULL;
  size_t read = path == NULL ? 0 : read_file(path, expected, &got);
  bool ok = want != NULL && got != NULL && read == expected && memcmp(got, want, expected) == 0;
  if (!ok)
    fprintf(stderr, "torture_child: %s%s has %zu bytes, not save %llu of checkpoint %llu\n",
            prefix, suffix, read, (unsigned long long)id.generation,
            (unsigned long long)id.number);
  free(want);
  free(got);
  free(path);
  return ok;
}

/* Checks every file against the save the index names. */
static int32_t restore_files(void *user_data, const char *prefix) {
  (void)user_data;
  save_id id = {number_of(prefix), 0, 0};
  char *index = path_of(prefix, ".index");
  uint8_t *header = NULL;
  bool ok = index != NULL && read_file(index, HEADER_SIZE, &header) >= HEADER_SIZE &&
            id.number > 0;
  if (ok) {
    id.generation = get_u64(header + 24);
    id.nonce = get_u64(header + 32);
  }
  free(header);
  free(index);
  for (int kind = 0; ok && kind < KIND_COUNT; kind++)
    if (has_kind(id.number, id.generation, kind)) ok = file_is_consistent(prefix, id, kind);
  if (!ok) {
    inconsistent = true;
    return 42;
  }
  restored_id = id;
  return 0;
}

static double fake_clock(void *user_data) {
  (void)user_data;
  return CLOCK_ORIGIN + CLOCK_STEP * (double)clock_generation;
}

/* The last committed generation: the state file's newest timestamp. */
static uint64_t committed_generation(const char *directory) {
  ckpt_checkpoint_state *state = NULL;
  ckpt_status status = ckpt_get_checkpoint_state(directory, &state);
  if (status != CKPT_STATUS_OK) {
    fprintf(stderr, "torture_child: reading the state file: %s: %s\n",
            ckpt_status_name((uint32_t)status), ckpt_last_error_message());
    exit(3);
  }
  double newest = CLOCK_ORIGIN;
  if (state != NULL) {
    for (size_t i = 0; i < ckpt_checkpoint_state_timestamp_count(state); i++)
      if (ckpt_checkpoint_state_timestamp(state, i) > newest)
        newest = ckpt_checkpoint_state_timestamp(state, i);
    double preserved = ckpt_checkpoint_state_last_preserved_timestamp(state);
    if (preserved > newest) newest = preserved;
  }
  ckpt_checkpoint_state_free(state);
  return (uint64_t)((newest - CLOCK_ORIGIN) / CLOCK_STEP + 0.5);
}

/* Deletes the index of the swept checkpoint, then dies. */
static int32_t die_while_deleting(void *user_data, const char *prefix) {
  (void)user_data;
  char *path = path_of(prefix, ".index");
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

static void report_committed(const char *prefix, uint64_t generation) {
  printf("committed %s save %llu by %llu\n", prefix, (unsigned long long)generation,
         (unsigned long long)nonce);
}

/* With `async`: the background save whose commit is not known yet. */
static struct {
  char *prefix; /* NULL: none */
  uint64_t generation;
} unconfirmed;

/* A call returned OK after waiting for the background save in flight. */
static void confirm_background_save(void) {
  if (unconfirmed.prefix == NULL) return;
  report_committed(unconfirmed.prefix, unconfirmed.generation);
  ckpt_string_free(unconfirmed.prefix);
  unconfirmed.prefix = NULL;
}

/* Waits at most `timeout_seconds` (negative: as long as it takes) for the
 * background save in flight. */
static void wait_for_background_save(ckpt_manager *manager, double timeout_seconds) {
  ckpt_status status = ckpt_manager_wait_until_finished(manager, timeout_seconds);
  if (status == CKPT_STATUS_TIMEOUT) return;
  if (status != CKPT_STATUS_OK) fail(6, "a background save", status);
  confirm_background_save();
}

/* Saves number `number` (0: the next) as generation `generation`, in the
 * background or not; the save in flight is committed once it returns. */
static void save_generation_now(ckpt_manager *manager, uint64_t number, uint64_t generation,
                                bool background) {
  clock_generation = generation;
  char *saved = NULL;
  ckpt_status status;
  if (background) {
    ckpt_save_args *args = NULL; /* NULL: the defaults, the next number */
    if (number != 0 && (ckpt_save_args_new(&args) != CKPT_STATUS_OK ||
                        ckpt_save_args_set_checkpoint_number(args, number) != CKPT_STATUS_OK))
      fail(6, "making save arguments", CKPT_STATUS_INVALID_ARGUMENT);
    status = ckpt_manager_save_async(manager, args, &saved);
    ckpt_save_args_free(args);
  } else {
    status = ckpt_manager_save(manager, number != 0 ? &number : NULL, true, &saved);
  }
  if (status != CKPT_STATUS_OK) fail(6, "saving", status);
  if (saved == NULL) {
    fprintf(stderr, "torture_child: a save was skipped\n");
    exit(7);
  }
  confirm_background_save();
  if (background) {
    unconfirmed.prefix = saved;
    unconfirmed.generation = generation;
    wait_for_background_save(manager, 0); /* committed already? */
  } else {
    report_committed(saved, generation);
    ckpt_string_free(saved);
  }
}

/* The number save `generation` reuses, or 0 for the next one. */
static uint64_t number_to_reuse(ckpt_manager *manager, uint64_t generation) {
  uint64_t number = 0;
  if (generation % RESAVE_LATEST_EVERY == 0) {
    char *latest = NULL;
    ckpt_status status = ckpt_manager_latest(manager, &latest);
    if (status != CKPT_STATUS_OK) fail(6, "reading the latest", status);
    if (latest != NULL) number = number_of(latest);
    ckpt_string_free(latest);
  } else if (generation % RESAVE_OLDER_EVERY == 0) {
    ckpt_string_list *listed = NULL;
    ckpt_status status = ckpt_manager_checkpoints(manager, &listed);
    if (status != CKPT_STATUS_OK) fail(6, "listing the checkpoints", status);
    /* Oldest first; the last one is the latest. */
    if (listed->len >= 2)
      number = number_of(listed->items[generation / RESAVE_OLDER_EVERY % (listed->len - 1)]);
    ckpt_string_list_free(listed);
  }
  return number;
}

int main(int argc, char **argv) {
  bool die_in_sweep = argc == 3 && strcmp(argv[2], "die-while-deleting") == 0;
  bool async_saves = argc == 3 && strcmp(argv[2], "async") == 0;
  if (argc != 2 && !die_in_sweep && !async_saves) {
    fprintf(stderr, "usage: %s DIRECTORY [die-while-deleting | async]\n", argv[0]);
    return 2;
  }
  /* Each line whole as soon as it is printed: the parent reads what a
   * killed child printed. */
  setvbuf(stdout, NULL, _IOLBF, 0);
  const char *directory = argv[1];
  nonce = (uint64_t)getpid();

  /* The clock starts at the next save's time: not behind a save that
   * opening finishes (the manager takes no time later than the clock's). */
  clock_generation = committed_generation(directory) + 1;

  ckpt_options *options = NULL;
  if (ckpt_options_new(&options) != CKPT_STATUS_OK ||
      ckpt_options_set_directory(options, directory) != CKPT_STATUS_OK ||
      ckpt_options_set_max_to_keep(options, MAX_TO_KEEP) != CKPT_STATUS_OK ||
      ckpt_options_set_keep_checkpoint_every_n_hours(options, TORTURE_KEEP_HOURS) !=
          CKPT_STATUS_OK ||
      ckpt_options_set_prepare_callback(options, begin_save, NULL, NULL) != CKPT_STATUS_OK ||
      ckpt_options_set_save_callback(options, save_files, NULL, NULL) != CKPT_STATUS_OK ||
      ckpt_options_set_restore_callback(options, restore_files, NULL, NULL) !=
          CKPT_STATUS_OK ||
      ckpt_options_set_clock_callback(options, fake_clock, NULL, NULL) != CKPT_STATUS_OK ||
      (die_in_sweep && ckpt_options_set_delete_callback(options, die_while_deleting, NULL,
                                                        NULL) != CKPT_STATUS_OK))
    fail(4, "setting options", CKPT_STATUS_INVALID_ARGUMENT);
  ckpt_manager *manager = NULL;
  ckpt_status status = ckpt_manager_new(options, &manager);
  ckpt_options_free(options);
  if (status != CKPT_STATUS_OK) fail(4, "opening the manager", status);
  /* Opening may have finished an interrupted commit. */
  uint64_t generation = committed_generation(directory);

  char *latest = NULL;
  uint64_t counter = 0;
  if (ckpt_manager_latest(manager, &latest) != CKPT_STATUS_OK ||
      ckpt_manager_save_counter(manager, &counter) != CKPT_STATUS_OK ||
      (latest != NULL && counter < number_of(latest))) {
    fprintf(stderr, "torture_child: save counter %llu is behind the latest checkpoint %s\n",
            (unsigned long long)counter, latest != NULL ? latest : "none");
    return 4;
  }
  ckpt_string_free(latest);

  char *restored = NULL;
  status = ckpt_manager_restore_or_initialize(manager, &restored);
  if (inconsistent) {
    fprintf(stderr, "torture_child: restored an inconsistent checkpoint\n");
    return 42;
  }
  if (status != CKPT_STATUS_OK) fail(5, "restoring", status);
  if (restored != NULL)
    printf("restored %s save %llu by %llu\n", restored,
           (unsigned long long)restored_id.generation, (unsigned long long)restored_id.nonce);
  else
    printf("restored none\n");
  fflush(stdout);
  ckpt_string_free(restored);

  for (;;) {
    generation++;
    bool reuses = generation % RESAVE_LATEST_EVERY == 0 || generation % RESAVE_OLDER_EVERY == 0;
    if (async_saves && reuses) wait_for_background_save(manager, -1);
    uint64_t number = number_to_reuse(manager, generation);
    save_generation_now(manager, number, generation,
                        async_saves && generation % SYNC_EVERY != 0);
  }
}
