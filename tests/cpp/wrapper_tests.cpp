// Tests of the C++ wrapper (bindings/cpp/ckpt_manager.hpp), run case by
// case by tests/cpp_wrapper.rs under AddressSanitizer, LeakSanitizer and
// UndefinedBehaviorSanitizer: `wrapper_tests CASE WORKDIR`.
#include "ckpt_manager.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <unistd.h>

namespace {

// ---------------------------------------------------------------------------
// A minimal harness

[[noreturn]] void test_fail(const char* file, int line, const std::string& what) {
  std::fprintf(stderr, "%s:%d: %s\n", file, line, what.c_str());
  std::fflush(stderr);
  std::exit(1);
}

#define CHECK(cond) \
  do {              \
    if (!(cond)) test_fail(__FILE__, __LINE__, "CHECK(" #cond ")"); \
  } while (0)

template <class A, class B>
void check_eq(const char* file, int line, const A& actual, const B& expected, const char* text) {
  if (!(actual == expected)) {
    std::ostringstream out;
    out << "CHECK_EQ(" << text << "): got " << actual << ", expected " << expected;
    test_fail(file, line, out.str());
  }
}
#define CHECK_EQ(actual, expected) check_eq(__FILE__, __LINE__, (actual), (expected), #actual)

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// Runs `body`, which must throw E; returns a copy of what it threw.
template <class E, class F>
E expect_throw(const char* file, int line, F&& body, const char* text) {
  try {
    body();
  } catch (const E& caught) {
    return caught;
  } catch (const std::exception& other) {
    test_fail(file, line, std::string(text) + " threw another exception: " + other.what());
  } catch (...) {
    test_fail(file, line, std::string(text) + " threw something else");
  }
  test_fail(file, line, std::string(text) + " did not throw");
}
#define EXPECT_THROW(E, ...) expect_throw<E>(__FILE__, __LINE__, [&] { __VA_ARGS__; }, #__VA_ARGS__)

// A ckpt::Error with `status` whose message contains `needle`.
#define EXPECT_ERROR(expected_status, needle, ...)                                       \
  do {                                                                          \
    ckpt::Error error_ = EXPECT_THROW(ckpt::Error, __VA_ARGS__);                \
    if (error_.status() != (expected_status))                                            \
      test_fail(__FILE__, __LINE__,                                                  \
           std::string(#__VA_ARGS__) + ": status " + error_.status_name() +     \
               ", expected " + ckpt::status_name(expected_status) + ": " + error_.what()); \
    if (!contains(error_.what(), (needle)))                                     \
      test_fail(__FILE__, __LINE__,                                                  \
           std::string(#__VA_ARGS__) + ": message \"" + error_.what() +         \
               "\" lacks \"" + (needle) + "\"");                                \
  } while (0)

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path);
}

std::string base_name(const std::string& path) {
  return path.substr(path.rfind('/') + 1);
}

std::vector<std::string> base_names(const std::vector<std::string>& paths) {
  std::vector<std::string> names;
  for (const auto& path : paths) names.push_back(base_name(path));
  return names;
}

std::string joined(const std::vector<std::string>& items) {
  std::string text;
  for (const auto& item : items) text += (text.empty() ? "" : " ") + item;
  return text;
}

// An exception type of the test's own, with a payload.
struct ModelError : std::runtime_error {
  ModelError(const std::string& message, int code) : std::runtime_error(message), code(code) {}
  int code;
};

// A model saved to and restored from `<prefix>.model`, with a fake clock,
// through std::function callbacks that capture it by reference.
struct World {
  double value = 0;
  double now = 1000;
  int64_t step = 0;
  int saves = 0, restores = 0, inits = 0;
  std::vector<std::string> log;

  ckpt::Options options(const std::string& directory, int64_t max_to_keep = 3) {
    ckpt::Options options;
    options.directory(directory)
        .max_to_keep(max_to_keep)
        .clock([this] { return now; })
        .on_save([this](const std::string& prefix, uint64_t number) {
          write_file(prefix + ".model", std::to_string(value) + " " + std::to_string(number));
          ++saves;
        })
        .on_restore([this](const std::string& prefix) {
          std::istringstream in(read_file(prefix + ".model"));
          in >> value;
          ++restores;
        })
        .on_init([this] {
          value = 1;
          ++inits;
        })
        .on_log([this](ckpt_log_level level, const std::string& message) {
          log.push_back((level == CKPT_LOG_LEVEL_WARNING ? "warning: " : "info: ") + message);
        });
    return options;
  }
};

// ---------------------------------------------------------------------------
// Cases

void round_trip(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  World world;
  {
    ckpt::Manager manager(world.options(dir, 2));
    CHECK(!manager.restore_or_initialize().has_value());
    CHECK_EQ(world.inits, 1);
    CHECK_EQ(world.value, 1.0);
    for (int i = 1; i <= 3; ++i) {
      world.value = i * 1.5;
      world.now += 10;
      std::optional<std::string> prefix = manager.save();
      CHECK(prefix.has_value());
      CHECK_EQ(*prefix, dir + "/ckpt-" + std::to_string(i));
    }
    CHECK_EQ(world.saves, 3);
    CHECK_EQ(manager.save_counter(), 3u);
    CHECK_EQ(joined(base_names(manager.checkpoints())), "ckpt-2 ckpt-3");
    CHECK_EQ(manager.latest().value_or("none"), dir + "/ckpt-3");
    CHECK_EQ(manager.directory(), dir);
    CHECK(!ckpt::checkpoint_exists(dir + "/ckpt-1"));
    manager.verify();
    manager.verify(dir + "/ckpt-2", false);
    // An explicit number, and a save that ignores the interval gate.
    CHECK_EQ(manager.save(uint64_t{10}, false).value_or("none"), dir + "/ckpt-10");
    CHECK_EQ(manager.save_counter(), 4u);  // as in TF, counted all the same
    CHECK_EQ(read_file(dir + "/ckpt-10.model"), std::to_string(4.5) + " 10");
  }
  // The first manager released the lock; a second one resumes.
  World resumed;
  ckpt::Manager manager(resumed.options(dir, 2));
  CHECK_EQ(manager.restore_or_initialize().value_or("none"), dir + "/ckpt-10");
  CHECK_EQ(resumed.restores, 1);
  CHECK_EQ(resumed.inits, 0);
  CHECK_EQ(resumed.value, 4.5);
  CHECK_EQ(manager.save().value_or("none"), dir + "/ckpt-11");
}

void save_exception(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  World world;
  bool fail_save = false;
  ckpt::Options options = world.options(dir);
  options.on_save([&](const std::string& prefix, uint64_t number) {
    write_file(prefix + ".model", std::to_string(number));  // a partial checkpoint
    if (fail_save) throw ModelError("disk on fire at " + base_name(prefix), 42);
  });
  ckpt::Manager manager(options);
  CHECK_EQ(manager.save().value_or("none"), dir + "/ckpt-1");

  fail_save = true;
  ModelError error = EXPECT_THROW(ModelError, manager.save());
  CHECK_EQ(std::string(error.what()), "disk on fire at ckpt-2");
  CHECK_EQ(error.code, 42);
  // Nothing was committed: latest, counter, list and files are as before.
  CHECK_EQ(manager.latest().value_or("none"), dir + "/ckpt-1");
  CHECK_EQ(manager.save_counter(), 1u);
  CHECK_EQ(joined(base_names(manager.checkpoints())), "ckpt-1");
  CHECK(!ckpt::checkpoint_exists(dir + "/ckpt-2"));
  CHECK_EQ(ckpt::latest_checkpoint(dir).value_or("none"), dir + "/ckpt-1");

  // Anything may be thrown, not only std::exception; it comes back as is.
  options.on_save([](const std::string&, uint64_t) { throw 7; });
  manager.reset();  // a manager keeps the callbacks it was built with
  ckpt::Manager rebuilt(options);
  CHECK_EQ(EXPECT_THROW(int, rebuilt.save()), 7);
  CHECK_EQ(rebuilt.latest().value_or("none"), dir + "/ckpt-1");
  CHECK_EQ(rebuilt.save_counter(), 1u);
}

void save_exception_then_success(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  bool fail = true;
  ckpt::Manager manager(ckpt::Options().directory(dir).max_to_keep(2).on_save(
      [&](const std::string& prefix, uint64_t) {
        if (fail) throw std::logic_error("not yet");
        write_file(prefix + ".model", "ok");
      }));
  std::logic_error error = EXPECT_THROW(std::logic_error, manager.save());
  CHECK_EQ(std::string(error.what()), "not yet");
  CHECK(!manager.latest().has_value());
  CHECK_EQ(manager.save_counter(), 0u);
  fail = false;
  CHECK_EQ(manager.save().value_or("none"), dir + "/ckpt-1");
  // The failed call left no exception behind for later calls.
  CHECK_EQ(manager.latest().value_or("none"), dir + "/ckpt-1");
}

void restore_exception(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  World world;
  {
    ckpt::Manager manager(world.options(dir));
    world.value = 3;
    manager.save();
  }
  ckpt::Options options = world.options(dir);
  options.on_restore([](const std::string& prefix) {
    throw ModelError("cannot read " + base_name(prefix), 5);
  });
  ckpt::Manager manager(options);
  ModelError error = EXPECT_THROW(ModelError, manager.restore_or_initialize());
  CHECK_EQ(std::string(error.what()), "cannot read ckpt-1");
  CHECK_EQ(error.code, 5);
  CHECK_EQ(manager.latest().value_or("none"), dir + "/ckpt-1");
  // Without an exception, a failed call is a ckpt::Error as usual.
  options.on_restore(nullptr).on_init(nullptr);
  manager.reset();
  ckpt::Manager without_restore(options);
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "restore", without_restore.restore_or_initialize());
}

void init_exception(const std::string& workdir) {
  ckpt::Options options;
  options.directory(workdir + "/run").keep_all().on_init([] {
    throw std::runtime_error("no initial weights");
  });
  ckpt::Manager manager(options);
  auto error = EXPECT_THROW(std::runtime_error, manager.restore_or_initialize());
  CHECK_EQ(std::string(error.what()), "no initial weights");
  // It is the callback's std::runtime_error, not a ckpt::Error.
  try {
    manager.restore_or_initialize();
    CHECK(false);
  } catch (const ckpt::Error&) {
    CHECK(false);
  } catch (const std::runtime_error&) {
  }
}

void step_counter_and_clock_exceptions(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  World world;
  bool fail_step = false, fail_clock = false;
  ckpt::Options options = world.options(dir);
  options.checkpoint_interval(10)
      .step_counter([&]() -> int64_t {
        if (fail_step) throw ModelError("step unknown", 1);
        return world.step;
      })
      .clock([&]() -> double {
        if (fail_clock) throw ModelError("clock stopped", 2);
        return world.now;
      });
  ckpt::Manager manager(options);
  world.step = 10;
  CHECK(manager.save().has_value());
  world.step = 15;
  CHECK(!manager.save().has_value());  // within the interval: skipped

  fail_step = true;
  world.step = 30;
  CHECK_EQ(std::string(EXPECT_THROW(ModelError, manager.save()).what()), "step unknown");
  fail_step = false;
  fail_clock = true;
  // The clock reports failure as NaN, which the library refuses.
  CHECK_EQ(EXPECT_THROW(ModelError, manager.save()).code, 2);
  CHECK_EQ(manager.save_counter(), 1u);
  CHECK_EQ(joined(base_names(manager.checkpoints())), "ckpt-1");

  // The clock is read when a manager opens: the constructor rethrows.
  manager.reset();
  CHECK_EQ(std::string(EXPECT_THROW(ModelError, ckpt::Manager{options}).what()), "clock stopped");
  fail_clock = false;
  ckpt::Manager reopened(options);
  CHECK_EQ(reopened.latest().value_or("none"), dir + "/ckpt-1");
}

void delete_exception(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  World world;
  ckpt::Options options = world.options(dir, 1);
  options.on_delete([](const std::string& prefix) {
    throw ModelError("cannot delete " + base_name(prefix), 9);
  });
  ckpt::Manager manager(options);
  CHECK_EQ(manager.save().value_or("none"), dir + "/ckpt-1");
  // A failed deletion cannot fail the save: ckpt-2 is committed, and the
  // wrapper still rethrows the callback's exception.
  CHECK_EQ(std::string(EXPECT_THROW(ModelError, manager.save()).what()), "cannot delete ckpt-1");
  CHECK_EQ(manager.latest().value_or("none"), dir + "/ckpt-2");
  CHECK_EQ(joined(base_names(manager.checkpoints())), "ckpt-2");
  CHECK(!world.log.empty());
  CHECK(contains(world.log.back(), "could not delete"));
}

void log_exception(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  World world;
  {
    ckpt::Manager manager(world.options(dir));
    world.value = 1;
    manager.save();
    world.value = 2;
    manager.save();
  }
  // Damage the latest: restoring falls back to ckpt-1 with a warning, and
  // the log callback throws on it.
  write_file(dir + "/ckpt-2.model", "damaged, and of another size");
  ckpt::Options options = world.options(dir);
  options.on_log([](ckpt_log_level level, const std::string& message) {
    if (level == CKPT_LOG_LEVEL_WARNING) throw ModelError("log: " + message, 3);
  });
  ckpt::Manager manager(options);
  world.value = 0;
  ModelError error = EXPECT_THROW(ModelError, manager.restore_or_initialize());
  CHECK(contains(error.what(), "ckpt-2"));
  // The call went on after the log callback threw: ckpt-1 was restored.
  CHECK_EQ(world.value, 1.0);
  CHECK_EQ(world.restores, 1);
}

void errors_carry_status_and_message(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  // Options refuse bad values at the setter.
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", ckpt::Options().max_to_keep(0));
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", ckpt::Options().directory(""));
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", ckpt::Options().checkpoint_name("a/b"));
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", ckpt::Options().keep_checkpoint_every_n_hours(-1));
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", ckpt::Options().checkpoint_interval(0));
  {
    ckpt::Error error = EXPECT_THROW(ckpt::Error, ckpt::Options().max_to_keep(0));
    CHECK_EQ(std::string(error.status_name()), "CKPT_STATUS_INVALID_ARGUMENT");
    CHECK(std::strlen(error.what()) > 0);
    CHECK_EQ(std::string(error.what()), std::string(ckpt_last_error_message()));
  }
  // Options without a directory or max_to_keep.
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", ckpt::Manager{ckpt::Options().max_to_keep(1)});
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", ckpt::Manager{ckpt::Options().directory(dir)});

  World world;
  ckpt::Options options = world.options(dir);
  ckpt::Manager writer(options);
  writer.save();
  // A second writer on the directory: LOCKED, naming the holder's pid.
  EXPECT_ERROR(CKPT_STATUS_LOCKED, std::to_string(::getpid()), ckpt::Manager{options});
  // A read-only manager opens beside it, and refuses to save.
  options.read_only(true);
  ckpt::Manager reader(options);
  EXPECT_ERROR(CKPT_STATUS_READ_ONLY, "", reader.save());
  writer.save();
  CHECK_EQ(reader.latest().value_or("none"), dir + "/ckpt-1");
  reader.reload();
  CHECK_EQ(reader.latest().value_or("none"), dir + "/ckpt-2");

  // Damage: verify throws CHECKPOINT_DAMAGED naming the file.
  write_file(dir + "/ckpt-2.model", "x");
  EXPECT_ERROR(CKPT_STATUS_CHECKPOINT_DAMAGED, "ckpt-2.model", writer.verify());
  EXPECT_ERROR(CKPT_STATUS_CHECKPOINT_DAMAGED, "ckpt-2.model",
               ckpt::verify_checkpoint(dir + "/ckpt-2"));
  EXPECT_ERROR(CKPT_STATUS_CHECKPOINT_DAMAGED, "",
               ckpt::latest_checkpoint(dir, CKPT_LATEST_NO_FALLBACK));
  writer.verify(dir + "/ckpt-1");

  // A corrupt state file.
  const std::string corrupt = workdir + "/corrupt";
  ckpt::Manager{ckpt::Options().directory(corrupt).keep_all().on_save(
                    [](const std::string& prefix, uint64_t) { write_file(prefix, ""); })}
      .save();
  write_file(corrupt + "/checkpoint", "\x01\x02 not a state file");
  EXPECT_ERROR(CKPT_STATUS_STATE_CORRUPT, "", ckpt::latest_checkpoint(corrupt));
  EXPECT_ERROR(CKPT_STATUS_STATE_CORRUPT, "", ckpt::get_checkpoint_state(corrupt));

  // A save without a save callback or a tensor.
  ckpt::Manager bare(ckpt::Options().directory(workdir + "/bare").keep_all());
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", bare.save());
}

void optional_none(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  CHECK(!ckpt::latest_checkpoint(dir).has_value());  // no directory at all
  CHECK(!ckpt::get_checkpoint_state(dir).has_value());
  World world;
  ckpt::Options options = world.options(dir);
  options.checkpoint_interval(5).step_counter([&] { return world.step; }).last_checkpoint_step(0);
  ckpt::Manager manager(options);
  CHECK(!manager.latest().has_value());
  CHECK(manager.checkpoints().empty());
  CHECK_EQ(manager.save_counter(), 0u);
  CHECK(!manager.restore_or_initialize().has_value());
  CHECK(!ckpt::latest_checkpoint(dir).has_value());  // directory, no state file
  world.step = 3;
  CHECK(!manager.save().has_value());  // the interval skipped it
  CHECK_EQ(world.saves, 0);
  CHECK(manager.save(std::nullopt, false).has_value());  // forced, at step 3
  world.step = 7;
  CHECK(!manager.save().has_value());
  world.step = 8;
  CHECK_EQ(manager.save().value_or("none"), dir + "/ckpt-2");
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "",
               ckpt::Manager(ckpt::Options().directory(workdir + "/empty").keep_all()).verify());
}

