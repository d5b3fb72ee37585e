/* Tensors across ranks with real MPI ranks: sharded tensors in row, column,
 * 2-D block and uneven layouts (a rank holding no box included), replicated
 * tensors and a rank-local one, saved by one number of ranks and restored by
 * another, or by one process without a communicator. Every tensor's global
 * value is known from its name and the checkpoint's number, so each rank
 * checks the elements of its own boxes.
 *
 * Usage: mpirun -np N mpi_reshard CASE WORKDIR [KEY=VALUE...]
 *   save      saves checkpoints 1 to `count` (default 1)
 *   restore   restores; checkpoint `number` (default `count`) must come back,
 *             saved by `saved` ranks (default 4)
 *   bad       saves 1, then a save where one rank registers `bad` wrongly
 *             (overlap, dtype, shape, ndim, kind) or holds other bytes of a
 *             replicated tensor (replica) fails on every rank with
 *             CKPT_STATUS_INVALID_ARGUMENT or TENSOR_MISMATCH and commits
 *             nothing; `bad=box` is a box outside its tensor, refused when
 *             registered
 * Keys: dir=DIR (default WORKDIR/ckpt; an s3:// URL too), comm=0 (one process
 * without a communicator, every tensor whole through
 * ckpt_manager_register_tensor), flip=1 (every sharded tensor in the
 * other layout: rows as columns, a 2x4 grid as 4x2, uneven splits reversed),
 * sparse=1 (the last rank does not register "rows": its rows are never
 * saved), local=1 (every tensor rank-local, each rank's box as its own
 * tensor, as a library without tensor tables saved them), unmatched=refuse|skip|init, expect=STATUS (restore: the status
 * every rank must get) and message=TEXT (in its message).
 *
 * Each rank writes WORKDIR/rank-<r>.log and, once its case passed, "pass". */
#define _POSIX_C_SOURCE 200809L
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mpi_support.h"

#define TIMEOUT 60.0

static char checkpoint_dir[4096];
static bool with_comm = true;
static bool flip;
static bool sparse;
static bool all_rank_local;
static int saved_ranks = 4;
static const char *unmatched = "refuse";
static const char *bad = "";
static const char *expect = "CKPT_STATUS_OK";
static const char *message = "";
static unsigned long long count = 1;
static unsigned long long number;
static int init_calls;

#define CHECK_STATUS(expected, call)                                                      \
  do {                                                                                    \
    ckpt_status got_ = (call);                                                            \
    if (got_ != (expected))                                                               \
      fail(__LINE__, "%s returned %s, expected %s: %s", #call, ckpt_status_name(got_), \
           ckpt_status_name(expected), ckpt_last_error_message());                       \
  } while (0)

/* A tensor of the test: its global shape, and this rank's box of it. */
struct tensor {
  const char *name;
  int id;
  ckpt_dtype dtype;
  size_t ndim;
  uint64_t global[2];
  uint64_t offset[2];
  uint64_t local[2];
  void *data;
  size_t bytes;
};

enum { ROWS, COLS, BLOCKS, UNEVEN, EMB, BIAS, STEP, RNG, TENSORS };
static struct tensor tensors[TENSORS];

/* Element `k` of tensor `id` in checkpoint `n`. */
static double global_value(int id, unsigned long long n, uint64_t k) {
  return (double)(id * 100000 + (int)n * 1000 + (int)k);
}

/* The rank-local tensor's byte `i` of rank `rank` in checkpoint `n`. */
static uint8_t rng_value(int rank, unsigned long long n, int i) {
  return (uint8_t)(rank * 16 + i + (int)n);
}

static void split(uint64_t n, int parts, int part, uint64_t *start, uint64_t *length) {
  *start = n * (uint64_t)part / (uint64_t)parts;
  *length = n * (uint64_t)(part + 1) / (uint64_t)parts - *start;
}

/* Rank r's share of n when rank r weighs r (rank 0, nothing), or size-1-r flipped. */
static void weighted(uint64_t n, int ranks, int rank, bool reversed, uint64_t *start,
                     uint64_t *length) {
  if (ranks == 1) {
    *start = 0;
    *length = n;
    return;
  }
  uint64_t total = (uint64_t)ranks * (uint64_t)(ranks - 1) / 2, before = 0;
  for (int r = 0; r < rank; r++) before += (uint64_t)(reversed ? ranks - 1 - r : r);
  uint64_t mine = (uint64_t)(reversed ? ranks - 1 - rank : rank);
  *start = n * before / total;
  *length = n * (before + mine) / total - *start;
}

