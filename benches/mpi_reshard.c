/* Restoring a checkpoint saved by 4 ranks onto another number of ranks:
 * what each rank reads against what it needs (scripts/bench-reshard runs it;
 * see docs/benchmarks.md).
 *
 * Usage: mpirun -np N mpi_reshard MODE DIRECTORY TOTAL_MIB
 *   save     registers this rank's rows of a sharded f32 tensor "w" of
 *            TOTAL_MIB (rows of 4 KiB, split by rows over the N ranks) and a
 *            replicated f32 tensor "emb" of TOTAL_MIB / 16, and saves once
 *   restore  registers this rank's rows of "w" (the same split over this
 *            run's N ranks, uneven when N does not divide the rows) and
 *            "emb", and restores, timed from an MPI_Barrier to the return;
 *            then checks every restored value
 *
 * Bytes read are the change of this process's `rchar` in /proc/self/io
 * across the restore call: every byte a read or pread returned, from the
 * page cache or the disk, the manifest and state file included. Rank 0
 * prints one line per run,
 *   {"mode":"restore","ranks":2,"total_mib":256,"per_rank":[[ms,read,needed],...]}
 * where needed is the bytes of the rank's rows and of "emb". */
#define _POSIX_C_SOURCE 200809L

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ckpt_manager_mpi.h"

#define COLS 1024 /* a row is 4 KiB */
#define COORDINATION_TIMEOUT 300.0

static int world_rank;

static void die(const char *what, const char *detail) {
  fprintf(stderr, "rank %d: %s: %s\n", world_rank, what, detail);
  MPI_Abort(MPI_COMM_WORLD, 1);
  exit(1);
}

static void check(ckpt_status status, const char *what) {
  if (status != CKPT_STATUS_OK) die(what, ckpt_last_error_message());
}

static double now(void) {
  struct timespec time;
  clock_gettime(CLOCK_MONOTONIC, &time);
  return (double)time.tv_sec + (double)time.tv_nsec * 1e-9;
}

/* Bytes this process has read so far (rchar of /proc/self/io). */
static uint64_t bytes_read(void) {
  FILE *io = fopen("/proc/self/io", "r");
  if (io == NULL) die("/proc/self/io", "cannot open");
  char line[128];
  uint64_t rchar = 0;
  while (fgets(line, sizeof line, io) != NULL)
    if (sscanf(line, "rchar: %" SCNu64, &rchar) == 1) break;
  fclose(io);
  return rchar;
}

/* Every element's value, exact in f32. */
static float value(uint64_t row, uint64_t col) { return (float)((row * 31 + col) % 4093); }

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int world_size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  if (argc != 4) die("usage", "mpi_reshard save|restore DIRECTORY TOTAL_MIB");
  const int restore = strcmp(argv[1], "restore") == 0;
  if (!restore && strcmp(argv[1], "save") != 0) die("unknown mode", argv[1]);
  const uint64_t total_mib = strtoull(argv[3], NULL, 10);
  const uint64_t rows = total_mib * 256, emb_rows = rows / 16;
  const uint64_t first = rows * (uint64_t)world_rank / (uint64_t)world_size;
  const uint64_t mine = rows * (uint64_t)(world_rank + 1) / (uint64_t)world_size - first;
  float *w = malloc(mine * COLS * sizeof *w);
  float *emb = malloc(emb_rows * COLS * sizeof *emb);
  if (w == NULL || emb == NULL) die("malloc", "out of memory");
  for (uint64_t r = 0; r < mine; r++)
    for (uint64_t c = 0; c < COLS; c++) w[r * COLS + c] = restore ? -1.0f : value(first + r, c);
  for (uint64_t i = 0; i < emb_rows * COLS; i++) emb[i] = restore ? -1.0f : (float)(i % 977);

  ckpt_communicator communicator;
  if (ckpt_mpi_communicator_new(MPI_COMM_WORLD, &communicator) != 0)
    die("ckpt_mpi_communicator_new", "failed");
  ckpt_options *options = NULL;
  check(ckpt_options_new(&options), "ckpt_options_new");
  check(ckpt_options_set_directory(options, argv[2]), "set_directory");
  check(ckpt_options_set_max_to_keep(options, 1), "set_max_to_keep");
  check(ckpt_options_set_communicator(options, &communicator), "set_communicator");
  check(ckpt_options_set_coordination_timeout(options, COORDINATION_TIMEOUT),
        "set_coordination_timeout");
  ckpt_manager *manager = NULL;
  check(ckpt_manager_new(options, &manager), "ckpt_manager_new");
  ckpt_options_free(options);
  const uint64_t global[2] = {rows, COLS}, offset[2] = {first, 0}, local[2] = {mine, COLS};
  check(ckpt_manager_register_tensor_slice(manager, "w", CKPT_DTYPE_F32, global, offset, local,
                                           2, w),
        "register_tensor_slice");
  const uint64_t emb_shape[2] = {emb_rows, COLS};
  check(ckpt_manager_register_replicated_tensor(manager, "emb", CKPT_DTYPE_F32, emb_shape, 2,
                                                emb),
        "register_replicated_tensor");

  double per_rank[3] = {0, 0, (double)((mine + emb_rows) * COLS * sizeof(float))};
  MPI_Barrier(MPI_COMM_WORLD);
  if (restore) {
    char *restored = NULL;
    const uint64_t read_before = bytes_read();
    const double start = now();
    check(ckpt_manager_restore_or_initialize(manager, &restored), "restore_or_initialize");
    per_rank[0] = (now() - start) * 1e3;
    per_rank[1] = (double)(bytes_read() - read_before);
    if (restored == NULL) die("restore", "found no checkpoint");
    ckpt_string_free(restored);
    for (uint64_t r = 0; r < mine; r++)
      for (uint64_t c = 0; c < COLS; c++)
        if (w[r * COLS + c] != value(first + r, c)) die("restore", "a value of w differs");
    for (uint64_t i = 0; i < emb_rows * COLS; i++)
      if (emb[i] != (float)(i % 977)) die("restore", "a value of emb differs");
  } else {
    char *saved = NULL;
    check(ckpt_manager_save(manager, NULL, false, &saved), "save");
    ckpt_string_free(saved);
  }
  double *all = malloc(3 * (size_t)world_size * sizeof *all);
  if (all == NULL) die("malloc", "out of memory");
  MPI_Gather(per_rank, 3, MPI_DOUBLE, all, 3, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  if (world_rank == 0 && restore) {
    printf("{\"mode\":\"restore\",\"ranks\":%d,\"total_mib\":%" PRIu64 ",\"per_rank\":[",
           world_size, total_mib);
    for (int r = 0; r < world_size; r++)
      printf("%s[%.3f,%.0f,%.0f]", r ? "," : "", all[3 * r], all[3 * r + 1], all[3 * r + 2]);
    printf("]}\n");
  }
  free(all);
  ckpt_manager_free(manager);
  ckpt_mpi_communicator_free(&communicator);
  free(w);
  free(emb);
  MPI_Finalize();
  return 0;
}
