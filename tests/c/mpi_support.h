/* What the MPI test programs share: MPI_Init and each rank's log
 * WORKDIR/rank-<r>.log, checks that fail the case (a "FAIL" line, then
 * MPI_Abort of the job), and the monotonic clock. Include after defining
 * _POSIX_C_SOURCE, once per program. */
#ifndef CKPT_MPI_SUPPORT_H
#define CKPT_MPI_SUPPORT_H

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "ckpt_manager_mpi.h"

static FILE *rank_log;
static int world_rank;
static int world_size;
static const char *program_name;

static void note(const char *format, ...) {
  va_list args;
  va_start(args, format);
  vfprintf(rank_log, format, args);
  va_end(args);
  fputc('\n', rank_log);
  fflush(rank_log);
}

static void fail(int line, const char *format, ...) {
  char text[1024];
  va_list args;
  va_start(args, format);
  vsnprintf(text, sizeof text, format, args);
  va_end(args);
  note("FAIL (%s:%d): %s", program_name, line, text);
  fprintf(stderr, "rank %d: FAIL (%s:%d): %s\n", world_rank, program_name, line, text);
  MPI_Abort(MPI_COMM_WORLD, 1);
}

#define CHECK(cond)                                  \
  do {                                               \
    if (!(cond)) fail(__LINE__, "CHECK(%s)", #cond); \
  } while (0)

static double now(void) {
  struct timespec time;
  clock_gettime(CLOCK_MONOTONIC, &time);
  return (double)time.tv_sec + (double)time.tv_nsec * 1e-9;
}

/* MPI_Init, this rank's number, and its log in WORKDIR (argv[2]); `usage`
 * follows the program's name in the usage message. */
static void start_rank(int *argc, char ***argv, const char *program, const char *usage) {
  MPI_Init(argc, argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  program_name = program;
  if (*argc < 3) {
    fprintf(stderr, "usage: mpirun -np 4 %s %s\n", (*argv)[0], usage);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  char path[4096 + 32];
  snprintf(path, sizeof path, "%s/rank-%d.log", (*argv)[2], world_rank);
  rank_log = fopen(path, "w");
  if (rank_log == NULL) {
    fprintf(stderr, "cannot write %s\n", path);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
}

#endif