// Counts the copies of the callbacks' captured state that are alive.
struct Token {
  explicit Token(std::shared_ptr<int> count) : count(std::move(count)) {}
  std::shared_ptr<int> count;
};

void move_semantics(const std::string& workdir) {
  auto alive = std::make_shared<int>(0);
  const std::string dir = workdir + "/run";
  {
    ckpt::Options options;
    options.directory(dir).max_to_keep(2).on_save(
        [token = Token(alive)](const std::string& prefix, uint64_t) {
          write_file(prefix + ".model", std::to_string(token.count.use_count()));
        });
    CHECK_EQ(alive.use_count(), 2);  // ours, and the library's copy

    ckpt::Options moved_options(std::move(options));
    CHECK(options.get() == nullptr);
    // A moved-from Options refuses everything, and a callback it cannot
    // take is freed by the wrapper, not leaked (LeakSanitizer checks).
    EXPECT_ERROR(CKPT_STATUS_NULL_ARGUMENT, "", options.max_to_keep(1));
    EXPECT_ERROR(CKPT_STATUS_NULL_ARGUMENT, "", options.on_init([token = Token(alive)] {}));
    CHECK_EQ(alive.use_count(), 2);

    ckpt::Manager first(moved_options);
    ckpt::Manager second(std::move(first));
    CHECK(!first);
    CHECK(first.get() == nullptr);
    CHECK(second);
    EXPECT_ERROR(CKPT_STATUS_NULL_ARGUMENT, "", first.latest());
    EXPECT_ERROR(CKPT_STATUS_NULL_ARGUMENT, "", first.save());
    CHECK_EQ(second.save().value_or("none"), dir + "/ckpt-1");

    // Move assignment frees the target's manager (and its lock) first.
    ckpt::Manager third(ckpt::Options().directory(workdir + "/other").keep_all());
    third = std::move(second);
    CHECK(!second);
    CHECK_EQ(third.save().value_or("none"), dir + "/ckpt-2");
    ckpt::Manager{ckpt::Options().directory(workdir + "/other").keep_all()};  // lock free
    auto& self = third;
    third = std::move(self);  // self-assignment keeps the manager
    CHECK(third);
    CHECK_EQ(third.latest().value_or("none"), dir + "/ckpt-2");

    // The options may go first; the manager keeps the callback alive.
    moved_options = ckpt::Options();
    CHECK_EQ(alive.use_count(), 2);
    CHECK_EQ(third.save().value_or("none"), dir + "/ckpt-3");
    CHECK_EQ(read_file(dir + "/ckpt-3.model"), "2");
    third.reset();
    CHECK(!third);
    // Freed exactly once: no copy is left (ASan would catch a double free).
    CHECK_EQ(alive.use_count(), 1);
  }
  CHECK_EQ(alive.use_count(), 1);

  // Replacing a callback frees the old one; an empty std::function clears it.
  ckpt::Options options;
  options.on_init([token = Token(alive)] {});
  CHECK_EQ(alive.use_count(), 2);
  options.on_init([] {});
  CHECK_EQ(alive.use_count(), 1);
  options.on_restore([token = Token(alive)](const std::string&) {});
  options.on_restore(nullptr);
  CHECK_EQ(alive.use_count(), 1);

  static_assert(!std::is_copy_constructible<ckpt::Manager>::value, "move-only");
  static_assert(!std::is_copy_assignable<ckpt::Manager>::value, "move-only");
  static_assert(std::is_nothrow_move_constructible<ckpt::Manager>::value, "noexcept move");
  static_assert(std::is_nothrow_move_assignable<ckpt::Manager>::value, "noexcept move");
  static_assert(!std::is_copy_constructible<ckpt::Options>::value, "move-only");
  static_assert(std::is_nothrow_move_constructible<ckpt::Options>::value, "noexcept move");
}

