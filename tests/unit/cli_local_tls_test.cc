// Transport security (issue 15, "no one in"): the certificates `pmdrl local` makes
// (cli/local_tls.h) and common/rpc.h's TLS plumbing, over real gRPC servers on
// 127.0.0.1: a mutual-TLS round trip, a plaintext client and a client without a
// certificate refused, `openssl s_client` seeing the handshake, and config errors that
// name the key and the path.
#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "cli/local_tls.h"
#include "common/config.h"
#include "common/rpc.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pmdrl/pmdrl.grpc.pb.h"

namespace pmdrl {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// Generous: the machine may be busy; a refusal shows up long before it.
constexpr absl::Duration kHealthTimeout = absl::Seconds(30);

fs::path TestDir() {
  return fs::temp_directory_path() / ("pmdrl_tls_test_" + std::to_string(getpid()));
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs a shell command, returns its stdout and stderr.
std::string Shell(const std::string& command) {
  std::string out;
  FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  ::pclose(p);
  return out;
}

class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<TlsFiles> made = MakeLocalCertificates((TestDir() / "tls").string());
    ASSERT_TRUE(made.ok()) << made.status();
    files_ = new TlsFiles(*made);
  }
  static void TearDownTestSuite() {
    delete files_;
    files_ = nullptr;
    std::error_code ignored;
    fs::remove_all(TestDir(), ignored);
  }
  void SetUp() override { ASSERT_NE(files_, nullptr) << "no certificates"; }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now());
    ASSERT_TRUE(ConfigureTransportSecurity({}).ok());  // back to plaintext
  }

  // Starts a server on 127.0.0.1 under `tls`; returns its port. The tests talk to its
  // health service; a sync server needs a service of its own besides (its methods all
  // answer UNIMPLEMENTED here).
  int Serve(const TlsFiles& tls) {
    EXPECT_TRUE(ConfigureTransportSecurity(tls).ok());
    int port = 0;
    absl::StatusOr<std::unique_ptr<grpc::Server>> server =
        StartServer("127.0.0.1:0", {&unimplemented_}, &port);
    EXPECT_TRUE(server.ok()) << server.status();
    if (server.ok()) server_ = *std::move(server);
    return port;
  }

  static std::string Address(int port) { return absl::StrCat("127.0.0.1:", port); }

  static TlsFiles* files_;
  v1::Verifier::Service unimplemented_;
  std::unique_ptr<grpc::Server> server_;
};

TlsFiles* TlsTest::files_ = nullptr;

