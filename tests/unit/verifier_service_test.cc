#include "verifier/verifier_service.h"

#include <grpcpp/client_context.h>
#include <grpcpp/server.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <limits>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/auth.h"
#include "common/rpc.h"

namespace pmdrl {
namespace {

constexpr char kToken[] = "test-token-123";
constexpr int kEos = 16;

// Character ids of the arith task's tokenizer as far as these tests need them.
std::vector<int> Encode(const std::string& text) {
  std::vector<int> ids;
  for (char ch : text) {
    if (ch >= '0' && ch <= '9') {
      ids.push_back(ch - '0');
    } else if (ch == '+') {
      ids.push_back(10);
    } else if (ch == '=') {
      ids.push_back(11);
    } else {
      ids.push_back(12);
    }
  }
  return ids;
}

v1::Group MakeGroup(const std::string& lease, uint64_t index,
                    const std::vector<std::string>& texts) {
  v1::Group g;
  g.set_lease_id(lease);
  g.set_epoch(0);
  g.set_index(index);
  g.set_actor_id("actor-test");
  g.set_policy_version(3);
  for (int id : Encode("012+345=")) g.add_prompt_tokens(id);
  g.set_prompt_text("012+345=");
  g.set_reference("357");
  g.set_task("arith");
  g.set_generate_seconds(0.01);
  for (const std::string& text : texts) {
    v1::Completion* c = g.add_completions();
    for (int id : Encode(text)) {
      c->add_tokens(id);
      c->add_logprobs(-0.25f);
    }
    c->add_tokens(kEos);
    c->add_logprobs(-0.1f);
    c->set_stopped(true);
    c->set_text(text);
  }
  return g;
}

// The value of one series (`name{labels}` exactly as serialised), NaN if absent.
double MetricValue(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return std::nan("");
}

double Outcomes(const MetricsRegistry& m, const std::string& outcome) {
  return MetricValue(m.Serialize(),
                     "pmdrl_verifier_completions_total{outcome=\"" + outcome + "\"}");
}

// ------------------------------------------------------------------ GroupScorer

ScorerOptions TestScorerOptions() {
  ScorerOptions o;
  o.verifier_id = "verifier-test";
  o.timeout = std::chrono::milliseconds(2000);
  o.reward_correct = 1.0f;
  o.reward_incorrect = -0.5f;
  o.threads = 2;
  return o;
}

TEST(GroupScorer, ScoresEachCompletion) {
  MetricsRegistry metrics("verifier");
  GroupScorer scorer(TestScorerOptions(), &metrics);
  v1::Group g = MakeGroup("l1", 0, {"357", "358", "abc", "357"});
  ASSERT_TRUE(scorer.Score(&g).ok());
  const v1::Outcome want[] = {v1::OUTCOME_CORRECT, v1::OUTCOME_INCORRECT, v1::OUTCOME_PARSE_ERROR,
                              v1::OUTCOME_CORRECT};
  const float rewards[] = {1.0f, -0.5f, -0.5f, 1.0f};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(g.completions(i).outcome(), want[i]) << i;
    EXPECT_FLOAT_EQ(g.completions(i).reward(), rewards[i]) << i;
  }
  EXPECT_EQ(g.verifier_id(), "verifier-test");
  EXPECT_GE(g.verify_seconds(), 0.0);
  EXPECT_EQ(Outcomes(metrics, "correct"), 2);
  EXPECT_EQ(Outcomes(metrics, "incorrect"), 1);
  EXPECT_EQ(Outcomes(metrics, "parse_error"), 1);
  EXPECT_EQ(Outcomes(metrics, "timeout"), 0);
  EXPECT_EQ(MetricValue(metrics.Serialize(), "pmdrl_verifier_score_seconds_count"), 1);
}

TEST(GroupScorer, EmptyTaskUsesDefaultAndUnknownTaskIsRejected) {
  MetricsRegistry metrics("verifier");
  GroupScorer scorer(TestScorerOptions(), &metrics);
  v1::Group g = MakeGroup("l1", 0, {"357"});
  g.clear_task();
  ASSERT_TRUE(scorer.Score(&g).ok());
  EXPECT_EQ(g.completions(0).outcome(), v1::OUTCOME_CORRECT);

  v1::Group bad = MakeGroup("l2", 1, {"357"});
  bad.set_task("chess");
  absl::Status s = scorer.Score(&bad);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("chess"), absl::string_view::npos) << s;
  EXPECT_EQ(bad.completions(0).outcome(), v1::OUTCOME_UNSCORED);
  EXPECT_EQ(Outcomes(metrics, "correct"), 1);
}

