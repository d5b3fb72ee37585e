/* The manager's collective saves and restores with real MPI ranks, through
 * the MPI adapter: every rank registers a tensor of its own values and has a
 * save callback writing a small file of its own; the checkpoints go to
 * WORKDIR/ckpt, shared by the ranks.
 *
 * Usage: mpirun -np 4 mpi_manager CASE WORKDIR [NUMBER]
 *   save NUMBER               saves checkpoints 1 to NUMBER
 *   restore NUMBER            restores; checkpoint NUMBER must come back
 *   callback_fails            saves 1; rank 2's callback fails saving 2;
 *                             then 2 is saved
 *   killed_mid_save           saves 1; rank 2 is SIGKILLed in its save
 *                             callback of 2
 *   rank0_killed_after_commit saves 1 and 2; rank 0 is SIGKILLed as soon as
 *                             2 returned
 *   save_alone                saves 1; rank 1 alone then calls save
 *   numbers_disagree          saves 1; rank 2 asks for checkpoint 7 while
 *                             the others ask for 5, which every rank
 *                             refuses; then 5 is saved
 *
 * Each rank writes WORKDIR/rank-<r>.log line by line and, once its case
 * passed, a line "pass". A failed check writes "FAIL ..." and MPI_Aborts the
 * job. tests/mpi.rs runs the cases, reads the logs and checks the files. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mpi_support.h"

/* Coordination where every rank takes part: never reached. */
#define GENEROUS_TIMEOUT 60.0
/* Coordination where a rank is missing. */
#define SHORT_TIMEOUT 3.0
/* How late past SHORT_TIMEOUT a timed-out save may return: the requirement
 * is that it returns at all, not how promptly. */
#define LATENESS_ALLOWED 20.0
#define VALUES 16
#define TEXT 512

static char checkpoint_dir[4096];
static float weights[VALUES];

/* What the save callback does. */
static bool node_local;
/* CKPT_TEST_REMOTE=1: every rank names the remote tier WORKDIR/remote. */
static char remote_dir[4096];
static int failing_rank = -1;
static int killed_rank = -1;
/* The checkpoint the restore callback must see. */
static unsigned long long expected_number;


/* `call` returns `expected`. */
#define CHECK_STATUS(expected, call)                                                      \
  do {                                                                                    \
    ckpt_status got_ = (call);                                                            \
    if (got_ != (expected))                                                               \
      fail(__LINE__, "%s returned %s, expected %s: %s", #call, ckpt_status_name(got_), \
           ckpt_status_name(expected), ckpt_last_error_message());                       \
  } while (0)

/* Waits for a request on the trainer's communicator; fails the case rather
 * than hang (a blocking call would also spin a core). */
static void complete(MPI_Request *request) {
  const double deadline = now() + GENEROUS_TIMEOUT;
  int done = 0;
  while (!done) {
    CHECK(MPI_Test(request, &done, MPI_STATUS_IGNORE) == MPI_SUCCESS);
    CHECK(now() < deadline);
    const struct timespec nap = {0, 1000000};
    nanosleep(&nap, NULL);
  }
}

static void wait_for_all(MPI_Comm comm) {
  MPI_Request request;
  CHECK(MPI_Ibarrier(comm, &request) == MPI_SUCCESS);
  complete(&request);
}

/* Every rank of the world passed the same `text`. */
static void check_same_on_every_rank(const char *what, const char *text) {
  char mine[TEXT] = {0};
  snprintf(mine, sizeof mine, "%s", text);
  char *all = calloc((size_t)world_size, TEXT);
  CHECK(all != NULL);
  MPI_Request request;
  CHECK(MPI_Iallgather(mine, TEXT, MPI_CHAR, all, TEXT, MPI_CHAR, MPI_COMM_WORLD, &request) ==
        MPI_SUCCESS);
  complete(&request);
  for (int rank = 0; rank < world_size; rank++) {
    if (strcmp(all + (size_t)rank * TEXT, mine) != 0) {
      fail(__LINE__, "%s: rank %d has \"%s\", this rank \"%s\"", what, rank,
           all + (size_t)rank * TEXT, mine);
    }
  }
  free(all);
}

