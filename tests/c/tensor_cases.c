/* The built-in tensor saver through the C API: registration errors, a save
 * and restore of every dtype, and hostile .safetensors files, each of which
 * must be refused with a clear message before any registered buffer is
 * written. Buffers are malloc'd at their exact size so that valgrind
 * (CKPT_VALGRIND=1) sees any write past one. */
#define _POSIX_C_SOURCE 200809L
#include <string.h>
#include <sys/stat.h>

#include "test_support.h"

/* ------------------------------------------------------------------------
 * Helpers. */

static void write_bytes(const char *path, const void *data, size_t length) {
  FILE *file = fopen(path, "wb");
  if (file == NULL) test_fail(__FILE__, __LINE__, "cannot write %s", path);
  CHECK(length == 0 || fwrite(data, 1, length, file) == length);
  CHECK(fclose(file) == 0);
}

static char *with_suffix(const char *prefix, const char *suffix) {
  size_t length = strlen(prefix) + strlen(suffix) + 1;
  char *path = malloc(length);
  CHECK(path != NULL);
  snprintf(path, length, "%s%s", prefix, suffix);
  return path;
}

static size_t dtype_size(uint32_t dtype) {
  switch (dtype) {
    case CKPT_DTYPE_F64: case CKPT_DTYPE_I64: case CKPT_DTYPE_U64: return 8;
    case CKPT_DTYPE_F32: case CKPT_DTYPE_I32: case CKPT_DTYPE_U32: return 4;
    case CKPT_DTYPE_F16: case CKPT_DTYPE_BF16: case CKPT_DTYPE_I16:
    case CKPT_DTYPE_U16: return 2;
    default: return 1;
  }
}

static ckpt_options *bare_options(const char *dir) {
  ckpt_options *options = NULL;
  CHECK_OK(ckpt_options_new(&options));
  CHECK_OK(ckpt_options_set_directory(options, dir));
  CHECK_OK(ckpt_options_set_max_to_keep(options, 2));
  return options;
}

/* Warnings the manager logged, concatenated. */
typedef struct {
  char text[4096];
} log_text;

static void collect_log(void *user_data, ckpt_log_level level, const char *message) {
  (void)level;
  log_text *log = user_data;
  size_t used = strlen(log->text);
  snprintf(log->text + used, sizeof log->text - used, "%s\n", message);
}

/* The last error message or a logged warning (a damaged latest checkpoint
 * is reported as a warning before the fallback) contains `needle`. */
#define CHECK_REPORTED(log, needle) check_reported(__FILE__, __LINE__, (log), (needle))
static void check_reported(const char *file, int line, const log_text *log,
                           const char *needle) {
  const char *message = ckpt_last_error_message();
  if (strstr(message, needle) == NULL && strstr(log->text, needle) == NULL)
    test_fail(file, line, "neither the error \"%s\" nor the log \"%s\" contains \"%s\"",
              message, log->text, needle);
}

static int32_t count_restore(void *count, const char *prefix) {
  (void)prefix;
  ++*(int *)count;
  return 0;
}

/* ------------------------------------------------------------------------
 * Registration. */

typedef struct {
  ckpt_manager *manager;
  ckpt_status status;
  char message[256];
} reentry;

static int32_t register_from_save(void *user_data, const char *prefix, uint64_t number) {
  (void)number;
  reentry *state = user_data;
  char path[4096];
  snprintf(path, sizeof path, "%s.index", prefix);
  write_text(path, "index"); /* a save that writes no file is refused */
  static uint8_t byte;
  uint64_t shape[1] = {1};
  state->status = ckpt_manager_register_tensor(state->manager, "late", CKPT_DTYPE_U8,
                                               shape, 1, &byte);
  snprintf(state->message, sizeof state->message, "%s", ckpt_last_error_message());
  return 0;
}