// A gate the test opens at the end; shared with the grader so a written-off thread
// can still use it after the test body has moved on.
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
  void Open() {
    std::lock_guard<std::mutex> lock(mu);
    open = true;
    cv.notify_all();
  }
  void Wait() {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [this] { return open; });
  }
};

TEST(GroupScorer, GraderIgnoringItsDeadlineScoresAsTimeoutAndIsReplaced) {
  auto gate = std::make_shared<Gate>();
  ScorerOptions o = TestScorerOptions();
  o.timeout = std::chrono::milliseconds(200);
  o.threads = 1;  // the hanging check takes the only worker: its replacement must run the rest
  o.grader_for_task = [gate](std::string_view) -> absl::StatusOr<Grader> {
    return Grader(
        [gate](std::string_view response, std::string_view reference, const Deadline& deadline) {
          if (response == "hang") gate->Wait();  // ignores the deadline
          return GradeArith(response, reference, deadline);
        });
  };
  MetricsRegistry metrics("verifier");
  {
    GroupScorer scorer(o, &metrics);
    v1::Group g = MakeGroup("l1", 0, {"hang", "357"});
    ASSERT_TRUE(scorer.Score(&g).ok());
    EXPECT_EQ(g.completions(0).outcome(), v1::OUTCOME_TIMEOUT);
    EXPECT_FLOAT_EQ(g.completions(0).reward(), -0.5f);
    EXPECT_EQ(g.completions(1).outcome(), v1::OUTCOME_CORRECT);
    const std::string text = metrics.Serialize();
    EXPECT_EQ(MetricValue(text, "pmdrl_verifier_completions_total{outcome=\"timeout\"}"), 1);
    EXPECT_EQ(MetricValue(text, "pmdrl_verifier_grader_overruns_total"), 1);
    EXPECT_EQ(MetricValue(text, "pmdrl_verifier_grader_threads_stuck"), 1);
    gate->Open();  // let the written-off thread finish before the scorer goes away
  }
}

// ------------------------------------------------------------------ service

// Records every group and acks it ACCEPTED (learner_version 7). The first
// `fail_streams` streams end with UNAVAILABLE right after reading a group, unacked.
class FakeLearner final : public v1::Learner::Service {
 public:
  grpc::Status SubmitGroups(grpc::ServerContext* context,
                            grpc::ServerReaderWriter<v1::GroupAck, v1::Group>* stream) override {
    if (grpc::Status auth = CheckBearer(*context, kToken); !auth.ok()) return auth;
    v1::Group group;
    while (stream->Read(&group)) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        groups_.push_back(group);
        if (fail_streams_ > 0) {
          --fail_streams_;
          return grpc::Status(grpc::StatusCode::UNAVAILABLE, "injected failure");
        }
      }
      v1::GroupAck ack;
      ack.set_lease_id(group.lease_id());
      ack.set_status(v1::ACK_ACCEPTED);
      ack.set_learner_version(7);
      if (!stream->Write(ack)) break;
    }
    return grpc::Status::OK;
  }

  std::vector<v1::Group> groups() {
    std::lock_guard<std::mutex> lock(mu_);
    return groups_;
  }
  void FailStreams(int n) {
    std::lock_guard<std::mutex> lock(mu_);
    fail_streams_ = n;
  }

 private:
  std::mutex mu_;
  std::vector<v1::Group> groups_;
  int fail_streams_ = 0;
};

