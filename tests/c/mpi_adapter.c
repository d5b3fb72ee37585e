/* The MPI adapter, include/ckpt_manager_mpi.h, with real MPI ranks: what
 * each collective delivers on every rank, its argument checks, and what the
 * others get when a rank never makes a collective call or is SIGKILLed
 * before it.
 *
 * Usage: mpirun -np 4 mpi_adapter CASE WORKDIR [COLLECTIVE]
 *   CASE        collectives | invalid_arguments | silent_rank | killed_rank
 *   COLLECTIVE  barrier | broadcast | all_gather (the last two cases)
 *
 * Each rank writes WORKDIR/rank-<r>.log line by line and, once its case
 * passed, a line "pass". A failed check writes "FAIL ..." and MPI_Aborts the
 * job. tests/mpi.rs runs the cases and reads the logs. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mpi_support.h"

/* Collectives that every rank makes: they never wait this long. */
#define GENEROUS_TIMEOUT 60.0
/* The timeout of a collective some rank does not make. */
#define SHORT_TIMEOUT 2.0
/* How late past SHORT_TIMEOUT a timed-out collective may return: the
 * requirement is that it returns at all, not how promptly. */
#define LATENESS_ALLOWED 20.0



/* `call` on `communicator` returns `expected`. */
#define CHECK_CODE(expected, communicator, call)                                              \
  do {                                                                                        \
    int32_t got_ = (call);                                                                    \
    if (got_ != (expected))                                                                   \
      fail(__LINE__, "%s returned %d, expected %d (%s)", #call, (int)got_, (int)(expected), \
           ckpt_mpi_communicator_error(&(communicator)));                                     \
  } while (0)

static void *allocate(size_t size) {
  void *memory = malloc(size > 0 ? size : 1);
  CHECK(memory != NULL);
  return memory;
}

/* The trainer's own wait for every rank of `comm`, which fails the case
 * rather than hang (a blocking MPI_Barrier would also spin a core). */
static void wait_for_all(MPI_Comm comm) {
  MPI_Request request;
  CHECK(MPI_Ibarrier(comm, &request) == MPI_SUCCESS);
  const double deadline = now() + GENEROUS_TIMEOUT;
  int done = 0;
  while (!done) {
    CHECK(MPI_Test(&request, &done, MPI_STATUS_IGNORE) == MPI_SUCCESS);
    CHECK(now() < deadline);
    const struct timespec nap = {0, 1000000};
    nanosleep(&nap, NULL);
  }
}

static ckpt_communicator new_communicator(MPI_Comm comm) {
  ckpt_communicator communicator;
  int32_t code = ckpt_mpi_communicator_new(comm, &communicator);
  if (code != 0) fail(__LINE__, "ckpt_mpi_communicator_new returned %d", (int)code);
  return communicator;
}

/* Byte `i` of what `rank` sends in a collective of `length` bytes. */
static unsigned char pattern(int rank, size_t length, size_t i) {
  return (unsigned char)(i * 131 + (size_t)rank * 17 + length * 7 + 1);
}

static void check_broadcast(ckpt_communicator *communicator, int root, size_t length) {
  /* One guard byte past the end; the receivers start with the complement of
   * what they must get, so every byte has to change. */
  unsigned char *buffer = allocate(length + 1);
  for (size_t i = 0; i < length; i++) {
    buffer[i] = communicator->rank == (uint32_t)root ? pattern(root, length, i) : (unsigned char)~pattern(root, length, i);
  }
  buffer[length] = 0x5a;
  CHECK_CODE(0, *communicator,
             communicator->broadcast(communicator->user_data, buffer, length, (uint32_t)root,
                                     GENEROUS_TIMEOUT));
  for (size_t i = 0; i < length; i++) {
    if (buffer[i] != pattern(root, length, i)) {
      fail(__LINE__, "broadcast of %zu bytes from rank %d: byte %zu is %d, not %d", length, root,
           i, buffer[i], pattern(root, length, i));
    }
  }
  CHECK(buffer[length] == 0x5a);
  free(buffer);
}

