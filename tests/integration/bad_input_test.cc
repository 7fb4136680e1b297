// Bad input against the real binaries: configs with unknown keys or bad values, and
// hostile RPCs (wrong token, out-of-range token ids, non-finite log-probs, unknown
// leases) that must be rejected with the right status, counted, and never crash.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <cmath>

#include "common/auth.h"
#include "common/rpc.h"
#include "pmdrl/pmdrl.grpc.pb.h"
#include "tests/free_port.h"
#include "tests/integration/cluster_util.h"

namespace pmdrl {
namespace {

using namespace testing_util;
using std::chrono::seconds;

TEST(BadConfig, UnknownKeyAndBadValueNameTheKey) {
  fs::path dir = FreshDir("badcfg");
  std::ofstream(dir / "unknown.yaml") << "learner:\n  tua: 1.0\n";
  std::ofstream(dir / "badvalue.yaml") << "learner:\n  tau: -3\n";
  std::map<std::string, std::string> env = {{"PMDRL_TOKEN", "t0ken"}};
  for (const char* bin :
       {"learner/pmdrl-learner", "actor/pmdrl-actor", "verifier/pmdrl-verifier", "cli/pmdrl"}) {
    std::vector<std::string> base = {Bin(bin)};
    if (std::string(bin) == "cli/pmdrl") base.push_back("local");
    auto args = base;
    args.insert(args.end(), {"--config", (dir / "unknown.yaml").string()});
    auto [rc, out] = RunCommand(args, env);
    EXPECT_NE(rc, 0) << bin;
    EXPECT_NE(out.find("learner.tua"), std::string::npos) << bin << ": " << out;
    args = base;
    args.insert(args.end(), {"--config", (dir / "badvalue.yaml").string()});
    std::tie(rc, out) = RunCommand(args, env);
    EXPECT_NE(rc, 0) << bin;
    EXPECT_NE(out.find("learner.tau"), std::string::npos) << bin << ": " << out;
    args = base;
    args.insert(args.end(), {"--actor.top_p=7"});
    std::tie(rc, out) = RunCommand(args, env);
    EXPECT_NE(rc, 0) << bin;
    EXPECT_NE(out.find("actor.top_p"), std::string::npos) << bin << ": " << out;
  }
}

class HostileRpc : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = FreshDir("hostile");
    port_ = FreePort();
    metrics_port_ = FreePort();
    std::ofstream(dir_ / "config.yaml") << TestConfig(dir_ / "run");
    learner_ = std::make_unique<Child>(
        std::vector<std::string>{Bin("learner/pmdrl-learner"), "--config",
                                 (dir_ / "config.yaml").string(),
                                 "--learner.listen=127.0.0.1:" + std::to_string(port_),
                                 "--learner.metrics_port=" + std::to_string(metrics_port_)},
        (dir_ / "learner.log").string(),
        std::map<std::string, std::string>{{"PMDRL_TOKEN", kToken}});
    channel_ = MakeChannel("127.0.0.1:" + std::to_string(port_));
    coordinator_ = v1::Coordinator::NewStub(channel_);
    learner_stub_ = v1::Learner::NewStub(channel_);
    ASSERT_TRUE(WaitFor(
        [&] {
          grpc::ClientContext ctx;
          AddBearer(&ctx, kToken);
          v1::StatusResponse s;
          return coordinator_->GetStatus(&ctx, v1::GetStatusRequest(), &s).ok();
        },
        seconds(60)))
        << ReadAll(dir_ / "learner.log");
  }

  std::string Metrics() {
    httplib::Client c("127.0.0.1", metrics_port_);
    auto r = c.Get("/metrics");
    return r ? r->body : "";
  }

  // Registers, leases one prompt and returns a well-formed scored group for it.
  v1::Group GoodGroup() {
    grpc::ClientContext ctx;
    AddBearer(&ctx, kToken);
    v1::RegisterActorRequest req;
    req.set_name("test");
    v1::RegisterActorResponse reg;
    EXPECT_TRUE(coordinator_->RegisterActor(&ctx, req, &reg).ok());
    grpc::ClientContext ctx2;
    AddBearer(&ctx2, kToken);
    v1::LeasePromptsRequest lreq;
    lreq.set_actor_id(reg.actor_id());
    lreq.set_max_prompts(1);
    v1::LeasePromptsResponse leases;
    EXPECT_TRUE(coordinator_->LeasePrompts(&ctx2, lreq, &leases).ok());
    EXPECT_EQ(leases.leases_size(), 1);
    const v1::Lease& l = leases.leases(0);
    v1::Group g;
    g.set_lease_id(l.lease_id());
    g.set_epoch(l.epoch());
    g.set_index(l.index());
    g.set_actor_id(reg.actor_id());
    g.set_policy_version(0);
    *g.mutable_prompt_tokens() = l.prompt_tokens();
    g.set_prompt_text(l.prompt_text());
    g.set_reference(l.reference());
    g.set_task("arith");
    for (uint32_t i = 0; i < reg.group_size(); ++i) {
      v1::Completion* c = g.add_completions();
      c->add_tokens(5);
      c->add_tokens(2);
      c->add_logprobs(-1.5f);
      c->add_logprobs(-0.5f);
      c->set_stopped(true);
      c->set_text("2");
      c->set_reward(i % 2 ? 1.f : -1.f);
      c->set_outcome(i % 2 ? v1::OUTCOME_CORRECT : v1::OUTCOME_INCORRECT);
    }
    return g;
  }

