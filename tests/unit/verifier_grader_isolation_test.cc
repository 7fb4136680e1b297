// The isolated grader (verifier/grader_process_pool.h): GiNaC checks run in worker
// processes of the real pmdrl-verifier binary (its hidden --grader-worker mode, with the
// test-only hooks), a stuck check costs one killed and replaced worker, and normal
// grading through one VerifierService goes on at the same rate meanwhile.
#include <fcntl.h>
#include <grpcpp/client_context.h>
#include <grpcpp/server.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/auth.h"
#include "common/rpc.h"
#include "verifier/grader_process_pool.h"
#include "verifier/verifier_service.h"

extern char** environ;

namespace pmdrl {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;
using Ending = GraderProcessPool::Ending;

constexpr char kToken[] = "test-token-isolation";

GraderProcessPool::Options WorkerOptions(int processes) {
  GraderProcessPool::Options o;
  o.executable = PMDRL_BINARY_DIR "/verifier/pmdrl-verifier";
  o.argv = {"pmdrl-verifier", "--grader-worker", "--grader-test-hooks"};
  o.processes = processes;
  return o;
}

// No child process left (reaped or never started). Only called when no pool runs, so it
// reaps nothing a pool still owns.
bool NoChildren() {
  errno = 0;
  return waitpid(-1, nullptr, WNOHANG) == -1 && errno == ECHILD;
}

// ------------------------------------------------------------------ the pool

TEST(GraderProcessPool, GradesMathInWorkers) {
  {
    absl::StatusOr<std::unique_ptr<GraderProcessPool>> pool =
        GraderProcessPool::Start(WorkerOptions(2));
    ASSERT_TRUE(pool.ok()) << pool.status();
    struct Case {
      const char* response;
      const char* reference;
      Verdict want;
    } cases[] = {
        {"so \\boxed{2\\sqrt{2}}", "\\sqrt{8}", Verdict::kCorrect},  // symbolic: GiNaC
        {"\\boxed{(x+1)^2}", "x^2+2x+1", Verdict::kCorrect},
        {"\\boxed{(x+1)^2}", "x^2+1", Verdict::kIncorrect},
        {"no answer here", "1", Verdict::kParseError},
    };
    std::vector<std::shared_ptr<GraderProcessPool::Job>> jobs;
    for (const Case& c : cases) {
      jobs.push_back((*pool)->Submit("math", c.response, c.reference, milliseconds(5000)));
    }
    for (size_t i = 0; i < jobs.size(); ++i) {
      Ending ending = Ending::kQueued;
      GradeResult r = (*pool)->Wait(jobs[i], &ending);
      EXPECT_EQ(ending, Ending::kAnswered) << i;
      EXPECT_EQ(r.verdict, cases[i].want) << i;
    }
    Ending ending = Ending::kQueued;
    GradeResult r = (*pool)->Wait(
        (*pool)->Submit("math", "\\boxed{\\frac12}", "0.5", milliseconds(5000)), &ending);
    EXPECT_EQ(r.extracted, "\\frac12");  // the worker's whole GradeResult comes back
    EXPECT_EQ(r.normalized_reference, "0.5");
    GraderProcessPool::Stats st = (*pool)->stats();
    EXPECT_EQ(st.processes, 2);
    EXPECT_EQ(st.started, 2);
    EXPECT_EQ(st.killed_overrun + st.died, 0);
  }
  EXPECT_TRUE(NoChildren());  // the destructor killed and reaped every worker
}

TEST(GraderProcessPool, StuckCheckIsKilledAndItsWorkerReplaced) {
  {
    absl::StatusOr<std::unique_ptr<GraderProcessPool>> pool =
        GraderProcessPool::Start(WorkerOptions(1));
    ASSERT_TRUE(pool.ok()) << pool.status();
    const Clock::time_point start = Clock::now();
    Ending ending = Ending::kAnswered;
    GradeResult r =
        (*pool)->Wait((*pool)->Submit("math", std::string("\\boxed{1} ") + kGraderTestHangMarker,
                                      "1", milliseconds(300)),
                      &ending);
    EXPECT_EQ(ending, Ending::kKilled);
    EXPECT_EQ(r.verdict, Verdict::kTimeout);
    // Budget plus grace (at most 200 ms), not the hour the worker meant to sleep.
    EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));
    // The only worker was replaced: the next check is answered.
    r = (*pool)->Wait((*pool)->Submit("math", "\\boxed{\\sqrt{4}}", "2", milliseconds(5000)),
                      &ending);
    EXPECT_EQ(ending, Ending::kAnswered);
    EXPECT_EQ(r.verdict, Verdict::kCorrect);
    GraderProcessPool::Stats st = (*pool)->stats();
    EXPECT_EQ(st.killed_overrun, 1);
    EXPECT_EQ(st.started, 2);
  }
  EXPECT_TRUE(NoChildren());
}

