/* The C API's background saves (ckpt_manager_save_async and
 * ckpt_manager_wait_until_finished), case by case: what they return, which
 * thread runs which callback, and what ends up on disk, including when the
 * registered buffers change, a background save fails, the manager is freed
 * during a save, or several threads save at once.
 *
 * A test that needs a save to be in flight blocks its save callback at a
 * gate the test opens (no sleeps); alarm() turns a deadlock into a failure. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "test_support.h"

/* ------------------------------------------------------------------------
 * Helpers local to this program. */

/* A failing call must leave an out-parameter as it was. */
static char sentinel_text[] = "sentinel";
static int manager_marker;
#define SENTINEL_STRING sentinel_text
#define SENTINEL_MANAGER ((ckpt_manager *)(void *)&manager_marker)

enum { DEADLOCK_SECONDS = 120 };

/* Save callbacks stop here until the test opens it. */
typedef struct {
  pthread_mutex_t lock;
  pthread_cond_t changed;
  int arrived; /* save callbacks that reached the gate */
  bool open;
} gate;

static void gate_init(gate *g) {
  CHECK(pthread_mutex_init(&g->lock, NULL) == 0);
  CHECK(pthread_cond_init(&g->changed, NULL) == 0);
  g->arrived = 0;
  g->open = false;
}

static void gate_destroy(gate *g) {
  CHECK(pthread_cond_destroy(&g->changed) == 0);
  CHECK(pthread_mutex_destroy(&g->lock) == 0);
}

/* In a callback: arrives, and waits until the gate is open. */
static void gate_pass(gate *g) {
  CHECK(pthread_mutex_lock(&g->lock) == 0);
  g->arrived++;
  CHECK(pthread_cond_broadcast(&g->changed) == 0);
  while (!g->open) CHECK(pthread_cond_wait(&g->changed, &g->lock) == 0);
  CHECK(pthread_mutex_unlock(&g->lock) == 0);
}

/* In the test: waits until `count` callbacks have arrived. */
static void gate_await(gate *g, int count) {
  CHECK(pthread_mutex_lock(&g->lock) == 0);
  while (g->arrived < count) CHECK(pthread_cond_wait(&g->changed, &g->lock) == 0);
  CHECK(pthread_mutex_unlock(&g->lock) == 0);
}

static void gate_open(gate *g) {
  CHECK(pthread_mutex_lock(&g->lock) == 0);
  g->open = true;
  CHECK(pthread_cond_broadcast(&g->changed) == 0);
  CHECK(pthread_mutex_unlock(&g->lock) == 0);
}

/* The callbacks' shared state. The background thread writes the save
 * callback's fields; the test reads them after a call that waited for it. */
typedef struct {
  fake_world world; /* first: the world's callbacks get this pointer too */
  gate gate;
  bool blocking; /* save callbacks wait at the gate */
  pthread_t save_thread;
  int prepares;
  int32_t fail_prepare;
  uint64_t prepared_number;
  pthread_t prepare_thread;
} async_world;

static int32_t gated_save(void *data, const char *prefix, uint64_t number) {
  async_world *w = data;
  w->save_thread = pthread_self();
  if (w->blocking) gate_pass(&w->gate);
  return save_tf_style(&w->world, prefix, number);
}

static int32_t record_prepare(void *data, uint64_t number) {
  async_world *w = data;
  w->prepares++;
  w->prepared_number = number;
  w->prepare_thread = pthread_self();
  return w->fail_prepare;
}

/* The world's options (fake clock, TF-style files, log) with the gated
 * save callback and the recording prepare callback. */
static ckpt_options *async_options(async_world *w, const char *dir, int64_t max_to_keep) {
  gate_init(&w->gate);
  ckpt_options *options = world_options(&w->world, dir, max_to_keep);
  CHECK_OK(ckpt_options_set_save_callback(options, gated_save, w, NULL));
  CHECK_OK(ckpt_options_set_prepare_callback(options, record_prepare, w, NULL));
  return options;
}

/* save_async with default arguments; returns the prefix (caller frees). */
static char *save_async(ckpt_manager *manager) {
  char *prefix = SENTINEL_STRING;
  CHECK_OK(ckpt_manager_save_async(manager, NULL, &prefix));
  CHECK(prefix != SENTINEL_STRING);
  return prefix;
}

/* save_async that must return `<dir>/<base>`. */
static void save_async_expecting(ckpt_manager *manager, const char *dir, const char *base) {
  char *prefix = save_async(manager);
  char *expected = join(dir, base);
  CHECK_STR(expected, prefix);
  free(expected);
  ckpt_string_free(prefix);
}

static void check_latest(ckpt_manager *manager, const char *dir, const char *base) {
  char *latest = SENTINEL_STRING;
  CHECK_OK(ckpt_manager_latest(manager, &latest));
  char *expected = base == NULL ? NULL : join(dir, base);
  CHECK_STR(expected, latest);
  free(expected);
  ckpt_string_free(latest);
}

