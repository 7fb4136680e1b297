// `pmdrl grade`: grades one answer against one reference with the verifier's grader and
// shows every stage (extraction, normalisation, GiNaC translation, verdict).
#ifndef PMDRL_CLI_GRADE_H_
#define PMDRL_CLI_GRADE_H_

namespace pmdrl {

// argv starts at the sub-command's name ("grade"). Prints one "key: value" line per
// stage to stdout. Returns 0 when the verdict is correct, 1 when it is not (incorrect,
// parse_error, timeout), 2 on a usage error.
int RunGrade(int argc, char** argv);

}  // namespace pmdrl

#endif  // PMDRL_CLI_GRADE_H_
