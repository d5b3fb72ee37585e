/* TensorFlow's own CheckpointManager test cases, ported to the C API.
 * The fake clock callback stands in for TF's mocked time.time(). */
#define _POSIX_C_SOURCE 200809L
#include <string.h>

#include "test_support.h"

static bool checkpoint_exists(const char *prefix) {
  bool found = false;
  CHECK_OK(ckpt_checkpoint_exists(prefix, &found));
  return found;
}

static ckpt_checkpoint_state *read_state(const char *dir) {
  ckpt_checkpoint_state *state = NULL;
  CHECK_OK(ckpt_get_checkpoint_state(dir, &state));
  CHECK(state != NULL);
  return state;
}

static void check_latest(ckpt_manager *manager, const char *expected) {
  char *latest = NULL;
  CHECK_OK(ckpt_manager_latest(manager, &latest));
  CHECK_STR(expected, latest);
  ckpt_string_free(latest);
}

static uint64_t save_counter(ckpt_manager *manager) {
  uint64_t counter = 0;
  CHECK_OK(ckpt_manager_save_counter(manager, &counter));
  return counter;
}

/* TF testDeletion: max 3, four saves: the first is deleted. */
static void deletion(const char *dir) {
  fake_world world = {.now = 1000.0};
  ckpt_options *options = world_options(&world, dir, 3);
  ckpt_manager *manager = open_manager(options);
  char *paths[4];
  for (int i = 0; i < 4; i++) {
    world.now += 1.0;
    paths[i] = save(manager);
  }
  CHECK(!checkpoint_exists(paths[0]));
  CHECK(!exists(dir, "ckpt-1.index") && !exists(dir, "ckpt-1.data-00000-of-00001"));
  for (int i = 1; i < 4; i++) CHECK(checkpoint_exists(paths[i]));
  CHECK_CHECKPOINTS(manager, "ckpt-2", "ckpt-3", "ckpt-4");
  for (int i = 0; i < 4; i++) ckpt_string_free(paths[i]);
  ckpt_manager_free(manager);
  ckpt_options_free(options);
}

/* TF testKeepAll, with the real wall clock as in TF. */
static void keep_all(const char *dir) {
  fake_world world = {0};
  ckpt_options *options = world_options(&world, dir, 0);
  CHECK_OK(ckpt_options_set_clock_callback(options, NULL, NULL, NULL));
  ckpt_manager *manager = open_manager(options);
  char *first = save(manager), *second = save(manager), *third = save(manager);
  CHECK(checkpoint_exists(first) && checkpoint_exists(second) && checkpoint_exists(third));
  check_latest(manager, third);
  CHECK_CHECKPOINTS(manager, "ckpt-1", "ckpt-2", "ckpt-3");
  ckpt_manager_free(manager);

  manager = open_manager(options);
  char *fourth = save(manager);
  CHECK_CHECKPOINTS(manager, "ckpt-1", "ckpt-2", "ckpt-3", "ckpt-4");
  ckpt_manager_free(manager);

  CHECK_OK(ckpt_options_set_max_to_keep(options, 3));
  manager = open_manager(options);
  CHECK_CHECKPOINTS(manager, "ckpt-1", "ckpt-2", "ckpt-3", "ckpt-4");
  char *fifth = save(manager);
  CHECK_CHECKPOINTS(manager, "ckpt-3", "ckpt-4", "ckpt-5");
  CHECK(!checkpoint_exists(first) && !checkpoint_exists(second));
  CHECK(checkpoint_exists(third) && checkpoint_exists(fourth) && checkpoint_exists(fifth));
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  char *all[] = {first, second, third, fourth, fifth};
  for (int i = 0; i < 5; i++) ckpt_string_free(all[i]);
}

