/* What a failed call hands back: the error a callback attached to its
 * failure (ckpt_callback_set_error, ckpt_take_error_payload), on the caller's
 * thread, from a blocking call or from a background save; and out-parameters
 * cleared on failure, one case per kind of function. Run under valgrind
 * (CKPT_VALGRIND=1), a payload that is neither taken nor finalized leaks. */
#include <pthread.h>
#include <string.h>

#include "test_support.h"

/* ------------------------------------------------------------------------
 * A payload that counts its finalizations. */

typedef struct {
  int finalized; /* payloads of this tracker finalized by the library */
} tracker;

typedef struct {
  tracker *tracker;
  int id;
  pthread_t made_on; /* the thread of the callback that attached it */
} payload;

static void finalize_payload(void *data) {
  payload *p = data;
  p->tracker->finalized++;
  free(p);
}

static payload *new_payload(tracker *t, int id) {
  payload *p = malloc(sizeof *p);
  CHECK(p != NULL);
  p->tracker = t;
  p->id = id;
  p->made_on = pthread_self();
  return p;
}

/* Takes the payload of this thread's last failure: it must have `id`. */
#define take_payload(id) take_payload_at(__FILE__, __LINE__, (id))
static payload *take_payload_at(const char *file, int line, int id) {
  void *taken = (void *)"untouched";
  CHECK_OK(ckpt_take_error_payload(&taken));
  if (taken == NULL) test_fail(file, line, "no payload to take");
  payload *p = taken;
  if (p->id != id) test_fail(file, line, "payload %d, expected %d", p->id, id);
  return p;
}

static void check_no_payload(void) {
  void *taken = (void *)"untouched";
  CHECK_OK(ckpt_take_error_payload(&taken));
  CHECK(taken == NULL);
}

/* The callbacks' state: which of them fail, and how. */
typedef struct {
  fake_world world;
  tracker tracker;
  int fail_save;     /* non-zero: the save callback attaches and returns it */
  int fail_restore;  /* likewise for restore */
  int fail_init;     /* likewise for init */
  bool fail_clock;   /* the clock attaches and returns NaN */
  bool fail_delete;  /* the delete callback attaches and returns 1 */
  bool attach_twice; /* the save callback attaches twice */
  bool attach_on_success; /* the save callback attaches, then succeeds */
  bool attach_in_log;     /* the log callback attaches */
  pthread_t save_thread;
} error_world;

static int32_t failing_save(void *data, const char *prefix, uint64_t number) {
  error_world *w = data;
  w->save_thread = pthread_self();
  if (w->attach_twice) {
    int before = w->tracker.finalized;
    CHECK_OK(ckpt_callback_set_error("first", new_payload(&w->tracker, 1), finalize_payload));
    CHECK(w->tracker.finalized == before);
    CHECK_OK(ckpt_callback_set_error("second", new_payload(&w->tracker, 2), finalize_payload));
    CHECK(w->tracker.finalized == before + 1); /* the first, replaced at once */
    return 1;
  }
  if (w->attach_on_success) {
    CHECK_OK(ckpt_callback_set_error("not a failure", new_payload(&w->tracker, 3),
                                     finalize_payload));
    return save_tf_style(&w->world, prefix, number);
  }
  if (w->fail_save != 0) {
    char message[64];
    snprintf(message, sizeof message, "disk quota exceeded for %llu",
             (unsigned long long)number);
    CHECK_OK(ckpt_callback_set_error(message, new_payload(&w->tracker, w->fail_save),
                                     finalize_payload));
    return w->fail_save;
  }
  return save_tf_style(&w->world, prefix, number);
}

static int32_t failing_restore(void *data, const char *prefix) {
  error_world *w = data;
  if (w->fail_restore != 0) {
    CHECK_OK(ckpt_callback_set_error("shape mismatch in layer 3",
                                     new_payload(&w->tracker, w->fail_restore),
                                     finalize_payload));
    return w->fail_restore;
  }
  return restore_tf_style(&w->world, prefix);
}

static int32_t failing_init(void *data) {
  error_world *w = data;
  if (w->fail_init != 0) {
    CHECK_OK(ckpt_callback_set_error("no initializer", new_payload(&w->tracker, w->fail_init),
                                     finalize_payload));
    return w->fail_init;
  }
  return init_world(&w->world);
}

