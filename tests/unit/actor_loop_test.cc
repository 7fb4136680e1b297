// The actor's whole loop against an in-process fake coordinator, weight feed and verifier:
// register, wait for weights, lease, sample, send, swap to a newer version between batches, and
// stop when the coordinator says the run is finished.
#include <ATen/ATen.h>
#include <grpcpp/server.h>
#include <grpcpp/server_context.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "actor/actor.h"
#include "common/auth.h"
#include "common/metrics.h"
#include "common/model_config.h"
#include "common/nn/model.h"
#include "common/rpc.h"
#include "common/tokenizer.h"
#include "common/weight_stream.h"
#include "engine/generation_engine.h"
#include "gtest/gtest.h"
#include "pmdrl/pmdrl.grpc.pb.h"

namespace pmdrl {
namespace {

using std::chrono::milliseconds;
constexpr char kToken[] = "loop-token";
constexpr uint32_t kGroupSize = 3;

ModelConfig TinyConfig() {
  ModelConfig c;
  c.architecture = "llama";
  c.vocab_size = CharTokenizer::kVocabSize;
  c.hidden_size = 16;
  c.intermediate_size = 32;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 64;
  c.bos_token_id = CharTokenizer::kBos;
  c.eos_token_id = CharTokenizer::kEos;
  c.pad_token_id = CharTokenizer::kPad;
  return c;
}

std::string ConfigJson(const ModelConfig& config) {
  const std::string path = ::testing::TempDir() + "/actor_loop_test_config.json";
  EXPECT_TRUE(WriteModelConfig(config, path).ok());
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  std::remove(path.c_str());
  return text.str();
}

// Every tensor of a freshly initialised model as one chunk each, as a typed message: the
// protobuf serialisation puts the header before the data, as the receiver requires.
std::vector<v1::WeightChunk> WeightChunks(const ModelConfig& config, uint64_t version) {
  at::manual_seed(static_cast<uint64_t>(version));
  CausalLM model(config);
  std::vector<v1::WeightChunk> out;
  auto weights = NamedWeights(model);
  for (size_t i = 0; i < weights.size(); ++i) {
    at::Tensor t = weights[i].second.detach().to(at::kFloat).contiguous();
    const size_t bytes = static_cast<size_t>(t.numel()) * 4;
    v1::WeightChunk c;
    v1::WeightChunkHeader* h = c.mutable_header();
    h->set_version(version);
    h->set_name(weights[i].first);
    for (int64_t d : t.sizes()) h->add_shape(d);
    h->set_payload_bytes(bytes);
    h->set_checksum(WeightChecksum(t.data_ptr<float>(), bytes));
    h->set_tensor_index(static_cast<uint32_t>(i));
    h->set_tensor_count(static_cast<uint32_t>(weights.size()));
    c.set_data(std::string(reinterpret_cast<const char*>(t.data_ptr<float>()), bytes));
    out.push_back(std::move(c));
  }
  return out;
}

v1::Lease MakeLease(uint64_t index, uint64_t version) {
  CharTokenizer tok;
  v1::Lease l;
  l.set_lease_id("L" + std::to_string(index));
  l.set_epoch(1);
  l.set_index(index);
  const std::string prompt = "00" + std::to_string(index) + "+001=";
  std::vector<int32_t> ids = {CharTokenizer::kBos};
  for (int32_t id : tok.Encode(prompt)) ids.push_back(id);
  l.mutable_prompt_tokens()->Add(ids.begin(), ids.end());
  l.set_prompt_text(prompt);
  l.set_reference(std::to_string(index + 1));
  l.set_deadline_unix_ms(
      std::chrono::duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count() +
      30000);
  l.set_issued_at_version(version);
  return l;
}

// Batch 1: leases 0,1 at version 1. Batch 2: leases 2,3 at version 2, whose weights are
// streamed only after that LeasePrompts call (the actor must wait for them). Then one
// empty answer (retry), then finished.
class FakeCoordinator final : public v1::Coordinator::Service {
 public:
  explicit FakeCoordinator(ModelConfig config) : config_(std::move(config)) {}