static void check_all_gather(ckpt_communicator *communicator, size_t length) {
  const size_t size = communicator->size;
  unsigned char *record = allocate(length);
  unsigned char *records = allocate(size * length + 1);
  for (size_t i = 0; i < length; i++) record[i] = pattern(world_rank, length, i);
  for (size_t rank = 0; rank < size; rank++) {
    for (size_t i = 0; i < length; i++) {
      records[rank * length + i] = (unsigned char)~pattern((int)rank, length, i);
    }
  }
  records[size * length] = 0x5a;
  CHECK_CODE(0, *communicator,
             communicator->all_gather(communicator->user_data, record, length, records,
                                      GENEROUS_TIMEOUT));
  for (size_t rank = 0; rank < size; rank++) {
    for (size_t i = 0; i < length; i++) {
      if (records[rank * length + i] != pattern((int)rank, length, i)) {
        fail(__LINE__, "all_gather of %zu bytes: byte %zu of rank %zu's record is wrong", length,
             i, rank);
      }
    }
  }
  CHECK(records[size * length] == 0x5a);
  for (size_t i = 0; i < length; i++) CHECK(record[i] == pattern(world_rank, length, i));
  free(record);
  free(records);
}

/* Every collective with every root, for sizes around CKPT_MPI_MAX_CHUNK
 * (which tests/mpi.rs also sets small, so that broadcasts are split), on
 * the world and on halves of it; and the library accepts the struct. */
static void collectives(void) {
  note("chunk %zu", (size_t)CKPT_MPI_MAX_CHUNK);
  ckpt_communicator communicator = new_communicator(MPI_COMM_WORLD);
  CHECK(communicator.version == CKPT_COMMUNICATOR_VERSION);
  CHECK(communicator.rank == (uint32_t)world_rank);
  CHECK(communicator.size == (uint32_t)world_size);
  CHECK(communicator.user_data != NULL);
  CHECK(communicator.barrier && communicator.broadcast && communicator.all_gather);
  ckpt_options *options = NULL;
  CHECK(ckpt_options_new(&options) == CKPT_STATUS_OK);
  CHECK(ckpt_options_set_communicator(options, &communicator) == CKPT_STATUS_OK);
  ckpt_options_free(options);

  for (int i = 0; i < 3; i++) {
    CHECK_CODE(0, communicator, communicator.barrier(communicator.user_data, GENEROUS_TIMEOUT));
  }
  CHECK_CODE(0, communicator, communicator.barrier(communicator.user_data, INFINITY));

  const size_t chunk = CKPT_MPI_MAX_CHUNK;
  const size_t lengths[] = {0, 1, 7, 4096, 65536 + 3, (1u << 20) + 3};
  const size_t lengths_around_chunk[] = {chunk - 1, chunk, chunk + 1, 3 * chunk + 5};
  const double start = now();
  for (int root = 0; root < world_size; root++) {
    for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
      check_broadcast(&communicator, root, lengths[i]);
    }
    for (size_t i = 0; i < 4 && chunk <= (1u << 20); i++) {
      check_broadcast(&communicator, root, lengths_around_chunk[i]);
    }
  }
  note("broadcasts: %.3f s", now() - start);

  const size_t record_lengths[] = {0, 1, 24, 4097};
  for (size_t i = 0; i < sizeof record_lengths / sizeof record_lengths[0]; i++) {
    check_all_gather(&communicator, record_lengths[i]);
  }

  /* On a communicator of half the ranks, only those take part. */
  MPI_Comm half;
  CHECK(MPI_Comm_split(MPI_COMM_WORLD, world_rank % 2, world_rank, &half) == MPI_SUCCESS);
  ckpt_communicator half_communicator = new_communicator(half);
  MPI_Comm_free(&half); /* The adapter keeps its own duplicate. */
  CHECK(half_communicator.size == (uint32_t)world_size / 2);
  CHECK(half_communicator.rank == (uint32_t)world_rank / 2);
  int32_t world_ranks[2] = {-1, -1};
  int32_t mine = world_rank;
  CHECK_CODE(0, half_communicator,
             half_communicator.all_gather(half_communicator.user_data, &mine, sizeof mine,
                                          world_ranks, GENEROUS_TIMEOUT));
  CHECK(world_ranks[0] == world_rank % 2 && world_ranks[1] == world_rank % 2 + 2);
  check_broadcast(&half_communicator, 1, 1000);
  ckpt_mpi_communicator_free(&half_communicator);

  CHECK(strcmp(ckpt_mpi_communicator_error(&communicator), "") == 0);
  ckpt_mpi_communicator_free(&communicator);
  CHECK(communicator.user_data == NULL && communicator.barrier == NULL);
  ckpt_mpi_communicator_free(&communicator); /* Again: nothing. */
}