static double failing_clock(void *data) {
  error_world *w = data;
  if (w->fail_clock) {
    CHECK_OK(ckpt_callback_set_error("clock unplugged", new_payload(&w->tracker, 40),
                                     finalize_payload));
    return 0.0 / 0.0;
  }
  return w->world.now;
}

static int32_t failing_delete(void *data, const char *prefix) {
  error_world *w = data;
  (void)prefix;
  if (w->fail_delete) {
    CHECK_OK(ckpt_callback_set_error("bucket is read-only", new_payload(&w->tracker, 50),
                                     finalize_payload));
    return 1;
  }
  return 0;
}

static void attaching_log(void *data, ckpt_log_level level, const char *message) {
  error_world *w = data;
  record_log(&w->world, level, message);
  if (w->attach_in_log) {
    CHECK_OK(ckpt_callback_set_error("from the log", new_payload(&w->tracker, 60),
                                     finalize_payload));
  }
}

static ckpt_options *error_options(error_world *w, const char *dir, int64_t max_to_keep) {
  ckpt_options *options = world_options(&w->world, dir, max_to_keep);
  CHECK_OK(ckpt_options_set_save_callback(options, failing_save, w, NULL));
  CHECK_OK(ckpt_options_set_restore_callback(options, failing_restore, w, NULL));
  CHECK_OK(ckpt_options_set_init_callback(options, failing_init, w, NULL));
  CHECK_OK(ckpt_options_set_clock_callback(options, failing_clock, w, NULL));
  CHECK_OK(ckpt_options_set_log_callback(options, attaching_log, w, NULL));
  return options;
}

/* ------------------------------------------------------------------------
 * sync_save_error: the failing call's message holds the callback's, and
 * its payload is handed over once, unfinalized. */

static void sync_save_error(const char *dir) {
  error_world w = {.world.now = 100.0, .fail_save = 7};
  ckpt_options *options = error_options(&w, dir, 3);
  ckpt_manager *manager = open_manager(options);
  char *prefix = (char *)"untouched";
  CHECK_FAILS(CKPT_STATUS_CALLBACK_FAILED, "disk quota exceeded for 1",
              ckpt_manager_save(manager, NULL, true, &prefix));
  CHECK(prefix == NULL);
  check_message(__FILE__, __LINE__, "error code 7");
  CHECK(w.tracker.finalized == 0);
  payload *p = take_payload(7);
  CHECK(pthread_equal(p->made_on, pthread_self()));
  free(p);
  check_no_payload(); /* taken once */
  CHECK(w.tracker.finalized == 0);
  /* The message stays until the next failure. */
  CHECK(strstr(ckpt_last_error_message(), "disk quota exceeded") != NULL);
  CHECK(!exists(dir, "ckpt-1.index") && !exists(dir, "checkpoint"));

  /* Without an attachment, a callback's failure carries no payload. */
  w.fail_save = 0;
  w.world.fail_save = 5;
  CHECK_OK(ckpt_options_set_save_callback(options, save_tf_style, &w.world, NULL));
  ckpt_manager_free(manager);
  manager = open_manager(options);
  CHECK_FAILS(CKPT_STATUS_CALLBACK_FAILED, "error code 5",
              ckpt_manager_save(manager, NULL, true, &prefix));
  check_no_payload();

  ckpt_manager_free(manager);
  ckpt_options_free(options);
}

/* ------------------------------------------------------------------------
 * untaken_payload_is_finalized: exactly once, whichever way it goes. */

static void *fail_and_exit(void *data) {
  ckpt_manager *manager = data;
  char *prefix = NULL;
  CHECK_STATUS(CKPT_STATUS_CALLBACK_FAILED, ckpt_manager_save(manager, NULL, true, &prefix));
  return NULL; /* the payload is never taken: the thread's exit finalizes it */
}

