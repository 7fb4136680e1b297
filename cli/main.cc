// The `pmdrl` tool: dispatches `pmdrl <sub-command> ...` to the sub-command's entry
// point, which receives argv starting at the sub-command's name.
#include <cstdio>
#include <cstring>
#include <string>

#include "cli/bandit.h"
#include "cli/compare.h"
#include "cli/generate.h"
#include "cli/grade.h"
#include "cli/init_model.h"
#include "cli/local.h"
#include "cli/logits.h"
#include "cli/sft.h"
#include "cli/tokenize.h"

namespace {

struct SubCommand {
  const char* name;
  const char* summary;
  int (*run)(int argc, char** argv);
};

constexpr SubCommand kSubCommands[] = {
    {"local", "run a whole cluster (learner, verifiers, actors) on this machine", pmdrl::RunLocal},
    {"sft", "train a base policy for the built-in task by supervised warm-up", pmdrl::RunSft},
    {"compare", "train with several losses and seeds, write one table and one plot",
     pmdrl::RunCompare},
    {"init-model", "write a small random model directory (Hugging Face layout)",
     pmdrl::RunInitModel},
    {"logits", "one forward pass of a model directory, logits to safetensors", pmdrl::RunLogits},
    {"grade", "grade one answer against a reference and show each stage", pmdrl::RunGrade},
    {"tokenize", "text <-> token ids with a model directory's tokenizer", pmdrl::RunTokenize},
    {"generate", "sample completions of stdin prompts from a model directory", pmdrl::RunGenerate},
    {"bandit", "solve the PMD-mean update of one prompt exactly (Lambert W)", pmdrl::RunBandit},
};

void PrintUsage(FILE* out) {
  std::fprintf(out,
               "usage: pmdrl <command> [--config FILE] [--section.key=value ...]\n"
               "\n"
               "Commands:\n");
  for (const SubCommand& c : kSubCommands) std::fprintf(out, "  %-10s %s\n", c.name, c.summary);
  std::fprintf(out,
               "\n'pmdrl <command> --help' describes a command and every configuration key.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    PrintUsage(stderr);
    return 2;
  }
  const char* command = argv[1];
  if (std::strcmp(command, "--help") == 0 || std::strcmp(command, "-h") == 0 ||
      std::strcmp(command, "help") == 0) {
    PrintUsage(stdout);
    return 0;
  }
  for (const SubCommand& c : kSubCommands) {
    if (std::strcmp(command, c.name) == 0) return c.run(argc - 1, argv + 1);
  }
  std::fprintf(stderr, "pmdrl: unknown command '%s'\n\n", command);
  PrintUsage(stderr);
  return 2;
}