static bool ends_with(const char *text, const char *end) {
  size_t length = strlen(text);
  size_t end_length = strlen(end);
  return length >= end_length && strcmp(text + length - end_length, end) == 0;
}

/* Value `i` of this rank's tensor in checkpoint `number`. */
static float value(unsigned long long number, int i) {
  return (float)(world_rank * 1000 + (int)number * 10 + i);
}

/* The save callback's file, `<prefix>.note`, and what it holds. */
static void note_path(char *path, size_t size, const char *prefix) {
  snprintf(path, size, "%s.note", prefix);
}

static void note_text(char *text, size_t size, unsigned long long number) {
  snprintf(text, size, "rank %d checkpoint %llu\n", world_rank, number);
}

static int32_t save_note(void *user_data, const char *prefix, uint64_t number) {
  (void)user_data;
  if (world_rank == failing_rank) {
    note("save callback of %llu: returning 7", (unsigned long long)number);
    CHECK(ckpt_callback_set_error("disk quota of rank 2", &failing_rank, NULL) == CKPT_STATUS_OK);
    return 7;
  }
  if (world_rank == killed_rank) {
    note("save callback of %llu: raising SIGKILL", (unsigned long long)number);
    raise(SIGKILL);
  }
  char path[4096];
  char text[TEXT];
  note_path(path, sizeof path, prefix);
  note_text(text, sizeof text, number);
  FILE *file = fopen(path, "w");
  if (file == NULL) return 1;
  const bool written = fputs(text, file) >= 0;
  return fclose(file) == 0 && written ? 0 : 1;
}

static int32_t restore_note(void *user_data, const char *prefix) {
  (void)user_data;
  char path[4096];
  char expected[TEXT];
  char text[TEXT] = {0};
  note_path(path, sizeof path, prefix);
  note_text(expected, sizeof expected, expected_number);
  FILE *file = fopen(path, "r");
  if (file == NULL) {
    note("restore callback: cannot open %s", path);
    return 1;
  }
  const size_t length = fread(text, 1, sizeof text - 1, file);
  fclose(file);
  text[length] = '\0';
  if (strcmp(text, expected) != 0) {
    note("restore callback: %s holds \"%s\"", path, text);
    return 2;
  }
  return 0;
}

/* A manager on the shared (or this rank's) directory, keeping 2 checkpoints, with this
 * rank's tensor registered. */
static ckpt_manager *open_manager(ckpt_communicator *communicator, double timeout) {
  ckpt_options *options = NULL;
  CHECK_STATUS(CKPT_STATUS_OK, ckpt_options_new(&options));
  CHECK_STATUS(CKPT_STATUS_OK, ckpt_options_set_directory(options, checkpoint_dir));
  CHECK_STATUS(CKPT_STATUS_OK, ckpt_options_set_max_to_keep(options, 2));
  CHECK_STATUS(CKPT_STATUS_OK, ckpt_options_set_communicator(options, communicator));
  CHECK_STATUS(CKPT_STATUS_OK, ckpt_options_set_node_local(options, node_local));
  if (remote_dir[0] != '\0') {
    CHECK_STATUS(CKPT_STATUS_OK, ckpt_options_set_remote_directory(options, remote_dir));
  }
  CHECK_STATUS(CKPT_STATUS_OK, ckpt_options_set_coordination_timeout(options, timeout));
  CHECK_STATUS(CKPT_STATUS_OK, ckpt_options_set_save_callback(options, save_note, NULL, NULL));
  CHECK_STATUS(CKPT_STATUS_OK,
               ckpt_options_set_restore_callback(options, restore_note, NULL, NULL));
  ckpt_manager *manager = NULL;
  CHECK_STATUS(CKPT_STATUS_OK, ckpt_manager_new(options, &manager));
  ckpt_options_free(options);
  const uint64_t shape[1] = {VALUES};
  CHECK_STATUS(CKPT_STATUS_OK, ckpt_manager_register_tensor(manager, "weights", CKPT_DTYPE_F32,
                                                            shape, 1, weights));
  return manager;
}