static size_t elements(const struct tensor *t) {
  size_t n = 1;
  for (size_t d = 0; d < t->ndim; d++) n *= (size_t)t->local[d];
  return n;
}

static size_t dtype_size(ckpt_dtype dtype) {
  switch (dtype) {
    case CKPT_DTYPE_F64:
    case CKPT_DTYPE_I64: return 8;
    case CKPT_DTYPE_F32:
    case CKPT_DTYPE_I32: return 4;
    default: return 1;
  }
}

static void define(int which, const char *name, ckpt_dtype dtype, size_t ndim, uint64_t g0,
                   uint64_t g1) {
  struct tensor *t = &tensors[which];
  t->name = name;
  t->id = which + 1;
  t->dtype = dtype;
  t->ndim = ndim;
  t->global[0] = g0;
  t->global[1] = g1;
  for (size_t d = 0; d < 2; d++) {
    t->offset[d] = 0;
    t->local[d] = t->global[d];
  }
}

/* Every tensor's global shape and this rank's box, for `ranks` ranks. */
static void lay_out(int rank, int ranks) {
  define(ROWS, "rows", CKPT_DTYPE_F32, 2, 13, 4);
  define(COLS, "cols", CKPT_DTYPE_F32, 2, 4, 11);
  define(BLOCKS, "blocks", CKPT_DTYPE_I32, 2, 6, 10);
  define(UNEVEN, "uneven", CKPT_DTYPE_F64, 1, 10, 1);
  define(EMB, "emb", CKPT_DTYPE_F64, 2, 7, 3);
  define(BIAS, "bias", CKPT_DTYPE_I32, 1, 5, 1);
  define(STEP, "step", CKPT_DTYPE_I64, 0, 1, 1);
  define(RNG, "rng", CKPT_DTYPE_U8, 1, 8, 1);
  if (with_comm) {
    struct tensor *by_rows = &tensors[flip ? COLS : ROWS], *by_cols = &tensors[flip ? ROWS : COLS];
    split(by_rows->global[0], ranks, rank, &by_rows->offset[0], &by_rows->local[0]);
    split(by_cols->global[1], ranks, rank, &by_cols->offset[1], &by_cols->local[1]);
    int grid_rows = 1;
    for (int g = 1; g * g <= ranks; g++)
      if (ranks % g == 0) grid_rows = g;
    int grid_cols = ranks / grid_rows;
    if (flip) {
      int swap = grid_rows;
      grid_rows = grid_cols;
      grid_cols = swap;
    }
    struct tensor *blocks = &tensors[BLOCKS];
    split(blocks->global[0], grid_rows, rank / grid_cols, &blocks->offset[0], &blocks->local[0]);
    split(blocks->global[1], grid_cols, rank % grid_cols, &blocks->offset[1], &blocks->local[1]);
    struct tensor *uneven = &tensors[UNEVEN];
    weighted(uneven->global[0], ranks, rank, flip, &uneven->offset[0], &uneven->local[0]);
  }
  for (int i = 0; i < TENSORS; i++) {
    struct tensor *t = &tensors[i];
    t->bytes = elements(t) * dtype_size(t->dtype);
    free(t->data);
    t->data = calloc(1, t->bytes + 8);
    CHECK(t->data != NULL);
  }
}

/* The global index of element `e` of this rank's box of `t`. */
static uint64_t global_index(const struct tensor *t, size_t e) {
  if (t->ndim < 2) return t->offset[0] * (t->ndim == 1) + e;
  uint64_t row = t->offset[0] + e / t->local[1], col = t->offset[1] + e % t->local[1];
  return row * t->global[1] + col;
}

static void store_value(const struct tensor *t, size_t e, double v) {
  switch (t->dtype) {
    case CKPT_DTYPE_F64: ((double *)t->data)[e] = v; break;
    case CKPT_DTYPE_F32: ((float *)t->data)[e] = (float)v; break;
    case CKPT_DTYPE_I64: ((int64_t *)t->data)[e] = (int64_t)v; break;
    case CKPT_DTYPE_I32: ((int32_t *)t->data)[e] = (int32_t)v; break;
    default: ((uint8_t *)t->data)[e] = (uint8_t)v; break;
  }
}

static double load_value(const struct tensor *t, size_t e) {
  switch (t->dtype) {
    case CKPT_DTYPE_F64: return ((double *)t->data)[e];
    case CKPT_DTYPE_F32: return ((float *)t->data)[e];
    case CKPT_DTYPE_I64: return (double)((int64_t *)t->data)[e];
    case CKPT_DTYPE_I32: return ((int32_t *)t->data)[e];
    default: return ((uint8_t *)t->data)[e];
  }
}

