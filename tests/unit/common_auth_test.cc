// Bearer-token auth end to end over a real gRPC server, plus the rpc.h helpers the
// server and client are built with.
#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "common/auth.h"
#include "common/rpc.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pmdrl/pmdrl.grpc.pb.h"

namespace pmdrl {
namespace {

using ::testing::HasSubstr;

class EnvGuard {
 public:
  EnvGuard() {
    const char* old = std::getenv("PMDRL_TOKEN");
    if (old != nullptr) old_ = old;
    had_ = old != nullptr;
  }
  ~EnvGuard() {
    if (had_) {
      setenv("PMDRL_TOKEN", old_.c_str(), 1);
    } else {
      unsetenv("PMDRL_TOKEN");
    }
  }

 private:
  bool had_ = false;
  std::string old_;
};

std::filesystem::path TestDir() {
  return std::filesystem::temp_directory_path() / ("pmdrl_auth_test_" + std::to_string(getpid()));
}

// Removes the test's files when the process exits.
struct TestDirCleaner {
  ~TestDirCleaner() {
    std::error_code ignored;
    std::filesystem::remove_all(TestDir(), ignored);
  }
} cleaner;

// A token file as it should be: mode 0600.
std::string WriteFile(const std::string& name, const std::string& content) {
  const auto dir = TestDir();
  std::filesystem::create_directories(dir);
  auto path = dir / name;
  std::ofstream(path) << content;
  chmod(path.c_str(), 0600);
  return path.string();
}

TEST(LoadTokenTest, FromFileTrimmed) {
  EnvGuard env;
  setenv("PMDRL_TOKEN", "from-env", 1);
  auto token = LoadToken(WriteFile("token", "  s3cret-token\n"));
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(*token, "s3cret-token");  // the file wins over the environment
}

// Like ssh's private keys: a token file group or others may read (or write) is refused,
// with its mode, its path and the fix; the owner's own modes are fine.
TEST(LoadTokenTest, FileOthersCanReadIsRefused) {
  EnvGuard env;
  setenv("PMDRL_TOKEN", "from-env", 1);  // no fallback to the environment either
  const std::string path = WriteFile("open_token", "s3cret-token\n");
  for (mode_t mode : {0644, 0640, 0604, 0620, 0602}) {
    ASSERT_EQ(chmod(path.c_str(), mode), 0);
    auto token = LoadToken(path);
    ASSERT_FALSE(token.ok()) << std::oct << mode;
    EXPECT_TRUE(absl::IsPermissionDenied(token.status())) << token.status();
    char text[8];
    std::snprintf(text, sizeof(text), "%04o", static_cast<unsigned>(mode));
    EXPECT_THAT(std::string(token.status().message()), HasSubstr(text));
    EXPECT_THAT(std::string(token.status().message()), HasSubstr(path));
    EXPECT_THAT(std::string(token.status().message()), HasSubstr("chmod 600"));
  }
  for (mode_t mode : {0600, 0400}) {
    ASSERT_EQ(chmod(path.c_str(), mode), 0);
    auto token = LoadToken(path);
    ASSERT_TRUE(token.ok()) << std::oct << mode << ": " << token.status();
    EXPECT_EQ(*token, "s3cret-token");
  }
}

TEST(LoadTokenTest, FromEnvironment) {
  EnvGuard env;
  setenv("PMDRL_TOKEN", "env-token\n", 1);
  auto token = LoadToken("");
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(*token, "env-token");
}

TEST(LoadTokenTest, MissingOrEmptyIsAnErrorSayingWhere) {
  EnvGuard env;
  unsetenv("PMDRL_TOKEN");
  auto token = LoadToken("");
  ASSERT_FALSE(token.ok());
  EXPECT_THAT(std::string(token.status().message()), HasSubstr("PMDRL_TOKEN"));

  setenv("PMDRL_TOKEN", " \n", 1);
  token = LoadToken("");
  ASSERT_FALSE(token.ok());
  EXPECT_THAT(std::string(token.status().message()), HasSubstr("PMDRL_TOKEN"));

  token = LoadToken("/nonexistent/pmdrl/token");
  ASSERT_FALSE(token.ok());
  EXPECT_THAT(std::string(token.status().message()), HasSubstr("/nonexistent/pmdrl/token"));

  const std::string empty = WriteFile("empty", "\n");
  token = LoadToken(empty);
  ASSERT_FALSE(token.ok());
  EXPECT_THAT(std::string(token.status().message()), HasSubstr(empty));

  token = LoadToken(WriteFile("spaced", "two words\n"));
  ASSERT_FALSE(token.ok());
  EXPECT_THAT(std::string(token.status().message()), HasSubstr("byte 3"));
}

TEST(RandomTokenTest, SixtyFourHexDigitsAndFresh) {
  const std::string a = RandomToken();
  const std::string b = RandomToken();
  EXPECT_EQ(a.size(), 64u);
  EXPECT_EQ(a.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_NE(a, b);
}

// A Learner whose SubmitGroups accepts every group from an authenticated caller.
class FakeLearner final : public v1::Learner::Service {
 public:
  explicit FakeLearner(std::string token) : token_(std::move(token)) {}

  grpc::Status SubmitGroups(grpc::ServerContext* ctx,
                            grpc::ServerReaderWriter<v1::GroupAck, v1::Group>* stream) override {
    if (grpc::Status auth = CheckBearer(*ctx, token_); !auth.ok()) return auth;
    v1::Group group;
    while (stream->Read(&group)) {
      v1::GroupAck ack;
      ack.set_lease_id(group.lease_id());
      ack.set_status(v1::ACK_ACCEPTED);
      stream->Write(ack);
    }
    return grpc::Status::OK;
  }

 private:
  const std::string token_;
};

class AuthServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = StartServer("127.0.0.1:0", {&service_}, &port_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    ASSERT_GT(port_, 0);
    channel_ = MakeChannel("127.0.0.1:" + std::to_string(port_));
    stub_ = v1::Learner::NewStub(channel_);
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
  }

  // Sends one group; returns the call's status and, through *acks, the acks read.
  grpc::Status Submit(const std::string* token, int* acks) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    if (token != nullptr) AddBearer(&ctx, *token);
    auto stream = stub_->SubmitGroups(&ctx);
    v1::Group group;
    group.set_lease_id("lease-1");
    stream->Write(group);  // may fail once the server has refused the call
    stream->WritesDone();
    v1::GroupAck ack;
    *acks = 0;
    while (stream->Read(&ack)) {
      EXPECT_EQ(ack.lease_id(), "lease-1");
      EXPECT_EQ(ack.status(), v1::ACK_ACCEPTED);
      ++*acks;
    }
    return stream->Finish();
  }

