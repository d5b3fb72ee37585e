/*
 * The demo trainer: a two-layer MLP trained with Adam on synthetic data,
 * checkpointed by ckpt-manager's built-in saver.
 *
 * The data is a fixed random "teacher" network (8 -> 16 -> 1, tanh) applied
 * to 1024 random inputs plus a little noise, all generated from --seed. The
 * student is an 8 -> 32 -> 1 tanh MLP trained on minibatches of 32 drawn
 * from its own random number generator.
 *
 * Everything the training depends on is a registered tensor, so the
 * built-in saver writes it to <prefix>.safetensors and restores it: the
 * weights W1, b1, W2, b2, Adam's moments (<name>.adam_m, <name>.adam_v),
 * the step (an I64 scalar), the generator's state (a U64 scalar) and the
 * seed (a U64 scalar). There is no save or restore callback. A run killed
 * at any instant (even by SIGKILL) and started again resumes from the
 * latest checkpoint and ends with the bits of a run straight through.
 *
 * With --async the saves go to the library's background thread
 * (ckpt_manager_save_async): the call copies the registered tensors and
 * returns, and training goes on while the checkpoint is written. A save's
 * line is printed once it is committed (the next save or a wait says so),
 * so a printed save is never lost. The results are the same bits.
 *
 * Preemption: SIGTERM (what a scheduler sends before it takes the machine
 * back) makes the run save at the step it is at, whatever --save-every says,
 * and exit 0; started again, it resumes from that step. Each checkpoint
 * records the loss on the whole dataset as its metric "loss".
 *
 * Usage: mlp_trainer DIRECTORY [--steps N] [--save-every K] [--keep M]
 *                    [--seed S] [--stop-at STEP] [--export FILE]
 *                    [--step-delay-ms MS] [--async]
 *   --steps N       train until step N (default 2000)
 *   --save-every K  save a checkpoint every K steps (default 100)
 *   --keep M        keep the M newest checkpoints (default 3)
 *   --seed S        the seed of the data, the initial weights and the
 *                   minibatches (default 42); a resumed run must use the
 *                   seed it started with
 *   --stop-at STEP  stop at STEP without saving, as if killed there
 *   --export FILE   write the final W1, b1, W2, b2 to FILE as raw
 *                   little-endian float32, in that order (a preempted run
 *                   writes nothing)
 *   --step-delay-ms MS
 *                   sleep MS milliseconds in each step (default 0), so
 *                   that a test's signal lands mid-run; the results do
 *                   not change
 *   --async         save in the background; the run waits for the last
 *                   save before it ends, is preempted or exports
 *
 * Deterministic: one thread, a fixed order of float operations, and a
 * generator (splitmix64) fully specified below. Build both runs with the
 * same compiler and flags, and never with -ffast-math.
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep */

#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ckpt_manager.h"

enum { INPUTS = 8, HIDDEN = 32, TEACHER_HIDDEN = 16, SAMPLES = 1024, BATCH = 32 };

static const float LEARNING_RATE = 0.01f, BETA1 = 0.9f, BETA2 = 0.999f, EPSILON = 1e-8f;

/* The student's parameters; `state` holds three of them (weights, m, v). */
typedef struct {
  float w1[HIDDEN][INPUTS], b1[HIDDEN], w2[HIDDEN], b2[1];
} params;

/* Everything a checkpoint holds. */
typedef struct {
  params weights, adam_m, adam_v;
  int64_t step;
  uint64_t rng;  /* splitmix64 state of the minibatch generator */
  uint64_t seed; /* the run's --seed, checked on resume */
} train_state;

typedef struct {
  float x[SAMPLES][INPUTS], y[SAMPLES];
} dataset;

/* Stops with the library's explanation when a call fails. */
static void check(ckpt_status status, const char *what) {
  if (status != CKPT_STATUS_OK) {
    fprintf(stderr, "%s failed: %s: %s\n", what, ckpt_status_name(status),
            ckpt_last_error_message());
    exit(1);
  }
}

/* splitmix64 (Steele, Lea, Flood 2014): the state advances by a constant,
 * the output is a mix of it. */
static uint64_t next_u64(uint64_t *state) {
  uint64_t z = (*state += UINT64_C(0x9E3779B97F4A7C15));
  z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
  return z ^ (z >> 31);
}

/* Uniform in [-scale, scale), from the top 24 bits. */
static float uniform(uint64_t *state, float scale) {
  float unit = (float)(next_u64(state) >> 40) * (1.0f / 16777216.0f);
  return (2.0f * unit - 1.0f) * scale;
}