static void registration_errors(const char *dir) {
  ckpt_options *options = bare_options(dir);
  ckpt_manager *manager = open_manager(options);
  float *w = malloc(4 * sizeof *w);
  CHECK(w != NULL);
  memset(w, 0, 4 * sizeof *w);
  uint64_t shape[2] = {2, 2};

  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager",
              ckpt_manager_register_tensor(NULL, "w", CKPT_DTYPE_F32, shape, 2, w));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "name",
              ckpt_manager_register_tensor(manager, NULL, CKPT_DTYPE_F32, shape, 2, w));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "shape",
              ckpt_manager_register_tensor(manager, "w", CKPT_DTYPE_F32, NULL, 2, w));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "NULL",
              ckpt_manager_register_tensor(manager, "w", CKPT_DTYPE_F32, shape, 2, NULL));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "unknown dtype 13",
              ckpt_manager_register_tensor(manager, "w", 13, shape, 2, w));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "unknown dtype 4294967295",
              ckpt_manager_register_tensor(manager, "w", UINT32_MAX, shape, 2, w));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "UTF-8",
              ckpt_manager_register_tensor(manager, "w\xff", CKPT_DTYPE_F32, shape, 2, w));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "name",
              ckpt_manager_register_tensor(manager, "", CKPT_DTYPE_F32, shape, 2, w));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "__metadata__",
              ckpt_manager_register_tensor(manager, "__metadata__", CKPT_DTYPE_F32, shape, 2, w));

  uint64_t zero[3] = {2, 0, 2};
  uint64_t huge[2] = {UINT64_MAX, 2};
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "overflows",
              ckpt_manager_register_tensor(manager, "o", CKPT_DTYPE_U8, huge, 2, w));
  uint64_t square[2] = {(uint64_t)1 << 32, (uint64_t)1 << 32};
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "'o'",
              ckpt_manager_register_tensor(manager, "o", CKPT_DTYPE_F64, square, 2, w));

  CHECK_OK(ckpt_manager_register_tensor(manager, "w", CKPT_DTYPE_F32, shape, 2, w));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "already",
              ckpt_manager_register_tensor(manager, "w", CKPT_DTYPE_U8, shape, 1, w));
  /* A scalar: no shape needed, and a shape pointer with ndim 0 is ignored. */
  CHECK_OK(ckpt_manager_register_tensor(manager, "s", CKPT_DTYPE_F32, NULL, 0, w));
  CHECK_OK(ckpt_manager_register_tensor(manager, "t", CKPT_DTYPE_F32, zero, 0, w));
  /* The failed names were never registered. */
  CHECK_OK(ckpt_manager_register_tensor(manager, "z", CKPT_DTYPE_U8, shape, 1, w));
  CHECK_OK(ckpt_manager_register_tensor(manager, "o", CKPT_DTYPE_U8, shape, 1, w));

  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "'nope'",
              ckpt_manager_unregister_tensor(manager, "nope"));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "name", ckpt_manager_unregister_tensor(manager, NULL));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "manager", ckpt_manager_unregister_tensor(NULL, "w"));
  CHECK_OK(ckpt_manager_unregister_tensor(manager, "w"));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "'w'", ckpt_manager_unregister_tensor(manager, "w"));
  CHECK_OK(ckpt_manager_register_tensor(manager, "w", CKPT_DTYPE_F32, shape, 2, w));

  /* Replicated and sharded tensors: the same checks, and a box inside its tensor. */
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "shape",
              ckpt_manager_register_replicated_tensor(manager, "r", CKPT_DTYPE_F32, NULL, 2, w));
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "already",
              ckpt_manager_register_replicated_tensor(manager, "w", CKPT_DTYPE_F32, shape, 2, w));
  CHECK_OK(ckpt_manager_register_replicated_tensor(manager, "r", CKPT_DTYPE_F32, shape, 2, w));
  uint64_t global[2] = {4, 6}, offset[2] = {2, 4}, local[2] = {2, 2};
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "offset",
              ckpt_manager_register_tensor_slice(manager, "b", CKPT_DTYPE_F32, global, NULL,
                                                 local, 2, w));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "global_shape",
              ckpt_manager_register_tensor_slice(manager, "b", CKPT_DTYPE_F32, NULL, offset,
                                                 local, 2, w));
  uint64_t past[2] = {3, 4};
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "outside the global shape [4, 6]",
              ckpt_manager_register_tensor_slice(manager, "b", CKPT_DTYPE_F32, global, past,
                                                 local, 2, w));
  uint64_t wrapping[2] = {UINT64_MAX, 0};
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "outside",
              ckpt_manager_register_tensor_slice(manager, "b", CKPT_DTYPE_F32, global, wrapping,
                                                 local, 2, w));
  CHECK_OK(ckpt_manager_register_tensor_slice(manager, "b", CKPT_DTYPE_F32, global, offset, local,
                                              2, w));
  ckpt_manager_free(manager);
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "ckpt_unmatched_rank_local",
              ckpt_options_set_unmatched_rank_local(options, 3));
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "options",
              ckpt_options_set_unmatched_rank_local(NULL, CKPT_UNMATCHED_RANK_LOCAL_SKIP));
  CHECK_OK(ckpt_options_set_unmatched_rank_local(options, CKPT_UNMATCHED_RANK_LOCAL_INITIALIZE));
  ckpt_options_free(options);

  /* Registering from inside a callback of the same manager is refused. */
  reentry state = {NULL, CKPT_STATUS_OK, ""};
  options = bare_options(dir);
  CHECK_OK(ckpt_options_set_save_callback(options, register_from_save, &state, NULL));
  manager = open_manager(options);
  state.manager = manager;
  char *prefix = save(manager);
  CHECK(state.status == CKPT_STATUS_REENTRANT_CALL);
  CHECK(state.message[0] != '\0');
  ckpt_string_free(prefix);
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  free(w);
}

