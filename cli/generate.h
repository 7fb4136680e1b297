// `pmdrl generate`: samples completions from a Hugging Face model directory for prompts
// read on stdin, with the directory's tokenizer and chat format, the same way the
// actors of a run prompt and sample (to look at a base policy or a checkpoint).
#ifndef PMDRL_CLI_GENERATE_H_
#define PMDRL_CLI_GENERATE_H_

namespace pmdrl {

// argv starts at the sub-command's name. Returns a process exit code: 0 ok, 1 bad input
// (the message names the line), 2 bad usage or a model directory that cannot be loaded.
int RunGenerate(int argc, char** argv);

}  // namespace pmdrl

#endif  // PMDRL_CLI_GENERATE_H_
