/*
 * The demo trainer, data-parallel over MPI ranks: the MLP of mlp_trainer.c
 * (8 -> 32 -> 1 tanh, Adam, a synthetic dataset from --seed), its
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
 * generator and the seed (the same on every rank), and its own state: its
 * noise generator ("rank_rng") and how many samples it has trained on
 * ("samples_seen"). A save writes one safetensors file per rank,
 * ckpt-<step>.rank-RRRRR-of-SSSSS.safetensors; restore gives each rank its
 * own file back.
 *
 * Usage: mpirun -np N mlp_trainer_mpi DIRECTORY [--steps N] [--save-every K]
 *                    [--keep M] [--seed S] [--stop-at STEP] [--export FILE]
 *                    [--log-dir DIR] [--timeout SECONDS]
 *                    [--kill-rank R --kill-at STEP]
 *   --steps, --save-every, --keep, --seed, --stop-at, --export
 *                   as in mlp_trainer.c (defaults 2000, 100, 3, 42); rank 0
 *                   writes the export
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

enum { INPUTS = 8, HIDDEN = 32, TEACHER_HIDDEN = 16, SAMPLES = 1024, BATCH = 32 };

static const float LEARNING_RATE = 0.01f, BETA1 = 0.9f, BETA2 = 0.999f, EPSILON = 1e-8f;
static const float AUGMENTATION_NOISE = 0.01f;

typedef struct {
  float w1[HIDDEN][INPUTS], b1[HIDDEN], w2[HIDDEN], b2[1];
} params;

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

typedef struct {
  float x[SAMPLES][INPUTS], y[SAMPLES];
} dataset;

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

/* splitmix64, as in mlp_trainer.c. */
static uint64_t next_u64(uint64_t *state) {
  uint64_t z = (*state += UINT64_C(0x9E3779B97F4A7C15));
  z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
  return z ^ (z >> 31);
}

static float uniform(uint64_t *state, float scale) {
  float unit = (float)(next_u64(state) >> 40) * (1.0f / 16777216.0f);
  return (2.0f * unit - 1.0f) * scale;
}

static uint32_t below(uint64_t *state, uint32_t n) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t r;
  do r = next_u64(state);
  while (r >= limit);
  return (uint32_t)(r % n);
}

static uint64_t stream(uint64_t seed, uint64_t purpose) {
  uint64_t state = seed ^ (purpose * UINT64_C(0xD1B54A32D192ED03));
  return next_u64(&state);
}
/* STREAM_RANK + r is rank r's noise. */
enum { STREAM_DATA = 1, STREAM_INIT = 2, STREAM_BATCHES = 3, STREAM_RANK = 1000 };

static void make_dataset(uint64_t seed, dataset *data) {
  uint64_t rng = stream(seed, STREAM_DATA);
  float w1[TEACHER_HIDDEN][INPUTS], b1[TEACHER_HIDDEN], w2[TEACHER_HIDDEN];
  for (int j = 0; j < TEACHER_HIDDEN; j++) {
    for (int i = 0; i < INPUTS; i++) w1[j][i] = uniform(&rng, 0.8f);
    b1[j] = uniform(&rng, 0.5f);
    w2[j] = uniform(&rng, 0.6f);
  }
  for (int s = 0; s < SAMPLES; s++) {
    for (int i = 0; i < INPUTS; i++) data->x[s][i] = uniform(&rng, 1.0f);
    float y = 0.0f;
    for (int j = 0; j < TEACHER_HIDDEN; j++) {
      float h = b1[j];
      for (int i = 0; i < INPUTS; i++) h += w1[j][i] * data->x[s][i];
      y += w2[j] * tanhf(h);
    }
    data->y[s] = y + uniform(&rng, 0.01f);
  }
}

