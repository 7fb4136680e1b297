#include "verifier/grader_process_pool.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"

extern char** environ;

namespace pmdrl {
namespace {

using Clock = std::chrono::steady_clock;

// The hello a fresh worker sends before its first request.
constexpr std::string_view kHello = "pmdrl-grader-worker/1";
// Largest frame either side accepts: inputs longer than kMaxGradeInputBytes are parse
// errors anyway, but a completion may be longer than that and is sent whole.
constexpr size_t kMaxFrameBytes = size_t{64} << 20;
// A waiter gives up on a queued job after this many budgets: only reached when every
// worker stays busy (overloaded verifier, or workers that keep failing to start).
constexpr int kQueueBudgets = 10;

// Slack on top of the budget before a worker is killed, so that a grader that honours
// its Deadline reports kTimeout itself and keeps its process.
std::chrono::milliseconds Grace(std::chrono::milliseconds budget) {
  return std::clamp(budget / 10, std::chrono::milliseconds(20), std::chrono::milliseconds(200));
}

// ---------------------------------------------------------------- framing

void PutU32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint32_t GetU32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i)
    v |= static_cast<uint32_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

// A frame: u32 payload length, then the fields, each a u32 length and its bytes.
std::string Frame(std::initializer_list<std::string_view> fields) {
  std::string payload;
  for (std::string_view f : fields) {
    PutU32(&payload, static_cast<uint32_t>(f.size()));
    payload.append(f);
  }
  std::string out;
  PutU32(&out, static_cast<uint32_t>(payload.size()));
  out.append(payload);
  return out;
}

// Exactly `n` fields, or nullopt.
std::optional<std::vector<std::string>> Fields(std::string_view payload, size_t n) {
  std::vector<std::string> fields;
  while (!payload.empty()) {
    if (payload.size() < 4) return std::nullopt;
    const uint32_t len = GetU32(payload.data());
    payload.remove_prefix(4);
    if (len > payload.size()) return std::nullopt;
    fields.emplace_back(payload.substr(0, len));
    payload.remove_prefix(len);
  }
  if (fields.size() != n) return std::nullopt;
  return fields;
}

// ---------------------------------------------------------------- worker side (blocking)

bool ReadFull(int fd, char* buf, size_t n) {
  while (n > 0) {
    ssize_t r = read(fd, buf, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    buf += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool WriteFull(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t w = write(fd, data.data(), data.size());
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    data.remove_prefix(static_cast<size_t>(w));
  }
  return true;
}

bool ReadFrameBlocking(int fd, std::string* payload) {
  char header[4];
  if (!ReadFull(fd, header, 4)) return false;
  const uint32_t len = GetU32(header);
  if (len > kMaxFrameBytes) return false;
  payload->resize(len);
  return ReadFull(fd, payload->data(), len);
}

// ---------------------------------------------------------------- parent side (bounded)

int MillisLeft(Clock::time_point deadline) {
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
  return static_cast<int>(std::clamp<int64_t>(left.count(), 0, 1 << 30));
}

// DeadlineExceeded when `deadline` passes first, Unavailable when the peer is gone.
absl::Status SendAll(int fd, std::string_view data, Clock::time_point deadline) {
  while (!data.empty()) {
    ssize_t w = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (w > 0) {
      data.remove_prefix(static_cast<size_t>(w));
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (Clock::now() >= deadline) return absl::DeadlineExceededError("sending");
      pollfd p{fd, POLLOUT, 0};
      if (poll(&p, 1, MillisLeft(deadline)) < 0 && errno != EINTR) {
        return absl::UnavailableError(absl::StrCat("poll: ", std::strerror(errno)));
      }
      continue;
    }
    return absl::UnavailableError(absl::StrCat("send: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status RecvFull(int fd, char* buf, size_t n, Clock::time_point deadline) {
  while (n > 0) {
    ssize_t r = recv(fd, buf, n, 0);
    if (r > 0) {
      buf += r;
      n -= static_cast<size_t>(r);
      continue;
    }
    if (r == 0) return absl::UnavailableError("the worker closed its end");
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      return absl::UnavailableError(absl::StrCat("recv: ", std::strerror(errno)));
    }
    if (Clock::now() >= deadline) return absl::DeadlineExceededError("waiting for the reply");
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, MillisLeft(deadline)) < 0 && errno != EINTR) {
      return absl::UnavailableError(absl::StrCat("poll: ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> RecvFrame(int fd, Clock::time_point deadline) {
  char header[4];
  if (absl::Status s = RecvFull(fd, header, 4, deadline); !s.ok()) return s;
  const uint32_t len = GetU32(header);
  if (len > kMaxFrameBytes) return absl::UnavailableError("oversized frame from the worker");
  std::string payload(len, '\0');
  if (absl::Status s = RecvFull(fd, payload.data(), len, deadline); !s.ok()) return s;
  return payload;
}

// An idle worker's socket is readable only when the worker is gone (EOF): it never
// speaks unasked.
bool PeerGone(int fd) {
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, 0) > 0;
}

struct Spawned {
  pid_t pid = 0;
  int fd = -1;
};

void KillAndReap(pid_t pid) {
  if (pid <= 0) return;
  kill(pid, SIGKILL);
  while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
  }
}

// Starts one worker: a socketpair whose child end becomes its stdin and stdout (the
// parent end is close-on-exec, so no other child inherits it and the worker sees EOF
// when the verifier goes), then waits for its hello.
absl::StatusOr<Spawned> SpawnWorker(const GraderProcessPool::Options& o) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    return absl::InternalError(absl::StrCat("socketpair: ", std::strerror(errno)));
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  // dup2 clears close-on-exec on the copies, so only fds 0 and 1 reach the worker.
  posix_spawn_file_actions_adddup2(&actions, sv[1], STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, sv[1], STDOUT_FILENO);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGPIPE);
  sigaddset(&defaults, SIGTERM);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  std::vector<char*> argv;
  for (const std::string& a : o.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, o.executable.c_str(), &actions, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  close(sv[1]);
  if (rc != 0) {
    close(sv[0]);
    return absl::InternalError(
        absl::StrCat("cannot start grader worker ", o.executable, ": ", std::strerror(rc)));
  }
  fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
  absl::StatusOr<std::string> hello = RecvFrame(sv[0], Clock::now() + o.start_timeout);
  std::optional<std::vector<std::string>> fields = hello.ok() ? Fields(*hello, 1) : std::nullopt;
  if (!fields || (*fields)[0] != kHello) {
    KillAndReap(pid);
    close(sv[0]);
    return absl::UnavailableError(absl::StrCat(
        "grader worker ", o.executable, " did not say hello: ",
        hello.ok() ? std::string("unexpected reply") : std::string(hello.status().message())));
  }
  return Spawned{pid, sv[0]};
}

GradeResult WithVerdict(Verdict verdict) {
  GradeResult r;
  r.verdict = verdict;
  return r;
}

}  // namespace

// ---------------------------------------------------------------- worker

int RunGraderWorker(int in_fd, int out_fd, bool test_hooks) {
  // Dies with the thread that started it (a driver, which lives as long as the pool):
  // a check stuck in GiNaC must not outlive a verifier killed without cleaning up.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  // Ctrl-C reaches the whole process group; the verifier stops its workers itself.
  signal(SIGINT, SIG_IGN);
  // Replies get a private copy of the socket; anything a library prints to stdout goes
  // to stderr instead of corrupting the protocol.
  const int reply_fd = dup(out_fd);
  if (reply_fd < 0) return 1;
  if (out_fd == STDOUT_FILENO) dup2(STDERR_FILENO, STDOUT_FILENO);
  if (!WriteFull(reply_fd, Frame({kHello}))) return 1;
  std::string payload;
  while (ReadFrameBlocking(in_fd, &payload)) {
    std::optional<std::vector<std::string>> f = Fields(payload, 4);
    if (!f) return 1;
    const std::string& task = (*f)[0];
    const std::string& response = (*f)[1];
    const std::string& reference = (*f)[2];
    int64_t budget_ms = 0;
    if (!absl::SimpleAtoi((*f)[3], &budget_ms)) return 1;
    if (test_hooks && response.find(kGraderTestHangMarker) != std::string::npos) {
      // Sleeps rather than spins: the tests measure that one stuck worker stalls no other
      // grading, not how a small machine shares its cores with a busy loop.
      while (true) std::this_thread::sleep_for(std::chrono::hours(1));
    }
    if (test_hooks && response.find(kGraderTestCrashMarker) != std::string::npos) _exit(3);
    GradeResult r;
    absl::StatusOr<Grader> grader = GraderForTask(task);
    if (!grader.ok()) {
      r.verdict = Verdict::kParseError;  // the pool only sends tasks that have a grader
    } else {
      try {
        r = (*grader)(response, reference, Deadline(std::chrono::milliseconds(budget_ms)));
      } catch (...) {
        r = WithVerdict(Verdict::kParseError);  // graders promise not to throw
      }
    }
    const std::string verdict = std::to_string(static_cast<int>(r.verdict));
    if (!WriteFull(reply_fd,
                   Frame({verdict, r.extracted, r.normalized_answer, r.normalized_reference}))) {
      return 1;
    }
  }
  return 0;
}

// ---------------------------------------------------------------- pool

struct GraderProcessPool::Job {
  std::string task;
  std::string response;
  std::string reference;
  std::chrono::milliseconds budget{0};
  Clock::time_point submitted;

  // Guarded by State::mu.
  enum class Phase { kQueued, kRunning, kDone } phase = Phase::kQueued;
  bool abandoned = false;  // the waiter gave up while it was queued: skipped
  Ending ending = Ending::kAnswered;
  GradeResult result;
  // Signalled (under State::mu) when the job is done. One per job, so a finished check
  // wakes its own waiter only, not every thread waiting on a check.
  std::condition_variable done;
};

// One worker and its driver thread. pid and the flags are guarded by State::mu (the
// destructor kills by pid); fd belongs to the driver alone.
struct GraderProcessPool::Slot {
  std::thread driver;
  pid_t pid = 0;  // 0: none (never a pid already reaped)
  int fd = -1;
  bool spare = false;   // started for a long-running check, not by Start
  bool exited = false;  // the driver returned: the slot may be reused
  bool first_start_done = false;
  absl::Status first_start;
};

struct GraderProcessPool::State {
  Options options;
  mutable std::mutex mu;
  std::condition_variable work_cv;   // a job was queued, or stopping
  std::condition_variable start_cv;  // a driver's first start finished
  std::deque<std::shared_ptr<Job>> queue;
  std::vector<std::unique_ptr<Slot>> slots;  // at most 2 * processes
  int drivers = 0;                           // slots whose driver runs
  int long_running = 0;                      // checks running past SpareAfter
  bool stopping = false;
  Stats stats;
};

namespace {

// A check still running after this long holds its worker for an unusual time (normal
// checks take well under a millisecond): a spare worker is started so the other checks
// keep `processes` workers, and the slow one's worker retires when its check ends.
std::chrono::milliseconds SpareAfter(std::chrono::milliseconds budget) {
  return std::clamp(budget / 10, std::chrono::milliseconds(20), std::chrono::milliseconds(250));
}

// Kills and reaps the slot's worker, if any. The pid is cleared under the lock before
// the reap, so the destructor never signals a pid that may have been reused.
template <typename StateT, typename SlotT>
void ReapWorker(StateT& s, SlotT* slot) {
  pid_t pid = 0;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    pid = slot->pid;
    slot->pid = 0;
  }
  KillAndReap(pid);
  if (slot->fd >= 0) close(slot->fd);
  slot->fd = -1;
}

}  // namespace

GraderProcessPool::GraderProcessPool(Options options) : state_(std::make_shared<State>()) {
  state_->options = std::move(options);
  state_->options.processes = std::max(1, state_->options.processes);
  state_->stats.processes = state_->options.processes;
}

bool GraderProcessPool::StartDriverLocked(const std::shared_ptr<State>& sp, bool spare) {
  State& s = *sp;
  Slot* slot = nullptr;
  for (const std::unique_ptr<Slot>& candidate : s.slots) {
    if (candidate->exited) {
      // Its driver returned right after setting `exited` under this lock: the join only
      // waits for the thread's last instructions, none of which take the lock.
      if (candidate->driver.joinable()) candidate->driver.join();
      *candidate = Slot();
      slot = candidate.get();
      break;
    }
  }
  if (slot == nullptr) {
    if (s.slots.size() >= static_cast<size_t>(2 * s.options.processes)) return false;
    s.slots.push_back(std::make_unique<Slot>());
    slot = s.slots.back().get();
  }
  slot->spare = spare;
  try {
    slot->driver = std::thread(&GraderProcessPool::DriverLoop, sp, slot);
  } catch (const std::system_error& e) {
    slot->exited = true;
    slot->first_start_done = true;
    slot->first_start = absl::ResourceExhaustedError(
        absl::StrCat("cannot start a grader driver thread: ", e.what()));
    return false;
  }
  ++s.drivers;
  return true;
}

absl::StatusOr<std::unique_ptr<GraderProcessPool>> GraderProcessPool::Start(Options options) {
  if (options.executable.empty() || options.argv.empty()) {
    return absl::InvalidArgumentError("grader worker command is empty");
  }
  std::unique_ptr<GraderProcessPool> pool(new GraderProcessPool(std::move(options)));
  State& s = *pool->state_;
  std::unique_lock<std::mutex> lock(s.mu);
  // Each driver starts its own worker: PR_SET_PDEATHSIG follows the thread that started
  // a process, and a driver lives exactly as long as its worker.
  for (int i = 0; i < s.options.processes; ++i) StartDriverLocked(pool->state_, /*spare=*/false);
  s.start_cv.wait(lock, [&s] {
    return std::all_of(s.slots.begin(), s.slots.end(),
                       [](const std::unique_ptr<Slot>& slot) { return slot->first_start_done; });
  });
  for (const std::unique_ptr<Slot>& slot : s.slots) {
    if (!slot->first_start.ok()) {
      absl::Status error = slot->first_start;
      lock.unlock();
      return error;  // the pool's destructor stops what started
    }
  }
  return pool;
}

GraderProcessPool::~GraderProcessPool() {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->stopping = true;
    for (const std::unique_ptr<Slot>& slot : state_->slots) {
      if (slot->pid > 0) kill(slot->pid, SIGKILL);  // wakes a driver waiting on a reply
    }
    state_->work_cv.notify_all();
  }
  // No driver starts another once stopping is set, so the slots are fixed now.
  for (const std::unique_ptr<Slot>& slot : state_->slots) {
    if (slot->driver.joinable()) slot->driver.join();
  }
  std::lock_guard<std::mutex> lock(state_->mu);
  for (const std::shared_ptr<Job>& job : state_->queue) {
    job->phase = Job::Phase::kDone;
    job->ending = Ending::kQueued;
    job->result = WithVerdict(Verdict::kTimeout);
    job->done.notify_all();
  }
  state_->queue.clear();
}

std::shared_ptr<GraderProcessPool::Job> GraderProcessPool::Submit(
    std::string task, std::string response, std::string reference,
    std::chrono::milliseconds budget) {
  auto job = std::make_shared<Job>();
  job->task = std::move(task);
  job->response = std::move(response);
  job->reference = std::move(reference);
  job->budget = budget;
  job->submitted = Clock::now();
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->queue.push_back(job);
  // All: drivers backing off after a failed start wait on this variable too, and one of
  // them taking the only notification would leave the job queued with idle workers.
  state_->work_cv.notify_all();
  return job;
}

GradeResult GraderProcessPool::Wait(const std::shared_ptr<Job>& job, Ending* ending) {
  std::unique_lock<std::mutex> lock(state_->mu);
  const Clock::time_point queue_limit = job->submitted + kQueueBudgets * job->budget;
  while (true) {
    switch (job->phase) {
      case Job::Phase::kDone:
        *ending = job->ending;
        return std::move(job->result);
      case Job::Phase::kQueued:
        if (Clock::now() >= queue_limit) {
          job->abandoned = true;  // in case a driver holds it already
          std::erase(state_->queue, job);
          *ending = Ending::kQueued;
          return WithVerdict(Verdict::kTimeout);
        }
        job->done.wait_until(lock, queue_limit);
        break;
      case Job::Phase::kRunning:
        // Its driver ends it by budget + grace (killing the worker if need be).
        job->done.wait(lock);
        break;
    }
  }
}

GraderProcessPool::Stats GraderProcessPool::stats() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  Stats st = state_->stats;
  st.live = state_->drivers;
  st.long_running = state_->long_running;
  return st;
}

