// ckpt_manager.hpp: a header-only C++17 wrapper of the ckpt-manager C API
// (include/ckpt_manager.h).
//
//  - ckpt::Options is a move-only builder over ckpt_options; each setter
//    throws ckpt::Error when the library refuses the value.
//  - ckpt::Manager is a move-only RAII handle over ckpt_manager; a
//    moved-from Manager is empty (its calls throw CKPT_STATUS_NULL_ARGUMENT).
//  - ckpt::SaveArgs is a move-only builder over ckpt_save_args, for
//    Manager::save_with (a number, the interval check, metrics, metadata).
//  - Every failure is a ckpt::Error (a std::runtime_error) carrying the
//    ckpt_status and the library's message.
//  - Callbacks are std::function. An exception a callback throws is caught
//    before it reaches the C library and rethrown, with its original type,
//    from the wrapper call that ran the callback (see "Callbacks" below).
//  - Where C returns "none" (a NULL string), the wrapper returns
//    std::nullopt.
//
// Callbacks. Each std::function is copied to the heap and handed to the
// library, which frees it (through a finalizer) once neither the options
// nor any manager built from them holds it. When a callback throws, the
// wrapper attaches the exception to the failure it reports to the library
// (ckpt_callback_set_error, with the exception's what() as the message):
// a non-zero code (save, prepare, restore, init, step_counter, delete) or
// NaN (clock). The library fails the call that reports that failure with
// CKPT_STATUS_CALLBACK_FAILED and commits nothing, and the wrapper of that
// call takes the exception back (ckpt_take_error_payload) and rethrows it,
// with its original type, instead of a ckpt::Error. Two callbacks cannot
// report failure to the library in a way that stops the call:
//  - on_delete: a failed deletion of an old checkpoint is only a warning,
//    because the new checkpoint is already committed; save() still
//    rethrows the exception, but the checkpoint it was saving is committed
//    (latest() names it) and the next open finishes the deletion.
//  - on_log: the call goes on; its exception is rethrown once the call
//    has returned, whatever the call did.
// If several callbacks throw during one call, the first exception wins.
// Callbacks set on a ckpt::Options through the C API directly must not
// attach payloads of their own (the wrapper takes every payload as an
// exception).
//
// Background saves (Manager::save_async). The save and delete callbacks
// run on the library's background thread after save_async has returned.
// on_save's exception travels with the failed save inside the library,
// and the next call on the manager that returns that failure (save,
// save_with, save_async, restore_or_initialize, pin, unpin, reload,
// should_save, wait_until_finished) rethrows it instead of a ckpt::Error,
// once, on whichever thread makes that call. on_delete's fails nothing
// (the checkpoint is committed): its what() goes to on_log in the
// library's warning. A background callback that calls into a manager gets
// CKPT_STATUS_REENTRANT_CALL; destroying a manager there leaks it instead
// of waiting for the save that runs the callback.
//
// Threads: as in C. A Manager may be shared by threads (calls are
// serialised by the library; callbacks run on the calling thread, except
// a background save's); moving or destroying it may not overlap other
// calls, and destroying it waits for its background save. An Options
// object belongs to one thread at a time. Callbacks shared by several
// managers built from the same Options may run concurrently on different
// threads.
#ifndef CKPT_MANAGER_HPP
#define CKPT_MANAGER_HPP

#include <csignal>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "ckpt_manager.h"

namespace ckpt {

// ---------------------------------------------------------------------------
// Errors

// A failed call: the library's status and its message.
class Error : public std::runtime_error {
 public:
  Error(ckpt_status status, const std::string& message)
      : std::runtime_error(message), status_(status) {}

  ckpt_status status() const noexcept { return status_; }

  // E.g. "CKPT_STATUS_LOCKED".
  const char* status_name() const noexcept {
    return ckpt_status_name(status_);
  }

 private:
  ckpt_status status_;
};

// The name of a status, e.g. "CKPT_STATUS_IO_ERROR".
inline std::string status_name(ckpt_status status) {
  return ckpt_status_name(status);
}

// Throws Error with the calling thread's last error message unless
// `status` is CKPT_STATUS_OK. Call it right after the failing C call.
inline void check(ckpt_status status) {
  if (status != CKPT_STATUS_OK) {
    throw Error(status, ckpt_last_error_message());
  }
}

// The code a callback returns to the library when it threw (the library's
// message then says "returned -1"; the wrapper rethrows the exception).
constexpr int32_t callback_exception_code = -1;

namespace detail {

// One wrapper call into the library: the first exception a callback throws
// on this thread while the call runs is kept here. Scopes nest (a
// callback may use another manager), so each restores the previous one.
// A scope also names the manager it calls, so that Manager::reset() can
// tell it is inside one of that manager's own calls.
class CallScope {
 public:
  explicit CallScope(const ckpt_manager* manager = nullptr) noexcept
      : previous_(current()), manager_(manager), error_() {
    current() = this;
  }
  ~CallScope() { current() = previous_; }
  CallScope(const CallScope&) = delete;
  CallScope& operator=(const CallScope&) = delete;

  // Called from a trampoline's catch block. Without a scope (a callback
  // run outside any wrapper call) the exception cannot go anywhere and is
  // dropped; the library still sees the failure code.
  static void capture_current_exception() noexcept {
    CallScope* scope = current();
    if (scope != nullptr && !scope->error_) {
      scope->error_ = std::current_exception();
    }
  }

  // Whether a wrapper call is open on this thread.
  static bool open() noexcept { return current() != nullptr; }