  grpc::Status RegisterActor(grpc::ServerContext* ctx, const v1::RegisterActorRequest* request,
                             v1::RegisterActorResponse* response) override {
    if (grpc::Status s = CheckBearer(*ctx, kToken); !s.ok()) return s;
    name_seen = request->name();
    response->set_actor_id("actor-id-1");
    response->set_group_size(kGroupSize);
    response->set_current_version(1);
    response->set_lease_ttl_ms(30000);
    response->set_model_config_json(ConfigJson(config_));
    response->set_tokenizer("char");
    response->set_task("arith");
    return grpc::Status::OK;
  }

  grpc::Status LeasePrompts(grpc::ServerContext* ctx, const v1::LeasePromptsRequest* request,
                            v1::LeasePromptsResponse* response) override {
    if (grpc::Status s = CheckBearer(*ctx, kToken); !s.ok()) return s;
    EXPECT_EQ(request->actor_id(), "actor-id-1");
    EXPECT_EQ(request->max_prompts(), 2u);
    const int call = lease_calls.fetch_add(1);
    if (call == 0) {
      response->set_current_version(1);
      *response->add_leases() = MakeLease(0, 1);
      *response->add_leases() = MakeLease(1, 1);
    } else if (call == 1) {
      response->set_current_version(2);
      *response->add_leases() = MakeLease(2, 2);
      *response->add_leases() = MakeLease(3, 2);
    } else if (call == 2) {
      response->set_current_version(2);
      response->set_retry_after_ms(10);
    } else {
      response->set_finished(true);
    }
    return grpc::Status::OK;
  }

  grpc::Status Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override {
    if (grpc::Status s = CheckBearer(*ctx, kToken); !s.ok()) return s;
    EXPECT_EQ(request->actor_id(), "actor-id-1");
    response->set_current_version(2);
    return grpc::Status::OK;
  }

  std::atomic<int> lease_calls{0};
  std::string name_seen;

 private:
  const ModelConfig config_;
};

// Version 1 at once; version 2 once the actor has leased its second batch.
class FakeWeightFeed final : public v1::WeightFeed::Service {
 public:
  FakeWeightFeed(ModelConfig config, const std::atomic<int>* lease_calls)
      : config_(std::move(config)), lease_calls_(lease_calls) {}

  grpc::Status WatchWeights(grpc::ServerContext* ctx, const v1::WatchWeightsRequest* request,
                            grpc::ServerWriter<v1::WeightChunk>* writer) override {
    if (grpc::Status s = CheckBearer(*ctx, kToken); !s.ok()) return s;
    EXPECT_EQ(request->actor_id(), "actor-id-1");
    if (request->have_version() < 1) {
      for (const auto& c : WeightChunks(config_, 1)) writer->Write(c);
    }
    while (lease_calls_->load() < 2) {
      if (ctx->IsCancelled()) return grpc::Status::CANCELLED;
      std::this_thread::sleep_for(milliseconds(5));
    }
    // Give the actor a chance to (wrongly) sample batch 2 with version 1.
    std::this_thread::sleep_for(milliseconds(50));
    for (const auto& c : WeightChunks(config_, 2)) writer->Write(c);
    while (!ctx->IsCancelled()) std::this_thread::sleep_for(milliseconds(5));
    return grpc::Status::CANCELLED;
  }

 private:
  const ModelConfig config_;
  const std::atomic<int>* lease_calls_;
};

class FakeVerifier final : public v1::Verifier::Service {
 public:
  grpc::Status ScoreGroups(grpc::ServerContext* ctx,
                           grpc::ServerReaderWriter<v1::GroupAck, v1::Group>* stream) override {
    if (grpc::Status s = CheckBearer(*ctx, kToken); !s.ok()) return s;
    v1::Group g;
    while (stream->Read(&g)) {
      {
        std::lock_guard<std::mutex> lock(mu);
        groups.push_back(g);
      }
      v1::GroupAck ack;
      ack.set_lease_id(g.lease_id());
      ack.set_status(g.index() == 3 ? v1::ACK_STALE : v1::ACK_ACCEPTED);
      if (!stream->Write(ack)) break;
    }
    return grpc::Status::OK;
  }
  std::mutex mu;
  std::vector<v1::Group> groups;
};

double MetricValue(const std::string& text, const std::string& line_prefix) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(line_prefix + " ", 0) == 0) return std::stod(line.substr(line_prefix.size()));
  }
  ADD_FAILURE() << "no metric line " << line_prefix << " in\n" << text;
  return -1;
}