TEST_F(TlsTest, CertificatesAreThrowAwayAndPrivate) {
  struct stat st {};
  ASSERT_EQ(::stat(files_->key.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u) << "node.key must be the owner's only";
  ASSERT_EQ(::stat(fs::path(files_->key).parent_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0077, 0u) << "the tls folder is the owner's only";
  EXPECT_FALSE(fs::exists(fs::path(files_->ca).parent_path() / "ca.key"))
      << "the CA's key is deleted once the certificate is signed";
  // The names a local child dials must match the certificate.
  const std::string text = Shell("openssl x509 -noout -text -in " + files_->cert);
  EXPECT_THAT(text, HasSubstr("IP Address:127.0.0.1"));
  EXPECT_THAT(text, HasSubstr("IP Address:0:0:0:0:0:0:0:1"));
  EXPECT_THAT(text, HasSubstr("DNS:localhost"));
  EXPECT_THAT(text, HasSubstr("TLS Web Server Authentication, TLS Web Client Authentication"));
  EXPECT_THAT(Shell("openssl verify -CAfile " + files_->ca + " " + files_->cert),
              HasSubstr(": OK"));
}

TEST_F(TlsTest, MutualTlsRoundTrip) {
  const int port = Serve(*files_);
  ASSERT_GT(port, 0);
  ASSERT_TRUE(TransportSecurityEnabled());
  // Both names in the certificate's SANs, through both kinds of channel.
  absl::Status s = CheckHealth(MakeChannel(Address(port)), "", kHealthTimeout);
  EXPECT_TRUE(s.ok()) << s;
  s = CheckHealth(MakeBulkChannel(absl::StrCat("localhost:", port)), "", kHealthTimeout);
  EXPECT_TRUE(s.ok()) << s;
}

TEST_F(TlsTest, PlaintextClientIsRefused) {
  // Control: a plaintext client gets through to a plaintext server.
  int port = Serve({});
  ASSERT_GT(port, 0);
  auto plaintext = [](int p) {
    return grpc::CreateChannel(Address(p), grpc::InsecureChannelCredentials());
  };
  absl::Status s = CheckHealth(plaintext(port), "", kHealthTimeout);
  ASSERT_TRUE(s.ok()) << s;
  server_->Shutdown(std::chrono::system_clock::now());

  // The same client against a TLS server: nothing listens in plaintext.
  port = Serve({files_->cert, files_->key, ""});
  ASSERT_GT(port, 0);
  s = CheckHealth(plaintext(port), "", absl::Seconds(5));
  EXPECT_FALSE(s.ok()) << "a plaintext client was served by a TLS server";
  port = Serve(*files_);  // and a mutual-TLS one
  ASSERT_GT(port, 0);
  s = CheckHealth(plaintext(port), "", absl::Seconds(5));
  EXPECT_FALSE(s.ok()) << "a plaintext client was served by a mutual-TLS server";
}

TEST_F(TlsTest, MutualTlsRefusesAClientWithoutACertificate) {
  const int port = Serve(*files_);
  ASSERT_GT(port, 0);
  grpc::SslCredentialsOptions trusts_server;  // verifies the server, shows no certificate
  trusts_server.pem_root_certs = ReadFile(files_->ca);
  absl::Status s =
      CheckHealth(grpc::CreateChannel(Address(port), grpc::SslCredentials(trusts_server)), "",
                  absl::Seconds(5));
  EXPECT_FALSE(s.ok()) << "a client without a certificate was served under mutual TLS";

  // Control: the same client with the certificate gets through.
  grpc::SslCredentialsOptions with_cert = trusts_server;
  with_cert.pem_cert_chain = ReadFile(files_->cert);
  with_cert.pem_private_key = ReadFile(files_->key);
  s = CheckHealth(grpc::CreateChannel(Address(port), grpc::SslCredentials(with_cert)), "",
                  kHealthTimeout);
  EXPECT_TRUE(s.ok()) << s;
}

TEST_F(TlsTest, OpensslSClientSeesTheHandshake) {
  const int port = Serve(*files_);
  ASSERT_GT(port, 0);
  // stdin from /dev/null: s_client closes once the handshake is done; `timeout` bounds it.
  const std::string out = Shell(absl::StrCat("timeout 60 openssl s_client -connect ", Address(port),
                                             " -CAfile ", files_->ca, " -cert ", files_->cert,
                                             " -key ", files_->key, " -alpn h2 -brief </dev/null"));
  EXPECT_THAT(out, HasSubstr("CONNECTION ESTABLISHED")) << out;
  EXPECT_THAT(out, HasSubstr("Verification: OK")) << out;
  EXPECT_THAT(out, HasSubstr("CN = pmdrl-local")) << out;
}

TEST_F(TlsTest, BadSettingsNameTheKeyAndThePathAndKeepTheOldOne) {
  ASSERT_TRUE(ConfigureTransportSecurity(*files_).ok());
  absl::Status s = ConfigureTransportSecurity({files_->cert, "", ""});
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("run.tls_cert"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("run.tls_key"));
  s = ConfigureTransportSecurity({"", "", files_->ca});
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("run.tls_ca"));
  const std::string missing = (TestDir() / "no-such.crt").string();
  s = ConfigureTransportSecurity({missing, files_->key, ""});
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("run.tls_cert"));
  EXPECT_THAT(std::string(s.message()), HasSubstr(missing));
  const std::string not_pem = (TestDir() / "not.pem").string();
  std::ofstream(not_pem) << "hello\n";
  s = ConfigureTransportSecurity({files_->cert, files_->key, not_pem});
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("run.tls_ca"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("not a PEM file"));
  EXPECT_TRUE(TransportSecurityEnabled()) << "a failed call keeps the earlier setting";

  // The config turns down half a pair before any file is read.
  absl::StatusOr<Config> config = LoadConfig("", {"run.tls_cert=/some/node.crt"});
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("run.tls_cert"));
  config = LoadConfig("", {"run.tls_ca=/some/ca.crt"});
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("run.tls_ca"));
  config = LoadConfig("", {"run.tls_cert=/a.crt", "run.tls_key=/a.key", "run.tls_ca=/ca.crt"});
  EXPECT_TRUE(config.ok()) << config.status();
}

}  // namespace
}  // namespace pmdrl
