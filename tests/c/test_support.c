#define _POSIX_C_SOURCE 200809L
#include "test_support.h"

#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>

void test_fail(const char *file, int line, const char *format, ...) {
  va_list args;
  va_start(args, format);
  fprintf(stderr, "%s:%d: ", file, line);
  vfprintf(stderr, format, args);
  fputc('\n', stderr);
  va_end(args);
  exit(1);
}

void check_str(const char *file, int line, const char *expected,
               const char *actual, const char *what) {
  if (expected == NULL && actual == NULL) return;
  if (expected == NULL || actual == NULL || strcmp(expected, actual) != 0)
    test_fail(file, line, "%s is \"%s\", expected \"%s\"", what,
              actual ? actual : "(null)", expected ? expected : "(null)");
}

const char reset_text[] =
    "invalid argument: checkpoint_interval must be positive, not -424242";

void reset_message(void) {
  ckpt_options *options = NULL;
  CHECK_OK(ckpt_options_new(&options));
  CHECK_STATUS(CKPT_STATUS_INVALID_ARGUMENT,
               ckpt_options_set_checkpoint_interval(options, -424242));
  ckpt_options_free(options);
  CHECK_STR(reset_text, ckpt_last_error_message());
}

void check_message(const char *file, int line, const char *needle) {
  const char *message = ckpt_last_error_message();
  if (message == NULL || message[0] == '\0' || strcmp(message, reset_text) == 0 ||
      strstr(message, needle) == NULL)
    test_fail(file, line, "last error message \"%s\" should be new and contain \"%s\"",
              message ? message : "(null)", needle);
}

int run_test_case(const test_case *cases, size_t count, int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s CASE WORKDIR\n", argv[0]);
    return 2;
  }
  for (size_t i = 0; i < count; i++) {
    if (strcmp(cases[i].name, argv[1]) == 0) {
      cases[i].run(argv[2]);
      return 0;
    }
  }
  fprintf(stderr, "no test case named %s\n", argv[1]);
  return 2;
}

char *join(const char *dir, const char *name) {
  size_t length = strlen(dir) + strlen(name) + 2;
  char *path = malloc(length);
  CHECK(path != NULL);
  snprintf(path, length, "%s/%s", dir, name);
  return path;
}

bool exists(const char *dir, const char *name) {
  char *path = join(dir, name);
  struct stat info;
  bool found = lstat(path, &info) == 0;
  free(path);
  return found;
}

void write_text(const char *path, const char *text) {
  FILE *file = fopen(path, "wb");
  if (file == NULL) test_fail(__FILE__, __LINE__, "cannot write %s", path);
  CHECK(fwrite(text, 1, strlen(text), file) == strlen(text));
  CHECK(fclose(file) == 0);
}

char *read_text(const char *path) {
  FILE *file = fopen(path, "rb");
  if (file == NULL) return NULL;
  size_t capacity = 4096, length = 0;
  char *text = malloc(capacity);
  CHECK(text != NULL);
  size_t got;
  while ((got = fread(text + length, 1, capacity - length - 1, file)) > 0) {
    length += got;
    if (capacity - length <= 1) {
      capacity *= 2;
      text = realloc(text, capacity);
      CHECK(text != NULL);
    }
  }
  fclose(file);
  text[length] = '\0';
  return text;
}

const char *base_name(const char *path) {
  const char *slash = strrchr(path, '/');
  return slash ? slash + 1 : path;
}

int32_t save_tf_style(void *world_ptr, const char *prefix, uint64_t number) {
  fake_world *world = world_ptr;
  if (world->fail_save != 0) return world->fail_save;
  size_t length = strlen(prefix) + 32;
  char *path = malloc(length);
  char text[64];
  snprintf(path, length, "%s.data-00000-of-00001", prefix);
  snprintf(text, sizeof text, "%.17g", world->value);
  write_text(path, text);
  snprintf(path, length, "%s.index", prefix);
  snprintf(text, sizeof text, "%llu", (unsigned long long)number);
  write_text(path, text);
  free(path);
  world->saves++;
  return 0;
}