/* ------------------------------------------------------------------------
 * Empty tensors: a zero dimension makes a tensor without bytes, saved with
 * its shape (as safetensors stores them) and matched on restore; its data
 * may be NULL. */

static void empty_tensors(const char *dir) {
  ckpt_options *options = bare_options(dir);
  ckpt_manager *manager = open_manager(options);
  float *w = malloc(2 * sizeof *w);
  unsigned char *unused = malloc(1); /* a buffer the library must not touch */
  CHECK(w != NULL && unused != NULL);
  w[0] = 1.5f;
  w[1] = -2.0f;
  uint64_t w_shape[1] = {2}, empty_shape[2] = {3, 0}, none_shape[1] = {0};
  CHECK_OK(ckpt_manager_register_tensor(manager, "w", CKPT_DTYPE_F32, w_shape, 1, w));
  CHECK_OK(ckpt_manager_register_tensor(manager, "empty", CKPT_DTYPE_U16, empty_shape, 2,
                                        unused));
  CHECK_OK(ckpt_manager_register_tensor(manager, "none", CKPT_DTYPE_F64, none_shape, 1, NULL));
  /* NULL data is still refused for a tensor that has bytes. */
  CHECK_FAILS(CKPT_STATUS_INVALID_ARGUMENT, "NULL",
              ckpt_manager_register_tensor(manager, "n", CKPT_DTYPE_F32, w_shape, 1, NULL));

  char *prefix = save(manager);
  CHECK_OK(ckpt_manager_verify(manager, NULL, true));
  char *path = with_suffix(prefix, ".safetensors");
  char *file = read_text(path);
  CHECK(file != NULL);
  const char *json = file + 8; /* after the header's length */
  CHECK(strstr(json, "\"none\":{\"dtype\":\"F64\",\"shape\":[0],\"data_offsets\":[0,0]}"));
  CHECK(strstr(json, "\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"));
  CHECK(strstr(json,
               "\"empty\":{\"dtype\":\"U16\",\"shape\":[3,0],\"data_offsets\":[8,8]}"));
  ckpt_manager_free(manager);

  /* A new manager restores it: w comes back, the empty ones match. */
  w[0] = w[1] = 0.0f;
  manager = open_manager(options);
  CHECK_OK(ckpt_manager_register_tensor(manager, "w", CKPT_DTYPE_F32, w_shape, 1, w));
  CHECK_OK(ckpt_manager_register_tensor(manager, "empty", CKPT_DTYPE_U16, empty_shape, 2, NULL));
  CHECK_OK(ckpt_manager_register_tensor(manager, "none", CKPT_DTYPE_F64, none_shape, 1,
                                        unused));
  char *restored = NULL;
  CHECK_OK(ckpt_manager_restore_or_initialize(manager, &restored));
  CHECK_STR(prefix, restored);
  CHECK(w[0] == 1.5f && w[1] == -2.0f);
  ckpt_string_free(restored);

  /* Their shapes are still checked: [0, 3] is not [3, 0]. */
  CHECK_OK(ckpt_manager_unregister_tensor(manager, "empty"));
  uint64_t transposed[2] = {0, 3};
  CHECK_OK(ckpt_manager_register_tensor(manager, "empty", CKPT_DTYPE_U16, transposed, 2, NULL));
  CHECK_FAILS(CKPT_STATUS_TENSOR_MISMATCH, "'empty'",
              ckpt_manager_restore_or_initialize(manager, &restored));
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  free(file);
  free(path);
  ckpt_string_free(prefix);
  free(unused);
  free(w);
}

/* ------------------------------------------------------------------------
 * Every dtype, saved and restored through the C API. */

#define DTYPES 13

typedef struct {
  char name[16];
  uint32_t dtype;
  uint64_t shape[3];
  size_t ndim;
  size_t bytes;
  unsigned char *data;
} host_tensor;

/* Tensor i has dtype i and a shape that cycles through scalar, 1-D, 3-D. */
static void make_tensors(host_tensor *tensors, unsigned char seed) {
  for (uint32_t i = 0; i < DTYPES; i++) {
    host_tensor *t = &tensors[i];
    snprintf(t->name, sizeof t->name, "t%u", (unsigned)i);
    t->dtype = i;
    t->ndim = i % 3 == 0 ? 0 : i % 3 == 1 ? 1 : 3;
    size_t count = 1;
    static const uint64_t dims[3] = {2, 3, 5};
    for (size_t d = 0; d < t->ndim; d++) {
      t->shape[d] = t->ndim == 1 ? 7 : dims[d];
      count *= (size_t)t->shape[d];
    }
    t->bytes = count * dtype_size(i);
    t->data = malloc(t->bytes);
    CHECK(t->data != NULL);
    for (size_t b = 0; b < t->bytes; b++)
      t->data[b] = i == CKPT_DTYPE_BOOL ? (unsigned char)((b + seed) & 1)
                                        : (unsigned char)(b * 13 + i * 29 + seed);
  }
}