void GraderProcessPool::DriverLoop(std::shared_ptr<State> sp, Slot* slot) {
  State& s = *sp;
  bool first = true;
  std::chrono::milliseconds backoff(100);
  while (true) {
    if (slot->fd < 0) {
      absl::StatusOr<Spawned> w = SpawnWorker(s.options);
      std::unique_lock<std::mutex> lock(s.mu);
      if (w.ok()) {
        slot->pid = w->pid;
        slot->fd = w->fd;
        ++s.stats.started;
        if (first && slot->spare) ++s.stats.spares_started;
        backoff = std::chrono::milliseconds(100);
      } else if (!first || slot->spare) {
        ++s.stats.start_failures;
        spdlog::error("verifier: {}", std::string(w.status().message()));
      }
      if (first) {
        first = false;
        slot->first_start_done = true;
        slot->first_start = w.status();
        s.start_cv.notify_all();
        if (!w.ok()) break;  // Start reports it; a spare is simply not there
      }
      if (s.stopping) break;
      if (!w.ok()) {
        s.work_cv.wait_for(lock, backoff, [&s] { return s.stopping; });
        backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
        continue;
      }
    }
    if (PeerGone(slot->fd)) {  // died while idle (e.g. killed from outside)
      {
        std::lock_guard<std::mutex> lock(s.mu);
        ++s.stats.died;
      }
      spdlog::warn("verifier: an idle grader worker died; starting another");
      ReapWorker(s, slot);
      continue;
    }

    std::shared_ptr<Job> job;
    bool died_waiting = false;
    {
      std::unique_lock<std::mutex> lock(s.mu);
      s.work_cv.wait(lock, [&s] { return s.stopping || !s.queue.empty(); });
      if (s.stopping) break;
      job = std::move(s.queue.front());
      s.queue.pop_front();
      if (job->abandoned) continue;
      if (PeerGone(slot->fd)) {
        // The worker died while this driver waited for work: the job goes back to the
        // front for a live worker (or this one's replacement) instead of being scored
        // parse_error against a dead one.
        s.queue.push_front(std::move(job));
        ++s.stats.died;
        died_waiting = true;
        s.work_cv.notify_all();
      } else {
        job->phase = Job::Phase::kRunning;
        ++s.stats.busy;
      }
    }
    if (died_waiting) {
      spdlog::warn("verifier: an idle grader worker died; starting another");
      ReapWorker(s, slot);
      continue;
    }

    // Counted from when this worker took the job, as the worker counts its Deadline.
    const Clock::time_point start = Clock::now();
    const Clock::time_point hard = start + job->budget + Grace(job->budget);
    Ending ending = Ending::kAnswered;
    GradeResult result;
    absl::Status sent = SendAll(
        slot->fd,
        Frame({job->task, job->response, job->reference, std::to_string(job->budget.count())}),
        hard);
    bool long_running = false;
    if (sent.ok()) {
      pollfd p{slot->fd, POLLIN, 0};
      const Clock::time_point spare_at = std::min(hard, start + SpareAfter(job->budget));
      if (poll(&p, 1, MillisLeft(spare_at)) == 0) {
        // Still at it: let a spare take this worker's place for the other checks.
        std::lock_guard<std::mutex> lock(s.mu);
        long_running = true;
        ++s.long_running;
        if (!s.stopping && s.drivers < s.options.processes + s.long_running) {
          StartDriverLocked(sp, /*spare=*/true);
        }
      }
    }
    absl::StatusOr<std::string> reply = sent.ok() ? RecvFrame(slot->fd, hard) : sent;
    std::optional<std::vector<std::string>> fields = reply.ok() ? Fields(*reply, 4) : std::nullopt;
    int verdict = -1;
    if (fields && absl::SimpleAtoi((*fields)[0], &verdict) &&
        verdict >= static_cast<int>(Verdict::kCorrect) &&
        verdict <= static_cast<int>(Verdict::kTimeout)) {
      result.verdict = static_cast<Verdict>(verdict);
      result.extracted = std::move((*fields)[1]);
      result.normalized_answer = std::move((*fields)[2]);
      result.normalized_reference = std::move((*fields)[3]);
    } else if (!reply.ok() && absl::IsDeadlineExceeded(reply.status())) {
      ending = Ending::kKilled;
      result = WithVerdict(Verdict::kTimeout);
    } else {
      ending = Ending::kDied;  // gone, or talking nonsense: either way replaced
      result = WithVerdict(Verdict::kParseError);
    }
    if (ending != Ending::kAnswered) ReapWorker(s, slot);  // kill first: it may be spinning
    bool retire = false;
    {
      std::lock_guard<std::mutex> lock(s.mu);
      if (ending == Ending::kKilled) ++s.stats.killed_overrun;
      if (ending == Ending::kDied && !s.stopping) ++s.stats.died;
      --s.stats.busy;
      if (long_running) --s.long_running;
      // A spare took this worker's place while it was held: one of them goes.
      retire = long_running && s.drivers > s.options.processes + s.long_running;
      job->ending = ending;
      job->result = std::move(result);
      job->phase = Job::Phase::kDone;
      job->done.notify_all();
    }
    if (ending == Ending::kDied && !s.stopping) {
      spdlog::warn(
          "verifier: a grader worker died mid-check ({}); scored parse_error, replaced",
          reply.ok() ? std::string("malformed reply") : QuoteUntrusted(reply.status().message()));
    }
    if (retire) break;
  }
  ReapWorker(s, slot);
  std::lock_guard<std::mutex> lock(s.mu);
  --s.drivers;
  slot->exited = true;
}

}  // namespace pmdrl