/* Uniform in [0, n), by rejection, so that every index is equally likely. */
static uint32_t below(uint64_t *state, uint32_t n) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t r;
  do r = next_u64(state);
  while (r >= limit);
  return (uint32_t)(r % n);
}

/* Independent streams derived from the seed. */
static uint64_t stream(uint64_t seed, uint64_t purpose) {
  uint64_t state = seed ^ (purpose * UINT64_C(0xD1B54A32D192ED03));
  return next_u64(&state);
}
enum { STREAM_DATA = 1, STREAM_INIT = 2, STREAM_BATCHES = 3 };

/* The teacher and its samples: a function of the seed alone. */
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

/* The init callback: a fresh run, weights from the seed (uniform Glorot). */
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
  return 0;
}

static int32_t current_step(void *user_data, int64_t *out_step) {
  *out_step = ((const train_state *)user_data)->step;
  return 0;
}

/* The student's output for one input; `hidden` receives tanh activations. */
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

/* Mean squared error over the whole dataset. */
static double dataset_loss(const params *p, const dataset *data) {
  float hidden[HIDDEN];
  double loss = 0.0;
  for (int s = 0; s < SAMPLES; s++) {
    double error = (double)forward(p, data->x[s], hidden) - data->y[s];
    loss += error * error;
  }
  return loss / SAMPLES;
}

/* Adam on one flat array of n parameters; t is the step being taken (>= 1). */
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

/* One step: a minibatch drawn from the state's generator, backpropagation,
 * Adam on every parameter tensor. */
static void train_step(train_state *st, const dataset *data) {
  params grad;
  memset(&grad, 0, sizeof grad);
  const params *p = &st->weights;
  for (int b = 0; b < BATCH; b++) {
    const uint32_t s = below(&st->rng, SAMPLES);
    float hidden[HIDDEN];
    const float error = forward(p, data->x[s], hidden) - data->y[s];
    const float d_out = 2.0f * error / BATCH;
    grad.b2[0] += d_out;
    for (int j = 0; j < HIDDEN; j++) {
      grad.w2[j] += d_out * hidden[j];
      const float d_hidden = d_out * p->w2[j] * (1.0f - hidden[j] * hidden[j]);
      grad.b1[j] += d_hidden;
      for (int i = 0; i < INPUTS; i++) grad.w1[j][i] += d_hidden * data->x[s][i];
    }
  }
  const int64_t t = st->step + 1;
  params *w = &st->weights, *m = &st->adam_m, *v = &st->adam_v;
  adam(&w->w1[0][0], &m->w1[0][0], &v->w1[0][0], &grad.w1[0][0], HIDDEN * INPUTS, t);
  adam(w->b1, m->b1, v->b1, grad.b1, HIDDEN, t);
  adam(w->w2, m->w2, v->w2, grad.w2, HIDDEN, t);
  adam(w->b2, m->b2, v->b2, grad.b2, 1, t);
  st->step = t;
}

/* FNV-1a over the weights' bytes: equal runs print equal checksums. */
static uint64_t checksum(const params *p) {
  const unsigned char *bytes = (const unsigned char *)p;
  uint64_t hash = UINT64_C(0xCBF29CE484222325);
  for (size_t k = 0; k < sizeof *p; k++) hash = (hash ^ bytes[k]) * UINT64_C(0x100000001B3);
  return hash;
}

/* Sleeps for the step delay; a signal may cut it short, which is fine. */
static void step_delay(long long milliseconds) {
  if (milliseconds == 0) return;
  const struct timespec delay = {(time_t)(milliseconds / 1000),
                                 (long)(milliseconds % 1000) * 1000000L};
  nanosleep(&delay, NULL);
}

/* --async: saves go to the library's background thread. */
static bool async_saves;

/* A save not printed yet: with --async, the one in flight, printed once it
 * is committed, so that every printed save is on disk. */
static struct {
  int64_t step;
  double loss;
  char *prefix; /* NULL: none */
} in_flight;

static void print_save(int64_t step, double loss, const char *prefix) {
  printf("step %5" PRId64 "  loss %.6f  saved %s\n", step, loss, prefix);
}

/* Waits at most timeout_seconds (negative: as long as it takes) for the
 * background save in flight and prints it once it is committed. A failed
 * background save stops the run with its status and message. */
