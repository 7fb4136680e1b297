// The checkpoint readers a resuming learner trusts (learner/training/checkpoint.h): the first byte
// of the input picks the file, the rest is its content, written into a scratch
// checkpoint folder:
//   0: trainer_state.json -> ReadTrainerState; when it reads, its lease_state goes through
//      LeaseStateFromJson, and a state that parses must round-trip (ToJson of it parses
//      back to the same JSON) and restore into a LeaseTable that saves the same state;
//   1: buffered_groups.pb -> ReadBufferedGroups (length-prefixed v1::Group records); the
//      groups read, each with its 8-byte length, can take no more than the file's bytes;
//   2: manifest.json -> CheckCheckpointComplete (it only stats the files listed).
// No reader may crash, throw, or allocate more than the file it reads.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "fuzz/fuzz_check.h"
#include "google/protobuf/stubs/logging.h"
#include "learner/coordinator/lease_table.h"
#include "learner/training/checkpoint.h"
#include "spdlog/spdlog.h"

namespace {

std::string ScratchDir() {
  static const std::string dir = [] {
    spdlog::set_level(spdlog::level::off);
    google::protobuf::SetLogHandler(nullptr);  // no line per string field of bad UTF-8
    std::string base = std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
    if (const char* t = std::getenv("TMPDIR"); t != nullptr && *t != '\0') base = t;
    std::string tmpl = base + "/pmdrl-fuzz-ckpt-XXXXXX";
    FUZZ_CHECK(::mkdtemp(tmpl.data()) != nullptr);
    static std::string made;
    made = tmpl;
    std::atexit([] { std::filesystem::remove_all(made); });
    return tmpl;
  }();
  return dir;
}

void WriteFile(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  FUZZ_CHECK(out.good());
}

void CheckLeaseState(const std::string& json) {
  absl::StatusOr<pmdrl::LeaseTableState> s = pmdrl::LeaseStateFromJson(json);
  if (!s.ok()) return;
  const std::string again = pmdrl::ToJson(*s);
  absl::StatusOr<pmdrl::LeaseTableState> s2 = pmdrl::LeaseStateFromJson(again);
  FUZZ_CHECK(s2.ok());
  FUZZ_CHECK(pmdrl::ToJson(*s2) == again);
  const pmdrl::LeaseTable table = pmdrl::LeaseTable::Restore(*s);
  const pmdrl::LeaseTableState saved = table.Save();
  // Restore normalises the done sets; what it keeps must be a valid state again, with
  // the same outstanding places (none of them done) and cursor.
  FUZZ_CHECK(saved.outstanding == s->outstanding);
  FUZZ_CHECK(saved.cursor == s->cursor);
  FUZZ_CHECK(pmdrl::LeaseStateFromJson(pmdrl::ToJson(saved)).ok());
  for (const pmdrl::StreamPosition& p : saved.outstanding) FUZZ_CHECK(!table.IsDone(p));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string dir = ScratchDir();
  const uint8_t which = data[0] % 3;
  ++data;
  --size;
  if (which == 0) {
    WriteFile(dir + "/trainer_state.json", data, size);
    absl::StatusOr<pmdrl::TrainerState> s = pmdrl::ReadTrainerState(dir);
    if (s.ok()) CheckLeaseState(s->lease_state_json);
  } else if (which == 1) {
    WriteFile(dir + "/buffered_groups.pb", data, size);
    absl::StatusOr<std::vector<pmdrl::v1::Group>> groups = pmdrl::ReadBufferedGroups(dir);
    if (groups.ok()) FUZZ_CHECK(groups->size() * 8 <= size);
  } else {
    WriteFile(dir + "/manifest.json", data, size);
    (void)pmdrl::CheckCheckpointComplete(dir);
  }
  return 0;
}