static ckpt_communicator new_communicator(void) {
  ckpt_communicator communicator;
  CHECK(ckpt_mpi_communicator_new(MPI_COMM_WORLD, &communicator) == 0);
  return communicator;
}

/* Saves checkpoint `number` with this rank's values for it; every rank gets
 * the same prefix. */
static void save(ckpt_manager *manager, unsigned long long number) {
  for (int i = 0; i < VALUES; i++) weights[i] = value(number, i);
  char *prefix = NULL;
  CHECK_STATUS(CKPT_STATUS_OK, ckpt_manager_save(manager, NULL, true, &prefix));
  CHECK(prefix != NULL);
  note("saved %s", prefix);
  char end[64];
  snprintf(end, sizeof end, "/ckpt-%llu", number);
  CHECK(ends_with(prefix, end));
  check_same_on_every_rank("the saved checkpoint", strrchr(prefix, '/'));
  ckpt_string_free(prefix);
}

/* A save (of `number`, or the next one when NULL) that fails with `expected`
 * within the bounds of a timeout when it is CKPT_STATUS_TIMEOUT; returns the
 * message. */
static const char *save_failing(ckpt_manager *manager, const uint64_t *number,
                                ckpt_status expected) {
  char *prefix = NULL;
  const double start = now();
  const ckpt_status status = ckpt_manager_save(manager, number, true, &prefix);
  const double elapsed = now() - start;
  const char *message = ckpt_last_error_message();
  note("save returned %s after %.3f s: %s", ckpt_status_name(status), elapsed, message);
  CHECK(status == expected);
  CHECK(prefix == NULL);
  if (expected == CKPT_STATUS_TIMEOUT) {
    CHECK(elapsed >= SHORT_TIMEOUT);
    CHECK(elapsed < SHORT_TIMEOUT + LATENESS_ALLOWED);
  }
  return message;
}

static void save_checkpoints(unsigned long long count) {
  ckpt_communicator communicator = new_communicator();
  ckpt_manager *manager = open_manager(&communicator, GENEROUS_TIMEOUT);
  for (unsigned long long number = 1; number <= count; number++) save(manager, number);
  /* Every rank's uploads (its pieces; rank 0's commits) are done. */
  if (remote_dir[0] != '\0') {
    CHECK_STATUS(CKPT_STATUS_OK, ckpt_manager_wait_until_finished(manager, GENEROUS_TIMEOUT));
  }
  ckpt_manager_free(manager);
  ckpt_mpi_communicator_free(&communicator);
}

static void restore(unsigned long long number) {
  ckpt_communicator communicator = new_communicator();
  ckpt_manager *manager = open_manager(&communicator, GENEROUS_TIMEOUT);
  for (int i = 0; i < VALUES; i++) weights[i] = -1.0f;
  expected_number = number;
  char *prefix = NULL;
  CHECK_STATUS(CKPT_STATUS_OK, ckpt_manager_restore_or_initialize(manager, &prefix));
  CHECK(prefix != NULL);
  note("restored %s", prefix);
  char end[64];
  snprintf(end, sizeof end, "/ckpt-%llu", number);
  CHECK(ends_with(prefix, end));
  check_same_on_every_rank("the restored checkpoint", strrchr(prefix, '/'));
  for (int i = 0; i < VALUES; i++) {
    if (weights[i] != value(number, i)) {
      fail(__LINE__, "value %d is %g, not %g", i, (double)weights[i], (double)value(number, i));
    }
  }
  ckpt_string_free(prefix);
  ckpt_manager_free(manager);
  ckpt_mpi_communicator_free(&communicator);
}

/* The state file's bytes (at most `size - 1`), NUL-terminated. */
static void read_state_file(char *text, size_t size) {
  char path[4096 + 16];
  snprintf(path, sizeof path, "%s/checkpoint", checkpoint_dir);
  FILE *file = fopen(path, "r");
  CHECK(file != NULL);
  const size_t length = fread(text, 1, size - 1, file);
  CHECK(feof(file));
  fclose(file);
  text[length] = '\0';
}