static uint64_t save_counter(ckpt_manager *manager) {
  uint64_t counter = 0;
  CHECK_OK(ckpt_manager_save_counter(manager, &counter));
  return counter;
}

/* The directory's names, sorted, joined by spaces (caller frees). */
static char *listing(const char *dir) {
  struct dirent **entries = NULL;
  int count = scandir(dir, &entries, NULL, alphasort);
  CHECK(count >= 0);
  size_t length = 1;
  for (int i = 0; i < count; i++) length += strlen(entries[i]->d_name) + 1;
  char *text = malloc(length);
  CHECK(text != NULL);
  text[0] = '\0';
  for (int i = 0; i < count; i++) {
    const char *name = entries[i]->d_name;
    if (strcmp(name, ".") != 0 && strcmp(name, "..") != 0) {
      if (text[0] != '\0') strcat(text, " ");
      strcat(text, name);
    }
    free(entries[i]);
  }
  free(entries);
  return text;
}

/* The whole file; `*length` receives its size. */
static unsigned char *read_bytes(const char *path, size_t *length) {
  FILE *file = fopen(path, "rb");
  if (file == NULL) test_fail(__FILE__, __LINE__, "cannot read %s", path);
  CHECK(fseek(file, 0, SEEK_END) == 0);
  long size = ftell(file);
  CHECK(size >= 0 && fseek(file, 0, SEEK_SET) == 0);
  unsigned char *bytes = malloc((size_t)size + 1);
  CHECK(bytes != NULL && fread(bytes, 1, (size_t)size, file) == (size_t)size);
  fclose(file);
  *length = (size_t)size;
  return bytes;
}

/* ------------------------------------------------------------------------
 * 1. save_async_with_and_without_args */

static void save_async_with_and_without_args(const char *dir) {
  alarm(DEADLOCK_SECONDS);
  async_world w = {.world.now = 100.0};
  ckpt_options *options = async_options(&w, dir, 3);
  ckpt_manager *manager = open_manager(options);

  char *prefix = SENTINEL_STRING;
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager",
              ckpt_manager_save_async(NULL, NULL, &prefix));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "out_prefix",
              ckpt_manager_save_async(manager, NULL, NULL));
  CHECK(prefix == NULL && w.prepares == 0);

  /* NULL args: the defaults, the counter's next number. */
  save_async_expecting(manager, dir, "ckpt-1");
  CHECK_OK(ckpt_manager_wait_until_finished(manager, -1));
  CHECK(w.world.saves == 1);
  CHECK(exists(dir, "ckpt-1.index") && exists(dir, "ckpt-1.data-00000-of-00001"));
  CHECK(exists(dir, "ckpt-1.ckpt-manifest.json"));
  CHECK_CHECKPOINTS(manager, "ckpt-1");
  check_latest(manager, dir, "ckpt-1");

  /* Arguments: a number and a metric. They are borrowed for the call only:
   * freed at once, while the save is still being written. */
  ckpt_save_args *args = NULL;
  CHECK_OK(ckpt_save_args_new(&args));
  CHECK_OK(ckpt_save_args_set_checkpoint_number(args, 7));
  CHECK_OK(ckpt_save_args_set_metric(args, "loss", 0.25));
  CHECK_OK(ckpt_manager_save_async(manager, args, &prefix));
  ckpt_save_args_free(args);
  char *expected = join(dir, "ckpt-7");
  CHECK_STR(expected, prefix);
  ckpt_string_free(prefix);
  CHECK_OK(ckpt_manager_wait_until_finished(manager, -1));
  CHECK(w.world.saves == 2 && w.prepares == 2 && w.prepared_number == 7);
  CHECK_CHECKPOINTS(manager, "ckpt-1", "ckpt-7");
  check_latest(manager, dir, "ckpt-7");
  char *info = NULL;
  CHECK_OK(ckpt_manager_checkpoint_info(manager, expected, &info));
  if (strstr(info, "\"metrics\":{\"loss\":0.25}") == NULL)
    test_fail(__FILE__, __LINE__, "ckpt-7's info lacks its metric: %s", info);
  ckpt_string_free(info);
  free(expected);

  ckpt_manager_free(manager);
  ckpt_options_free(options);
  gate_destroy(&w.gate);
}

/* ------------------------------------------------------------------------
 * 2. skipped_by_interval_never_waits: a save the step interval skips
 * returns a NULL prefix while the save in flight is blocked (waiting for it
 * would deadlock). */

