// Weight sync speed: the learner's WeightFeed service (learner/coordinator/weight_feed_service.h)
// publishing a model's weights to actor WeightReceivers in other processes on loopback,
// each figure printed next to a raw TCP socket stream of the same bytes measured in the
// same run (the link's speed on this machine).
//
//   build/bench/weight_sync_bench --model DIR [--receivers 4] [--chunk-mb 1,2,4,8]
//       [--lr 1e-6] [--repeats 2] [--only float32|bfloat16]
//
// Runs, in order: at each chunk size, the raw TCP stream and two full float32 versions
// to 1 receiver; two full bfloat16 versions; a bfloat16 delta after one AdamW step at
// --lr (the first AdamW step moves every weight by lr * sign(gradient) plus decay: that
// is what is applied, with random gradient signs); and two full float32 versions to
// --receivers receivers at once, with the publisher's peak resident memory beside the
// 1-receiver push. A receiver's first version goes into fresh memory, later ones into
// the memory of the one before (the receiver recycles it), so both are shown, each
// beside TCP into fresh memory and TCP into the same memory again. Every push is timed
// from Publish to the receiver holding the checked version (receivers connect first).
// Each measurement runs --repeats times; the best is printed. --only DTYPE runs just
// that dtype's 1-receiver full pushes (for profiling the fast path).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "actor/weight_receiver.h"
#include "common/nn/model_dir.h"
#include "common/nn/weight_snapshot.h"
#include "common/process.h"
#include "common/rpc.h"
#include "common/weight_stream.h"
#include "learner/coordinator/weight_feed_service.h"
#include "learner/coordinator/weight_publisher.h"
#include "learner/training/peak_memory.h"
#include "spdlog/spdlog.h"

extern char** environ;

namespace pmdrl {
namespace {

using Clock = std::chrono::steady_clock;
constexpr char kToken[] = "bench-token";
constexpr int kReportFd = 3;  // children report on fd 3; their stdout stays the log's

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "weight_sync_bench: %s\n", what.c_str());
  std::exit(1);
}

// One digest over a version's per-tensor checksums (each checked by the receiver
// against the bytes it holds): equal digests mean bit-identical versions.
uint64_t Digest(const WeightVersion& v) {
  std::vector<uint64_t> sums;
  for (const WireTensor& t : v.tensors) sums.push_back(t.checksum);
  return XXH3_64bits(sums.data(), sums.size() * sizeof(uint64_t));
}

// ---------------------------------------------------------------- children

// A receiver: connects, says "ready", then reports each expected version as
// "got <version> <wire_bytes> <from_delta> <digest>".
int RunReceiver(const std::string& target, int versions) {
  spdlog::set_level(spdlog::level::warn);
  RetainFreedHeapMemory(size_t{128} << 20);  // as pmdrl-actor does
  auto channel = MakeBulkChannel(target);
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(30))) {
    Die("receiver: cannot connect to " + target);
  }
  WeightReceiver::Options options;
  options.initial_backoff = std::chrono::milliseconds(20);
  WeightReceiver receiver(channel, "bench-receiver", kToken, options);
  receiver.Start();
  FILE* report = fdopen(kReportFd, "w");
  std::fprintf(report, "ready\n");
  std::fflush(report);
  for (int v = 0; v < versions; ++v) {
    if (!receiver.WaitForVersion(v, std::chrono::minutes(10))) Die("receiver: no version");
    // Taken and dropped, as the actor does once its engine has loaded the version.
    std::shared_ptr<const WeightVersion> got = receiver.Take();
    if (got == nullptr || got->version != static_cast<uint64_t>(v)) Die("receiver: wrong version");
    std::fprintf(report, "got %d %llu %d %llu\n", v,
                 static_cast<unsigned long long>(got->wire_bytes), got->from_delta ? 1 : 0,
                 static_cast<unsigned long long>(Digest(*got)));
    std::fflush(report);
  }
  if (receiver.malformed_versions() != 0) Die("receiver: a version failed its checks");
  receiver.Stop();
  return 0;
}

