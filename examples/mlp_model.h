/*
 * The model of the demo trainers (mlp_trainer.c and mlp_trainer_mpi.c):
 * a synthetic dataset from a seed, an 8 -> 32 -> 1 tanh MLP, its gradient
 * and Adam, and the generator (splitmix64) everything random comes from.
 *
 * The data is a fixed random "teacher" network (8 -> 16 -> 1, tanh) applied
 * to 1024 random inputs plus a little noise, all generated from the seed.
 * Deterministic: a fixed order of float operations and a fully specified
 * generator, so both trainers get the same bits from the same compiler and
 * flags (never -ffast-math).
 *
 * Static functions, meant to be included by one .c file of each program.
 */
#ifndef MLP_MODEL_H
#define MLP_MODEL_H

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ckpt_manager.h"

enum { INPUTS = 8, HIDDEN = 32, TEACHER_HIDDEN = 16, SAMPLES = 1024, BATCH = 32 };

static const float LEARNING_RATE = 0.01f, BETA1 = 0.9f, BETA2 = 0.999f, EPSILON = 1e-8f;

/* The student's parameters; a trainer's state holds three of them
 * (weights, m, v). */
typedef struct {
  float w1[HIDDEN][INPUTS], b1[HIDDEN], w2[HIDDEN], b2[1];
} params;

typedef struct {
  float x[SAMPLES][INPUTS], y[SAMPLES];
} dataset;

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

/* A fresh run's parameters: weights from the seed (uniform Glorot), the
 * biases and Adam's moments zero. */
static void initialize_params(uint64_t seed, params *weights, params *adam_m, params *adam_v) {
  uint64_t rng = stream(seed, STREAM_INIT);
  memset(adam_m, 0, sizeof *adam_m);
  memset(adam_v, 0, sizeof *adam_v);
  const float scale1 = sqrtf(6.0f / (INPUTS + HIDDEN)), scale2 = sqrtf(6.0f / (HIDDEN + 1));
  for (int j = 0; j < HIDDEN; j++) {
    for (int i = 0; i < INPUTS; i++) weights->w1[j][i] = uniform(&rng, scale1);
    weights->b1[j] = 0.0f;
    weights->w2[j] = uniform(&rng, scale2);
  }
  weights->b2[0] = 0.0f;
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

/* Adds one sample's share of the minibatch's mean squared error gradient
 * (backpropagation through the input x with target y) to grad. */
static void add_gradient(const params *p, const float *x, float y, params *grad) {
  float hidden[HIDDEN];
  const float error = forward(p, x, hidden) - y;
  const float d_out = 2.0f * error / BATCH;
  grad->b2[0] += d_out;
  for (int j = 0; j < HIDDEN; j++) {
    grad->w2[j] += d_out * hidden[j];
    const float d_hidden = d_out * p->w2[j] * (1.0f - hidden[j] * hidden[j]);
    grad->b1[j] += d_hidden;
    for (int i = 0; i < INPUTS; i++) grad->w1[j][i] += d_hidden * x[i];
  }
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

/* Adam on every parameter tensor, as step t (>= 1). */
static void adam_step(params *w, params *m, params *v, const params *grad, int64_t t) {
  adam(&w->w1[0][0], &m->w1[0][0], &v->w1[0][0], &grad->w1[0][0], HIDDEN * INPUTS, t);
  adam(w->b1, m->b1, v->b1, grad->b1, HIDDEN, t);
  adam(w->w2, m->w2, v->w2, grad->w2, HIDDEN, t);
  adam(w->b2, m->b2, v->b2, grad->b2, 1, t);
}

/* FNV-1a over the weights' bytes: equal runs print equal checksums. */
static uint64_t checksum(const params *p) {
  const unsigned char *bytes = (const unsigned char *)p;
  uint64_t hash = UINT64_C(0xCBF29CE484222325);
  for (size_t k = 0; k < sizeof *p; k++) hash = (hash ^ bytes[k]) * UINT64_C(0x100000001B3);
  return hash;
}

/* Registers each parameter tensor's three copies: W1, W1.adam_m, W1.adam_v,
 * then b1, W2 and b2 likewise. Stops at the first failure and returns it. */
/* How a tensor is registered: ckpt_manager_register_tensor (one process, or
 * each rank its own) or ckpt_manager_register_replicated_tensor (the same on
 * every rank, saved once). */
typedef ckpt_status (*register_fn)(ckpt_manager *manager, const char *name, uint32_t dtype,
                                   const uint64_t *shape, size_t ndim, void *data);

static ckpt_status register_params(ckpt_manager *manager, register_fn register_tensor,
                                   params *weights, params *adam_m, params *adam_v) {
  static const uint64_t w1_shape[] = {HIDDEN, INPUTS}, hidden_shape[] = {HIDDEN},
                        w2_shape[] = {1, HIDDEN}, b2_shape[] = {1};
  static const struct {
    const char *name;
    size_t offset;
    const uint64_t *shape;
    size_t ndim;
  } tensors[] = {
      {"W1", offsetof(params, w1), w1_shape, 2},
      {"b1", offsetof(params, b1), hidden_shape, 1},
      {"W2", offsetof(params, w2), w2_shape, 2},
      {"b2", offsetof(params, b2), b2_shape, 1},
  };
  const struct {
    const char *suffix;
    params *copy;
  } copies[] = {{"", weights}, {".adam_m", adam_m}, {".adam_v", adam_v}};
  for (size_t t = 0; t < sizeof tensors / sizeof tensors[0]; t++)
    for (size_t c = 0; c < sizeof copies / sizeof copies[0]; c++) {
      char full[64];
      snprintf(full, sizeof full, "%s%s", tensors[t].name, copies[c].suffix);
      const ckpt_status status =
          register_tensor(manager, full, CKPT_DTYPE_F32, tensors[t].shape, tensors[t].ndim,
                          (char *)copies[c].copy + tensors[t].offset);
      if (status != CKPT_STATUS_OK) return status;
    }
  return CKPT_STATUS_OK;
}

/* Writes W1, b1, W2, b2 to path as raw little-endian float32, in that
 * order; false (errno set) if it cannot. */
static bool write_weights(const params *p, const char *path) {
  FILE *file = fopen(path, "wb");
  bool ok = file != NULL && fwrite(p->w1, sizeof p->w1, 1, file) == 1 &&
            fwrite(p->b1, sizeof p->b1, 1, file) == 1 &&
            fwrite(p->w2, sizeof p->w2, 1, file) == 1 &&
            fwrite(p->b2, sizeof p->b2, 1, file) == 1;
  if (file != NULL && fclose(file) != 0) ok = false;
  return ok;
}

#endif