void tensors(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  float weights[2][3] = {{1.5f, -2.0f, 3.25f}, {0.0f, 4.0f, -0.5f}};
  int64_t step = 1234;
  double lr = 0.125;
  std::vector<uint8_t> bytes = {1, 2, 255};
  bool flags[2] = {true, false};
  int16_t small[2] = {-7, 300};
  uint16_t half[2] = {0x3c00, 0xc000};  // F16 1.0, -2.0
  std::vector<float> none;               // an empty tensor: data() may be null
  {
    ckpt::Manager manager(ckpt::Options().directory(dir).max_to_keep(2));
    manager.register_tensor("layer.weight", &weights[0][0], {2, 3});
    manager.register_tensor("step", &step, {});
    manager.register_tensor("lr", &lr, {});
    manager.register_tensor("bytes", bytes.data(), {bytes.size()});
    manager.register_tensor("flags", flags, {2});
    manager.register_tensor("small", small, {2});
    manager.register_tensor("half", CKPT_DTYPE_F16, half, {2});
    EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", manager.register_tensor("step", &step, {}));
    manager.register_tensor("empty", none.data(), {4, 0});
    CHECK_EQ(manager.save().value_or("none"), dir + "/ckpt-1");
    CHECK(ckpt::checkpoint_exists(dir + "/ckpt-1"));
    manager.verify();
  }
  static_assert(ckpt::dtype_of_v<float> == CKPT_DTYPE_F32, "");
  static_assert(ckpt::dtype_of_v<const uint32_t> == CKPT_DTYPE_U32, "");
  static_assert(ckpt::dtype_of_v<int8_t> == CKPT_DTYPE_I8, "");
  static_assert(ckpt::dtype_of_v<bool> == CKPT_DTYPE_BOOL, "");

  float restored[2][3] = {};
  int64_t restored_step = 0;
  double restored_lr = 0;
  std::vector<uint8_t> restored_bytes(3);
  bool restored_flags[2] = {false, true};
  int16_t restored_small[2] = {};
  uint16_t restored_half[2] = {};
  ckpt::Manager manager(ckpt::Options().directory(dir).max_to_keep(2));
  manager.register_tensor("layer.weight", &restored[0][0], {2, 3});
  manager.register_tensor("step", &restored_step, {});
  manager.register_tensor("lr", &restored_lr, {});
  manager.register_tensor("bytes", restored_bytes.data(), {3});
  manager.register_tensor("flags", restored_flags, {2});
  manager.register_tensor("small", restored_small, {2});
  manager.register_tensor("empty", none.data(), {4, 0});
  // A dtype that differs from the checkpoint's: nothing is restored.
  manager.register_tensor("half", CKPT_DTYPE_BF16, restored_half, {2});
  EXPECT_ERROR(CKPT_STATUS_TENSOR_MISMATCH, "half", manager.restore_or_initialize());
  CHECK_EQ(restored_step, 0);
  manager.unregister_tensor("half");
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", manager.unregister_tensor("half"));
  manager.register_tensor("half", CKPT_DTYPE_F16, restored_half, {2});
  CHECK_EQ(manager.restore_or_initialize().value_or("none"), dir + "/ckpt-1");
  CHECK(std::memcmp(restored, weights, sizeof weights) == 0);
  CHECK_EQ(restored_step, 1234);
  CHECK_EQ(restored_lr, 0.125);
  CHECK(restored_bytes == bytes);
  CHECK(restored_flags[0] && !restored_flags[1]);
  CHECK_EQ(restored_small[1], 300);
  CHECK_EQ(restored_half[0], 0x3c00);
  CHECK_EQ(restored_half[1], 0xc000);
}

