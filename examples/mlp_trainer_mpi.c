/*
 * The demo trainer, data-parallel over MPI ranks: the MLP of mlp_trainer.c
 * (mlp_model.h: 8 -> 32 -> 1 tanh, Adam, a synthetic dataset from --seed), its
 * minibatch of 32 split across the ranks, checkpointed collectively by
 * ckpt-manager through the MPI adapter (include/ckpt_manager_mpi.h).
 *
 * Each step every rank draws the same minibatch indices from the shared
 * generator and takes the samples b with b % size == rank. A rank perturbs
 * its samples' inputs with a little noise from a generator of its own (data
 * augmentation), so each rank has state the others lack. The ranks
 * all-gather their gradients and every rank sums them in rank order, then
 * applies the same Adam update: the result does not depend on how MPI
 * reduces, so it is the same bits run after run.
 *
 * Every rank registers the weights, Adam's moments, the step, the shared
 * generator and the seed as replicated tensors (the same on every rank: each
 * is saved once, by one of the ranks), and its own state as rank-local: its
 * noise generator ("rank_rng") and how many samples it has trained on
 * ("samples_seen"). A save writes one safetensors file per rank,
 * ckpt-<step>.rank-RRRRR-of-SSSSS.safetensors. A restore gives every rank the
 * replicated tensors and its own state back, on any number of ranks: resumed
 * by fewer ranks, the state of the ranks that are gone is dropped; by more,
 * a new rank starts its own state fresh.
 *
 * Usage: mpirun -np N mlp_trainer_mpi DIRECTORY [--steps N] [--save-every K]
 *                    [--keep M] [--seed S] [--stop-at STEP] [--export FILE]
 *                    [--export-resumed FILE] [--log-dir DIR] [--timeout SECONDS]
 *                    [--kill-rank R --kill-at STEP]
 *   --steps, --save-every, --keep, --seed, --stop-at, --export
 *                   as in mlp_trainer.c (defaults 2000, 100, 3, 42); rank 0
 *                   writes the export
 *   --export-resumed FILE
 *                   rank 0 writes the weights as restored, before training
 *                   on (raw float32, as --export)
 *   --log-dir DIR   each rank also writes its lines to DIR/rank-R.log
 *                   (rank 0 prints them on stdout as well)
 *   --timeout SECONDS
 *                   how long a rank waits for the others in a save, a
 *                   restore or a gradient exchange (default 60)
 *   --kill-rank R --kill-at STEP
 *                   rank R SIGKILLs itself at step STEP, before that step's
 *                   save: the others time out and the job ends with
 *                   MPI_Abort (run with OMPI_MCA_orte_enable_recovery=1 so
 *                   that mpirun lets them get there)
 *
 * A rank that fails (a save that times out included) prints why and ends
 * the job with MPI_Abort. Deterministic for a given number of ranks, with
 * the compiler and flags of the run it is compared with (no -ffast-math).
 */
#define _POSIX_C_SOURCE 200809L

#include <inttypes.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt_manager_mpi.h"
#include "mlp_model.h"

static const float AUGMENTATION_NOISE = 0.01f;

enum { PARAM_COUNT = sizeof(params) / sizeof(float) };

/* Everything a rank's checkpoint holds. */
typedef struct {
  params weights, adam_m, adam_v; /* the same on every rank */
  int64_t step;
  uint64_t rng;  /* the shared minibatch generator */
  uint64_t seed; /* the run's --seed, checked on resume */
  uint64_t rank_rng;    /* this rank's augmentation noise */
  int64_t samples_seen; /* by this rank */
} train_state;

static int rank, ranks;
static FILE *rank_log;
static double timeout_seconds = 60.0;

/* A line for this rank's log; rank 0 prints it on stdout too. */
static void say(const char *format, ...) {
  va_list args;
  if (rank == 0) {
    va_start(args, format);
    vprintf(format, args);
    va_end(args);
    putchar('\n');
  }
  if (rank_log != NULL) {
    va_start(args, format);
    vfprintf(rank_log, format, args);
    va_end(args);
    fputc('\n', rank_log);
    fflush(rank_log);
  }
}