/* The init callback: a fresh run, on every rank. */
static int32_t initialize(void *user_data) {
  train_state *st = user_data;
  uint64_t rng = stream(st->seed, STREAM_INIT);
  memset(&st->adam_m, 0, sizeof st->adam_m);
  memset(&st->adam_v, 0, sizeof st->adam_v);
  const float scale1 = sqrtf(6.0f / (INPUTS + HIDDEN)), scale2 = sqrtf(6.0f / (HIDDEN + 1));
  for (int j = 0; j < HIDDEN; j++) {
    for (int i = 0; i < INPUTS; i++) st->weights.w1[j][i] = uniform(&rng, scale1);
    st->weights.b1[j] = 0.0f;
    st->weights.w2[j] = uniform(&rng, scale2);
  }
  st->weights.b2[0] = 0.0f;
  st->step = 0;
  st->rng = stream(st->seed, STREAM_BATCHES);
  st->rank_rng = stream(st->seed, STREAM_RANK + (uint64_t)rank);
  st->samples_seen = 0;
  return 0;
}

static float forward(const params *p, const float *x, float *hidden) {
  float y = p->b2[0];
  for (int j = 0; j < HIDDEN; j++) {
    float h = p->b1[j];
    for (int i = 0; i < INPUTS; i++) h += p->w1[j][i] * x[i];
    hidden[j] = tanhf(h);
    y += p->w2[j] * hidden[j];
  }
  return y;
}

static double dataset_loss(const params *p, const dataset *data) {
  float hidden[HIDDEN];
  double loss = 0.0;
  for (int s = 0; s < SAMPLES; s++) {
    double error = (double)forward(p, data->x[s], hidden) - data->y[s];
    loss += error * error;
  }
  return loss / SAMPLES;
}

static void adam(float *w, float *m, float *v, const float *g, size_t n, int64_t t) {
  const float correction1 = 1.0f - (float)pow(BETA1, (double)t);
  const float correction2 = 1.0f - (float)pow(BETA2, (double)t);
  for (size_t k = 0; k < n; k++) {
    m[k] = BETA1 * m[k] + (1.0f - BETA1) * g[k];
    v[k] = BETA2 * v[k] + (1.0f - BETA2) * (g[k] * g[k]);
    const float m_hat = m[k] / correction1, v_hat = v[k] / correction2;
    w[k] -= LEARNING_RATE * m_hat / (sqrtf(v_hat) + EPSILON);
  }
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
    float x[INPUTS], hidden[HIDDEN];
    for (int i = 0; i < INPUTS; i++)
      x[i] = data->x[s][i] + uniform(&st->rank_rng, AUGMENTATION_NOISE);
    st->samples_seen++;
    const float error = forward(p, x, hidden) - data->y[s];
    const float d_out = 2.0f * error / BATCH;
    grad.b2[0] += d_out;
    for (int j = 0; j < HIDDEN; j++) {
      grad.w2[j] += d_out * hidden[j];
      const float d_hidden = d_out * p->w2[j] * (1.0f - hidden[j] * hidden[j]);
      grad.b1[j] += d_hidden;
      for (int i = 0; i < INPUTS; i++) grad.w1[j][i] += d_hidden * x[i];
    }
  }
  all_gather_gradients(&grad, gathered);
  float *sum = (float *)&grad;
  memcpy(sum, &gathered[0], sizeof grad);
  for (int r = 1; r < ranks; r++) {
    const float *part = (const float *)&gathered[r];
    for (size_t k = 0; k < PARAM_COUNT; k++) sum[k] += part[k];
  }
  const int64_t t = st->step + 1;
  params *w = &st->weights, *m = &st->adam_m, *v = &st->adam_v;
  adam(&w->w1[0][0], &m->w1[0][0], &v->w1[0][0], &grad.w1[0][0], HIDDEN * INPUTS, t);
  adam(w->b1, m->b1, v->b1, grad.b1, HIDDEN, t);
  adam(w->w2, m->w2, v->w2, grad.w2, HIDDEN, t);
  adam(w->b2, m->b2, v->b2, grad.b2, 1, t);
  st->step = t;
}