  // Whether a call on `manager` is running on this thread.
  static bool running(const ckpt_manager* manager) noexcept {
    for (const CallScope* scope = current(); scope != nullptr; scope = scope->previous_) {
      if (scope->manager_ == manager) return true;
    }
    return false;
  }

  std::exception_ptr error() const noexcept { return error_; }

 private:
  static CallScope*& current() noexcept {
    static thread_local CallScope* scope = nullptr;
    return scope;
  }

  CallScope* previous_;
  const ckpt_manager* manager_;
  std::exception_ptr error_;
};

// Deletes a payload attach_current_exception made.
inline void delete_attached_exception(void* payload) noexcept {
  delete static_cast<std::exception_ptr*>(payload);
}

// Attaches the exception being handled (call it in a catch block) to the
// failure the running callback is about to return: the library carries
// it to the call that reports the failure, background saves included.
inline void attach_current_exception() noexcept {
  const char* message = "a C++ exception that is not a std::exception";
  try {
    throw;
  } catch (const std::exception& exception) {
    message = exception.what();
  } catch (...) {
  }
  auto* payload = new (std::nothrow) std::exception_ptr(std::current_exception());
  // Refused only outside a callback; the library then deletes the payload.
  ckpt_callback_set_error(message, payload, payload ? delete_attached_exception : nullptr);
}

// The exception attached to the failure of the last failed call on this
// thread, taken from the library; null when none was.
inline std::exception_ptr take_attached_exception() noexcept {
  void* payload = nullptr;
  if (ckpt_take_error_payload(&payload) != CKPT_STATUS_OK || payload == nullptr) return nullptr;
  std::unique_ptr<std::exception_ptr> owned(static_cast<std::exception_ptr*>(payload));
  return *owned;
}

// Runs `c_call` (returning a ckpt_status) in a CallScope for `manager`
// (none for functions without one); rethrows a callback's exception (the
// first one thrown on this thread during the call, else the one attached
// to the failure, as a background save's is), else throws Error for a
// failed status.
template <class F>
void call(F&& c_call, const ckpt_manager* manager = nullptr) {
  ckpt_status status;
  std::exception_ptr error;
  {
    CallScope scope(manager);
    status = c_call();
    error = scope.error();
  }
  std::exception_ptr attached = status == CKPT_STATUS_OK ? nullptr : take_attached_exception();
  if (error) std::rethrow_exception(error);
  if (attached) std::rethrow_exception(attached);
  check(status);
}

// Marks this thread as running a callback with no wrapper call open: a
// background save's, on the library's thread.
class BackgroundCallback {
 public:
  BackgroundCallback() noexcept : previous_(current()) { current() = !CallScope::open(); }
  ~BackgroundCallback() { current() = previous_; }
  BackgroundCallback(const BackgroundCallback&) = delete;
  BackgroundCallback& operator=(const BackgroundCallback&) = delete;

  static bool running() noexcept { return current(); }