static void skipped_by_interval_never_waits(const char *dir) {
  alarm(DEADLOCK_SECONDS);
  async_world w = {.world = {.now = 100.0, .step = 10}, .blocking = true};
  ckpt_options *options = async_options(&w, dir, 3);
  CHECK_OK(ckpt_options_set_step_counter_callback(options, fake_step, &w.world, NULL));
  CHECK_OK(ckpt_options_set_checkpoint_interval(options, 10));
  ckpt_manager *manager = open_manager(options);

  save_async_expecting(manager, dir, "ckpt-1");
  gate_await(&w.gate, 1);
  /* The save in flight counts as done at step 10 for the gate. */
  w.world.step = 15;
  char *prefix = SENTINEL_STRING;
  CHECK_OK(ckpt_manager_save_async(manager, NULL, &prefix));
  CHECK(prefix == NULL);
  bool due = true;
  CHECK_OK(ckpt_manager_should_save(manager, &due));
  CHECK(!due);
  CHECK(w.prepares == 1 && w.world.saves == 0);

  gate_open(&w.gate);
  CHECK_OK(ckpt_manager_wait_until_finished(manager, -1));
  CHECK(w.world.saves == 1);
  CHECK_CHECKPOINTS(manager, "ckpt-1");
  w.world.step = 20;
  save_async_expecting(manager, dir, "ckpt-2");
  CHECK_OK(ckpt_manager_wait_until_finished(manager, -1));
  CHECK_CHECKPOINTS(manager, "ckpt-1", "ckpt-2");

  ckpt_manager_free(manager);
  ckpt_options_free(options);
  gate_destroy(&w.gate);
}

/* ------------------------------------------------------------------------
 * 3. snapshot_at_the_call: the tensor file holds the registered buffer as
 * it was when save_async returned, though the buffer changes right after
 * and the background save writes the file only later (after its save
 * callback, held at the gate meanwhile). */

enum { VALUES = 256 };

/* `<dir>/<base>.safetensors` holds the one F32 tensor "w" of VALUES values,
 * each `expected`. */
static void check_tensor_file(const char *dir, const char *base, float expected) {
  char name[64];
  snprintf(name, sizeof name, "%s.safetensors", base);
  char *path = join(dir, name);
  size_t length = 0;
  unsigned char *bytes = read_bytes(path, &length);
  CHECK(length >= 8);
  uint64_t header_length = 0;
  for (int i = 7; i >= 0; i--) header_length = header_length << 8 | bytes[i];
  CHECK(length == 8 + header_length + VALUES * sizeof(float));
  char *header = malloc(header_length + 1);
  CHECK(header != NULL);
  memcpy(header, bytes + 8, header_length);
  header[header_length] = '\0';
  char described[128];
  snprintf(described, sizeof described,
           "\"w\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[0,%zu]}", VALUES,
           VALUES * sizeof(float));
  if (strstr(header, described) == NULL)
    test_fail(__FILE__, __LINE__, "%s: header %s does not contain %s", path, header, described);
  for (size_t i = 0; i < VALUES; i++) {
    float value;
    memcpy(&value, bytes + 8 + header_length + i * sizeof value, sizeof value);
    if (value != expected)
      test_fail(__FILE__, __LINE__, "%s: value %zu is %g, not %g", path, i, value, expected);
  }
  free(header);
  free(bytes);
  free(path);
}

static void fill(float *values, float value) {
  for (size_t i = 0; i < VALUES; i++) values[i] = value;
}

static void snapshot_at_the_call(const char *dir) {
  alarm(DEADLOCK_SECONDS);
  async_world w = {.world.now = 100.0, .blocking = true};
  ckpt_options *options = async_options(&w, dir, 3);
  ckpt_manager *manager = open_manager(options);
  static float values[VALUES];
  const uint64_t shape[] = {VALUES};
  CHECK_OK(ckpt_manager_register_tensor(manager, "w", CKPT_DTYPE_F32, shape, 1, values));

  fill(values, 1.0f);
  save_async_expecting(manager, dir, "ckpt-1");
  fill(values, 2.0f); /* right after the call */
  gate_await(&w.gate, 1);
  fill(values, 3.0f); /* while the save callback runs */
  gate_open(&w.gate);
  CHECK_OK(ckpt_manager_wait_until_finished(manager, -1));
  check_tensor_file(dir, "ckpt-1", 1.0f);

  /* The snapshot buffer is reused: the next save holds the next state, and
   * the first file is unchanged. */
  save_async_expecting(manager, dir, "ckpt-2");
  fill(values, 4.0f);
  CHECK_OK(ckpt_manager_wait_until_finished(manager, -1));
  check_tensor_file(dir, "ckpt-2", 3.0f);
  check_tensor_file(dir, "ckpt-1", 1.0f);

  /* A new manager restores what the latest snapshot held. */
  ckpt_manager_free(manager);
  manager = open_manager(options);
  CHECK_OK(ckpt_manager_register_tensor(manager, "w", CKPT_DTYPE_F32, shape, 1, values));
  char *restored = NULL;
  CHECK_OK(ckpt_manager_restore_or_initialize(manager, &restored));
  CHECK_STR("ckpt-2", base_name(restored));
  ckpt_string_free(restored);
  for (size_t i = 0; i < VALUES; i++) CHECK(values[i] == 3.0f);

  ckpt_manager_free(manager);
  ckpt_options_free(options);
  gate_destroy(&w.gate);
}