/* Every rank makes the same bad call, refused before anything is posted;
 * the communicator is broken afterwards all the same. */
static void check_refused(ckpt_communicator *communicator, int32_t code, const char *message) {
  CHECK_CODE(CKPT_MPI_BROKEN, *communicator,
             communicator->barrier(communicator->user_data, GENEROUS_TIMEOUT));
  const char *error = ckpt_mpi_communicator_error(communicator);
  if (strstr(error, message) == NULL) {
    fail(__LINE__, "the error after code %d is \"%s\", without \"%s\"", (int)code, error, message);
  }
  ckpt_mpi_communicator_free(communicator);
}

static void invalid_arguments(void) {
  /* A failure clears the struct: no stale callbacks or user_data. */
  ckpt_communicator cleared = {0};
  cleared.version = 77;
  cleared.user_data = &cleared;
  CHECK(ckpt_mpi_communicator_new(MPI_COMM_NULL, &cleared) == CKPT_MPI_INVALID_ARGUMENT);
  CHECK(cleared.version == 0 && cleared.user_data == NULL && cleared.barrier == NULL);
  CHECK(ckpt_mpi_communicator_new(MPI_COMM_WORLD, NULL) == CKPT_MPI_INVALID_ARGUMENT);

  unsigned char buffer[8] = {0};
  ckpt_communicator communicator = new_communicator(MPI_COMM_WORLD);
  CHECK_CODE(CKPT_MPI_INVALID_ARGUMENT, communicator,
             communicator.broadcast(communicator.user_data, buffer, sizeof buffer,
                                    (uint32_t)world_size, GENEROUS_TIMEOUT));
  check_refused(&communicator, CKPT_MPI_INVALID_ARGUMENT, "root");

  communicator = new_communicator(MPI_COMM_WORLD);
  CHECK_CODE(CKPT_MPI_INVALID_ARGUMENT, communicator,
             communicator.barrier(communicator.user_data, NAN));
  check_refused(&communicator, CKPT_MPI_INVALID_ARGUMENT, "timeout");

  communicator = new_communicator(MPI_COMM_WORLD);
  CHECK_CODE(CKPT_MPI_INVALID_ARGUMENT, communicator,
             communicator.barrier(communicator.user_data, -1.0));
  check_refused(&communicator, CKPT_MPI_INVALID_ARGUMENT, "timeout");

  /* Never read: the length is refused first. */
  communicator = new_communicator(MPI_COMM_WORLD);
  CHECK_CODE(CKPT_MPI_INVALID_ARGUMENT, communicator,
             communicator.all_gather(communicator.user_data, buffer, (size_t)INT_MAX + 1, buffer,
                                     GENEROUS_TIMEOUT));
  check_refused(&communicator, CKPT_MPI_INVALID_ARGUMENT, "INT_MAX");

  communicator = new_communicator(MPI_COMM_WORLD);
  CHECK_CODE(CKPT_MPI_INVALID_ARGUMENT, communicator,
             communicator.broadcast(communicator.user_data, NULL, 1, 0, GENEROUS_TIMEOUT));
  check_refused(&communicator, CKPT_MPI_INVALID_ARGUMENT, "NULL");
}

/* Makes `collective` with `root` (for a broadcast) and `timeout`. */
static int32_t call(ckpt_communicator *communicator, const char *collective, int root,
                    double timeout) {
  unsigned char buffer[64];
  unsigned char records[64 * 8];
  memset(buffer, world_rank, sizeof buffer);
  if (strcmp(collective, "barrier") == 0) {
    return communicator->barrier(communicator->user_data, timeout);
  }
  if (strcmp(collective, "broadcast") == 0) {
    return communicator->broadcast(communicator->user_data, buffer, sizeof buffer,
                                   (uint32_t)root, timeout);
  }
  if (strcmp(collective, "all_gather") == 0) {
    CHECK(communicator->size <= 64);
    return communicator->all_gather(communicator->user_data, buffer, 8, records, timeout);
  }
  fail(__LINE__, "no collective %s", collective);
  return -1;
}