/* This rank's values of checkpoint `n` in every buffer. */
static void fill(unsigned long long n) {
  for (int i = 0; i < TENSORS; i++) {
    const struct tensor *t = &tensors[i];
    for (size_t e = 0; e < elements(t); e++) {
      store_value(t, e, i == RNG ? rng_value(world_rank, n, (int)e)
                                 : global_value(t->id, n, global_index(t, e)));
    }
  }
}

static void register_all(ckpt_manager *manager) {
  for (int i = 0; i < TENSORS; i++) {
    const struct tensor *t = &tensors[i];
    if (!with_comm || i == RNG || all_rank_local) {
      CHECK_STATUS(CKPT_STATUS_OK, ckpt_manager_register_tensor(manager, t->name, t->dtype,
                                                                t->local, t->ndim, t->data));
    } else if (i == EMB || i == BIAS || i == STEP) {
      CHECK_STATUS(CKPT_STATUS_OK, ckpt_manager_register_replicated_tensor(
                                       manager, t->name, t->dtype, t->global, t->ndim, t->data));
    } else if (!(sparse && i == ROWS && world_rank == world_size - 1)) {
      CHECK_STATUS(CKPT_STATUS_OK,
                   ckpt_manager_register_tensor_slice(manager, t->name, t->dtype, t->global,
                                                      t->offset, t->local, t->ndim, t->data));
    }
  }
}

static int32_t count_init(void *user_data) {
  (void)user_data;
  init_calls++;
  return 0;
}

static ckpt_communicator communicator;

static ckpt_manager *open_manager(void) {
  ckpt_options *options = NULL;
  CHECK_STATUS(CKPT_STATUS_OK, ckpt_options_new(&options));
  CHECK_STATUS(CKPT_STATUS_OK, ckpt_options_set_directory(options, checkpoint_dir));
  CHECK_STATUS(CKPT_STATUS_OK, ckpt_options_set_max_to_keep(options, 3));
  if (with_comm) {
    CHECK(ckpt_mpi_communicator_new(MPI_COMM_WORLD, &communicator) == 0);
    CHECK_STATUS(CKPT_STATUS_OK, ckpt_options_set_communicator(options, &communicator));
    CHECK_STATUS(CKPT_STATUS_OK, ckpt_options_set_coordination_timeout(options, TIMEOUT));
  }
  ckpt_unmatched_rank_local mode = CKPT_UNMATCHED_RANK_LOCAL_REFUSE;
  if (strcmp(unmatched, "skip") == 0) mode = CKPT_UNMATCHED_RANK_LOCAL_SKIP;
  if (strcmp(unmatched, "init") == 0) mode = CKPT_UNMATCHED_RANK_LOCAL_INITIALIZE;
  CHECK_STATUS(CKPT_STATUS_OK, ckpt_options_set_unmatched_rank_local(options, mode));
  CHECK_STATUS(CKPT_STATUS_OK, ckpt_options_set_init_callback(options, count_init, NULL, NULL));
  ckpt_manager *manager = NULL;
  CHECK_STATUS(CKPT_STATUS_OK, ckpt_manager_new(options, &manager));
  ckpt_options_free(options);
  return manager;
}

static void close_manager(ckpt_manager *manager) {
  ckpt_manager_free(manager);
  if (with_comm) ckpt_mpi_communicator_free(&communicator);
}

static bool ends_with(const char *text, const char *end) {
  size_t length = strlen(text), end_length = strlen(end);
  return length >= end_length && strcmp(text + length - end_length, end) == 0;
}

static void save_checkpoints(void) {
  lay_out(world_rank, with_comm ? world_size : 1);
  ckpt_manager *manager = open_manager();
  register_all(manager);
  for (unsigned long long n = 1; n <= count; n++) {
    fill(n);
    char *prefix = NULL;
    CHECK_STATUS(CKPT_STATUS_OK, ckpt_manager_save(manager, NULL, false, &prefix));
    note("saved %s", prefix);
    char end[64];
    snprintf(end, sizeof end, "/ckpt-%llu", n);
    CHECK(ends_with(prefix, end));
    ckpt_string_free(prefix);
  }
  close_manager(manager);
}

static ckpt_status status_named(const char *name) {
  for (ckpt_status status = 0; status < 64; status++) {
    if (strcmp(ckpt_status_name(status), name) == 0) return status;
  }
  fail(__LINE__, "no status %s", name);
  return 0;
}