/* TF testSaveRestoreState: timestamps and preservation survive re-opening. */
static void save_restore_state(const char *dir) {
  fake_world world = {.now = 3.0};
  ckpt_options *options = world_options(&world, dir, 2);
  ckpt_manager *first_manager = open_manager(options);
  char *first = join(dir, "ckpt-1"), *second = join(dir, "ckpt-2"),
       *third = join(dir, "ckpt-3"), *fourth = join(dir, "ckpt-4"),
       *fifth = join(dir, "ckpt-5"), *sixth = join(dir, "ckpt-6");
  const double first_time = 10000.0, second_time = first_time + 3610.0;
  world.now = first_time;
  ckpt_string_free(save(first_manager));
  world.now = second_time;
  ckpt_string_free(save(first_manager));
  ckpt_checkpoint_state *state = read_state(dir);
  CHECK(ckpt_checkpoint_state_timestamp_count(state) == 2);
  CHECK(ckpt_checkpoint_state_timestamp(state, 0) == first_time);
  CHECK(ckpt_checkpoint_state_timestamp(state, 1) == second_time);
  ckpt_checkpoint_state_free(state);
  CHECK_CHECKPOINTS(first_manager, "ckpt-1", "ckpt-2");
  check_latest(first_manager, second);
  ckpt_manager_free(first_manager);

  CHECK_OK(ckpt_options_set_keep_checkpoint_every_n_hours(options, 1.5));
  ckpt_manager *second_manager = open_manager(options);
  CHECK_CHECKPOINTS(second_manager, "ckpt-1", "ckpt-2");
  check_latest(second_manager, second);
  const double third_time = second_time + 3600.0 * 0.2;
  world.now = third_time;
  ckpt_string_free(save(second_manager));
  CHECK(checkpoint_exists(first) && checkpoint_exists(second));
  CHECK_CHECKPOINTS(second_manager, "ckpt-2", "ckpt-3");
  state = read_state(dir);
  CHECK(ckpt_checkpoint_state_last_preserved_timestamp(state) == first_time);
  ckpt_checkpoint_state_free(state);
  const double fourth_time = third_time + 3600.0 * 0.5;
  world.now = fourth_time;
  ckpt_string_free(save(second_manager));
  CHECK(checkpoint_exists(first) && !checkpoint_exists(second));
  CHECK_CHECKPOINTS(second_manager, "ckpt-3", "ckpt-4");
  const double fifth_time = fourth_time + 3600.0 * 0.5;
  world.now = fifth_time;
  ckpt_string_free(save(second_manager));
  CHECK_CHECKPOINTS(second_manager, "ckpt-4", "ckpt-5");
  state = read_state(dir);
  CHECK(ckpt_checkpoint_state_last_preserved_timestamp(state) == first_time);
  ckpt_checkpoint_state_free(state);
  ckpt_manager_free(second_manager);

  ckpt_manager *third_manager = open_manager(options);
  check_latest(third_manager, fifth);
  world.now += 10.0;
  ckpt_string_free(save(third_manager));
  state = read_state(dir);
  CHECK(ckpt_checkpoint_state_last_preserved_timestamp(state) == fourth_time);
  ckpt_checkpoint_state_free(state);
  CHECK(checkpoint_exists(first) && checkpoint_exists(fourth));
  CHECK(checkpoint_exists(fifth) && checkpoint_exists(sixth));
  CHECK(!checkpoint_exists(second) && !checkpoint_exists(third));
  CHECK_CHECKPOINTS(third_manager, "ckpt-5", "ckpt-6");
  /* The exact bytes TF writes for this history. */
  char *state_path = join(dir, "checkpoint");
  char *text = read_text(state_path);
  CHECK_STR("model_checkpoint_path: \"ckpt-6\"\n"
            "all_model_checkpoint_paths: \"ckpt-5\"\n"
            "all_model_checkpoint_paths: \"ckpt-6\"\n"
            "all_model_checkpoint_timestamps: 17930.0\n"
            "all_model_checkpoint_timestamps: 17940.0\n"
            "last_preserved_timestamp: 16130.0\n",
            text);
  free(text);
  free(state_path);
  ckpt_manager_free(third_manager);
  ckpt_options_free(options);
  char *all[] = {first, second, third, fourth, fifth, sixth};
  for (int i = 0; i < 6; i++) free(all[i]);
}