// One process: a whole tensor saved, rows of it restored into a slice; a
// replicated tensor round trips; inconsistent boxes are refused.
void tensor_kinds(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  float whole[4][3] = {{0, 1, 2}, {3, 4, 5}, {6, 7, 8}, {9, 10, 11}};
  double bias[2] = {0.5, -1.5};
  {
    ckpt::Manager manager(ckpt::Options().directory(dir).max_to_keep(2));
    manager.register_tensor("w", &whole[0][0], {4, 3});
    manager.register_replicated_tensor("bias", bias, {2});
    CHECK_EQ(manager.save().value_or("none"), dir + "/ckpt-1");
  }
  float rows[2][3] = {};
  double restored_bias[2] = {};
  ckpt::Manager manager(ckpt::Options().directory(dir).max_to_keep(2));
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "one entry per dimension",
               manager.register_tensor_slice("w", &rows[0][0], {4, 3}, {2}, {2, 3}));
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "",
               manager.register_tensor_slice("w", &rows[0][0], {4, 3}, {3, 0}, {2, 3}));
  manager.register_tensor_slice("w", &rows[0][0], {4, 3}, {2, 0}, {2, 3});
  manager.register_replicated_tensor("bias", restored_bias, {2});
  CHECK_EQ(manager.restore_or_initialize().value_or("none"), dir + "/ckpt-1");
  CHECK(std::memcmp(rows, whole[2], sizeof rows) == 0);
  CHECK(std::memcmp(restored_bias, bias, sizeof bias) == 0);
}

void module_functions(const std::string& workdir) {
  CHECK_EQ(ckpt::version(), std::to_string(CKPT_VERSION_MAJOR) + "." +
                                std::to_string(CKPT_VERSION_MINOR) + "." +
                                std::to_string(CKPT_VERSION_PATCH));
  CHECK_EQ(ckpt::status_name(CKPT_STATUS_LOCKED), "CKPT_STATUS_LOCKED");
  const std::string dir = workdir + "/run";
  World world;
  {
    ckpt::Manager manager(world.options(dir));
    world.now = 100;
    manager.save();
    world.now = 200;
    manager.save();
  }
  CHECK_EQ(ckpt::latest_checkpoint(dir).value_or("none"), dir + "/ckpt-2");
  CHECK_EQ(ckpt::latest_checkpoint(dir, CKPT_LATEST_VERIFY_CHECKSUMS).value_or("none"),
           dir + "/ckpt-2");
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", ckpt::latest_checkpoint(dir, 1u << 7));
  std::optional<ckpt::CheckpointState> state = ckpt::get_checkpoint_state(dir);
  CHECK(state.has_value());
  CHECK_EQ(state->model_checkpoint_path, dir + "/ckpt-2");
  CHECK_EQ(joined(base_names(state->all_model_checkpoint_paths)), "ckpt-1 ckpt-2");
  CHECK_EQ(state->all_model_checkpoint_timestamps.size(), 2u);
  CHECK_EQ(state->all_model_checkpoint_timestamps[1], 200.0);

  CHECK(ckpt::checkpoint_exists(dir + "/ckpt-1"));
  CHECK(!ckpt::checkpoint_exists(dir + "/ckpt-9"));
  ckpt::verify_checkpoint(dir + "/ckpt-1");
  ckpt::remove_checkpoint(dir + "/ckpt-2");
  ckpt::remove_checkpoint(dir + "/ckpt-2");  // nothing left: not an error
  CHECK(!ckpt::checkpoint_exists(dir + "/ckpt-2"));
  // The latest's files are gone: latest_checkpoint falls back to ckpt-1.
  CHECK_EQ(ckpt::latest_checkpoint(dir).value_or("none"), dir + "/ckpt-1");
  EXPECT_ERROR(CKPT_STATUS_CHECKPOINT_DAMAGED, "",
               ckpt::latest_checkpoint(dir, CKPT_LATEST_NO_FALLBACK));
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", ckpt::checkpoint_exists(""));
}

// Object storage options: the library's and the S3 client's keys are taken,
// an unknown key or a bad boolean throws, and so does a directory of a
// scheme the library does not serve. A local directory ignores the options.
void object_storage_options(const std::string& workdir) {
  ckpt::Options().storage_option("aws_region", "us-east-1")
      .storage_option("ckpt_allow_unconditional_writes", "false")
      .storage_option("ckpt_max_retries", "2");
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "no_such_option",
               ckpt::Options().storage_option("no_such_option", "x"));
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "ckpt_allow_unconditional_writes",
               ckpt::Options().storage_option("ckpt_allow_unconditional_writes", "yes"));
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "gs://", ckpt::Options().directory("gs://bucket/run"));
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "gs://", ckpt::latest_checkpoint("gs://bucket/run"));

  const std::string dir = workdir + "/run";
  World world;
  ckpt::Options options = world.options(dir);
  options.storage_option("aws_endpoint", "http://127.0.0.1:1");
  ckpt::Manager manager(options);
  CHECK_EQ(manager.save().value_or("none"), dir + "/ckpt-1");
  CHECK(ckpt::checkpoint_exists(dir + "/ckpt-1"));
}

// A callback may use another manager, whose callbacks throw and are caught
// inside it; and a callback that calls its own manager gets REENTRANT_CALL,
// which, left to propagate, comes out of the outer call as a ckpt::Error.
void nested_calls(const std::string& workdir) {
  World inner_world;
  ckpt::Options inner_options = inner_world.options(workdir + "/inner");
  inner_options.on_save([](const std::string&, uint64_t) { throw ModelError("inner", 1); });
  ckpt::Manager inner(inner_options);
  int inner_failures = 0;
  ckpt::Manager* self = nullptr;
  bool reenter = false;
  ckpt::Manager outer(ckpt::Options().directory(workdir + "/outer").keep_all().on_save(
      [&](const std::string& prefix, uint64_t) {
        try {
          inner.save();
        } catch (const ModelError&) {
          ++inner_failures;
        }
        if (reenter) self->latest();
        write_file(prefix + ".model", "outer");
      }));
  self = &outer;
  CHECK_EQ(outer.save().value_or("none"), workdir + "/outer/ckpt-1");
  CHECK_EQ(inner_failures, 1);
  reenter = true;
  EXPECT_ERROR(CKPT_STATUS_REENTRANT_CALL, "", outer.save());
  CHECK_EQ(inner_failures, 2);
  CHECK_EQ(outer.save_counter(), 1u);
}

// Saves `rounds` numbers from `first` on with a save callback that throws
// ModelError(number) for even numbers: each must come back to this thread.
void save_expecting_own_errors(ckpt::Manager& manager, uint64_t first, int rounds,
                               std::atomic<int>& failures, std::atomic<int>& mixups) {
  for (int round = 0; round < rounds; ++round) {
    const uint64_t number = first + static_cast<uint64_t>(round);
    try {
      manager.save(number, false);
      if (number % 2 == 0) ++mixups;
    } catch (const ModelError& error) {
      ++failures;
      if (static_cast<uint64_t>(error.code) != number) ++mixups;
    } catch (...) {
      ++mixups;
    }
  }
}

// One manager shared by threads: each thread gets its own callback's
// exception, never another thread's.
void threads(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  std::atomic<int> saves{0};
  ckpt::Manager manager(ckpt::Options().directory(dir).keep_all().on_save(
      [&](const std::string& prefix, uint64_t number) {
        if (number % 2 == 0) throw ModelError(base_name(prefix), static_cast<int>(number));
        write_file(prefix + ".model", "x");
        ++saves;
      }));
  constexpr int kThreads = 4, kRounds = 25;
  std::atomic<int> failures{0}, mixups{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      save_expecting_own_errors(manager, static_cast<uint64_t>(t * 1000 + 1), kRounds, failures,
                                mixups);
    });
  }
  for (auto& worker : workers) worker.join();
  CHECK_EQ(mixups.load(), 0);
  CHECK_EQ(saves.load() + failures.load(), kThreads * kRounds);
  CHECK_EQ(manager.checkpoints().size(), static_cast<size_t>(saves.load()));
}