TEST(GraderProcessPool, WorkerDyingMidCheckCostsOnlyThatCheck) {
  absl::StatusOr<std::unique_ptr<GraderProcessPool>> pool =
      GraderProcessPool::Start(WorkerOptions(1));
  ASSERT_TRUE(pool.ok()) << pool.status();
  Ending ending = Ending::kAnswered;
  GradeResult r = (*pool)->Wait(
      (*pool)->Submit("math", kGraderTestCrashMarker, "1", milliseconds(5000)), &ending);
  EXPECT_EQ(ending, Ending::kDied);
  EXPECT_EQ(r.verdict, Verdict::kParseError);
  r = (*pool)->Wait((*pool)->Submit("math", "\\boxed{3}", "3", milliseconds(5000)), &ending);
  EXPECT_EQ(ending, Ending::kAnswered);
  EXPECT_EQ(r.verdict, Verdict::kCorrect);
  EXPECT_EQ((*pool)->stats().died, 1);
  EXPECT_EQ((*pool)->stats().started, 2);
}

TEST(GraderProcessPool, TestHooksNeedTheirFlag) {
  GraderProcessPool::Options o = WorkerOptions(1);
  o.argv = {"pmdrl-verifier", "--grader-worker"};  // as pmdrl-verifier starts its workers
  absl::StatusOr<std::unique_ptr<GraderProcessPool>> pool = GraderProcessPool::Start(o);
  ASSERT_TRUE(pool.ok()) << pool.status();
  Ending ending = Ending::kKilled;
  GradeResult r =
      (*pool)->Wait((*pool)->Submit("math", std::string("\\boxed{1} ") + kGraderTestHangMarker, "1",
                                    milliseconds(5000)),
                    &ending);
  EXPECT_EQ(ending, Ending::kAnswered);  // graded as any other answer
  EXPECT_EQ(r.verdict, Verdict::kCorrect);
}

TEST(GraderProcessPool, UnstartableWorkerIsAnError) {
  GraderProcessPool::Options o = WorkerOptions(2);
  o.executable = "/nonexistent/pmdrl-verifier";
  absl::StatusOr<std::unique_ptr<GraderProcessPool>> pool = GraderProcessPool::Start(o);
  EXPECT_FALSE(pool.ok());
  // A program that never says hello.
  o.executable = "/bin/true";
  o.argv = {"true"};
  pool = GraderProcessPool::Start(o);
  EXPECT_FALSE(pool.ok());
  EXPECT_TRUE(NoChildren());
}

// The children of process `pid` (of any of its threads), from /proc.
std::vector<pid_t> ChildrenOf(pid_t pid) {
  std::vector<pid_t> out;
  std::error_code ec;
  const std::string task = "/proc/" + std::to_string(pid) + "/task";
  for (const auto& entry : std::filesystem::directory_iterator(task, ec)) {
    std::ifstream in(entry.path() / "children");
    pid_t child = 0;
    while (in >> child) out.push_back(child);
  }
  return out;
}

// Gone, or a zombie nobody reaped yet.
bool Dead(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t paren = stat.rfind(')');
  return !in || paren == std::string::npos || paren + 2 >= stat.size() || stat[paren + 2] == 'Z' ||
         stat[paren + 2] == 'X';
}