static void finish_background_save(ckpt_manager *manager, double timeout_seconds) {
  if (in_flight.prefix == NULL) return; /* none in flight, none unreported */
  const ckpt_status status = ckpt_manager_wait_until_finished(manager, timeout_seconds);
  if (status == CKPT_STATUS_TIMEOUT) return;
  check(status, "the background save");
  print_save(in_flight.step, in_flight.loss, in_flight.prefix);
  ckpt_string_free(in_flight.prefix);
  in_flight.prefix = NULL;
}

/* Saves the state with its loss as the metric "loss" and prints the save
 * (with --async, once it is committed). With check_interval, saves only
 * when the library says a save is due (save_every steps since the last
 * save, or a preemption signal), so the loss is computed only then.
 * Nothing is saved when not due, or when this step is saved already. */
static void save(ckpt_manager *manager, const train_state *st, const dataset *data,
                 bool check_interval) {
  if (check_interval) {
    bool due = false;
    check(ckpt_manager_should_save(manager, &due), "ckpt_manager_should_save");
    if (!due) return;
  }
  const double loss = dataset_loss(&st->weights, data);
  ckpt_save_args *args = NULL;
  check(ckpt_save_args_new(&args), "ckpt_save_args_new");
  check(ckpt_save_args_set_check_interval(args, check_interval), "set_check_interval");
  check(ckpt_save_args_set_metric(args, "loss", loss), "set_metric");
  char *saved = NULL;
  if (async_saves)
    check(ckpt_manager_save_async(manager, args, &saved), "ckpt_manager_save_async");
  else
    check(ckpt_manager_save_with(manager, args, &saved), "ckpt_manager_save_with");
  ckpt_save_args_free(args);
  if (saved == NULL) return;
  if (!async_saves) {
    print_save(st->step, loss, saved);
    ckpt_string_free(saved);
    return;
  }
  /* save_async waited for the save in flight and would have returned its
   * failure: that one is committed. */
  if (in_flight.prefix != NULL) {
    print_save(in_flight.step, in_flight.loss, in_flight.prefix);
    ckpt_string_free(in_flight.prefix);
  }
  in_flight.step = st->step;
  in_flight.loss = loss;
  in_flight.prefix = saved;
}

/* Registers the three copies (weights, m, v) of one parameter tensor. */
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
  /* Scalars: ndim 0, no shape. */
  check(ckpt_manager_register_tensor(manager, "step", CKPT_DTYPE_I64, NULL, 0, &st->step),
        "ckpt_manager_register_tensor");
  check(ckpt_manager_register_tensor(manager, "rng", CKPT_DTYPE_U64, NULL, 0, &st->rng),
        "ckpt_manager_register_tensor");
  check(ckpt_manager_register_tensor(manager, "seed", CKPT_DTYPE_U64, NULL, 0, &st->seed),
        "ckpt_manager_register_tensor");
}

static void export_weights(const params *p, const char *path) {
  FILE *file = fopen(path, "wb");
  int ok = file != NULL && fwrite(p->w1, sizeof p->w1, 1, file) == 1 &&
           fwrite(p->b1, sizeof p->b1, 1, file) == 1 &&
           fwrite(p->w2, sizeof p->w2, 1, file) == 1 &&
           fwrite(p->b2, sizeof p->b2, 1, file) == 1;
  if (file != NULL && fclose(file) != 0) ok = 0;
  if (!ok) {
    perror(path);
    exit(1);
  }
}

static void usage(const char *program) {
  fprintf(stderr,
          "usage: %s DIRECTORY [--steps N] [--save-every K] [--keep M] [--seed S]\n"
          "       [--stop-at STEP] [--export FILE] [--step-delay-ms MS] [--async]\n",
          program);
  exit(2);
}

/* A non-negative integer argument (positive unless zero_ok). */
static long long number_arg(const char *program, const char *flag, const char *text,
                            int zero_ok) {
  char *end = NULL;
  long long value = strtoll(text, &end, 10);
  if (*text == '\0' || *end != '\0' || value < 0 || (value == 0 && !zero_ok)) {
    fprintf(stderr, "%s: %s needs a %s integer, not '%s'\n", program, flag,
            zero_ok ? "non-negative" : "positive", text);
    usage(program);
  }
  return value;
}