/* TF testContinueFromUnmanaged: a manager adopts checkpoints written
 * outside it and never deletes them. */
static void continue_from_unmanaged(const char *dir) {
  fake_world world = {.now = 100.0};
  char *unusual_1 = join(dir, "unusual_prefix-1"), *unusual_2 = join(dir, "unusual_prefix-2");
  CHECK(save_tf_style(&world, unusual_1, 1) == 0);
  CHECK(save_tf_style(&world, unusual_2, 2) == 0);
  /* What tf.train.Checkpoint.save writes: no timestamps. */
  char *state_path = join(dir, "checkpoint");
  write_text(state_path,
             "model_checkpoint_path: \"unusual_prefix-2\"\n"
             "all_model_checkpoint_paths: \"unusual_prefix-2\"\n");
  ckpt_options *options = world_options(&world, dir, 2);
  ckpt_manager *manager = open_manager(options);
  check_latest(manager, unusual_2);
  char *restored = NULL;
  CHECK_OK(ckpt_manager_restore_or_initialize(manager, &restored));
  CHECK_STR(unusual_2, restored);
  ckpt_string_free(restored);
  CHECK(save_counter(manager) == 2);
  world.now += 1;
  char *third = save(manager);
  CHECK_STR("ckpt-3", base_name(third));
  CHECK_CHECKPOINTS(manager, "ckpt-3");
  world.now += 1;
  char *fourth = save(manager);
  CHECK_CHECKPOINTS(manager, "ckpt-3", "ckpt-4");
  world.now += 1;
  char *fifth = save(manager);
  CHECK_CHECKPOINTS(manager, "ckpt-4", "ckpt-5");
  CHECK(checkpoint_exists(unusual_1) && checkpoint_exists(unusual_2));
  CHECK(!checkpoint_exists(third));
  CHECK(checkpoint_exists(fourth) && checkpoint_exists(fifth));
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  free(unusual_1);
  free(unusual_2);
  free(state_path);
  ckpt_string_free(third);
  ckpt_string_free(fourth);
  ckpt_string_free(fifth);
}

/* TF testClockReset: after the clock goes backwards, recovered checkpoints
 * are kept rather than risk deleting a preserved one. */
static void clock_reset(const char *dir) {
  fake_world world = {.now = 10000.0};
  ckpt_options *options = world_options(&world, dir, 1);
  CHECK_OK(ckpt_options_set_keep_checkpoint_every_n_hours(options, 1.0));
  ckpt_manager *first_manager = open_manager(options);
  char *first = save(first_manager);
  world.now += 3600.0;
  char *second = save(first_manager);
  world.now += 3600.0;
  char *third = save(first_manager);
  CHECK(!checkpoint_exists(first));
  CHECK(checkpoint_exists(second) && checkpoint_exists(third));
  CHECK_CHECKPOINTS(first_manager, "ckpt-3");
  ckpt_checkpoint_state *state = read_state(dir);
  CHECK(ckpt_checkpoint_state_last_preserved_timestamp(state) == 13600.0);
  ckpt_checkpoint_state_free(state);
  ckpt_manager_free(first_manager);

  world.now = 5000.0;
  CHECK_OK(ckpt_options_set_keep_checkpoint_every_n_hours(options, 0.0));
  CHECK(world.warnings == 0);
  ckpt_manager *second_manager = open_manager(options);
  CHECK(world.warnings == 1);
  CHECK(strstr(world.last_warning, "clock") != NULL);
  CHECK(checkpoint_exists(second));
  check_latest(second_manager, third);
  CHECK_CHECKPOINTS(second_manager, NULL);
  world.now += 10.0;
  char *fourth = save(second_manager);
  CHECK(checkpoint_exists(second) && checkpoint_exists(third));
  check_latest(second_manager, fourth);
  CHECK_CHECKPOINTS(second_manager, "ckpt-4");
  world.now += 10.0;
  char *fifth = save(second_manager);
  CHECK(checkpoint_exists(second) && checkpoint_exists(third));
  CHECK_CHECKPOINTS(second_manager, "ckpt-5");
  state = read_state(dir);
  CHECK(ckpt_checkpoint_state_last_preserved_timestamp(state) == 5000.0);
  CHECK(ckpt_checkpoint_state_timestamp_count(state) == 1);
  CHECK(ckpt_checkpoint_state_timestamp(state, 0) == 5020.0);
  ckpt_checkpoint_state_free(state);
  ckpt_manager_free(second_manager);
  ckpt_options_free(options);
  char *all[] = {first, second, third, fourth, fifth};
  for (int i = 0; i < 5; i++) ckpt_string_free(all[i]);
}

