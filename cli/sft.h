// `pmdrl sft`: supervised warm-up of a base policy for the arith task.
#ifndef PMDRL_CLI_SFT_H_
#define PMDRL_CLI_SFT_H_

namespace pmdrl {

// Trains a fresh model on the task with cross-entropy on response tokens until the
// held-out greedy accuracy and pass@k reach the configured targets (or sft.max_steps),
// then writes the model directory to sft.output. Returns a process exit code.
int RunSft(int argc, char** argv);

}  // namespace pmdrl

#endif  // PMDRL_CLI_SFT_H_