ActorOptions LoopOptions(int cport, int vport) {
  ActorOptions options;
  options.config.name = "actor-7";
  options.config.coordinator = "127.0.0.1:" + std::to_string(cport);
  options.config.verifiers = {"127.0.0.1:" + std::to_string(vport)};
  options.config.prompts_per_batch = 2;
  options.config.max_new_tokens = 5;
  options.run_seed = 3;
  options.token = kToken;
  options.heartbeat_interval = milliseconds(20);
  return options;
}

// Serves `coordinator` and `feed` on one port and `verifier` on another, runs an actor
// with LoopOptions against them until it stops, and returns what its Run returned.
absl::Status RunActorAgainst(grpc::Service* coordinator, grpc::Service* feed,
                             FakeVerifier* verifier, MetricsRegistry* metrics) {
  int cport = 0, vport = 0;
  auto cserver = StartServer("127.0.0.1:0", {coordinator, feed}, &cport);
  if (!cserver.ok()) return cserver.status();
  auto vserver = StartServer("127.0.0.1:0", {verifier}, &vport);
  if (!vserver.ok()) return vserver.status();
  Actor actor(LoopOptions(cport, vport), metrics);
  const absl::Status status = actor.Run();
  (*cserver)->Shutdown();
  (*vserver)->Shutdown();
  return status;
}

TEST(ActorLoopTest, LeasesSamplesSendsAndSwapsBetweenBatches) {
  const ModelConfig config = TinyConfig();
  FakeCoordinator coordinator(config);
  FakeWeightFeed feed(config, &coordinator.lease_calls);
  FakeVerifier verifier;
  MetricsRegistry metrics("actor");
  const absl::Status status = RunActorAgainst(&coordinator, &feed, &verifier, &metrics);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(coordinator.name_seen, "actor-7");
  EXPECT_GE(coordinator.lease_calls.load(), 4);

  CharTokenizer tok;
  std::vector<v1::Group> groups;
  {
    std::lock_guard<std::mutex> lock(verifier.mu);
    groups = verifier.groups;
  }
  ASSERT_EQ(groups.size(), 4u);
  // Groups leave as soon as their completions end, not in lease order.
  std::sort(groups.begin(), groups.end(),
            [](const v1::Group& a, const v1::Group& b) { return a.index() < b.index(); });
  int64_t tokens = 0;
  for (size_t i = 0; i < groups.size(); ++i) {
    const v1::Group& g = groups[i];
    const v1::Lease lease = MakeLease(i, i < 2 ? 1 : 2);
    EXPECT_EQ(g.lease_id(), lease.lease_id());
    EXPECT_EQ(g.epoch(), 1u);
    EXPECT_EQ(g.index(), i);
    EXPECT_EQ(g.actor_id(), "actor-id-1");
    // Batch 2 was leased at version 2: it must not be sampled with version 1.
    EXPECT_EQ(g.policy_version(), i < 2 ? 1u : 2u) << i;
    EXPECT_EQ(g.issued_at_version(), lease.issued_at_version());
    EXPECT_EQ(g.task(), "arith");
    EXPECT_EQ(g.prompt_text(), lease.prompt_text());
    EXPECT_EQ(g.reference(), lease.reference());
    EXPECT_TRUE(std::equal(g.prompt_tokens().begin(), g.prompt_tokens().end(),
                           lease.prompt_tokens().begin(), lease.prompt_tokens().end()));
    EXPECT_GE(g.generate_seconds(), 0.0);
    ASSERT_EQ(g.completions_size(), static_cast<int>(kGroupSize));
    for (const v1::Completion& c : g.completions()) {
      ASSERT_GE(c.tokens_size(), 1);
      EXPECT_LE(c.tokens_size(), 5);
      ASSERT_EQ(c.logprobs_size(), c.tokens_size());
      for (float lp : c.logprobs()) EXPECT_LE(lp, 1e-4f);
      for (int32_t t : c.tokens()) {
        EXPECT_NE(t, CharTokenizer::kPad);
        EXPECT_LT(t, CharTokenizer::kVocabSize);
      }
      const std::vector<int32_t> ids(c.tokens().begin(), c.tokens().end());
      EXPECT_EQ(c.text(), tok.Decode(ids, true));
      EXPECT_EQ(c.stopped(), ids.back() == CharTokenizer::kEos);
      tokens += c.tokens_size();
    }
  }

  const std::string text = metrics.Serialize();
  EXPECT_EQ(MetricValue(text, "pmdrl_actor_generated_tokens_total"), tokens);
  EXPECT_EQ(MetricValue(text, "pmdrl_actor_weight_swaps_total"), 2);
  EXPECT_EQ(MetricValue(text, "pmdrl_actor_policy_version"), 2);
  EXPECT_EQ(MetricValue(text, "pmdrl_actor_groups_in_flight"), 0);
  EXPECT_EQ(MetricValue(text, "pmdrl_actor_groups_sent_total{status=\"accepted\"}"), 3);
  EXPECT_EQ(MetricValue(text, "pmdrl_actor_groups_sent_total{status=\"stale\"}"), 1);
  EXPECT_EQ(MetricValue(text, "pmdrl_actor_groups_sent_total{status=\"unknown\"}"), 0);
  EXPECT_EQ(MetricValue(text, "pmdrl_actor_weight_sync_seconds_count"), 2);
}