static void register_all(ckpt_manager *manager, host_tensor *tensors) {
  for (size_t i = 0; i < DTYPES; i++)
    CHECK_OK(ckpt_manager_register_tensor(manager, tensors[i].name, tensors[i].dtype,
                                          tensors[i].ndim ? tensors[i].shape : NULL,
                                          tensors[i].ndim, tensors[i].data));
}

static void check_same(const host_tensor *a, const host_tensor *b, const char *what) {
  for (size_t i = 0; i < DTYPES; i++)
    if (memcmp(a[i].data, b[i].data, a[i].bytes) != 0)
      test_fail(__FILE__, __LINE__, "%s: tensor %s differs", what, a[i].name);
}

static void free_tensors(host_tensor *tensors) {
  for (size_t i = 0; i < DTYPES; i++) free(tensors[i].data);
}

static void all_dtypes_round_trip(const char *dir) {
  host_tensor saved[DTYPES], live[DTYPES], fresh[DTYPES];
  make_tensors(saved, 1);
  make_tensors(live, 1);
  int restores = 0;
  ckpt_options *options = bare_options(dir);
  CHECK_OK(ckpt_options_set_restore_callback(options, count_restore, &restores, NULL));
  ckpt_manager *manager = open_manager(options);
  register_all(manager, live);
  char *first = save(manager);
  CHECK(exists(dir, "ckpt-1.safetensors"));
  CHECK(exists(dir, "ckpt-1.ckpt-manifest.json"));
  CHECK_OK(ckpt_manager_verify(manager, NULL, true));

  /* Mutate, restore: the saved bytes come back. */
  for (size_t i = 0; i < DTYPES; i++) memset(live[i].data, 0x5A, live[i].bytes);
  char *restored = NULL;
  CHECK_OK(ckpt_manager_restore_or_initialize(manager, &restored));
  CHECK_STR(first, restored);
  CHECK(restores == 1);
  check_same(saved, live, "restored in place");
  ckpt_string_free(restored);

  /* Later saves; max_to_keep 2 deletes ckpt-1 with its tensor file. */
  ckpt_string_free(save(manager));
  ckpt_string_free(save(manager));
  CHECK(!exists(dir, "ckpt-1.safetensors"));
  CHECK(!exists(dir, "ckpt-1.ckpt-manifest.json"));
  CHECK(exists(dir, "ckpt-3.safetensors"));
  ckpt_manager_free(manager);

  /* A new manager with fresh, zeroed buffers restores the latest. */
  make_tensors(fresh, 0);
  for (size_t i = 0; i < DTYPES; i++) memset(fresh[i].data, 0, fresh[i].bytes);
  manager = open_manager(options);
  register_all(manager, fresh);
  CHECK_OK(ckpt_manager_restore_or_initialize(manager, &restored));
  CHECK(strcmp(base_name(restored), "ckpt-3") == 0);
  check_same(saved, fresh, "restored by a new manager");
  ckpt_string_free(restored);

  /* Saved without t5: restoring with t5 registered names it. */
  CHECK_OK(ckpt_manager_unregister_tensor(manager, "t5"));
  ckpt_string_free(save(manager));
  CHECK_OK(ckpt_manager_register_tensor(manager, "t5", fresh[5].dtype, fresh[5].shape,
                                        fresh[5].ndim, fresh[5].data));
  for (size_t i = 0; i < DTYPES; i++) memset(fresh[i].data, 0x11, fresh[i].bytes);
  restored = (char *)"untouched";
  restores = 0;
  CHECK_FAILS(CKPT_STATUS_TENSOR_MISMATCH, "'t5'",
              ckpt_manager_restore_or_initialize(manager, &restored));
  CHECK(restored == NULL);
  CHECK(restores == 0);
  for (size_t i = 0; i < DTYPES; i++)
    for (size_t b = 0; b < fresh[i].bytes; b++) CHECK(fresh[i].data[b] == 0x11);
  ckpt_manager_free(manager);

  /* With partial restore the others come back and t5 is left alone. */
  CHECK_OK(ckpt_options_set_partial_restore(options, true));
  manager = open_manager(options);
  register_all(manager, fresh);
  CHECK_OK(ckpt_manager_restore_or_initialize(manager, &restored));
  CHECK(strcmp(base_name(restored), "ckpt-4") == 0);
  ckpt_string_free(restored);
  for (size_t i = 0; i < DTYPES; i++) {
    if (i == 5) {
      for (size_t b = 0; b < fresh[i].bytes; b++) CHECK(fresh[i].data[b] == 0x11);
    } else {
      CHECK(memcmp(fresh[i].data, saved[i].data, saved[i].bytes) == 0);
    }
  }
  CHECK_FAILS(CKPT_STATUS_NULL_ARGUMENT, "options", ckpt_options_set_partial_restore(NULL, true));
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  ckpt_string_free(first);
  free_tensors(saved);
  free_tensors(live);
  free_tensors(fresh);
}