 private:
  static bool& current() noexcept {
    static thread_local bool running = false;
    return running;
  }
  bool previous_;
};

// Runs a callback's `body`: 0, or `failure` when it throws, with the
// exception kept for the wrapper call open on this thread and attached to
// the failure.
template <class Body, class Result>
Result run_callback(Body&& body, Result failure) noexcept {
  BackgroundCallback running;
  try {
    return body();
  } catch (...) {
    CallScope::capture_current_exception();
    attach_current_exception();
    return failure;
  }
}

struct StringDeleter {
  void operator()(char* string) const noexcept { ckpt_string_free(string); }
};
// A string the library returned; freed by ckpt_string_free.
using OwnedString = std::unique_ptr<char, StringDeleter>;

struct StringListDeleter {
  void operator()(ckpt_string_list* list) const noexcept { ckpt_string_list_free(list); }
};
using OwnedStringList = std::unique_ptr<ckpt_string_list, StringListDeleter>;

inline std::optional<std::string> to_optional(const OwnedString& string) {
  if (!string) return std::nullopt;
  return std::string(string.get());
}

inline std::vector<std::string> to_vector(const ckpt_string_list* list) {
  std::vector<std::string> result;
  if (list == nullptr) return result;
  result.reserve(list->len);
  for (size_t i = 0; i < list->len; ++i) result.emplace_back(list->items[i]);
  return result;
}

// Trampolines: C-compatible functions that call the std::function held in
// `user_data`. None lets an exception escape (they are noexcept, and catch
// everything).
using SaveFn = std::function<void(const std::string& prefix, uint64_t number)>;
using PrefixFn = std::function<void(const std::string& prefix)>;
using PrepareFn = std::function<void(uint64_t number)>;
using InitFn = std::function<void()>;
using StepFn = std::function<int64_t()>;
using ClockFn = std::function<double()>;
using LogFn = std::function<void(ckpt_log_level level, const std::string& message)>;

template <class Fn>
void finalize(void* user_data) noexcept {
  delete static_cast<Fn*>(user_data);
}

inline int32_t save_trampoline(void* user_data, const char* prefix, uint64_t number) noexcept {
  return run_callback(
      [&] {
        (*static_cast<SaveFn*>(user_data))(std::string(prefix), number);
        return int32_t{0};
      },
      callback_exception_code);
}

inline int32_t prepare_trampoline(void* user_data, uint64_t number) noexcept {
  return run_callback(
      [&] {
        (*static_cast<PrepareFn*>(user_data))(number);
        return int32_t{0};
      },
      callback_exception_code);
}

// Restore and delete.
inline int32_t prefix_trampoline(void* user_data, const char* prefix) noexcept {
  return run_callback(
      [&] {
        (*static_cast<PrefixFn*>(user_data))(std::string(prefix));
        return int32_t{0};
      },
      callback_exception_code);
}

inline int32_t init_trampoline(void* user_data) noexcept {
  return run_callback(
      [&] {
        (*static_cast<InitFn*>(user_data))();
        return int32_t{0};
      },
      callback_exception_code);
}

inline int32_t step_trampoline(void* user_data, int64_t* out_step) noexcept {
  return run_callback(
      [&] {
        *out_step = (*static_cast<StepFn*>(user_data))();
        return int32_t{0};
      },
      callback_exception_code);
}

inline double clock_trampoline(void* user_data) noexcept {
  // The library refuses a non-finite time: CKPT_STATUS_CALLBACK_FAILED.
  return run_callback([&] { return (*static_cast<ClockFn*>(user_data))(); },
                      std::numeric_limits<double>::quiet_NaN());
}

inline void log_trampoline(void* user_data, ckpt_log_level level, const char* message) noexcept {
  try {
    (*static_cast<LogFn*>(user_data))(level, std::string(message));
  } catch (...) {
    CallScope::capture_current_exception();
  }
}

// Maps a C++ element type to its ckpt_dtype.
template <class T>
struct dtype_of;
template <> struct dtype_of<double> : std::integral_constant<ckpt_dtype, CKPT_DTYPE_F64> {};
template <> struct dtype_of<float> : std::integral_constant<ckpt_dtype, CKPT_DTYPE_F32> {};
template <> struct dtype_of<int64_t> : std::integral_constant<ckpt_dtype, CKPT_DTYPE_I64> {};
template <> struct dtype_of<int32_t> : std::integral_constant<ckpt_dtype, CKPT_DTYPE_I32> {};
template <> struct dtype_of<int16_t> : std::integral_constant<ckpt_dtype, CKPT_DTYPE_I16> {};
template <> struct dtype_of<int8_t> : std::integral_constant<ckpt_dtype, CKPT_DTYPE_I8> {};
template <> struct dtype_of<uint64_t> : std::integral_constant<ckpt_dtype, CKPT_DTYPE_U64> {};
template <> struct dtype_of<uint32_t> : std::integral_constant<ckpt_dtype, CKPT_DTYPE_U32> {};
template <> struct dtype_of<uint16_t> : std::integral_constant<ckpt_dtype, CKPT_DTYPE_U16> {};
template <> struct dtype_of<uint8_t> : std::integral_constant<ckpt_dtype, CKPT_DTYPE_U8> {};
template <> struct dtype_of<bool> : std::integral_constant<ckpt_dtype, CKPT_DTYPE_BOOL> {};

template <class T, class = void>
struct has_dtype : std::false_type {};
template <class T>
struct has_dtype<T, std::void_t<decltype(dtype_of<T>::value)>> : std::true_type {};

}  // namespace detail

// The ckpt_dtype of T (double, float, int8_t..int64_t, uint8_t..uint64_t,
// bool). F16 and BF16 have no C++17 type: use the register_tensor
// overload that takes a ckpt_dtype.
template <class T>
constexpr ckpt_dtype dtype_of_v = detail::dtype_of<std::remove_cv_t<T>>::value;

// ---------------------------------------------------------------------------
// Options

// A builder for Manager: set the directory and max_to_keep (or keep_all),
// then construct Managers from it (as many as you like). Each setter
// returns *this and throws Error for a value the library refuses (e.g.
// max_to_keep(0) is CKPT_STATUS_INVALID_ARGUMENT). Move-only; a moved-from
// Options is empty and its setters throw CKPT_STATUS_NULL_ARGUMENT.
// Passing an empty std::function clears that callback.
class Options {
 public:
  Options() {
    ckpt_options* options = nullptr;
    check(ckpt_options_new(&options));
    options_ = options;
  }
  ~Options() { ckpt_options_free(options_); }
  Options(Options&& other) noexcept : options_(std::exchange(other.options_, nullptr)) {}
  Options& operator=(Options&& other) noexcept {
    if (this != &other) {
      ckpt_options_free(options_);
      options_ = std::exchange(other.options_, nullptr);
    }
    return *this;
  }
  Options(const Options&) = delete;
  Options& operator=(const Options&) = delete;