/* ------------------------------------------------------------------------
 * 4. failed_save_reported_by_save_async, _by_wait, _by_restore: a
 * background save whose callback fails never becomes the latest and
 * leaves nothing; the next call returns its status and message, once, and
 * does nothing else; the call after it succeeds. */

typedef enum { NEXT_SAVE_ASYNC, NEXT_WAIT, NEXT_RESTORE } next_call;

/* The call that follows the failed save. */
static ckpt_status call_next(ckpt_manager *manager, next_call next, char **prefix) {
  switch (next) {
    case NEXT_SAVE_ASYNC: return ckpt_manager_save_async(manager, NULL, prefix);
    case NEXT_WAIT: return ckpt_manager_wait_until_finished(manager, -1);
    default: return ckpt_manager_restore_or_initialize(manager, prefix);
  }
}

static void failed_save_reported_by(const char *dir, next_call next) {
  alarm(DEADLOCK_SECONDS);
  async_world w = {.world.now = 100.0};
  ckpt_options *options = async_options(&w, dir, 3);
  ckpt_manager *manager = open_manager(options);
  save_async_expecting(manager, dir, "ckpt-1");
  CHECK_OK(ckpt_manager_wait_until_finished(manager, -1));
  char *files_before = listing(dir);
  char *state_path = join(dir, "checkpoint");
  char *state_before = read_text(state_path);
  CHECK(state_before != NULL);

  /* save_async returns the prefix the save would have had; it fails later,
   * on the background thread. */
  w.world.fail_save = 17;
  save_async_expecting(manager, dir, "ckpt-2");
  check_latest(manager, dir, "ckpt-1"); /* whether or not it has failed yet */
  CHECK_CHECKPOINTS(manager, "ckpt-1");

  char *prefix = SENTINEL_STRING;
  CHECK_FAILS(CKPT_STATUS_CALLBACK_FAILED, "the save callback failed: ",
              call_next(manager, next, &prefix));
  check_message(__FILE__, __LINE__, "17");
  /* That call did nothing else (and cleared its out-parameter). */
  CHECK(prefix == (next == NEXT_WAIT ? SENTINEL_STRING : NULL));
  CHECK(w.world.saves == 1 && w.world.restores == 0 && w.prepares == 2);
  /* Nothing of the failed save is left, and it never became the latest. */
  char *files_after = listing(dir);
  CHECK_STR(files_before, files_after);
  char *state_after = read_text(state_path);
  CHECK_STR(state_before, state_after);
  check_latest(manager, dir, "ckpt-1");
  CHECK_CHECKPOINTS(manager, "ckpt-1");
  CHECK(save_counter(manager) == 1);

  /* Returned once: the same call now succeeds. */
  w.world.fail_save = 0;
  CHECK_OK(call_next(manager, next, &prefix));
  switch (next) {
    case NEXT_SAVE_ASYNC: {
      /* The failed save's number is free again. */
      char *expected = join(dir, "ckpt-2");
      CHECK_STR(expected, prefix);
      free(expected);
      ckpt_string_free(prefix);
      CHECK_OK(ckpt_manager_wait_until_finished(manager, -1));
      CHECK_CHECKPOINTS(manager, "ckpt-1", "ckpt-2");
      break;
    }
    case NEXT_WAIT: CHECK(prefix == SENTINEL_STRING); break; /* it has none */
    case NEXT_RESTORE:
      CHECK_STR("ckpt-1", base_name(prefix));
      ckpt_string_free(prefix);
      CHECK(w.world.restores == 1);
      break;
  }
  CHECK_OK(ckpt_manager_wait_until_finished(manager, 0));

  free(files_before);
  free(files_after);
  free(state_before);
  free(state_after);
  free(state_path);
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  gate_destroy(&w.gate);
}

static void failed_save_reported_by_save_async(const char *dir) {
  failed_save_reported_by(dir, NEXT_SAVE_ASYNC);
}

static void failed_save_reported_by_wait(const char *dir) {
  failed_save_reported_by(dir, NEXT_WAIT);
}

static void failed_save_reported_by_restore(const char *dir) {
  failed_save_reported_by(dir, NEXT_RESTORE);
}

/* ------------------------------------------------------------------------
 * 5. wait_times_out_while_a_save_runs: the checkpoint is neither the
 * latest, nor listed, nor in place until its commit. */