TEST(ActorLoopTest, StopBeforeTheCoordinatorAnswersReturnsOk) {
  ActorOptions options;
  options.config.coordinator = "127.0.0.1:1";  // nothing listens
  options.token = kToken;
  MetricsRegistry metrics("actor");
  Actor actor(options, &metrics);
  std::thread stopper([&] {
    std::this_thread::sleep_for(milliseconds(100));
    actor.Stop();
  });
  EXPECT_TRUE(actor.Run().ok());
  stopper.join();
}

TEST(ActorLoopTest, UnreachableCoordinatorFailsAfterTheTimeout) {
  ActorOptions options;
  options.config.coordinator = "127.0.0.1:1";
  options.token = kToken;
  options.coordinator_timeout = milliseconds(300);
  MetricsRegistry metrics("actor");
  Actor actor(options, &metrics);
  const absl::Status status = actor.Run();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
}

// A coordinator that "restarts" after the actor's first lease: it forgets the first
// actor_id (NotFound for it) and registers the actor again as "id-2", with group size
// `second_group_size`, at `second_version` (resumed from an older checkpoint when lower
// than `first_version`). Then one lease for id-2, then finished.
class RestartingCoordinator final : public v1::Coordinator::Service {
 public:
  RestartingCoordinator(ModelConfig config, uint32_t second_group_size, uint64_t first_version = 1,
                        uint64_t second_version = 1)
      : config_json_(ConfigJson(config)),
        second_group_size_(second_group_size),
        first_version_(first_version),
        second_version_(second_version) {}

  grpc::Status RegisterActor(grpc::ServerContext* ctx, const v1::RegisterActorRequest* /*request*/,
                             v1::RegisterActorResponse* response) override {
    if (grpc::Status s = CheckBearer(*ctx, kToken); !s.ok()) return s;
    const int n = ++registrations;
    response->set_actor_id(n == 1 ? "id-1" : "id-2");
    response->set_group_size(n == 1 ? kGroupSize : second_group_size_);
    response->set_current_version(n == 1 ? first_version_ : second_version_);
    response->set_lease_ttl_ms(30000);
    response->set_model_config_json(config_json_);
    response->set_tokenizer("char");
    response->set_task("arith");
    return grpc::Status::OK;
  }

