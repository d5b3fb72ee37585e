/* Helpers shared by the C test programs: checks, a case runner, files, and
 * callbacks that write a TF-style checkpoint (.index + .data) with a fake
 * clock and step counter. */
#ifndef CKPT_TEST_SUPPORT_H
#define CKPT_TEST_SUPPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "ckpt_manager.h"

void test_fail(const char *file, int line, const char *format, ...);

#define CHECK(cond)                                              \
  do {                                                           \
    if (!(cond)) test_fail(__FILE__, __LINE__, "CHECK(%s)", #cond); \
  } while (0)

#define CHECK_STATUS(expected, call)                                           \
  do {                                                                         \
    ckpt_status got_ = (call);                                                 \
    if (got_ != (expected))                                                    \
      test_fail(__FILE__, __LINE__, "%s returned %s, expected %s: %s", #call, \
                ckpt_status_name((uint32_t)got_),                              \
                ckpt_status_name((uint32_t)(expected)),                        \
                ckpt_last_error_message());                                    \
  } while (0)

#define CHECK_OK(call) CHECK_STATUS(CKPT_STATUS_OK, call)

#define CHECK_STR(expected, actual) \
  check_str(__FILE__, __LINE__, (expected), (actual), #actual)

void check_str(const char *file, int line, const char *expected,
               const char *actual, const char *what);

/* Makes the thread's last error message `reset_text`, so that a check
 * after a failing call sees the message that call set. */
extern const char reset_text[];
void reset_message(void);
/* Fails unless the last error message is new and contains `needle`. */
void check_message(const char *file, int line, const char *needle);

/* `call` fails with `status` and sets a new message containing `needle`. */
#define CHECK_FAILS(status, needle, call)        \
  do {                                           \
    reset_message();                             \
    CHECK_STATUS((status), call);                \
    check_message(__FILE__, __LINE__, (needle)); \
  } while (0)

/* A test case gets a fresh, empty work directory that the harness removes. */
typedef struct {
  const char *name;
  void (*run)(const char *workdir);
} test_case;

/* Runs the case named argv[1] in the directory argv[2]. */
int run_test_case(const test_case *cases, size_t count, int argc, char **argv);

/* Path helpers; results are malloc'd and leaked freely by tests except
 * where valgrind checks care (they free). */
char *join(const char *dir, const char *name);
bool exists(const char *dir, const char *name);
void write_text(const char *path, const char *text);
/* The whole file, NUL-terminated; NULL if it cannot be read. */
char *read_text(const char *path);

/* The state a test's callbacks share. */
typedef struct {
  double now;          /* seconds returned by the clock callback */
  int64_t step;        /* value returned by the step counter */
  double value;        /* the "model": saved and restored */
  int saves;           /* save callbacks run */
  int restores;        /* restore callbacks run */
  int inits;           /* init callbacks run */
  int32_t fail_save;   /* non-zero: the save callback returns it */
  int warnings;        /* warnings logged */
  char last_warning[512];
} fake_world;

/* Writes <prefix>.index and <prefix>.data-00000-of-00001 holding the value. */
int32_t save_tf_style(void *world, const char *prefix, uint64_t number);
int32_t restore_tf_style(void *world, const char *prefix);
int32_t init_world(void *world);
double fake_clock(void *world);
int32_t fake_step(void *world, int64_t *out_step);
void record_log(void *world, ckpt_log_level level, const char *message);

/* Options for `directory` with the world's callbacks (save, restore, init,
 * clock, log) and max_to_keep (0 keeps all). Free with ckpt_options_free. */
ckpt_options *world_options(fake_world *world, const char *directory,
                            int64_t max_to_keep);
ckpt_manager *open_manager(const ckpt_options *options);

/* Saves with the counter's next number; returns the prefix (caller frees)
 * or NULL when skipped. */
char *save(ckpt_manager *manager);
char *save_numbered(ckpt_manager *manager, uint64_t number);
char *save_checked(ckpt_manager *manager, bool check_interval);

/* Asserts the manager's checkpoints are exactly these basenames, in order. */
#define CHECK_CHECKPOINTS(manager, ...)                                     \
  check_checkpoints(__FILE__, __LINE__, (manager),                          \
                    (const char *[]){__VA_ARGS__, NULL})
void check_checkpoints(const char *file, int line, ckpt_manager *manager,
                       const char **expected);

/* Basename of a path (points into it). */
const char *base_name(const char *path);

#endif