/* TF testCustomNumbering: explicit numbers still advance the counter. */
static void custom_numbering(const char *dir) {
  fake_world world = {.now = 100.0};
  ckpt_options *options = world_options(&world, dir, 2);
  ckpt_manager *manager = open_manager(options);
  char *path = NULL;
  for (uint64_t step = 0; step <= 8; step += 2) {
    ckpt_string_free(path);
    world.now += 1.0;
    path = save_numbered(manager, step);
    char expected[32];
    snprintf(expected, sizeof expected, "ckpt-%llu", (unsigned long long)step);
    CHECK_STR(expected, base_name(path));
  }
  CHECK(save_counter(manager) == 5);
  world.now += 1.0;
  char *last = save_numbered(manager, 32);
  CHECK_STR("ckpt-32", base_name(last));
  CHECK(save_counter(manager) == 6);
  check_latest(manager, last);
  char *latest_on_disk = NULL;
  CHECK_OK(ckpt_latest_checkpoint(dir, &latest_on_disk));
  CHECK_STR(last, latest_on_disk);
  ckpt_checkpoint_state *state = read_state(dir);
  CHECK(ckpt_checkpoint_state_path_count(state) == 2);
  CHECK_STR(path, ckpt_checkpoint_state_path(state, 0));
  CHECK_STR(last, ckpt_checkpoint_state_path(state, 1));
  ckpt_checkpoint_state_free(state);
  ckpt_string_free(latest_on_disk);
  ckpt_string_free(path);
  ckpt_string_free(last);
  ckpt_manager_free(manager);
  ckpt_options_free(options);
}

/* TF testCustomCheckpointPrefix: two names share one directory. */
static void custom_checkpoint_prefix(const char *dir) {
  fake_world world = {.now = 100.0};
  ckpt_options *options = world_options(&world, dir, 2);
  CHECK_OK(ckpt_options_set_checkpoint_name(options, "ckpt_name"));
  ckpt_manager *manager = open_manager(options);
  char *path = save_numbered(manager, 5);
  CHECK_STR("ckpt_name-5", base_name(path));
  ckpt_string_free(path);
  ckpt_manager_free(manager);
  CHECK_OK(ckpt_options_set_checkpoint_name(options, "ckpt"));
  manager = open_manager(options);
  path = save_numbered(manager, 5);
  CHECK_STR("ckpt-5", base_name(path));
  CHECK(exists(dir, "ckpt_name-5.index") && exists(dir, "ckpt-5.index"));
  ckpt_string_free(path);
  ckpt_manager_free(manager);
  ckpt_options_free(options);
}

/* TF testRestoreOrInitialize: init without a checkpoint, restore with one. */
static void restore_or_initialize(const char *dir) {
  fake_world world = {.now = 100.0, .value = 1.0};
  char *ckpt_dir = join(dir, "ckpt");
  ckpt_options *options = world_options(&world, ckpt_dir, 0);
  ckpt_manager *manager = open_manager(options);
  char *restored = (char *)"untouched";
  CHECK_OK(ckpt_manager_restore_or_initialize(manager, &restored));
  CHECK(restored == NULL);
  CHECK(world.inits == 1 && world.value == 2.0);
  char *saved = save(manager);
  world.value = 7.0;
  CHECK_OK(ckpt_manager_restore_or_initialize(manager, &restored));
  CHECK_STR(saved, restored);
  CHECK(world.restores == 1 && world.inits == 1 && world.value == 2.0);
  ckpt_string_free(saved);
  ckpt_string_free(restored);
  ckpt_manager_free(manager);
  ckpt_options_free(options);
  free(ckpt_dir);
}