/* ------------------------------------------------------------------------
 * Hostile files. Each is committed as `<prefix>.safetensors` by a save
 * callback (no tensor registered then, so the manifest records it as it
 * is), then restored into two registered U8[4] buffers "a" and "b" full of
 * a sentinel. Most files describe a and b, so a reader that trusted any
 * single field would find names that match. */

typedef struct {
  const unsigned char *bytes;
  size_t length;
} file_bytes;

static int32_t write_tensor_file(void *user_data, const char *prefix, uint64_t number) {
  (void)number;
  const file_bytes *file = user_data;
  char *path = with_suffix(prefix, ".safetensors");
  write_bytes(path, file->bytes, file->length);
  free(path);
  return 0;
}

/* 8-byte little-endian length, the JSON, then `data_length` data bytes
 * (0x77), in a malloc'd buffer. */
static unsigned char *safetensors_file(uint64_t header_length, const char *json,
                                       size_t data_length, size_t *out_length) {
  size_t json_length = strlen(json);
  size_t length = 8 + json_length + data_length;
  unsigned char *bytes = malloc(length);
  CHECK(bytes != NULL);
  for (int i = 0; i < 8; i++) bytes[i] = (unsigned char)(header_length >> (8 * i));
  memcpy(bytes + 8, json, json_length);
  for (size_t i = 0; i < data_length; i++) bytes[8 + json_length + i] = (unsigned char)(0x70 + i);
  *out_length = length;
  return bytes;
}

typedef struct {
  const char *json;   /* NULL: raw bytes below */
  size_t data_length; /* bytes after the JSON */
  const char *raw;    /* used when json is NULL */
  size_t raw_length;
  ckpt_status expected;
  const char *needle1;
  const char *needle2;
  bool partial;
} hostile;

#define A4(lo, hi) "\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[" #lo "," #hi "]}"
#define B4(lo, hi) "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[" #lo "," #hi "]}"

static void run_hostile(const char *dir, const hostile *h) {
  size_t length = 0;
  unsigned char *bytes;
  if (h->json != NULL) {
    bytes = safetensors_file(strlen(h->json), h->json, h->data_length, &length);
  } else {
    length = h->raw_length;
    bytes = malloc(length ? length : 1);
    CHECK(bytes != NULL);
    memcpy(bytes, h->raw, length);
  }
  file_bytes file = {bytes, length};

  /* Commit it. */
  ckpt_options *options = bare_options(dir);
  CHECK_OK(ckpt_options_set_save_callback(options, write_tensor_file, &file, NULL));
  ckpt_manager *manager = open_manager(options);
  char *prefix = save(manager);
  CHECK(prefix != NULL);
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  char *path = with_suffix(prefix, ".safetensors");
  struct stat info;
  CHECK(stat(path, &info) == 0 && (size_t)info.st_size == length);

  /* Restore it into sentinels. */
  int restores = 0;
  log_text log = {""};
  options = bare_options(dir);
  CHECK_OK(ckpt_options_set_restore_callback(options, count_restore, &restores, NULL));
  CHECK_OK(ckpt_options_set_log_callback(options, collect_log, &log, NULL));
  CHECK_OK(ckpt_options_set_partial_restore(options, h->partial));
  manager = open_manager(options);
  uint64_t shape[1] = {4};
  unsigned char *a = malloc(4), *b = malloc(4);
  CHECK(a != NULL && b != NULL);
  memset(a, 0xA5, 4);
  memset(b, 0xA5, 4);
  CHECK_OK(ckpt_manager_register_tensor(manager, "a", CKPT_DTYPE_U8, shape, 1, a));
  CHECK_OK(ckpt_manager_register_tensor(manager, "b", CKPT_DTYPE_U8, shape, 1, b));
  char *restored = (char *)"untouched";
  reset_message();
  ckpt_status status = ckpt_manager_restore_or_initialize(manager, &restored);
  if (status != h->expected)
    test_fail(__FILE__, __LINE__, "restore returned %s, expected %s: %s",
              ckpt_status_name((uint32_t)status), ckpt_status_name((uint32_t)h->expected),
              ckpt_last_error_message());
  if (h->expected == CKPT_STATUS_OK) {
    CHECK(restored != NULL && strcmp(restored, prefix) == 0);
    ckpt_string_free(restored);
    CHECK(restores == 1);
  } else if (h->expected == CKPT_STATUS_TENSOR_MISMATCH) {
    /* A mismatch is the call's own error, naming the tensor. */
    check_message(__FILE__, __LINE__, h->needle1);
    if (h->needle2 != NULL) check_message(__FILE__, __LINE__, h->needle2);
  } else {
    check_message(__FILE__, __LINE__, "damaged");
    CHECK_REPORTED(&log, h->needle1);
    if (h->needle2 != NULL) CHECK_REPORTED(&log, h->needle2);
    /* Which file. */
    CHECK_REPORTED(&log, "ckpt-1.safetensors");
  }
  if (h->expected != CKPT_STATUS_OK) {
    CHECK(restored == NULL);
    CHECK(restores == 0);
    for (int i = 0; i < 4; i++) {
      if (a[i] != 0xA5 || b[i] != 0xA5)
        test_fail(__FILE__, __LINE__, "a buffer was written: a[%d]=%#x b[%d]=%#x", i,
                  a[i], i, b[i]);
    }
  }
  /* The file is left as it was. */
  FILE *handle = fopen(path, "rb");
  CHECK(handle != NULL);
  unsigned char *after = malloc(length + 1);
  CHECK(after != NULL);
  CHECK(fread(after, 1, length + 1, handle) == length);
  fclose(handle);
  CHECK(length == 0 || memcmp(after, bytes, length) == 0);

  free(after);
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  free(a);
  free(b);
  free(path);
  free(prefix);
  free(bytes);
}