static uint64_t checksum(const params *p) {
  const unsigned char *bytes = (const unsigned char *)p;
  uint64_t hash = UINT64_C(0xCBF29CE484222325);
  for (size_t k = 0; k < sizeof *p; k++) hash = (hash ^ bytes[k]) * UINT64_C(0x100000001B3);
  return hash;
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

static void register_param(ckpt_manager *manager, train_state *st, const char *name,
                           size_t offset, const uint64_t *shape, size_t ndim) {
  static const struct {
    const char *suffix;
    size_t base;
  } copies[] = {
      {"", offsetof(train_state, weights)},
      {".adam_m", offsetof(train_state, adam_m)},
      {".adam_v", offsetof(train_state, adam_v)},
  };
  for (size_t c = 0; c < sizeof copies / sizeof copies[0]; c++) {
    char full[64];
    snprintf(full, sizeof full, "%s%s", name, copies[c].suffix);
    check(ckpt_manager_register_tensor(manager, full, CKPT_DTYPE_F32, shape, ndim,
                                       (char *)st + copies[c].base + offset),
          "ckpt_manager_register_tensor");
  }
}

static void register_state(ckpt_manager *manager, train_state *st) {
  static const uint64_t w1_shape[] = {HIDDEN, INPUTS}, hidden_shape[] = {HIDDEN},
                        w2_shape[] = {1, HIDDEN}, b2_shape[] = {1};
  register_param(manager, st, "W1", offsetof(params, w1), w1_shape, 2);
  register_param(manager, st, "b1", offsetof(params, b1), hidden_shape, 1);
  register_param(manager, st, "W2", offsetof(params, w2), w2_shape, 2);
  register_param(manager, st, "b2", offsetof(params, b2), b2_shape, 1);
  static const struct {
    const char *name;
    ckpt_dtype dtype;
    size_t offset;
  } scalars[] = {
      {"step", CKPT_DTYPE_I64, offsetof(train_state, step)},
      {"rng", CKPT_DTYPE_U64, offsetof(train_state, rng)},
      {"seed", CKPT_DTYPE_U64, offsetof(train_state, seed)},
      {"rank_rng", CKPT_DTYPE_U64, offsetof(train_state, rank_rng)},
      {"samples_seen", CKPT_DTYPE_I64, offsetof(train_state, samples_seen)},
  };
  for (size_t k = 0; k < sizeof scalars / sizeof scalars[0]; k++)
    check(ckpt_manager_register_tensor(manager, scalars[k].name, scalars[k].dtype, NULL, 0,
                                       (char *)st + scalars[k].offset),
          "ckpt_manager_register_tensor");
}

static void export_weights(const params *p, const char *path) {
  FILE *file = fopen(path, "wb");
  int ok = file != NULL && fwrite(p->w1, sizeof p->w1, 1, file) == 1 &&
           fwrite(p->b1, sizeof p->b1, 1, file) == 1 &&
           fwrite(p->w2, sizeof p->w2, 1, file) == 1 &&
           fwrite(p->b2, sizeof p->b2, 1, file) == 1;
  if (file != NULL && fclose(file) != 0) ok = 0;
  if (!ok) die("cannot write %s", path);
}

static void usage(const char *program) {
  if (rank == 0)
    fprintf(stderr,
            "usage: mpirun -np N %s DIRECTORY [--steps N] [--save-every K] [--keep M]\n"
            "       [--seed S] [--stop-at STEP] [--export FILE] [--log-dir DIR]\n"
            "       [--timeout SECONDS] [--kill-rank R --kill-at STEP]\n",
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
  const char *directory = NULL, *export_path = NULL, *log_dir = NULL;
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
  ckpt_manager *manager = NULL;
  check(ckpt_manager_new(options, &manager), "ckpt_manager_new");
  ckpt_options_free(options);
  register_state(manager, &st);

  char *restored = NULL;
  check(ckpt_manager_restore_or_initialize(manager, &restored), "restore_or_initialize");
  if (restored != NULL) {
    if (st.seed != seed) die("%s holds a run started with --seed %llu", directory,
                             (unsigned long long)st.seed);
    say("rank %d of %d: resumed from %s at step %" PRId64 " (%" PRId64 " samples seen here)",
        rank, ranks, restored, st.step, st.samples_seen);
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