int32_t restore_tf_style(void *world_ptr, const char *prefix) {
  fake_world *world = world_ptr;
  size_t length = strlen(prefix) + 32;
  char *path = malloc(length);
  snprintf(path, length, "%s.data-00000-of-00001", prefix);
  char *text = read_text(path);
  free(path);
  if (text == NULL) return 2;
  world->value = strtod(text, NULL);
  free(text);
  world->restores++;
  return 0;
}

int32_t init_world(void *world_ptr) {
  fake_world *world = world_ptr;
  world->value = 2.0;
  world->inits++;
  return 0;
}

double fake_clock(void *world_ptr) { return ((fake_world *)world_ptr)->now; }

int32_t fake_step(void *world_ptr, int64_t *out_step) {
  *out_step = ((fake_world *)world_ptr)->step;
  return 0;
}

void record_log(void *world_ptr, ckpt_log_level level, const char *message) {
  fake_world *world = world_ptr;
  if (level == CKPT_LOG_LEVEL_WARNING) {
    world->warnings++;
    snprintf(world->last_warning, sizeof world->last_warning, "%s", message);
  }
}

ckpt_options *world_options(fake_world *world, const char *directory,
                            int64_t max_to_keep) {
  ckpt_options *options = NULL;
  CHECK_OK(ckpt_options_new(&options));
  CHECK_OK(ckpt_options_set_directory(options, directory));
  if (max_to_keep > 0)
    CHECK_OK(ckpt_options_set_max_to_keep(options, max_to_keep));
  else
    CHECK_OK(ckpt_options_set_keep_all(options));
  CHECK_OK(ckpt_options_set_save_callback(options, save_tf_style, world, NULL));
  CHECK_OK(ckpt_options_set_restore_callback(options, restore_tf_style, world, NULL));
  CHECK_OK(ckpt_options_set_init_callback(options, init_world, world, NULL));
  CHECK_OK(ckpt_options_set_clock_callback(options, fake_clock, world, NULL));
  CHECK_OK(ckpt_options_set_log_callback(options, record_log, world, NULL));
  return options;
}

ckpt_manager *open_manager(const ckpt_options *options) {
  ckpt_manager *manager = NULL;
  CHECK_OK(ckpt_manager_new(options, &manager));
  CHECK(manager != NULL);
  return manager;
}

static char *save_with(ckpt_manager *manager, const uint64_t *number,
                       bool check_interval) {
  char *prefix = (char *)"untouched";
  CHECK_OK(ckpt_manager_save(manager, number, check_interval, &prefix));
  CHECK(prefix == NULL || strcmp(prefix, "untouched") != 0);
  return prefix;
}

char *save(ckpt_manager *manager) { return save_with(manager, NULL, true); }

char *save_numbered(ckpt_manager *manager, uint64_t number) {
  return save_with(manager, &number, true);
}

char *save_checked(ckpt_manager *manager, bool check_interval) {
  return save_with(manager, NULL, check_interval);
}

void check_checkpoints(const char *file, int line, ckpt_manager *manager,
                       const char **expected) {
  ckpt_string_list *list = NULL;
  CHECK_OK(ckpt_manager_checkpoints(manager, &list));
  size_t count = 0;
  while (expected[count] != NULL) count++;
  bool same = list->len == count;
  for (size_t i = 0; same && i < count; i++)
    same = strcmp(base_name(list->items[i]), expected[i]) == 0;
  if (!same) {
    fprintf(stderr, "%s:%d: checkpoints are [", file, line);
    for (size_t i = 0; i < list->len; i++)
      fprintf(stderr, "%s%s", i ? ", " : "", base_name(list->items[i]));
    fprintf(stderr, "], expected [");
    for (size_t i = 0; i < count; i++)
      fprintf(stderr, "%s%s", i ? ", " : "", expected[i]);
    fprintf(stderr, "]\n");
    exit(1);
  }
  ckpt_string_list_free(list);
}
