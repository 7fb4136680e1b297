#include <httplib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/metrics.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pmdrl {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

std::filesystem::path TempDir() {
  auto dir =
      std::filesystem::temp_directory_path() / ("pmdrl_metrics_test_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  return dir;
}

TEST(MetricsRegistryTest, MetricsAppearInTextWithTheirValues) {
  MetricsRegistry metrics("test");
  metrics.Counter("pmdrl_test_requests_total", "Requests.", {{"kind", "a"}}).Increment(3);
  metrics.Gauge("pmdrl_test_policy_version", "Version.").Set(7);
  auto& latency = metrics.Histogram("pmdrl_test_latency_seconds", "Latency.", {0.1, 1.0});
  latency.Observe(0.05);
  latency.Observe(0.5);
  latency.Observe(5.0);

  const std::string text = metrics.Serialize();
  EXPECT_THAT(text, HasSubstr("# HELP pmdrl_test_requests_total Requests."));
  EXPECT_THAT(text, HasSubstr("# TYPE pmdrl_test_requests_total counter"));
  EXPECT_THAT(text, HasSubstr("pmdrl_test_requests_total{kind=\"a\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE pmdrl_test_policy_version gauge"));
  EXPECT_THAT(text, HasSubstr("pmdrl_test_policy_version 7\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE pmdrl_test_latency_seconds histogram"));
  EXPECT_THAT(text, HasSubstr("pmdrl_test_latency_seconds_bucket{le=\"0.1\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("pmdrl_test_latency_seconds_bucket{le=\"1\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("pmdrl_test_latency_seconds_bucket{le=\"+Inf\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("pmdrl_test_latency_seconds_count 3\n"));
  EXPECT_THAT(text, HasSubstr("pmdrl_test_latency_seconds_sum 5.55\n"));
}

TEST(MetricsRegistryTest, SameNameAndLabelsReturnTheSameMetric) {
  MetricsRegistry metrics("test");
  auto& a = metrics.Counter("pmdrl_test_groups_total", "Groups.", {{"outcome", "ok"}});
  auto& b = metrics.Counter("pmdrl_test_groups_total", "Groups.", {{"outcome", "ok"}});
  auto& c = metrics.Counter("pmdrl_test_groups_total", "Groups.", {{"outcome", "bad"}});
  EXPECT_EQ(&a, &b);
  EXPECT_NE(&a, &c);
  a.Increment();
  b.Increment();
  c.Increment(5);
  const std::string text = metrics.Serialize();
  EXPECT_THAT(text, HasSubstr("pmdrl_test_groups_total{outcome=\"ok\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("pmdrl_test_groups_total{outcome=\"bad\"} 5\n"));
  // The family is registered once: one TYPE line.
  EXPECT_EQ(text.find("# TYPE pmdrl_test_groups_total"),
            text.rfind("# TYPE pmdrl_test_groups_total"));

  EXPECT_EQ(&metrics.Gauge("pmdrl_test_loss", "Loss."), &metrics.Gauge("pmdrl_test_loss", "Loss."));
  EXPECT_EQ(&metrics.Histogram("pmdrl_test_step_seconds", "Step.", {1, 2}),
            &metrics.Histogram("pmdrl_test_step_seconds", "Step.", {1, 2}));
}

TEST(MetricsRegistryTest, ConcurrentLookupsAndUpdatesAddUp) {
  MetricsRegistry metrics("test");
  constexpr int kThreads = 4;
  constexpr int kIncrements = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&metrics, t] {
      for (int i = 0; i < kIncrements; ++i) {
        metrics.Counter("pmdrl_test_tokens_total", "Tokens.").Increment();
        metrics.Gauge("pmdrl_test_worker_up", "Up.", {{"worker", std::to_string(t)}}).Set(1);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(metrics.Counter("pmdrl_test_tokens_total", "Tokens.").Value(), kThreads * kIncrements);
  EXPECT_THAT(metrics.Serialize(), HasSubstr("pmdrl_test_worker_up{worker=\"3\"} 1\n"));
}

TEST(MetricsRegistryTest, BadNamesNeverThrowAndInvalidOnesAreNotExported) {
  MetricsRegistry metrics("test");
  // Convention violations: still exported.
  metrics.Counter("pmdrl_test_requests", "No _total suffix.").Increment();
  metrics.Gauge("pmdrl_other_value", "Wrong component.").Set(2);
  // Not representable in Prometheus: a working metric that is not exported.
  auto& invalid = metrics.Counter("bad name!", "Invalid.");
  invalid.Increment(4);
  EXPECT_EQ(invalid.Value(), 4);
  EXPECT_EQ(&invalid, &metrics.Counter("bad name!", "Invalid."));
  // A name taken by another type.
  metrics.Counter("pmdrl_test_shared_total", "Counter.").Increment();
  auto& clash = metrics.Gauge("pmdrl_test_shared_total", "Gauge.");
  clash.Set(9);
  // A reserved label name.
  auto& bad_label = metrics.Gauge("pmdrl_test_labeled", "Labeled.", {{"__reserved", "x"}});
  bad_label.Set(3);

  const std::string text = metrics.Serialize();
  EXPECT_THAT(text, HasSubstr("pmdrl_test_requests 1\n"));
  EXPECT_THAT(text, HasSubstr("pmdrl_other_value 2\n"));
  EXPECT_THAT(text, Not(HasSubstr("bad name")));
  EXPECT_THAT(text, HasSubstr("pmdrl_test_shared_total 1\n"));
  EXPECT_THAT(text, Not(HasSubstr("pmdrl_test_shared_total 9")));
  EXPECT_THAT(text, Not(HasSubstr("__reserved")));
}

TEST(MetricsRegistryTest, UnsortedBucketsAreSorted) {
  MetricsRegistry metrics("test");
  auto& h = metrics.Histogram("pmdrl_test_size_bytes", "Size.", {100, 10, 100, 1000});
  h.Observe(50);
  const std::string text = metrics.Serialize();
  EXPECT_THAT(text, HasSubstr("pmdrl_test_size_bytes_bucket{le=\"10\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("pmdrl_test_size_bytes_bucket{le=\"100\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("pmdrl_test_size_bytes_bucket{le=\"1000\"} 1\n"));
}

TEST(MetricsRegistryTest, WriteSnapshotWritesTheTextAtomically) {
  MetricsRegistry metrics("test");
  metrics.Counter("pmdrl_test_steps_total", "Steps.").Increment(12);
  const auto dir = TempDir();
  const auto path = dir / "metrics.prom";
  ASSERT_TRUE(metrics.WriteSnapshot(path.string()).ok());
  std::ifstream in(path);
  std::stringstream content;
  content << in.rdbuf();
  EXPECT_EQ(content.str(), metrics.Serialize());
  EXPECT_THAT(content.str(), HasSubstr("pmdrl_test_steps_total 12\n"));
  // Overwrites, and leaves no temporary file behind.
  metrics.Counter("pmdrl_test_steps_total", "Steps.").Increment();
  ASSERT_TRUE(metrics.WriteSnapshot(path.string()).ok());
  std::ifstream again(path);
  std::stringstream content2;
  content2 << again.rdbuf();
  EXPECT_THAT(content2.str(), HasSubstr("pmdrl_test_steps_total 13\n"));
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    (void)entry;
    ++files;
  }
  EXPECT_EQ(files, 1);

  const absl::Status bad = metrics.WriteSnapshot((dir / "missing_dir" / "m.prom").string());
  EXPECT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.message()), HasSubstr("missing_dir"));
  std::filesystem::remove_all(dir);
}

TEST(MetricsRegistryTest, WriteRunSnapshotKeepsAFreeTextNameInsideMetrics) {
  MetricsRegistry metrics("test");
  metrics.Counter("pmdrl_test_steps_total", "Steps.").Increment(3);
  const auto run = TempDir();
  metrics.WriteRunSnapshot(run.string(), "learner");        // makes metrics/
  metrics.WriteRunSnapshot(run.string(), "../../escaped");  // an actor's hostile name
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(run / "metrics")) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"learner.prom", "process.._.._escaped.prom"}));
  int top = 0;
  for (const auto& entry : std::filesystem::directory_iterator(run)) top += !entry.is_directory();
  EXPECT_EQ(top, 0) << "nothing written beside metrics/";
  EXPECT_FALSE(std::filesystem::exists(run.parent_path() / "escaped.prom"));
  std::filesystem::remove_all(run);
}

TEST(MetricsServerTest, ServesMetricsAndHealth) {
  MetricsRegistry metrics("test");
  auto& counter = metrics.Counter("pmdrl_test_scrapes_total", "Scrapes.");
  counter.Increment(2);
  auto server = MetricsServer::Start(metrics, "127.0.0.1", 0);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->Port();
  ASSERT_GT(port, 0);

  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(30);
  client.set_read_timeout(30);
  auto res = client.Get("/metrics");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_THAT(res->get_header_value("Content-Type"), StartsWith("text/plain; version=0.0.4"));
  EXPECT_THAT(res->body, HasSubstr("pmdrl_test_scrapes_total 2\n"));

  // Each scrape sees the current values.
  counter.Increment();
  res = client.Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_THAT(res->body, HasSubstr("pmdrl_test_scrapes_total 3\n"));

  res = client.Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "ok");

  res = client.Get("/nothing");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
}

TEST(MetricsServerTest, UnhealthyCallbackGives503WithReason) {
  MetricsRegistry metrics("test");
  std::atomic<bool> healthy{true};
  auto server = MetricsServer::Start(metrics, "127.0.0.1", 0, [&healthy] {
    return healthy ? absl::OkStatus() : absl::UnavailableError("no weights loaded yet");
  });
  ASSERT_TRUE(server.ok()) << server.status();
  httplib::Client client("127.0.0.1", (*server)->Port());
  auto res = client.Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  healthy = false;
  res = client.Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 503);
  EXPECT_THAT(res->body, HasSubstr("no weights loaded yet"));
}

TEST(MetricsServerTest, PortInUseIsAnErrorNamingTheAddress) {
  MetricsRegistry metrics("test");
  auto first = MetricsServer::Start(metrics, "127.0.0.1", 0);
  ASSERT_TRUE(first.ok()) << first.status();
  const int port = (*first)->Port();
  auto second = MetricsServer::Start(metrics, "127.0.0.1", port);
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(std::string(second.status().message()),
              HasSubstr("127.0.0.1:" + std::to_string(port)));
  EXPECT_FALSE(MetricsServer::Start(metrics, "127.0.0.1", 70000).ok());
}

TEST(MetricsServerTest, StopsRightAfterStart) {
  MetricsRegistry metrics("test");
  // The destructor must not hang even if the listen thread has not started yet.
  for (int i = 0; i < 20; ++i) {
    auto server = MetricsServer::Start(metrics, "127.0.0.1", 0);
    ASSERT_TRUE(server.ok()) << server.status();
  }
}

}  // namespace
}  // namespace pmdrl
