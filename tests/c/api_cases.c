/* The C API's contract, case by case: statuses, messages, out-parameters
 * cleared (NULL, 0, false) on failure, callback ownership, threads, and exactly what
 * ends up on disk (file names, state-file bytes).
 *
 * This program defines fsync() (see state_commit_sync_failure), so the
 * library's fsyncs come here; outside that case they pass through to
 * fdatasync(). */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test_support.h"

/* ------------------------------------------------------------------------
 * Helpers local to this program. */

/* Out-parameter sentinels: a failing call must leave these in place. */
static char sentinel_text[] = "sentinel";
static int manager_marker;
#define SENTINEL_STRING sentinel_text
#define SENTINEL_MANAGER ((ckpt_manager *)(void *)&manager_marker)
#define SENTINEL_STATE ((ckpt_checkpoint_state *)(void *)&manager_marker)

static char *format(const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  int length = vsnprintf(NULL, 0, fmt, args);
  va_end(args);
  CHECK(length >= 0);
  char *text = malloc((size_t)length + 1);
  CHECK(text != NULL);
  va_start(args, fmt);
  vsnprintf(text, (size_t)length + 1, fmt, args);
  va_end(args);
  return text;
}

static void make_dir(const char *path) {
  if (mkdir(path, 0777) != 0) test_fail(__FILE__, __LINE__, "cannot mkdir %s", path);
}

static void write_bytes(const char *path, const void *data, size_t length) {
  FILE *file = fopen(path, "wb");
  if (file == NULL) test_fail(__FILE__, __LINE__, "cannot write %s", path);
  CHECK(fwrite(data, 1, length, file) == length);
  CHECK(fclose(file) == 0);
}

/* Writes `text` to `<dir>/<name>`. */
static void write_in(const char *dir, const char *name, const char *text) {
  char *path = join(dir, name);
  write_text(path, text);
  free(path);
}

/* The whole file and its length; NULL if it cannot be read. */
static unsigned char *read_bytes(const char *path, size_t *out_length) {
  FILE *file = fopen(path, "rb");
  if (file == NULL) return NULL;
  size_t capacity = 256, length = 0, got;
  unsigned char *data = malloc(capacity);
  CHECK(data != NULL);
  while ((got = fread(data + length, 1, capacity - length, file)) > 0) {
    length += got;
    if (length == capacity) {
      capacity *= 2;
      data = realloc(data, capacity);
      CHECK(data != NULL);
    }
  }
  fclose(file);
  *out_length = length;
  return data;
}

#define CHECK_FILE_BYTES(path, data, length) \
  check_file_bytes(__FILE__, __LINE__, (path), (data), (length))
static void check_file_bytes(const char *file, int line, const char *path,
                             const void *data, size_t length) {
  size_t got_length = 0;
  unsigned char *got = read_bytes(path, &got_length);
  if (got == NULL) test_fail(file, line, "%s is missing", path);
  if (got_length != length || memcmp(got, data, length) != 0)
    test_fail(file, line, "%s changed (%zu bytes, expected %zu)", path,
              got_length, length);
  free(got);
}

/* `<dir>/<name>` holds exactly `text`. */
#define CHECK_FILE_TEXT(dir, name, text) \
  check_file_text(__FILE__, __LINE__, (dir), (name), (text))
static void check_file_text(const char *file, int line, const char *dir,
                            const char *name, const char *text) {
  char *path = join(dir, name);
  char *got = read_text(path);
  if (got == NULL) test_fail(file, line, "%s is missing", path);
  if (strcmp(got, text) != 0)
    test_fail(file, line, "%s holds:\n%s\nexpected:\n%s", path, got, text);
  free(got);
  free(path);
}

#define CHECK_STATE_FILE(dir, text) CHECK_FILE_TEXT((dir), "checkpoint", (text))

static int compare_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The `count` malloc'd names sorted bytewise and separated by one space;
 * frees them and the array. */
static char *sorted_names(char **names, size_t count) {
  qsort(names, count, sizeof *names, compare_names);
  size_t total = 1;
  for (size_t i = 0; i < count; i++) total += strlen(names[i]) + 1;
  char *text = malloc(total);
  CHECK(text != NULL);
  text[0] = '\0';
  for (size_t i = 0; i < count; i++) {
    if (i > 0) strcat(text, " ");
    strcat(text, names[i]);
    free(names[i]);
  }
  free(names);
  return text;
}

/* The directory's entries, sorted bytewise and separated by one space; ""
 * when empty, NULL when the directory cannot be opened. An open writer's
 * spare staging directory, there after its first save until it is freed,
 * is left out (nothing_created_at_construction checks it). */
static char *listing(const char *dir) {
  DIR *handle = opendir(dir);
  if (handle == NULL) return NULL;
  size_t count = 0, capacity = 16;
  char **names = malloc(capacity * sizeof *names);
  CHECK(names != NULL);
  struct dirent *entry;
  while ((entry = readdir(handle)) != NULL) {
    if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0) continue;
    if (strcmp(entry->d_name, "checkpoint.ckpt-spare") == 0) continue;
    if (count == capacity) {
      capacity *= 2;
      names = realloc(names, capacity * sizeof *names);
      CHECK(names != NULL);
    }
    names[count] = strdup(entry->d_name);
    CHECK(names[count] != NULL);
    count++;
  }
  closedir(handle);
  return sorted_names(names, count);
}

#define CHECK_LISTING(dir, expected) \
  check_listing(__FILE__, __LINE__, (dir), (expected))
static void check_listing(const char *file, int line, const char *dir,
                          const char *expected) {
  char *got = listing(dir);
  if (got == NULL || strcmp(got, expected) != 0)
    test_fail(file, line, "%s holds [%s], expected [%s]", dir,
              got ? got : "(no directory)", expected);
  free(got);
}

/* Expected listings: a writer's directory holds the state file and the
 * lock file; a TF-style checkpoint written through the manager is its
 * .index, .data and manifest. */
#define STATE_AND_LOCK "checkpoint checkpoint.lock"
#define TF3(n)                                                   \
  "ckpt-" #n ".ckpt-manifest.json ckpt-" #n ".data-00000-of-00001 " \
  "ckpt-" #n ".index"

static bool checkpoint_exists(const char *prefix) {
  bool found = false;
  CHECK_OK(ckpt_checkpoint_exists(prefix, &found));
  return found;
}

static void check_latest(ckpt_manager *manager, const char *expected) {
  char *latest = SENTINEL_STRING;
  CHECK_OK(ckpt_manager_latest(manager, &latest));
  CHECK(latest != SENTINEL_STRING);
  CHECK_STR(expected, latest);
  ckpt_string_free(latest);
}

static uint64_t save_counter(ckpt_manager *manager) {
  uint64_t counter = 987654321;
  CHECK_OK(ckpt_manager_save_counter(manager, &counter));
  return counter;
}

static void check_latest_on_disk(const char *dir, const char *expected) {
  char *latest = SENTINEL_STRING;
  CHECK_OK(ckpt_latest_checkpoint(dir, &latest));
  CHECK(latest != SENTINEL_STRING);
  CHECK_STR(expected, latest);
  ckpt_string_free(latest);
}

static void check_latest_with_flags(const char *dir, uint32_t flags, const char *expected) {
  char *latest = SENTINEL_STRING;
  CHECK_OK(ckpt_latest_checkpoint_with_flags(dir, flags, &latest));
  CHECK(latest != SENTINEL_STRING);
  CHECK_STR(expected, latest);
  ckpt_string_free(latest);
}

static ckpt_checkpoint_state *read_state(const char *dir) {
  ckpt_checkpoint_state *state = NULL;
  CHECK_OK(ckpt_get_checkpoint_state(dir, &state));
  CHECK(state != NULL);
  return state;
}

/* Saves and checks the prefix's basename, then frees it. */
static void save_expecting(ckpt_manager *manager, const char *basename) {
  char *prefix = save(manager);
  CHECK(prefix != NULL);
  CHECK_STR(basename, base_name(prefix));
  ckpt_string_free(prefix);
}

/* ------------------------------------------------------------------------
 * 1. version */

static void version(const char *dir) {
  (void)dir;
  char expected[64];
  snprintf(expected, sizeof expected, "%d.%d.%d", CKPT_VERSION_MAJOR,
           CKPT_VERSION_MINOR, CKPT_VERSION_PATCH);
  CHECK(ckpt_version() != NULL);
  CHECK_STR(expected, ckpt_version());
  CHECK(ckpt_version() == ckpt_version()); /* static, not allocated */
}

/* ------------------------------------------------------------------------
 * 2. status_names */

/* The enums have a fixed width, whatever the compiler makes of a C enum. */
_Static_assert(sizeof(ckpt_status) == sizeof(uint32_t), "ckpt_status is a uint32_t");
_Static_assert(sizeof(ckpt_log_level) == sizeof(uint32_t), "ckpt_log_level is a uint32_t");
_Static_assert(sizeof(ckpt_dtype) == sizeof(uint32_t), "ckpt_dtype is a uint32_t");

static void status_names(const char *dir) {
  (void)dir;
  /* No call has failed on this thread yet. */
  CHECK(ckpt_last_error_message() != NULL);
  CHECK_STR("", ckpt_last_error_message());
  struct {
    ckpt_status status;
    const char *name;
  } names[] = {
      {CKPT_STATUS_OK, "CKPT_STATUS_OK"},
      {CKPT_STATUS_NULL_ARGUMENT, "CKPT_STATUS_NULL_ARGUMENT"},
      {CKPT_STATUS_INVALID_ARGUMENT, "CKPT_STATUS_INVALID_ARGUMENT"},
      {CKPT_STATUS_STATE_CORRUPT, "CKPT_STATUS_STATE_CORRUPT"},
      {CKPT_STATUS_IO_ERROR, "CKPT_STATUS_IO_ERROR"},
      {CKPT_STATUS_CALLBACK_FAILED, "CKPT_STATUS_CALLBACK_FAILED"},
      {CKPT_STATUS_REENTRANT_CALL, "CKPT_STATUS_REENTRANT_CALL"},
      {CKPT_STATUS_PANIC, "CKPT_STATUS_PANIC"},
      {CKPT_STATUS_CHECKPOINT_DAMAGED, "CKPT_STATUS_CHECKPOINT_DAMAGED"},
      {CKPT_STATUS_LOCKED, "CKPT_STATUS_LOCKED"},
      {CKPT_STATUS_READ_ONLY, "CKPT_STATUS_READ_ONLY"},
      {CKPT_STATUS_NO_MANIFEST, "CKPT_STATUS_NO_MANIFEST"},
      {CKPT_STATUS_TENSOR_MISMATCH, "CKPT_STATUS_TENSOR_MISMATCH"},
      {CKPT_STATUS_TIMEOUT, "CKPT_STATUS_TIMEOUT"},
  };
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    CHECK(names[i].status == i); /* values never change meaning */
    CHECK_STR(names[i].name, ckpt_status_name(names[i].status));
  }
  const uint32_t unknown[] = {14, 999, (uint32_t)INT32_MAX + 1, UINT32_MAX};
  for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++)
    CHECK_STR("CKPT_STATUS_UNKNOWN", ckpt_status_name(unknown[i]));
}

/* ------------------------------------------------------------------------
 * 3. null_arguments */

typedef struct {
  int finalized;
} fin_counter;

static void count_finalizer(void *data) { ((fin_counter *)data)->finalized++; }

static int32_t dummy_save(void *data, const char *prefix, uint64_t number) {
  (void)data;
  (void)prefix;
  (void)number;
  return 0;
}
static int32_t dummy_prefix(void *data, const char *prefix) {
  (void)data;
  (void)prefix;
  return 0;
}
static int32_t dummy_init(void *data) {
  (void)data;
  return 0;
}
static int32_t dummy_step(void *data, int64_t *out_step) {
  (void)data;
  *out_step = 0;
  return 0;
}
static double dummy_clock(void *data) {
  (void)data;
  return 100.0;
}
static void dummy_log(void *data, ckpt_log_level level, const char *message) {
  (void)data;
  (void)level;
  (void)message;
}

enum { SLOT_SAVE, SLOT_RESTORE, SLOT_INIT, SLOT_STEP, SLOT_CLOCK, SLOT_DELETE, SLOT_LOG, SLOT_COUNT };
static const char *const slot_names[SLOT_COUNT] = {
    "save", "restore", "init", "step_counter", "clock", "delete", "log"};

/* Sets (or, with_callback false, clears) one callback slot with a
 * counting finalizer. */
static ckpt_status set_slot(ckpt_options *options, int slot, bool with_callback,
                            fin_counter *data) {
  ckpt_finalizer finalizer = count_finalizer;
  switch (slot) {
    case SLOT_SAVE:
      return ckpt_options_set_save_callback(options, with_callback ? dummy_save : NULL,
                                            data, finalizer);
    case SLOT_RESTORE:
      return ckpt_options_set_restore_callback(
          options, with_callback ? dummy_prefix : NULL, data, finalizer);
    case SLOT_INIT:
      return ckpt_options_set_init_callback(options, with_callback ? dummy_init : NULL,
                                            data, finalizer);
    case SLOT_STEP:
      return ckpt_options_set_step_counter_callback(
          options, with_callback ? dummy_step : NULL, data, finalizer);
    case SLOT_CLOCK:
      return ckpt_options_set_clock_callback(options, with_callback ? dummy_clock : NULL,
                                             data, finalizer);
    case SLOT_DELETE:
      return ckpt_options_set_delete_callback(
          options, with_callback ? dummy_prefix : NULL, data, finalizer);
    default:
      return ckpt_options_set_log_callback(options, with_callback ? dummy_log : NULL,
                                           data, finalizer);
  }
}

static void *fail_on_another_thread(void *arg) {
  (void)arg;
  CHECK_STATUS(CKPT_STATUS_NULL_ARGUMENT, ckpt_options_new(NULL));
  return NULL;
}

static void null_arguments(const char *dir) {
  fake_world world = {.now = 100.0};
  char *ckpt_dir = join(dir, "run");
  ckpt_options *options = world_options(&world, ckpt_dir, 3);
  ckpt_manager *manager = open_manager(options);
  char *string = SENTINEL_STRING;
  bool found = true;
  uint64_t counter = 4242;
  ckpt_string_list fake_list = {0}, *list = &fake_list;
  ckpt_checkpoint_state *state = SENTINEL_STATE;
  ckpt_manager *new_manager = SENTINEL_MANAGER;
  const uint64_t number = 5;

  /* Options. */
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "out_options", ckpt_options_new(NULL));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "options", ckpt_options_set_directory(NULL, dir));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "directory",
              ckpt_options_set_directory(options, NULL));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "options", ckpt_options_set_max_to_keep(NULL, 3));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "options", ckpt_options_set_keep_all(NULL));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "options",
              ckpt_options_set_keep_checkpoint_every_n_hours(NULL, 1.0));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "options",
              ckpt_options_set_checkpoint_name(NULL, "x"));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "name",
              ckpt_options_set_checkpoint_name(options, NULL));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "options",
              ckpt_options_set_checkpoint_interval(NULL, 2));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "options",
              ckpt_options_set_last_checkpoint_step(NULL, 2));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "options", ckpt_options_set_read_only(NULL, true));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "options",
              ckpt_options_set_verify_checksums(NULL, false));
  /* A setter that fails leaves user_data with the caller: no finalizer. */
  fin_counter not_taken = {0};
  for (int slot = 0; slot < SLOT_COUNT; slot++) {
    CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "options", set_slot(NULL, slot, true, &not_taken));
    CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "options", set_slot(NULL, slot, false, &not_taken));
  }
  CHECK(not_taken.finalized == 0);

  /* Manager construction. */
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "options", ckpt_manager_new(NULL, &new_manager));
  CHECK(new_manager == NULL);
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "out_manager", ckpt_manager_new(options, NULL));

  /* Manager calls. */
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager",
              ckpt_manager_save(NULL, NULL, true, &string));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager",
              ckpt_manager_save(NULL, &number, false, &string));
  CHECK(string == NULL);
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "out_prefix",
              ckpt_manager_save(manager, NULL, true, NULL));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "out_prefix",
              ckpt_manager_save(manager, &number, false, NULL));
  CHECK(world.saves == 0);
  CHECK_LISTING(ckpt_dir, "checkpoint.lock"); /* nothing was saved */

  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager", ckpt_manager_latest(NULL, &string));
  CHECK(string == NULL);
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "out_prefix", ckpt_manager_latest(manager, NULL));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager", ckpt_manager_checkpoints(NULL, &list));
  CHECK(list == NULL);
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "out_list", ckpt_manager_checkpoints(manager, NULL));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager",
              ckpt_manager_restore_or_initialize(NULL, &string));
  CHECK(string == NULL);
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "out_prefix",
              ckpt_manager_restore_or_initialize(manager, NULL));
  CHECK(world.inits == 0 && world.restores == 0);
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager", ckpt_manager_directory(NULL, &string));
  CHECK(string == NULL);
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "out_directory",
              ckpt_manager_directory(manager, NULL));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager", ckpt_manager_save_counter(NULL, &counter));
  CHECK(counter == 0);
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "out_counter",
              ckpt_manager_save_counter(manager, NULL));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager", ckpt_manager_verify(NULL, NULL, false));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager", ckpt_manager_verify(NULL, dir, true));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager", ckpt_manager_reload(NULL));

  /* Module-level calls. */
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "directory", ckpt_latest_checkpoint(NULL, &string));
  CHECK(string == NULL);
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "out_prefix", ckpt_latest_checkpoint(dir, NULL));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "directory",
              ckpt_latest_checkpoint_with_flags(NULL, 0, &string));
  CHECK(string == NULL);
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "out_prefix",
              ckpt_latest_checkpoint_with_flags(dir, CKPT_LATEST_NO_FALLBACK, NULL));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "prefix", ckpt_verify_checkpoint(NULL, true));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "directory", ckpt_get_checkpoint_state(NULL, &state));
  CHECK(state == NULL);
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "out_state", ckpt_get_checkpoint_state(dir, NULL));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "prefix", ckpt_checkpoint_exists(NULL, &found));
  CHECK(found == false);
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "out_exists", ckpt_checkpoint_exists(dir, NULL));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "prefix", ckpt_remove_checkpoint(NULL));

  /* The message is per thread: a failure elsewhere does not replace it. */
  reset_message();
  pthread_t thread;
  CHECK(pthread_create(&thread, NULL, fail_on_another_thread, NULL) == 0);
  CHECK(pthread_join(thread, NULL) == 0);
  CHECK_STR(reset_text, ckpt_last_error_message());

  /* The manager still works, with the settings from before the failures. */
  char *directory = NULL;
  CHECK_OK(ckpt_manager_directory(manager, &directory));
  CHECK_STR(ckpt_dir, directory);
  ckpt_string_free(directory);
  save_expecting(manager, "ckpt-1");

  /* Every free function accepts NULL. */
  ckpt_string_free(NULL);
  ckpt_string_list_free(NULL);
  ckpt_checkpoint_state_free(NULL);
  ckpt_manager_free(NULL);
  ckpt_options_free(NULL);

  ckpt_manager_free(manager);
  ckpt_options_free(options);
  free(ckpt_dir);
}

/* ------------------------------------------------------------------------
 * 4. invalid_options */