  // Required. Created by the first save if missing. A local path, or
  // `s3://bucket/prefix` (see storage_option); any other `scheme://`, such as
  // `gs://`, throws CKPT_STATUS_INVALID_ARGUMENT.
  Options& directory(const std::string& directory) {
    check(ckpt_options_set_directory(options_, directory.c_str()));
    return *this;
  }
  // Keep at most this many managed checkpoints (> 0).
  Options& max_to_keep(int64_t max_to_keep) {
    check(ckpt_options_set_max_to_keep(options_, max_to_keep));
    return *this;
  }
  // Keep every checkpoint (TF's max_to_keep=None).
  Options& keep_all() {
    check(ckpt_options_set_keep_all(options_));
    return *this;
  }
  Options& keep_checkpoint_every_n_hours(double hours) {
    check(ckpt_options_set_keep_checkpoint_every_n_hours(options_, hours));
    return *this;
  }
  // Files are <directory>/<name>-<N>...; default "ckpt".
  Options& checkpoint_name(const std::string& name) {
    check(ckpt_options_set_checkpoint_name(options_, name.c_str()));
    return *this;
  }
  // Save at most once every `interval` steps; needs step_counter.
  Options& checkpoint_interval(int64_t interval) {
    check(ckpt_options_set_checkpoint_interval(options_, interval));
    return *this;
  }
  Options& last_checkpoint_step(int64_t step) {
    check(ckpt_options_set_last_checkpoint_step(options_, step));
    return *this;
  }
  Options& read_only(bool read_only = true) {
    check(ckpt_options_set_read_only(options_, read_only));
    return *this;
  }
  Options& verify_checksums(bool verify = true) {
    check(ckpt_options_set_verify_checksums(options_, verify));
    return *this;
  }
  Options& partial_restore(bool partial = true) {
    check(ckpt_options_set_partial_restore(options_, partial));
    return *this;
  }
  // Also keep the best `k` (> 0) checkpoints by the metric `metric` that
  // saves record (SaveArgs::metric), smaller or larger being better by
  // `mode`; a save without the metric, or with NaN, is never among the best,
  // and of equal values the newer wins. The retention rules are a union.
  Options& keep_best(const std::string& metric, ckpt_metric mode, size_t k) {
    check(ckpt_options_set_keep_best(options_, metric.c_str(), static_cast<uint32_t>(mode), k));
    return *this;
  }
  // Also keep every checkpoint whose number is a multiple of `period` (0: off).
  Options& keep_period(uint64_t period) {
    check(ckpt_options_set_keep_period(options_, period));
    return *this;
  }
  // Save (with the interval checked) at most once every `seconds` by the
  // clock (0: off); with checkpoint_interval too, both must have passed.
  Options& save_interval_seconds(double seconds) {
    check(ckpt_options_set_save_interval_seconds(options_, seconds));
    return *this;
  }
  // Makes saves and restores collective over the ranks of `communicator`
  // (see ckpt_options_set_communicator; ckpt_manager_mpi.h builds one from an
  // MPI_Comm). The struct is copied; its user_data must outlive the managers.
  Options& communicator(const ckpt_communicator& communicator) {
    check(ckpt_options_set_communicator(options_, &communicator));
    return *this;
  }
  // Each rank's directory is its own (node-local disks): every rank locks,
  // commits and sweeps its own files (see ckpt_options_set_node_local).
  Options& node_local(bool node_local = true) {
    check(ckpt_options_set_node_local(options_, node_local));
    return *this;
  }
  // How long each rank waits for the others at each collective step (> 0,
  // finite; default 300 seconds) before the call throws CKPT_STATUS_TIMEOUT.
  Options& coordination_timeout(double seconds) {
    check(ckpt_options_set_coordination_timeout(options_, seconds));
    return *this;
  }

  // An option of the object store an `s3://` directory lives on, beating
  // the AWS_* environment variables and files: the S3 client's keys
  // (`aws_endpoint`, `aws_region`, `aws_access_key_id`, `aws_allow_http`, ...)
  // or the library's (`ckpt_local_staging_directory`,
  // `ckpt_allow_unconditional_writes`, `ckpt_max_retries`,
  // `ckpt_lease_seconds`); see
  // ckpt_options_set_storage_option. An unknown key throws
  // CKPT_STATUS_INVALID_ARGUMENT. Local directories ignore these options.
  Options& storage_option(const std::string& key, const std::string& value) {
    check(ckpt_options_set_storage_option(options_, key.c_str(), value.c_str()));
    return *this;
  }

  // A remote tier (see docs/tiers.md): every checkpoint committed to the
  // directory is copied in the background to `directory` (a path,
  // `file://` or `s3://` URL), committed there with its own manifest and
  // state file. See ckpt_options_set_remote_directory.
  Options& remote_directory(const std::string& directory) {
    check(ckpt_options_set_remote_directory(options_, directory.c_str()));
    return *this;
  }
  // The remote tier's own max_to_keep (0 keeps all there); after
  // remote_directory.
  Options& remote_max_to_keep(int64_t max_to_keep) {
    check(ckpt_options_set_remote_max_to_keep(options_, max_to_keep));
    return *this;
  }
  // The remote tier's own keep_checkpoint_every_n_hours (0: off).
  Options& remote_keep_checkpoint_every_n_hours(double hours) {
    check(ckpt_options_set_remote_keep_checkpoint_every_n_hours(options_, hours));
    return *this;
  }
  // The most checkpoints the directory holds while uploads are behind
  // (0: no bound); see ckpt_options_set_local_max_held_for_upload.
  Options& local_max_held_for_upload(int64_t count) {
    check(ckpt_options_set_local_max_held_for_upload(options_, count));
    return *this;
  }
  // How long a save answering a preemption signal waits for the uploads.
  Options& remote_preemption_seconds(double seconds) {
    check(ckpt_options_set_remote_preemption_seconds(options_, seconds));
    return *this;
  }