/* `collective` times out (not before its timeout, nor much after), says so,
 * and leaves the communicator broken: every call fails at once. */
static void expect_timeout(ckpt_communicator *communicator, const char *collective, int root) {
  const double start = now();
  const int32_t code = call(communicator, collective, root, SHORT_TIMEOUT);
  const double elapsed = now() - start;
  const char *error = ckpt_mpi_communicator_error(communicator);
  note("%s returned %d after %.3f s (timeout %.1f s): %s", collective, (int)code, elapsed,
       SHORT_TIMEOUT, error);
  CHECK(code == CKPT_COMMUNICATOR_TIMEOUT);
  CHECK(elapsed >= SHORT_TIMEOUT);
  CHECK(elapsed < SHORT_TIMEOUT + LATENESS_ALLOWED);
  CHECK(strstr(error, "timed out") != NULL);
  const char *collectives[] = {"barrier", "broadcast", "all_gather"};
  for (int i = 0; i < 3; i++) {
    CHECK_CODE(CKPT_MPI_BROKEN, *communicator, call(communicator, collectives[i], 0, SHORT_TIMEOUT));
  }
}

/* The last rank never makes `collective` (a broadcast's root is rank 0):
 * the others time out. The silent rank waits for them on the trainer's
 * communicator, then all free and finalize. */
static void silent_rank(const char *collective) {
  const int silent = world_size - 1;
  ckpt_communicator communicator = new_communicator(MPI_COMM_WORLD);
  CHECK_CODE(0, communicator, communicator.barrier(communicator.user_data, GENEROUS_TIMEOUT));
  if (world_rank == silent) {
    note("not calling %s", collective);
  } else {
    expect_timeout(&communicator, collective, 0);
  }
  wait_for_all(MPI_COMM_WORLD);
  ckpt_mpi_communicator_free(&communicator);
}

/* Rank 2 SIGKILLs itself after a barrier; the others time out in
 * `collective` (a broadcast from rank 2), free the communicator, and end
 * the job with MPI_Abort once every one of them has logged "pass":
 * MPI_Finalize would wait for the dead rank. */
static void killed_rank(const char *collective) {
  const int victim = 2;
  CHECK(world_size > victim);
  MPI_Comm survivors;
  CHECK(MPI_Comm_split(MPI_COMM_WORLD, world_rank == victim ? MPI_UNDEFINED : 0, world_rank,
                       &survivors) == MPI_SUCCESS);
  ckpt_communicator communicator = new_communicator(MPI_COMM_WORLD);
  CHECK_CODE(0, communicator, communicator.barrier(communicator.user_data, GENEROUS_TIMEOUT));
  if (world_rank == victim) {
    note("raising SIGKILL");
    raise(SIGKILL);
  }
  expect_timeout(&communicator, collective, victim);
  ckpt_mpi_communicator_free(&communicator);
  note("pass");
  wait_for_all(survivors);
  MPI_Abort(MPI_COMM_WORLD, 3);
}

int main(int argc, char **argv) {
  start_rank(&argc, &argv, "mpi_adapter.c", "CASE WORKDIR [COLLECTIVE]");
  const char *name = argv[1];
  const char *collective = argc > 3 ? argv[3] : "";
  note("rank %d of %d: %s %s", world_rank, world_size, name, collective);
  if (strcmp(name, "collectives") == 0) {
    collectives();
  } else if (strcmp(name, "invalid_arguments") == 0) {
    invalid_arguments();
  } else if (strcmp(name, "silent_rank") == 0) {
    silent_rank(collective);
  } else if (strcmp(name, "killed_rank") == 0) {
    killed_rank(collective);
  } else {
    fail(__LINE__, "no case %s", name);
  }
  MPI_Finalize();
  note("pass");
  fclose(rank_log);
  return 0;
}