static void invalid_options(const char *dir) {
  char *ckpt_dir = join(dir, "never");
  ckpt_options *options = NULL;
  ckpt_manager *manager = SENTINEL_MANAGER;
  CHECK_OK(ckpt_options_new(&options));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "directory", ckpt_options_set_directory(options, ""));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "max_to_keep", ckpt_options_set_max_to_keep(options, 0));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "max_to_keep", ckpt_options_set_max_to_keep(options, -1));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "max_to_keep",
              ckpt_options_set_max_to_keep(options, INT64_MIN));
  const double bad_hours[] = {NAN, INFINITY, -INFINITY, -1.0, -1e-9};
  for (size_t i = 0; i < sizeof bad_hours / sizeof bad_hours[0]; i++)
    CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "keep_checkpoint_every_n_hours",
                ckpt_options_set_keep_checkpoint_every_n_hours(options, bad_hours[i]));
  const char *bad_names[] = {"", "a/b", "/", "checkpoint", ".", ".."};
  for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++)
    CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "checkpoint_name",
                ckpt_options_set_checkpoint_name(options, bad_names[i]));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "interval",
              ckpt_options_set_checkpoint_interval(options, 0));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "interval",
              ckpt_options_set_checkpoint_interval(options, -5));
  /* A URL of a scheme the library does not serve: refused, never a local
   * folder named "gs:". */
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "'gs://' is not one this library serves",
              ckpt_options_set_directory(options, "gs://bucket/run"));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "hdfs://",
              ckpt_options_set_directory(options, "hdfs://namenode/run"));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "bucket name",
              ckpt_options_set_directory(options, "s3://A_B/run"));
  char *no_latest = SENTINEL_STRING;
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "gs://",
              ckpt_latest_checkpoint("gs://bucket/run", &no_latest));
  CHECK(no_latest == NULL);
  CHECK(access("gs:", F_OK) != 0);
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "unknown storage option",
              ckpt_options_set_storage_option(options, "aws_no_such_key", "x"));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "true or false",
              ckpt_options_set_storage_option(options, "ckpt_allow_unconditional_writes", "maybe"));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "key",
              ckpt_options_set_storage_option(options, NULL, "x"));
  CHECK_OK(ckpt_options_set_storage_option(options, "aws_region", "eu-west-1"));

  /* No directory (the failed set did not set one). */
  CHECK_OK(ckpt_options_set_max_to_keep(options, 3));
  CHECK_OK(ckpt_options_set_save_callback(options, dummy_save, NULL, NULL));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "directory", ckpt_manager_new(options, &manager));
  CHECK(manager == NULL);
  ckpt_options_free(options);

  /* No max_to_keep (the failed sets did not set one). */
  CHECK_OK(ckpt_options_new(&options));
  CHECK_OK(ckpt_options_set_directory(options, ckpt_dir));
  CHECK_STATUS(CKPT_STATUS_INVALID_ARGUMENT, ckpt_options_set_max_to_keep(options, 0));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "max_to_keep", ckpt_manager_new(options, &manager));
  CHECK(manager == NULL);

  /* An interval without a step counter. */
  CHECK_OK(ckpt_options_set_max_to_keep(options, 3));
  CHECK_OK(ckpt_options_set_checkpoint_interval(options, 2));
  CHECK_STATUS(CKPT_STATUS_INVALID_ARGUMENT, ckpt_options_set_checkpoint_interval(options, 0));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "step", ckpt_manager_new(options, &manager));
  CHECK(manager == NULL);
  ckpt_options_free(options);
  CHECK_LISTING(dir, ""); /* no failed construction created anything */

  /* Failed sets keep the earlier values; no save callback: save refused. */
  CHECK_OK(ckpt_options_new(&options));
  CHECK_OK(ckpt_options_set_directory(options, ckpt_dir));
  CHECK_STATUS(CKPT_STATUS_INVALID_ARGUMENT, ckpt_options_set_directory(options, ""));
  CHECK_OK(ckpt_options_set_max_to_keep(options, 3));
  CHECK_STATUS(CKPT_STATUS_INVALID_ARGUMENT, ckpt_options_set_max_to_keep(options, -1));
  CHECK_OK(ckpt_options_set_keep_checkpoint_every_n_hours(options, 0.0)); /* 0 is "off" */
  manager = open_manager(options);
  char *directory = NULL;
  CHECK_OK(ckpt_manager_directory(manager, &directory));
  CHECK_STR(ckpt_dir, directory);
  ckpt_string_free(directory);
  char *prefix = SENTINEL_STRING;
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "save callback",
              ckpt_manager_save(manager, NULL, true, &prefix));
  CHECK(prefix == NULL);
  const uint64_t number = 3;
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "save callback",
              ckpt_manager_save(manager, &number, false, &prefix));
  CHECK(prefix == NULL);
  CHECK(save_counter(manager) == 0);
  check_latest(manager, NULL);
  ckpt_manager_free(manager);
  ckpt_options_free(options);

  /* The writer made its directory and lock; the refused saves nothing. */
  CHECK_LISTING(dir, "never");
  CHECK_LISTING(ckpt_dir, "checkpoint.lock");
  free(ckpt_dir);
}

/* ------------------------------------------------------------------------
 * 5. nothing_created_at_construction */

static void nothing_created_at_construction(const char *dir) {
  fake_world world = {.now = 100.0};
  char *root = join(dir, "a");
  char *target = join(dir, "a/b/c");
  char *first = join(target, "ckpt-1");

  /* A read-only manager touches nothing: every query works without the
   * directory existing. */
  ckpt_options *options = world_options(&world, target, 2);
  CHECK_OK(ckpt_options_set_read_only(options, true));
  ckpt_manager *reader = open_manager(options);
  check_latest(reader, NULL);
  CHECK_CHECKPOINTS(reader, NULL);
  CHECK(save_counter(reader) == 0);
  char *restored = SENTINEL_STRING;
  CHECK_OK(ckpt_manager_restore_or_initialize(reader, &restored));
  CHECK(restored == NULL && world.inits == 1);
  char *directory = NULL;
  CHECK_OK(ckpt_manager_directory(reader, &directory));
  CHECK_STR(target, directory);
  ckpt_string_free(directory);
  char *prefix = SENTINEL_STRING;
  CHECK_FAILS(CKPT_STATUS_READ_ONLY, "read-only", ckpt_manager_save(reader, NULL, true, &prefix));
  CHECK(prefix == NULL && world.saves == 0);
  CHECK_OK(ckpt_manager_reload(reader));
  check_latest_on_disk(target, NULL);
  ckpt_checkpoint_state *state = SENTINEL_STATE;
  CHECK_OK(ckpt_get_checkpoint_state(target, &state));
  CHECK(state == NULL);
  CHECK(!checkpoint_exists(first));
  CHECK_OK(ckpt_remove_checkpoint(first));
  CHECK_LISTING(dir, "");

  /* A writer creates the directory (nested parents too) and its lock
   * file, and nothing else until the first save. */
  CHECK_OK(ckpt_options_set_read_only(options, false));
  ckpt_manager *manager = open_manager(options);
  CHECK_LISTING(dir, "a");
  CHECK_LISTING(root, "b");
  CHECK_LISTING(target, "checkpoint.lock");
  check_latest(manager, NULL);
  CHECK(save_counter(manager) == 0);
  check_latest_on_disk(target, NULL);

  /* One writer per directory; the second is refused, naming the first's
   * process, and readers are still welcome. */
  ckpt_manager *second = SENTINEL_MANAGER;
  char pid[32];
  snprintf(pid, sizeof pid, "%ld", (long)getpid());
  CHECK_FAILS(CKPT_STATUS_LOCKED, pid, ckpt_manager_new(options, &second));
  CHECK(second == NULL);
  CHECK_LISTING(target, "checkpoint.lock");

  prefix = save(manager);
  CHECK_STR(first, prefix);
  CHECK_LISTING(target, STATE_AND_LOCK " " TF3(1));
  char *spare = join(target, "checkpoint.ckpt-spare");
  struct stat spare_stat;
  CHECK(lstat(spare, &spare_stat) == 0 && S_ISDIR(spare_stat.st_mode)); /* the writer's, reused */
  check_latest_on_disk(target, first);
  CHECK_OK(ckpt_manager_reload(reader)); /* the reader sees the new save */
  check_latest(reader, first);
  CHECK_CHECKPOINTS(reader, "ckpt-1");
  CHECK(save_counter(reader) == 1);
  ckpt_manager_free(reader);

  /* Freeing the writer releases the lock and removes its spare. */
  ckpt_manager_free(manager);
  CHECK(lstat(spare, &spare_stat) != 0 && errno == ENOENT);
  free(spare);
  manager = open_manager(options);
  check_latest(manager, first);
  ckpt_manager_free(manager);

  ckpt_string_free(prefix);
  ckpt_options_free(options);
  free(first);
  free(target);
  free(root);
}

/* ------------------------------------------------------------------------
 * 6. save_callback_failure */

typedef struct {
  fake_world *world;
  int32_t fail;       /* non-zero: write partial files, then return it */
  bool partial_only;  /* on failure write only <prefix>.partial */
  int calls;
} flaky_saver;

static int32_t flaky_save(void *data, const char *prefix, uint64_t number) {
  flaky_saver *saver = data;
  saver->calls++;
  if (saver->fail == 0) return save_tf_style(saver->world, prefix, number);
  char *path = format("%s.partial", prefix);
  write_text(path, "half");
  free(path);
  if (!saver->partial_only) {
    path = format("%s.index", prefix);
    write_text(path, "half an index");
    free(path);
    path = format("%s.data-00000-of-00001.tempstate123", prefix);
    write_text(path, "half the data");
    free(path);
    make_dir(prefix);
    path = format("%s/shard", prefix);
    write_text(path, "half a shard");
    free(path);
  }
  return saver->fail;
}

static void save_callback_failure(const char *dir) {
  fake_world world = {.now = 100.0};
  flaky_saver saver = {.world = &world};
  ckpt_options *options = world_options(&world, dir, 3);
  CHECK_OK(ckpt_options_set_save_callback(options, flaky_save, &saver, NULL));
  ckpt_manager *manager = open_manager(options);
  world.now = 101.0;
  save_expecting(manager, "ckpt-1");
  world.now = 102.0;
  save_expecting(manager, "ckpt-2");
  char *state_path = join(dir, "checkpoint");
  size_t state_length = 0;
  unsigned char *state_before = read_bytes(state_path, &state_length);
  CHECK(state_before != NULL);
  char *listing_before = listing(dir);

  world.now = 103.0;
  saver.fail = 7;
  char *prefix = SENTINEL_STRING;
  CHECK_FAILS(CKPT_STATUS_CALLBACK_FAILED, "7", ckpt_manager_save(manager, NULL, true, &prefix));
  CHECK(prefix == NULL);
  CHECK(saver.calls == 3);
  char *second = join(dir, "ckpt-2");
  check_latest(manager, second);
  CHECK_CHECKPOINTS(manager, "ckpt-1", "ckpt-2");
  CHECK(save_counter(manager) == 2);
  CHECK_FILE_BYTES(state_path, state_before, state_length);
  CHECK_LISTING(dir, listing_before); /* the partial ckpt-3 files are gone */

  /* A failed save of an existing number does not delete that checkpoint. */
  saver.fail = 9;
  saver.partial_only = true;
  const uint64_t one = 1;
  CHECK_FAILS(CKPT_STATUS_CALLBACK_FAILED, "9", ckpt_manager_save(manager, &one, true, &prefix));
  CHECK(prefix == NULL);
  CHECK(exists(dir, "ckpt-1.index") && exists(dir, "ckpt-1.data-00000-of-00001"));
  CHECK_CHECKPOINTS(manager, "ckpt-1", "ckpt-2");
  CHECK(save_counter(manager) == 2);
  CHECK_FILE_BYTES(state_path, state_before, state_length);

  /* The next save gets the number the failed one would have had. */
  saver.fail = 0;
  world.now = 104.0;
  save_expecting(manager, "ckpt-3");
  CHECK_CHECKPOINTS(manager, "ckpt-1", "ckpt-2", "ckpt-3");
  CHECK_STATE_FILE(dir,
                   "model_checkpoint_path: \"ckpt-3\"\n"
                   "all_model_checkpoint_paths: \"ckpt-1\"\n"
                   "all_model_checkpoint_paths: \"ckpt-2\"\n"
                   "all_model_checkpoint_paths: \"ckpt-3\"\n"
                   "all_model_checkpoint_timestamps: 101.0\n"
                   "all_model_checkpoint_timestamps: 102.0\n"
                   "all_model_checkpoint_timestamps: 104.0\n"
                   "last_preserved_timestamp: 99.0\n");
  CHECK_FILE_TEXT(dir, "ckpt-3.index", "3");
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  free(state_before);
  free(listing_before);
  free(state_path);
  free(second);
}

/* ------------------------------------------------------------------------
 * 7. step_counter_and_clock_failures */

static int32_t failing_step(void *data, int64_t *out_step) {
  (void)data;
  *out_step = 99;
  return 3;
}

static double nan_clock(void *data) {
  (void)data;
  return NAN;
}
static double inf_clock(void *data) {
  (void)data;
  return INFINITY;
}
static double minus_inf_clock(void *data) {
  (void)data;
  return -INFINITY;
}

static void step_counter_and_clock_failures(const char *dir) {
  fake_world world = {.now = 100.0};
  char *ckpt_dir = join(dir, "run");
  ckpt_options *options = world_options(&world, ckpt_dir, 3);
  CHECK_OK(ckpt_options_set_step_counter_callback(options, failing_step, NULL, NULL));
  CHECK_OK(ckpt_options_set_checkpoint_interval(options, 2));
  ckpt_manager *manager = open_manager(options);
  char *prefix = SENTINEL_STRING;
  CHECK_FAILS(CKPT_STATUS_CALLBACK_FAILED, "3", ckpt_manager_save(manager, NULL, true, &prefix));
  CHECK(prefix == NULL);
  CHECK_FAILS(CKPT_STATUS_CALLBACK_FAILED, "3", ckpt_manager_save(manager, NULL, false, &prefix));
  CHECK(prefix == NULL);
  CHECK(world.saves == 0);
  CHECK(save_counter(manager) == 0);
  check_latest(manager, NULL);
  CHECK_LISTING(ckpt_dir, "checkpoint.lock");
  ckpt_manager_free(manager);
  ckpt_options_free(options);

  ckpt_clock_callback bad_clocks[] = {nan_clock, inf_clock, minus_inf_clock};
  for (size_t i = 0; i < sizeof bad_clocks / sizeof bad_clocks[0]; i++) {
    options = world_options(&world, ckpt_dir, 3);
    CHECK_OK(ckpt_options_set_clock_callback(options, bad_clocks[i], NULL, NULL));
    manager = SENTINEL_MANAGER;
    CHECK_FAILS(CKPT_STATUS_CALLBACK_FAILED, "clock", ckpt_manager_new(options, &manager));
    CHECK(manager == NULL);
    ckpt_options_free(options);
  }
  CHECK_LISTING(ckpt_dir, "checkpoint.lock");
  free(ckpt_dir);
}

/* ------------------------------------------------------------------------
 * 7b. clock_failure_during_save: the clock fails after the save callback
 * wrote the files; nothing is committed and no files are left behind. */

static void clock_failure_during_save(const char *dir) {
  fake_world world = {.now = 100.0};
  ckpt_options *options = world_options(&world, dir, 3);
  ckpt_manager *manager = open_manager(options);
  world.now = 101.0;
  save_expecting(manager, "ckpt-1");
  char *state_path = join(dir, "checkpoint");
  size_t state_length = 0;
  unsigned char *state_before = read_bytes(state_path, &state_length);

  world.now = NAN;
  char *prefix = SENTINEL_STRING;
  CHECK_FAILS(CKPT_STATUS_CALLBACK_FAILED, "clock", ckpt_manager_save(manager, NULL, true, &prefix));
  CHECK(prefix == NULL);
  CHECK(save_counter(manager) == 1);
  CHECK_CHECKPOINTS(manager, "ckpt-1");
  CHECK_FILE_BYTES(state_path, state_before, state_length);
  /* Not committed, so not left on disk either (a later manager would
   * never manage nor delete these orphans). */
  CHECK_LISTING(dir, STATE_AND_LOCK " " TF3(1));

  world.now = 102.0;
  save_expecting(manager, "ckpt-2");
  CHECK_LISTING(dir, STATE_AND_LOCK " " TF3(1) " " TF3(2));
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  free(state_before);
  free(state_path);
}

/* ------------------------------------------------------------------------
 * 7c. state_write_failure: the commit (state-file rename) fails after the
 * save callback wrote the files: IO_ERROR, nothing committed, no files of
 * the uncommitted checkpoint and no temporary state file left behind. */

static void state_write_failure(const char *dir) {
  fake_world world = {.now = 100.0};
  ckpt_options *options = world_options(&world, dir, 3);
  ckpt_manager *manager = open_manager(options);
  /* A directory where the state file goes: the rename onto it fails. */
  char *state_path = join(dir, "checkpoint");
  make_dir(state_path);
  write_in(state_path, "keep", "keep");
  char *prefix = SENTINEL_STRING;
  CHECK_FAILS(CKPT_STATUS_IO_ERROR, "checkpoint", ckpt_manager_save(manager, NULL, true, &prefix));
  CHECK(prefix == NULL);
  CHECK(world.saves == 1);
  CHECK(save_counter(manager) == 0);
  check_latest(manager, NULL);
  CHECK_CHECKPOINTS(manager, NULL);
  CHECK_LISTING(state_path, "keep");
  CHECK_LISTING(dir, STATE_AND_LOCK); /* no ckpt-1 files, no temporary state file */

  /* Once the obstacle is gone, the same number is used. */
  char *keep = join(state_path, "keep");
  CHECK(unlink(keep) == 0 && rmdir(state_path) == 0);
  save_expecting(manager, "ckpt-1");
  CHECK_LISTING(dir, STATE_AND_LOCK " " TF3(1));
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  free(keep);
  free(state_path);
}

/* ------------------------------------------------------------------------
 * 7d. state_commit_sync_failure: the state file's rename succeeds but the
 * directory's fsync after it fails. The state file on disk then names the
 * new checkpoint, so its files must not be deleted: whatever the status,
 * the checkpoint the state file names must stay intact.
 *
 * fsync is interposed: this program's definition is the one the library
 * binds to. It passes through to fdatasync except when told to fail. */

static struct {
  const char *state_path; /* fail a directory fsync once this file... */
  const char *names;      /* ...contains this text */
  int failed;
} fsync_fault;

int fsync(int fd) {
  if (fsync_fault.state_path != NULL && fsync_fault.failed == 0) {
    struct stat info;
    if (fstat(fd, &info) == 0 && S_ISDIR(info.st_mode)) {
      char *text = read_text(fsync_fault.state_path);
      bool renamed = text != NULL && strstr(text, fsync_fault.names) != NULL;
      free(text);
      if (renamed) {
        fsync_fault.failed++;
        errno = EIO;
        return -1;
      }
    }
  }
  return fdatasync(fd);
}

static void state_commit_sync_failure(const char *dir) {
  fake_world world = {.now = 100.0};
  ckpt_options *options = world_options(&world, dir, 3);
  ckpt_manager *manager = open_manager(options);
  save_expecting(manager, "ckpt-1");
  char *state_path = join(dir, "checkpoint");
  fsync_fault.state_path = state_path;
  fsync_fault.names = "model_checkpoint_path: \"ckpt-2\"";
  world.now += 1.0;
  char *prefix = SENTINEL_STRING;
  ckpt_status status = ckpt_manager_save(manager, NULL, true, &prefix);
  fsync_fault.state_path = NULL;
  CHECK(fsync_fault.failed == 1); /* the fault was injected */
  CHECK(status == CKPT_STATUS_OK || status == CKPT_STATUS_IO_ERROR);
  if (status == CKPT_STATUS_OK) ckpt_string_free(prefix);
  else CHECK(prefix == NULL);
  /* The state file names ckpt-2: its files must be there and whole. */
  CHECK_FILE_TEXT(dir, "checkpoint",
                  "model_checkpoint_path: \"ckpt-2\"\n"
                  "all_model_checkpoint_paths: \"ckpt-1\"\n"
                  "all_model_checkpoint_paths: \"ckpt-2\"\n"
                  "all_model_checkpoint_timestamps: 100.0\n"
                  "all_model_checkpoint_timestamps: 101.0\n"
                  "last_preserved_timestamp: 99.0\n");
  char *second = join(dir, "ckpt-2");
  check_latest_with_flags(dir, CKPT_LATEST_NO_FALLBACK | CKPT_LATEST_VERIFY_CHECKSUMS, second);
  ckpt_manager_free(manager);
  /* A new manager agrees, and the next save does not reuse the number. */
  manager = open_manager(options);
  check_latest(manager, second);
  world.now += 1.0;
  save_expecting(manager, "ckpt-3");
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  free(second);
  free(state_path);
}

/* ------------------------------------------------------------------------
 * 8. restore_without_callback */

static int32_t failing_restore(void *data, const char *prefix) {
  (void)prefix;
  ((fake_world *)data)->restores++;
  return 4;
}

static int32_t failing_init(void *data) {
  ((fake_world *)data)->inits++;
  return 6;
}

static void restore_without_callback(const char *dir) {
  fake_world world = {.now = 100.0, .value = 3.0};
  char *with = join(dir, "with"), *without = join(dir, "without");
  ckpt_options *options = world_options(&world, with, 3);
  ckpt_manager *manager = open_manager(options);
  save_expecting(manager, "ckpt-1");
  ckpt_manager_free(manager);

  /* A checkpoint exists and there is no restore callback. */
  CHECK_OK(ckpt_options_set_restore_callback(options, NULL, NULL, NULL));
  manager = open_manager(options);
  char *restored = SENTINEL_STRING;
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "restore",
              ckpt_manager_restore_or_initialize(manager, &restored));
  CHECK(restored == NULL);
  CHECK(world.inits == 0 && world.restores == 0); /* init is not a fallback */
  ckpt_manager_free(manager);

  /* The restore callback fails. */
  CHECK_OK(ckpt_options_set_restore_callback(options, failing_restore, &world, NULL));
  manager = open_manager(options);
  CHECK_FAILS(CKPT_STATUS_CALLBACK_FAILED, "4",
              ckpt_manager_restore_or_initialize(manager, &restored));
  CHECK(restored == NULL);
  CHECK(world.restores == 1 && world.inits == 0);
  ckpt_manager_free(manager);
  ckpt_options_free(options);

  /* Nothing to restore and no init callback: fine. */
  options = world_options(&world, without, 3);
  CHECK_OK(ckpt_options_set_init_callback(options, NULL, NULL, NULL));
  manager = open_manager(options);
  CHECK_OK(ckpt_manager_restore_or_initialize(manager, &restored));
  CHECK(restored == NULL);
  ckpt_manager_free(manager);

  /* Nothing to restore and the init callback fails. */
  restored = SENTINEL_STRING;
  CHECK_OK(ckpt_options_set_init_callback(options, failing_init, &world, NULL));
  manager = open_manager(options);
  CHECK_FAILS(CKPT_STATUS_CALLBACK_FAILED, "6",
              ckpt_manager_restore_or_initialize(manager, &restored));
  CHECK(restored == NULL);
  CHECK(world.inits == 1);
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  CHECK_LISTING(without, "checkpoint.lock");
  free(with);
  free(without);
}