static void untaken_payload_is_finalized(const char *dir) {
  error_world w = {.world.now = 100.0, .fail_save = 3};
  ckpt_options *options = error_options(&w, dir, 3);
  ckpt_manager *manager = open_manager(options);
  char *prefix = NULL;

  /* Replaced by a later failure on the thread, with or without a payload. */
  CHECK_STATUS(CKPT_STATUS_CALLBACK_FAILED, ckpt_manager_save(manager, NULL, true, &prefix));
  CHECK(w.tracker.finalized == 0);
  CHECK_STATUS(CKPT_STATUS_CALLBACK_FAILED, ckpt_manager_save(manager, NULL, true, &prefix));
  CHECK(w.tracker.finalized == 1);
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager", ckpt_manager_save(NULL, NULL, true, &prefix));
  CHECK(w.tracker.finalized == 2);
  check_no_payload();

  /* A NULL out-parameter takes nothing and changes nothing. */
  CHECK_STATUS(CKPT_STATUS_CALLBACK_FAILED, ckpt_manager_save(manager, NULL, true, &prefix));
  const char *message = ckpt_last_error_message();
  CHECK(ckpt_take_error_payload(NULL) == CKPT_STATUS_NULL_ARGUMENT);
  CHECK(ckpt_last_error_message() == message && strstr(message, "disk quota") != NULL);
  free(take_payload(3));
  CHECK(w.tracker.finalized == 2);

  /* A success on the thread keeps the last failure's payload. */
  CHECK_STATUS(CKPT_STATUS_CALLBACK_FAILED, ckpt_manager_save(manager, NULL, true, &prefix));
  w.fail_save = 0;
  prefix = save(manager);
  ckpt_string_free(prefix);
  CHECK(w.tracker.finalized == 2);
  free(take_payload(3));

  /* The exit of the thread that got the failure. */
  w.fail_save = 4;
  pthread_t thread;
  CHECK(pthread_create(&thread, NULL, fail_and_exit, manager) == 0);
  CHECK(pthread_join(thread, NULL) == 0);
  CHECK(w.tracker.finalized == 3);
  check_no_payload(); /* it was that thread's */

  /* A callback that succeeds drops what it attached as it returns. */
  w.fail_save = 0;
  w.attach_on_success = true;
  prefix = save(manager);
  CHECK(prefix != NULL);
  ckpt_string_free(prefix);
  CHECK(w.tracker.finalized == 4);
  check_no_payload();
  w.attach_on_success = false;

  /* Attaching twice replaces the first at once; the second is reported. */
  w.attach_twice = true;
  CHECK_FAILS(CKPT_STATUS_CALLBACK_FAILED, "second", ckpt_manager_save(manager, NULL, true, &prefix));
  CHECK(strstr(ckpt_last_error_message(), "first") == NULL);
  CHECK(w.tracker.finalized == 5);
  free(take_payload(2));
  w.attach_twice = false;

  /* Outside a callback it is refused, and the payload finalized at once. */
  int before = w.tracker.finalized;
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "outside a running callback",
              ckpt_callback_set_error("stray", new_payload(&w.tracker, 9), finalize_payload));
  CHECK(w.tracker.finalized == before + 1);
  /* NULL everything is allowed inside, and nothing outside. */
  CHECK_STATUS(CKPT_STATUS_INVALID_ARGUMENT, ckpt_callback_set_error(NULL, NULL, NULL));

  ckpt_manager_free(manager);
  ckpt_options_free(options);
}

/* ------------------------------------------------------------------------
 * background_save_error: attached on the library's thread, reported by
 * the call that returns the save's failure, on the caller's thread. */

static void background_save_error(const char *dir) {
  error_world w = {.world.now = 100.0, .fail_save = 11};
  ckpt_options *options = error_options(&w, dir, 3);
  ckpt_manager *manager = open_manager(options);
  char *prefix = NULL;

  /* Reported by wait_until_finished. */
  CHECK_OK(ckpt_manager_save_async(manager, NULL, &prefix));
  CHECK_STR("ckpt-1", base_name(prefix));
  ckpt_string_free(prefix);
  CHECK_FAILS(CKPT_STATUS_CALLBACK_FAILED, "disk quota exceeded for 1",
              ckpt_manager_wait_until_finished(manager, -1));
  CHECK(!pthread_equal(w.save_thread, pthread_self()));
  payload *p = take_payload(11);
  CHECK(pthread_equal(p->made_on, w.save_thread)); /* attached on the library's thread */
  free(p);
  CHECK(w.tracker.finalized == 0);
  CHECK_OK(ckpt_manager_wait_until_finished(manager, -1)); /* once */

  /* Reported by the next save_async, which then starts nothing. */
  w.fail_save = 12;
  CHECK_OK(ckpt_manager_save_async(manager, NULL, &prefix));
  ckpt_string_free(prefix);
  CHECK_FAILS(CKPT_STATUS_CALLBACK_FAILED, "disk quota exceeded",
              ckpt_manager_save_async(manager, NULL, &prefix));
  CHECK(prefix == NULL);
  free(take_payload(12));
  CHECK_OK(ckpt_manager_wait_until_finished(manager, -1));
  CHECK(w.tracker.finalized == 0);

  /* Unreported when the manager is freed: finalized there, once. */
  w.fail_save = 13;
  CHECK_OK(ckpt_manager_save_async(manager, NULL, &prefix));
  ckpt_string_free(prefix);
  ckpt_manager_free(manager);
  CHECK(w.tracker.finalized == 1);
  check_no_payload();
  CHECK(strstr(w.world.last_warning, "disk quota exceeded") != NULL);
  CHECK(!exists(dir, "checkpoint"));
  ckpt_options_free(options);
}