#define DAMAGED CKPT_STATUS_CHECKPOINT_DAMAGED
#define MISMATCH CKPT_STATUS_TENSOR_MISMATCH

#define HOSTILE_JSON(case_name, json_text, data, status, n1, n2)     \
  static void case_name(const char *dir) {                           \
    static const hostile h = {json_text, data, NULL, 0, status, n1, n2, false}; \
    run_hostile(dir, &h);                                            \
  }
#define HOSTILE_RAW(case_name, raw_bytes, status, n1, n2)                        \
  static void case_name(const char *dir) {                                       \
    static const hostile h = {NULL, 0, raw_bytes, sizeof raw_bytes - 1, status, n1, n2, \
                              false};                                            \
    run_hostile(dir, &h);                                                        \
  }

HOSTILE_RAW(hostile_empty, "", DAMAGED, "shorter than a safetensors header", NULL)
HOSTILE_RAW(hostile_seven_bytes, "\x08\x00\x00\x00\x00\x00\x00", DAMAGED,
            "shorter than a safetensors header", NULL)
/* Claims 1000 header bytes; the file has 8 + 8. */
HOSTILE_RAW(hostile_header_beyond_file, "\xe8\x03\x00\x00\x00\x00\x00\x00{}      ",
            DAMAGED, "1000", NULL)
/* Claims 200,000,000 header bytes (over the 100 MB limit); 16 bytes long. */
HOSTILE_RAW(hostile_huge_header, "\x00\xc2\xeb\x0b\x00\x00\x00\x00{}      ", DAMAGED,
            "200000000", "limit")
/* Claims 2^64 - 1 header bytes: no overflow when adding the 8. */
HOSTILE_RAW(hostile_max_header_length, "\xff\xff\xff\xff\xff\xff\xff\xff{}      ", DAMAGED,
            "limit", NULL)
HOSTILE_JSON(hostile_not_json, "not json", 8, DAMAGED, "JSON", NULL)
HOSTILE_JSON(hostile_not_utf8, "{\"a\xff\":1}", 8, DAMAGED, "JSON", NULL)
HOSTILE_JSON(hostile_json_array, "[1,2,3]", 0, DAMAGED, "JSON object", NULL)
HOSTILE_JSON(hostile_overlap, "{" A4(0, 4) "," B4(2, 6) "}", 6, DAMAGED, "overlap", NULL)
/* b ends beyond the data: 8 bytes described, 6 present. */
HOSTILE_JSON(hostile_out_of_range, "{" A4(0, 4) "," B4(4, 8) "}", 6, DAMAGED, "holds 6", NULL)
/* b ends far beyond the file. */
HOSTILE_JSON(hostile_far_out_of_range,
             "{" A4(0, 4) "," B4(4, 1000000000000) "}", 8, DAMAGED, "'b'", NULL)
HOSTILE_JSON(hostile_gap, "{" A4(0, 4) "," B4(8, 12) "}", 12, DAMAGED, "gap", "'b'")
HOSTILE_JSON(hostile_reversed_offsets, "{" A4(4, 0) "," B4(4, 8) "}", 8, DAMAGED, "'a'",
             NULL)
/* a's offsets cover 8 bytes, its shape 4: a trusting copy would overflow a. */
HOSTILE_JSON(hostile_size_not_matching_shape, "{" A4(0, 8) "," B4(8, 12) "}", 12, DAMAGED,
             "'a'", "needs 4 bytes")
HOSTILE_JSON(hostile_shape_overflow,
             "{\"a\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],"
             "\"data_offsets\":[0,4]}," B4(4, 8) "}",
             8, DAMAGED, "'a'", "overflows")
HOSTILE_JSON(hostile_unknown_dtype,
             "{\"a\":{\"dtype\":\"C64\",\"shape\":[1],\"data_offsets\":[0,8]}," B4(8, 12) "}",
             12, DAMAGED, "'a'", "C64")