/* ------------------------------------------------------------------------
 * 9. finalizers */

#define CHECK_FINALIZED(counter, expected, slot, when)                              \
  do {                                                                             \
    if ((counter).finalized != (expected))                                         \
      test_fail(__FILE__, __LINE__, "%s callback: finalized %d times %s, expected %d", \
                slot_names[slot], (counter).finalized, (when), (expected));        \
  } while (0)

/* Read-only, so that several managers may share the directory. */
static ckpt_options *finalizer_options(const char *dir) {
  ckpt_options *options = NULL;
  CHECK_OK(ckpt_options_new(&options));
  CHECK_OK(ckpt_options_set_directory(options, dir));
  CHECK_OK(ckpt_options_set_max_to_keep(options, 2));
  CHECK_OK(ckpt_options_set_read_only(options, true));
  return options;
}

static void finalizers(const char *dir) {
  char *ckpt_dir = join(dir, "never");
  for (int slot = 0; slot < SLOT_COUNT; slot++) {
    /* Options freed, no manager. */
    fin_counter a = {0};
    ckpt_options *options = finalizer_options(ckpt_dir);
    CHECK_OK(set_slot(options, slot, true, &a));
    CHECK_FINALIZED(a, 0, slot, "after set");
    ckpt_options_free(options);
    CHECK_FINALIZED(a, 1, slot, "after options free");

    /* Options freed first, managers later: runs at the last manager's free. */
    fin_counter b = {0};
    options = finalizer_options(ckpt_dir);
    CHECK_OK(set_slot(options, slot, true, &b));
    ckpt_manager *first = open_manager(options);
    ckpt_manager *second = open_manager(options);
    ckpt_options_free(options);
    CHECK_FINALIZED(b, 0, slot, "after options free with managers alive");
    ckpt_manager_free(first);
    CHECK_FINALIZED(b, 0, slot, "after the first manager's free");
    ckpt_manager_free(second);
    CHECK_FINALIZED(b, 1, slot, "after the last manager's free");

    /* Manager freed first, options later. */
    fin_counter c = {0};
    options = finalizer_options(ckpt_dir);
    CHECK_OK(set_slot(options, slot, true, &c));
    ckpt_manager *manager = open_manager(options);
    ckpt_manager_free(manager);
    CHECK_FINALIZED(c, 0, slot, "after manager free with options alive");
    ckpt_options_free(options);
    CHECK_FINALIZED(c, 1, slot, "after options free");

    /* Replaced by another setter call. */
    fin_counter d = {0}, e = {0};
    options = finalizer_options(ckpt_dir);
    CHECK_OK(set_slot(options, slot, true, &d));
    CHECK_OK(set_slot(options, slot, true, &e));
    CHECK_FINALIZED(d, 1, slot, "after being replaced");
    CHECK_FINALIZED(e, 0, slot, "after being set");
    /* Replaced while a manager holds it: the manager keeps using it. */
    fin_counter f = {0};
    manager = open_manager(options);
    CHECK_OK(set_slot(options, slot, true, &f));
    CHECK_FINALIZED(e, 0, slot, "after being replaced while a manager holds it");
    ckpt_manager_free(manager);
    CHECK_FINALIZED(e, 1, slot, "after the holding manager's free");
    CHECK_FINALIZED(f, 0, slot, "before options free");
    ckpt_options_free(options);
    CHECK_FINALIZED(f, 1, slot, "after options free");
    CHECK_FINALIZED(d, 1, slot, "at the end");

    /* A NULL callback finalizes its user data at once. */
    fin_counter g = {0};
    options = finalizer_options(ckpt_dir);
    CHECK_OK(set_slot(options, slot, false, &g));
    CHECK_FINALIZED(g, 1, slot, "after setting a NULL callback");
    ckpt_options_free(options);
    CHECK_FINALIZED(g, 1, slot, "after options free");

    /* A NULL callback replacing a set one finalizes both. */
    fin_counter h = {0}, i = {0};
    options = finalizer_options(ckpt_dir);
    CHECK_OK(set_slot(options, slot, true, &h));
    CHECK_OK(set_slot(options, slot, false, &i));
    CHECK_FINALIZED(h, 1, slot, "after being cleared");
    CHECK_FINALIZED(i, 1, slot, "after setting a NULL callback");
    ckpt_options_free(options);
    CHECK_FINALIZED(h, 1, slot, "after options free");

    /* A failed ckpt_manager_new keeps nothing. */
    fin_counter j = {0};
    CHECK_OK(ckpt_options_new(&options));
    CHECK_OK(set_slot(options, slot, true, &j));
    manager = SENTINEL_MANAGER;
    CHECK_STATUS(CKPT_STATUS_INVALID_ARGUMENT, ckpt_manager_new(options, &manager));
    CHECK(manager == NULL);
    CHECK_FINALIZED(j, 0, slot, "after a failed ckpt_manager_new");
    ckpt_options_free(options);
    CHECK_FINALIZED(j, 1, slot, "after options free");
  }
  CHECK_LISTING(dir, "");
  free(ckpt_dir);
}

/* ------------------------------------------------------------------------
 * 10. reentrant_call */

typedef struct {
  fake_world *world;
  ckpt_manager *self;
  ckpt_manager *other;
  const char *dir;
  int32_t result;
  int calls;
  ckpt_status latest, save, counter, checkpoints, directory, restore, verify, reload;
  ckpt_status other_latest, module_latest;
  bool cleared;
} reentry;

static void try_reentering(reentry *r) {
  char *string = SENTINEL_STRING;
  uint64_t counter = 777;
  ckpt_string_list fake_list = {0}, *list = &fake_list;
  r->latest = ckpt_manager_latest(r->self, &string);
  r->save = ckpt_manager_save(r->self, NULL, false, &string);
  r->counter = ckpt_manager_save_counter(r->self, &counter);
  r->checkpoints = ckpt_manager_checkpoints(r->self, &list);
  r->directory = ckpt_manager_directory(r->self, &string);
  r->restore = ckpt_manager_restore_or_initialize(r->self, &string);
  r->verify = ckpt_manager_verify(r->self, NULL, false);
  r->reload = ckpt_manager_reload(r->self);
  r->cleared = string == NULL && counter == 0 && list == NULL;
  /* Another manager and the module functions are not reentrant calls. */
  r->other_latest = ckpt_manager_latest(r->other, &string);
  if (r->other_latest == CKPT_STATUS_OK) ckpt_string_free(string);
  string = SENTINEL_STRING;
  r->module_latest = ckpt_latest_checkpoint(r->dir, &string);
  if (r->module_latest == CKPT_STATUS_OK) ckpt_string_free(string);
}

static int32_t reentrant_save(void *data, const char *prefix, uint64_t number) {
  reentry *r = data;
  r->calls++;
  try_reentering(r);
  if (r->result != 0) return r->result;
  return save_tf_style(r->world, prefix, number);
}

static int32_t reentrant_restore(void *data, const char *prefix) {
  reentry *r = data;
  r->calls++;
  try_reentering(r);
  return restore_tf_style(r->world, prefix);
}

static void check_refused(const reentry *r) {
  CHECK(r->latest == CKPT_STATUS_REENTRANT_CALL);
  CHECK(r->save == CKPT_STATUS_REENTRANT_CALL);
  CHECK(r->counter == CKPT_STATUS_REENTRANT_CALL);
  CHECK(r->checkpoints == CKPT_STATUS_REENTRANT_CALL);
  CHECK(r->directory == CKPT_STATUS_REENTRANT_CALL);
  CHECK(r->restore == CKPT_STATUS_REENTRANT_CALL);
  CHECK(r->verify == CKPT_STATUS_REENTRANT_CALL);
  CHECK(r->reload == CKPT_STATUS_REENTRANT_CALL);
  CHECK(r->cleared);
  CHECK(r->other_latest == CKPT_STATUS_OK);
  CHECK(r->module_latest == CKPT_STATUS_OK);
}

static void reentrant_call(const char *dir) {
  alarm(60); /* a deadlock fails the case instead of hanging it */
  fake_world world = {.now = 100.0};
  char *ckpt_dir = join(dir, "run"), *other_dir = join(dir, "other");
  reentry r = {.world = &world, .dir = ckpt_dir};
  ckpt_options *other_options = world_options(&world, other_dir, 2);
  r.other = open_manager(other_options);
  ckpt_options *options = world_options(&world, ckpt_dir, 2);
  CHECK_OK(ckpt_options_set_save_callback(options, reentrant_save, &r, NULL));
  CHECK_OK(ckpt_options_set_restore_callback(options, reentrant_restore, &r, NULL));
  ckpt_manager *manager = open_manager(options);
  r.self = manager;

  save_expecting(manager, "ckpt-1");
  CHECK(r.calls == 1 && world.saves == 1);
  check_refused(&r);
  CHECK(save_counter(manager) == 1);
  CHECK_CHECKPOINTS(manager, "ckpt-1");

  /* The callback fails after its refused calls: the save fails cleanly. */
  r.result = 5;
  char *prefix = SENTINEL_STRING;
  CHECK_FAILS(CKPT_STATUS_CALLBACK_FAILED, "5", ckpt_manager_save(manager, NULL, true, &prefix));
  CHECK(prefix == NULL);
  check_refused(&r);
  CHECK(save_counter(manager) == 1);
  CHECK_CHECKPOINTS(manager, "ckpt-1");

  /* The manager is not left busy. */
  r.result = 0;
  save_expecting(manager, "ckpt-2");
  CHECK_CHECKPOINTS(manager, "ckpt-1", "ckpt-2");
  char *restored = NULL;
  CHECK_OK(ckpt_manager_restore_or_initialize(manager, &restored));
  CHECK_STR("ckpt-2", base_name(restored));
  ckpt_string_free(restored);
  check_refused(&r);
  CHECK(world.restores == 1);
  save_expecting(manager, "ckpt-3");

  ckpt_manager_free(manager);
  ckpt_options_free(options);
  ckpt_manager_free(r.other);
  ckpt_options_free(other_options);
  free(ckpt_dir);
  free(other_dir);
}

/* ------------------------------------------------------------------------
 * 11. threads */

enum { THREADS = 4, SAVES_PER_THREAD = 25 };

typedef struct {
  ckpt_manager *manager;
  uint64_t numbers[SAVES_PER_THREAD];
  int failures;
} worker;

static void *save_many(void *arg) {
  worker *w = arg;
  for (int i = 0; i < SAVES_PER_THREAD; i++) {
    char *prefix = NULL;
    if (ckpt_manager_save(w->manager, NULL, true, &prefix) != CKPT_STATUS_OK ||
        prefix == NULL || strncmp(base_name(prefix), "ckpt-", 5) != 0) {
      w->failures++;
      ckpt_string_free(prefix);
      continue;
    }
    w->numbers[i] = strtoull(base_name(prefix) + 5, NULL, 10);
    ckpt_string_free(prefix);
    /* Readers interleave with the other threads' saves. */
    ckpt_string_list *list = NULL;
    if (ckpt_manager_checkpoints(w->manager, &list) != CKPT_STATUS_OK || list->len > 3 ||
        list->len == 0)
      w->failures++;
    ckpt_string_list_free(list);
    char *latest = NULL;
    if (ckpt_manager_latest(w->manager, &latest) != CKPT_STATUS_OK || latest == NULL)
      w->failures++;
    ckpt_string_free(latest);
  }
  return NULL;
}

static void threads(const char *dir) {
  alarm(120);
  fake_world world = {.now = 1000.0};
  ckpt_options *options = world_options(&world, dir, 3);
  ckpt_manager *manager = open_manager(options);
  worker workers[THREADS];
  pthread_t ids[THREADS];
  for (int t = 0; t < THREADS; t++) {
    workers[t] = (worker){.manager = manager};
    CHECK(pthread_create(&ids[t], NULL, save_many, &workers[t]) == 0);
  }
  for (int t = 0; t < THREADS; t++) CHECK(pthread_join(ids[t], NULL) == 0);
  bool seen[THREADS * SAVES_PER_THREAD + 1] = {false};
  for (int t = 0; t < THREADS; t++) {
    CHECK(workers[t].failures == 0);
    for (int i = 0; i < SAVES_PER_THREAD; i++) {
      uint64_t n = workers[t].numbers[i];
      CHECK(n >= 1 && n <= THREADS * SAVES_PER_THREAD);
      CHECK(!seen[n]);
      seen[n] = true;
    }
  }
  CHECK(world.saves == 100);
  CHECK(save_counter(manager) == 100);
  CHECK_CHECKPOINTS(manager, "ckpt-98", "ckpt-99", "ckpt-100");
  CHECK_LISTING(dir, STATE_AND_LOCK " " TF3(100) " " TF3(98) " " TF3(99));
  CHECK_STATE_FILE(dir,
                   "model_checkpoint_path: \"ckpt-100\"\n"
                   "all_model_checkpoint_paths: \"ckpt-98\"\n"
                   "all_model_checkpoint_paths: \"ckpt-99\"\n"
                   "all_model_checkpoint_paths: \"ckpt-100\"\n"
                   "all_model_checkpoint_timestamps: 1000.0\n"
                   "all_model_checkpoint_timestamps: 1000.0\n"
                   "all_model_checkpoint_timestamps: 1000.0\n"
                   "last_preserved_timestamp: 999.0\n");
  ckpt_manager_free(manager);
  ckpt_options_free(options);
}

/* ------------------------------------------------------------------------
 * 12. glob_characters */

static void fill_sibling(const char *sibling) {
  make_dir(sibling);
  write_in(sibling, "ckpt-1.index", "sibling index 1");
  write_in(sibling, "ckpt-1.data-00000-of-00001", "sibling data 1");
  write_in(sibling, "ckpt-2.index", "sibling index 2");
  write_in(sibling, "ckpt-2.data-00000-of-00001", "sibling data 2");
  write_in(sibling, "checkpoint", "model_checkpoint_path: \"ckpt-2\"\n");
}

static void check_sibling(const char *sibling) {
  CHECK_LISTING(sibling,
                "checkpoint ckpt-1.data-00000-of-00001 ckpt-1.index "
                "ckpt-2.data-00000-of-00001 ckpt-2.index");
  CHECK_FILE_TEXT(sibling, "ckpt-1.index", "sibling index 1");
  CHECK_FILE_TEXT(sibling, "ckpt-1.data-00000-of-00001", "sibling data 1");
  CHECK_FILE_TEXT(sibling, "ckpt-2.index", "sibling index 2");
  CHECK_FILE_TEXT(sibling, "ckpt-2.data-00000-of-00001", "sibling data 2");
  CHECK_FILE_TEXT(sibling, "checkpoint", "model_checkpoint_path: \"ckpt-2\"\n");
}

static void glob_characters(const char *dir) {
  fake_world world = {.now = 100.0, .value = 5.0};
  char *glob_dir = join(dir, "run[1]*?");
  /* Siblings the pattern "run[1]*?" would match or nearly match. */
  char *sibling = join(dir, "run1"), *matching = join(dir, "run1x");
  fill_sibling(sibling);
  fill_sibling(matching);

  ckpt_options *options = world_options(&world, glob_dir, 2);
  ckpt_manager *manager = open_manager(options);
  CHECK(save_counter(manager) == 0);
  check_latest(manager, NULL);
  char *paths[3];
  for (int i = 0; i < 3; i++) {
    world.now += 1.0;
    paths[i] = save(manager);
  }
  CHECK_CHECKPOINTS(manager, "ckpt-2", "ckpt-3");
  CHECK_LISTING(glob_dir, STATE_AND_LOCK " " TF3(2) " " TF3(3));
  CHECK(!checkpoint_exists(paths[0]));
  CHECK(checkpoint_exists(paths[1]) && checkpoint_exists(paths[2]));
  check_latest_on_disk(glob_dir, paths[2]);
  ckpt_checkpoint_state *state = read_state(glob_dir);
  CHECK_STR(paths[2], ckpt_checkpoint_state_model_checkpoint_path(state));
  CHECK(ckpt_checkpoint_state_path_count(state) == 2);
  CHECK_STR(paths[1], ckpt_checkpoint_state_path(state, 0));
  ckpt_checkpoint_state_free(state);

  CHECK_OK(ckpt_remove_checkpoint(paths[1]));
  CHECK(!checkpoint_exists(paths[1]));
  CHECK_LISTING(glob_dir, STATE_AND_LOCK " " TF3(3));
  CHECK_OK(ckpt_verify_checkpoint(paths[2], true));
  ckpt_manager_free(manager);

  /* A new manager recovers and restores from the literal directory. */
  world.value = 0.0;
  manager = open_manager(options);
  CHECK(save_counter(manager) == 3);
  char *restored = NULL;
  CHECK_OK(ckpt_manager_restore_or_initialize(manager, &restored));
  CHECK_STR(paths[2], restored);
  CHECK(world.value == 5.0);
  ckpt_string_free(restored);
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  check_sibling(sibling);
  check_sibling(matching);

  /* Glob characters in the checkpoint name: "c?kpt" is not "cXkpt". */
  char *star_dir = join(dir, "b*");
  make_dir(star_dir);
  write_in(star_dir, "cXkpt-1.index", "stranger");
  write_in(star_dir, "cXkpt-5.data-00000-of-00001", "stranger");
  options = world_options(&world, star_dir, 1);
  CHECK_OK(ckpt_options_set_checkpoint_name(options, "c?kpt"));
  manager = open_manager(options);
  CHECK(save_counter(manager) == 0);
  world.now += 1.0;
  save_expecting(manager, "c?kpt-1");
  world.now += 1.0;
  save_expecting(manager, "c?kpt-2");
  CHECK_LISTING(star_dir,
                "c?kpt-2.ckpt-manifest.json c?kpt-2.data-00000-of-00001 c?kpt-2.index "
                "cXkpt-1.index cXkpt-5.data-00000-of-00001 " STATE_AND_LOCK);
  ckpt_manager_free(manager);
  ckpt_options_free(options);

  for (int i = 0; i < 3; i++) ckpt_string_free(paths[i]);
  free(glob_dir);
  free(sibling);
  free(matching);
  free(star_dir);
}

/* ------------------------------------------------------------------------
 * 13. deletes_only_own_files */

typedef struct {
  fake_world world;
  const char *outside;
} extras_world;

/* A TF-style checkpoint plus a directory <prefix>/ and <prefix>.extra; with
 * `outside` set, also a symlink <prefix>.link to it, which the save refuses:
 * a checkpoint holds regular files and directories only. */
static int32_t save_with_extras(void *data, const char *prefix, uint64_t number) {
  extras_world *e = data;
  int32_t result = save_tf_style(&e->world, prefix, number);
  if (result != 0) return result;
  make_dir(prefix);
  write_in(prefix, "shard-0", "shard");
  char *sub = join(prefix, "sub");
  make_dir(sub);
  write_in(sub, "deep", "deep");
  free(sub);
  char *path = format("%s.extra", prefix);
  write_text(path, "extra");
  free(path);
  if (e->outside != NULL) {
    path = format("%s.link", prefix);
    CHECK(symlink(e->outside, path) == 0);
    free(path);
  }
  return 0;
}

static void deletes_only_own_files(const char *dir) {
  char *ckpt_dir = join(dir, "run"), *outside = join(dir, "outside");
  make_dir(outside);
  write_in(outside, "precious", "precious");
  extras_world e = {.world = {.now = 100.0}, .outside = outside};
  ckpt_options *options = world_options(&e.world, ckpt_dir, 1);
  CHECK_OK(ckpt_options_set_save_callback(options, save_with_extras, &e, NULL));
  ckpt_manager *manager = open_manager(options);
  char *prefix = SENTINEL_STRING;
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "ckpt-1.link",
              ckpt_manager_save(manager, NULL, true, &prefix));
  CHECK(prefix == NULL);
  CHECK_LISTING(ckpt_dir, "checkpoint.lock");
  e.outside = NULL;
  save_expecting(manager, "ckpt-1");
  CHECK_LISTING(ckpt_dir,
                STATE_AND_LOCK " ckpt-1 ckpt-1.ckpt-manifest.json "
                "ckpt-1.data-00000-of-00001 ckpt-1.extra ckpt-1.index");
  const char *strays[] = {"ckpt-1-2.index", "ckpt-10.index", "other.txt",
                          "ckpt_name-1.index", "ckpt-1_old", "xckpt-1.index"};
  for (size_t i = 0; i < sizeof strays / sizeof strays[0]; i++)
    write_in(ckpt_dir, strays[i], strays[i]);

  save_expecting(manager, "ckpt-2"); /* sweeps ckpt-1 */
  CHECK_CHECKPOINTS(manager, "ckpt-2");
  CHECK_LISTING(ckpt_dir,
                STATE_AND_LOCK " ckpt-1-2.index ckpt-10.index ckpt-1_old ckpt-2 "
                "ckpt-2.ckpt-manifest.json ckpt-2.data-00000-of-00001 ckpt-2.extra "
                "ckpt-2.index ckpt_name-1.index other.txt xckpt-1.index");
  /* The manifest covers the files inside <prefix>/ too. */
  char *second = join(ckpt_dir, "ckpt-2");
  CHECK_OK(ckpt_verify_checkpoint(second, true));
  char *deep = join(second, "sub/deep");
  write_text(deep, "DEEP");
  CHECK_FAILS(CKPT_STATUS_CHECKPOINT_DAMAGED, "deep", ckpt_verify_checkpoint(second, true));
  write_text(deep, "deep");
  free(deep);
  free(second);
  for (size_t i = 0; i < sizeof strays / sizeof strays[0]; i++)
    CHECK_FILE_TEXT(ckpt_dir, strays[i], strays[i]);
  CHECK_LISTING(outside, "precious"); /* the refused symlink's target is kept */
  CHECK_FILE_TEXT(outside, "precious", "precious");
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  free(ckpt_dir);
  free(outside);
}