// A verifier killed outright (SIGKILL: no destructor runs) takes its grader workers
// with it: each dies of PR_SET_PDEATHSIG, or of EOF once idle.
TEST(GraderProcessPool, WorkersDieWithAVerifierKilledOutright) {
  const std::string dir = testing::TempDir() + "/isolation-run";
  std::vector<std::string> args = {"pmdrl-verifier", "--verifier.listen=127.0.0.1:0",
                                   "--verifier.grader_processes=2", "--run.dir=" + dir};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env = {"PMDRL_TOKEN=test-token-isolation"};
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::string_view(*e).rfind("PMDRL_TOKEN=", 0) != 0) env.emplace_back(*e);
  }
  std::vector<char*> envp;
  for (std::string& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  pid_t verifier = 0;
  const std::string binary = PMDRL_BINARY_DIR "/verifier/pmdrl-verifier";
  ASSERT_EQ(posix_spawn(&verifier, binary.c_str(), &actions, nullptr, argv.data(), envp.data()), 0);
  posix_spawn_file_actions_destroy(&actions);

  std::vector<pid_t> workers;
  const Clock::time_point give_up = Clock::now() + std::chrono::seconds(30);
  while ((workers = ChildrenOf(verifier)).size() < 2 && Clock::now() < give_up) {
    std::this_thread::sleep_for(milliseconds(20));
  }
  kill(verifier, SIGKILL);
  waitpid(verifier, nullptr, 0);
  ASSERT_EQ(workers.size(), 2u) << "the verifier never started its grader workers";
  for (pid_t worker : workers) {
    const Clock::time_point until = Clock::now() + std::chrono::seconds(10);
    while (!Dead(worker) && Clock::now() < until) std::this_thread::sleep_for(milliseconds(20));
    EXPECT_TRUE(Dead(worker)) << "grader worker " << worker << " outlived its verifier";
  }
}

// ------------------------------------------------------------------ through the service

// Acks every group ACCEPTED and counts its completions by outcome.
class CountingLearner final : public v1::Learner::Service {
 public:
  grpc::Status SubmitGroups(grpc::ServerContext* context,
                            grpc::ServerReaderWriter<v1::GroupAck, v1::Group>* stream) override {
    if (grpc::Status auth = CheckBearer(*context, kToken); !auth.ok()) return auth;
    v1::Group group;
    while (stream->Read(&group)) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (const v1::Completion& c : group.completions()) ++outcomes_[c.outcome()];
      }
      v1::GroupAck ack;
      ack.set_lease_id(group.lease_id());
      ack.set_status(v1::ACK_ACCEPTED);
      if (!stream->Write(ack)) break;
    }
    return grpc::Status::OK;
  }
  int64_t Outcomes(v1::Outcome o) {
    std::lock_guard<std::mutex> lock(mu_);
    return outcomes_[o];
  }

 private:
  std::mutex mu_;
  int64_t outcomes_[v1::Outcome_ARRAYSIZE] = {};
};

v1::Group MathGroup(const std::string& lease, const std::vector<std::string>& texts,
                    const std::string& reference) {
  v1::Group g;
  g.set_lease_id(lease);
  g.set_actor_id("actor-test");
  g.set_task("math");
  g.set_reference(reference);
  g.add_prompt_tokens(1);
  for (const std::string& text : texts) {
    v1::Completion* c = g.add_completions();
    c->add_tokens(2);
    c->add_logprobs(-0.5f);
    c->set_stopped(true);
    c->set_text(text);
  }
  return g;
}

double MetricValue(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return std::nan("");
}

class IsolationTest : public testing::Test {
 protected:
  void Start(int processes, milliseconds budget) {
    int port = 0;
    auto learner = StartServer("127.0.0.1:0", {&learner_}, &port);
    ASSERT_TRUE(learner.ok()) << learner.status();
    learner_server_ = *std::move(learner);
    VerifierOptions options;
    options.scorer.verifier_id = "verifier-isolation";
    options.scorer.timeout = budget;
    options.scorer.threads = 2;
    options.scorer.grader_worker = WorkerOptions(processes);
    options.learner = "127.0.0.1:" + std::to_string(port);
    options.token = kToken;
    service_ = std::make_unique<VerifierService>(options, &metrics_);
    ASSERT_TRUE(service_->scorer().init_status().ok()) << service_->scorer().init_status();
    auto server = StartServer("127.0.0.1:0", {service_.get()}, &port);
    ASSERT_TRUE(server.ok()) << server.status();
    verifier_server_ = *std::move(server);
    channel_ = MakeChannel("127.0.0.1:" + std::to_string(port));
  }

  void TearDown() override {
    if (verifier_server_) verifier_server_->Shutdown();
    if (learner_server_) learner_server_->Shutdown();
  }