/* Every element of every box this rank registered is checkpoint `number`'s. */
static void check_values(void) {
  const int rank = with_comm ? world_rank : 0;
  const int ranks = with_comm ? world_size : 1;
  for (int i = 0; i < TENSORS; i++) {
    const struct tensor *t = &tensors[i];
    if (sparse && i == ROWS && rank == ranks - 1) continue;
    for (size_t e = 0; e < elements(t); e++) {
      double expected = global_value(t->id, number, global_index(t, e));
      if (i == RNG) {
        /* A rank that saved no piece keeps its buffer (zeros). */
        expected = rank < saved_ranks ? rng_value(rank, number, (int)e) : 0;
      }
      if (load_value(t, e) != expected) {
        fail(__LINE__, "%s element %zu (global %llu) is %g, not %g", t->name, e,
             (unsigned long long)global_index(t, e), load_value(t, e), expected);
      }
    }
  }
  const bool initialized = strcmp(unmatched, "init") == 0 && rank >= saved_ranks;
  CHECK(init_calls == (initialized ? 1 : 0));
}

static void restore(void) {
  lay_out(world_rank, with_comm ? world_size : 1);
  ckpt_manager *manager = open_manager();
  register_all(manager);
  char *prefix = NULL;
  const ckpt_status expected = status_named(expect);
  const double start = now();
  const ckpt_status status = ckpt_manager_restore_or_initialize(manager, &prefix);
  note("restore returned %s after %.3f s: %s", ckpt_status_name(status), now() - start,
       status == CKPT_STATUS_OK ? prefix : ckpt_last_error_message());
  CHECK(status == expected);
  if (status != CKPT_STATUS_OK) {
    CHECK(strstr(ckpt_last_error_message(), message) != NULL);
    for (int i = 0; i < TENSORS; i++) {
      for (size_t b = 0; b < tensors[i].bytes; b++) CHECK(((uint8_t *)tensors[i].data)[b] == 0);
    }
    close_manager(manager);
    return;
  }
  char end[64];
  snprintf(end, sizeof end, "/ckpt-%llu", number);
  if (!ends_with(prefix, end)) fail(__LINE__, "restored %s, not ckpt-%llu", prefix, number);
  ckpt_string_free(prefix);
  check_values();
  close_manager(manager);
}

/* The latest checkpoint as the state file names it. */
static void latest(char *text, size_t size) {
  snprintf(text, size, "none");
  ckpt_checkpoint_state *found = NULL;
  if (ckpt_get_checkpoint_state(checkpoint_dir, &found) == CKPT_STATUS_OK && found != NULL) {
    const char *path = ckpt_checkpoint_state_model_checkpoint_path(found);
    snprintf(text, size, "%s", path != NULL ? path : "none");
    ckpt_checkpoint_state_free(found);
  }
}