/* ------------------------------------------------------------------------
 * 14. delete_callback */

typedef struct {
  char *prefixes[8];
  int count;
  int32_t result;
} deletions;

static int32_t record_delete(void *data, const char *prefix) {
  deletions *d = data;
  CHECK(d->count < 8);
  d->prefixes[d->count] = strdup(prefix);
  CHECK(d->prefixes[d->count] != NULL);
  d->count++;
  return d->result;
}

static void delete_callback(const char *dir) {
  fake_world world = {.now = 100.0};
  deletions d = {.count = 0};
  ckpt_options *options = world_options(&world, dir, 2);
  CHECK_OK(ckpt_options_set_delete_callback(options, record_delete, &d, NULL));
  ckpt_manager *manager = open_manager(options);
  for (int i = 1; i <= 4; i++) {
    world.now += 1.0;
    char expected[16];
    snprintf(expected, sizeof expected, "ckpt-%d", i);
    save_expecting(manager, expected);
  }
  CHECK(d.count == 2);
  char *first = join(dir, "ckpt-1"), *second = join(dir, "ckpt-2"), *third = join(dir, "ckpt-3");
  CHECK_STR(first, d.prefixes[0]);
  CHECK_STR(second, d.prefixes[1]);
  CHECK_CHECKPOINTS(manager, "ckpt-3", "ckpt-4");
  /* The callback deleted nothing, and the built-in deletion did not run. */
  CHECK_LISTING(dir, STATE_AND_LOCK " " TF3(1) " " TF3(2) " " TF3(3) " " TF3(4));
  CHECK_STATE_FILE(dir,
                   "model_checkpoint_path: \"ckpt-4\"\n"
                   "all_model_checkpoint_paths: \"ckpt-3\"\n"
                   "all_model_checkpoint_paths: \"ckpt-4\"\n"
                   "all_model_checkpoint_timestamps: 103.0\n"
                   "all_model_checkpoint_timestamps: 104.0\n"
                   "last_preserved_timestamp: 99.0\n");

  /* A failing delete callback is a warning; the save still succeeds. */
  d.result = 9;
  CHECK(world.warnings == 0);
  world.now += 1.0;
  save_expecting(manager, "ckpt-5");
  CHECK(d.count == 3);
  CHECK_STR(third, d.prefixes[2]);
  CHECK(world.warnings == 1);
  CHECK(strstr(world.last_warning, "ckpt-3") != NULL);
  CHECK(strstr(world.last_warning, "9") != NULL);
  CHECK_CHECKPOINTS(manager, "ckpt-4", "ckpt-5");
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  for (int i = 0; i < d.count; i++) free(d.prefixes[i]);
  free(first);
  free(second);
  free(third);
}

/* ------------------------------------------------------------------------
 * 15. never_overwrites_existing_numbers */

static void never_overwrites_existing_numbers(const char *dir) {
  fake_world world = {.now = 100.0, .value = 1.5};
  write_in(dir, "ckpt-7.index", "seven's index");
  write_in(dir, "ckpt-7.data-00000-of-00001", "seven's data");
  write_in(dir, "other-50.index", "another name's");
  write_in(dir, "ckpt-08.index", "not canonical");
  ckpt_options *options = world_options(&world, dir, 2);
  ckpt_manager *manager = open_manager(options);
  CHECK(save_counter(manager) == 7);
  check_latest(manager, NULL);
  CHECK_CHECKPOINTS(manager, NULL);
  save_expecting(manager, "ckpt-8");
  CHECK(save_counter(manager) == 8);
  CHECK_CHECKPOINTS(manager, "ckpt-8");
  CHECK_FILE_TEXT(dir, "ckpt-7.index", "seven's index");
  CHECK_FILE_TEXT(dir, "ckpt-7.data-00000-of-00001", "seven's data");
  CHECK_FILE_TEXT(dir, "ckpt-8.index", "8");
  CHECK_STATE_FILE(dir,
                   "model_checkpoint_path: \"ckpt-8\"\n"
                   "all_model_checkpoint_paths: \"ckpt-8\"\n"
                   "all_model_checkpoint_timestamps: 100.0\n"
                   "last_preserved_timestamp: 99.0\n");
  ckpt_manager_free(manager);
  ckpt_options_free(options);
}

/* ------------------------------------------------------------------------
 * 16. corrupt_state */

static void corrupt_state(const char *dir) {
  static const char binary[] = "\x00\x01\xff\xfe\x80garbage\x00\n";
  struct {
    const char *what;
    const char *bytes;
    size_t length;
  } cases[] = {
      {"empty", "", 0},
      {"garbage", "garbage", 0},
      {"binary", binary, sizeof binary - 1},
      {"empty path", "model_checkpoint_path: \"\"\n", 0},
      {"comment only", "# nothing here\n", 0},
      {"unknown field",
       "model_checkpoint_path: \"ckpt-1\"\nall_model_checkpoint_paths: \"ckpt-1\"\n"
       "bogus_field: 1\n",
       0},
      {"truncated string",
       "model_checkpoint_path: \"ckpt-1\"\nall_model_checkpoint_paths: \"ck", 0},
  };
  fake_world world = {.now = 100.0};
  char *state_path = join(dir, "checkpoint");
  write_in(dir, "ckpt-1.index", "index one");
  write_in(dir, "ckpt-1.data-00000-of-00001", "data one");
  ckpt_options *options = world_options(&world, dir, 2);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    size_t length = cases[i].length ? cases[i].length : strlen(cases[i].bytes);
    write_bytes(state_path, cases[i].bytes, length);
    fprintf(stderr, "state file: %s\n", cases[i].what);

    /* A reader creates nothing, not even the lock file. */
    ckpt_manager *manager = SENTINEL_MANAGER;
    CHECK_OK(ckpt_options_set_read_only(options, true));
    CHECK_FAILS(CKPT_STATUS_STATE_CORRUPT, "state file", ckpt_manager_new(options, &manager));
    CHECK(manager == NULL);
    if (i == 0) CHECK_LISTING(dir, "checkpoint ckpt-1.data-00000-of-00001 ckpt-1.index");
    CHECK_OK(ckpt_options_set_read_only(options, false));
    CHECK_FAILS(CKPT_STATUS_STATE_CORRUPT, "state file", ckpt_manager_new(options, &manager));
    CHECK(manager == NULL);
    ckpt_checkpoint_state *state = SENTINEL_STATE;
    CHECK_FAILS(CKPT_STATUS_STATE_CORRUPT, "state file", ckpt_get_checkpoint_state(dir, &state));
    CHECK(state == NULL);
    char *latest = SENTINEL_STRING;
    CHECK_FAILS(CKPT_STATUS_STATE_CORRUPT, "state file", ckpt_latest_checkpoint(dir, &latest));
    CHECK(latest == NULL);

    CHECK_FILE_BYTES(state_path, cases[i].bytes, length);
    CHECK_LISTING(dir, STATE_AND_LOCK " ckpt-1.data-00000-of-00001 ckpt-1.index");
    CHECK_FILE_TEXT(dir, "ckpt-1.index", "index one");
    CHECK_FILE_TEXT(dir, "ckpt-1.data-00000-of-00001", "data one");
  }
  CHECK(world.saves == 0 && world.inits == 0);
  ckpt_options_free(options);
  free(state_path);
}

/* ------------------------------------------------------------------------
 * 17. reads_tf_written_state */

static void check_state_paths(const ckpt_checkpoint_state *state, const char *latest,
                              const char *first, const char *second) {
  CHECK_STR(latest, ckpt_checkpoint_state_model_checkpoint_path(state));
  CHECK(ckpt_checkpoint_state_path_count(state) == (second ? 2u : 1u));
  CHECK_STR(first, ckpt_checkpoint_state_path(state, 0));
  if (second) CHECK_STR(second, ckpt_checkpoint_state_path(state, 1));
  CHECK(ckpt_checkpoint_state_timestamp_count(state) == 0);
  CHECK(ckpt_checkpoint_state_last_preserved_timestamp(state) == 0.0);
}

/* Opens a manager on a directory whose state TF wrote, checks what it
 * recovered, saves once and checks the state file and the files. */
static void adopt_tf_state(const char *ckpt_dir, const char *latest,
                           uint64_t counter, const char *first_save,
                           const char *expected_state, const char *expected_files) {
  fake_world world = {.now = 5000.0};
  ckpt_options *options = world_options(&world, ckpt_dir, 2);
  ckpt_manager *manager = open_manager(options);
  check_latest(manager, latest);
  CHECK_CHECKPOINTS(manager, NULL); /* no timestamps: nothing is managed */
  CHECK(save_counter(manager) == counter);
  CHECK_FAILS(CKPT_STATUS_NO_MANIFEST, "manifest", ckpt_manager_verify(manager, NULL, true));
  /* TF wrote it without a manifest: restored unverified. */
  char *restored = NULL;
  CHECK_OK(ckpt_manager_restore_or_initialize(manager, &restored));
  CHECK_STR(latest, restored);
  CHECK(world.restores == 1 && world.inits == 0 && world.warnings == 0);
  ckpt_string_free(restored);
  save_expecting(manager, first_save);
  CHECK_OK(ckpt_manager_verify(manager, NULL, true));
  CHECK_STATE_FILE(ckpt_dir, expected_state);
  CHECK_LISTING(ckpt_dir, expected_files); /* old checkpoints are kept */
  ckpt_manager_free(manager);
  ckpt_options_free(options);
}

static void reads_tf_written_state(const char *dir) {
  fake_world world = {.value = 1.0};
  /* Old TF: absolute paths, no timestamps. */
  char *abs_dir = join(dir, "absolute");
  make_dir(abs_dir);
  char *old100 = join(abs_dir, "model.ckpt-100"), *old200 = join(abs_dir, "model.ckpt-200");
  CHECK(save_tf_style(&world, old100, 100) == 0);
  CHECK(save_tf_style(&world, old200, 200) == 0);
  char *text = format(
      "model_checkpoint_path: \"%s\"\n"
      "all_model_checkpoint_paths: \"%s\"\n"
      "all_model_checkpoint_paths: \"%s\"\n",
      old200, old100, old200);
  write_in(abs_dir, "checkpoint", text);
  free(text);
  ckpt_checkpoint_state *state = read_state(abs_dir);
  check_state_paths(state, old200, old100, old200);
  ckpt_checkpoint_state_free(state);
  check_latest_on_disk(abs_dir, old200);
  adopt_tf_state(abs_dir, old200, 200, "ckpt-201",
                 "model_checkpoint_path: \"ckpt-201\"\n"
                 "all_model_checkpoint_paths: \"ckpt-201\"\n"
                 "all_model_checkpoint_timestamps: 5000.0\n",
                 STATE_AND_LOCK " ckpt-201.ckpt-manifest.json "
                 "ckpt-201.data-00000-of-00001 ckpt-201.index "
                 "model.ckpt-100.data-00000-of-00001 model.ckpt-100.index "
                 "model.ckpt-200.data-00000-of-00001 model.ckpt-200.index");
  CHECK_FILE_TEXT(abs_dir, "model.ckpt-200.index", "200");
  CHECK_FILE_TEXT(abs_dir, "model.ckpt-100.index", "100");

  /* "./" prefixes: joined as they are, without normalising. */
  char *dot_dir = join(dir, "dot");
  make_dir(dot_dir);
  char *dot1 = join(dot_dir, "ckpt-1"), *dotted = join(dot_dir, "./ckpt-1");
  CHECK(save_tf_style(&world, dot1, 1) == 0);
  write_in(dot_dir, "checkpoint",
           "model_checkpoint_path: \"./ckpt-1\"\n"
           "all_model_checkpoint_paths: \"./ckpt-1\"\n");
  state = read_state(dot_dir);
  check_state_paths(state, dotted, dotted, NULL);
  ckpt_checkpoint_state_free(state);
  check_latest_on_disk(dot_dir, dotted);
  adopt_tf_state(dot_dir, dot1, 1, "ckpt-2",
                 "model_checkpoint_path: \"ckpt-2\"\n"
                 "all_model_checkpoint_paths: \"ckpt-2\"\n"
                 "all_model_checkpoint_timestamps: 5000.0\n",
                 STATE_AND_LOCK " ckpt-1.data-00000-of-00001 ckpt-1.index " TF3(2));
  CHECK_FILE_TEXT(dot_dir, "ckpt-1.index", "1");

  /* A repeated model_checkpoint_path: the last one wins. */
  char *rep_dir = join(dir, "repeated");
  make_dir(rep_dir);
  char *rep1 = join(rep_dir, "ckpt-1"), *rep2 = join(rep_dir, "ckpt-2");
  CHECK(save_tf_style(&world, rep1, 1) == 0);
  CHECK(save_tf_style(&world, rep2, 2) == 0);
  write_in(rep_dir, "checkpoint",
           "model_checkpoint_path: \"ckpt-1\"\n"
           "all_model_checkpoint_paths: \"ckpt-1\"\n"
           "all_model_checkpoint_paths: \"ckpt-2\"\n"
           "model_checkpoint_path: \"ckpt-2\"\n");
  state = read_state(rep_dir);
  check_state_paths(state, rep2, rep1, rep2);
  ckpt_checkpoint_state_free(state);
  check_latest_on_disk(rep_dir, rep2);
  adopt_tf_state(rep_dir, rep2, 2, "ckpt-3",
                 "model_checkpoint_path: \"ckpt-3\"\n"
                 "all_model_checkpoint_paths: \"ckpt-3\"\n"
                 "all_model_checkpoint_timestamps: 5000.0\n",
                 STATE_AND_LOCK " ckpt-1.data-00000-of-00001 ckpt-1.index "
                 "ckpt-2.data-00000-of-00001 ckpt-2.index " TF3(3));
  CHECK_FILE_TEXT(rep_dir, "ckpt-2.index", "2");

  char *all[] = {abs_dir, old100, old200, dot_dir, dot1, dotted, rep_dir, rep1, rep2};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
}

/* ------------------------------------------------------------------------
 * 18. state_file_bytes */

static void state_file_bytes(const char *dir) {
  fake_world world = {.now = 1000.0};
  char *weird_dir = join(dir, "weird");
  ckpt_options *options = world_options(&world, weird_dir, 2);
  CHECK_OK(ckpt_options_set_checkpoint_name(options, "we\"ird\\name"));
  ckpt_manager *manager = open_manager(options);
  world.now = 1784015299.2607172;
  save_expecting(manager, "we\"ird\\name-1");
  CHECK(exists(weird_dir, "we\"ird\\name-1.index"));
  CHECK_STATE_FILE(weird_dir,
                   "model_checkpoint_path: \"we\\\"ird\\\\name-1\"\n"
                   "all_model_checkpoint_paths: \"we\\\"ird\\\\name-1\"\n"
                   "all_model_checkpoint_timestamps: 1784015299.2607172\n"
                   "last_preserved_timestamp: 999.0\n");
  world.now = 1784015299.510666;
  save_expecting(manager, "we\"ird\\name-2");
  CHECK_STATE_FILE(weird_dir,
                   "model_checkpoint_path: \"we\\\"ird\\\\name-2\"\n"
                   "all_model_checkpoint_paths: \"we\\\"ird\\\\name-1\"\n"
                   "all_model_checkpoint_paths: \"we\\\"ird\\\\name-2\"\n"
                   "all_model_checkpoint_timestamps: 1784015299.2607172\n"
                   "all_model_checkpoint_timestamps: 1784015299.510666\n"
                   "last_preserved_timestamp: 999.0\n");
  ckpt_manager_free(manager);
  /* Read back: raw names, exact timestamps, and a manager recovers both. */
  ckpt_checkpoint_state *state = read_state(weird_dir);
  char *second = join(weird_dir, "we\"ird\\name-2");
  CHECK_STR(second, ckpt_checkpoint_state_model_checkpoint_path(state));
  CHECK(ckpt_checkpoint_state_timestamp_count(state) == 2);
  CHECK(ckpt_checkpoint_state_timestamp(state, 0) == 1784015299.2607172);
  CHECK(ckpt_checkpoint_state_timestamp(state, 1) == 1784015299.510666);
  CHECK(ckpt_checkpoint_state_last_preserved_timestamp(state) == 999.0);
  /* Past the end, and without a state, the accessors say "none". */
  CHECK(ckpt_checkpoint_state_path(state, 2) == NULL);
  CHECK(ckpt_checkpoint_state_timestamp(state, 2) != ckpt_checkpoint_state_timestamp(state, 2));
  CHECK(ckpt_checkpoint_state_model_checkpoint_path(NULL) == NULL);
  CHECK(ckpt_checkpoint_state_path_count(NULL) == 0);
  CHECK(ckpt_checkpoint_state_path(NULL, 0) == NULL);
  CHECK(ckpt_checkpoint_state_timestamp_count(NULL) == 0);
  CHECK(ckpt_checkpoint_state_timestamp(NULL, 0) != ckpt_checkpoint_state_timestamp(NULL, 0));
  CHECK(ckpt_checkpoint_state_last_preserved_timestamp(NULL) == 0.0);
  ckpt_checkpoint_state_free(state);
  world.now = 1784015300.0;
  manager = open_manager(options);
  check_latest(manager, second);
  CHECK_CHECKPOINTS(manager, "we\"ird\\name-1", "we\"ird\\name-2");
  ckpt_manager_free(manager);
  ckpt_options_free(options);

  /* Non-ASCII names are written as octal escapes. */
  char *utf8_dir = join(dir, "utf8");
  world.now = 10000.0;
  options = world_options(&world, utf8_dir, 2);
  CHECK_OK(ckpt_options_set_checkpoint_name(options, "caf\xc3\xa9"));
  manager = open_manager(options);
  world.now = 1784015298.994252;
  save_expecting(manager, "caf\xc3\xa9-1");
  CHECK(exists(utf8_dir, "caf\xc3\xa9-1.index"));
  CHECK_STATE_FILE(utf8_dir,
                   "model_checkpoint_path: \"caf\\303\\251-1\"\n"
                   "all_model_checkpoint_paths: \"caf\\303\\251-1\"\n"
                   "all_model_checkpoint_timestamps: 1784015298.994252\n"
                   "last_preserved_timestamp: 9999.0\n");
  char *cafe = join(utf8_dir, "caf\xc3\xa9-1");
  check_latest_on_disk(utf8_dir, cafe);
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  free(cafe);
  free(second);
  free(weird_dir);
  free(utf8_dir);
}

/* ------------------------------------------------------------------------
 * 19. non_utf8_paths */