class VerifierServiceTest : public testing::Test {
 protected:
  // Starts the fake learner (unless `learner_target` is given) and the verifier.
  void Start(std::string learner_target = "") {
    if (learner_target.empty()) {
      int port = 0;
      auto server = StartServer("127.0.0.1:0", {&learner_}, &port);
      ASSERT_TRUE(server.ok()) << server.status();
      learner_server_ = *std::move(server);
      learner_target = "127.0.0.1:" + std::to_string(port);
    }
    VerifierOptions options;
    options.scorer = scorer_options_;
    options.learner = learner_target;
    options.token = kToken;
    service_ = std::make_unique<VerifierService>(options, &metrics_);
    int port = 0;
    auto server = StartServer("127.0.0.1:0", {service_.get()}, &port);
    ASSERT_TRUE(server.ok()) << server.status();
    verifier_server_ = *std::move(server);
    stub_ = v1::Verifier::NewStub(MakeChannel("127.0.0.1:" + std::to_string(port)));
  }

  void TearDown() override {
    if (verifier_server_) verifier_server_->Shutdown();
    if (learner_server_) learner_server_->Shutdown();
  }

  // Sends `groups` on one authenticated stream; returns one ack per group.
  std::vector<v1::GroupAck> Exchange(const std::vector<v1::Group>& groups) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    AddBearer(&context, kToken);
    auto stream = stub_->ScoreGroups(&context);
    std::vector<v1::GroupAck> acks;
    for (const v1::Group& g : groups) {
      EXPECT_TRUE(stream->Write(g));
      v1::GroupAck ack;
      if (!stream->Read(&ack)) break;
      acks.push_back(ack);
      // While the stream is open it counts as active.
      EXPECT_EQ(Metric("pmdrl_verifier_streams_active"), 1);
    }
    stream->WritesDone();
    grpc::Status status = stream->Finish();
    EXPECT_TRUE(status.ok()) << status.error_message();
    return acks;
  }

  double Metric(const std::string& series) { return MetricValue(metrics_.Serialize(), series); }

  ScorerOptions scorer_options_ = TestScorerOptions();  // Start uses these
  MetricsRegistry metrics_{"verifier"};
  FakeLearner learner_;
  std::unique_ptr<grpc::Server> learner_server_;
  std::unique_ptr<VerifierService> service_;
  std::unique_ptr<grpc::Server> verifier_server_;
  std::unique_ptr<v1::Verifier::Stub> stub_;
};

TEST_F(VerifierServiceTest, ScoresAndForwardsToLearner) {
  Start();
  std::vector<v1::GroupAck> acks =
      Exchange({MakeGroup("lease-a", 0, {"357", "357"}), MakeGroup("lease-b", 1, {"358", "abc"})});
  ASSERT_EQ(acks.size(), 2u);
  EXPECT_EQ(acks[0].lease_id(), "lease-a");
  EXPECT_EQ(acks[1].lease_id(), "lease-b");
  for (const v1::GroupAck& ack : acks) {
    EXPECT_EQ(ack.status(), v1::ACK_ACCEPTED);
    EXPECT_EQ(ack.learner_version(), 7u);  // the learner's own ack came back
  }

  std::vector<v1::Group> got = learner_.groups();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].lease_id(), "lease-a");
  EXPECT_EQ(got[0].verifier_id(), "verifier-test");
  for (const v1::Completion& c : got[0].completions()) {
    EXPECT_EQ(c.outcome(), v1::OUTCOME_CORRECT);
    EXPECT_FLOAT_EQ(c.reward(), 1.0f);
  }
  EXPECT_EQ(got[1].completions(0).outcome(), v1::OUTCOME_INCORRECT);
  EXPECT_EQ(got[1].completions(1).outcome(), v1::OUTCOME_PARSE_ERROR);
  EXPECT_FLOAT_EQ(got[1].completions(0).reward(), -0.5f);
  EXPECT_FLOAT_EQ(got[1].completions(1).reward(), -0.5f);
  // Everything else travels unchanged.
  EXPECT_EQ(got[1].completions(0).tokens_size(), 4);
  EXPECT_EQ(got[1].policy_version(), 3u);

  EXPECT_EQ(Outcomes(metrics_, "correct"), 2);
  EXPECT_EQ(Outcomes(metrics_, "incorrect"), 1);
  EXPECT_EQ(Outcomes(metrics_, "parse_error"), 1);
  EXPECT_EQ(Metric("pmdrl_verifier_groups_forwarded_total"), 2);
  EXPECT_EQ(Metric("pmdrl_verifier_groups_failed_total"), 0);
  EXPECT_EQ(Metric("pmdrl_verifier_score_seconds_count"), 2);
  EXPECT_EQ(Metric("pmdrl_verifier_streams_active"), 0);
}