// Two managers built from one Options share its callbacks, which then run
// on both threads at once: each thread still gets its own callback's
// exception, carried across the C boundary once.
void shared_options_threads(const std::string& workdir) {
  std::atomic<int> saves{0};
  ckpt::Options options;
  options.keep_all().on_save([&](const std::string& prefix, uint64_t number) {
    if (number % 2 == 0) throw ModelError(base_name(prefix), static_cast<int>(number));
    write_file(prefix + ".model", "x");
    ++saves;
  });
  ckpt::Manager first(options.directory(workdir + "/first"));
  ckpt::Manager second(options.directory(workdir + "/second"));
  constexpr int kRounds = 40;
  std::atomic<int> failures{0}, mixups{0};
  auto work = [&](ckpt::Manager& manager) {
    save_expecting_own_errors(manager, 1, kRounds, failures, mixups);
  };
  std::thread a(work, std::ref(first)), b(work, std::ref(second));
  a.join();
  b.join();
  CHECK_EQ(mixups.load(), 0);
  CHECK_EQ(failures.load(), kRounds);
  CHECK_EQ(saves.load(), kRounds);
  CHECK_EQ(first.checkpoints().size(), static_cast<size_t>(kRounds / 2));
  CHECK_EQ(second.checkpoints().size(), static_cast<size_t>(kRounds / 2));
}

// Freeing a manager inside its own callback is refused: reset() does
// nothing there, ckpt_manager_free is refused by the library, and the
// manager stays usable (ASan: no use after free; LSan: nothing leaks).
void reset_inside_callback(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  ckpt::Manager* self = nullptr;
  std::string refusal;
  ckpt::Manager manager(ckpt::Options().directory(dir).keep_all().on_save(
      [&](const std::string& prefix, uint64_t) {
        self->reset();
        CHECK(static_cast<bool>(*self));
        ckpt_manager_free(self->get());
        refusal = ckpt_last_error_message();
        write_file(prefix + ".model", "x");
      }));
  self = &manager;
  CHECK_EQ(base_name(manager.save().value_or("none")), "ckpt-1");
  CHECK(contains(refusal, "was not freed"));
  CHECK_EQ(base_name(manager.save().value_or("none")), "ckpt-2");
  CHECK_EQ(base_name(manager.latest().value_or("none")), "ckpt-2");
  manager.reset();  // outside any call: freed
  CHECK(!manager);
}

// Advances the clock and saves with the metric "loss", or with another
// metric only when `loss` is nullopt.
std::optional<std::string> save_loss(World& world, ckpt::Manager& manager,
                                     std::optional<double> loss) {
  world.now += 10;
  ckpt::SaveArgs args;
  if (loss) {
    args.metric("loss", *loss);
  } else {
    args.metric("accuracy", 0.5);
  }
  return manager.save_with(args);
}

std::string listed(const std::string& dir) {
  return joined(base_names(ckpt::get_checkpoint_state(dir).value().all_model_checkpoint_paths));
}

// Best-k by a metric next to max_to_keep: NaN and a missing metric never
// rank, ties keep the newer, and a reopened manager ranks as before.
void keep_best_and_metrics(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  World world;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  {
    ckpt::Manager manager(world.options(dir, 1).keep_best("loss", CKPT_METRIC_MIN, 2));
    CHECK(!manager.best().has_value());
    const std::optional<double> losses[] = {0.5, nan, std::nullopt, 0.3, 0.9, 0.3};
    for (const auto& loss : losses) CHECK(save_loss(world, manager, loss).has_value());
    // Newest (6), best two by loss: 6 and 4 (tied at 0.3; the newer first).
    CHECK_EQ(joined(base_names(manager.checkpoints())), "ckpt-4 ckpt-6");
    CHECK_EQ(base_name(manager.best().value_or("none")), "ckpt-6");
  }
  CHECK_EQ(listed(dir), "ckpt-4 ckpt-6");
  for (int gone : {1, 2, 3, 5}) {
    CHECK(!ckpt::checkpoint_exists(dir + "/ckpt-" + std::to_string(gone)));
  }
  {
    ckpt::Manager manager(world.options(dir, 1).keep_best("loss", CKPT_METRIC_MIN, 2));
    CHECK_EQ(base_name(manager.best().value_or("none")), "ckpt-6");
    save_loss(world, manager, 0.4);  // 7: 4 and 6 stay the best two
    CHECK_EQ(joined(base_names(manager.checkpoints())), "ckpt-4 ckpt-6 ckpt-7");
  }

  ckpt::Options options;
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", options.keep_best("loss", CKPT_METRIC_MIN, 0));
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", options.keep_best("", CKPT_METRIC_MAX, 1));
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "",
               options.keep_best("loss", static_cast<ckpt_metric>(7), 1));
  ckpt::SaveArgs args;
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", args.metric("", 1.0));
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", args.metadata_json("[1, 2]"));
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", args.metadata_json("{\"open\": "));
  ckpt::SaveArgs moved(std::move(args));
  CHECK(args.get() == nullptr);
  EXPECT_ERROR(CKPT_STATUS_NULL_ARGUMENT, "", args.metric("loss", 1.0));
  // Without keep_best there is no best.
  ckpt::Manager plain(ckpt::Options().directory(workdir + "/plain").keep_all());
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", plain.best());
}

// keep_period and pins next to max_to_keep; a pin is in the manifest on
// disk and survives reopening; unpin deletes nothing until the next save.
void remote_tier(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  const std::string remote = workdir + "/remote";
  World world;
  ckpt::Manager manager(world.options(dir, 1).remote_directory(remote).remote_max_to_keep(2));
  for (int i = 0; i < 3; ++i) manager.save();
  manager.wait_until_finished();
  const auto status = manager.remote_status();
  CHECK(status.counts.has_remote && status.counts.has_uploaded);
  CHECK(status.counts.newest_uploaded == 3 && status.counts.pending == 0);
  CHECK(!status.last_error.has_value());
  CHECK_EQ(listed(dir), "ckpt-3");
  CHECK_EQ(listed(remote), "ckpt-2 ckpt-3");
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "remote directory",
               world.options(dir, 1).remote_max_to_keep(3));
}

void keep_period_and_pins(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  World world;
  {
    ckpt::Manager manager(world.options(dir, 1).keep_period(3));
    for (int i = 0; i < 4; ++i) manager.save();
    CHECK_EQ(joined(base_names(manager.checkpoints())), "ckpt-3 ckpt-4");
    manager.pin(dir + "/ckpt-4");
    manager.save();
    CHECK_EQ(joined(base_names(manager.checkpoints())), "ckpt-3 ckpt-4 ckpt-5");
    EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", manager.pin(dir + "/ckpt-1"));  // deleted
    EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", manager.unpin(dir + "/ckpt-9"));
  }
  CHECK(contains(read_file(dir + "/ckpt-4.ckpt-manifest.json"), "\"pinned\": true"));
  {
    ckpt::Manager reader(world.options(dir, 1).read_only());
    EXPECT_ERROR(CKPT_STATUS_READ_ONLY, "", reader.unpin(dir + "/ckpt-4"));
  }
  {
    ckpt::Manager manager(world.options(dir, 1).keep_period(3));
    manager.save();  // 6
    CHECK_EQ(listed(dir), "ckpt-3 ckpt-4 ckpt-6");
    manager.unpin(dir + "/ckpt-4");
    CHECK(!contains(read_file(dir + "/ckpt-4.ckpt-manifest.json"), "pinned"));
    CHECK(ckpt::checkpoint_exists(dir + "/ckpt-4"));
    manager.save();  // 7
  }
  CHECK_EQ(listed(dir), "ckpt-3 ckpt-6 ckpt-7");
  CHECK(!ckpt::checkpoint_exists(dir + "/ckpt-4"));
  // keep_period's only failure: an empty Options.
  ckpt::Options source;
  ckpt::Options target(std::move(source));
  target.keep_period(0);  // off
  EXPECT_ERROR(CKPT_STATUS_NULL_ARGUMENT, "", source.keep_period(2));
}

// checkpoint_info's JSON holds what save_with recorded and what is on disk.
void checkpoint_info_json(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  World world;
  world.value = 2.5;
  ckpt::Manager manager(world.options(dir).step_counter([&] { return world.step; }));
  world.step = 42;
  const std::string prefix =
      manager
          .save_with(ckpt::SaveArgs()
                         .checkpoint_number(5)
                         .check_interval(false)
                         .metric("loss", 0.25)
                         .metric("loss", 0.125)  // a name set again takes the new value
                         .metric("nan", std::numeric_limits<double>::quiet_NaN())
                         .metric("up", HUGE_VAL)
                         .metadata_json("{\"epoch\": 3}"))
          .value_or("none");
  CHECK_EQ(prefix, dir + "/ckpt-5");
  const std::string size = std::to_string(read_file(prefix + ".model").size());
  CHECK_EQ(manager.checkpoint_info(prefix),
           "{\"prefix\":\"" + prefix +
               "\",\"number\":5,\"step\":42,\"timestamp\":1000.0,"
               "\"metrics\":{\"loss\":0.125,\"nan\":\"NaN\",\"up\":\"Infinity\"},"
               "\"metadata\":{\"epoch\":3},\"pinned\":false,\"managed\":true,"
               "\"latest\":true,\"has_manifest\":true,"
               "\"files\":[{\"suffix\":\".model\",\"size\":" + size + "}],"
               "\"total_size\":" + size + "}");
  manager.pin(prefix);
  CHECK(contains(manager.checkpoint_info(prefix), "\"pinned\":true"));
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", manager.checkpoint_info(dir + "/ckpt-9"));
}

