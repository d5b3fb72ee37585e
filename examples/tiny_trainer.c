/*
 * A tiny trainer that checkpoints with ckpt-manager.
 *
 * It fits y = 3x + 1 by gradient descent, saves its two weights and step
 * with its own callbacks every 10 steps, keeps the 3 newest checkpoints,
 * and on start resumes from the latest one.
 *
 * Usage: tiny_trainer DIRECTORY TOTAL_STEPS [STOP_AT]
 *   STOP_AT stops early, as if the job were interrupted there.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "ckpt_manager.h"

typedef struct {
  double weight, bias;
  int64_t step;
} model;

/* Stops with the library's explanation when a call fails. */
static void check(ckpt_status status, const char *what) {
  if (status != CKPT_STATUS_OK) {
    fprintf(stderr, "%s failed: %s: %s\n", what, ckpt_status_name(status),
            ckpt_last_error_message());
    exit(1);
  }
}

/* Save callback: every file it writes is named <prefix>.<suffix>. */
static int32_t save_model(void *user_data, const char *prefix, uint64_t number) {
  const model *m = user_data;
  char path[4096];
  (void)number;
  snprintf(path, sizeof path, "%s.model", prefix);
  FILE *file = fopen(path, "wb");
  if (file == NULL) return errno;
  int ok = fwrite(&m->weight, sizeof m->weight, 1, file) == 1 &&
           fwrite(&m->bias, sizeof m->bias, 1, file) == 1 &&
           fwrite(&m->step, sizeof m->step, 1, file) == 1;
  if (fclose(file) != 0 || !ok) return EIO;
  return 0;
}

static int32_t restore_model(void *user_data, const char *prefix) {
  model *m = user_data;
  char path[4096];
  snprintf(path, sizeof path, "%s.model", prefix);
  FILE *file = fopen(path, "rb");
  if (file == NULL) return errno;
  int ok = fread(&m->weight, sizeof m->weight, 1, file) == 1 &&
           fread(&m->bias, sizeof m->bias, 1, file) == 1 &&
           fread(&m->step, sizeof m->step, 1, file) == 1;
  fclose(file);
  return ok ? 0 : EIO;
}

static int32_t current_step(void *user_data, int64_t *out_step) {
  *out_step = ((const model *)user_data)->step;
  return 0;
}

/* One full-batch gradient step on 16 points of y = 3x + 1; returns the loss. */
static double train_step(model *m) {
  double grad_w = 0, grad_b = 0, loss = 0;
  for (int i = 0; i < 16; i++) {
    double x = i / 16.0, error = m->weight * x + m->bias - (3 * x + 1);
    loss += error * error / 16;
    grad_w += 2 * error * x / 16;
    grad_b += 2 * error / 16;
  }
  m->weight -= 0.5 * grad_w;
  m->bias -= 0.5 * grad_b;
  m->step++;
  return loss;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s DIRECTORY TOTAL_STEPS [STOP_AT]\n", argv[0]);
    return 2;
  }
  const int64_t total_steps = atoll(argv[2]);
  const int64_t stop_at = argc > 3 ? atoll(argv[3]) : total_steps;
  model m = {0.0, 0.0, 0};

  ckpt_options *options = NULL;
  check(ckpt_options_new(&options), "ckpt_options_new");
  check(ckpt_options_set_directory(options, argv[1]), "set_directory");
  check(ckpt_options_set_max_to_keep(options, 3), "set_max_to_keep");
  check(ckpt_options_set_checkpoint_interval(options, 10), "set_checkpoint_interval");
  check(ckpt_options_set_last_checkpoint_step(options, 0), "set_last_checkpoint_step");
  check(ckpt_options_set_step_counter_callback(options, current_step, &m, NULL), "step counter");
  check(ckpt_options_set_save_callback(options, save_model, &m, NULL), "save callback");
  check(ckpt_options_set_restore_callback(options, restore_model, &m, NULL), "restore callback");
  ckpt_manager *manager = NULL;
  check(ckpt_manager_new(options, &manager), "ckpt_manager_new");
  ckpt_options_free(options);

  char *restored = NULL;
  check(ckpt_manager_restore_or_initialize(manager, &restored), "restore_or_initialize");
  if (restored != NULL)
    printf("resumed from %s at step %lld\n", restored, (long long)m.step);
  else
    printf("no checkpoint in %s: starting at step 0\n", argv[1]);
  ckpt_string_free(restored);

  while (m.step < total_steps && m.step < stop_at) {
    double loss = train_step(&m);
    char *saved = NULL;
    /* Saves only when 10 steps have passed since the last checkpoint. */
    check(ckpt_manager_save(manager, NULL, true, &saved), "ckpt_manager_save");
    if (saved != NULL) {
      printf("step %3lld  loss %.6f  saved %s\n", (long long)m.step, loss, saved);
      ckpt_string_free(saved);
    }
  }

  ckpt_string_list *kept = NULL;
  check(ckpt_manager_checkpoints(manager, &kept), "ckpt_manager_checkpoints");
  printf("%s at step %lld: weight %.6f bias %.6f; kept:", m.step < total_steps ? "stopped" : "done",
         (long long)m.step, m.weight, m.bias);
  for (size_t i = 0; i < kept->len; i++) printf(" %s", kept->items[i]);
  printf("\n");
  ckpt_string_list_free(kept);
  ckpt_manager_free(manager);
  return 0;
}
