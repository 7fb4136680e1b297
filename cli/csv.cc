#include "cli/csv.h"

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace pmdrl {
namespace {

// Splits one record. `pos` is advanced past the record's line ending; quoted fields
// may span lines.
std::vector<std::string> NextRecord(absl::string_view text, size_t* pos, int* line) {
  std::vector<std::string> fields;
  std::string field;
  bool quoted = false;
  size_t i = *pos;
  for (; i < text.size(); ++i) {
    char c = text[i];
    if (quoted) {
      if (c == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          field.push_back('"');
          ++i;
        } else {
          quoted = false;
        }
      } else {
        if (c == '\n') ++*line;
        field.push_back(c);
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      fields.push_back(std::move(field));
      field.clear();
    } else if (c == '\n') {
      ++i;
      break;
    } else if (c != '\r') {
      field.push_back(c);
    }
  }
  fields.push_back(std::move(field));
  *pos = i;
  return fields;
}

bool Blank(const std::vector<std::string>& record) {
  return record.size() == 1 && absl::StripAsciiWhitespace(record[0]).empty();
}

}  // namespace

absl::StatusOr<CsvTable> CsvTable::Parse(absl::string_view text) {
  CsvTable table;
  size_t pos = 0;
  int line = 0;
  bool have_header = false;
  while (pos < text.size()) {
    ++line;
    int record_line = line;
    std::vector<std::string> record = NextRecord(text, &pos, &line);
    if (Blank(record)) continue;
    for (std::string& f : record) f = std::string(absl::StripAsciiWhitespace(f));
    if (!have_header) {
      table.header_ = std::move(record);
      have_header = true;
    } else {
      table.rows_.push_back(std::move(record));
      table.line_numbers_.push_back(record_line);
    }
  }
  if (!have_header) return absl::InvalidArgumentError("CSV has no header line");
  return table;
}

absl::StatusOr<CsvTable> CsvTable::ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  absl::StatusOr<CsvTable> table = Parse(buffer.str());
  if (!table.ok()) {
    return absl::Status(table.status().code(), absl::StrCat(path, ": ", table.status().message()));
  }
  return table;
}

int CsvTable::Column(absl::string_view name) const {
  for (size_t i = 0; i < header_.size(); ++i) {
    if (header_[i] == name) return static_cast<int>(i);
  }
  return -1;
}

const std::string& CsvTable::Field(size_t row, int col) const {
  static const std::string* const kEmpty = new std::string();
  if (row >= rows_.size() || col < 0 || static_cast<size_t>(col) >= rows_[row].size()) {
    return *kEmpty;
  }
  return rows_[row][col];
}

absl::StatusOr<std::optional<double>> CsvTable::Number(size_t row, int col) const {
  const std::string& field = Field(row, col);
  if (field.empty()) return std::optional<double>();
  double value = 0;
  if (!absl::SimpleAtod(field, &value)) {
    std::string column = col >= 0 && static_cast<size_t>(col) < header_.size()
                             ? header_[col]
                             : absl::StrCat("#", col);
    return absl::InvalidArgumentError(absl::StrCat("line ", line_numbers_[row], ", column ", column,
                                                   ": not a number: '", field, "'"));
  }
  return std::optional<double>(value);
}

}  // namespace pmdrl