  // Writes checkpoint `number`: every file named `prefix` or
  // `prefix.<suffix>` (the save's staging prefix; the files move into place
  // at the commit). Throw to fail the save (nothing is committed). For
  // Manager::save_async it runs on the library's thread, after the call.
  Options& on_save(std::function<void(const std::string& prefix, uint64_t number)> callback) {
    set(ckpt_options_set_save_callback, detail::save_trampoline, std::move(callback));
    return *this;
  }
  // Runs on the thread that saves, before the save callback: for a
  // background save, before save_async returns, while on_save runs later
  // on the library's thread. Copy there what on_save must see as it is at
  // the call (e.g. device memory to host). Throw to fail the save.
  Options& on_prepare(std::function<void(uint64_t number)> callback) {
    set(ckpt_options_set_prepare_callback, detail::prepare_trampoline, std::move(callback));
    return *this;
  }
  // Restores the checkpoint at `prefix`.
  Options& on_restore(std::function<void(const std::string& prefix)> callback) {
    set(ckpt_options_set_restore_callback, detail::prefix_trampoline, std::move(callback));
    return *this;
  }
  // Initialises a fresh model when there is no checkpoint.
  Options& on_init(std::function<void()> callback) {
    set(ckpt_options_set_init_callback, detail::init_trampoline, std::move(callback));
    return *this;
  }
  // The current training step, for checkpoint_interval.
  Options& step_counter(std::function<int64_t()> callback) {
    set(ckpt_options_set_step_counter_callback, detail::step_trampoline, std::move(callback));
    return *this;
  }
  // Wall-clock seconds since the epoch (finite).
  Options& clock(std::function<double()> callback) {
    set(ckpt_options_set_clock_callback, detail::clock_trampoline, std::move(callback));
    return *this;
  }
  // Replaces the built-in deletion of swept checkpoints (see the note on
  // exceptions at the top of this file).
  Options& on_delete(std::function<void(const std::string& prefix)> callback) {
    set(ckpt_options_set_delete_callback, detail::prefix_trampoline, std::move(callback));
    return *this;
  }
  // Receives the manager's info and warning messages (default: warnings
  // on stderr).
  Options& on_log(std::function<void(ckpt_log_level level, const std::string& message)> callback) {
    set(ckpt_options_set_log_callback, detail::log_trampoline, std::move(callback));
    return *this;
  }

  // The C object, still owned by this Options.
  const ckpt_options* get() const noexcept { return options_; }
  ckpt_options* get() noexcept { return options_; }

 private:
  template <class Setter, class Trampoline, class Fn>
  void set(Setter setter, Trampoline trampoline, Fn callback) {
    if (!callback) {
      check(setter(options_, nullptr, nullptr, nullptr));
      return;
    }
    // The library owns the copy once the setter succeeds, and frees it
    // with the finalizer; on failure it stays ours.
    auto owned = std::make_unique<Fn>(std::move(callback));
    check(setter(options_, trampoline, owned.get(), &detail::finalize<Fn>));
    owned.release();
  }

  ckpt_options* options_ = nullptr;
};

// ---------------------------------------------------------------------------
// SaveArgs

// The arguments of one Manager::save_with: by default those of save() (the
// next number, the interval checked, no metrics, no metadata). Each setter
// returns *this and throws Error for a value the library refuses (e.g. an
// empty metric name, or metadata that is not a JSON object:
// CKPT_STATUS_INVALID_ARGUMENT), leaving the arguments unchanged. One
// SaveArgs may serve many saves. Move-only; a moved-from SaveArgs is empty
// and its setters throw CKPT_STATUS_NULL_ARGUMENT.
class SaveArgs {
 public:
  SaveArgs() {
    ckpt_save_args* args = nullptr;
    check(ckpt_save_args_new(&args));
    args_ = args;
  }
  ~SaveArgs() { ckpt_save_args_free(args_); }
  SaveArgs(SaveArgs&& other) noexcept : args_(std::exchange(other.args_, nullptr)) {}
  SaveArgs& operator=(SaveArgs&& other) noexcept {
    if (this != &other) {
      ckpt_save_args_free(args_);
      args_ = std::exchange(other.args_, nullptr);
    }
    return *this;
  }
  SaveArgs(const SaveArgs&) = delete;
  SaveArgs& operator=(const SaveArgs&) = delete;

  // Saves as `number` instead of the save counter's next value.
  SaveArgs& checkpoint_number(uint64_t number) {
    check(ckpt_save_args_set_checkpoint_number(args_, number));
    return *this;
  }
  // Whether the step and time intervals may skip the save (default true).
  SaveArgs& check_interval(bool check_interval) {
    check(ckpt_save_args_set_check_interval(args_, check_interval));
    return *this;
  }
  // Records `name` = `value` in the checkpoint's manifest (NaN and
  // infinities too); setting a name again replaces its value.
  SaveArgs& metric(const std::string& name, double value) {
    check(ckpt_save_args_set_metric(args_, name.c_str(), value));
    return *this;
  }
  // Records the user's metadata, a JSON object of at most 1 MiB, in the
  // checkpoint's manifest; replaces metadata set before.
  SaveArgs& metadata_json(const std::string& json) {
    check(ckpt_save_args_set_metadata_json(args_, json.c_str()));
    return *this;
  }

  // The C object, still owned by this SaveArgs.
  const ckpt_save_args* get() const noexcept { return args_; }

 private:
  ckpt_save_args* args_ = nullptr;
};

// ---------------------------------------------------------------------------
// Manager

// A checkpoint manager (tf.train.CheckpointManager). Move-only.
class Manager {
 public:
  // Opens a manager on the options' directory and recovers its state.
  // The options may be destroyed afterwards; the manager shares their
  // callbacks. Throws Error (e.g. CKPT_STATUS_LOCKED when another writer
  // holds the directory), or a callback's exception (clock).
  explicit Manager(const Options& options) {
    ckpt_manager* manager = nullptr;
    detail::call([&] { return ckpt_manager_new(options.get(), &manager); });
    manager_ = manager;
  }
  // Waits for the background save in flight, if any (see reset()).
  ~Manager() { reset(); }
  Manager(Manager&& other) noexcept : manager_(std::exchange(other.manager_, nullptr)) {}
  Manager& operator=(Manager&& other) noexcept {
    if (this != &other) {
      reset();
      manager_ = std::exchange(other.manager_, nullptr);
    }
    return *this;
  }
  Manager(const Manager&) = delete;
  Manager& operator=(const Manager&) = delete;

  // False for a moved-from Manager.
  explicit operator bool() const noexcept { return manager_ != nullptr; }
  ckpt_manager* get() const noexcept { return manager_; }