static void non_utf8_paths(const char *dir) {
  fake_world world = {.now = 100.0};
  char *bad_dir = join(dir, "run\xff");
  ckpt_options *options = world_options(&world, bad_dir, 2);
  ckpt_manager *manager = open_manager(options);
  char *paths[3];
  for (int i = 0; i < 3; i++) {
    world.now += 1.0;
    paths[i] = save(manager);
    char *expected = format("%s/ckpt-%d", bad_dir, i + 1);
    CHECK_STR(expected, paths[i]);
    free(expected);
  }
  check_latest(manager, paths[2]);
  CHECK_CHECKPOINTS(manager, "ckpt-2", "ckpt-3");
  char *directory = NULL;
  CHECK_OK(ckpt_manager_directory(manager, &directory));
  CHECK_STR(bad_dir, directory);
  ckpt_string_free(directory);
  CHECK(!checkpoint_exists(paths[0]));
  CHECK(checkpoint_exists(paths[1]) && checkpoint_exists(paths[2]));
  check_latest_on_disk(bad_dir, paths[2]);
  ckpt_checkpoint_state *state = read_state(bad_dir);
  CHECK_STR(paths[2], ckpt_checkpoint_state_model_checkpoint_path(state));
  CHECK(ckpt_checkpoint_state_path_count(state) == 2);
  CHECK_STR(paths[1], ckpt_checkpoint_state_path(state, 0));
  ckpt_checkpoint_state_free(state);
  CHECK_OK(ckpt_verify_checkpoint(paths[2], true));
  CHECK_OK(ckpt_remove_checkpoint(paths[2]));
  CHECK(!checkpoint_exists(paths[2]));
  check_latest_on_disk(bad_dir, paths[1]); /* falls back to the older one */
  CHECK_LISTING(bad_dir, STATE_AND_LOCK " " TF3(2));
  ckpt_manager_free(manager);
  ckpt_options_free(options);

  /* A non-UTF-8 checkpoint name: octal in the state file, raw bytes back. */
  char *plain = join(dir, "plain");
  options = world_options(&world, plain, 2);
  CHECK_OK(ckpt_options_set_checkpoint_name(options, "k\xff"));
  manager = open_manager(options);
  world.now = 200.0;
  save_expecting(manager, "k\xff" "-1");
  CHECK_STATE_FILE(plain,
                   "model_checkpoint_path: \"k\\377-1\"\n"
                   "all_model_checkpoint_paths: \"k\\377-1\"\n"
                   "all_model_checkpoint_timestamps: 200.0\n"
                   "last_preserved_timestamp: 102.0\n");
  ckpt_manager_free(manager);
  manager = open_manager(options);
  char *expected = join(plain, "k\xff" "-1");
  check_latest(manager, expected);
  CHECK_CHECKPOINTS(manager, "k\xff" "-1");
  CHECK(save_counter(manager) == 1);
  check_latest_on_disk(plain, expected);
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  free(expected);
  free(plain);
  for (int i = 0; i < 3; i++) ckpt_string_free(paths[i]);
  free(bad_dir);
}

/* ------------------------------------------------------------------------
 * 20. latest_checkpoint_missing_files */

static void remove_file_in(const char *dir, const char *name) {
  char *path = join(dir, name);
  CHECK(unlink(path) == 0);
  free(path);
}

static void latest_checkpoint_missing_files(const char *dir) {
  fake_world world = {.now = 100.0};
  char *ckpt_dir = join(dir, "run");
  check_latest_on_disk(ckpt_dir, NULL); /* no directory */
  make_dir(ckpt_dir);
  check_latest_on_disk(ckpt_dir, NULL); /* no state file */
  check_latest_with_flags(ckpt_dir, CKPT_LATEST_NO_FALLBACK, NULL);
  char *latest = SENTINEL_STRING;
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "flags",
              ckpt_latest_checkpoint_with_flags(ckpt_dir, 4, &latest));
  CHECK(latest == NULL);

  ckpt_options *options = world_options(&world, ckpt_dir, 3);
  ckpt_manager *manager = open_manager(options);
  world.value = 1.0;
  save_expecting(manager, "ckpt-1");
  world.now += 1.0;
  world.value = 2.0;
  save_expecting(manager, "ckpt-2");
  char *first = join(ckpt_dir, "ckpt-1"), *second = join(ckpt_dir, "ckpt-2");
  check_latest_on_disk(ckpt_dir, second);
  check_latest_with_flags(ckpt_dir, CKPT_LATEST_NO_FALLBACK | CKPT_LATEST_VERIFY_CHECKSUMS,
                          second);

  /* Same size, other bytes: only a checksum check notices. */
  write_in(ckpt_dir, "ckpt-2.data-00000-of-00001", "9");
  check_latest_on_disk(ckpt_dir, second);
  check_latest_with_flags(ckpt_dir, CKPT_LATEST_VERIFY_CHECKSUMS, first);
  CHECK_FAILS(CKPT_STATUS_CHECKPOINT_DAMAGED, "CRC32C",
              ckpt_latest_checkpoint_with_flags(
                  ckpt_dir, CKPT_LATEST_NO_FALLBACK | CKPT_LATEST_VERIFY_CHECKSUMS, &latest));
  CHECK(latest == NULL);
  write_in(ckpt_dir, "ckpt-2.data-00000-of-00001", "2");

  /* A file of the latest removed by hand: the newest intact one is used,
   * or, with no fallback, the damage is reported. */
  remove_file_in(ckpt_dir, "ckpt-2.index");
  check_latest_on_disk(ckpt_dir, first);
  CHECK_FAILS(CKPT_STATUS_CHECKPOINT_DAMAGED, "ckpt-2.index",
              ckpt_latest_checkpoint_with_flags(ckpt_dir, CKPT_LATEST_NO_FALLBACK, &latest));
  CHECK(latest == NULL);
  /* Restoring falls back too, with a warning. */
  char *restored = NULL;
  CHECK_OK(ckpt_manager_restore_or_initialize(manager, &restored));
  CHECK_STR(first, restored);
  CHECK(world.value == 1.0 && world.warnings >= 1);
  ckpt_string_free(restored);

  /* All of the latest's files gone: the same. */
  remove_file_in(ckpt_dir, "ckpt-2.data-00000-of-00001");
  remove_file_in(ckpt_dir, "ckpt-2.ckpt-manifest.json");
  check_latest_on_disk(ckpt_dir, first);
  /* Nothing intact left: NULL, and OK. */
  CHECK_OK(ckpt_remove_checkpoint(first));
  check_latest_on_disk(ckpt_dir, NULL);
  CHECK_FAILS(CKPT_STATUS_CHECKPOINT_DAMAGED, "ckpt-2",
              ckpt_latest_checkpoint_with_flags(ckpt_dir, CKPT_LATEST_NO_FALLBACK, &latest));
  CHECK(latest == NULL);
  restored = SENTINEL_STRING;
  CHECK_FAILS(CKPT_STATUS_CHECKPOINT_DAMAGED, "ckpt-2",
              ckpt_manager_restore_or_initialize(manager, &restored));
  CHECK(restored == NULL);
  /* The manager's latest is what the state file records. */
  check_latest(manager, second);
  ckpt_manager_free(manager);
  ckpt_options_free(options);

  /* TF-written checkpoints (no manifest) count as intact while any of
   * their files exists, as in TF; with none left, the older one is used. */
  char *tf_dir = join(dir, "tf");
  make_dir(tf_dir);
  char *tf4 = join(tf_dir, "ckpt-4"), *tf5 = join(tf_dir, "ckpt-5");
  CHECK(save_tf_style(&world, tf4, 4) == 0);
  CHECK(save_tf_style(&world, tf5, 5) == 0);
  write_in(tf_dir, "checkpoint",
           "model_checkpoint_path: \"ckpt-5\"\n"
           "all_model_checkpoint_paths: \"ckpt-4\"\n"
           "all_model_checkpoint_paths: \"ckpt-5\"\n");
  check_latest_on_disk(tf_dir, tf5);
  remove_file_in(tf_dir, "ckpt-5.index");
  check_latest_on_disk(tf_dir, tf5);
  CHECK_FAILS(CKPT_STATUS_NO_MANIFEST, "manifest", ckpt_verify_checkpoint(tf5, false));
  remove_file_in(tf_dir, "ckpt-5.data-00000-of-00001");
  check_latest_with_flags(tf_dir, 0, tf4);
  CHECK_FAILS(CKPT_STATUS_CHECKPOINT_DAMAGED, "ckpt-5",
              ckpt_latest_checkpoint_with_flags(tf_dir, CKPT_LATEST_NO_FALLBACK, &latest));
  CHECK(latest == NULL);

  free(tf4);
  free(tf5);
  free(tf_dir);
  free(first);
  free(second);
  free(ckpt_dir);
}

/* ------------------------------------------------------------------------
 * 21. remove_checkpoint */

static void remove_checkpoint(const char *dir) {
  /* Without a manifest, a checkpoint owns TF's files only. */
  const char *own[] = {"ckpt-1.index", "ckpt-1.data-00000-of-00002", "ckpt-1.data-00001-of-00002"};
  const char *neighbours[] = {"ckpt-10.index", "ckpt-1-2.index", "ckpt-1_x", "ckpt-1x.index",
                              "xckpt-1.index", "ckpt-2.index", "checkpoint",
                              "ckpt-1.safetensors", "ckpt-1.index.tempstate42",
                              "ckpt-1.data-0-of-1"};
  for (size_t i = 0; i < sizeof own / sizeof own[0]; i++) write_in(dir, own[i], "own");
  for (size_t i = 0; i < sizeof neighbours / sizeof neighbours[0]; i++)
    write_in(dir, neighbours[i], neighbours[i]);
  char *prefix = join(dir, "ckpt-1");
  make_dir(prefix);
  write_in(prefix, "shard", "shard");
  char *sub = join(prefix, "sub");
  make_dir(sub);
  write_in(sub, "deep", "deep");
  char *ten = join(dir, "ckpt-10");
  make_dir(ten);
  write_in(ten, "shard", "ten's shard");

  CHECK(checkpoint_exists(prefix));
  CHECK_OK(ckpt_remove_checkpoint(prefix));
  CHECK_LISTING(dir,
                "checkpoint ckpt-1 ckpt-1-2.index ckpt-1.data-0-of-1 ckpt-1.index.tempstate42 "
                "ckpt-1.safetensors ckpt-10 ckpt-10.index ckpt-1_x ckpt-1x.index ckpt-2.index "
                "xckpt-1.index");
  for (size_t i = 0; i < sizeof neighbours / sizeof neighbours[0]; i++)
    CHECK_FILE_TEXT(dir, neighbours[i], neighbours[i]);
  CHECK_FILE_TEXT(prefix, "shard", "shard"); /* no manifest names it: never recursed into */
  CHECK_FILE_TEXT(ten, "shard", "ten's shard");
  /* A prefix that ends in '/' names no checkpoint. */
  char *slash = format("%s/", prefix);
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "prefix", ckpt_remove_checkpoint(slash));
  CHECK_FILE_TEXT(prefix, "shard", "shard");
  free(slash);

  /* Nothing to remove is fine, also in a directory that does not exist. */
  CHECK_OK(ckpt_remove_checkpoint(prefix));
  char *missing = join(dir, "no/such/ckpt-1");
  CHECK_OK(ckpt_remove_checkpoint(missing));
  bool found = true;
  CHECK_OK(ckpt_checkpoint_exists(missing, &found));
  CHECK(!found);

  /* A relative prefix is relative to the working directory. */
  CHECK(chdir(dir) == 0);
  write_text("rel-1.index", "x");
  write_text("rel-10.index", "x");
  CHECK(checkpoint_exists("rel-1"));
  CHECK_OK(ckpt_remove_checkpoint("rel-1"));
  CHECK(!exists(dir, "rel-1.index") && exists(dir, "rel-10.index"));

  free(missing);
  free(ten);
  free(sub);
  free(prefix);
}

/* ------------------------------------------------------------------------
 * 22. explicit_overwrite */

static void explicit_overwrite(const char *dir) {
  fake_world world = {.now = 100.0};
  ckpt_options *options = world_options(&world, dir, 3);
  ckpt_manager *manager = open_manager(options);
  for (int i = 1; i <= 3; i++) {
    world.now += 1.0;
    char expected[16];
    snprintf(expected, sizeof expected, "ckpt-%d", i);
    save_expecting(manager, expected);
  }
  world.now = 104.0;
  world.value = 2.0;
  char *again = save_numbered(manager, 2);
  CHECK_STR("ckpt-2", base_name(again));
  check_latest(manager, again);
  CHECK_CHECKPOINTS(manager, "ckpt-1", "ckpt-3", "ckpt-2");
  CHECK(save_counter(manager) == 4);
  CHECK_STATE_FILE(dir,
                   "model_checkpoint_path: \"ckpt-2\"\n"
                   "all_model_checkpoint_paths: \"ckpt-1\"\n"
                   "all_model_checkpoint_paths: \"ckpt-3\"\n"
                   "all_model_checkpoint_paths: \"ckpt-2\"\n"
                   "all_model_checkpoint_timestamps: 101.0\n"
                   "all_model_checkpoint_timestamps: 103.0\n"
                   "all_model_checkpoint_timestamps: 104.0\n"
                   "last_preserved_timestamp: 99.0\n");
  CHECK_FILE_TEXT(dir, "ckpt-2.data-00000-of-00001", "2");
  CHECK_OK(ckpt_verify_checkpoint(again, true)); /* its manifest was rewritten */

  world.now = 105.0;
  save_expecting(manager, "ckpt-5"); /* the counter went past 4 */
  CHECK_CHECKPOINTS(manager, "ckpt-3", "ckpt-2", "ckpt-5");
  CHECK_LISTING(dir, STATE_AND_LOCK " " TF3(2) " " TF3(3) " " TF3(5));
  world.now = 106.0;
  ckpt_string_free(save_numbered(manager, 3));
  CHECK_CHECKPOINTS(manager, "ckpt-2", "ckpt-5", "ckpt-3");
  ckpt_manager_free(manager);

  manager = open_manager(options);
  CHECK_CHECKPOINTS(manager, "ckpt-2", "ckpt-5", "ckpt-3");
  CHECK(save_counter(manager) == 5);
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  ckpt_string_free(again);
}

/* ------------------------------------------------------------------------
 * 23. lower_max_to_keep */

static void lower_max_to_keep(const char *dir) {
  fake_world world = {.now = 100.0};
  ckpt_options *options = world_options(&world, dir, 0);
  ckpt_manager *manager = open_manager(options);
  for (int i = 1; i <= 5; i++) {
    world.now += 1.0;
    ckpt_string_free(save(manager));
  }
  CHECK_CHECKPOINTS(manager, "ckpt-1", "ckpt-2", "ckpt-3", "ckpt-4", "ckpt-5");
  ckpt_manager_free(manager);

  CHECK_OK(ckpt_options_set_max_to_keep(options, 2));
  manager = open_manager(options);
  /* Opening sweeps nothing. */
  CHECK_CHECKPOINTS(manager, "ckpt-1", "ckpt-2", "ckpt-3", "ckpt-4", "ckpt-5");
  for (int i = 1; i <= 5; i++) {
    char *index = format("ckpt-%d.index", i);
    CHECK(exists(dir, index));
    free(index);
  }
  world.now = 110.0;
  save_expecting(manager, "ckpt-6");
  CHECK_CHECKPOINTS(manager, "ckpt-5", "ckpt-6");
  CHECK_LISTING(dir, STATE_AND_LOCK " " TF3(5) " " TF3(6));
  CHECK_STATE_FILE(dir,
                   "model_checkpoint_path: \"ckpt-6\"\n"
                   "all_model_checkpoint_paths: \"ckpt-5\"\n"
                   "all_model_checkpoint_paths: \"ckpt-6\"\n"
                   "all_model_checkpoint_timestamps: 105.0\n"
                   "all_model_checkpoint_timestamps: 110.0\n"
                   "last_preserved_timestamp: 99.0\n");
  ckpt_manager_free(manager);
  ckpt_options_free(options);
}

/* ------------------------------------------------------------------------
 * 30. save_file_writes: a save callback writes one file through the library
 * (its CRC32C computed on the way) and one by itself; both are in the
 * manifest and verify. Misuse is refused with a clear status. */

typedef struct {
  int calls;
  ckpt_status outside_save, bad_suffix, null_file;
} writer_world;

static int32_t save_through_library(void *data, const char *prefix, uint64_t number) {
  writer_world *w = data;
  w->calls++;
  ckpt_save_file *file = NULL;
  CHECK_OK(ckpt_save_file_open(prefix, ".data-00000-of-00001", &file));
  uint8_t block[4096];
  for (int i = 0; i < 256; i++) {
    memset(block, (int)(number + (uint64_t)i), sizeof block);
    CHECK_OK(ckpt_save_file_write(file, block, sizeof block));
  }
  CHECK_OK(ckpt_save_file_write(file, NULL, 0));
  CHECK_OK(ckpt_save_file_close(file));
  ckpt_save_file *nested = NULL;
  CHECK_OK(ckpt_save_file_open(prefix, "/shards/0", &nested));
  CHECK_OK(ckpt_save_file_write(nested, "shard", 5));
  CHECK_OK(ckpt_save_file_close(nested));
  ckpt_save_file *untouched = NULL;
  w->bad_suffix = ckpt_save_file_open(prefix, "/../../escape", &untouched);
  CHECK(untouched == NULL);
  w->null_file = ckpt_save_file_write(NULL, block, 1);
  char *index = format("%s.index", prefix);
  write_text(index, "index");
  free(index);
  return 0;
}

static void save_file_writes(const char *dir) {
  writer_world w = {0};
  fake_world world = {.now = 100.0};
  ckpt_options *options = world_options(&world, dir, 2);
  CHECK_OK(ckpt_options_set_save_callback(options, save_through_library, &w, NULL));
  ckpt_manager *manager = open_manager(options);
  save_expecting(manager, "ckpt-1");
  CHECK(w.calls == 1);
  CHECK(w.bad_suffix == CKPT_STATUS_INVALID_ARGUMENT);
  CHECK(w.null_file == CKPT_STATUS_NULL_ARGUMENT);
  CHECK_LISTING(dir, STATE_AND_LOCK " ckpt-1 ckpt-1.ckpt-manifest.json "
                     "ckpt-1.data-00000-of-00001 ckpt-1.index");
  char *prefix = join(dir, "ckpt-1");
  CHECK_OK(ckpt_verify_checkpoint(prefix, true));
  char *data = join(dir, "ckpt-1.data-00000-of-00001");
  FILE *f = fopen(data, "r+b");
  CHECK(f != NULL && fseek(f, 4096 * 100, SEEK_SET) == 0 && fputc(0xEE, f) != EOF);
  CHECK(fclose(f) == 0);
  CHECK_FAILS(CKPT_STATUS_CHECKPOINT_DAMAGED, "CRC32C", ckpt_verify_checkpoint(prefix, true));

  /* Outside a save, a prefix is refused, and nothing is created. */
  ckpt_save_file *file = NULL;
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "not the prefix of a save in progress",
              ckpt_save_file_open(prefix, ".late", &file));
  CHECK(file == NULL);
  CHECK(!exists(dir, "ckpt-1.late"));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "prefix", ckpt_save_file_open(NULL, ".x", &file));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "out_file", ckpt_save_file_open(prefix, ".x", NULL));
  CHECK_OK(ckpt_save_file_close(NULL));
  free(data);
  free(prefix);
  ckpt_manager_free(manager);
  ckpt_options_free(options);
}

/* ------------------------------------------------------------------------
 * 24. directory_is_a_file */

static void directory_is_a_file(const char *dir) {
  fake_world world = {.now = 100.0};
  char *file = join(dir, "file");
  write_text(file, "precious");

  /* Named before the manager opens: a writer cannot create it. */
  ckpt_options *options = world_options(&world, file, 2);
  ckpt_manager *manager = SENTINEL_MANAGER;
  CHECK_FAILS(CKPT_STATUS_IO_ERROR, file, ckpt_manager_new(options, &manager));
  CHECK(manager == NULL);
  char *latest = SENTINEL_STRING;
  CHECK_FAILS(CKPT_STATUS_IO_ERROR, file, ckpt_latest_checkpoint(file, &latest));
  CHECK(latest == NULL);
  ckpt_options_free(options);

  /* Replaced by a file after the manager opened: the save fails. */
  char *later = join(dir, "later"), *moved = join(dir, "moved");
  options = world_options(&world, later, 2);
  manager = open_manager(options);
  CHECK(rename(later, moved) == 0);
  write_text(later, "precious too");
  char *prefix = SENTINEL_STRING;
  CHECK_FAILS(CKPT_STATUS_IO_ERROR, later, ckpt_manager_save(manager, NULL, true, &prefix));
  CHECK(prefix == NULL);
  CHECK(world.saves == 0);
  CHECK(save_counter(manager) == 0);
  check_latest(manager, NULL);
  ckpt_manager_free(manager);
  ckpt_options_free(options);

  CHECK_LISTING(dir, "file later moved");
  CHECK_LISTING(moved, "checkpoint.lock");
  CHECK_FILE_TEXT(dir, "file", "precious");
  CHECK_FILE_TEXT(dir, "later", "precious too");
  free(file);
  free(later);
  free(moved);
}

/* ------------------------------------------------------------------------
 * 25. free_inside_callback: freeing a manager from inside one of its own
 * calls is refused and the manager stays usable (valgrind: no invalid
 * access, no double free). */

typedef struct {
  fake_world *world;
  ckpt_manager *self;  /* the manager whose callbacks these are */
  ckpt_manager *outer; /* a manager whose call runs around self's, or NULL */
  int refused;         /* frees refused, each with the message */
  int attempts;
  ckpt_status latest;  /* what the finalizer's call on self returned */
} freeing;

static void try_free(freeing *f, ckpt_manager *target) {
  reset_message();
  ckpt_manager_free(target);
  f->attempts++;
  if (strstr(ckpt_last_error_message(), "was not freed") != NULL) f->refused++;
}

static int32_t freeing_save(void *data, const char *prefix, uint64_t number) {
  freeing *f = data;
  try_free(f, f->self);
  if (f->outer != NULL) try_free(f, f->outer);
  return save_tf_style(f->world, prefix, number);
}

static int32_t freeing_restore(void *data, const char *prefix) {
  freeing *f = data;
  try_free(f, f->self);
  return restore_tf_style(f->world, prefix);
}