/* ------------------------------------------------------------------------
 * other_callbacks: restore, init and clock failures carry theirs; a delete
 * callback's failure fails nothing and finalizes its payload. */

static void other_callbacks(const char *dir) {
  error_world w = {.world.now = 100.0};
  ckpt_options *options = error_options(&w, dir, 1);
  char *prefix = (char *)"untouched";

  /* The clock, read at open. */
  ckpt_manager *manager = (ckpt_manager *)(void *)&w;
  w.fail_clock = true;
  CHECK_FAILS(CKPT_STATUS_CALLBACK_FAILED, "clock unplugged", ckpt_manager_new(options, &manager));
  CHECK(manager == NULL);
  check_message(__FILE__, __LINE__, "not a finite time");
  free(take_payload(40));
  w.fail_clock = false;

  manager = open_manager(options);
  /* Init, with no checkpoint. */
  w.fail_init = 21;
  CHECK_FAILS(CKPT_STATUS_CALLBACK_FAILED, "no initializer",
              ckpt_manager_restore_or_initialize(manager, &prefix));
  CHECK(prefix == NULL);
  free(take_payload(21));
  w.fail_init = 0;

  /* Restore, with one. */
  ckpt_string_free(save(manager));
  w.fail_restore = 22;
  prefix = (char *)"untouched";
  CHECK_FAILS(CKPT_STATUS_CALLBACK_FAILED, "shape mismatch in layer 3",
              ckpt_manager_restore_or_initialize(manager, &prefix));
  CHECK(prefix == NULL);
  free(take_payload(22));
  w.fail_restore = 0;
  CHECK(w.tracker.finalized == 0);
  ckpt_manager_free(manager);

  /* Delete, after the commit: a warning, the payload finalized. The log
   * callback cannot fail: what it attaches goes as it returns. */
  CHECK_OK(ckpt_options_set_delete_callback(options, failing_delete, &w, NULL));
  manager = open_manager(options);
  w.fail_delete = true;
  w.attach_in_log = true;
  int warnings_before = w.world.warnings;
  prefix = save(manager);
  CHECK_STR("ckpt-2", base_name(prefix));
  ckpt_string_free(prefix);
  CHECK(strstr(w.world.last_warning, "bucket is read-only") != NULL);
  CHECK(w.world.warnings == warnings_before + 1);
  CHECK(w.tracker.finalized == 2);
  check_no_payload();
  w.attach_in_log = false;
  ckpt_manager_free(manager);
  ckpt_options_free(options);
}

/* ------------------------------------------------------------------------
 * Out-parameters cleared on failure, by kind of function. */

static int sentinel;
#define SENTINEL ((void *)&sentinel)