static void wait_times_out_while_a_save_runs(const char *dir) {
  alarm(DEADLOCK_SECONDS);
  async_world w = {.world.now = 100.0, .blocking = true};
  ckpt_options *options = async_options(&w, dir, 3);
  ckpt_manager *manager = open_manager(options);

  save_async_expecting(manager, dir, "ckpt-1");
  gate_await(&w.gate, 1);
  CHECK_FAILS(CKPT_STATUS_TIMEOUT, "still running", ckpt_manager_wait_until_finished(manager, 0));
  CHECK_FAILS(CKPT_STATUS_TIMEOUT, "still running",
              ckpt_manager_wait_until_finished(manager, 0.001));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "NaN",
              ckpt_manager_wait_until_finished(manager, NAN));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager", ckpt_manager_wait_until_finished(NULL, 0));
  check_latest(manager, dir, NULL);
  ckpt_string_list *list = NULL;
  CHECK_OK(ckpt_manager_checkpoints(manager, &list));
  CHECK(list->len == 0);
  ckpt_string_list_free(list);
  CHECK(!exists(dir, "ckpt-1.index") && !exists(dir, "checkpoint"));
  CHECK(exists(dir, "ckpt-1.ckpt-staging"));

  gate_open(&w.gate);
  CHECK_OK(ckpt_manager_wait_until_finished(manager, -1));
  check_latest(manager, dir, "ckpt-1");
  CHECK(exists(dir, "ckpt-1.index") && !exists(dir, "ckpt-1.ckpt-staging"));
  /* Nothing in flight: every timeout returns at once. */
  CHECK_OK(ckpt_manager_wait_until_finished(manager, INFINITY));
  CHECK_OK(ckpt_manager_wait_until_finished(manager, 0));
  CHECK_OK(ckpt_manager_wait_until_finished(manager, -1));

  ckpt_manager_free(manager);
  ckpt_options_free(options);
  gate_destroy(&w.gate);
}

/* ------------------------------------------------------------------------
 * 6. free_waits_for_the_save_in_flight: freeing the manager while its
 * background save is held at the gate returns once that save is committed
 * (the gate opens after the free has started or before it has), and the
 * directory stays locked until then. A failure free finds goes to the log
 * callback. */

static void *free_manager(void *manager) {
  ckpt_manager_free(manager);
  return NULL;
}

static void free_waits_for_the_save_in_flight(const char *dir) {
  alarm(DEADLOCK_SECONDS);
  async_world w = {.world = {.now = 100.0, .value = 6.5}, .blocking = true};
  ckpt_options *options = async_options(&w, dir, 3);
  ckpt_manager *manager = open_manager(options);
  save_async_expecting(manager, dir, "ckpt-1");
  gate_await(&w.gate, 1);
  ckpt_manager *other = SENTINEL_MANAGER;
  CHECK_FAILS(CKPT_STATUS_LOCKED, "another manager is writing", ckpt_manager_new(options, &other));
  CHECK(other == NULL);

  pthread_t freeing;
  CHECK(pthread_create(&freeing, NULL, free_manager, manager) == 0);
  gate_open(&w.gate);
  CHECK(pthread_join(freeing, NULL) == 0);
  CHECK(w.world.saves == 1 && w.world.warnings == 0);
  char *latest = NULL;
  CHECK_OK(ckpt_latest_checkpoint(dir, &latest));
  CHECK_STR("ckpt-1", base_name(latest));
  ckpt_string_free(latest);

  /* A writer opens: the lock was released. It restores the save. */
  w.blocking = false;
  manager = open_manager(options);
  w.world.value = 0.0;
  char *restored = NULL;
  CHECK_OK(ckpt_manager_restore_or_initialize(manager, &restored));
  CHECK_STR("ckpt-1", base_name(restored));
  ckpt_string_free(restored);
  CHECK(w.world.value == 6.5);

  /* A failing save in flight: free waits for it and logs its failure. */
  w.world.fail_save = 29;
  save_async_expecting(manager, dir, "ckpt-2");
  ckpt_manager_free(manager);
  CHECK(w.world.warnings == 1);
  if (strstr(w.world.last_warning, "failed") == NULL ||
      strstr(w.world.last_warning, "29") == NULL)
    test_fail(__FILE__, __LINE__, "logged: %s", w.world.last_warning);
  manager = open_manager(options);
  check_latest(manager, dir, "ckpt-1");
  CHECK(!exists(dir, "ckpt-2.index") && !exists(dir, "ckpt-2.ckpt-staging"));

  ckpt_manager_free(manager);
  ckpt_options_free(options);
  gate_destroy(&w.gate);
}

/* ------------------------------------------------------------------------
 * 7. save_async_from_four_threads: every call gets its own number, every
 * save is committed (the sweep deletes only committed checkpoints), and
 * the newest max_to_keep are listed. */

enum { THREADS = 4, SAVES_PER_THREAD = 8, ALL_SAVES = THREADS * SAVES_PER_THREAD };

typedef struct {
  ckpt_manager *manager;
  uint64_t numbers[SAVES_PER_THREAD];
  int failures;
} saver;