  grpc::Status LeasePrompts(grpc::ServerContext* ctx, const v1::LeasePromptsRequest* request,
                            v1::LeasePromptsResponse* response) override {
    if (grpc::Status s = CheckBearer(*ctx, kToken); !s.ok()) return s;
    std::lock_guard<std::mutex> lock(mu_);
    if (request->actor_id() == "id-1") {
      if (restarted_) return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown actor_id 'id-1'");
      restarted_ = true;  // from now on, id-1 is unknown
      response->set_current_version(first_version_);
      *response->add_leases() = MakeLease(0, first_version_);
      *response->add_leases() = MakeLease(1, first_version_);
      return grpc::Status::OK;
    }
    response->set_current_version(second_version_);
    if (request->actor_id() != "id-2") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown actor_id");
    }
    if (second_leases_++ == 0) {
      *response->add_leases() = MakeLease(2, second_version_);
    } else {
      response->set_finished(true);
    }
    return grpc::Status::OK;
  }

  grpc::Status Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override {
    if (grpc::Status s = CheckBearer(*ctx, kToken); !s.ok()) return s;
    std::lock_guard<std::mutex> lock(mu_);
    if (request->actor_id() != "id-2" && (restarted_ || request->actor_id() != "id-1")) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown actor_id");
    }
    response->set_current_version(restarted_ ? second_version_ : first_version_);
    return grpc::Status::OK;
  }

  bool restarted() {
    std::lock_guard<std::mutex> lock(mu_);
    return restarted_;
  }

  std::atomic<int> registrations{0};

 private:
  const std::string config_json_;
  const uint32_t second_group_size_;
  const uint64_t first_version_;
  const uint64_t second_version_;
  std::mutex mu_;
  bool restarted_ = false;
  int second_leases_ = 0;
};

// Version 1, then nothing more, on every connection.
class VersionOneFeed final : public v1::WeightFeed::Service {
 public:
  explicit VersionOneFeed(ModelConfig config) : config_(std::move(config)) {}
  grpc::Status WatchWeights(grpc::ServerContext* ctx, const v1::WatchWeightsRequest* request,
                            grpc::ServerWriter<v1::WeightChunk>* writer) override {
    if (grpc::Status s = CheckBearer(*ctx, kToken); !s.ok()) return s;
    if (request->have_version() < 1) {
      for (const auto& c : WeightChunks(config_, 1)) writer->Write(c);
    }
    while (!ctx->IsCancelled()) std::this_thread::sleep_for(milliseconds(5));
    return grpc::Status::CANCELLED;
  }

 private:
  const ModelConfig config_;
};

// Before the coordinator's restart, version 2; after it, version 1 (other weights), to a
// receiver that holds nothing.
class RollbackFeed final : public v1::WeightFeed::Service {
 public:
  RollbackFeed(ModelConfig config, RestartingCoordinator* coordinator)
      : config_(std::move(config)), coordinator_(coordinator) {}
  grpc::Status WatchWeights(grpc::ServerContext* ctx, const v1::WatchWeightsRequest* request,
                            grpc::ServerWriter<v1::WeightChunk>* writer) override {
    if (grpc::Status s = CheckBearer(*ctx, kToken); !s.ok()) return s;
    const uint64_t current = coordinator_->restarted() ? 1 : 2;
    if (request->have_version() < current) {
      for (const auto& c : WeightChunks(config_, current)) writer->Write(c);
    }
    while (!ctx->IsCancelled()) std::this_thread::sleep_for(milliseconds(5));
    return grpc::Status::CANCELLED;
  }

 private:
  const ModelConfig config_;
  RestartingCoordinator* coordinator_;
};