static ckpt_options *interval_options(fake_world *world, const char *dir) {
  ckpt_options *options = world_options(world, dir, 0);
  CHECK_OK(ckpt_options_set_step_counter_callback(options, fake_step, world, NULL));
  CHECK_OK(ckpt_options_set_checkpoint_interval(options, 2));
  return options;
}

static void check_saved(char *prefix) {
  CHECK(prefix != NULL);
  CHECK(checkpoint_exists(prefix));
  ckpt_string_free(prefix);
}

/* TF testCheckpointInterval. */
static void checkpoint_interval(const char *dir) {
  fake_world world = {.now = 100.0, .step = 0};
  ckpt_options *options = interval_options(&world, dir);
  ckpt_manager *manager = open_manager(options);
  check_saved(save_checked(manager, true));
  world.step = 1;
  CHECK(save_checked(manager, true) == NULL);
  world.step = 2;
  check_saved(save_checked(manager, true));
  CHECK(save_checked(manager, true) == NULL);
  CHECK(save_checked(manager, false) == NULL);
  world.step = 3;
  CHECK(save_checked(manager, true) == NULL);
  check_saved(save_checked(manager, false));
  CHECK(world.saves == 3);
  ckpt_manager_free(manager);
  ckpt_options_free(options);
}

/* TF testCheckpointIntervalWithLastCheckpointStep (last step 1). */
static void checkpoint_interval_with_last_step(const char *dir) {
  fake_world world = {.now = 100.0, .step = 1};
  ckpt_options *options = interval_options(&world, dir);
  CHECK_OK(ckpt_options_set_last_checkpoint_step(options, 1));
  ckpt_manager *manager = open_manager(options);
  CHECK(save_checked(manager, true) == NULL);
  world.step = 2;
  CHECK(save_checked(manager, true) == NULL);
  world.step = 3;
  check_saved(save_checked(manager, true));
  ckpt_manager_free(manager);
  ckpt_options_free(options);
}

/* TF testCheckpointIntervalWithRestore: restoring sets the last step. */
static void checkpoint_interval_with_restore(const char *dir) {
  fake_world world = {.now = 100.0, .step = 1};
  ckpt_options *options = interval_options(&world, dir);
  ckpt_manager *manager = open_manager(options);
  check_saved(save_checked(manager, false));
  world.step = 2;
  check_saved(save_checked(manager, false));
  ckpt_manager_free(manager);

  manager = open_manager(options);
  char *restored = NULL;
  CHECK_OK(ckpt_manager_restore_or_initialize(manager, &restored));
  CHECK_STR("ckpt-2", base_name(restored));
  ckpt_string_free(restored);
  CHECK(save_checked(manager, true) == NULL);
  world.step = 4;
  check_saved(save_checked(manager, true));
  ckpt_manager_free(manager);
  ckpt_options_free(options);
}

int main(int argc, char **argv) {
  static const test_case cases[] = {
      {"deletion", deletion},
      {"keep_all", keep_all},
      {"save_restore_state", save_restore_state},
      {"continue_from_unmanaged", continue_from_unmanaged},
      {"clock_reset", clock_reset},
      {"custom_numbering", custom_numbering},
      {"custom_checkpoint_prefix", custom_checkpoint_prefix},
      {"restore_or_initialize", restore_or_initialize},
      {"checkpoint_interval", checkpoint_interval},
      {"checkpoint_interval_with_last_step", checkpoint_interval_with_last_step},
      {"checkpoint_interval_with_restore", checkpoint_interval_with_restore},
  };
  return run_test_case(cases, sizeof cases / sizeof cases[0], argc, argv);
}