HOSTILE_JSON(hostile_missing_field, "{\"a\":{\"dtype\":\"U8\",\"shape\":[4]}," B4(0, 4) "}",
             4, DAMAGED, "'a'", "data_offsets")
HOSTILE_JSON(hostile_negative_offset,
             "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[-4,0]}," B4(0, 4) "}",
             4, DAMAGED, "'a'", NULL)
/* 12 data bytes, the tensors cover 8. */
HOSTILE_JSON(hostile_trailing_data, "{" A4(0, 4) "," B4(4, 8) "}", 12, DAMAGED, "cover 8", "holds 12")
HOSTILE_JSON(hostile_metadata_not_string,
             "{\"__metadata__\":{\"step\":1}," A4(0, 4) "," B4(4, 8) "}", 8, DAMAGED,
             "__metadata__", NULL)
/* Well-formed files whose tensors do not match the registered ones: b is
 * last in the file, so a restore that copied a before checking b fails. */
HOSTILE_JSON(hostile_dtype_mismatch,
             "{" A4(0, 4) ",\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
             8, MISMATCH, "'b'", "F32")
HOSTILE_JSON(hostile_shape_mismatch,
             "{" A4(0, 4) ",\"b\":{\"dtype\":\"U8\",\"shape\":[2,2],\"data_offsets\":[4,8]}}",
             8, MISMATCH, "'b'", "[2, 2]")
HOSTILE_JSON(hostile_unregistered_tensor,
             "{" A4(0, 4) "," B4(4, 8)
             ",\"c\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[8,12]}}",
             12, MISMATCH, "'c'", "not registered")
HOSTILE_JSON(hostile_missing_tensor, "{" A4(0, 4) "}", 4, MISMATCH, "'b'", "not in the checkpoint")
HOSTILE_JSON(hostile_no_tensors, "{}", 0, MISMATCH, "registered but not", NULL)

/* The two "one side only" files again, with partial restore: what matches
 * is restored, the rest left alone. */
static void partial_restore_files(const char *dir) {
  static const char *files[2] = {
      "{" A4(0, 4) "," B4(4, 8) ",\"c\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[8,12]}}",
      "{" A4(0, 4) "}",
  };
  static const size_t data_lengths[2] = {12, 4};
  for (int f = 0; f < 2; f++) {
    size_t length = 0;
    unsigned char *bytes = safetensors_file(strlen(files[f]), files[f], data_lengths[f], &length);
    file_bytes file = {bytes, length};
    char *sub = join(dir, f == 0 ? "extra" : "missing");
    ckpt_options *options = bare_options(sub);
    CHECK_OK(ckpt_options_set_save_callback(options, write_tensor_file, &file, NULL));
    ckpt_manager *manager = open_manager(options);
    ckpt_string_free(save(manager));
    ckpt_manager_free(manager);
    ckpt_options_free(options);

    options = bare_options(sub);
    CHECK_OK(ckpt_options_set_partial_restore(options, true));
    manager = open_manager(options);
    uint64_t shape[1] = {4};
    unsigned char *a = malloc(4), *b = malloc(4);
    CHECK(a != NULL && b != NULL);
    memset(a, 0xA5, 4);
    memset(b, 0xA5, 4);
    CHECK_OK(ckpt_manager_register_tensor(manager, "a", CKPT_DTYPE_U8, shape, 1, a));
    CHECK_OK(ckpt_manager_register_tensor(manager, "b", CKPT_DTYPE_U8, shape, 1, b));
    char *restored = NULL;
    CHECK_OK(ckpt_manager_restore_or_initialize(manager, &restored));
    CHECK(restored != NULL && strcmp(base_name(restored), "ckpt-1") == 0);
    ckpt_string_free(restored);
    static const unsigned char a_data[4] = {0x70, 0x71, 0x72, 0x73};
    static const unsigned char b_data[4] = {0x74, 0x75, 0x76, 0x77};
    static const unsigned char sentinel[4] = {0xA5, 0xA5, 0xA5, 0xA5};
    CHECK(memcmp(a, a_data, 4) == 0);
    CHECK(memcmp(b, f == 0 ? b_data : sentinel, 4) == 0);
    ckpt_manager_free(manager);
    ckpt_options_free(options);
    free(a);
    free(b);
    free(sub);
    free(bytes);
  }
}

/* A save callback that writes its own file beside the built-in one: both
 * are in the checkpoint (verified, deleted with it) and both restores run. */
typedef struct {
  int saves;
  int restores;
  char last_restored[64];
} side_file;

static int32_t save_side(void *user_data, const char *prefix, uint64_t number) {
  side_file *side = user_data;
  char *path = with_suffix(prefix, ".extra");
  unsigned char byte = (unsigned char)number;
  write_bytes(path, &byte, 1);
  free(path);
  side->saves++;
  return 0;
}