/* Ends the job: once one rank fails, the others cannot go on. */
static void die(const char *format, ...) {
  char text[1024];
  va_list args;
  va_start(args, format);
  vsnprintf(text, sizeof text, format, args);
  va_end(args);
  fprintf(stderr, "rank %d: %s\n", rank, text);
  if (rank_log != NULL) {
    fprintf(rank_log, "failed: %s\n", text);
    fflush(rank_log);
  }
  MPI_Abort(MPI_COMM_WORLD, 1);
  exit(1);
}

static void check(ckpt_status status, const char *what) {
  if (status != CKPT_STATUS_OK)
    die("%s: %s: %s", what, ckpt_status_name(status), ckpt_last_error_message());
}

/* STREAM_RANK + r is rank r's noise. */
enum { STREAM_RANK = 1000 };

/* A rank's own state at the start of a run; also what a rank keeps when it
 * resumes a checkpoint saved by fewer ranks, which has no piece for it. */
static void initialize_rank_state(train_state *st) {
  st->rank_rng = stream(st->seed, STREAM_RANK + (uint64_t)rank);
  st->samples_seen = 0;
}

/* The init callback: a fresh run, on every rank. */
static int32_t initialize(void *user_data) {
  train_state *st = user_data;
  initialize_params(st->seed, &st->weights, &st->adam_m, &st->adam_v);
  st->step = 0;
  st->rng = stream(st->seed, STREAM_BATCHES);
  initialize_rank_state(st);
  return 0;
}

/* MPI_Iallgather polled until `timeout_seconds`: a dead rank ends the job
 * with a message rather than a hang. */
