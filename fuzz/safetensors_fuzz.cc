// Opening and reading a safetensors file (common/nn/safetensors.h) from hostile bytes:
// the input is the file (held in a memfd, opened by its /proc path). Open must reject a
// bad header cleanly; for a file that opens, every entry lies inside the data section
// and spans exactly shape x element size bytes, Read gives a contiguous CPU tensor of that
// shape and dtype, ReadInto a float32 tensor of the same shape works for floating
// entries, and LoadSafetensors agrees with Open on the entries. Nothing is allocated
// beyond the file's own size.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/nn/safetensors.h"
#include "fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int fd = ::memfd_create("safetensors-fuzz", MFD_CLOEXEC);
  FUZZ_CHECK(fd >= 0);
  FUZZ_CHECK(::write(fd, data, size) == static_cast<ssize_t>(size));
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  {
    absl::StatusOr<pmdrl::SafetensorsFile> file = pmdrl::SafetensorsFile::Open(path);
    if (file.ok()) {
      uint64_t data_size = 0;
      for (const auto& e : file->entries()) data_size = std::max(data_size, e.end);
      FUZZ_CHECK(data_size <= size);
      uint64_t prev_end = 0;
      for (const pmdrl::SafetensorsFile::Entry& e : file->entries()) {
        FUZZ_CHECK(e.begin <= e.end && e.begin >= prev_end);  // in order, not overlapping
        prev_end = e.end;
        absl::StatusOr<at::Tensor> t = file->Read(e);
        FUZZ_CHECK(t.ok());
        FUZZ_CHECK(t->is_contiguous() && t->scalar_type() == e.dtype);
        FUZZ_CHECK(t->sizes().vec() == e.shape);
        FUZZ_CHECK(static_cast<uint64_t>(t->numel()) * t->element_size() == e.end - e.begin);
        if (at::isFloatingType(e.dtype)) {
          at::Tensor dest = at::empty(e.shape, at::kFloat);
          FUZZ_CHECK(file->ReadInto(e, dest).ok());
        }
      }
      absl::StatusOr<pmdrl::NamedTensors> all = pmdrl::LoadSafetensors(path);
      FUZZ_CHECK(all.ok() && all->size() == file->entries().size());
    }
  }
  ::close(fd);
  return 0;
}