static void *save_async_many(void *arg) {
  saver *s = arg;
  for (int i = 0; i < SAVES_PER_THREAD; i++) {
    char *prefix = NULL;
    if (ckpt_manager_save_async(s->manager, NULL, &prefix) != CKPT_STATUS_OK ||
        prefix == NULL || strncmp(base_name(prefix), "ckpt-", 5) != 0) {
      s->failures++;
    } else {
      s->numbers[i] = strtoull(base_name(prefix) + 5, NULL, 10);
    }
    ckpt_string_free(prefix);
  }
  return NULL;
}

/* Deletes a swept checkpoint (on the background thread) and records it. */
static int32_t delete_and_record(void *data, const char *prefix) {
  bool *deleted = data;
  uint64_t number = strtoull(base_name(prefix) + 5, NULL, 10);
  if (number < 1 || number > ALL_SAVES || deleted[number]) return 1;
  deleted[number] = true;
  return ckpt_remove_checkpoint(prefix) == CKPT_STATUS_OK ? 0 : 2;
}

static void save_async_from_four_threads(const char *dir) {
  alarm(DEADLOCK_SECONDS);
  async_world w = {.world.now = 100.0};
  bool deleted[ALL_SAVES + 1] = {false};
  ckpt_options *options = async_options(&w, dir, 3);
  CHECK_OK(ckpt_options_set_delete_callback(options, delete_and_record, deleted, NULL));
  ckpt_manager *manager = open_manager(options);
  saver savers[THREADS];
  pthread_t threads[THREADS];
  for (int t = 0; t < THREADS; t++) {
    savers[t] = (saver){.manager = manager};
    CHECK(pthread_create(&threads[t], NULL, save_async_many, &savers[t]) == 0);
  }
  for (int t = 0; t < THREADS; t++) CHECK(pthread_join(threads[t], NULL) == 0);
  CHECK_OK(ckpt_manager_wait_until_finished(manager, -1));

  bool returned[ALL_SAVES + 1] = {false};
  for (int t = 0; t < THREADS; t++) {
    CHECK(savers[t].failures == 0);
    for (int i = 0; i < SAVES_PER_THREAD; i++) {
      uint64_t number = savers[t].numbers[i];
      CHECK(number >= 1 && number <= ALL_SAVES && !returned[number]);
      returned[number] = true;
    }
  }
  CHECK(w.world.saves == ALL_SAVES && save_counter(manager) == ALL_SAVES);
  CHECK(w.world.warnings == 0); /* every deletion succeeded */
  CHECK_CHECKPOINTS(manager, "ckpt-30", "ckpt-31", "ckpt-32");
  for (int number = 1; number <= ALL_SAVES; number++) CHECK(deleted[number] == (number < 30));

  /* Once the writer is freed (its spare staging directory with it), the
   * directory holds the three checkpoints, the state file and the lock. */
  ckpt_manager_free(manager);
  char *files = listing(dir);
  CHECK_STR("checkpoint checkpoint.lock "
            "ckpt-30.ckpt-manifest.json ckpt-30.data-00000-of-00001 ckpt-30.index "
            "ckpt-31.ckpt-manifest.json ckpt-31.data-00000-of-00001 ckpt-31.index "
            "ckpt-32.ckpt-manifest.json ckpt-32.data-00000-of-00001 ckpt-32.index",
            files);
  free(files);
  ckpt_options_free(options);
  gate_destroy(&w.gate);
}

/* ------------------------------------------------------------------------
 * 8. background_callbacks_cannot_call_managers: a background save's
 * callback gets CKPT_STATUS_REENTRANT_CALL from its own manager and from
 * any other, and cannot free either; module functions still work. When it then fails, the save
 * fails cleanly; when it succeeds, the save commits. */

typedef struct {
  async_world *w;
  ckpt_manager *self;
  ckpt_manager *other;
  const char *dir;
  int32_t result;
  int calls;
  int refused; /* manager calls refused with CKPT_STATUS_REENTRANT_CALL */
  ckpt_status module_call;
  bool cleared;
  bool frees_refused; /* ckpt_manager_free of either manager refused */
} reentry;

static void count_refusal(reentry *r, ckpt_status status) {
  if (status == CKPT_STATUS_REENTRANT_CALL) r->refused++;
}