  // Sends groups of `k` normal math answers (each one a symbolic check: 2\sqrt{2} against
  // \sqrt{8}) on `streams` streams for `window`, each stream waiting for each ack; returns
  // how many answers were acked within the window.
  int64_t NormalAnswersIn(milliseconds window, int streams = 4, int k = 4) {
    std::atomic<int64_t> done{0};
    const Clock::time_point end = Clock::now() + window;
    std::vector<std::thread> threads;
    for (int t = 0; t < streams; ++t) {
      threads.emplace_back([&, t] {
        auto stub = v1::Verifier::NewStub(channel_);
        grpc::ClientContext context;
        AddBearer(&context, kToken);
        auto stream = stub->ScoreGroups(&context);
        const v1::Group g =
            MathGroup("lease-normal-" + std::to_string(t),
                      std::vector<std::string>(k, "so \\boxed{2\\sqrt{2}}"), "\\sqrt{8}");
        while (Clock::now() < end) {
          if (!stream->Write(g)) break;
          v1::GroupAck ack;
          if (!stream->Read(&ack)) break;
          if (Clock::now() <= end) done += k;
        }
        stream->WritesDone();
        EXPECT_TRUE(stream->Finish().ok());
      });
    }
    for (std::thread& t : threads) t.join();
    return done.load();
  }

  // Waits (up to 10 s) until the pool is back to its normal workers, all idle: the
  // previous round's spare has retired and the killed worker's slot is free. On a busy
  // machine that can take a while, and a window measured meanwhile would count a
  // transient, not the stuck check.
  void WaitSettled() {
    const GraderProcessPool* processes = service_->scorer().grader_processes();
    const Clock::time_point give_up = Clock::now() + std::chrono::seconds(10);
    while (Clock::now() < give_up) {
      const GraderProcessPool::Stats st = processes->stats();
      if (st.live == st.processes && st.busy == 0) return;
      std::this_thread::sleep_for(milliseconds(5));
    }
  }

  // Starts one stuck check on its own stream (it holds a worker for the whole budget),
  // waits until its spare worker is up, counts the normal answers graded in `window`,
  // then waits for the stuck check to come back. Returns the count, or -1 on a failure.
  int64_t NormalAnswersWithStuckCheck(milliseconds window, milliseconds budget,
                                      int64_t spares_before) {
    const GraderProcessPool* processes = service_->scorer().grader_processes();
    WaitSettled();
    v1::GroupAck slow_ack;
    bool slow_ok = false;
    std::thread slow([&] {
      auto stub = v1::Verifier::NewStub(channel_);
      grpc::ClientContext context;
      AddBearer(&context, kToken);
      auto stream = stub->ScoreGroups(&context);
      slow_ok = stream->Write(MathGroup(
                    "lease-slow", {std::string("\\boxed{1} ") + kGraderTestHangMarker}, "1")) &&
                stream->Read(&slow_ack);
      stream->WritesDone();
      slow_ok = stream->Finish().ok() && slow_ok;
    });
    // A spare worker takes its place for the other checks (counted once it said hello).
    const Clock::time_point give_up = Clock::now() + std::chrono::seconds(2);
    while (processes->stats().spares_started <= spares_before && Clock::now() < give_up) {
      std::this_thread::sleep_for(milliseconds(2));
    }
    const GraderProcessPool::Stats before = processes->stats();
    const Clock::time_point window_start = Clock::now();
    const int64_t n = NormalAnswersIn(window);
    const bool within_budget = Clock::now() - window_start < budget;
    slow.join();
    EXPECT_EQ(before.spares_started, spares_before + 1) << "no spare worker";
    EXPECT_EQ(before.busy, 1);  // the stuck check, nothing else, held a worker
    EXPECT_TRUE(within_budget) << "the window outlasted the stuck check";
    EXPECT_TRUE(slow_ok);
    EXPECT_EQ(slow_ack.status(), v1::ACK_ACCEPTED);
    if (testing::Test::HasFailure()) return -1;
    return n;
  }

  MetricsRegistry metrics_{"verifier"};
  CountingLearner learner_;
  std::unique_ptr<grpc::Server> learner_server_;
  std::unique_ptr<VerifierService> service_;
  std::unique_ptr<grpc::Server> verifier_server_;
  std::shared_ptr<grpc::Channel> channel_;
};