/* A handle: a failing ckpt_manager_new leaves NULL in a reused variable. */
static void failed_new_clears_out_manager(const char *dir) {
  fake_world world = {.now = 100.0};
  ckpt_options *options = world_options(&world, dir, 3);
  ckpt_manager *first = open_manager(options);
  ckpt_manager *manager = SENTINEL;
  CHECK_FAILS(CKPT_STATUS_LOCKED, "another manager", ckpt_manager_new(options, &manager));
  CHECK(manager == NULL);
  manager = SENTINEL;
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "options", ckpt_manager_new(NULL, &manager));
  CHECK(manager == NULL);
  ckpt_options *empty = NULL;
  CHECK_OK(ckpt_options_new(&empty));
  manager = SENTINEL;
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "directory", ckpt_manager_new(empty, &manager));
  CHECK(manager == NULL);
  ckpt_options_free(empty);

  /* Other handles: options and save arguments fail only on a NULL
   * out-parameter; a state read from a corrupt file. */
  char *state_path = join(dir, "checkpoint");
  write_text(state_path, "garbage");
  free(state_path);
  ckpt_checkpoint_state *state = SENTINEL;
  CHECK_FAILS(CKPT_STATUS_STATE_CORRUPT, "", ckpt_get_checkpoint_state(dir, &state));
  CHECK(state == NULL);
  ckpt_manager_free(first);
  ckpt_options_free(options);
}

/* Strings and lists. */
static void failed_calls_clear_out_strings(const char *dir) {
  fake_world world = {.now = 100.0, .fail_save = 2};
  ckpt_options *options = world_options(&world, dir, 3);
  ckpt_manager *manager = open_manager(options);
  char *string = SENTINEL;
  CHECK_FAILS(CKPT_STATUS_CALLBACK_FAILED, "save", ckpt_manager_save(manager, NULL, true, &string));
  CHECK(string == NULL);
  string = SENTINEL;
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "args", ckpt_manager_save_with(manager, NULL, &string));
  CHECK(string == NULL);
  string = SENTINEL;
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager", ckpt_manager_latest(NULL, &string));
  CHECK(string == NULL);
  string = SENTINEL;
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "keep_best", ckpt_manager_best(manager, &string));
  CHECK(string == NULL);
  string = SENTINEL;
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager", ckpt_manager_directory(NULL, &string));
  CHECK(string == NULL);
  string = SENTINEL;
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "",
              ckpt_manager_checkpoint_info(manager, "no/such/ckpt-9", &string));
  CHECK(string == NULL);
  string = SENTINEL;
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "unknown flags",
              ckpt_latest_checkpoint_with_flags(dir, 0x80, &string));
  CHECK(string == NULL);
  ckpt_string_list *list = SENTINEL;
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager", ckpt_manager_checkpoints(NULL, &list));
  CHECK(list == NULL);
  ckpt_manager_free(manager);
  ckpt_options_free(options);
}

/* Counts and flags. */
static void failed_calls_clear_out_counts(const char *dir) {
  fake_world world = {.now = 100.0};
  ckpt_options *options = world_options(&world, dir, 3);
  CHECK_OK(ckpt_options_set_read_only(options, true));
  ckpt_manager *reader = open_manager(options);
  uint64_t counter = 42;
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager", ckpt_manager_save_counter(NULL, &counter));
  CHECK(counter == 0);
  bool flag = true;
  CHECK_FAILS(CKPT_STATUS_READ_ONLY, "read-only", ckpt_manager_should_save(reader, &flag));
  CHECK(flag == false);
  flag = true;
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "", ckpt_checkpoint_exists("", &flag));
  CHECK(flag == false);
  ckpt_manager_free(reader);
  ckpt_options_free(options);
}

/* A save file opened with a prefix that is no save's. */
static void failed_save_file_open_clears_out_file(const char *dir) {
  ckpt_save_file *file = SENTINEL;
  char *prefix = join(dir, "ckpt-1");
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "", ckpt_save_file_open(prefix, ".index", &file));
  CHECK(file == NULL);
  file = SENTINEL;
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "prefix", ckpt_save_file_open(NULL, ".index", &file));
  CHECK(file == NULL);
  free(prefix);
}

int main(int argc, char **argv) {
  static const test_case cases[] = {
      {"sync_save_error", sync_save_error},
      {"untaken_payload_is_finalized", untaken_payload_is_finalized},
      {"background_save_error", background_save_error},
      {"other_callbacks", other_callbacks},
      {"failed_new_clears_out_manager", failed_new_clears_out_manager},
      {"failed_calls_clear_out_strings", failed_calls_clear_out_strings},
      {"failed_calls_clear_out_counts", failed_calls_clear_out_counts},
      {"failed_save_file_open_clears_out_file", failed_save_file_open_clears_out_file},
  };
  return run_test_case(cases, sizeof cases / sizeof cases[0], argc, argv);
}