static void check_no_staging(void) {
  DIR *directory = opendir(checkpoint_dir);
  CHECK(directory != NULL);
  const struct dirent *entry;
  while ((entry = readdir(directory)) != NULL) {
    if (strstr(entry->d_name, "staging") != NULL) fail(__LINE__, "%s is left", entry->d_name);
  }
  closedir(directory);
}

/* On rank 0: the state file still holds `state_before` and no staging
 * directory is left. */
static void check_nothing_committed(const char *state_before) {
  if (world_rank != 0) return;
  char state_after[4096];
  read_state_file(state_after, sizeof state_after);
  CHECK(strcmp(state_before, state_after) == 0);
  check_no_staging();
}

static void callback_fails(void) {
  ckpt_communicator communicator = new_communicator();
  ckpt_manager *manager = open_manager(&communicator, GENEROUS_TIMEOUT);
  save(manager, 1);
  char state_before[4096];
  if (world_rank == 0) read_state_file(state_before, sizeof state_before);

  failing_rank = 2;
  const char *message = save_failing(manager, NULL, CKPT_STATUS_CALLBACK_FAILED);
  CHECK(strncmp(message, "rank 2:", 7) == 0);
  CHECK(strstr(message, "disk quota of rank 2") != NULL);
  check_same_on_every_rank("the error message", message);
  /* What the callback attached comes back on its own rank only. */
  void *payload = NULL;
  CHECK(ckpt_take_error_payload(&payload) == CKPT_STATUS_OK);
  CHECK(payload == (world_rank == 2 ? (void *)&failing_rank : NULL));
  failing_rank = -1;
  check_nothing_committed(state_before);

  save(manager, 2);
  ckpt_manager_free(manager);
  ckpt_mpi_communicator_free(&communicator);
}

static void numbers_disagree(void) {
  ckpt_communicator communicator = new_communicator();
  ckpt_manager *manager = open_manager(&communicator, GENEROUS_TIMEOUT);
  save(manager, 1);
  char state_before[4096];
  if (world_rank == 0) read_state_file(state_before, sizeof state_before);

  const uint64_t asked = world_rank == 2 ? 7 : 5;
  const char *message = save_failing(manager, &asked, CKPT_STATUS_INVALID_ARGUMENT);
  CHECK(strstr(message, "rank 2: checkpoint_number 7") != NULL);
  CHECK(strstr(message, "ranks 0, 1, 3: checkpoint_number 5") != NULL);
  check_same_on_every_rank("the error message", message);
  check_nothing_committed(state_before);

  const uint64_t agreed = 5;
  char *prefix = NULL;
  CHECK_STATUS(CKPT_STATUS_OK, ckpt_manager_save(manager, &agreed, true, &prefix));
  CHECK(prefix != NULL && ends_with(prefix, "/ckpt-5"));
  ckpt_string_free(prefix);
  ckpt_manager_free(manager);
  ckpt_mpi_communicator_free(&communicator);
}

/* The ranks but `victim`, for the survivors' own wait before MPI_Abort. */
static MPI_Comm survivors_of(int victim) {
  MPI_Comm survivors;
  CHECK(MPI_Comm_split(MPI_COMM_WORLD, world_rank == victim ? MPI_UNDEFINED : 0, world_rank,
                       &survivors) == MPI_SUCCESS);
  return survivors;
}

/* Once a rank is dead, MPI_Finalize would wait for it: the survivors log
 * "pass", wait for each other and end the job. */
static void end_without(MPI_Comm survivors) {
  note("pass");
  wait_for_all(survivors);
  MPI_Abort(MPI_COMM_WORLD, 3);
}

static void killed_mid_save(void) {
  const int victim = 2;
  MPI_Comm survivors = survivors_of(victim);
  ckpt_communicator communicator = new_communicator();
  ckpt_manager *manager = open_manager(&communicator, GENEROUS_TIMEOUT);
  save(manager, 1);
  ckpt_manager_free(manager);
  manager = open_manager(&communicator, SHORT_TIMEOUT);
  killed_rank = victim;
  save_failing(manager, NULL, CKPT_STATUS_TIMEOUT);
  ckpt_manager_free(manager);
  ckpt_mpi_communicator_free(&communicator);
  end_without(survivors);
}

