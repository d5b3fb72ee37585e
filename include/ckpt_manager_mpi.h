/*
 * ckpt-manager's MPI adapter: a `ckpt_communicator` (see ckpt_manager.h)
 * built from an `MPI_Comm`, so that saves and restores are collective over
 * the trainer's MPI ranks.
 *
 * Header-only (every function is `static inline`) and written by hand: the
 * library itself does not link MPI; a program including this header does,
 * as any MPI program (build it with `mpicc ... -lckpt_manager`). C11 or
 * C++; POSIX clocks are needed, so a strict C build defines
 * `_POSIX_C_SOURCE` (200809L) before its first #include (`-std=gnu11` and
 * C++ compilers define it already).
 *
 *   ckpt_communicator communicator;
 *   if (ckpt_mpi_communicator_new(MPI_COMM_WORLD, &communicator) != 0) ...
 *   ckpt_options_set_communicator(options, &communicator);
 *   ... build managers, train, free the managers ...
 *   ckpt_mpi_communicator_free(&communicator);
 *   MPI_Finalize();
 *
 * How it works, and what follows for the trainer:
 *  - The adapter works on its own duplicate of the communicator
 *    (MPI_Comm_dup), so its collectives never match the trainer's, and it
 *    sets MPI_ERRORS_RETURN on that duplicate only: an MPI error there is
 *    a return code, not an abort.
 *  - Each collective is a non-blocking one (MPI_Ibarrier, MPI_Ibcast,
 *    MPI_Iallgather) polled with MPI_Test until it completes or its timeout
 *    passes on CLOCK_MONOTONIC. While some rank has not made the call yet,
 *    the rank sleeps between polls, from 50 microseconds doubling up to 10
 *    milliseconds: a rank waiting for a late one costs little CPU, and
 *    notices its arrival up to 10 ms late. Once every rank is in the call,
 *    it polls without sleeping, as a blocking MPI call does: MPI moves data
 *    only while polled.
 *  - Every callback returns 0 only once every rank has called it (the
 *    broadcast posts a barrier too, since MPI_Bcast alone does not promise
 *    this), so a rank that is dead, or never makes the call, makes the
 *    others return CKPT_COMMUNICATOR_TIMEOUT: they never hang.
 *  - MPI cannot cancel a collective once posted. After any failure,
 *    timeouts included, the communicator is broken: the abandoned
 *    operation stays posted, every later call returns CKPT_MPI_BROKEN at
 *    once, and the trainer should end the job with MPI_Abort (a rank that
 *    is gone can be neither waited for nor left behind: MPI_Finalize may
 *    hang on it). The data of an abandoned call goes through a buffer the
 *    adapter allocated and never frees (one per communicator, since a
 *    broken one posts nothing more), so a late completion never writes to
 *    the caller's memory.
 *
 * Every function and callback returns 0 on success, or one of the codes
 * below.
 */
#ifndef CKPT_MANAGER_MPI_H
#define CKPT_MANAGER_MPI_H

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mpi.h>

#include "ckpt_manager.h"

#if !defined(CLOCK_MONOTONIC)
#error "ckpt_manager_mpi.h needs POSIX clocks: #define _POSIX_C_SOURCE 200809L before the first #include, or compile with -std=gnu11"
#endif

// CKPT_COMMUNICATOR_TIMEOUT (1, from ckpt_manager.h): the timeout passed
// before every rank took part. The communicator is broken from then on.

// An earlier call on this communicator failed or timed out (see the header's
// comment above); nothing was done. The trainer should MPI_Abort.
#define CKPT_MPI_BROKEN 2

// An argument cannot be used: NULL where data is needed, a root not below
// the size, a NaN or negative timeout, an all-gather record longer than
// INT_MAX bytes, MPI_COMM_NULL, an inter-communicator, MPI not initialized
// or already finalized.
#define CKPT_MPI_INVALID_ARGUMENT 3

// The adapter could not allocate memory.
#define CKPT_MPI_OUT_OF_MEMORY 4