  // Saves a checkpoint numbered `number` (default: the save counter's next
  // value). Returns its prefix, or nullopt when the interval skipped it.
  // On failure nothing is committed and the manager is unchanged (but see
  // on_delete).
  std::optional<std::string> save(std::optional<uint64_t> number = std::nullopt,
                                  bool check_interval = true) {
    return optional_string([&](char** out) {
      return ckpt_manager_save(manager_, number ? &*number : nullptr, check_interval, out);
    });
  }

  // save() with the arguments of `args`, which may record metrics and
  // metadata in the checkpoint's manifest.
  std::optional<std::string> save_with(const SaveArgs& args) {
    return optional_string([&](char** out) {
      return ckpt_manager_save_with(manager_, args.get(), out);
    });
  }

  // save() in the background: decides (the intervals, the number), runs
  // on_prepare and copies the registered tensors on this thread, and
  // returns the prefix the checkpoint will have (nullopt when the interval
  // skipped it); the library's thread then runs on_save, writes and
  // commits. The checkpoint becomes latest() only at its commit; a failed
  // one never does and leaves nothing. A save in flight is waited for
  // first; a skipped call never waits. A failure comes back from the next
  // call that saves, restores, pins, reloads, asks should_save or waits
  // (on_save's exception itself, or a ckpt::Error), once.
  std::optional<std::string> save_async(std::optional<uint64_t> number = std::nullopt,
                                        bool check_interval = true) {
    SaveArgs args;
    if (number) args.checkpoint_number(*number);
    args.check_interval(check_interval);
    return save_async(args);
  }

  // save_async() with the arguments of `args` (metrics, metadata).
  std::optional<std::string> save_async(const SaveArgs& args) {
    return optional_string([&](char** out) {
      return ckpt_manager_save_async(manager_, args.get(), out);
    });
  }

  // Waits until the background save in flight, if any, has committed or
  // failed, at most `timeout_seconds` (negative: as long as it takes; 0
  // only checks). Throws its failure (once), or Error with
  // CKPT_STATUS_TIMEOUT when it is still running.
  void wait_until_finished(double timeout_seconds = -1) {
    call([&] { return ckpt_manager_wait_until_finished(manager_, timeout_seconds); });
  }

  // Whether save() (with the interval checked) would save now: a save was
  // requested, or the step and time intervals have passed. Saves nothing;
  // runs the step counter and clock callbacks.
  bool should_save() {
    bool should = false;
    call([&] { return ckpt_manager_should_save(manager_, &should); });
    return should;
  }

  // Makes the next save go ahead whatever the intervals say (never twice at
  // one step); the request stands until a save goes through, or finds the
  // current step saved already. On a
  // non-empty Manager it only sets a flag, so a signal handler may call it;
  // on an empty one it throws CKPT_STATUS_NULL_ARGUMENT.
  void request_save() const {
    if (ckpt_manager_request_save(manager_) != CKPT_STATUS_OK) {
      // The library sets no message here (it is async-signal-safe).
      throw Error(CKPT_STATUS_NULL_ARGUMENT, "request_save on an empty ckpt::Manager");
    }
  }

  // Keeps the managed checkpoint `prefix` through every sweep until
  // unpin(); recorded in its manifest, so it survives restarts. Throws
  // CKPT_STATUS_INVALID_ARGUMENT if `prefix` is not managed.
  void pin(const std::string& prefix) {
    call([&] { return ckpt_manager_pin(manager_, prefix.c_str()); });
  }

  // Undoes pin(); deletes nothing now (the next save's sweep may).
  void unpin(const std::string& prefix) {
    call([&] { return ckpt_manager_unpin(manager_, prefix.c_str()); });
  }

  // The best managed checkpoint by the keep_best metric, or nullopt when
  // none recorded it. Throws CKPT_STATUS_INVALID_ARGUMENT without keep_best.
  std::optional<std::string> best() const {
    return optional_string([&](char** out) { return ckpt_manager_best(manager_, out); });
  }

  // What is known of the checkpoint at `prefix`, as the JSON object of
  // ckpt_manager_checkpoint_info (number, step, timestamp, metrics,
  // metadata, pinned, managed, latest, has_manifest, files, total_size).
  // Throws CKPT_STATUS_INVALID_ARGUMENT if there is no such checkpoint.
  std::string checkpoint_info(const std::string& prefix) const {
    return optional_string([&](char** out) {
             return ckpt_manager_checkpoint_info(manager_, prefix.c_str(), out);
           }).value_or(std::string());
  }

  // The latest checkpoint's prefix, or nullopt when there is none.
  std::optional<std::string> latest() const {
    return optional_string([&](char** out) { return ckpt_manager_latest(manager_, out); });
  }

  // The managed checkpoints' prefixes, oldest first.
  std::vector<std::string> checkpoints() const {
    detail::OwnedStringList list;
    call([&] {
      ckpt_string_list* out = nullptr;
      ckpt_status status = ckpt_manager_checkpoints(manager_, &out);
      list.reset(out);
      return status;
    });
    return detail::to_vector(list.get());
  }

  // Restores the newest intact checkpoint (registered tensors, then
  // on_restore) and returns its prefix, or runs on_init and returns
  // nullopt when there is none.
  std::optional<std::string> restore_or_initialize() {
    return optional_string(
        [&](char** out) { return ckpt_manager_restore_or_initialize(manager_, out); });
  }

  // The directory, as given in the options.
  std::string directory() const {
    return optional_string([&](char** out) { return ckpt_manager_directory(manager_, out); })
        .value_or(std::string());
  }

