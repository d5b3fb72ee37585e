/* The cost of a collective save across MPI ranks against one process saving
 * the same bytes (scripts/bench-mpi runs it; see docs/benchmarks.md).
 *
 * Usage: mpirun -np N mpi_commit MODE DIRECTORY TOTAL_MIB SAVES
 *   ranks        a communicator over the N ranks; TENSORS tensors of
 *                TOTAL_MIB in all, split evenly: each rank registers
 *                TENSORS / N of them
 *   alone        no communicator, -np 1: the one process registers all
 *                TENSORS, TOTAL_MIB in all
 *   ranks-empty, alone-empty
 *                the same with one 4-byte tensor per rank: coordination,
 *                manifests and commit without the bytes
 *
 * Each of SAVES timed saves (after one untimed save that warms the files
 * and the page cache) starts after an MPI_Barrier; rank 0 times it from
 * before ckpt_manager_save to its return. max_to_keep is 2, so every save
 * also sweeps one checkpoint, on both sides. Rank 0 prints one line,
 *   {"mode":"ranks","ranks":4,"total_mib":256,"save_ms":[...]}
 * and the ranks remove nothing: the script cleans DIRECTORY. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ckpt_manager_mpi.h"

#define TENSORS 16
#define COORDINATION_TIMEOUT 300.0

static int world_rank;

static void die(const char *what, const char *detail) {
  fprintf(stderr, "rank %d: %s: %s\n", world_rank, what, detail);
  MPI_Abort(MPI_COMM_WORLD, 1);
}

static void check(ckpt_status status, const char *what) {
  if (status != CKPT_STATUS_OK) die(what, ckpt_last_error_message());
}

static double now(void) {
  struct timespec time;
  clock_gettime(CLOCK_MONOTONIC, &time);
  return (double)time.tv_sec + (double)time.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int world_size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  if (argc != 5) die("usage", "mpi_commit MODE DIRECTORY TOTAL_MIB SAVES");
  const char *mode = argv[1];
  const int collective = strncmp(mode, "ranks", 5) == 0;
  const int empty = strstr(mode, "-empty") != NULL;
  if (!collective && strncmp(mode, "alone", 5) != 0) die("unknown mode", mode);
  if (!collective && world_size != 1) die(mode, "runs with -np 1");
  if (TENSORS % world_size != 0) die("rank count", "does not divide the 16 tensors");
  const size_t total_bytes = strtoull(argv[3], NULL, 10) << 20;
  const int saves = atoi(argv[4]);

  const int tensors = empty ? 1 : TENSORS / world_size;
  const size_t tensor_bytes = empty ? 4 : total_bytes / TENSORS;
  unsigned char *data = malloc((size_t)tensors * tensor_bytes);
  if (data == NULL) die("malloc", "out of memory");
  for (size_t i = 0; i < (size_t)tensors * tensor_bytes; i++) {
    data[i] = (unsigned char)(i * 31 + (size_t)world_rank);
  }

  ckpt_communicator communicator;
  if (collective && ckpt_mpi_communicator_new(MPI_COMM_WORLD, &communicator) != 0) {
    die("ckpt_mpi_communicator_new", "failed");
  }
  ckpt_options *options = NULL;
  check(ckpt_options_new(&options), "ckpt_options_new");
  check(ckpt_options_set_directory(options, argv[2]), "set_directory");
  check(ckpt_options_set_max_to_keep(options, 2), "set_max_to_keep");
  if (collective) {
    check(ckpt_options_set_communicator(options, &communicator), "set_communicator");
    check(ckpt_options_set_coordination_timeout(options, COORDINATION_TIMEOUT),
          "set_coordination_timeout");
  }
  ckpt_manager *manager = NULL;
  check(ckpt_manager_new(options, &manager), "ckpt_manager_new");
  ckpt_options_free(options);
  for (int t = 0; t < tensors; t++) {
    char name[64];
    snprintf(name, sizeof name, "rank%d.tensor%d", world_rank, t);
    const uint64_t shape[1] = {tensor_bytes};
    check(ckpt_manager_register_tensor(manager, name, CKPT_DTYPE_U8, shape, 1,
                                       data + (size_t)t * tensor_bytes),
          "register_tensor");
  }

  double *milliseconds = calloc((size_t)saves, sizeof *milliseconds);
  if (milliseconds == NULL) die("calloc", "out of memory");
  for (int s = -1; s < saves; s++) {
    data[0] = (unsigned char)s; /* each checkpoint differs from the last */
    char *prefix = NULL;
    MPI_Barrier(MPI_COMM_WORLD);
    const double start = now();
    check(ckpt_manager_save(manager, NULL, false, &prefix), "ckpt_manager_save");
    const double elapsed = now() - start;
    ckpt_string_free(prefix);
    if (s >= 0) milliseconds[s] = elapsed * 1e3;
  }

  if (world_rank == 0) {
    printf("{\"mode\":\"%s\",\"ranks\":%d,\"total_mib\":%zu,\"save_ms\":[", mode, world_size,
           empty ? 0 : total_bytes >> 20);
    for (int s = 0; s < saves; s++) printf("%s%.3f", s ? "," : "", milliseconds[s]);
    printf("]}\n");
  }
  ckpt_manager_free(manager);
  if (collective) ckpt_mpi_communicator_free(&communicator);
  free(milliseconds);
  free(data);
  MPI_Finalize();
  return 0;
}