/* Runs inside ckpt_manager_free(self): a second free and any call are
 * refused instead of touching the manager being freed. */
static void freeing_finalizer(void *data) {
  freeing *f = data;
  try_free(f, f->self);
  char *latest = SENTINEL_STRING;
  f->latest = ckpt_manager_latest(f->self, &latest);
}

/* The outer manager's save saves the inner one, whose callbacks free. */
static int32_t save_inner(void *data, const char *prefix, uint64_t number) {
  freeing *f = data;
  char *inner = save(f->self);
  CHECK(inner != NULL);
  ckpt_string_free(inner);
  return save_tf_style(f->world, prefix, number);
}

static void free_inside_callback(const char *dir) {
  fake_world world = {.now = 100.0};
  char *ckpt_dir = join(dir, "run");
  freeing f = {.world = &world, .latest = CKPT_STATUS_OK};
  ckpt_options *options = world_options(&world, ckpt_dir, 2);
  CHECK_OK(ckpt_options_set_save_callback(options, freeing_save, &f, freeing_finalizer));
  CHECK_OK(ckpt_options_set_restore_callback(options, freeing_restore, &f, NULL));
  ckpt_manager *manager = open_manager(options);
  f.self = manager;

  /* From its own save and restore callbacks: refused, the calls succeed. */
  save_expecting(manager, "ckpt-1");
  CHECK(f.attempts == 1 && f.refused == 1);
  char *restored = NULL;
  CHECK_OK(ckpt_manager_restore_or_initialize(manager, &restored));
  CHECK_STR("ckpt-1", base_name(restored));
  ckpt_string_free(restored);
  CHECK(f.attempts == 2 && f.refused == 2);
  save_expecting(manager, "ckpt-2");
  CHECK(f.refused == 3);
  CHECK_CHECKPOINTS(manager, "ckpt-1", "ckpt-2");

  /* Nested: while another manager's call runs around this one's, neither
   * can be freed from the inner callback. */
  fake_world outer_world = {.now = 100.0};
  char *outer_dir = join(dir, "outer");
  ckpt_options *outer_options = world_options(&outer_world, outer_dir, 2);
  freeing outer = {.world = &outer_world, .self = manager};
  CHECK_OK(ckpt_options_set_save_callback(outer_options, save_inner, &outer, NULL));
  ckpt_manager *outer_manager = open_manager(outer_options);
  f.outer = outer_manager;
  save_expecting(outer_manager, "ckpt-1");
  CHECK(f.attempts == 5 && f.refused == 5);
  CHECK_CHECKPOINTS(manager, "ckpt-2", "ckpt-3");
  f.outer = NULL;
  ckpt_manager_free(outer_manager);
  ckpt_options_free(outer_options);

  /* Outside any call the free works, and the finalizer it runs can neither
   * free the manager again nor call into it. */
  ckpt_options_free(options);
  CHECK(f.attempts == 5);
  ckpt_manager_free(manager);
  CHECK(f.attempts == 6 && f.refused == 6);
  CHECK(f.latest == CKPT_STATUS_REENTRANT_CALL);
  free(ckpt_dir);
  free(outer_dir);
}

/* ------------------------------------------------------------------------
 * 26. shared_callbacks: managers built from one options object share its
 * callbacks and their user_data, and run them at the same time on
 * different threads; one manager runs its callbacks one at a time. */

typedef struct {
  pthread_mutex_t lock;
  pthread_cond_t changed;
  int inside;      /* save callbacks running now */
  int max_inside;  /* the most that ever ran at once */
  int calls;
  int wait_ms;     /* how long a callback waits for a second one */
  int finalized;
} rendezvous;

/* Waits (up to wait_ms) until two save callbacks have run at once. */
static int32_t meet_in_save(void *data, const char *prefix, uint64_t number) {
  (void)number;
  rendezvous *r = data;
  CHECK(pthread_mutex_lock(&r->lock) == 0);
  r->calls++;
  if (++r->inside > r->max_inside) r->max_inside = r->inside;
  CHECK(pthread_cond_broadcast(&r->changed) == 0);
  struct timespec deadline;
  CHECK(clock_gettime(CLOCK_REALTIME, &deadline) == 0);
  long nanoseconds = deadline.tv_nsec + (long)r->wait_ms % 1000 * 1000000L;
  deadline.tv_sec += r->wait_ms / 1000 + nanoseconds / 1000000000L;
  deadline.tv_nsec = nanoseconds % 1000000000L;
  while (r->max_inside < 2 &&
         pthread_cond_timedwait(&r->changed, &r->lock, &deadline) != ETIMEDOUT) {
  }
  r->inside--;
  CHECK(pthread_mutex_unlock(&r->lock) == 0);
  write_text(prefix, "x"); /* a checkpoint may be the one file `prefix` */
  return 0;
}

static void finalize_rendezvous(void *data) { ((rendezvous *)data)->finalized++; }

typedef struct {
  ckpt_manager *manager;
  int saves;
  int failures;
} saver;

static void *save_some(void *arg) {
  saver *s = arg;
  for (int i = 0; i < s->saves; i++) {
    char *prefix = NULL;
    if (ckpt_manager_save(s->manager, NULL, false, &prefix) != CKPT_STATUS_OK) s->failures++;
    ckpt_string_free(prefix);
  }
  return NULL;
}

static void save_on_two_threads(saver *a, saver *b) {
  pthread_t threads[2];
  CHECK(pthread_create(&threads[0], NULL, save_some, a) == 0);
  CHECK(pthread_create(&threads[1], NULL, save_some, b) == 0);
  CHECK(pthread_join(threads[0], NULL) == 0 && pthread_join(threads[1], NULL) == 0);
  CHECK(a->failures == 0 && b->failures == 0);
}

static void shared_callbacks(const char *dir) {
  alarm(120);
  rendezvous r = {.wait_ms = 20000};
  CHECK(pthread_mutex_init(&r.lock, NULL) == 0 && pthread_cond_init(&r.changed, NULL) == 0);
  char *first_dir = join(dir, "first"), *second_dir = join(dir, "second");
  ckpt_options *options = NULL;
  CHECK_OK(ckpt_options_new(&options));
  CHECK_OK(ckpt_options_set_keep_all(options));
  CHECK_OK(ckpt_options_set_save_callback(options, meet_in_save, &r, finalize_rendezvous));
  CHECK_OK(ckpt_options_set_directory(options, first_dir));
  ckpt_manager *first = open_manager(options);
  CHECK_OK(ckpt_options_set_directory(options, second_dir));
  ckpt_manager *second = open_manager(options);
  ckpt_options_free(options);

  /* Two managers: their save callbacks meet, on one shared user_data. */
  saver a = {.manager = first, .saves = 3}, b = {.manager = second, .saves = 3};
  save_on_two_threads(&a, &b);
  CHECK(r.max_inside == 2 && r.calls == 6);
  CHECK_CHECKPOINTS(first, "ckpt-1", "ckpt-2", "ckpt-3");
  CHECK_CHECKPOINTS(second, "ckpt-1", "ckpt-2", "ckpt-3");

  /* One manager on two threads: its callbacks never overlap, even when
   * each waits a while for a partner. */
  r.max_inside = 0;
  r.wait_ms = 100;
  a.saves = b.saves = 2;
  b.manager = first;
  save_on_two_threads(&a, &b);
  CHECK(r.max_inside == 1 && r.calls == 10);
  CHECK_CHECKPOINTS(first, "ckpt-1", "ckpt-2", "ckpt-3", "ckpt-4", "ckpt-5", "ckpt-6", "ckpt-7");

  /* The shared user_data is finalized once, by the last holder. */
  ckpt_manager_free(first);
  CHECK(r.finalized == 0);
  ckpt_manager_free(second);
  CHECK(r.finalized == 1);
  pthread_cond_destroy(&r.changed);
  pthread_mutex_destroy(&r.lock);
  free(first_dir);
  free(second_dir);
}

/* ------------------------------------------------------------------------
 * Beyond TF's retention (issue 10): save arguments, best-k, keep period,
 * pins, checkpoint info, timed and requested saves, preemption. */

static int args_marker;
#define SENTINEL_ARGS ((ckpt_save_args *)(void *)&args_marker)

static ckpt_save_args *new_args(void) {
  ckpt_save_args *args = SENTINEL_ARGS;
  CHECK_OK(ckpt_save_args_new(&args));
  CHECK(args != NULL && args != SENTINEL_ARGS);
  return args;
}

/* Saves with `args`; expects the prefix `basename`, or a skipped save
 * (a NULL prefix) when `basename` is NULL. */
static void save_with_expecting(ckpt_manager *manager, const ckpt_save_args *args,
                                const char *basename) {
  char *prefix = SENTINEL_STRING;
  CHECK_OK(ckpt_manager_save_with(manager, args, &prefix));
  CHECK(prefix != SENTINEL_STRING);
  if (basename == NULL) {
    CHECK_STR(NULL, prefix);
    return;
  }
  CHECK(prefix != NULL);
  CHECK_STR(basename, base_name(prefix));
  ckpt_string_free(prefix);
}

/* Saves recording one metric. */
static void save_metric_expecting(ckpt_manager *manager, const char *metric, double value,
                                  const char *basename) {
  ckpt_save_args *args = new_args();
  CHECK_OK(ckpt_save_args_set_metric(args, metric, value));
  save_with_expecting(manager, args, basename);
  ckpt_save_args_free(args);
}

/* `length` copies of `c`, NUL-terminated. */
static char *repeated(char c, size_t length) {
  char *text = malloc(length + 1);
  CHECK(text != NULL);
  memset(text, c, length);
  text[length] = '\0';
  return text;
}

/* ckpt_manager_checkpoint_info of <dir>/<basename> is exactly `expected`. */
#define CHECK_INFO(manager, dir, basename, expected) \
  check_info(__FILE__, __LINE__, (manager), (dir), (basename), (expected))
static void check_info(const char *file, int line, ckpt_manager *manager, const char *dir,
                       const char *basename, const char *expected) {
  char *prefix = join(dir, basename);
  char *json = SENTINEL_STRING;
  CHECK_OK(ckpt_manager_checkpoint_info(manager, prefix, &json));
  if (json == NULL || strcmp(json, expected) != 0)
    test_fail(file, line, "checkpoint_info of %s is\n%s\nexpected\n%s", basename,
              json ? json : "(null)", expected);
  ckpt_string_free(json);
  free(prefix);
}

/* The manifest of <dir>/<basename> holds `needle` (or, `present` false,
 * does not). */
#define CHECK_MANIFEST(dir, basename, present, needle) \
  check_manifest(__FILE__, __LINE__, (dir), (basename), (present), (needle))
static void check_manifest(const char *file, int line, const char *dir, const char *basename,
                           bool present, const char *needle) {
  char *name = format("%s.ckpt-manifest.json", basename);
  char *path = join(dir, name);
  char *text = read_text(path);
  if (text == NULL) test_fail(file, line, "%s is missing", path);
  if ((strstr(text, needle) != NULL) != present)
    test_fail(file, line, "%s %s \"%s\":\n%s", path, present ? "lacks" : "holds", needle, text);
  free(text);
  free(path);
  free(name);
}

static void check_best(ckpt_manager *manager, const char *dir, const char *basename) {
  char *best = SENTINEL_STRING;
  CHECK_OK(ckpt_manager_best(manager, &best));
  CHECK(best != SENTINEL_STRING);
  char *expected = basename ? join(dir, basename) : NULL;
  CHECK_STR(expected, best);
  free(expected);
  ckpt_string_free(best);
}

static bool should_save(ckpt_manager *manager) {
  bool answer = false, other = true;
  CHECK_OK(ckpt_manager_should_save(manager, &answer));
  CHECK_OK(ckpt_manager_should_save(manager, &other));
  CHECK(answer == other); /* asking changes nothing */
  return answer;
}

/* Exactly the checkpoints `names` (space-separated basenames, oldest
 * first) are kept: on the manager's list, on the state file's list (the
 * last being its model_checkpoint_path), and on disk, where the directory
 * holds their TF-style files and manifests, the state file and the lock
 * and nothing else. */
#define CHECK_KEPT(manager, dir, names) \
  check_kept(__FILE__, __LINE__, (manager), (dir), (names))
static void check_kept(const char *file, int line, ckpt_manager *manager, const char *dir,
                       const char *names) {
  char *copy = strdup(names);
  CHECK(copy != NULL);
  const char *kept[16];
  size_t count = 0;
  for (char *name = strtok(copy, " "); name != NULL; name = strtok(NULL, " ")) {
    CHECK(count < 15);
    kept[count++] = name;
  }
  kept[count] = NULL;
  check_checkpoints(file, line, manager, kept);

  ckpt_checkpoint_state *state = read_state(dir);
  bool same = ckpt_checkpoint_state_path_count(state) == count && count > 0 &&
              strcmp(base_name(ckpt_checkpoint_state_model_checkpoint_path(state)),
                     kept[count - 1]) == 0;
  for (size_t i = 0; same && i < count; i++)
    same = strcmp(base_name(ckpt_checkpoint_state_path(state, i)), kept[i]) == 0;
  if (!same) {
    char *text = read_text(join(dir, "checkpoint"));
    test_fail(file, line, "the state file should list [%s]:\n%s", names, text);
  }
  ckpt_checkpoint_state_free(state);

  char **expected = malloc((3 * count + 2) * sizeof *expected);
  CHECK(expected != NULL);
  size_t files = 0;
  expected[files++] = format("checkpoint");
  expected[files++] = format("checkpoint.lock");
  for (size_t i = 0; i < count; i++) {
    expected[files++] = format("%s.ckpt-manifest.json", kept[i]);
    expected[files++] = format("%s.data-00000-of-00001", kept[i]);
    expected[files++] = format("%s.index", kept[i]);
  }
  char *want = sorted_names(expected, files);
  check_listing(file, line, dir, want);
  free(want);
  free(copy);
}

/* The bytes of `<dir>/<name>` and the directory's listing, to show that a
 * refused call changed nothing on disk. */
typedef struct {
  char *listing;
  char *path;
  unsigned char *bytes;
  size_t length;
} snapshot;

static snapshot take_snapshot(const char *dir, const char *name) {
  snapshot s = {.listing = listing(dir), .path = join(dir, name)};
  s.bytes = read_bytes(s.path, &s.length);
  CHECK(s.listing != NULL && s.bytes != NULL);
  return s;
}

#define CHECK_UNCHANGED(dir, s) check_unchanged(__FILE__, __LINE__, (dir), (s))
static void check_unchanged(const char *file, int line, const char *dir, snapshot *s) {
  check_listing(file, line, dir, s->listing);
  check_file_bytes(file, line, s->path, s->bytes, s->length);
  free(s->listing);
  free(s->path);
  free(s->bytes);
}

/* ------------------------------------------------------------------------
 * 31. save_args_setters: bad inputs are refused with a clear status and
 * leave the arguments as they were; what was set lands in the manifest. */

static void save_args_setters(const char *dir) {
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "out_args", ckpt_save_args_new(NULL));
  ckpt_save_args_free(NULL);
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "args", ckpt_save_args_set_checkpoint_number(NULL, 3));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "args", ckpt_save_args_set_check_interval(NULL, false));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "args", ckpt_save_args_set_metric(NULL, "loss", 1.0));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "args", ckpt_save_args_set_metadata_json(NULL, "{}"));

  ckpt_save_args *args = new_args();
  CHECK_OK(ckpt_save_args_set_metric(args, "loss", 0.75));
  CHECK_OK(ckpt_save_args_set_metric(args, "loss", 0.25)); /* the new value replaces it */
  char *longest = repeated('m', 256), *too_long = repeated('m', 257);
  CHECK_OK(ckpt_save_args_set_metric(args, longest, 2.0));
  /* Exactly 1 MiB of JSON is accepted, and replaced by the next object. */
  char *padding = repeated('x', (1 << 20) - strlen("{\"pad\":\"\"}"));
  char *largest = format("{\"pad\":\"%s\"}", padding);
  CHECK(strlen(largest) == 1 << 20);
  CHECK_OK(ckpt_save_args_set_metadata_json(args, largest));
  CHECK_OK(ckpt_save_args_set_metadata_json(args, "{\"epoch\":3,\"tag\":\"warm\"}"));

  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "name", ckpt_save_args_set_metric(args, NULL, 9.0));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "metric name",
              ckpt_save_args_set_metric(args, "", 9.0));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "metric name",
              ckpt_save_args_set_metric(args, too_long, 9.0));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "not UTF-8",
              ckpt_save_args_set_metric(args, "lo\xffss", 9.0));

  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "json", ckpt_save_args_set_metadata_json(args, NULL));
  const char *not_json[] = {"", "{", "{\"epoch\":4", "{\"epoch\":4} trailing", "{epoch:4}",
                            "{\"epoch\":NaN}"};
  for (size_t i = 0; i < sizeof not_json / sizeof not_json[0]; i++)
    CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "not valid JSON",
                ckpt_save_args_set_metadata_json(args, not_json[i]));
  const char *not_objects[] = {"[1,2]", "[{\"epoch\":4}]", "42", "\"text\"", "null", "true"};
  for (size_t i = 0; i < sizeof not_objects / sizeof not_objects[0]; i++)
    CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "JSON object",
                ckpt_save_args_set_metadata_json(args, not_objects[i]));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "not UTF-8",
              ckpt_save_args_set_metadata_json(args, "{\"tag\":\"\xff\"}"));
  char *too_large = format("{\"pad\":\"%sx\"}", padding);
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "at most 1048576",
              ckpt_save_args_set_metadata_json(args, too_large));

  /* The save records what was set before the failures, and only that. */
  fake_world world = {.now = 100.0, .value = 1.5};
  ckpt_options *options = world_options(&world, dir, 2);
  ckpt_manager *manager = open_manager(options);
  save_with_expecting(manager, args, "ckpt-1");
  save_with_expecting(manager, args, "ckpt-2"); /* one handle serves many saves */
  char *expected = format(
      "{\"prefix\":\"%s/ckpt-1\",\"number\":1,\"step\":null,\"timestamp\":100.0,"
      "\"metrics\":{\"loss\":0.25,\"%s\":2.0},\"metadata\":{\"epoch\":3,\"tag\":\"warm\"},"
      "\"pinned\":false,\"managed\":true,\"latest\":false,\"has_manifest\":true,"
      "\"files\":[{\"suffix\":\".data-00000-of-00001\",\"size\":3},"
      "{\"suffix\":\".index\",\"size\":1}],\"total_size\":4}",
      dir, longest);
  CHECK_INFO(manager, dir, "ckpt-1", expected);
  CHECK_MANIFEST(dir, "ckpt-1", true, "\"loss\": 0.25");
  CHECK_MANIFEST(dir, "ckpt-1", true, "\"epoch\": 3");
  CHECK_MANIFEST(dir, "ckpt-1", true, "\"tag\": \"warm\"");
  CHECK_MANIFEST(dir, "ckpt-1", false, "\"pad\"");
  CHECK_MANIFEST(dir, "ckpt-1", false, "\"pinned\"");
  CHECK_KEPT(manager, dir, "ckpt-1 ckpt-2");
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  ckpt_save_args_free(args);
  free(expected);
  free(too_large);
  free(largest);
  free(padding);
  free(longest);
  free(too_long);
}

/* ------------------------------------------------------------------------
 * 32. save_with_records: metrics (NaN and infinities too), metadata and
 * the step land in the manifest and in checkpoint_info, and survive a
 * restart; a plain save records none. */