  // The remote tier's uploads (see ckpt_manager_remote_status), and the
  // last failure's message (std::nullopt once an upload succeeded).
  struct RemoteStatus {
    ckpt_remote_status counts;
    std::optional<std::string> last_error;
  };
  RemoteStatus remote_status() const {
    RemoteStatus status{};
    status.last_error = optional_string(
        [&](char** out) { return ckpt_manager_remote_status(manager_, &status.counts, out); });
    return status;
  }

  uint64_t save_counter() const {
    uint64_t counter = 0;
    call([&] { return ckpt_manager_save_counter(manager_, &counter); });
    return counter;
  }

  // Checks a checkpoint (default: the latest) against its manifest; throws
  // Error (CKPT_STATUS_CHECKPOINT_DAMAGED, CKPT_STATUS_NO_MANIFEST, ...)
  // unless it is intact.
  void verify(const std::optional<std::string>& prefix = std::nullopt,
              bool checksums = true) const {
    call([&] {
      return ckpt_manager_verify(manager_, prefix ? prefix->c_str() : nullptr, checksums);
    });
  }

  // Re-reads the state file (a read-only manager sees new checkpoints).
  void reload() {
    call([&] { return ckpt_manager_reload(manager_); });
  }

  // Registers a host buffer of T with the built-in saver. `data` must hold
  // the product of `shape` elements (an empty shape is a scalar) and stay
  // valid until unregistered or the manager is destroyed.
  template <class T>
  void register_tensor(const std::string& name, T* data, const std::vector<uint64_t>& shape) {
    static_assert(detail::has_dtype<std::remove_cv_t<T>>::value,
                  "ckpt::Manager::register_tensor: T must be double, float, int8_t..int64_t, "
                  "uint8_t..uint64_t or bool (use the ckpt_dtype overload for F16/BF16)");
    static_assert(!std::is_const<T>::value,
                  "ckpt::Manager::register_tensor: restores write the buffer; it cannot be const");
    register_tensor(name, dtype_of_v<T>, static_cast<void*>(data), shape);
  }

  // Registers a buffer of any dtype (e.g. CKPT_DTYPE_F16, CKPT_DTYPE_BF16).
  void register_tensor(const std::string& name, ckpt_dtype dtype, void* data,
                       const std::vector<uint64_t>& shape) {
    call([&] {
      return ckpt_manager_register_tensor(manager_, name.c_str(), static_cast<uint32_t>(dtype),
                                          shape.empty() ? nullptr : shape.data(), shape.size(),
                                          data);
    });
  }

  // Registers a buffer that holds the same tensor on every rank (weights of
  // data-parallel training): saved once, restored into every rank's buffer
  // whatever number of ranks saved it. Without a communicator it is as
  // register_tensor. `data` as for register_tensor.
  template <class T>
  void register_replicated_tensor(const std::string& name, T* data,
                                  const std::vector<uint64_t>& shape) {
    static_assert(detail::has_dtype<std::remove_cv_t<T>>::value && !std::is_const<T>::value,
                  "ckpt::Manager::register_replicated_tensor: T as for register_tensor");
    register_replicated_tensor(name, dtype_of_v<T>, static_cast<void*>(data), shape);
  }

  void register_replicated_tensor(const std::string& name, ckpt_dtype dtype, void* data,
                                  const std::vector<uint64_t>& shape) {
    call([&] {
      return ckpt_manager_register_replicated_tensor(
          manager_, name.c_str(), static_cast<uint32_t>(dtype),
          shape.empty() ? nullptr : shape.data(), shape.size(), data);
    });
  }

  // Registers this rank's box of a sharded tensor of `global_shape`: the
  // elements from `offset` over `local_shape`, held row-major in `data`
  // (which must hold the product of `local_shape` elements and stay valid
  // as for register_tensor). A restore fills the box from whichever saved
  // boxes overlap it, whatever number of ranks saved them. The three shapes
  // must have one entry per dimension (else CKPT_STATUS_INVALID_ARGUMENT,
  // thrown before the library is called); a box outside `global_shape` is
  // CKPT_STATUS_INVALID_ARGUMENT too.
  template <class T>
  void register_tensor_slice(const std::string& name, T* data,
                             const std::vector<uint64_t>& global_shape,
                             const std::vector<uint64_t>& offset,
                             const std::vector<uint64_t>& local_shape) {
    static_assert(detail::has_dtype<std::remove_cv_t<T>>::value && !std::is_const<T>::value,
                  "ckpt::Manager::register_tensor_slice: T as for register_tensor");
    register_tensor_slice(name, dtype_of_v<T>, static_cast<void*>(data), global_shape, offset,
                          local_shape);
  }

  void register_tensor_slice(const std::string& name, ckpt_dtype dtype, void* data,
                             const std::vector<uint64_t>& global_shape,
                             const std::vector<uint64_t>& offset,
                             const std::vector<uint64_t>& local_shape) {
    if (offset.size() != global_shape.size() || local_shape.size() != global_shape.size()) {
      throw Error(CKPT_STATUS_INVALID_ARGUMENT,
                  "register_tensor_slice '" + name +
                      "': global_shape, offset and local_shape need one entry per dimension");
    }
    const size_t ndim = global_shape.size();
    call([&] {
      return ckpt_manager_register_tensor_slice(
          manager_, name.c_str(), static_cast<uint32_t>(dtype),
          ndim ? global_shape.data() : nullptr, ndim ? offset.data() : nullptr,
          ndim ? local_shape.data() : nullptr, ndim, data);
    });
  }

  void unregister_tensor(const std::string& name) {
    call([&] { return ckpt_manager_unregister_tensor(manager_, name.c_str()); });
  }