// The TCP baseline's receiving end: reads `bytes` twice, first into fresh memory (as a
// receiver's first version), then again into the same memory (as later versions),
// answering one byte after each.
int RunTcpReceiver(int port, uint64_t bytes) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) Die("tcp: connect");
  std::unique_ptr<uint8_t[]> buffer(new uint8_t[bytes]);
  for (int pass = 0; pass < 2; ++pass) {
    uint64_t got = 0;
    while (got < bytes) {
      const ssize_t n = recv(fd, buffer.get() + got, std::min<uint64_t>(bytes - got, 8 << 20), 0);
      if (n <= 0) Die("tcp: recv");
      got += static_cast<uint64_t>(n);
    }
    const char done = 'd';
    if (send(fd, &done, 1, 0) != 1) Die("tcp: send");
  }
  close(fd);
  return 0;
}

// ---------------------------------------------------------------- the parent

struct Child {
  pid_t pid = -1;
  FILE* report = nullptr;

  std::string ReadLine() {
    char* line = nullptr;
    size_t cap = 0;
    const ssize_t n = getline(&line, &cap, report);
    std::string s = n > 0 ? std::string(line, static_cast<size_t>(n)) : "";
    std::free(line);
    if (s.empty()) Die("a child process ended early");
    return s;
  }
  void Wait() {
    int status = 0;
    waitpid(pid, &status, 0);
    if (report != nullptr) std::fclose(report);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) Die("a child process failed");
  }
};

Child Start(std::vector<std::string> args) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) Die("pipe");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], kReportFd);
  std::string self = "/proc/self/exe";
  args.insert(args.begin(), self);
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  Child c;
  char exe[4096];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0) Die("readlink /proc/self/exe");
  exe[n] = 0;
  if (const int err = posix_spawn(&c.pid, exe, &actions, nullptr, argv.data(), environ); err != 0) {
    Die(std::string("posix_spawn: ") + std::strerror(err));
  }
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  c.report = fdopen(fds[0], "r");
  return c;
}

// A WeightFeed server on loopback with its own publisher.
struct Feed {
  MetricsRegistry metrics{"learner"};
  std::unique_ptr<WeightPublisher> publisher;
  std::unique_ptr<WeightFeedService> service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;

  Feed(bool delta, size_t chunk_bytes) {
    publisher = std::make_unique<WeightPublisher>(
        WeightPublisher::Options{.delta = delta, .metrics = &metrics});
    service = std::make_unique<WeightFeedService>(publisher.get(), kToken, chunk_bytes, &metrics);
    auto s = StartServer("127.0.0.1:0", {service.get()}, &port);
    if (!s.ok()) Die(std::string(s.status().message()));
    server = *std::move(s);
  }
  ~Feed() {
    publisher->Close();
    server->Shutdown();
  }
  std::string target() const { return "127.0.0.1:" + std::to_string(port); }
};

struct PushResult {
  double first_seconds = 0;  // the first version, into fresh memory
  double seconds = 0;        // the last version: Publish to the last receiver holding it
  double slowest_mb_s = 0;   // per receiver: bytes / its own time
  uint64_t wire_bytes = 0;   // over the wire to one receiver
  bool delta = false;
  bool identical = true;  // every receiver's digest equals the publisher's
  int64_t peak_rss_over_baseline = 0;
};