TEST_F(VerifierServiceTest, MissingOrWrongTokenIsUnauthenticated) {
  Start();
  for (const char* token : {"", "wrong-token"}) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    if (*token != '\0') AddBearer(&context, token);
    auto stream = stub_->ScoreGroups(&context);
    stream->Write(MakeGroup("lease-a", 0, {"357"}));  // may fail: the call is over
    v1::GroupAck ack;
    EXPECT_FALSE(stream->Read(&ack));
    grpc::Status status = stream->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << token;
  }
  EXPECT_TRUE(learner_.groups().empty());
  EXPECT_EQ(Metric("pmdrl_verifier_rejected_total{reason=\"unauthenticated\"}"), 2);
  EXPECT_EQ(Outcomes(metrics_, "correct"), 0);
}

TEST_F(VerifierServiceTest, InvalidGroupsAreRejectedAndNotForwarded) {
  Start();
  v1::Group nan_logprob = MakeGroup("lease-nan", 0, {"357"});
  nan_logprob.mutable_completions(0)->set_logprobs(0, std::numeric_limits<float>::quiet_NaN());
  v1::Group empty_response = MakeGroup("lease-empty", 1, {"357", "357"});
  empty_response.mutable_completions(1)->clear_tokens();
  empty_response.mutable_completions(1)->clear_logprobs();
  empty_response.mutable_completions(1)->clear_text();
  v1::Group no_completions = MakeGroup("lease-none", 2, {});
  v1::Group unknown_task = MakeGroup("lease-chess", 3, {"357"});
  unknown_task.set_task("chess");
  v1::Group good = MakeGroup("lease-good", 4, {"357"});

  std::vector<v1::GroupAck> acks =
      Exchange({nan_logprob, empty_response, no_completions, unknown_task, good});
  ASSERT_EQ(acks.size(), 5u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(acks[i].status(), v1::ACK_REJECTED) << i;
    EXPECT_FALSE(acks[i].message().empty()) << i;
  }
  EXPECT_EQ(acks[0].lease_id(), "lease-nan");
  EXPECT_EQ(acks[4].status(), v1::ACK_ACCEPTED);  // the stream goes on after rejections

  std::vector<v1::Group> got = learner_.groups();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].lease_id(), "lease-good");
  EXPECT_EQ(Metric("pmdrl_verifier_rejected_total{reason=\"invalid\"}"), 4);
  EXPECT_EQ(Metric("pmdrl_verifier_groups_forwarded_total"), 1);
  EXPECT_EQ(Outcomes(metrics_, "correct"), 1);  // rejected groups are not scored
}

TEST_F(VerifierServiceTest, LearnerStreamBreakIsRetriedOnce) {
  Start();
  learner_.FailStreams(1);
  std::vector<v1::GroupAck> acks = Exchange({MakeGroup("lease-a", 0, {"357"})});
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].status(), v1::ACK_ACCEPTED);
  EXPECT_EQ(learner_.groups().size(), 2u);  // sent twice; the learner de-duplicates
  EXPECT_EQ(Metric("pmdrl_verifier_groups_forwarded_total"), 1);
  EXPECT_EQ(Metric("pmdrl_verifier_groups_failed_total"), 0);
}

TEST_F(VerifierServiceTest, UnreachableLearnerGivesUnknownAck) {
  // A bound but not listening socket: connections to it are refused, and no other
  // process can take the port while the test runs.
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  Start("127.0.0.1:" + std::to_string(ntohs(addr.sin_port)));

  std::vector<v1::GroupAck> acks =
      Exchange({MakeGroup("lease-a", 0, {"357"}), MakeGroup("lease-b", 1, {"1"})});
  close(fd);
  ASSERT_EQ(acks.size(), 2u);
  for (const v1::GroupAck& ack : acks) {
    EXPECT_EQ(ack.status(), v1::ACK_UNKNOWN);
    EXPECT_NE(ack.message().find("unreachable"), std::string::npos) << ack.message();
  }
  EXPECT_EQ(acks[1].lease_id(), "lease-b");
  EXPECT_EQ(Metric("pmdrl_verifier_groups_failed_total"), 2);
  EXPECT_EQ(Metric("pmdrl_verifier_groups_forwarded_total"), 0);
  EXPECT_EQ(Outcomes(metrics_, "correct"), 1);  // scored, just not delivered
}