// save_interval_seconds by the clock, should_save, and request_save.
void timed_and_requested_saves(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  World world;
  ckpt::Options options = world.options(dir, 5);
  options.save_interval_seconds(60);
  {
    ckpt::Manager manager(options);
    CHECK(manager.should_save());
    CHECK_EQ(world.saves, 0);  // asking saves nothing
    CHECK_EQ(base_name(manager.save().value_or("none")), "ckpt-1");
    world.now = 1059;
    CHECK(!manager.should_save());
    CHECK(!manager.save().has_value());
    manager.request_save();
    CHECK(manager.should_save());
    CHECK_EQ(base_name(manager.save().value_or("none")), "ckpt-2");  // at 1059
    CHECK(!manager.save().has_value());  // the request was used up
    world.now = 1119;
    CHECK(manager.should_save());
    CHECK_EQ(base_name(manager.save_with(ckpt::SaveArgs()).value_or("none")), "ckpt-3");
  }
  world.now = 1150;
  ckpt::Manager manager(options);  // counts from the latest checkpoint's time
  CHECK(!manager.should_save());
  CHECK_EQ(world.saves, 3);

  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", options.save_interval_seconds(-1));
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "",
               options.save_interval_seconds(std::numeric_limits<double>::quiet_NaN()));
  ckpt::Manager reader(world.options(dir).read_only());
  EXPECT_ERROR(CKPT_STATUS_READ_ONLY, "", reader.should_save());
  ckpt::Manager moved(std::move(reader));
  EXPECT_ERROR(CKPT_STATUS_NULL_ARGUMENT, "empty", reader.request_save());
}

// Its own process (every case is): the handler and its count are global.
void preemption(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  World world;
  ckpt::Options options = world.options(dir, 5);
  options.save_interval_seconds(3600);
  ckpt::Manager manager(options);
  CHECK(manager.save().has_value());
  world.now += 10;
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", ckpt::install_preemption_handler(SIGKILL));
  ckpt::install_preemption_handler(SIGUSR1);
  CHECK(!ckpt::preemption_requested());
  CHECK(!manager.save().has_value());
  // raise() returns after the handler ran; without it SIGUSR1 would end
  // the process.
  CHECK_EQ(std::raise(SIGUSR1), 0);
  CHECK(ckpt::preemption_requested());
  CHECK(manager.should_save());
  CHECK_EQ(base_name(manager.save().value_or("none")), "ckpt-2");
  CHECK(!manager.save().has_value());  // one save per signal
  CHECK(ckpt::preemption_requested());  // for good
}

// ---------------------------------------------------------------------------
// Background saves

// Holds a background save callback until the test opens it.
class Gate {
 public:
  void pass_through() {
    std::unique_lock<std::mutex> lock(mutex_);
    entered_ = true;
    changed_.notify_all();
    changed_.wait(lock, [&] { return open_; });
  }
  void wait_entered() {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return entered_; });
  }
  void open() {
    std::lock_guard<std::mutex> lock(mutex_);
    open_ = true;
    changed_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  bool entered_ = false, open_ = false;
};

// The names in `dir`, sorted.
std::string listing(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return joined(names);
}

// The tensors are copied at the call: changes right after save_async
// returns are not in the checkpoint, which is latest only at its commit.
void save_async_snapshot(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  float weights[3] = {1.5f, -2.0f, 3.25f};
  const float at_the_call[3] = {1.5f, -2.0f, 3.25f};
  Gate gate;
  ckpt::Options options;
  options.directory(dir).max_to_keep(2).on_save([&](const std::string& prefix, uint64_t) {
    gate.pass_through();
    write_file(prefix + ".txt", "saved");
  });
  {
    ckpt::Manager manager(options);
    manager.register_tensor("weights", weights, {3});
    const std::optional<std::string> prefix = manager.save_async();
    CHECK_EQ(prefix.value_or("none"), dir + "/ckpt-1");
    weights[0] = weights[1] = weights[2] = -1.0f;  // the next step, during the save
    gate.wait_entered();
    CHECK(!manager.latest().has_value());
    CHECK(manager.checkpoints().empty());
    CHECK(!ckpt::get_checkpoint_state(dir).has_value());
    gate.open();
    manager.wait_until_finished();
    CHECK_EQ(manager.latest().value_or("none"), dir + "/ckpt-1");
    // The snapshot buffer is reused; with SaveArgs (a number, a metric).
    weights[0] = weights[1] = weights[2] = 4.0f;
    CHECK_EQ(manager.save_async(ckpt::SaveArgs().checkpoint_number(7).metric("loss", 0.5))
                 .value_or("none"),
             dir + "/ckpt-7");
    weights[0] = -2.0f;
    manager.wait_until_finished();
    CHECK(contains(manager.checkpoint_info(dir + "/ckpt-7"), "\"loss\":0.5"));
  }
  // ckpt-1's tensor file ends with the data of its one tensor.
  const std::string first = read_file(dir + "/ckpt-1.safetensors");
  CHECK(first.size() > sizeof at_the_call);
  CHECK(std::memcmp(first.data() + first.size() - sizeof at_the_call, at_the_call,
                    sizeof at_the_call) == 0);
  float restored[3] = {};
  ckpt::Manager reader(ckpt::Options().directory(dir).max_to_keep(2).read_only());
  reader.register_tensor("weights", restored, {3});
  CHECK_EQ(reader.restore_or_initialize().value_or("none"), dir + "/ckpt-7");
  CHECK_EQ(restored[0], 4.0f);
  CHECK_EQ(restored[2], 4.0f);
  // A read-only or empty manager cannot save in the background.
  EXPECT_ERROR(CKPT_STATUS_READ_ONLY, "", reader.save_async());
  ckpt::Manager moved(std::move(reader));
  EXPECT_ERROR(CKPT_STATUS_NULL_ARGUMENT, "", reader.save_async());
  EXPECT_ERROR(CKPT_STATUS_NULL_ARGUMENT, "", reader.wait_until_finished());
}

// on_save's exception on the background thread comes back, with its type
// and payload, from the next call that returns that save's failure, once;
// the failed save never becomes latest and leaves nothing on disk.
void save_async_exception(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  World world;
  bool fail = false;
  ckpt::Options options = world.options(dir);
  options.on_save([&](const std::string& prefix, uint64_t number) {
    write_file(prefix + ".model", "partial");
    if (fail) throw ModelError("background save " + std::to_string(number), static_cast<int>(number));
  });
  ckpt::Manager manager(options);
  CHECK(!manager.restore_or_initialize().has_value());
  CHECK_EQ(manager.save().value_or("none"), dir + "/ckpt-1");
  const std::string before = listing(dir), state_before = read_file(dir + "/checkpoint");
  const std::map<std::string, std::function<void()>> next_calls = {
      {"wait_until_finished", [&] { manager.wait_until_finished(); }},
      {"save", [&] { manager.save(); }},
      {"save_with", [&] { manager.save_with(ckpt::SaveArgs()); }},
      {"save_async", [&] { manager.save_async(); }},
      {"restore_or_initialize", [&] { manager.restore_or_initialize(); }},
      {"reload", [&] { manager.reload(); }},
      {"pin", [&] { manager.pin(dir + "/ckpt-1"); }},
  };
  for (const auto& [name, next_call] : next_calls) {
    fail = true;
    CHECK_EQ(manager.save_async().value_or("none"), dir + "/ckpt-2");
    ModelError error = EXPECT_THROW(ModelError, next_call());
    if (error.code != 2) test_fail(__FILE__, __LINE__, name + ": " + error.what());
    CHECK_EQ(manager.latest().value_or("none"), dir + "/ckpt-1");
    CHECK_EQ(manager.save_counter(), 1u);
    CHECK_EQ(listing(dir), before);  // no staging, no ckpt-2 files
    CHECK_EQ(read_file(dir + "/checkpoint"), state_before);
    fail = false;
    manager.wait_until_finished();  // once: nothing more to throw
    manager.unpin(dir + "/ckpt-1");
  }
  // Anything may be thrown; without an exception, a ckpt::Error.
  options.on_save([](const std::string&, uint64_t) { throw 7; });
  manager.reset();
  ckpt::Manager rebuilt(options);
  rebuilt.save_async();
  CHECK_EQ(EXPECT_THROW(int, rebuilt.wait_until_finished()), 7);
  ckpt_options_set_save_callback(
      options.get(), [](void*, const char*, uint64_t) -> int32_t { return 3; }, nullptr, nullptr);
  rebuilt.reset();
  ckpt::Manager plain(options);
  plain.save_async();
  EXPECT_ERROR(CKPT_STATUS_CALLBACK_FAILED, "3", plain.wait_until_finished());
  CHECK_EQ(plain.latest().value_or("none"), dir + "/ckpt-1");
}