// Publishes `versions` in order to `receivers` fresh receiver processes; times the first
// and the last.
PushResult Push(Feed& feed, const std::vector<std::shared_ptr<const WeightVersion>>& versions,
                int receivers) {
  std::vector<Child> children;
  for (int r = 0; r < receivers; ++r) {
    children.push_back(Start({"--role", "receiver", "--target", feed.target(), "--versions",
                              std::to_string(versions.size())}));
  }
  for (Child& c : children) {
    if (c.ReadLine() != "ready\n") Die("a receiver did not get ready");
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // streams open
  PushResult result;
  for (size_t i = 0; i < versions.size(); ++i) {
    const bool last = i + 1 == versions.size();
    if (last) ResetPeakMemory("cpu");
    const int64_t baseline = last ? PeakMemoryBytes("cpu") : 0;
    feed.publisher->Publish(versions[i]);
    const auto t0 = Clock::now();
    double slowest = 0;
    for (Child& c : children) {
      const std::string line = c.ReadLine();
      const double t = Since(t0);
      slowest = std::max(slowest, t);
      int v = 0, from_delta = 0;
      unsigned long long wire = 0, digest = 0;
      if (std::sscanf(line.c_str(), "got %d %llu %d %llu", &v, &wire, &from_delta, &digest) != 4) {
        Die("bad report: " + line);
      }
      if (last) {
        result.wire_bytes = wire;
        result.delta = from_delta != 0;
        result.identical &= digest == Digest(*versions[i]);
        const double mb_s = static_cast<double>(versions[i]->Bytes()) / 1e6 / t;
        result.slowest_mb_s = result.slowest_mb_s == 0 ? mb_s : std::min(result.slowest_mb_s, mb_s);
      }
    }
    if (i == 0) result.first_seconds = slowest;
    if (last) {
      result.seconds = slowest;
      result.peak_rss_over_baseline = PeakMemoryBytes("cpu") - baseline;
    }
  }
  for (Child& c : children) c.Wait();
  return result;
}

// Raw TCP: the same bytes, written tensor by tensor from the version's memory, twice;
// the seconds of the first pass (into fresh memory) and of the second (the same memory).
std::pair<double, double> TcpSeconds(const WeightVersion& v) {
  const int listener = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      listen(listener, 1) != 0 ||
      getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    Die("tcp: listen");
  }
  Child c = Start({"--role", "tcp", "--port", std::to_string(ntohs(addr.sin_port)), "--bytes",
                   std::to_string(v.Bytes())});
  const int fd = accept(listener, nullptr, nullptr);
  if (fd < 0) Die("tcp: accept");
  double seconds[2];
  for (int pass = 0; pass < 2; ++pass) {
    const auto t0 = Clock::now();
    for (const WireTensor& t : v.tensors) {
      size_t sent = 0;
      while (sent < t.size) {
        const ssize_t n = send(fd, t.bytes.get() + sent, t.size - sent, 0);
        if (n <= 0) Die("tcp: send");
        sent += static_cast<size_t>(n);
      }
    }
    char done = 0;
    if (recv(fd, &done, 1, MSG_WAITALL) != 1) Die("tcp: no answer");
    seconds[pass] = Since(t0);
  }
  close(fd);
  close(listener);
  c.Wait();
  return {seconds[0], seconds[1]};
}

// One AdamW step at `lr` from zero moments: m̂/(√v̂+ε) = g/|g| = sign(g), so every
// weight moves by lr·sign(g), after decoupled decay lr·wd·w (Torch's default wd 0.01).
void AdamWStep(CausalLM& model, double lr) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(1);
  for (auto& [name, p] : NamedWeights(model)) {
    p.mul_(1 - lr * 0.01).sub_(torch::randn_like(p).sign_().mul_(lr));
  }
}