static void all_gather_gradients(const params *mine, params *all) {
  MPI_Request request;
  if (MPI_Iallgather(mine, PARAM_COUNT, MPI_FLOAT, all, PARAM_COUNT, MPI_FLOAT, MPI_COMM_WORLD,
                     &request) != MPI_SUCCESS)
    die("MPI_Iallgather failed");
  const double deadline = MPI_Wtime() + timeout_seconds;
  int done = 0;
  while (MPI_Test(&request, &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && !done) {
    if (MPI_Wtime() > deadline) die("the gradient exchange timed out");
    sched_yield(); /* the ranks may share cores */
  }
  if (!done) die("MPI_Test failed");
}

/* One step: this rank's share of the minibatch, the gradients of all
 * ranks summed in rank order, Adam on every parameter tensor. */
static void train_step(train_state *st, const dataset *data, params *gathered) {
  params grad;
  memset(&grad, 0, sizeof grad);
  const params *p = &st->weights;
  for (int b = 0; b < BATCH; b++) {
    const uint32_t s = below(&st->rng, SAMPLES); /* every rank draws every index */
    if (b % ranks != rank) continue;
    float x[INPUTS];
    for (int i = 0; i < INPUTS; i++)
      x[i] = data->x[s][i] + uniform(&st->rank_rng, AUGMENTATION_NOISE);
    st->samples_seen++;
    add_gradient(p, x, data->y[s], &grad);
  }
  all_gather_gradients(&grad, gathered);
  float *sum = (float *)&grad;
  memcpy(sum, &gathered[0], sizeof grad);
  for (int r = 1; r < ranks; r++) {
    const float *part = (const float *)&gathered[r];
    for (size_t k = 0; k < PARAM_COUNT; k++) sum[k] += part[k];
  }
  const int64_t t = st->step + 1;
  adam_step(&st->weights, &st->adam_m, &st->adam_v, &grad, t);
  st->step = t;
}

/* A collective save numbered by the step: ckpt-<step>. */
static void save(ckpt_manager *manager, const train_state *st, const dataset *data) {
  const uint64_t number = (uint64_t)st->step;
  char *saved = NULL;
  const ckpt_status status = ckpt_manager_save(manager, &number, false, &saved);
  if (status != CKPT_STATUS_OK)
    die("save of step %" PRId64 ": %s: %s", st->step, ckpt_status_name(status),
        ckpt_last_error_message());
  if (saved != NULL)
    say("step %5" PRId64 "  loss %.6f  saved %s", st->step, dataset_loss(&st->weights, data),
        saved);
  ckpt_string_free(saved);
}

/* What every rank holds alike is replicated (saved once, restored on any
 * number of ranks); the augmentation state is each rank's own. */
static void register_state(ckpt_manager *manager, train_state *st) {
  check(register_params(manager, ckpt_manager_register_replicated_tensor, &st->weights,
                        &st->adam_m, &st->adam_v),
        "ckpt_manager_register_replicated_tensor");
  static const struct {
    const char *name;
    ckpt_dtype dtype;
    size_t offset;
    bool replicated;
  } scalars[] = {
      {"step", CKPT_DTYPE_I64, offsetof(train_state, step), true},
      {"rng", CKPT_DTYPE_U64, offsetof(train_state, rng), true},
      {"seed", CKPT_DTYPE_U64, offsetof(train_state, seed), true},
      {"rank_rng", CKPT_DTYPE_U64, offsetof(train_state, rank_rng), false},
      {"samples_seen", CKPT_DTYPE_I64, offsetof(train_state, samples_seen), false},
  };
  for (size_t k = 0; k < sizeof scalars / sizeof scalars[0]; k++) {
    const register_fn register_tensor = scalars[k].replicated
                                            ? ckpt_manager_register_replicated_tensor
                                            : ckpt_manager_register_tensor;
    check(register_tensor(manager, scalars[k].name, scalars[k].dtype, NULL, 0,
                          (char *)st + scalars[k].offset),
          scalars[k].name);
  }
}

static void export_weights(const params *p, const char *path) {
  if (!write_weights(p, path)) die("cannot write %s", path);
}

static void usage(const char *program) {
  if (rank == 0)
    fprintf(stderr,
            "usage: mpirun -np N %s DIRECTORY [--steps N] [--save-every K] [--keep M]\n"
            "       [--seed S] [--stop-at STEP] [--export FILE] [--export-resumed FILE]\n"
            "       [--log-dir DIR] [--timeout SECONDS] [--kill-rank R --kill-at STEP]\n",
            program);
  MPI_Finalize();
  exit(2);
}

static long long number_arg(const char *program, const char *flag, const char *text,
                            int zero_ok) {
  char *end = NULL;
  long long value = strtoll(text, &end, 10);
  if (*text == '\0' || *end != '\0' || value < 0 || (value == 0 && !zero_ok)) {
    if (rank == 0)
      fprintf(stderr, "%s: %s needs a %s integer, not '%s'\n", program, flag,
              zero_ok ? "non-negative" : "positive", text);
    usage(program);
  }
  return value;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  const char *directory = NULL, *export_path = NULL, *export_resumed = NULL, *log_dir = NULL;
  long long total_steps = 2000, save_every = 100, keep = 3, stop_at = -1;
  long long kill_rank = -1, kill_at = -1;
  unsigned long long seed = 42;
  for (int a = 1; a < argc; a++) {
    const char *arg = argv[a];
    if (arg[0] != '-') {
      if (directory != NULL) usage(argv[0]);
      directory = arg;
      continue;
    }
    if (a + 1 >= argc) usage(argv[0]);
    const char *value = argv[++a];
    if (strcmp(arg, "--steps") == 0) total_steps = number_arg(argv[0], arg, value, 0);
    else if (strcmp(arg, "--save-every") == 0) save_every = number_arg(argv[0], arg, value, 0);
    else if (strcmp(arg, "--keep") == 0) keep = number_arg(argv[0], arg, value, 0);
    else if (strcmp(arg, "--seed") == 0) seed = (unsigned long long)number_arg(argv[0], arg, value, 1);
    else if (strcmp(arg, "--stop-at") == 0) stop_at = number_arg(argv[0], arg, value, 1);
    else if (strcmp(arg, "--export") == 0) export_path = value;
    else if (strcmp(arg, "--export-resumed") == 0) export_resumed = value;
    else if (strcmp(arg, "--log-dir") == 0) log_dir = value;
    else if (strcmp(arg, "--timeout") == 0) timeout_seconds = (double)number_arg(argv[0], arg, value, 0);
    else if (strcmp(arg, "--kill-rank") == 0) kill_rank = number_arg(argv[0], arg, value, 1);
    else if (strcmp(arg, "--kill-at") == 0) kill_at = number_arg(argv[0], arg, value, 0);
    else usage(argv[0]);
  }
  if (directory == NULL || (kill_rank < 0) != (kill_at < 0)) usage(argv[0]);
  if (log_dir != NULL) {
    char path[4096];
    snprintf(path, sizeof path, "%s/rank-%d.log", log_dir, rank);
    rank_log = fopen(path, "w");
    if (rank_log == NULL) die("cannot write %s", path);
  }

  static train_state st;
  static dataset data;
  static params gathered_gradients[1024]; /* one per rank */
  if (ranks > (int)(sizeof gathered_gradients / sizeof gathered_gradients[0]))
    die("at most %zu ranks", sizeof gathered_gradients / sizeof gathered_gradients[0]);
  st.seed = seed;

  ckpt_communicator communicator;
  if (ckpt_mpi_communicator_new(MPI_COMM_WORLD, &communicator) != 0)
    die("ckpt_mpi_communicator_new failed");
  ckpt_options *options = NULL;
  check(ckpt_options_new(&options), "ckpt_options_new");
  check(ckpt_options_set_directory(options, directory), "set_directory");
  check(ckpt_options_set_max_to_keep(options, (uint64_t)keep), "set_max_to_keep");
  check(ckpt_options_set_communicator(options, &communicator), "set_communicator");
  check(ckpt_options_set_coordination_timeout(options, timeout_seconds), "set_timeout");
  check(ckpt_options_set_init_callback(options, initialize, &st, NULL), "init callback");
  /* Resumed on another number of ranks, a rank without a saved piece of its
   * own state keeps the fresh one set below; pieces of ranks that are gone
   * are dropped. */
  check(ckpt_options_set_unmatched_rank_local(options, CKPT_UNMATCHED_RANK_LOCAL_SKIP),
        "set_unmatched_rank_local");
  ckpt_manager *manager = NULL;
  check(ckpt_manager_new(options, &manager), "ckpt_manager_new");
  ckpt_options_free(options);
  register_state(manager, &st);
  initialize_rank_state(&st);

  char *restored = NULL;
  check(ckpt_manager_restore_or_initialize(manager, &restored), "restore_or_initialize");
  if (restored != NULL) {
    if (st.seed != seed) die("%s holds a run started with --seed %llu", directory,
                             (unsigned long long)st.seed);
    say("rank %d of %d: resumed from %s at step %" PRId64 " (%" PRId64
        " samples seen here), weights fnv1a %016" PRIx64,
        rank, ranks, restored, st.step, st.samples_seen, checksum(&st.weights));
    if (export_resumed != NULL && rank == 0) export_weights(&st.weights, export_resumed);
  } else {
    say("rank %d of %d: no checkpoint in %s: a fresh %d-%d-1 MLP from seed %llu", rank, ranks,
        directory, INPUTS, HIDDEN, seed);
  }
  ckpt_string_free(restored);
  make_dataset(st.seed, &data);

  while (st.step < total_steps && (stop_at < 0 || st.step < stop_at)) {
    train_step(&st, &data, gathered_gradients);
    if (rank == kill_rank && st.step == kill_at) {
      say("rank %d at step %" PRId64 ": raising SIGKILL", rank, st.step);
      raise(SIGKILL);
    }
    if (st.step % save_every == 0) save(manager, &st, &data);
  }
  const int done = st.step >= total_steps;
  if (done && st.step % save_every != 0) save(manager, &st, &data);
  if (export_path != NULL && rank == 0) export_weights(&st.weights, export_path);
  say("rank %d %s at step %" PRId64 ": loss %.6f, weights fnv1a %016" PRIx64
      ", %" PRId64 " samples seen here",
      rank, done ? "done" : "stopped (--stop-at)", st.step, dataset_loss(&st.weights, &data),
      checksum(&st.weights), st.samples_seen);
  ckpt_manager_free(manager);
  ckpt_mpi_communicator_free(&communicator);
  if (rank_log != NULL) fclose(rank_log);
  MPI_Finalize();
  return 0;
}