static void bad_save(void) {
  lay_out(world_rank, world_size);
  ckpt_manager *manager = open_manager();
  register_all(manager);
  fill(1);
  char *prefix = NULL;
  CHECK_STATUS(CKPT_STATUS_OK, ckpt_manager_save(manager, NULL, false, &prefix));
  ckpt_string_free(prefix);
  const int culprit = 1;
  char before[4096], after[4096];
  latest(before, sizeof before);
  if (strcmp(bad, "replica") == 0) {
    /* One rank's copy of a replicated tensor differs. */
    if (world_rank == culprit) ((double *)tensors[EMB].data)[4] += 1;
    const ckpt_status status = ckpt_manager_save(manager, NULL, false, &prefix);
    note("bad save returned %s: %s", ckpt_status_name(status), ckpt_last_error_message());
    CHECK(status == CKPT_STATUS_TENSOR_MISMATCH);
    CHECK(strstr(ckpt_last_error_message(), "'emb' is registered as replicated") != NULL);
    latest(after, sizeof after);
    CHECK(strcmp(before, after) == 0);
    close_manager(manager);
    return;
  }
  struct tensor *rows = &tensors[ROWS];
  CHECK_STATUS(CKPT_STATUS_OK, ckpt_manager_unregister_tensor(manager, rows->name));
  ckpt_status expected = CKPT_STATUS_TENSOR_MISMATCH;
  uint64_t offset[3] = {rows->offset[0], rows->offset[1], 0};
  uint64_t local[3] = {rows->local[0], rows->local[1], 1};
  uint64_t global[3] = {rows->global[0], rows->global[1], 1};
  ckpt_dtype dtype = rows->dtype;
  size_t ndim = 2;
  bool replicated = false;
  if (world_rank == culprit) {
    if (strcmp(bad, "overlap") == 0) {
      offset[0] -= 1;
      expected = CKPT_STATUS_INVALID_ARGUMENT;
    } else if (strcmp(bad, "dtype") == 0) {
      dtype = CKPT_DTYPE_I32;
    } else if (strcmp(bad, "shape") == 0) {
      global[1] += 1;
    } else if (strcmp(bad, "ndim") == 0) {
      ndim = 3;
    } else if (strcmp(bad, "kind") == 0) {
      replicated = true;
    } else if (strcmp(bad, "box") == 0) {
      offset[1] = 1;
    } else {
      fail(__LINE__, "unknown bad input %s", bad);
    }
  } else if (strcmp(bad, "overlap") == 0) {
    expected = CKPT_STATUS_INVALID_ARGUMENT;
  }
  if (strcmp(bad, "box") == 0) {
    /* Refused where it is registered; that rank's save then lacks it. */
    const ckpt_status status =
        ckpt_manager_register_tensor_slice(manager, rows->name, dtype, global, offset, local, ndim,
                                           rows->data);
    note("registering returned %s: %s", ckpt_status_name(status), ckpt_last_error_message());
    CHECK(status == (world_rank == culprit ? CKPT_STATUS_INVALID_ARGUMENT : CKPT_STATUS_OK));
    if (world_rank == culprit) {
      CHECK(strstr(ckpt_last_error_message(), "outside the global shape") != NULL);
    }
    close_manager(manager);
    return;
  }
  if (replicated) {
    CHECK_STATUS(CKPT_STATUS_OK, ckpt_manager_register_replicated_tensor(
                                     manager, rows->name, dtype, global, ndim, rows->data));
  } else {
    CHECK_STATUS(CKPT_STATUS_OK,
                 ckpt_manager_register_tensor_slice(manager, rows->name, dtype, global, offset,
                                                    local, ndim, rows->data));
  }
  const ckpt_status status = ckpt_manager_save(manager, NULL, false, &prefix);
  note("bad save returned %s: %s", ckpt_status_name(status), ckpt_last_error_message());
  CHECK(status == expected);
  CHECK(prefix == NULL);
  CHECK(strstr(ckpt_last_error_message(), "'rows'") != NULL);
  latest(after, sizeof after);
  CHECK(strcmp(before, after) == 0);
  CHECK(ends_with(after, "/ckpt-1"));
  close_manager(manager);
}

int main(int argc, char **argv) {
  start_rank(&argc, &argv, "mpi_reshard", "CASE WORKDIR [KEY=VALUE...]");
  snprintf(checkpoint_dir, sizeof checkpoint_dir, "%s/ckpt", argv[2]);
  bool number_given = false;
  for (int i = 3; i < argc; i++) {
    char *value = strchr(argv[i], '=');
    CHECK(value != NULL);
    *value++ = '\0';
    const char *key = argv[i];
    if (strcmp(key, "dir") == 0) snprintf(checkpoint_dir, sizeof checkpoint_dir, "%s", value);
    else if (strcmp(key, "comm") == 0) with_comm = strcmp(value, "0") != 0;
    else if (strcmp(key, "flip") == 0) flip = strcmp(value, "0") != 0;
    else if (strcmp(key, "sparse") == 0) sparse = strcmp(value, "0") != 0;
    else if (strcmp(key, "local") == 0) all_rank_local = strcmp(value, "0") != 0;
    else if (strcmp(key, "saved") == 0) saved_ranks = atoi(value);
    else if (strcmp(key, "count") == 0) count = strtoull(value, NULL, 10);
    else if (strcmp(key, "number") == 0) number = strtoull(value, NULL, 10), number_given = true;
    else if (strcmp(key, "unmatched") == 0) unmatched = value;
    else if (strcmp(key, "bad") == 0) bad = value;
    else if (strcmp(key, "expect") == 0) expect = value;
    else if (strcmp(key, "message") == 0) message = value;
    else fail(__LINE__, "unknown key %s", key);
  }
  if (!number_given) number = count;
  const char *which = argv[1];
  if (strcmp(which, "save") == 0) save_checkpoints();
  else if (strcmp(which, "restore") == 0) restore();
  else if (strcmp(which, "bad") == 0) bad_save();
  else fail(__LINE__, "unknown case %s", which);
  note("pass");
  fclose(rank_log);
  MPI_Finalize();
  return 0;
}