  // Frees the manager now (releasing the directory's lock), after its
  // background save in flight, if any, has finished (a failure it finds
  // goes to on_log; its callbacks' exceptions are dropped); it becomes
  // empty. Inside one of this manager's own calls (from its callback) the
  // library refuses to free it, and inside its background save's callback
  // freeing would wait for that very save, so this does nothing there and
  // the manager stays usable; a Manager destroyed there leaks its handle
  // instead.
  void reset() noexcept {
    if (manager_ != nullptr && !detail::CallScope::running(manager_) &&
        !detail::BackgroundCallback::running()) {
      detail::CallScope scope;  // nothing escapes a destructor
      ckpt_manager_free(std::exchange(manager_, nullptr));
    }
  }

 private:
  // Runs `c_call` (returning a ckpt_status) on this manager, as
  // detail::call does.
  template <class F>
  void call(F&& c_call) const {
    if (detail::BackgroundCallback::running()) {
      // Refused by the library too, before it would wait for the save
      // running this callback.
      throw Error(CKPT_STATUS_REENTRANT_CALL,
                  "a callback of a background save called into a manager; it could wait for "
                  "the save that runs it");
    }
    detail::call(std::forward<F>(c_call), manager_);
  }

  // Runs `c_call(char** out)` on this manager; its string, or nullopt for NULL.
  template <class F>
  std::optional<std::string> optional_string(F&& c_call) const {
    detail::OwnedString string;
    call([&] {
      char* out = nullptr;
      ckpt_status status = c_call(&out);
      string.reset(out);
      return status;
    });
    return detail::to_optional(string);
  }

  ckpt_manager* manager_ = nullptr;
};

// ---------------------------------------------------------------------------
// Functions without a manager

// Installs a handler for `signum` after which every manager's next save
// goes ahead whatever its intervals say and preemption_requested() is true.
// A handler installed before is called after it (unless it was the default
// action or "ignore"): the signal no longer ends the process. Throws
// CKPT_STATUS_INVALID_ARGUMENT for SIGKILL, SIGSTOP, SIGABRT, a fault
// signal or a number that is no signal.
inline void install_preemption_handler(int signum = SIGTERM) {
  detail::call([&] { return ckpt_install_preemption_handler(signum); });
}

// Whether a signal handled by install_preemption_handler has arrived (for
// good: it never resets). Async-signal-safe.
inline bool preemption_requested() noexcept { return ckpt_preemption_requested(); }

// The library's version, "MAJOR.MINOR.PATCH".
inline std::string version() { return ckpt_version(); }

// The newest usable checkpoint listed in `directory`'s state file, or
// nullopt. `flags`: CKPT_LATEST_NO_FALLBACK | CKPT_LATEST_VERIFY_CHECKSUMS.
inline std::optional<std::string> latest_checkpoint(const std::string& directory,
                                                    uint32_t flags = 0) {
  detail::OwnedString prefix;
  detail::call([&] {
    char* out = nullptr;
    ckpt_status status = ckpt_latest_checkpoint_with_flags(directory.c_str(), flags, &out);
    prefix.reset(out);
    return status;
  });
  return detail::to_optional(prefix);
}

// Whether any file of the checkpoint at `prefix` exists.
inline bool checkpoint_exists(const std::string& prefix) {
  bool exists = false;
  detail::call([&] { return ckpt_checkpoint_exists(prefix.c_str(), &exists); });
  return exists;
}

// Deletes every file of the checkpoint at `prefix` (none is not an error).
inline void remove_checkpoint(const std::string& prefix) {
  detail::call([&] { return ckpt_remove_checkpoint(prefix.c_str()); });
}

// Checks the checkpoint at `prefix` against its manifest; throws Error
// unless it is intact.
inline void verify_checkpoint(const std::string& prefix, bool checksums = true) {
  detail::call([&] { return ckpt_verify_checkpoint(prefix.c_str(), checksums); });
}

// A directory's `checkpoint` state file (tf.train.get_checkpoint_state).
struct CheckpointState {
  std::string model_checkpoint_path{};
  std::vector<std::string> all_model_checkpoint_paths{};
  std::vector<double> all_model_checkpoint_timestamps{};
  double last_preserved_timestamp = 0;
};

// The state file of `directory`, or nullopt when it has none.
inline std::optional<CheckpointState> get_checkpoint_state(const std::string& directory) {
  struct Deleter {
    void operator()(ckpt_checkpoint_state* state) const noexcept {
      ckpt_checkpoint_state_free(state);
    }
  };
  std::unique_ptr<ckpt_checkpoint_state, Deleter> state;
  detail::call([&] {
    ckpt_checkpoint_state* out = nullptr;
    ckpt_status status = ckpt_get_checkpoint_state(directory.c_str(), &out);
    state.reset(out);
    return status;
  });
  if (!state) return std::nullopt;
  const ckpt_checkpoint_state* view = state.get();
  CheckpointState result;
  result.model_checkpoint_path = ckpt_checkpoint_state_model_checkpoint_path(view);
  for (size_t i = 0; i < ckpt_checkpoint_state_path_count(view); ++i) {
    result.all_model_checkpoint_paths.emplace_back(ckpt_checkpoint_state_path(view, i));
  }
  for (size_t i = 0; i < ckpt_checkpoint_state_timestamp_count(view); ++i) {
    result.all_model_checkpoint_timestamps.push_back(ckpt_checkpoint_state_timestamp(view, i));
  }
  result.last_preserved_timestamp = ckpt_checkpoint_state_last_preserved_timestamp(view);
  return result;
}

}  // namespace ckpt

#endif  // CKPT_MANAGER_HPP
