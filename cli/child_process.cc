#include "cli/child_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

extern char** environ;

namespace pmdrl {
namespace {

std::vector<char*> CStrings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

}  // namespace

absl::StatusOr<pid_t> Spawn(std::vector<std::string> argv, std::vector<std::string> env,
                            const std::string& log_path, absl::string_view launcher) {
  int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot open ", log_path, ": ", std::strerror(errno)));
  }
  std::string banner = absl::StrCat("==== ", launcher, ": ", absl::StrJoin(argv, " "), "\n");
  [[maybe_unused]] ssize_t w = write(log_fd, banner.data(), banner.size());
  int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  int err_pipe[2];
  if (null_fd < 0 || pipe2(err_pipe, O_CLOEXEC) != 0) {
    close(log_fd);
    if (null_fd >= 0) close(null_fd);
    return absl::InternalError("cannot set up child process i/o");
  }
  std::vector<char*> c_argv = CStrings(argv);
  std::vector<char*> c_env = CStrings(env);

  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    // Should the launcher die without stopping us (SIGKILL, a crash), go too. The
    // signal follows the forking thread (see the header).
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);  // it died before prctl took effect
    // Child: default dispositions and an empty mask, so that SIGINT/SIGTERM reach
    // the program as if started from a shell.
    struct sigaction dfl;
    std::memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    for (int s : {SIGINT, SIGTERM, SIGPIPE, SIGCHLD, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2}) {
      sigaction(s, &dfl, nullptr);
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    dup2(null_fd, STDIN_FILENO);
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    execve(c_argv[0], c_argv.data(), c_env.data());
    int e = errno;
    [[maybe_unused]] ssize_t n = write(err_pipe[1], &e, sizeof(e));
    _exit(127);
  }
  int fork_errno = errno;
  close(err_pipe[1]);
  close(log_fd);
  close(null_fd);
  if (pid < 0) {
    close(err_pipe[0]);
    return absl::ResourceExhaustedError(absl::StrCat("fork: ", std::strerror(fork_errno)));
  }
  int exec_errno = 0;
  ssize_t n;
  do {
    n = read(err_pipe[0], &exec_errno, sizeof(exec_errno));
  } while (n < 0 && errno == EINTR);
  close(err_pipe[0]);
  if (n > 0) {
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return absl::FailedPreconditionError(
        absl::StrCat("cannot execute ", argv[0], ": ", std::strerror(exec_errno)));
  }
  return pid;
}

std::vector<std::string> ChildEnvironment(const std::string& token) {
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    if (absl::StartsWith(*e, "PMDRL_TOKEN=")) continue;
    env.emplace_back(*e);
  }
  env.push_back("PMDRL_TOKEN=" + token);
  return env;
}

bool Reap(Child& child) {
  if (!child.alive) return false;
  int status = 0;
  pid_t r = waitpid(child.pid, &status, WNOHANG);
  if (r == child.pid || (r < 0 && errno == ECHILD)) {
    child.alive = false;
    child.wait_status = r == child.pid ? status : 0;
    return true;
  }
  return false;
}

void KillAndReap(Child& child) {
  if (!child.alive || child.pid <= 0) return;
  kill(child.pid, SIGKILL);  // an exited child is a zombie until reaped: harmless
  int status = 0;
  pid_t r;
  while ((r = waitpid(child.pid, &status, 0)) < 0 && errno == EINTR) {
  }
  child.alive = false;
  child.wait_status = r == child.pid ? status : 0;
}

int PeekKillSignal(const Child& child) {
  if (!child.alive) return 0;
  siginfo_t info{};
  if (waitid(P_PID, static_cast<id_t>(child.pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
    return 0;
  }
  if (info.si_pid != child.pid) return 0;  // still running
  return info.si_code == CLD_KILLED || info.si_code == CLD_DUMPED ? info.si_status : 0;
}

std::string LogTail(const std::string& path, int max_lines) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  in.seekg(0, std::ios::end);
  std::streamoff size = in.tellg();
  std::streamoff start = size > 8192 ? size - 8192 : 0;
  in.seekg(start);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  size_t first = lines.size() > static_cast<size_t>(max_lines) ? lines.size() - max_lines : 0;
  std::string out;
  for (size_t i = first; i < lines.size(); ++i) absl::StrAppend(&out, "  | ", lines[i], "\n");
  return out;
}

std::string DescribeWaitStatus(int wait_status) {
  if (WIFEXITED(wait_status)) return absl::StrCat("exit code ", WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) return absl::StrCat("signal ", WTERMSIG(wait_status));
  return absl::StrCat("wait status ", wait_status);
}

}  // namespace pmdrl