// Groups of one stream are graded concurrently: the first group's check waits until the
// second's has run (a latch, bounded so that a verifier grading one group at a time fails
// instead of hanging), yet the acks and the learner see them in arrival order.
TEST_F(VerifierServiceTest, GroupsOfAStreamAreGradedConcurrentlyAndAckedInOrder) {
  auto second_graded = std::make_shared<Gate>();
  auto first_saw_second = std::make_shared<std::atomic<bool>>(false);
  scorer_options_.timeout = std::chrono::milliseconds(120000);  // never the limit here
  scorer_options_.grader_for_task = [second_graded,
                                     first_saw_second](std::string_view) -> absl::StatusOr<Grader> {
    return Grader([second_graded, first_saw_second](std::string_view response,
                                                    std::string_view reference,
                                                    const Deadline& deadline) {
      if (response == "wait") {
        std::unique_lock<std::mutex> lock(second_graded->mu);
        first_saw_second->store(second_graded->cv.wait_for(lock, std::chrono::seconds(30),
                                                           [&] { return second_graded->open; }));
        return GradeArith("357", reference, deadline);
      }
      GradeResult result = GradeArith(response, reference, deadline);
      second_graded->Open();
      return result;
    });
  };
  Start();

  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  AddBearer(&context, kToken);
  auto stream = stub_->ScoreGroups(&context);
  // Both written before any ack is read: the stream holds several groups in flight.
  ASSERT_TRUE(stream->Write(MakeGroup("lease-slow", 0, {"wait"})));
  ASSERT_TRUE(stream->Write(MakeGroup("lease-fast", 1, {"358"})));
  stream->WritesDone();
  std::vector<v1::GroupAck> acks;
  v1::GroupAck ack;
  while (stream->Read(&ack)) acks.push_back(ack);
  grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();

  EXPECT_TRUE(first_saw_second->load()) << "the second group was not graded while the first was";
  ASSERT_EQ(acks.size(), 2u);
  EXPECT_EQ(acks[0].lease_id(), "lease-slow");
  EXPECT_EQ(acks[1].lease_id(), "lease-fast");
  for (const v1::GroupAck& a : acks) EXPECT_EQ(a.status(), v1::ACK_ACCEPTED);
  std::vector<v1::Group> got = learner_.groups();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].lease_id(), "lease-slow");  // forwarded in arrival order
  EXPECT_EQ(got[1].lease_id(), "lease-fast");
  EXPECT_EQ(got[0].completions(0).outcome(), v1::OUTCOME_CORRECT);
  EXPECT_EQ(got[1].completions(0).outcome(), v1::OUTCOME_INCORRECT);
}

// More groups than the stream's queue holds, all written before any ack is read: every
// one is answered, in order (the reader pauses while the queue is full, and resumes).
TEST_F(VerifierServiceTest, ManyGroupsInFlightAreAllAckedInOrder) {
  Start();
  const int n = static_cast<int>(VerifierService::kStreamQueue) * 2 + 3;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  AddBearer(&context, kToken);
  auto stream = stub_->ScoreGroups(&context);
  std::thread writer([&] {
    for (int i = 0; i < n; ++i) {
      if (!stream->Write(MakeGroup("lease-" + std::to_string(i), i, {"357"}))) break;
    }
    stream->WritesDone();
  });
  std::vector<v1::GroupAck> acks;
  v1::GroupAck ack;
  while (stream->Read(&ack)) acks.push_back(ack);
  writer.join();
  grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(acks.size(), static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(acks[i].lease_id(), "lease-" + std::to_string(i));
    EXPECT_EQ(acks[i].status(), v1::ACK_ACCEPTED);
  }
  std::vector<v1::Group> got = learner_.groups();
  ASSERT_EQ(got.size(), static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) EXPECT_EQ(got[i].lease_id(), "lease-" + std::to_string(i));
  EXPECT_EQ(Metric("pmdrl_verifier_groups_forwarded_total"), n);
}

}  // namespace
}  // namespace pmdrl