  const std::string token_ = RandomToken();
  FakeLearner service_{token_};
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Learner::Stub> stub_;
};

TEST_F(AuthServerTest, RightTokenIsAccepted) {
  int acks = 0;
  const grpc::Status status = Submit(&token_, &acks);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(acks, 1);
}

TEST_F(AuthServerTest, MissingTokenIsUnauthenticated) {
  int acks = 0;
  const grpc::Status status = Submit(nullptr, &acks);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(status.error_message(), "missing authorization metadata");
  EXPECT_EQ(acks, 0);
}

TEST_F(AuthServerTest, WrongTokenIsUnauthenticated) {
  int acks = 0;
  const std::string wrong = RandomToken();
  grpc::Status status = Submit(&wrong, &acks);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(status.error_message(), "wrong bearer token");
  EXPECT_EQ(acks, 0);
  // A prefix of the right token is still wrong.
  const std::string prefix = token_.substr(0, 10);
  status = Submit(&prefix, &acks);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(AuthServerTest, OtherSchemeIsUnauthenticated) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  ctx.AddMetadata("authorization", "Basic " + token_);
  auto stream = stub_->SubmitGroups(&ctx);
  stream->WritesDone();
  v1::GroupAck ack;
  EXPECT_FALSE(stream->Read(&ack));
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(AuthServerTest, DefaultHealthServiceIsServing) {
  const absl::Status health = CheckHealth(channel_, "", absl::Seconds(60));
  EXPECT_TRUE(health.ok()) << health;
  // A service that was never registered with the health service is an error.
  EXPECT_FALSE(CheckHealth(channel_, "no.such.Service", absl::Seconds(60)).ok());
}

TEST_F(AuthServerTest, PortInUseIsAnErrorNamingTheAddress) {
  FakeLearner other("x");
  int port = -1;
  const std::string listen = "127.0.0.1:" + std::to_string(port_);
  auto second = StartServer(listen, {&other}, &port);
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(std::string(second.status().message()), HasSubstr(listen));
  EXPECT_EQ(port, 0);
}

TEST(RpcTest, StatusConversionsKeepCodeAndMessage) {
  const absl::Status a = absl::InvalidArgumentError("completions[3] is bad");
  const grpc::Status g = ToGrpc(a);
  EXPECT_EQ(g.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(g.error_message(), "completions[3] is bad");
  EXPECT_EQ(ToAbsl(g), a);
  EXPECT_TRUE(ToGrpc(absl::OkStatus()).ok());
  EXPECT_TRUE(ToAbsl(grpc::Status::OK).ok());
  const grpc::Status unauth(grpc::StatusCode::UNAUTHENTICATED, "wrong bearer token");
  EXPECT_EQ(ToAbsl(unauth).code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(ToAbsl(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "big")).code(),
            absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace pmdrl
