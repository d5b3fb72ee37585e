// A toy trainer that checkpoints with the C++ wrapper and resumes where it
// stopped. Usage: quickstart DIRECTORY [STEPS [STOP_AT]]
#include "ckpt_manager.hpp"

#include <array>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: quickstart DIRECTORY [STEPS [STOP_AT]]\n";
    return 2;
  }
  const int64_t steps = argc > 2 ? std::stoll(argv[2]) : 50;
  const int64_t stop_at = argc > 3 ? std::stoll(argv[3]) : steps;

  // The training state, saved by the built-in saver: no serialisation code.
  // Registered buffers must stay where they are (no reallocation).
  std::array<float, 4> weights{};
  int64_t step = 0;

  try {
    ckpt::Manager manager(
        ckpt::Options()
            .directory(argv[1])
            .max_to_keep(3)
            .checkpoint_interval(10)  // save() saves at most every 10 steps
            .last_checkpoint_step(0)
            .step_counter([&] { return step; })
            .on_init([&] { weights = {0.5f, -0.25f, 1.0f, 2.0f}; })
            // Extra files of your own go beside the tensors, as <prefix>.<suffix>.
            // A callback reports failure by throwing: save() rethrows it.
            .on_save([&](const std::string& prefix, uint64_t number) {
              std::ofstream note(prefix + ".txt");
              note << "checkpoint " << number << " at step " << step << "\n";
              if (!note) throw std::runtime_error("cannot write " + prefix + ".txt");
            }));
    manager.register_tensor("weights", weights.data(), {weights.size()});
    manager.register_tensor("step", &step, {});  // a scalar

    if (std::optional<std::string> restored = manager.restore_or_initialize()) {
      std::cout << "resumed from " << *restored << " at step " << step << "\n";
    } else {
      std::cout << "no checkpoint in " << manager.directory() << ": fresh weights\n";
    }

    while (step < stop_at) {
      ++step;
      for (float& w : weights) w = 0.9f * w + 0.01f * static_cast<float>(step % 7);
      if (std::optional<std::string> saved = manager.save()) {
        std::cout << "step " << step << ": saved " << *saved << "\n";
      }
    }

    char summary[128];
    std::snprintf(summary, sizeof summary, "%.6f %.6f %.6f %.6f", weights[0], weights[1],
                  weights[2], weights[3]);
    std::cout << (step == steps ? "done" : "stopped") << " at step " << step
              << ": weights " << summary << "\n";
  } catch (const ckpt::Error& error) {
    std::cerr << "checkpoint error " << error.status_name() << ": " << error.what() << "\n";
    return 1;
  } catch (const std::exception& error) {
    std::cerr << "error: " << error.what() << "\n";
    return 1;
  }
}