TEST(ActorLoopTest, RegistersAgainWhenTheCoordinatorForgotItsId) {
  const ModelConfig config = TinyConfig();
  RestartingCoordinator coordinator(config, kGroupSize);
  VersionOneFeed feed(config);
  FakeVerifier verifier;
  MetricsRegistry metrics("actor");
  const absl::Status status = RunActorAgainst(&coordinator, &feed, &verifier, &metrics);
  ASSERT_TRUE(status.ok()) << status;
  // Once, though both the heartbeat and the lease loop may have seen NotFound.
  EXPECT_EQ(coordinator.registrations.load(), 2);

  std::vector<v1::Group> groups;
  {
    std::lock_guard<std::mutex> lock(verifier.mu);
    groups = verifier.groups;
  }
  bool got_new_lease = false;
  for (const v1::Group& g : groups) {
    if (g.index() == 2) {
      got_new_lease = true;
      EXPECT_EQ(g.actor_id(), "id-2");
    } else {
      EXPECT_EQ(g.actor_id(), "id-1");  // finished before the restart was noticed
    }
  }
  EXPECT_TRUE(got_new_lease);
  // The first two leases were either sent before the restart was noticed or dropped
  // unsent; none is lost track of.
  const std::string text = metrics.Serialize();
  EXPECT_EQ(MetricValue(text, "pmdrl_actor_groups_sent_total{status=\"accepted\"}") +
                MetricValue(text, "pmdrl_actor_groups_sent_total{status=\"unknown\"}"),
            3);
  EXPECT_EQ(MetricValue(text, "pmdrl_actor_groups_in_flight"), 0);
}

TEST(ActorLoopTest, ACoordinatorResumedAtAnOlderVersionIsFollowedBack) {
  const ModelConfig config = TinyConfig();
  RestartingCoordinator coordinator(config, kGroupSize, /*first_version=*/2, /*second_version=*/1);
  RollbackFeed feed(config, &coordinator);
  FakeVerifier verifier;
  MetricsRegistry metrics("actor");
  const absl::Status status = RunActorAgainst(&coordinator, &feed, &verifier, &metrics);
  ASSERT_TRUE(status.ok()) << status;
  std::vector<v1::Group> groups;
  {
    std::lock_guard<std::mutex> lock(verifier.mu);
    groups = verifier.groups;
  }
  bool got_new_lease = false;
  for (const v1::Group& g : groups) {
    if (g.index() != 2) continue;
    got_new_lease = true;
    // Sampled with the resumed coordinator's version 1, not the forgotten version 2.
    EXPECT_EQ(g.policy_version(), 1u);
  }
  EXPECT_TRUE(got_new_lease);
  EXPECT_EQ(MetricValue(metrics.Serialize(), "pmdrl_actor_policy_version"), 1);
}

TEST(ActorLoopTest, ARestartedCoordinatorWithAnotherGroupSizeIsAnError) {
  const ModelConfig config = TinyConfig();
  RestartingCoordinator coordinator(config, kGroupSize + 1);
  VersionOneFeed feed(config);
  FakeVerifier verifier;
  MetricsRegistry metrics("actor");
  const absl::Status status = RunActorAgainst(&coordinator, &feed, &verifier, &metrics);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_NE(status.message().find("group size 4 instead of 3"), absl::string_view::npos) << status;
  EXPECT_EQ(coordinator.registrations.load(), 2);
}

TEST(GenerationEngineDeviceTest, DeviceIsCheckedWhenTheEngineIsBuilt) {
  EngineOptions options;
  options.device = "cpu";
  EXPECT_TRUE(GenerationEngine::Create(TinyConfig(), options).ok());
  options.device = "tpu";
  absl::Status bad = GenerationEngine::Create(TinyConfig(), options).status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument) << bad;
  EXPECT_NE(bad.message().find("actor.device=tpu"), absl::string_view::npos) << bad;
  if (!at::hasCUDA()) {  // the CPU-only LibTorch of CI: a clear error, not a crash
    options.device = "cuda:0";
    absl::Status no_gpu = GenerationEngine::Create(TinyConfig(), options).status();
    EXPECT_EQ(no_gpu.code(), absl::StatusCode::kFailedPrecondition) << no_gpu;
    EXPECT_NE(no_gpu.message().find("no CUDA device"), absl::string_view::npos) << no_gpu;
  }
}

TEST(ActorSeedTest, DependsOnRunSeedAndName) {
  EXPECT_EQ(DeriveActorSeed(1, "actor-0"), DeriveActorSeed(1, "actor-0"));
  EXPECT_NE(DeriveActorSeed(1, "actor-0"), DeriveActorSeed(1, "actor-1"));
  EXPECT_NE(DeriveActorSeed(1, "actor-0"), DeriveActorSeed(2, "actor-0"));
}

}  // namespace
}  // namespace pmdrl