static void rank0_killed_after_commit(void) {
  MPI_Comm survivors = survivors_of(0);
  ckpt_communicator communicator = new_communicator();
  ckpt_manager *manager = open_manager(&communicator, GENEROUS_TIMEOUT);
  save(manager, 1);
  for (int i = 0; i < VALUES; i++) weights[i] = value(2, i);
  char *prefix = NULL;
  const ckpt_status status = ckpt_manager_save(manager, NULL, true, &prefix);
  if (world_rank == 0 && status == CKPT_STATUS_OK) {
    note("saved %s; raising SIGKILL", prefix);
    raise(SIGKILL);
  }
  CHECK_STATUS(CKPT_STATUS_OK, status);
  note("saved %s", prefix);
  CHECK(ends_with(prefix, "/ckpt-2"));
  ckpt_string_free(prefix);
  ckpt_manager_free(manager);
  ckpt_mpi_communicator_free(&communicator);
  end_without(survivors);
}

static void save_alone(void) {
  const int alone = 1;
  ckpt_communicator communicator = new_communicator();
  ckpt_manager *manager = open_manager(&communicator, GENEROUS_TIMEOUT);
  save(manager, 1);
  ckpt_manager_free(manager);
  manager = open_manager(&communicator, SHORT_TIMEOUT);
  if (world_rank == alone) {
    save_failing(manager, NULL, CKPT_STATUS_TIMEOUT);
  } else {
    note("not calling save");
  }
  ckpt_manager_free(manager);
  ckpt_mpi_communicator_free(&communicator);
  wait_for_all(MPI_COMM_WORLD);
}

static unsigned long long number_argument(int argc, char **argv) {
  if (argc < 4) fail(__LINE__, "%s needs a NUMBER", argv[1]);
  return strtoull(argv[3], NULL, 10);
}

int main(int argc, char **argv) {
  start_rank(&argc, &argv, "mpi_manager.c", "CASE WORKDIR [NUMBER]");
  /* CKPT_TEST_NODE_LOCAL=1: each rank has its own directory, ckpt/rank-R. */
  const char *layout = getenv("CKPT_TEST_NODE_LOCAL");
  node_local = layout != NULL && strcmp(layout, "1") == 0;
  if (node_local) {
    snprintf(checkpoint_dir, sizeof checkpoint_dir, "%s/ckpt/rank-%d", argv[2], world_rank);
  } else {
    snprintf(checkpoint_dir, sizeof checkpoint_dir, "%s/ckpt", argv[2]);
  }
  const char *remote = getenv("CKPT_TEST_REMOTE");
  if (remote != NULL && strcmp(remote, "1") == 0) {
    snprintf(remote_dir, sizeof remote_dir, "%s/remote", argv[2]);
  }
  const char *name = argv[1];
  note("rank %d of %d: %s %s", world_rank, world_size, name, argc > 3 ? argv[3] : "");
  CHECK(world_size == 4);
  if (strcmp(name, "save") == 0) {
    save_checkpoints(number_argument(argc, argv));
  } else if (strcmp(name, "restore") == 0) {
    restore(number_argument(argc, argv));
  } else if (strcmp(name, "callback_fails") == 0) {
    callback_fails();
  } else if (strcmp(name, "killed_mid_save") == 0) {
    killed_mid_save();
  } else if (strcmp(name, "rank0_killed_after_commit") == 0) {
    rank0_killed_after_commit();
  } else if (strcmp(name, "save_alone") == 0) {
    save_alone();
  } else if (strcmp(name, "numbers_disagree") == 0) {
    numbers_disagree();
  } else {
    fail(__LINE__, "no case %s", name);
  }
  MPI_Finalize();
  note("pass");
  fclose(rank_log);
  return 0;
}