// The measure: normal answers graded per window, with and without a stuck check
// holding one worker. Counts, not the time of one call: each window holds thousands of
// checks. This machine is shared (two cores, other builds and tests), so windows come
// in adjacent pairs, in alternating order, and the median of the pairs' ratios is
// asserted (one-sided: a stall shows as a drop): a burst of outside load that hits one
// window moves one ratio, not the median. Before the grader processes, a check stuck in GiNaC held
// the process-wide lock, and the count of symbolic checks fell to zero until it returned.
TEST_F(IsolationTest, StuckCheckStallsNoOtherGrading) {
  constexpr int kProcesses = 2;  // the smallest default (verifier.grader_processes = 0)
  constexpr milliseconds kBudget{1000};
  constexpr milliseconds kWindow{350};
  constexpr int kRounds = 11;
  Start(kProcesses, kBudget);
  const GraderProcessPool* processes = service_->scorer().grader_processes();
  ASSERT_NE(processes, nullptr);

  NormalAnswersIn(milliseconds(800));  // warm-up: connections, workers' first checks
  int64_t without = 0, with = 0;
  std::vector<double> ratios;
  for (int round = 0; round < kRounds; ++round) {
    int64_t a = 0, b = 0;
    if (round % 2 == 0) {
      WaitSettled();
      a = NormalAnswersIn(kWindow);
      b = NormalAnswersWithStuckCheck(kWindow, kBudget, round);
    } else {
      b = NormalAnswersWithStuckCheck(kWindow, kBudget, round);
      WaitSettled();
      a = NormalAnswersIn(kWindow);
    }
    ASSERT_GT(b, -1) << "round " << round;
    ASSERT_GT(a, 0) << "round " << round;
    without += a;
    with += b;
    ratios.push_back(static_cast<double>(b) / static_cast<double>(a));
    // Each round's stuck check is killed; on a saturated machine a normal check can
    // outrun the 1 s budget too (seen once under a parallel `make test`), so at least.
    EXPECT_GE(processes->stats().killed_overrun, round + 1);
    EXPECT_EQ(processes->stats().live, kProcesses);  // the stuck one's slot retired
  }
  std::vector<double> sorted = ratios;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[sorted.size() / 2];
  std::string each;
  for (double r : ratios) each += " " + std::to_string(static_cast<int>(100 * r + 0.5)) + "%";
  std::printf(
      "normal answers graded in %d pairs of %lld ms windows: %lld without, %lld with a stuck "
      "check (%.1f%%); per pair:%s; median %.1f%%\n",
      kRounds, static_cast<long long>(kWindow.count()), static_cast<long long>(without),
      static_cast<long long>(with),
      100.0 * static_cast<double>(with) / static_cast<double>(without), each.c_str(), 100 * median);
  EXPECT_GT(without, 100 * kRounds);  // enough checks that the comparison means something
  EXPECT_GE(median, 0.8);

  // Every normal answer was graded correct, none timed out; the stuck ones came back
  // OUTCOME_TIMEOUT, and each cost its worker, which was killed.
  EXPECT_EQ(learner_.Outcomes(v1::OUTCOME_TIMEOUT), kRounds);
  EXPECT_EQ(learner_.Outcomes(v1::OUTCOME_PARSE_ERROR), 0);
  EXPECT_EQ(learner_.Outcomes(v1::OUTCOME_INCORRECT), 0);
  EXPECT_GE(learner_.Outcomes(v1::OUTCOME_CORRECT), without + with);
  const std::string text = metrics_.Serialize();
  EXPECT_EQ(MetricValue(text, "pmdrl_verifier_completions_total{outcome=\"timeout\"}"), kRounds);
  EXPECT_EQ(MetricValue(text, "pmdrl_verifier_grader_workers_replaced_total{reason=\"timeout\"}"),
            kRounds);
  // The first workers, then one spare per stuck check; the killed ones' slots retired.
  EXPECT_EQ(processes->stats().started, kProcesses + kRounds);
  EXPECT_EQ(processes->stats().spares_started, kRounds);
  EXPECT_EQ(processes->stats().busy, 0);
}

// Without grader processes a math group is rejected (never graded on a thread, where
// GiNaC is not safe); arith needs none.
TEST(GroupScorerIsolation, MathWithoutGraderProcessesIsRejected) {
  MetricsRegistry metrics("verifier");
  ScorerOptions o;
  GroupScorer scorer(o, &metrics);
  EXPECT_TRUE(scorer.init_status().ok());
  EXPECT_EQ(scorer.grader_processes(), nullptr);
  v1::Group g = MathGroup("l1", {"\\boxed{1}"}, "1");
  absl::Status s = scorer.Score(&g);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  v1::Group arith = MathGroup("l2", {"7"}, "7");
  arith.set_task("arith");
  ASSERT_TRUE(scorer.Score(&arith).ok());
  EXPECT_EQ(arith.completions(0).outcome(), v1::OUTCOME_CORRECT);
}

}  // namespace
}  // namespace pmdrl