int main(int argc, char **argv) {
  /* Line-buffered even into a pipe, so a killed run has shown its progress. */
  setvbuf(stdout, NULL, _IOLBF, 0);
  const char *directory = NULL, *export_path = NULL;
  long long total_steps = 2000, save_every = 100, keep = 3, stop_at = -1, step_delay_ms = 0;
  unsigned long long seed = 42;
  for (int a = 1; a < argc; a++) {
    const char *arg = argv[a];
    if (arg[0] != '-') {
      if (directory != NULL) usage(argv[0]);
      directory = arg;
      continue;
    }
    if (strcmp(arg, "--async") == 0) {
      async_saves = true;
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
    else if (strcmp(arg, "--step-delay-ms") == 0)
      step_delay_ms = number_arg(argv[0], arg, value, 1);
    else usage(argv[0]);
  }
  if (directory == NULL) usage(argv[0]);

  static train_state st;
  static dataset data;
  st.seed = seed;

  /* From now on SIGTERM no longer ends the process: it makes the next save
   * go ahead, and the loop below stops after it. */
  check(ckpt_install_preemption_handler(SIGTERM), "ckpt_install_preemption_handler");
  ckpt_options *options = NULL;
  check(ckpt_options_new(&options), "ckpt_options_new");
  check(ckpt_options_set_directory(options, directory), "set_directory");
  check(ckpt_options_set_max_to_keep(options, keep), "set_max_to_keep");
  check(ckpt_options_set_checkpoint_interval(options, save_every), "set_checkpoint_interval");
  check(ckpt_options_set_last_checkpoint_step(options, 0), "set_last_checkpoint_step");
  check(ckpt_options_set_step_counter_callback(options, current_step, &st, NULL), "step counter");
  check(ckpt_options_set_init_callback(options, initialize, &st, NULL), "init callback");
  ckpt_manager *manager = NULL;
  check(ckpt_manager_new(options, &manager), "ckpt_manager_new");
  ckpt_options_free(options);
  register_state(manager, &st);

  char *restored = NULL;
  check(ckpt_manager_restore_or_initialize(manager, &restored), "restore_or_initialize");
  if (restored != NULL) {
    if (st.seed != seed) {
      fprintf(stderr, "%s holds a run started with --seed %llu, not %llu\n", directory,
              (unsigned long long)st.seed, seed);
      ckpt_string_free(restored);
      ckpt_manager_free(manager);
      return 1;
    }
    printf("resumed from %s at step %" PRId64 " (rng state %016" PRIx64 ")\n", restored,
           st.step, st.rng);
  } else {
    printf("no checkpoint in %s: a fresh %d-%d-1 MLP from seed %llu\n", directory, INPUTS,
           HIDDEN, seed);
  }
  ckpt_string_free(restored);
  make_dataset(st.seed, &data);

  while (st.step < total_steps && (stop_at < 0 || st.step < stop_at)) {
    train_step(&st, &data);
    step_delay(step_delay_ms);
    finish_background_save(manager, 0); /* prints it if it is committed */
    /* Saves only when save_every steps have passed since the last one, or
     * a preemption signal has arrived. */
    save(manager, &st, &data, true);
    if (ckpt_preemption_requested()) {
      /* The signal may have come after that save looked: save again, which
       * goes ahead unless this step is saved already. Either way the latest
       * checkpoint holds this step once the save in flight is committed. */
      save(manager, &st, &data, true);
      finish_background_save(manager, -1);
      char *latest = NULL;
      check(ckpt_manager_latest(manager, &latest), "ckpt_manager_latest");
      printf("preempted at step %" PRId64 ": saved %s\n", st.step, latest);
      ckpt_string_free(latest);
      ckpt_manager_free(manager);
      return 0;
    }
  }
  const int done = st.step >= total_steps;
  /* The end state is a checkpoint even when save_every does not divide the
   * steps (nothing is saved when this step is saved already). */
  if (done) save(manager, &st, &data, false);
  finish_background_save(manager, -1);
  if (export_path != NULL) export_weights(&st.weights, export_path);

  ckpt_string_list *kept = NULL;
  check(ckpt_manager_checkpoints(manager, &kept), "ckpt_manager_checkpoints");
  printf("%s at step %" PRId64 ": loss %.6f, weights fnv1a %016" PRIx64 "; kept:",
         done ? "done" : "stopped (--stop-at)", st.step, dataset_loss(&st.weights, &data),
         checksum(&st.weights));
  for (size_t i = 0; i < kept->len; i++) printf(" %s", kept->items[i]);
  printf("\n");
  ckpt_string_list_free(kept);
  ckpt_manager_free(manager);
  return 0;
}