static int32_t reentering_save(void *data, const char *prefix, uint64_t number) {
  reentry *r = data;
  r->calls++;
  r->refused = 0;
  char *string = SENTINEL_STRING;
  count_refusal(r, ckpt_manager_latest(r->self, &string));
  count_refusal(r, ckpt_manager_save(r->self, NULL, false, &string));
  count_refusal(r, ckpt_manager_save_async(r->self, NULL, &string));
  count_refusal(r, ckpt_manager_wait_until_finished(r->self, 0));
  count_refusal(r, ckpt_manager_restore_or_initialize(r->self, &string));
  count_refusal(r, ckpt_manager_latest(r->other, &string));
  count_refusal(r, ckpt_manager_save_async(r->other, NULL, &string));
  r->cleared = string == NULL;
  ckpt_manager_free(r->self);
  r->frees_refused = strstr(ckpt_last_error_message(), "background save") != NULL;
  ckpt_manager_free(r->other);
  r->frees_refused = r->frees_refused && strstr(ckpt_last_error_message(), "background save");
  r->module_call = ckpt_latest_checkpoint(r->dir, &string);
  if (r->module_call == CKPT_STATUS_OK) ckpt_string_free(string);
  if (r->result != 0) return r->result;
  return save_tf_style(&r->w->world, prefix, number);
}

static void background_callbacks_cannot_call_managers(const char *dir) {
  alarm(DEADLOCK_SECONDS);
  async_world w = {.world.now = 100.0};
  char *run_dir = join(dir, "run"), *other_dir = join(dir, "other");
  ckpt_options *other_options = async_options(&w, other_dir, 3);
  reentry r = {.w = &w, .other = open_manager(other_options), .dir = run_dir, .result = 23};
  ckpt_options *options = world_options(&w.world, run_dir, 3);
  CHECK_OK(ckpt_options_set_save_callback(options, reentering_save, &r, NULL));
  r.self = open_manager(options);

  save_async_expecting(r.self, run_dir, "ckpt-1");
  CHECK_FAILS(CKPT_STATUS_CALLBACK_FAILED, "23", ckpt_manager_wait_until_finished(r.self, -1));
  CHECK(r.calls == 1 && r.refused == 7 && r.cleared && r.module_call == CKPT_STATUS_OK);
  CHECK(r.frees_refused);
  check_latest(r.self, run_dir, NULL);
  char *files = listing(run_dir);
  CHECK_STR("checkpoint.lock", files);
  free(files);

  r.result = 0;
  save_async_expecting(r.self, run_dir, "ckpt-1");
  CHECK_OK(ckpt_manager_wait_until_finished(r.self, -1));
  CHECK(r.calls == 2 && r.refused == 7 && r.cleared && r.module_call == CKPT_STATUS_OK);
  CHECK(w.world.saves == 1);
  check_latest(r.self, run_dir, "ckpt-1");
  /* The other manager was never touched. */
  check_latest(r.other, other_dir, NULL);

  ckpt_manager_free(r.self);
  ckpt_options_free(options);
  ckpt_manager_free(r.other);
  ckpt_options_free(other_options);
  gate_destroy(&w.gate);
  free(run_dir);
  free(other_dir);
}

/* ------------------------------------------------------------------------
 * 9. prepare_runs_on_the_calling_thread: before save_async returns; the
 * save callback runs on the manager's background thread, the same one for
 * every background save; a blocking save runs both on the calling thread.
 * A failing prepare callback starts nothing. */

static void prepare_runs_on_the_calling_thread(const char *dir) {
  alarm(DEADLOCK_SECONDS);
  async_world w = {.world.now = 100.0};
  ckpt_options *options = async_options(&w, dir, 3);
  ckpt_manager *manager = open_manager(options);
  const pthread_t caller = pthread_self();

  save_async_expecting(manager, dir, "ckpt-1");
  CHECK(w.prepares == 1 && w.prepared_number == 1);
  CHECK(pthread_equal(w.prepare_thread, caller));
  CHECK_OK(ckpt_manager_wait_until_finished(manager, -1));
  CHECK(w.world.saves == 1 && !pthread_equal(w.save_thread, caller));
  const pthread_t background = w.save_thread;

  save_async_expecting(manager, dir, "ckpt-2");
  CHECK(w.prepares == 2 && w.prepared_number == 2 && pthread_equal(w.prepare_thread, caller));
  CHECK_OK(ckpt_manager_wait_until_finished(manager, -1));
  CHECK(w.world.saves == 2 && pthread_equal(w.save_thread, background));

  char *prefix = save(manager);
  CHECK_STR("ckpt-3", base_name(prefix));
  ckpt_string_free(prefix);
  CHECK(w.prepares == 3 && w.prepared_number == 3);
  CHECK(pthread_equal(w.prepare_thread, caller) && pthread_equal(w.save_thread, caller));

  w.fail_prepare = 3;
  prefix = SENTINEL_STRING;
  CHECK_FAILS(CKPT_STATUS_CALLBACK_FAILED, "prepare",
              ckpt_manager_save_async(manager, NULL, &prefix));
  CHECK(prefix == NULL && w.prepares == 4 && w.world.saves == 3);
  CHECK_OK(ckpt_manager_wait_until_finished(manager, 0));
  CHECK_CHECKPOINTS(manager, "ckpt-1", "ckpt-2", "ckpt-3");
  CHECK(!exists(dir, "ckpt-4.ckpt-staging"));

  ckpt_manager_free(manager);
  ckpt_options_free(options);
  gate_destroy(&w.gate);
}