  grpc::Status Submit(const v1::Group& g, bool with_token, v1::GroupAck* ack) {
    grpc::ClientContext ctx;
    if (with_token) AddBearer(&ctx, kToken);
    auto stream = learner_stub_->SubmitGroups(&ctx);
    stream->Write(g);
    stream->WritesDone();
    stream->Read(ack);
    return stream->Finish();
  }

  static constexpr const char* kToken = "integration-test-token";
  fs::path dir_;
  int port_ = 0, metrics_port_ = 0;
  std::unique_ptr<Child> learner_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Coordinator::Stub> coordinator_;
  std::unique_ptr<v1::Learner::Stub> learner_stub_;
};

TEST_F(HostileRpc, RejectedAndCountedNeverCrashes) {
  // No token / wrong token: UNAUTHENTICATED on every state-changing RPC.
  {
    grpc::ClientContext ctx;
    v1::RegisterActorResponse r;
    EXPECT_EQ(coordinator_->RegisterActor(&ctx, v1::RegisterActorRequest(), &r).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
    grpc::ClientContext ctx2;
    AddBearer(&ctx2, "wrong");
    v1::LeasePromptsResponse lr;
    EXPECT_EQ(coordinator_->LeasePrompts(&ctx2, v1::LeasePromptsRequest(), &lr).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  v1::GroupAck ack;
  v1::Group good = GoodGroup();
  EXPECT_EQ(Submit(good, false, &ack).error_code(), grpc::StatusCode::UNAUTHENTICATED);

  v1::Group bad_token = good;
  bad_token.mutable_completions(0)->set_tokens(0, 10000);
  grpc::Status s = Submit(bad_token, true, &ack);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("tokens"), std::string::npos) << s.error_message();

  v1::Group nan_logprob = good;
  nan_logprob.mutable_completions(1)->set_logprobs(0, std::nanf(""));
  s = Submit(nan_logprob, true, &ack);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("logprobs"), std::string::npos) << s.error_message();

  v1::Group inf_reward = good;
  inf_reward.mutable_completions(1)->set_reward(INFINITY);
  EXPECT_EQ(Submit(inf_reward, true, &ack).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  v1::Group unknown_lease = good;
  unknown_lease.set_lease_id("L999999-deadbeef");
  s = Submit(unknown_lease, true, &ack);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("unknown lease"), std::string::npos) << s.error_message();

  v1::Group wrong_place = good;
  wrong_place.set_index(good.index() + 1000);
  EXPECT_EQ(Submit(wrong_place, true, &ack).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // Heartbeat and LeasePrompts for an actor nobody registered.
  {
    grpc::ClientContext ctx;
    AddBearer(&ctx, kToken);
    v1::HeartbeatRequest hb;
    hb.set_actor_id("nobody");
    v1::HeartbeatResponse r;
    EXPECT_EQ(coordinator_->Heartbeat(&ctx, hb, &r).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    AddBearer(&ctx, kToken);
    v1::LeasePromptsRequest lr;
    lr.set_actor_id("nobody");
    v1::LeasePromptsResponse r;
    const grpc::Status s = coordinator_->LeasePrompts(&ctx, lr, &r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_NE(s.error_message().find("unknown actor_id 'nobody'"), std::string::npos)
        << s.error_message();
  }

  // The well-formed group is still accepted afterwards, and again only once.
  ASSERT_TRUE(Submit(good, true, &ack).ok());
  EXPECT_EQ(ack.status(), v1::ACK_ACCEPTED) << ack.message();
  ASSERT_TRUE(Submit(good, true, &ack).ok());
  EXPECT_EQ(ack.status(), v1::ACK_DUPLICATE);

  std::string m = Metrics();
  EXPECT_EQ(MetricValue(m, "pmdrl_learner_groups_total", {{"outcome", "rejected"}}), 5) << m;
  EXPECT_GE(MetricValue(m, "pmdrl_learner_rejected_total", {{"reason", "unauthenticated"}}), 3);
  EXPECT_GE(MetricValue(m, "pmdrl_learner_rejected_total", {{"reason", "unknown_lease"}}), 1);
  EXPECT_EQ(MetricValue(m, "pmdrl_learner_groups_total", {{"outcome", "accepted"}}), 1);
  EXPECT_EQ(MetricValue(m, "pmdrl_learner_groups_total", {{"outcome", "duplicate"}}), 1);
  EXPECT_TRUE(learner_->running()) << ReadAll(dir_ / "learner.log");

  // Shuts down cleanly on SIGTERM.
  kill(learner_->pid(), SIGTERM);
  std::optional<int> rc = learner_->Wait(seconds(60));
  ASSERT_TRUE(rc.has_value());
  EXPECT_EQ(*rc, 0) << ReadAll(dir_ / "learner.log");
}

}  // namespace
}  // namespace pmdrl
