// `pmdrl tokenize`: text <-> token ids with a Hugging Face model directory's tokenizer,
// one input line at a time (to inspect prompts, check a checkpoint's tokenizer, or
// prepare ids for other tools).
#ifndef PMDRL_CLI_TOKENIZE_H_
#define PMDRL_CLI_TOKENIZE_H_

namespace pmdrl {

// argv starts at the sub-command's name. Reads stdin, writes one JSON value per input
// line to stdout. Exit codes: 0 ok, 1 bad input (the message names the line), 2 bad
// usage or a model directory that cannot be loaded.
int RunTokenize(int argc, char** argv);

}  // namespace pmdrl

#endif  // PMDRL_CLI_TOKENIZE_H_