static void save_with_records(const char *dir) {
  fake_world world = {.now = 1000.5, .step = 42, .value = 1.5};
  ckpt_options *options = world_options(&world, dir, 3);
  CHECK_OK(ckpt_options_set_step_counter_callback(options, fake_step, &world, NULL));
  ckpt_manager *manager = open_manager(options);
  ckpt_save_args *args = new_args();
  CHECK_OK(ckpt_save_args_set_metric(args, "loss", 0.125));
  CHECK_OK(ckpt_save_args_set_metric(args, "nan", NAN));
  CHECK_OK(ckpt_save_args_set_metric(args, "up", INFINITY));
  CHECK_OK(ckpt_save_args_set_metric(args, "down", -INFINITY));
  CHECK_OK(ckpt_save_args_set_metric(args, "delta", -3.5));
  CHECK_OK(ckpt_save_args_set_metadata_json(
      args, "{\"config\":{\"layers\":[64,32],\"lr\":0.001},\"run\":\"caf\\u00e9\"}"));
  save_with_expecting(manager, args, "ckpt-1");
  ckpt_save_args_free(args);

  const char *first_info =
      "{\"prefix\":\"%s/ckpt-1\",\"number\":1,\"step\":42,\"timestamp\":1000.5,"
      "\"metrics\":{\"delta\":-3.5,\"down\":\"-Infinity\",\"loss\":0.125,\"nan\":\"NaN\","
      "\"up\":\"Infinity\"},"
      "\"metadata\":{\"config\":{\"layers\":[64,32],\"lr\":0.001},\"run\":\"caf\xc3\xa9\"},"
      "\"pinned\":false,\"managed\":true,\"latest\":%s,\"has_manifest\":true,"
      "\"files\":[{\"suffix\":\".data-00000-of-00001\",\"size\":3},"
      "{\"suffix\":\".index\",\"size\":1}],\"total_size\":4}";
  char *expected = format(first_info, dir, "true");
  CHECK_INFO(manager, dir, "ckpt-1", expected);
  free(expected);
  CHECK_MANIFEST(dir, "ckpt-1", true, "\"step\": 42");
  CHECK_MANIFEST(dir, "ckpt-1", true, "\"loss\": 0.125");
  CHECK_MANIFEST(dir, "ckpt-1", true, "\"nan\": \"NaN\"");
  CHECK_MANIFEST(dir, "ckpt-1", true, "\"up\": \"Infinity\"");
  CHECK_MANIFEST(dir, "ckpt-1", true, "\"down\": \"-Infinity\"");
  CHECK_MANIFEST(dir, "ckpt-1", true, "\"lr\": 0.001");
  CHECK_MANIFEST(dir, "ckpt-1", true, "\"run\": \"caf\xc3\xa9\"");
  char *first = join(dir, "ckpt-1");
  CHECK_OK(ckpt_verify_checkpoint(first, true));

  /* A plain save records the step only. */
  world.now = 1001.0;
  world.step = 43;
  save_expecting(manager, "ckpt-2");
  expected = format(
      "{\"prefix\":\"%s/ckpt-2\",\"number\":2,\"step\":43,\"timestamp\":1001.0,"
      "\"metrics\":{},\"metadata\":null,\"pinned\":false,\"managed\":true,\"latest\":true,"
      "\"has_manifest\":true,\"files\":[{\"suffix\":\".data-00000-of-00001\",\"size\":3},"
      "{\"suffix\":\".index\",\"size\":1}],\"total_size\":4}",
      dir);
  CHECK_INFO(manager, dir, "ckpt-2", expected);
  CHECK_MANIFEST(dir, "ckpt-2", false, "\"metrics\"");
  CHECK_MANIFEST(dir, "ckpt-2", false, "\"metadata\"");
  ckpt_manager_free(manager);

  /* A new manager reads them back from the manifests. */
  world.now = 2000.0;
  manager = open_manager(options);
  CHECK_INFO(manager, dir, "ckpt-2", expected);
  free(expected);
  expected = format(first_info, dir, "false");
  CHECK_INFO(manager, dir, "ckpt-1", expected);
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  free(expected);
  free(first);
}

/* ------------------------------------------------------------------------
 * 33. save_with_numbers_and_intervals: NULL arguments, an explicit number,
 * and check_interval false against the step interval. */

static void save_with_numbers_and_intervals(const char *dir) {
  fake_world world = {.now = 100.0, .step = 0};
  ckpt_options *options = world_options(&world, dir, 3);
  CHECK_OK(ckpt_options_set_step_counter_callback(options, fake_step, &world, NULL));
  CHECK_OK(ckpt_options_set_checkpoint_interval(options, 10));
  ckpt_manager *manager = open_manager(options);
  ckpt_save_args *args = new_args();
  char *prefix = SENTINEL_STRING;
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager", ckpt_manager_save_with(NULL, args, &prefix));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "args", ckpt_manager_save_with(manager, NULL, &prefix));
  CHECK(prefix == NULL);
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "out_prefix",
              ckpt_manager_save_with(manager, args, NULL));
  CHECK(world.saves == 0);
  CHECK_LISTING(dir, "checkpoint.lock");

  save_with_expecting(manager, args, "ckpt-1"); /* the first save always goes ahead */
  world.step = 5;
  save_with_expecting(manager, args, NULL); /* within the step interval */
  CHECK(!should_save(manager));
  CHECK(world.saves == 1);
  CHECK_KEPT(manager, dir, "ckpt-1");

  CHECK_OK(ckpt_save_args_set_check_interval(args, false));
  save_with_expecting(manager, args, "ckpt-2");
  save_with_expecting(manager, args, NULL); /* never twice at the same step */
  CHECK(world.saves == 2);

  world.step = 6;
  CHECK_OK(ckpt_save_args_set_checkpoint_number(args, 70));
  save_with_expecting(manager, args, "ckpt-70");
  CHECK_FILE_TEXT(dir, "ckpt-70.index", "70"); /* the save callback got the number */
  char *expected = format(
      "{\"prefix\":\"%s/ckpt-70\",\"number\":70,\"step\":6,\"timestamp\":100.0,"
      "\"metrics\":{},\"metadata\":null,\"pinned\":false,\"managed\":true,\"latest\":true,"
      "\"has_manifest\":true,\"files\":[{\"suffix\":\".data-00000-of-00001\",\"size\":1},"
      "{\"suffix\":\".index\",\"size\":2}],\"total_size\":3}",
      dir);
  CHECK_INFO(manager, dir, "ckpt-70", expected);
  free(expected);
  CHECK_KEPT(manager, dir, "ckpt-1 ckpt-2 ckpt-70");

  /* Checking the interval again: step 15 is within 10 of step 6. */
  CHECK_OK(ckpt_save_args_set_check_interval(args, true));
  world.step = 15;
  save_with_expecting(manager, args, NULL);
  world.step = 16;
  save_with_expecting(manager, args, "ckpt-70"); /* saved again, as number 70 */
  CHECK_KEPT(manager, dir, "ckpt-1 ckpt-2 ckpt-70");
  CHECK(world.saves == 4);
  ckpt_save_args_free(args);
  ckpt_manager_free(manager);
  ckpt_options_free(options);
}

/* ------------------------------------------------------------------------
 * 34. keep_options_invalid: bad keep_best, keep_period and
 * save_interval_seconds values are refused and the options keep what was
 * set before, as the manager built from them shows. */

static void keep_options_invalid(const char *dir) {
  fake_world world = {.now = 1000.0};
  ckpt_options *options = world_options(&world, dir, 1);
  CHECK_OK(ckpt_options_set_keep_best(options, "loss", CKPT_METRIC_MIN, 1));
  CHECK_OK(ckpt_options_set_save_interval_seconds(options, 100.0));

  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "options",
              ckpt_options_set_keep_best(NULL, "loss", CKPT_METRIC_MIN, 1));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "metric_name",
              ckpt_options_set_keep_best(options, NULL, CKPT_METRIC_MAX, 2));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "options", ckpt_options_set_keep_period(NULL, 3));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "options",
              ckpt_options_set_save_interval_seconds(NULL, 5.0));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "k >= 1",
              ckpt_options_set_keep_best(options, "acc", CKPT_METRIC_MAX, 0));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "mode 7",
              ckpt_options_set_keep_best(options, "acc", 7, 2));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "metric name",
              ckpt_options_set_keep_best(options, "", CKPT_METRIC_MAX, 2));
  char *too_long = repeated('a', 257);
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "metric name",
              ckpt_options_set_keep_best(options, too_long, CKPT_METRIC_MAX, 2));
  free(too_long);
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "not UTF-8",
              ckpt_options_set_keep_best(options, "a\xff", CKPT_METRIC_MAX, 2));
  const double bad_seconds[] = {NAN, INFINITY, -INFINITY, -1.0, -1e-9};
  for (size_t i = 0; i < sizeof bad_seconds / sizeof bad_seconds[0]; i++)
    CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "save_interval_seconds",
                ckpt_options_set_save_interval_seconds(options, bad_seconds[i]));

  /* Still 100 s between saves, and the best 1 by the smallest "loss". */
  ckpt_manager *manager = open_manager(options);
  save_metric_expecting(manager, "loss", 2.0, "ckpt-1");
  world.now = 1050.0;
  CHECK(!should_save(manager));
  save_metric_expecting(manager, "loss", 1.0, NULL);
  world.now = 1100.0;
  save_metric_expecting(manager, "loss", 3.0, "ckpt-2");
  CHECK_KEPT(manager, dir, "ckpt-1 ckpt-2");
  world.now = 1200.0;
  save_metric_expecting(manager, "acc", 9.0, "ckpt-3");
  CHECK_KEPT(manager, dir, "ckpt-1 ckpt-3");
  check_best(manager, dir, "ckpt-1");
  ckpt_manager_free(manager);
  ckpt_options_free(options);
}

/* ------------------------------------------------------------------------
 * 35. keep_best_retention: max_to_keep 1 with the best 2 by the smallest
 * loss: NaN and saves without the loss never rank, ties keep the newer,
 * and the ranking survives a restart. */

static void keep_best_retention(const char *dir) {
  fake_world world = {.now = 100.0};
  ckpt_options *options = world_options(&world, dir, 1);
  CHECK_OK(ckpt_options_set_keep_best(options, "loss", CKPT_METRIC_MIN, 2));
  ckpt_manager *manager = open_manager(options);
  check_best(manager, dir, NULL);
  struct {
    bool has_loss; /* false: the save records "acc" only */
    double loss;
    const char *kept;
    const char *best;
  } saves[] = {
      {true, 0.9, "ckpt-1", "ckpt-1"},
      {true, 0.5, "ckpt-1 ckpt-2", "ckpt-2"},
      {true, NAN, "ckpt-1 ckpt-2 ckpt-3", "ckpt-2"},
      {false, 0.0, "ckpt-1 ckpt-2 ckpt-4", "ckpt-2"},
      {true, 0.7, "ckpt-2 ckpt-5", "ckpt-2"},
      {true, 0.5, "ckpt-2 ckpt-6", "ckpt-6"}, /* ties with ckpt-2: the newer ranks higher */
      {true, 0.5, "ckpt-6 ckpt-7", "ckpt-7"},
      {true, 0.1, "ckpt-7 ckpt-8", "ckpt-8"},
  };
  for (size_t i = 0; i < sizeof saves / sizeof saves[0]; i++) {
    world.now += 1.0;
    char *name = format("ckpt-%zu", i + 1);
    ckpt_save_args *args = new_args();
    CHECK_OK(ckpt_save_args_set_metric(args, "acc", 0.5));
    if (saves[i].has_loss) CHECK_OK(ckpt_save_args_set_metric(args, "loss", saves[i].loss));
    save_with_expecting(manager, args, name);
    ckpt_save_args_free(args);
    fprintf(stderr, "after %s\n", name);
    CHECK_KEPT(manager, dir, saves[i].kept);
    check_best(manager, dir, saves[i].best);
    free(name);
  }
  CHECK_STATE_FILE(dir,
                   "model_checkpoint_path: \"ckpt-8\"\n"
                   "all_model_checkpoint_paths: \"ckpt-7\"\n"
                   "all_model_checkpoint_paths: \"ckpt-8\"\n"
                   "all_model_checkpoint_timestamps: 107.0\n"
                   "all_model_checkpoint_timestamps: 108.0\n"
                   "last_preserved_timestamp: 99.0\n");
  ckpt_manager_free(manager);

  /* A new manager ranks by the losses in the manifests: ckpt-7's 0.5
   * still beats a later 5.0. */
  world.now = 200.0;
  manager = open_manager(options);
  CHECK_KEPT(manager, dir, "ckpt-7 ckpt-8");
  check_best(manager, dir, "ckpt-8");
  save_metric_expecting(manager, "loss", 5.0, "ckpt-9");
  CHECK_KEPT(manager, dir, "ckpt-7 ckpt-8 ckpt-9");
  check_best(manager, dir, "ckpt-8");
  world.now = 201.0;
  save_metric_expecting(manager, "loss", 0.1, "ckpt-10");
  CHECK_KEPT(manager, dir, "ckpt-8 ckpt-10");
  check_best(manager, dir, "ckpt-10");
  ckpt_manager_free(manager);
  ckpt_options_free(options);
}

/* ------------------------------------------------------------------------
 * 36. best_checkpoint: NULL until a managed checkpoint records the metric
 * as a number; refused without a keep_best metric; the same after a
 * restart; CKPT_METRIC_MAX prefers larger values. */

static void best_checkpoint(const char *dir) {
  fake_world world = {.now = 100.0};
  char *plain_dir = join(dir, "plain");
  ckpt_options *options = world_options(&world, plain_dir, 2);
  ckpt_manager *manager = open_manager(options);
  save_metric_expecting(manager, "acc", 0.5, "ckpt-1");
  char *best = SENTINEL_STRING;
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "keep_best", ckpt_manager_best(manager, &best));
  CHECK(best == NULL);
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager", ckpt_manager_best(NULL, &best));
  CHECK(best == NULL);
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "out_prefix", ckpt_manager_best(manager, NULL));
  ckpt_manager_free(manager);
  ckpt_options_free(options);

  char *best_dir = join(dir, "best");
  options = world_options(&world, best_dir, 10);
  CHECK_OK(ckpt_options_set_keep_best(options, "acc", CKPT_METRIC_MAX, 1));
  manager = open_manager(options);
  check_best(manager, best_dir, NULL);
  save_expecting(manager, "ckpt-1");
  check_best(manager, best_dir, NULL);
  save_metric_expecting(manager, "loss", 0.1, "ckpt-2");
  check_best(manager, best_dir, NULL);
  save_metric_expecting(manager, "acc", NAN, "ckpt-3");
  check_best(manager, best_dir, NULL);
  save_metric_expecting(manager, "acc", 0.25, "ckpt-4");
  check_best(manager, best_dir, "ckpt-4");
  save_metric_expecting(manager, "acc", -INFINITY, "ckpt-5");
  save_metric_expecting(manager, "acc", 0.75, "ckpt-6");
  save_metric_expecting(manager, "acc", 0.5, "ckpt-7");
  check_best(manager, best_dir, "ckpt-6");
  ckpt_manager_free(manager);
  manager = open_manager(options);
  check_best(manager, best_dir, "ckpt-6");
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  free(best_dir);
  free(plain_dir);
}

/* ------------------------------------------------------------------------
 * 37. keep_period_retention: every 3rd number is kept beyond max_to_keep,
 * also after a restart; a period of 0 turns the rule off. */

static void keep_period_retention(const char *dir) {
  fake_world world = {.now = 100.0};
  char *run = join(dir, "run");
  ckpt_options *options = world_options(&world, run, 1);
  CHECK_OK(ckpt_options_set_keep_period(options, 3));
  ckpt_manager *manager = open_manager(options);
  const char *kept[] = {"ckpt-1", "ckpt-2", "ckpt-3", "ckpt-3 ckpt-4", "ckpt-3 ckpt-5",
                        "ckpt-3 ckpt-6", "ckpt-3 ckpt-6 ckpt-7"};
  for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++) {
    world.now += 1.0;
    ckpt_string_free(save(manager));
    CHECK_KEPT(manager, run, kept[i]);
  }
  ckpt_manager_free(manager);
  world.now = 200.0;
  manager = open_manager(options);
  CHECK_KEPT(manager, run, "ckpt-3 ckpt-6 ckpt-7");
  save_expecting(manager, "ckpt-8");
  CHECK_KEPT(manager, run, "ckpt-3 ckpt-6 ckpt-8");
  save_expecting(manager, "ckpt-9");
  CHECK_KEPT(manager, run, "ckpt-3 ckpt-6 ckpt-9");
  ckpt_manager_free(manager);
  ckpt_options_free(options);

  char *off = join(dir, "off");
  options = world_options(&world, off, 1);
  CHECK_OK(ckpt_options_set_keep_period(options, 3));
  CHECK_OK(ckpt_options_set_keep_period(options, 0));
  manager = open_manager(options);
  for (int i = 0; i < 4; i++) ckpt_string_free(save(manager));
  CHECK_KEPT(manager, off, "ckpt-4");
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  free(off);
  free(run);
}

/* ------------------------------------------------------------------------
 * 38. pins: a pinned checkpoint outlives max_to_keep and a restart (the
 * manifest records it); unpinning deletes nothing until the next save. */

static void pins(const char *dir) {
  fake_world world = {.now = 100.0};
  ckpt_options *options = world_options(&world, dir, 1);
  ckpt_manager *manager = open_manager(options);
  world.now = 101.0;
  save_expecting(manager, "ckpt-1");
  char *first = join(dir, "ckpt-1");
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager", ckpt_manager_pin(NULL, first));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "prefix", ckpt_manager_pin(manager, NULL));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager", ckpt_manager_unpin(NULL, first));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "prefix", ckpt_manager_unpin(manager, NULL));
  CHECK_MANIFEST(dir, "ckpt-1", false, "\"pinned\"");

  snapshot state = take_snapshot(dir, "checkpoint");
  CHECK_OK(ckpt_manager_pin(manager, first));
  CHECK_OK(ckpt_manager_pin(manager, first)); /* pinning again changes nothing */
  CHECK_UNCHANGED(dir, &state);               /* only the manifest changed */
  CHECK_MANIFEST(dir, "ckpt-1", true, "\"pinned\": true");
  CHECK_OK(ckpt_verify_checkpoint(first, true)); /* the rewritten manifest is whole */

  for (int i = 2; i <= 3; i++) {
    world.now += 1.0;
    ckpt_string_free(save(manager));
  }
  CHECK_KEPT(manager, dir, "ckpt-1 ckpt-3");
  char *expected = format(
      "{\"prefix\":\"%s/ckpt-1\",\"number\":1,\"step\":null,\"timestamp\":101.0,"
      "\"metrics\":{},\"metadata\":null,\"pinned\":true,\"managed\":true,\"latest\":false,"
      "\"has_manifest\":true,\"files\":[{\"suffix\":\".data-00000-of-00001\",\"size\":1},"
      "{\"suffix\":\".index\",\"size\":1}],\"total_size\":2}",
      dir);
  CHECK_INFO(manager, dir, "ckpt-1", expected);
  ckpt_manager_free(manager);

  /* The pin survives a restart. */
  world.now = 200.0;
  manager = open_manager(options);
  CHECK_KEPT(manager, dir, "ckpt-1 ckpt-3");
  CHECK_INFO(manager, dir, "ckpt-1", expected);
  save_expecting(manager, "ckpt-4");
  CHECK_KEPT(manager, dir, "ckpt-1 ckpt-4");

  /* Unpinned: kept until the next save's sweep. */
  state = take_snapshot(dir, "checkpoint");
  CHECK_OK(ckpt_manager_unpin(manager, first));
  CHECK_OK(ckpt_manager_unpin(manager, first));
  CHECK_UNCHANGED(dir, &state);
  CHECK_MANIFEST(dir, "ckpt-1", false, "\"pinned\"");
  CHECK_OK(ckpt_verify_checkpoint(first, true));
  world.now = 201.0;
  save_expecting(manager, "ckpt-5");
  CHECK_KEPT(manager, dir, "ckpt-5");

  /* A pinned number saved again stays pinned. */
  char *fifth = join(dir, "ckpt-5");
  CHECK_OK(ckpt_manager_pin(manager, fifth));
  world.now = 202.0;
  ckpt_string_free(save_numbered(manager, 5));
  CHECK_MANIFEST(dir, "ckpt-5", true, "\"pinned\": true");
  world.now = 203.0;
  save_expecting(manager, "ckpt-7"); /* the re-save counted as the 6th */
  CHECK_KEPT(manager, dir, "ckpt-5 ckpt-7");
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  free(fifth);
  free(expected);
  free(first);
}

/* ------------------------------------------------------------------------
 * 39. pin_unmanaged: a prefix that is not on the managed list (made up,
 * preserved by keep_checkpoint_every_n_hours, in another directory) cannot
 * be pinned, and nothing changes on disk; checkpoint_info knows preserved
 * checkpoints but not made-up ones. */

static void pin_unmanaged(const char *dir) {
  fake_world world = {.now = 100.0};
  char *run = join(dir, "run"), *other = join(dir, "other");
  ckpt_options *options = world_options(&world, other, 1);
  ckpt_manager *manager = open_manager(options);
  ckpt_string_free(save_numbered(manager, 2));
  ckpt_manager_free(manager);
  ckpt_options_free(options);

  options = world_options(&world, run, 1);
  CHECK_OK(ckpt_options_set_keep_checkpoint_every_n_hours(options, 1.0));
  manager = open_manager(options);
  world.now = 10000.0;
  save_expecting(manager, "ckpt-1");
  world.now = 10001.0;
  save_expecting(manager, "ckpt-2"); /* ckpt-1 is preserved: left on disk, off the list */
  CHECK_LISTING(run, STATE_AND_LOCK " " TF3(1) " " TF3(2));
  CHECK_CHECKPOINTS(manager, "ckpt-2");

  char *preserved = join(run, "ckpt-1"), *made_up = join(run, "ckpt-77");
  char *elsewhere = join(other, "ckpt-2");
  const char *unmanaged[] = {preserved, made_up, elsewhere};
  for (size_t i = 0; i < sizeof unmanaged / sizeof unmanaged[0]; i++) {
    snapshot state = take_snapshot(run, "checkpoint");
    snapshot manifest = take_snapshot(run, "ckpt-1.ckpt-manifest.json");
    snapshot other_manifest = take_snapshot(other, "ckpt-2.ckpt-manifest.json");
    CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "not a checkpoint this manager manages",
                ckpt_manager_pin(manager, unmanaged[i]));
    CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "not a checkpoint this manager manages",
                ckpt_manager_unpin(manager, unmanaged[i]));
    CHECK_UNCHANGED(run, &state);
    CHECK_UNCHANGED(run, &manifest);
    CHECK_UNCHANGED(other, &other_manifest);
  }
  CHECK_MANIFEST(run, "ckpt-1", false, "\"pinned\"");

  char *expected = format(
      "{\"prefix\":\"%s/ckpt-1\",\"number\":1,\"step\":null,\"timestamp\":10000.0,"
      "\"metrics\":{},\"metadata\":null,\"pinned\":false,\"managed\":false,\"latest\":false,"
      "\"has_manifest\":true,\"files\":[{\"suffix\":\".data-00000-of-00001\",\"size\":1},"
      "{\"suffix\":\".index\",\"size\":1}],\"total_size\":2}",
      run);
  CHECK_INFO(manager, run, "ckpt-1", expected);
  free(expected);
  char *json = SENTINEL_STRING;
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "not a checkpoint",
              ckpt_manager_checkpoint_info(manager, made_up, &json));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "not a checkpoint",
              ckpt_manager_checkpoint_info(manager, elsewhere, &json));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager",
              ckpt_manager_checkpoint_info(NULL, preserved, &json));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "prefix",
              ckpt_manager_checkpoint_info(manager, NULL, &json));
  CHECK(json == NULL);
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "out_json",
              ckpt_manager_checkpoint_info(manager, preserved, NULL));
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  free(elsewhere);
  free(made_up);
  free(preserved);
  free(other);
  free(run);
}