// An MPI call failed: the code is CKPT_MPI_ERROR_CLASS_BASE plus the MPI
// error class of its error (MPI_Error_class), e.g. 1000 + MPI_ERR_TRUNCATE.
#define CKPT_MPI_ERROR_CLASS_BASE 1000

// The most bytes one MPI_Ibcast carries (MPI counts are ints): a larger
// broadcast is posted as several, completed together. Defined before the
// #include to override it (the tests make it small to exercise the split).
#ifndef CKPT_MPI_MAX_CHUNK
#define CKPT_MPI_MAX_CHUNK ((size_t)1 << 30)
#endif

#ifdef __cplusplus
extern "C" {
#endif

// What `user_data` points to; private to this header, it may change.
typedef struct {
  MPI_Comm comm;
  int rank;
  int size;
  // 0, or the code of the call that broke the communicator.
  int32_t broken;
  // What broke it; see ckpt_mpi_communicator_error.
  char error[160 + MPI_MAX_ERROR_STRING];
} ckpt_mpi_state_;

static inline double ckpt_mpi_now_(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

// Records a failure that does not come from MPI and breaks the communicator.
static inline int32_t ckpt_mpi_fail_(ckpt_mpi_state_ *state, int32_t code, const char *what,
                                     const char *why) {
  snprintf(state->error, sizeof state->error, "%s: %s", what, why);
  state->broken = code;
  return code;
}

// Records an MPI error (the code `function` returned) and breaks the
// communicator.
static inline int32_t ckpt_mpi_fail_mpi_(ckpt_mpi_state_ *state, int error, const char *what,
                                         const char *function) {
  char text[MPI_MAX_ERROR_STRING] = "";
  int text_length = 0;
  int error_class = MPI_ERR_OTHER;
  if (MPI_Error_class(error, &error_class) != MPI_SUCCESS) {
    error_class = MPI_ERR_OTHER;
  }
  if (MPI_Error_string(error, text, &text_length) != MPI_SUCCESS) {
    snprintf(text, sizeof text, "MPI error %d", error);
  }
  snprintf(state->error, sizeof state->error, "%s: %s failed (error class %d): %s", what,
           function, error_class, text);
  state->broken = CKPT_MPI_ERROR_CLASS_BASE + error_class;
  return state->broken;
}

// What every callback checks before it posts anything.
static inline int32_t ckpt_mpi_check_call_(ckpt_mpi_state_ *state, double timeout_seconds,
                                           const char *what) {
  if (state->broken != 0) {
    return CKPT_MPI_BROKEN;
  }
  if (!(timeout_seconds >= 0)) {
    return ckpt_mpi_fail_(state, CKPT_MPI_INVALID_ARGUMENT, what,
                          "the timeout is NaN or negative");
  }
  return 0;
}

// Polls `requests` until they all complete or `timeout_seconds` after
// `start` pass (an infinite timeout waits for ever). `requests[0]`
// completes once every rank made the call: until then the rank sleeps
// between polls; from then on it polls without sleeping, since MPI moves
// data only while polled (a broadcast's fragments would otherwise advance a
// few per nap). On anything but success the requests stay posted and the
// communicator is broken.
static inline int32_t ckpt_mpi_wait_(ckpt_mpi_state_ *state, MPI_Request *requests, int count,
                                     double start, double timeout_seconds, const char *what) {
  const double first_sleep = 50e-6;
  const double longest_sleep = 10e-3;
  double sleep_seconds = first_sleep;
  int everyone_called = 0;
  for (;;) {
    int error = MPI_SUCCESS;
    if (!everyone_called) {
      error = MPI_Test(&requests[0], &everyone_called, MPI_STATUS_IGNORE);
    }
    int done = 0;
    if (error == MPI_SUCCESS) {
      error = MPI_Testall(count, requests, &done, MPI_STATUSES_IGNORE);
    }
    if (error != MPI_SUCCESS) {
      return ckpt_mpi_fail_mpi_(state, error, what, "MPI_Test");
    }
    if (done) {
      return 0;
    }
    double left = start + timeout_seconds - ckpt_mpi_now_();
    if (left <= 0) {
      snprintf(state->error, sizeof state->error, "%s: timed out after %g s: %s", what,
               timeout_seconds,
               everyone_called ? "every rank made the call, but it did not complete"
                               : "a rank did not make the call");
      state->broken = CKPT_COMMUNICATOR_TIMEOUT;
      return CKPT_COMMUNICATOR_TIMEOUT;
    }
    if (!everyone_called) {
      double nap = sleep_seconds < left ? sleep_seconds : left;
      struct timespec duration;
      duration.tv_sec = (time_t)nap;
      duration.tv_nsec = (long)((nap - (double)duration.tv_sec) * 1e9);
      nanosleep(&duration, NULL); // A signal cuts it short: the loop polls again.
      sleep_seconds = sleep_seconds * 2 < longest_sleep ? sleep_seconds * 2 : longest_sleep;
    }
  }
}

// The `barrier` callback.
static inline int32_t ckpt_mpi_barrier_(void *user_data, double timeout_seconds) {
  ckpt_mpi_state_ *state = (ckpt_mpi_state_ *)user_data;
  const double start = ckpt_mpi_now_();
  int32_t refused = ckpt_mpi_check_call_(state, timeout_seconds, "barrier");
  if (refused != 0) {
    return refused;
  }
  MPI_Request request;
  int error = MPI_Ibarrier(state->comm, &request);
  if (error != MPI_SUCCESS) {
    return ckpt_mpi_fail_mpi_(state, error, "barrier", "MPI_Ibarrier");
  }
  return ckpt_mpi_wait_(state, &request, 1, start, timeout_seconds, "barrier");
}

// The `broadcast` callback: an MPI_Ibarrier, then MPI_Ibcast's of at most
// CKPT_MPI_MAX_CHUNK bytes each, through a staging buffer.
static inline int32_t ckpt_mpi_broadcast_(void *user_data, void *buffer, size_t length,
                                          uint32_t root, double timeout_seconds) {
  ckpt_mpi_state_ *state = (ckpt_mpi_state_ *)user_data;
  const double start = ckpt_mpi_now_();
  const char *what = "broadcast";
  int32_t refused = ckpt_mpi_check_call_(state, timeout_seconds, what);
  if (refused != 0) {
    return refused;
  }
  if (root >= (uint32_t)state->size) {
    return ckpt_mpi_fail_(state, CKPT_MPI_INVALID_ARGUMENT, what, "the root is not a rank");
  }
  if (buffer == NULL && length > 0) {
    return ckpt_mpi_fail_(state, CKPT_MPI_INVALID_ARGUMENT, what, "the buffer is NULL");
  }
  const size_t chunk = CKPT_MPI_MAX_CHUNK < (size_t)INT_MAX ? CKPT_MPI_MAX_CHUNK : (size_t)INT_MAX;
  const size_t chunks = length == 0 ? 0 : (length - 1) / chunk + 1;
  if (chunks >= (size_t)INT_MAX) {
    return ckpt_mpi_fail_(state, CKPT_MPI_INVALID_ARGUMENT, what, "too many chunks");
  }
  unsigned char *staging = (unsigned char *)malloc(length > 0 ? length : 1);
  MPI_Request *requests = (MPI_Request *)malloc((chunks + 1) * sizeof *requests);
  if (staging == NULL || requests == NULL) {
    free(staging);
    free(requests);
    return ckpt_mpi_fail_(state, CKPT_MPI_OUT_OF_MEMORY, what, "cannot allocate its buffer");
  }
  const int is_root = (uint32_t)state->rank == root;
  if (is_root && length > 0) {
    memcpy(staging, buffer, length);
  }
  int error = MPI_Ibarrier(state->comm, &requests[0]);
  if (error != MPI_SUCCESS) { // Nothing posted: nothing can touch the buffers.
    free(staging);
    free(requests);
    return ckpt_mpi_fail_mpi_(state, error, what, "MPI_Ibarrier");
  }
  for (size_t i = 0; i < chunks; i++) {
    const size_t offset = i * chunk;
    const size_t count = length - offset < chunk ? length - offset : chunk;
    error = MPI_Ibcast(staging + offset, (int)count, MPI_BYTE, (int)root, state->comm,
                       &requests[i + 1]);
    if (error != MPI_SUCCESS) {
      return ckpt_mpi_fail_mpi_(state, error, what, "MPI_Ibcast");
    }
  }
  int32_t result = ckpt_mpi_wait_(state, requests, (int)chunks + 1, start, timeout_seconds, what);
  if (result == 0) {
    if (!is_root && length > 0) {
      memcpy(buffer, staging, length);
    }
    free(staging);
    free(requests);
  }
  return result;
}

// The `all_gather` callback: one MPI_Iallgather through a staging buffer
// holding this rank's record, then every rank's.
static inline int32_t ckpt_mpi_all_gather_(void *user_data, const void *record, size_t length,
                                           void *records, double timeout_seconds) {
  ckpt_mpi_state_ *state = (ckpt_mpi_state_ *)user_data;
  const double start = ckpt_mpi_now_();
  const char *what = "all_gather";
  int32_t refused = ckpt_mpi_check_call_(state, timeout_seconds, what);
  if (refused != 0) {
    return refused;
  }
  if ((record == NULL || records == NULL) && length > 0) {
    return ckpt_mpi_fail_(state, CKPT_MPI_INVALID_ARGUMENT, what, "a buffer is NULL");
  }
  const size_t slots = (size_t)state->size + 1;
  if (length > (size_t)INT_MAX || (length > 0 && slots > SIZE_MAX / length)) {
    return ckpt_mpi_fail_(state, CKPT_MPI_INVALID_ARGUMENT, what,
                          "the record is longer than INT_MAX bytes");
  }
  unsigned char *staging = (unsigned char *)malloc(length > 0 ? slots * length : 1);
  if (staging == NULL) {
    return ckpt_mpi_fail_(state, CKPT_MPI_OUT_OF_MEMORY, what, "cannot allocate its buffer");
  }
  if (length > 0) {
    memcpy(staging, record, length);
  }
  MPI_Request request;
  int error = MPI_Iallgather(staging, (int)length, MPI_BYTE, staging + length, (int)length,
                             MPI_BYTE, state->comm, &request);
  if (error != MPI_SUCCESS) {
    free(staging);
    return ckpt_mpi_fail_mpi_(state, error, what, "MPI_Iallgather");
  }
  int32_t result = ckpt_mpi_wait_(state, &request, 1, start, timeout_seconds, what);
  if (result == 0) {
    if (length > 0) {
      memcpy(records, staging + length, length * (size_t)state->size);
    }
    free(staging);
  }
  return result;
}

// Builds a communicator over the ranks of `comm`, for
// `ckpt_options_set_communicator`: `version`, `rank` and `size` (those of
// `comm`), the three callbacks, and a `user_data` holding a duplicate of
// `comm`.
//
// Collective: every rank of `comm` calls it (MPI_Comm_dup, which has no
// timeout: call it where the ranks are together, e.g. after MPI_Init).
// Ownership: `comm` is borrowed (the trainer may free it afterwards);
// `*out` is yours: free it with `ckpt_mpi_communicator_free` before
// MPI_Finalize, once no manager built with it lives. A copy of the struct
// (`ckpt_options_set_communicator` keeps one) shares its state.
// Returns: 0, with `*out` written; or CKPT_MPI_INVALID_ARGUMENT (`out`
// NULL, MPI_COMM_NULL, an inter-communicator, MPI not initialized or
// finalized), CKPT_MPI_OUT_OF_MEMORY, or CKPT_MPI_ERROR_CLASS_BASE + an
// MPI error class (reported only if `comm`'s error handler returns), with
// `*out` zeroed (when `out` is not NULL).
// Threads: MPI's rules for a collective on `comm`. Each callback calls MPI
// on the thread that runs it (the manager's calling thread): with
// MPI_THREAD_FUNNELED that must be the thread that initialized MPI, and if
// the trainer calls MPI on another thread meanwhile, MPI needs
// MPI_THREAD_MULTIPLE. The callbacks of one communicator must not run at
// the same time (one manager runs one collective at a time).
static inline int32_t ckpt_mpi_communicator_new(MPI_Comm comm, ckpt_communicator *out) {
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (out == NULL) {
    return CKPT_MPI_INVALID_ARGUMENT;
  }
  memset(out, 0, sizeof *out);  // what a failure leaves
  if (!initialized || finalized || comm == MPI_COMM_NULL) {
    return CKPT_MPI_INVALID_ARGUMENT;
  }
  int inter = 0;
  int error = MPI_Comm_test_inter(comm, &inter);
  if (error != MPI_SUCCESS) {
    int error_class = MPI_ERR_OTHER;
    MPI_Error_class(error, &error_class);
    return CKPT_MPI_ERROR_CLASS_BASE + error_class;
  }
  if (inter) {
    return CKPT_MPI_INVALID_ARGUMENT;
  }
  ckpt_mpi_state_ *state = (ckpt_mpi_state_ *)calloc(1, sizeof *state);
  if (state == NULL) {
    return CKPT_MPI_OUT_OF_MEMORY;
  }
  error = MPI_Comm_dup(comm, &state->comm);
  if (error == MPI_SUCCESS) {
    error = MPI_Comm_set_errhandler(state->comm, MPI_ERRORS_RETURN);
    if (error == MPI_SUCCESS) {
      error = MPI_Comm_rank(state->comm, &state->rank);
    }
    if (error == MPI_SUCCESS) {
      error = MPI_Comm_size(state->comm, &state->size);
    }
    if (error == MPI_SUCCESS) {
      MPI_Comm_set_name(state->comm, "ckpt_manager"); // For MPI tools; optional.
    } else {
      MPI_Comm_free(&state->comm);
    }
  }
  if (error != MPI_SUCCESS) {
    free(state);
    int error_class = MPI_ERR_OTHER;
    MPI_Error_class(error, &error_class);
    return CKPT_MPI_ERROR_CLASS_BASE + error_class;
  }
  out->version = CKPT_COMMUNICATOR_VERSION;
  out->rank = (uint32_t)state->rank;
  out->size = (uint32_t)state->size;
  out->user_data = state;
  out->barrier = ckpt_mpi_barrier_;
  out->broadcast = ckpt_mpi_broadcast_;
  out->all_gather = ckpt_mpi_all_gather_;
  return 0;
}

// What broke `communicator`: the call that failed first and why (MPI's
// function and message, a refused argument, or a timeout and whether every
// rank had made the call), or "" while it works. Calls refused with
// CKPT_MPI_BROKEN since do not change it. The trainer logs it before
// MPI_Abort.
//
// Not collective. Ownership: `communicator` is borrowed; the string belongs
// to it, valid until `ckpt_mpi_communicator_free`.
// Threads: not while one of its callbacks runs.
static inline const char *ckpt_mpi_communicator_error(const ckpt_communicator *communicator) {
  if (communicator == NULL || communicator->user_data == NULL) {
    return "";
  }
  return ((const ckpt_mpi_state_ *)communicator->user_data)->error;
}

// Frees what `ckpt_mpi_communicator_new` allocated and MPI_Comm_free's the
// duplicate, then zeroes `*communicator` (freeing it again does nothing).
// Call it before MPI_Finalize, once no manager built with it lives (with
// any copy of the struct).
//
// Collective as MPI_Comm_free is: every rank calls it. It does not wait for
// the other ranks, so it also returns on a broken communicator whose peers
// are gone (its abandoned operation stays posted; MPI frees the duplicate
// if that ever completes).
// Ownership: `*communicator` must come from `ckpt_mpi_communicator_new`;
// NULL does nothing.
// Threads: not while one of its callbacks runs.
static inline void ckpt_mpi_communicator_free(ckpt_communicator *communicator) {
  if (communicator == NULL || communicator->user_data == NULL) {
    return;
  }
  ckpt_mpi_state_ *state = (ckpt_mpi_state_ *)communicator->user_data;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) {
    MPI_Comm_free(&state->comm);
  }
  free(state);
  memset(communicator, 0, sizeof *communicator);
}

#ifdef __cplusplus
} // extern "C"
#endif

#endif // CKPT_MANAGER_MPI_H
