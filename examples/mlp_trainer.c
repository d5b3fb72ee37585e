/*
 * The demo trainer: a two-layer MLP trained with Adam on synthetic data,
 * checkpointed by ckpt-manager's built-in saver.
 *
 * The model, its data and its generator are in mlp_model.h: a fixed random
 * "teacher" network's outputs on 1024 random inputs, all generated from
 * --seed, and an 8 -> 32 -> 1 tanh student trained on minibatches of 32
 * drawn from its own random number generator.
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
 * generator (splitmix64) fully specified in mlp_model.h. Build both runs
 * with the same compiler and flags, and never with -ffast-math.
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
#include "mlp_model.h"

/* Everything a checkpoint holds. */
typedef struct {
  params weights, adam_m, adam_v;
  int64_t step;
  uint64_t rng;  /* splitmix64 state of the minibatch generator */
  uint64_t seed; /* the run's --seed, checked on resume */
} train_state;

/* Stops with the library's explanation when a call fails. */
static void check(ckpt_status status, const char *what) {
  if (status != CKPT_STATUS_OK) {
    fprintf(stderr, "%s failed: %s: %s\n", what, ckpt_status_name(status),
            ckpt_last_error_message());
    exit(1);
  }
}

/* The init callback: a fresh run, weights from the seed (uniform Glorot). */
static int32_t initialize(void *user_data) {
  train_state *st = user_data;
  initialize_params(st->seed, &st->weights, &st->adam_m, &st->adam_v);
  st->step = 0;
  st->rng = stream(st->seed, STREAM_BATCHES);
  return 0;
}

static int32_t current_step(void *user_data, int64_t *out_step) {
  *out_step = ((const train_state *)user_data)->step;
  return 0;
}

/* One step: a minibatch drawn from the state's generator, backpropagation,
 * Adam on every parameter tensor. */
static void train_step(train_state *st, const dataset *data) {
  params grad;
  memset(&grad, 0, sizeof grad);
  const params *p = &st->weights;
  for (int b = 0; b < BATCH; b++) {
    const uint32_t s = below(&st->rng, SAMPLES);
    add_gradient(p, data->x[s], data->y[s], &grad);
  }
  const int64_t t = st->step + 1;
  adam_step(&st->weights, &st->adam_m, &st->adam_v, &grad, t);
  st->step = t;
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

static void register_state(ckpt_manager *manager, train_state *st) {
  check(register_params(manager, ckpt_manager_register_tensor, &st->weights, &st->adam_m,
                        &st->adam_v),
        "ckpt_manager_register_tensor");
  /* Scalars: ndim 0, no shape. */
  check(ckpt_manager_register_tensor(manager, "step", CKPT_DTYPE_I64, NULL, 0, &st->step),
        "ckpt_manager_register_tensor");
  check(ckpt_manager_register_tensor(manager, "rng", CKPT_DTYPE_U64, NULL, 0, &st->rng),
        "ckpt_manager_register_tensor");
  check(ckpt_manager_register_tensor(manager, "seed", CKPT_DTYPE_U64, NULL, 0, &st->seed),
        "ckpt_manager_register_tensor");
}

static void export_weights(const params *p, const char *path) {
  if (!write_weights(p, path)) {
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