/* ------------------------------------------------------------------------
 * 40. tf_written_checkpoint_info: a checkpoint TF wrote (no manifest) is
 * described from its files; it cannot be pinned (nowhere to record it). */

static void tf_written_checkpoint_info(const char *dir) {
  write_in(dir, "ckpt-9.index", "index nine");
  write_in(dir, "ckpt-9.data-00000-of-00001", "twelve bytes");
  write_in(dir, "checkpoint",
           "model_checkpoint_path: \"ckpt-9\"\n"
           "all_model_checkpoint_paths: \"ckpt-9\"\n"
           "all_model_checkpoint_timestamps: 500.0\n"
           "last_preserved_timestamp: 400.0\n");
  fake_world world = {.now = 1000.0};
  ckpt_options *options = world_options(&world, dir, 2);
  ckpt_manager *manager = open_manager(options);
  CHECK_CHECKPOINTS(manager, "ckpt-9");
  const char *info =
      "{\"prefix\":\"%s/ckpt-9\",\"number\":9,\"step\":null,\"timestamp\":500.0,"
      "\"metrics\":{},\"metadata\":null,\"pinned\":false,\"managed\":true,\"latest\":%s,"
      "\"has_manifest\":false,\"files\":[{\"suffix\":\".data-00000-of-00001\",\"size\":12},"
      "{\"suffix\":\".index\",\"size\":10}],\"total_size\":22}";
  char *expected = format(info, dir, "true");
  CHECK_INFO(manager, dir, "ckpt-9", expected);
  free(expected);

  char *ninth = join(dir, "ckpt-9");
  snapshot state = take_snapshot(dir, "checkpoint");
  CHECK_FAILS(CKPT_STATUS_NO_MANIFEST, "ckpt-9", ckpt_manager_pin(manager, ninth));
  CHECK_FAILS(CKPT_STATUS_NO_MANIFEST, "ckpt-9", ckpt_manager_unpin(manager, ninth));
  CHECK_UNCHANGED(dir, &state);
  CHECK_LISTING(dir, STATE_AND_LOCK " ckpt-9.data-00000-of-00001 ckpt-9.index");

  save_expecting(manager, "ckpt-10");
  expected = format(info, dir, "false");
  CHECK_INFO(manager, dir, "ckpt-9", expected);
  char *json = SENTINEL_STRING;
  char *missing = join(dir, "ckpt-8");
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "not a checkpoint",
              ckpt_manager_checkpoint_info(manager, missing, &json));
  CHECK(json == NULL);
  ckpt_manager_free(manager);

  /* A read-only manager describes it too. */
  CHECK_OK(ckpt_options_set_read_only(options, true));
  manager = open_manager(options);
  CHECK_INFO(manager, dir, "ckpt-9", expected);
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  free(missing);
  free(expected);
  free(ninth);
}

/* ------------------------------------------------------------------------
 * 41. should_save_and_request: the clock gate by a fake clock, a request
 * that lets one save through within the interval, the last save's time
 * recovered on open, and the step and clock gates together. */

static void should_save_and_request(const char *dir) {
  fake_world world = {.now = 1000.0};
  char *timed = join(dir, "timed");
  ckpt_options *options = world_options(&world, timed, 10);
  CHECK_OK(ckpt_options_set_save_interval_seconds(options, 100.0));
  ckpt_manager *manager = open_manager(options);
  bool answer = true;
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager", ckpt_manager_should_save(NULL, &answer));
  CHECK(answer == false);
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "out_should_save",
              ckpt_manager_should_save(manager, NULL));
  reset_message();
  CHECK_STATUS(CKPT_STATUS_NULL_ARGUMENT, ckpt_manager_request_save(NULL));
  CHECK_STR(reset_text, ckpt_last_error_message()); /* it sets no message */

  CHECK(should_save(manager)); /* no save yet */
  save_expecting(manager, "ckpt-1");
  world.now = 1050.0;
  CHECK(!should_save(manager));
  char *prefix = SENTINEL_STRING;
  CHECK_OK(ckpt_manager_save(manager, NULL, true, &prefix));
  CHECK(prefix == NULL && world.saves == 1);

  /* A request lets the next save through, once. */
  CHECK_OK(ckpt_manager_request_save(manager));
  CHECK(should_save(manager));
  save_expecting(manager, "ckpt-2");
  CHECK(!should_save(manager));
  prefix = SENTINEL_STRING;
  CHECK_OK(ckpt_manager_save(manager, NULL, true, &prefix));
  CHECK(prefix == NULL && world.saves == 2);

  world.now = 1149.0; /* 99 s after ckpt-2 */
  CHECK(!should_save(manager));
  world.now = 1150.0;
  CHECK(should_save(manager));
  save_expecting(manager, "ckpt-3");
  world.now = 1100.0; /* the clock went back before the last save */
  CHECK(should_save(manager));
  ckpt_manager_free(manager);

  /* A new manager takes the last save's time from the state file. */
  world.now = 1200.0;
  manager = open_manager(options);
  CHECK(!should_save(manager));
  /* A request stands until a save goes through. */
  CHECK_OK(ckpt_manager_request_save(manager));
  world.fail_save = 5;
  CHECK_FAILS(CKPT_STATUS_CALLBACK_FAILED, "5",
              ckpt_manager_save(manager, NULL, true, &prefix));
  world.fail_save = 0;
  CHECK(should_save(manager));
  save_expecting(manager, "ckpt-4");
  CHECK(!should_save(manager));
  world.now = 1300.0;
  CHECK(should_save(manager));
  CHECK_KEPT(manager, timed, "ckpt-1 ckpt-2 ckpt-3 ckpt-4");
  ckpt_manager_free(manager);
  ckpt_options_free(options);

  /* With a step interval too, both gates must be open. */
  char *stepped = join(dir, "stepped");
  world.now = 1000.0;
  world.step = 0;
  options = world_options(&world, stepped, 10);
  CHECK_OK(ckpt_options_set_save_interval_seconds(options, 100.0));
  CHECK_OK(ckpt_options_set_step_counter_callback(options, fake_step, &world, NULL));
  CHECK_OK(ckpt_options_set_checkpoint_interval(options, 10));
  manager = open_manager(options);
  save_expecting(manager, "ckpt-1");
  world.step = 10;
  world.now = 1050.0;
  CHECK(!should_save(manager)); /* the steps have passed, the time has not */
  world.step = 5;
  world.now = 1100.0;
  CHECK(!should_save(manager)); /* the time has passed, the steps have not */
  world.step = 10;
  CHECK(should_save(manager));
  world.now = 1101.0;
  world.step = 11;
  CHECK_OK(ckpt_manager_request_save(manager));
  CHECK(should_save(manager));
  save_expecting(manager, "ckpt-2");
  CHECK(!should_save(manager));
  CHECK_KEPT(manager, stepped, "ckpt-1 ckpt-2");
  ckpt_manager_free(manager);

  /* A read-only manager neither answers nor pins. */
  CHECK_OK(ckpt_options_set_read_only(options, true));
  manager = open_manager(options);
  answer = true;
  CHECK_FAILS(CKPT_STATUS_READ_ONLY, "read-only", ckpt_manager_should_save(manager, &answer));
  CHECK(answer == false);
  char *second = join(stepped, "ckpt-2");
  snapshot manifest = take_snapshot(stepped, "ckpt-2.ckpt-manifest.json");
  CHECK_FAILS(CKPT_STATUS_READ_ONLY, "read-only", ckpt_manager_pin(manager, second));
  CHECK_FAILS(CKPT_STATUS_READ_ONLY, "read-only", ckpt_manager_unpin(manager, second));
  CHECK_UNCHANGED(stepped, &manifest);
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  free(second);
  free(stepped);
  free(timed);
}

/* ------------------------------------------------------------------------
 * 42. preemption_bad_signals: signals that cannot be a preemption signal
 * are refused and no handler is installed. */

static void preemption_bad_signals(const char *dir) {
  (void)dir;
  const int32_t bad[] = {0,       -1,      9999,    65,      INT32_MIN, SIGKILL, SIGSTOP,
                         SIGSEGV, SIGBUS,  SIGFPE,  SIGILL,  SIGTRAP,   SIGSYS,  SIGABRT};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "cannot be a preemption signal",
                ckpt_install_preemption_handler(bad[i]));
  const int untouched[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGABRT};
  for (size_t i = 0; i < sizeof untouched / sizeof untouched[0]; i++) {
    struct sigaction current;
    CHECK(sigaction(untouched[i], NULL, &current) == 0);
    CHECK(current.sa_handler == SIG_DFL);
  }
  CHECK(!ckpt_preemption_requested());
}

/* ------------------------------------------------------------------------
 * 43. preemption_handler: each scenario runs in a child process, since
 * the preemption signal count is process-global and never resets. */

/* Runs `scenario` in a forked child and fails unless the child exits 0
 * (a failed check in the child exits 1; valgrind's errors exit 99). */
static void in_child(const char *what, void (*scenario)(const char *dir), const char *dir) {
  fflush(NULL);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    scenario(dir);
    fflush(NULL);
    _exit(0);
  }
  int status = 0;
  CHECK(waitpid(pid, &status, 0) == pid);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    test_fail(__FILE__, __LINE__, "%s: the child %s %d", what,
              WIFSIGNALED(status) ? "was killed by signal" : "exited with",
              WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
}

static volatile sig_atomic_t chained_calls, chained_signum;

static void plain_handler(int signum) {
  chained_calls++;
  chained_signum = signum;
}

static void info_handler(int signum, siginfo_t *info, void *context) {
  (void)context;
  chained_calls++;
  chained_signum = info != NULL && info->si_signo == signum ? signum : -1;
}

static void set_handler(int signum, void (*plain)(int), void (*with_info)(int, siginfo_t *, void *)) {
  struct sigaction action;
  memset(&action, 0, sizeof action);
  CHECK(sigemptyset(&action.sa_mask) == 0);
  if (with_info != NULL) {
    action.sa_sigaction = with_info;
    action.sa_flags = SA_SIGINFO;
  } else {
    action.sa_handler = plain;
  }
  CHECK(sigaction(signum, &action, NULL) == 0);
}

/* A manager on <dir>/<name> saving at most every 100 s by world's clock. */
static ckpt_manager *timed_manager(fake_world *world, const char *dir, const char *name) {
  char *path = join(dir, name);
  ckpt_options *options = world_options(world, path, 10);
  CHECK_OK(ckpt_options_set_save_interval_seconds(options, 100.0));
  ckpt_manager *manager = open_manager(options);
  ckpt_options_free(options);
  free(path);
  return manager;
}

/* The handler chains to a plain handler installed before; each signal
 * lets every manager's next save through once, also a manager opened
 * after the signal. */
static void preempted_saves(const char *dir) {
  set_handler(SIGUSR1, plain_handler, NULL);
  fake_world world = {.now = 1000.0};
  ckpt_manager *early = timed_manager(&world, dir, "early");
  save_expecting(early, "ckpt-1");
  ckpt_manager *late = timed_manager(&world, dir, "late");
  save_expecting(late, "ckpt-1");
  ckpt_manager_free(late);

  CHECK_OK(ckpt_install_preemption_handler(SIGUSR1));
  CHECK_OK(ckpt_install_preemption_handler(SIGUSR1)); /* again: nothing changes */
  CHECK(!ckpt_preemption_requested());
  world.now = 1010.0;
  CHECK(!should_save(early));

  CHECK(raise(SIGUSR1) == 0);
  CHECK(chained_calls == 1 && chained_signum == SIGUSR1);
  CHECK(ckpt_preemption_requested());
  CHECK(should_save(early));
  save_expecting(early, "ckpt-2");
  CHECK(!should_save(early));
  char *prefix = SENTINEL_STRING;
  CHECK_OK(ckpt_manager_save(early, NULL, true, &prefix));
  CHECK(prefix == NULL);
  late = timed_manager(&world, dir, "late");
  CHECK(should_save(late));
  save_expecting(late, "ckpt-2");
  CHECK(!should_save(late));

  /* A second signal: one more save each; the flag stays set. */
  CHECK(raise(SIGUSR1) == 0);
  CHECK(chained_calls == 2);
  save_expecting(early, "ckpt-3");
  save_expecting(late, "ckpt-3");
  CHECK(!should_save(early) && !should_save(late));
  CHECK(ckpt_preemption_requested());
  ckpt_manager_free(early);
  ckpt_manager_free(late);
}

/* It chains to an SA_SIGINFO handler with the signal's information. */
static void chains_siginfo_handler(const char *dir) {
  (void)dir;
  set_handler(SIGUSR2, NULL, info_handler);
  CHECK_OK(ckpt_install_preemption_handler(SIGUSR2));
  CHECK(raise(SIGUSR2) == 0);
  CHECK(chained_calls == 1 && chained_signum == SIGUSR2);
  CHECK(ckpt_preemption_requested());
}

/* SIGTERM's default action (ending the process) is replaced, and an
 * ignored SIGINT stays quiet: the trainer saves and exits by itself. */
static void default_and_ignored_actions(const char *dir) {
  (void)dir;
  CHECK(signal(SIGINT, SIG_IGN) != SIG_ERR);
  CHECK_OK(ckpt_install_preemption_handler(SIGINT));
  CHECK(raise(SIGINT) == 0);
  CHECK(ckpt_preemption_requested());
  CHECK(signal(SIGTERM, SIG_DFL) != SIG_ERR);
  CHECK_OK(ckpt_install_preemption_handler(SIGTERM));
  CHECK(raise(SIGTERM) == 0);
  CHECK(chained_calls == 0);
}

static void preemption_handler(const char *dir) {
  alarm(120);
  in_child("preempted_saves", preempted_saves, dir);
  CHECK_LISTING(dir, "early late");
  in_child("chains_siginfo_handler", chains_siginfo_handler, dir);
  in_child("default_and_ignored_actions", default_and_ignored_actions, dir);
  /* The children's signals did not reach this process. */
  CHECK(!ckpt_preemption_requested());
  struct sigaction current;
  CHECK(sigaction(SIGUSR1, NULL, &current) == 0);
  CHECK(current.sa_handler == SIG_DFL);
}

/* ------------------------------------------------------------------------
 * 44. communicator_invalid: a communicator the library cannot use is
 * refused and leaves the options as they were (one process); so are
 * coordination timeouts that are not positive and finite. A communicator
 * of one rank works: its files carry the rank. */

static int32_t no_barrier(void *user_data, double timeout_seconds) {
  (void)user_data;
  (void)timeout_seconds;
  return 0;
}

static int32_t no_broadcast(void *user_data, void *buffer, size_t length, uint32_t root,
                            double timeout_seconds) {
  (void)user_data, (void)buffer, (void)length, (void)root, (void)timeout_seconds;
  return 0;
}

static int32_t no_all_gather(void *user_data, const void *record, size_t length, void *records,
                             double timeout_seconds) {
  (void)user_data, (void)timeout_seconds;
  if (length > 0) memcpy(records, record, length);
  return 0;
}

static void communicator_invalid(const char *dir) {
  fake_world world = {.now = 100.0};
  ckpt_options *options = world_options(&world, dir, 1);
  const ckpt_communicator good = {CKPT_COMMUNICATOR_VERSION, 0, 1, NULL, no_barrier,
                                  no_broadcast, no_all_gather};
  ckpt_communicator bad = good;
  bad.version = CKPT_COMMUNICATOR_VERSION + 1;
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "version", ckpt_options_set_communicator(options, &bad));
  bad = good;
  bad.rank = 1;
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "not a rank", ckpt_options_set_communicator(options, &bad));
  bad = good;
  bad.size = 0;
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "not a rank", ckpt_options_set_communicator(options, &bad));
  bad = good;
  bad.all_gather = NULL;
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "callback", ckpt_options_set_communicator(options, &bad));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "options", ckpt_options_set_communicator(NULL, &good));
  const double timeouts[] = {0.0, -1.0, NAN, INFINITY};
  for (size_t i = 0; i < sizeof timeouts / sizeof timeouts[0]; i++)
    CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "coordination_timeout",
                ckpt_options_set_coordination_timeout(options, timeouts[i]));
  /* Unchanged: a one-process manager that saves without any collective. */
  ckpt_manager *manager = NULL;
  CHECK_OK(ckpt_manager_new(options, &manager));
  char *prefix = NULL;
  CHECK_OK(ckpt_manager_save(manager, NULL, true, &prefix));
  CHECK(prefix != NULL && strstr(prefix, ".rank-") == NULL);
  ckpt_string_free(prefix);
  ckpt_manager_free(manager);
  CHECK_OK(ckpt_options_set_communicator(options, &good));
  CHECK_OK(ckpt_manager_new(options, &manager));
  CHECK_OK(ckpt_manager_save(manager, NULL, true, &prefix));
  char *expected = join(dir, "ckpt-2");
  CHECK_STR(expected, prefix);
  ckpt_string_free(prefix);
  char *index = join(dir, "ckpt-2.rank-00000-of-00001.index");
  CHECK(access(index, F_OK) == 0);
  CHECK_OK(ckpt_manager_restore_or_initialize(manager, &prefix));
  CHECK_STR(expected, prefix);
  ckpt_string_free(prefix);
  free(index);
  free(expected);
  ckpt_manager_free(manager);
  ckpt_options_free(options);
}

int main(int argc, char **argv) {
  static const test_case cases[] = {
      {"version", version},
      {"status_names", status_names},
      {"null_arguments", null_arguments},
      {"invalid_options", invalid_options},
      {"nothing_created_at_construction", nothing_created_at_construction},
      {"save_callback_failure", save_callback_failure},
      {"step_counter_and_clock_failures", step_counter_and_clock_failures},
      {"clock_failure_during_save", clock_failure_during_save},
      {"state_write_failure", state_write_failure},
      {"state_commit_sync_failure", state_commit_sync_failure},
      {"restore_without_callback", restore_without_callback},
      {"finalizers", finalizers},
      {"reentrant_call", reentrant_call},
      {"threads", threads},
      {"glob_characters", glob_characters},
      {"deletes_only_own_files", deletes_only_own_files},
      {"delete_callback", delete_callback},
      {"never_overwrites_existing_numbers", never_overwrites_existing_numbers},
      {"corrupt_state", corrupt_state},
      {"reads_tf_written_state", reads_tf_written_state},
      {"state_file_bytes", state_file_bytes},
      {"non_utf8_paths", non_utf8_paths},
      {"latest_checkpoint_missing_files", latest_checkpoint_missing_files},
      {"remove_checkpoint", remove_checkpoint},
      {"explicit_overwrite", explicit_overwrite},
      {"lower_max_to_keep", lower_max_to_keep},
      {"directory_is_a_file", directory_is_a_file},
      {"save_file_writes", save_file_writes},
      {"free_inside_callback", free_inside_callback},
      {"shared_callbacks", shared_callbacks},
      {"save_args_setters", save_args_setters},
      {"save_with_records", save_with_records},
      {"save_with_numbers_and_intervals", save_with_numbers_and_intervals},
      {"keep_options_invalid", keep_options_invalid},
      {"keep_best_retention", keep_best_retention},
      {"best_checkpoint", best_checkpoint},
      {"keep_period_retention", keep_period_retention},
      {"pins", pins},
      {"pin_unmanaged", pin_unmanaged},
      {"tf_written_checkpoint_info", tf_written_checkpoint_info},
      {"should_save_and_request", should_save_and_request},
      {"preemption_bad_signals", preemption_bad_signals},
      {"preemption_handler", preemption_handler},
      {"communicator_invalid", communicator_invalid},
  };
  return run_test_case(cases, sizeof cases / sizeof cases[0], argc, argv);
}