int Main(int argc, char** argv) {
  std::string model_dir, chunks_arg = "1,2,4,8";
  int receivers = 4, repeats = 2;
  double lr = 1e-6;
  std::string only;  // float32 | bfloat16: only that dtype's 1-receiver full pushes
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Die(a + " needs a value");
      return argv[++i];
    };
    if (a == "--role") {
      const std::string role = next();
      std::string target;
      int versions = 1, port = 0;
      uint64_t bytes = 0;
      for (++i; i < argc; ++i) {
        const std::string k = argv[i];
        const std::string v = i + 1 < argc ? argv[++i] : "";
        if (k == "--target") target = v;
        if (k == "--versions") versions = std::atoi(v.c_str());
        if (k == "--port") port = std::atoi(v.c_str());
        if (k == "--bytes") bytes = std::strtoull(v.c_str(), nullptr, 10);
      }
      return role == "tcp" ? RunTcpReceiver(port, bytes) : RunReceiver(target, versions);
    } else if (a == "--model") {
      model_dir = next();
    } else if (a == "--receivers") {
      receivers = std::atoi(next().c_str());
    } else if (a == "--chunk-mb") {
      chunks_arg = next();
    } else if (a == "--lr") {
      lr = std::atof(next().c_str());
    } else if (a == "--repeats") {
      repeats = std::max(1, std::atoi(next().c_str()));
    } else if (a == "--only") {
      only = next();
      if (only != "float32" && only != "bfloat16") Die("--only takes float32 or bfloat16");
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "weight_sync_bench --model DIR [--receivers 4] [--chunk-mb 1,2,4,8] [--lr 1e-6] "
          "[--repeats 2] [--only float32|bfloat16]\n");
      return 0;
    } else {
      Die("unknown flag " + a);
    }
  }
  if (model_dir.empty()) Die("--model DIR is required (pmdrl init-model makes one)");
  std::vector<size_t> chunk_bytes;
  for (absl::string_view c : absl::StrSplit(chunks_arg, ',')) {
    double mb = 0;
    if (!absl::SimpleAtod(c, &mb) || mb <= 0) Die("bad --chunk-mb");
    chunk_bytes.push_back(static_cast<size_t>(mb * (1 << 20)));
  }
  spdlog::set_level(spdlog::level::warn);
  torch::set_num_threads(1);

  absl::StatusOr<CausalLM> model = LoadModelDir(model_dir);
  if (!model.ok()) Die(std::string(model.status().message()));
  std::shared_ptr<const WeightVersion> f32 = SnapshotWeights(*model, 0, WireDtype::kFloat32);
  const double mb32 = static_cast<double>(f32->Bytes()) / 1e6;
  std::printf("model %s: %zu tensors, %.1f MB float32\n", model_dir.c_str(), f32->tensors.size(),
              mb32);

  // Best of --repeats, pass by pass.
  auto best_tcp = [&](const WeightVersion& v) {
    std::pair<double, double> best{1e30, 1e30};
    for (int r = 0; r < repeats; ++r) {
      auto [cold, warm] = TcpSeconds(v);
      best = {std::min(best.first, cold), std::min(best.second, warm)};
    }
    return best;
  };
  auto best_push = [&](bool delta, size_t chunk,
                       const std::vector<std::shared_ptr<const WeightVersion>>& versions, int n) {
    PushResult best;
    best.seconds = best.first_seconds = 1e30;
    for (int r = 0; r < repeats; ++r) {
      Feed feed(delta, chunk);
      PushResult p = Push(feed, versions, n);
      if (!p.identical) Die("a receiver's weights differ from the published version");
      best.first_seconds = std::min(best.first_seconds, p.first_seconds);
      if (p.seconds < best.seconds) {
        const double first = best.first_seconds;
        best = p;
        best.first_seconds = first;
      }
    }
    return best;
  };
  auto line = [](const char* what, double mb, double seconds, double tcp_seconds) {
    std::printf("  %-40s %8.1f MB/s  (%.2f s)  %3.0f%% of raw TCP\n", what, mb / seconds, seconds,
                100 * tcp_seconds / seconds);
  };

  // Every figure beside the raw TCP run measured just before it: this machine's loopback
  // speed drifts by 2x over minutes when anything else runs. Two versions of `dtype`,
  // each of `chunks`; returns the push at the default chunk size.
  const size_t default_chunk = kDefaultWeightChunkBytes;
  auto full_pushes = [&](WireDtype dtype, const std::vector<size_t>& chunks) {
    std::shared_ptr<const WeightVersion> v0 = SnapshotWeights(*model, 0, dtype);
    std::shared_ptr<const WeightVersion> v1 = SnapshotWeights(*model, 1, dtype);
    const double mb = static_cast<double>(v0->Bytes()) / 1e6;
    std::printf(
        "\nfull %s pushes (%.1f MB), 1 receiver; the 1st version goes into fresh memory, the "
        "2nd into the 1st's:\n",
        WireDtypeName(dtype), mb);
    PushResult at_default;
    for (size_t chunk : chunks) {
      const auto [tcp_cold, tcp_warm] = best_tcp(*v0);
      line("raw TCP into fresh memory", mb, tcp_cold, tcp_cold);
      line("raw TCP into the same memory again", mb, tcp_warm, tcp_warm);
      PushResult p = best_push(false, chunk, {v0, v1}, 1);
      const std::string label =
          absl::StrFormat("%.1f MB chunks: 1st version", chunk / double(1 << 20));
      line(label.c_str(), mb, p.first_seconds, tcp_cold);
      line("               2nd version", mb, p.seconds, tcp_warm);
      if (chunk == default_chunk) at_default = p;
    }
    if (at_default.seconds == 0) at_default = best_push(false, default_chunk, {v0, v1}, 1);
    return at_default;
  };
  PushResult one32;
  if (only != "bfloat16") one32 = full_pushes(WireDtype::kFloat32, chunk_bytes);
  if (only == "float32") return 0;
  const PushResult one16 = full_pushes(WireDtype::kBfloat16, {default_chunk});
  if (only == "bfloat16") return 0;
  std::shared_ptr<const WeightVersion> bf0 = SnapshotWeights(*model, 0, WireDtype::kBfloat16);
  std::printf(
      "  push time bfloat16 / float32 at %.1f MB chunks: 1st version %.2f, 2nd %.2f (half: "
      "0.50)\n",
      default_chunk / double(1 << 20), one16.first_seconds / one32.first_seconds,
      one16.seconds / one32.seconds);

  // Delta after one AdamW step: v0 whole, then v1 as a delta.
  AdamWStep(*model, lr);
  std::shared_ptr<const WeightVersion> bf1 = SnapshotWeights(*model, 1, WireDtype::kBfloat16);
  std::printf("\nafter one AdamW step at lr %g:\n", lr);
  {
    const auto t0 = Clock::now();
    absl::StatusOr<WeightDelta> d = EncodeDelta(*bf0, *bf1);
    const double encode_s = Since(t0);
    if (!d.ok()) Die(std::string(d.status().message()));
    std::printf("  bfloat16 delta: %.1f MB = %.1f%% of a full bfloat16 push (encoded in %.2f s)\n",
                d->Bytes() / 1e6, 100.0 * d->Bytes() / bf1->Bytes(), encode_s);
    std::shared_ptr<const WeightVersion> f32_step = SnapshotWeights(*model, 1, WireDtype::kFloat32);
    absl::StatusOr<WeightDelta> d32 = EncodeDelta(*f32, *f32_step);
    if (d32.ok()) {
      std::printf("  float32 delta:  %.1f MB = %.1f%% of a full float32 push\n", d32->Bytes() / 1e6,
                  100.0 * d32->Bytes() / f32_step->Bytes());
    }
  }
  const PushResult delta = best_push(true, default_chunk, {bf0, bf1}, 1);
  std::printf(
      "  bfloat16 delta push, 1 receiver: %.2f s (the full bfloat16 push: %.2f s), %.1f MB "
      "on the wire = %.1f%% of a full bfloat16 push; applied as a delta: %s; "
      "bit-identical to the full version: %s\n",
      delta.seconds, one16.seconds, delta.wire_bytes / 1e6, 100.0 * delta.wire_bytes / bf1->Bytes(),
      delta.delta ? "yes" : "NO", delta.identical ? "yes" : "NO");
  bf0.reset();
  bf1.reset();

  std::printf("\nfull float32 pushes, %d receivers at once:\n", receivers);
  std::shared_ptr<const WeightVersion> f32_1 = SnapshotWeights(*model, 1, WireDtype::kFloat32);
  const PushResult many = best_push(false, default_chunk, {f32, f32_1}, receivers);
  std::printf("  2nd version: total %.1f MB/s (%.2f s for all), slowest receiver %.1f MB/s\n",
              receivers * mb32 / many.seconds, many.seconds, many.slowest_mb_s);
  std::printf(
      "  publisher peak resident memory over its baseline during the push: 1 receiver "
      "%.1f MB, %d receivers %.1f MB; growth %.1f MB (one model copy: %.1f MB)\n",
      one32.peak_rss_over_baseline / 1e6, receivers, many.peak_rss_over_baseline / 1e6,
      (many.peak_rss_over_baseline - one32.peak_rss_over_baseline) / 1e6, mb32);
  return 0;
}

}  // namespace
}  // namespace pmdrl

int main(int argc, char** argv) { return pmdrl::Main(argc, argv); }
