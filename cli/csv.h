// A small reader for the comma-separated files the learner writes (metrics.csv):
// one header line, then rows of plain fields. Double-quoted fields ("a,b", "" for a
// quote) are understood so that a text column cannot break the reader, but nothing
// else of RFC 4180's variants is promised.
#ifndef PMDRL_CLI_CSV_H_
#define PMDRL_CLI_CSV_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace pmdrl {

// A parsed CSV table. Owns its strings; rows may be shorter than the header (missing
// trailing fields read as empty).
class CsvTable {
 public:
  // Parses `text`. Blank lines are skipped; a header is required.
  static absl::StatusOr<CsvTable> Parse(absl::string_view text);
  // Reads and parses a file; errors name the path.
  static absl::StatusOr<CsvTable> ReadFile(const std::string& path);

  const std::vector<std::string>& header() const { return header_; }
  size_t num_rows() const { return rows_.size(); }

  // Index of the column named `name`, or -1.
  int Column(absl::string_view name) const;
  // Field `col` of row `row`; empty when the row is short or col < 0.
  const std::string& Field(size_t row, int col) const;
  // The field as a number: nullopt when empty. A field that is not a number is an
  // error naming the line (1-based, counting the header) and the column.
  absl::StatusOr<std::optional<double>> Number(size_t row, int col) const;

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
  std::vector<int> line_numbers_;  // source line of each row, for messages
};

}  // namespace pmdrl

#endif  // PMDRL_CLI_CSV_H_