void wait_until_finished_timeout(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  Gate gate;
  ckpt::Manager manager(ckpt::Options().directory(dir).keep_all().on_save(
      [&](const std::string& prefix, uint64_t) {
        gate.pass_through();
        write_file(prefix + ".txt", "x");
      }));
  manager.wait_until_finished(0);  // nothing in flight
  manager.save_async();
  gate.wait_entered();
  EXPECT_ERROR(CKPT_STATUS_TIMEOUT, "", manager.wait_until_finished(0));
  EXPECT_ERROR(CKPT_STATUS_TIMEOUT, "", manager.wait_until_finished(0.01));
  CHECK(!manager.latest().has_value());
  gate.open();
  manager.wait_until_finished();
  CHECK_EQ(manager.latest().value_or("none"), dir + "/ckpt-1");
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "NaN",
               manager.wait_until_finished(std::numeric_limits<double>::quiet_NaN()));
}

// on_prepare runs on the calling thread before save_async returns, on_save
// on the library's thread; a throwing on_prepare fails save_async itself.
void prepare_callback(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  std::thread::id prepare_thread, save_thread;
  std::vector<uint64_t> prepared;
  bool fail = false;
  ckpt::Manager manager(ckpt::Options()
                            .directory(dir)
                            .keep_all()
                            .on_prepare([&](uint64_t number) {
                              prepare_thread = std::this_thread::get_id();
                              prepared.push_back(number);
                              if (fail) throw ModelError("no host copy", static_cast<int>(number));
                            })
                            .on_save([&](const std::string& prefix, uint64_t) {
                              save_thread = std::this_thread::get_id();
                              write_file(prefix + ".txt", "x");
                            }));
  manager.save_async();
  CHECK_EQ(prepared.size(), 1u);  // before save_async returned
  manager.wait_until_finished();
  CHECK(prepare_thread == std::this_thread::get_id());
  CHECK(save_thread != std::this_thread::get_id());
  manager.save();  // a blocking save runs it too
  CHECK_EQ(prepared.size(), 2u);
  fail = true;
  CHECK_EQ(EXPECT_THROW(ModelError, manager.save_async()).code, 3);
  manager.wait_until_finished();
  CHECK_EQ(joined(base_names(manager.checkpoints())), "ckpt-1 ckpt-2");
  CHECK(!ckpt::checkpoint_exists(dir + "/ckpt-3"));
}

// An on_delete exception of a background save fails nothing (the
// checkpoint is committed): its what() reaches on_log in the library's
// warning, from the wait that saw the save end.
void background_delete_exception(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  World world;
  ckpt::Options options = world.options(dir, 1);
  options.on_delete([](const std::string& prefix) {
    throw ModelError("cannot delete " + base_name(prefix), 9);
  });
  ckpt::Manager manager(options);
  manager.save();
  CHECK_EQ(manager.save_async().value_or("none"), dir + "/ckpt-2");
  const size_t logged = world.log.size();
  manager.wait_until_finished();
  CHECK_EQ(world.log.size(), logged + 1);
  CHECK(contains(world.log.back(), "could not delete"));
  CHECK(contains(world.log.back(), "cannot delete ckpt-1"));
  CHECK_EQ(manager.latest().value_or("none"), dir + "/ckpt-2");
  CHECK_EQ(joined(base_names(manager.checkpoints())), "ckpt-2");
}

// On an s3:// directory (the bucket of tests/cpp_wrapper.rs, named by
// CKPT_TEST_S3_URL and CKPT_TEST_S3_ENDPOINT) the callbacks see a local
// staging prefix; their exceptions still come back with their type, from a
// blocking call and from the call that reports a background save's failure.
void s3_callback_exceptions(const std::string& workdir) {
  const char* url = std::getenv("CKPT_TEST_S3_URL");
  const char* endpoint = std::getenv("CKPT_TEST_S3_ENDPOINT");
  if (url == nullptr || endpoint == nullptr) {
    test_fail(__FILE__, __LINE__, "run by tests/cpp_wrapper.rs, which sets CKPT_TEST_S3_*");
  }
  const std::string dir = url;
  bool fail_save = false, fail_restore = false;
  std::string seen_prefix;
  ckpt::Options options;
  options.directory(dir)
      .keep_all()
      .storage_option("aws_endpoint", endpoint)
      .storage_option("aws_allow_http", "true")
      .storage_option("aws_region", "us-east-1")
      .storage_option("aws_access_key_id", "testing")
      .storage_option("aws_secret_access_key", "testing")
      .storage_option("ckpt_local_staging_directory", workdir + "/staging")
      .on_save([&](const std::string& prefix, uint64_t number) {
        seen_prefix = prefix;
        write_file(prefix + ".model", std::to_string(number));
        if (fail_save) throw ModelError("cannot save " + std::to_string(number), static_cast<int>(number));
      })
      .on_restore([&](const std::string& prefix) {
        if (fail_restore) throw ModelError("cannot restore " + base_name(prefix), 77);
        read_file(prefix + ".model");
      });
  ckpt::Manager manager(options);
  CHECK_EQ(manager.save().value_or("none"), dir + "/ckpt-1");
  CHECK(!contains(seen_prefix, "s3://"));  // a local staging prefix

  fail_save = true;
  CHECK_EQ(EXPECT_THROW(ModelError, manager.save()).code, 2);
  CHECK_EQ(manager.save_async().value_or("none"), dir + "/ckpt-2");
  ModelError background = EXPECT_THROW(ModelError, manager.wait_until_finished());
  CHECK_EQ(background.code, 2);
  CHECK_EQ(std::string(background.what()), "cannot save 2");
  CHECK_EQ(manager.save_async().value_or("none"), dir + "/ckpt-2");
  CHECK_EQ(EXPECT_THROW(ModelError, manager.save_async()).code, 2);  // the next call reports it
  manager.wait_until_finished();  // once
  fail_save = false;
  CHECK_EQ(manager.latest().value_or("none"), dir + "/ckpt-1");

  fail_restore = true;
  CHECK_EQ(EXPECT_THROW(ModelError, manager.restore_or_initialize()).code, 77);
  fail_restore = false;
  CHECK_EQ(manager.restore_or_initialize().value_or("none"), dir + "/ckpt-1");
}

// A background callback calling into its manager gets REENTRANT_CALL, and
// reset() there does nothing (it would wait for the running save).
void background_reentry(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  ckpt::Manager* self = nullptr;
  bool reenter = false;
  ckpt::Manager manager(ckpt::Options().directory(dir).keep_all().on_save(
      [&](const std::string& prefix, uint64_t) {
        self->reset();
        CHECK(static_cast<bool>(*self));
        write_file(prefix + ".txt", "x");
        if (reenter) self->latest();
      }));
  self = &manager;
  manager.save_async();
  manager.wait_until_finished();
  CHECK_EQ(base_name(manager.latest().value_or("none")), "ckpt-1");
  reenter = true;
  manager.save_async();
  EXPECT_ERROR(CKPT_STATUS_REENTRANT_CALL, "background", manager.wait_until_finished());
  CHECK_EQ(base_name(manager.latest().value_or("none")), "ckpt-1");
}

// Destroying a manager waits for its save in flight, then releases the
// lock and the callbacks.
void reset_waits_for_background_save(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  auto alive = std::make_shared<int>(0);
  Gate gate;
  std::atomic<bool> finished{false};
  ckpt::Manager manager(ckpt::Options().directory(dir).keep_all().on_save(
      [&, token = Token(alive)](const std::string& prefix, uint64_t) {
        gate.pass_through();
        write_file(prefix + ".txt", "x");
        finished = true;
      }));
  CHECK_EQ(alive.use_count(), 2);
  const std::string prefix = manager.save_async().value_or("none");
  gate.wait_entered();
  std::thread opener([&] { gate.open(); });
  manager.reset();
  opener.join();
  CHECK(finished);
  CHECK_EQ(alive.use_count(), 1);
  CHECK_EQ(ckpt::latest_checkpoint(dir).value_or("none"), prefix);
  ckpt::Manager reopened(ckpt::Options().directory(dir).keep_all());  // the lock is free
  CHECK_EQ(reopened.latest().value_or("none"), prefix);
  EXPECT_ERROR(CKPT_STATUS_NULL_ARGUMENT, "", manager.wait_until_finished());
}