static int32_t restore_side(void *user_data, const char *prefix) {
  side_file *side = user_data;
  snprintf(side->last_restored, sizeof side->last_restored, "%s", base_name(prefix));
  side->restores++;
  return 0;
}

static void callback_and_builtin_saver(const char *dir) {
  side_file side = {0, 0, ""};
  ckpt_options *options = bare_options(dir);
  CHECK_OK(ckpt_options_set_save_callback(options, save_side, &side, NULL));
  CHECK_OK(ckpt_options_set_restore_callback(options, restore_side, &side, NULL));
  ckpt_manager *manager = open_manager(options);
  uint64_t shape[2] = {3, 2};
  int32_t *w = malloc(6 * sizeof *w);
  CHECK(w != NULL);
  CHECK_OK(ckpt_manager_register_tensor(manager, "w", CKPT_DTYPE_I32, shape, 2, w));
  for (int round = 1; round <= 3; round++) {
    for (int i = 0; i < 6; i++) w[i] = round * 100 + i;
    ckpt_string_free(save(manager));
  }
  CHECK(side.saves == 3);
  CHECK(!exists(dir, "ckpt-1.extra") && !exists(dir, "ckpt-1.safetensors"));
  CHECK(exists(dir, "ckpt-3.extra") && exists(dir, "ckpt-3.safetensors"));
  char *manifest_path = join(dir, "ckpt-3.ckpt-manifest.json");
  char *manifest = read_text(manifest_path);
  CHECK(manifest != NULL);
  CHECK(strstr(manifest, "\".extra\"") != NULL);
  CHECK(strstr(manifest, "\".safetensors\"") != NULL);
  free(manifest);
  free(manifest_path);

  memset(w, 0, 6 * sizeof *w);
  char *restored = NULL;
  CHECK_OK(ckpt_manager_restore_or_initialize(manager, &restored));
  CHECK(strcmp(base_name(restored), "ckpt-3") == 0);
  ckpt_string_free(restored);
  CHECK(side.restores == 1);
  CHECK_STR("ckpt-3", side.last_restored);
  for (int i = 0; i < 6; i++) CHECK(w[i] == 300 + i);

  /* The callback's file is checked too: damaged, it sends both restores
   * back to ckpt-2. */
  char *extra = join(dir, "ckpt-3.extra");
  unsigned char other = 0xEE;
  write_bytes(extra, &other, 1);
  free(extra);
  CHECK_OK(ckpt_manager_restore_or_initialize(manager, &restored));
  CHECK(strcmp(base_name(restored), "ckpt-2") == 0);
  ckpt_string_free(restored);
  CHECK(side.restores == 2);
  CHECK_STR("ckpt-2", side.last_restored);
  for (int i = 0; i < 6; i++) CHECK(w[i] == 200 + i);
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  free(w);
}

int main(int argc, char **argv) {
  static const test_case cases[] = {
      {"registration_errors", registration_errors},
      {"empty_tensors", empty_tensors},
      {"all_dtypes_round_trip", all_dtypes_round_trip},
      {"callback_and_builtin_saver", callback_and_builtin_saver},
      {"partial_restore_files", partial_restore_files},
      {"hostile_empty", hostile_empty},
      {"hostile_seven_bytes", hostile_seven_bytes},
      {"hostile_header_beyond_file", hostile_header_beyond_file},
      {"hostile_huge_header", hostile_huge_header},
      {"hostile_max_header_length", hostile_max_header_length},
      {"hostile_not_json", hostile_not_json},
      {"hostile_not_utf8", hostile_not_utf8},
      {"hostile_json_array", hostile_json_array},
      {"hostile_overlap", hostile_overlap},
      {"hostile_out_of_range", hostile_out_of_range},
      {"hostile_far_out_of_range", hostile_far_out_of_range},
      {"hostile_gap", hostile_gap},
      {"hostile_reversed_offsets", hostile_reversed_offsets},
      {"hostile_size_not_matching_shape", hostile_size_not_matching_shape},
      {"hostile_shape_overflow", hostile_shape_overflow},
      {"hostile_unknown_dtype", hostile_unknown_dtype},
      {"hostile_missing_field", hostile_missing_field},
      {"hostile_negative_offset", hostile_negative_offset},
      {"hostile_trailing_data", hostile_trailing_data},
      {"hostile_metadata_not_string", hostile_metadata_not_string},
      {"hostile_dtype_mismatch", hostile_dtype_mismatch},
      {"hostile_shape_mismatch", hostile_shape_mismatch},
      {"hostile_unregistered_tensor", hostile_unregistered_tensor},
      {"hostile_missing_tensor", hostile_missing_tensor},
      {"hostile_no_tensors", hostile_no_tensors},
  };
  return run_test_case(cases, sizeof cases / sizeof cases[0], argc, argv);
}