/* ------------------------------------------------------------------------
 * 10. read_only_refuses_save_async */

static void read_only_refuses_save_async(const char *dir) {
  alarm(DEADLOCK_SECONDS);
  async_world w = {.world.now = 100.0};
  ckpt_options *options = async_options(&w, dir, 3);
  ckpt_manager *writer = open_manager(options);
  save_async_expecting(writer, dir, "ckpt-1");
  ckpt_manager_free(writer);
  char *files_before = listing(dir);

  CHECK_OK(ckpt_options_set_read_only(options, true));
  ckpt_manager *reader = open_manager(options);
  char *prefix = SENTINEL_STRING;
  CHECK_FAILS(CKPT_STATUS_READ_ONLY, "read-only", ckpt_manager_save_async(reader, NULL, &prefix));
  CHECK(prefix == NULL && w.prepares == 1 && w.world.saves == 1);
  CHECK_OK(ckpt_manager_wait_until_finished(reader, -1));
  check_latest(reader, dir, "ckpt-1");
  char *files_after = listing(dir);
  CHECK_STR(files_before, files_after);

  free(files_before);
  free(files_after);
  ckpt_manager_free(reader);
  ckpt_options_free(options);
  gate_destroy(&w.gate);
}

/* ------------------------------------------------------------------------
 * 11. remote_tier: saves are copied to a second directory with its own
 * max_to_keep; wait_until_finished waits for the uploads; the status says
 * what went up, and a failed call zeroes its out-parameters. */

static void remote_tier(const char *dir) {
  alarm(DEADLOCK_SECONDS);
  fake_world world = {.now = 100.0};
  char *local = join(dir, "local");
  char *remote = join(dir, "remote");
  ckpt_options *options = world_options(&world, local, 1);
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "remote directory",
              ckpt_options_set_remote_max_to_keep(options, 3));
  CHECK_OK(ckpt_options_set_remote_directory(options, remote));
  CHECK_OK(ckpt_options_set_remote_max_to_keep(options, 3));
  CHECK_OK(ckpt_options_set_remote_keep_checkpoint_every_n_hours(options, 0));
  CHECK_OK(ckpt_options_set_local_max_held_for_upload(options, 0));
  CHECK_OK(ckpt_options_set_remote_preemption_seconds(options, 5));
  ckpt_manager *manager = open_manager(options);
  for (int i = 0; i < 4; i++) {
    world.now += 1.0;
    free(save(manager));
  }
  CHECK_OK(ckpt_manager_wait_until_finished(manager, -1));
  ckpt_remote_status status;
  char *error = SENTINEL_STRING;
  CHECK_OK(ckpt_manager_remote_status(manager, &status, &error));
  CHECK(status.has_remote && status.has_uploaded && status.newest_uploaded == 4);
  CHECK(status.pending == 0 && status.failures == 0 && error == NULL);
  CHECK(!exists(remote, "ckpt-1.ckpt-manifest.json"));
  CHECK(exists(remote, "ckpt-2.ckpt-manifest.json") && exists(remote, "ckpt-4.ckpt-manifest.json"));
  CHECK(!exists(local, "ckpt-3.ckpt-manifest.json") && exists(local, "ckpt-4.ckpt-manifest.json"));

  status.pending = 7;
  error = SENTINEL_STRING;
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager", ckpt_manager_remote_status(NULL, &status, &error));
  CHECK(!status.has_remote && status.pending == 0 && error == NULL);
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "out_status", ckpt_manager_remote_status(manager, NULL, NULL));

  ckpt_manager_free(manager);
  ckpt_options_free(options);
  free(local);
  free(remote);
}

int main(int argc, char **argv) {
  static const test_case cases[] = {
      {"save_async_with_and_without_args", save_async_with_and_without_args},
      {"skipped_by_interval_never_waits", skipped_by_interval_never_waits},
      {"snapshot_at_the_call", snapshot_at_the_call},
      {"failed_save_reported_by_save_async", failed_save_reported_by_save_async},
      {"failed_save_reported_by_wait", failed_save_reported_by_wait},
      {"failed_save_reported_by_restore", failed_save_reported_by_restore},
      {"wait_times_out_while_a_save_runs", wait_times_out_while_a_save_runs},
      {"free_waits_for_the_save_in_flight", free_waits_for_the_save_in_flight},
      {"save_async_from_four_threads", save_async_from_four_threads},
      {"background_callbacks_cannot_call_managers", background_callbacks_cannot_call_managers},
      {"prepare_runs_on_the_calling_thread", prepare_runs_on_the_calling_thread},
      {"read_only_refuses_save_async", read_only_refuses_save_async},
      {"remote_tier", remote_tier},
  };
  return run_test_case(cases, sizeof cases / sizeof cases[0], argc, argv);
}