// save_async from several threads: each background failure is rethrown
// exactly once, by whichever call comes next, and the saves that started
// and did not fail are the checkpoints.
void save_async_threads(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  ckpt::Manager manager(ckpt::Options().directory(dir).keep_all().on_save(
      [](const std::string& prefix, uint64_t number) {
        write_file(prefix + ".txt", std::to_string(number));
        if (number % 3 == 0) throw ModelError("failed", static_cast<int>(number));
      }));
  constexpr int kThreads = 4, kRounds = 15;
  std::mutex record;
  std::multiset<int> started, rethrown;
  std::atomic<int> mixups{0};
  auto note = [&](std::multiset<int>& into, int number) {
    std::lock_guard<std::mutex> lock(record);
    into.insert(number);
  };
  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      for (int round = 1; round <= kRounds; ++round) {
        const int number = t * 100 + round;
        try {
          if (manager.save_async(static_cast<uint64_t>(number), false).has_value()) {
            note(started, number);
          } else {
            ++mixups;
          }
        } catch (const ModelError& error) {  // an earlier save's: this one did not start
          note(rethrown, error.code);
        } catch (...) {
          ++mixups;
        }
      }
    });
  }
  for (auto& worker : workers) worker.join();
  try {
    manager.wait_until_finished();
  } catch (const ModelError& error) {
    note(rethrown, error.code);
  }
  CHECK_EQ(mixups.load(), 0);
  std::multiset<int> failing, saved;
  for (int number : started) (number % 3 == 0 ? failing : saved).insert(number);
  CHECK(!failing.empty());
  CHECK(rethrown == failing);
  std::multiset<int> listed;
  for (const auto& prefix : manager.checkpoints()) {
    listed.insert(std::stoi(prefix.substr(prefix.rfind('-') + 1)));
  }
  CHECK(listed == saved);
}

// Two managers built from one Options share on_save: each background
// failure comes back from its own manager.
void background_exceptions_per_manager(const std::string& workdir) {
  Gate gate;
  ckpt::Options options;
  options.keep_all().on_save([&](const std::string& prefix, uint64_t) {
    gate.pass_through();  // both saves in flight at once
    throw ModelError(prefix, 0);
  });
  ckpt::Manager first(options.directory(workdir + "/first"));
  ckpt::Manager second(options.directory(workdir + "/second/"));
  first.save_async();
  second.save_async();
  gate.open();
  CHECK(contains(EXPECT_THROW(ModelError, second.wait_until_finished()).what(), "/second/"));
  CHECK(contains(EXPECT_THROW(ModelError, first.wait_until_finished()).what(), "/first/"));
  first.wait_until_finished();
  second.wait_until_finished();
}

// A communicator over one rank: every collective is a copy.
ckpt_communicator one_rank_communicator() {
  ckpt_communicator communicator{};
  communicator.version = CKPT_COMMUNICATOR_VERSION;
  communicator.rank = 0;
  communicator.size = 1;
  communicator.barrier = [](void*, double) -> int32_t { return 0; };
  communicator.broadcast = [](void*, void*, size_t, uint32_t, double) -> int32_t { return 0; };
  communicator.all_gather = [](void*, const void* record, size_t length, void* records,
                               double) -> int32_t {
    if (length > 0) std::memcpy(records, record, length);
    return 0;
  };
  return communicator;
}

std::vector<std::string> directory_listing(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

void communicator(const std::string& workdir) {
  const std::string dir = workdir + "/run";
  const ckpt_communicator communicator = one_rank_communicator();
  World world;
  float weights[3] = {1.5f, -2.0f, 3.25f};
  {
    ckpt::Options options = world.options(dir);
    options.communicator(communicator).coordination_timeout(30);
    ckpt::Manager manager(std::move(options));
    manager.register_tensor("weights", weights, {3});
    world.value = 2.5;
    CHECK_EQ(manager.save().value_or("none"), dir + "/ckpt-1");
  }
  // Every file of the save carries the rank and the size.
  CHECK_EQ(joined(directory_listing(dir)),
           "checkpoint checkpoint.lock ckpt-1.ckpt-manifest.json "
           "ckpt-1.rank-00000-of-00001.model ckpt-1.rank-00000-of-00001.safetensors");
  World resumed;
  float restored[3] = {};
  ckpt::Options options = resumed.options(dir);
  options.communicator(communicator);
  ckpt::Manager manager(std::move(options));
  manager.register_tensor("weights", restored, {3});
  CHECK_EQ(manager.restore_or_initialize().value_or("none"), dir + "/ckpt-1");
  CHECK_EQ(resumed.value, 2.5);
  CHECK(std::memcmp(restored, weights, sizeof weights) == 0);

  // Refused, as the C API refuses them.
  ckpt_communicator newer = communicator;
  newer.version = CKPT_COMMUNICATOR_VERSION + 1;
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "version", ckpt::Options().communicator(newer));
  ckpt_communicator outside = communicator;
  outside.rank = 1;
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", ckpt::Options().communicator(outside));
  ckpt_communicator incomplete = communicator;
  incomplete.all_gather = nullptr;
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", ckpt::Options().communicator(incomplete));
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "", ckpt::Options().coordination_timeout(0));
  EXPECT_ERROR(CKPT_STATUS_INVALID_ARGUMENT, "",
               ckpt::Options().coordination_timeout(std::nan("")));
}

struct Case {
  const char* name;
  void (*run)(const std::string& workdir);
};

const Case cases[] = {
    {"round_trip", round_trip},
    {"save_exception", save_exception},
    {"save_exception_then_success", save_exception_then_success},
    {"restore_exception", restore_exception},
    {"init_exception", init_exception},
    {"step_counter_and_clock_exceptions", step_counter_and_clock_exceptions},
    {"delete_exception", delete_exception},
    {"log_exception", log_exception},
    {"errors_carry_status_and_message", errors_carry_status_and_message},
    {"optional_none", optional_none},
    {"move_semantics", move_semantics},
    {"tensors", tensors},
    {"tensor_kinds", tensor_kinds},
    {"module_functions", module_functions},
    {"object_storage_options", object_storage_options},
    {"nested_calls", nested_calls},
    {"threads", threads},
    {"shared_options_threads", shared_options_threads},
    {"reset_inside_callback", reset_inside_callback},
    {"keep_best_and_metrics", keep_best_and_metrics},
    {"keep_period_and_pins", keep_period_and_pins},
    {"checkpoint_info_json", checkpoint_info_json},
    {"timed_and_requested_saves", timed_and_requested_saves},
    {"preemption", preemption},
    {"save_async_snapshot", save_async_snapshot},
    {"save_async_exception", save_async_exception},
    {"wait_until_finished_timeout", wait_until_finished_timeout},
    {"prepare_callback", prepare_callback},
    {"background_delete_exception", background_delete_exception},
    {"s3_callback_exceptions", s3_callback_exceptions},
    {"background_reentry", background_reentry},
    {"reset_waits_for_background_save", reset_waits_for_background_save},
    {"save_async_threads", save_async_threads},
    {"background_exceptions_per_manager", background_exceptions_per_manager},
    {"communicator", communicator},
    {"remote_tier", remote_tier},
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s CASE WORKDIR\n", argv[0]);
    return 2;
  }
  // A call that waits where it must not (on a gate nobody opens) ends the
  // case by SIGALRM instead of hanging the test run.
  alarm(600);
  for (const Case& test_case : cases) {
    if (std::strcmp(test_case.name, argv[1]) == 0) {
      try {
        test_case.run(argv[2]);
      } catch (const std::exception& error) {
        std::fprintf(stderr, "%s: uncaught exception: %s\n", argv[1], error.what());
        return 1;
      } catch (...) {
        std::fprintf(stderr, "%s: uncaught exception\n", argv[1]);
        return 1;
      }
      std::printf("%s: ok\n", argv[1]);
      return 0;
    }
  }
  std::fprintf(stderr, "unknown case %s\n", argv[1]);
  return 2;
}
