// Numeric CSV: comma-separated fields, an optional header row (told apart by a field that is
// not a number), every other row all numbers.
#include <fmt/format.h>
#include <charconv>
#include <cmath>

#include "data/formats.h"
#include "mixtrain/error.h"

namespace mixtrain::data {

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  if (s.size() >= 2 && s.front() == '"' && s.back() == '"') s = trim(s.substr(1, s.size() - 2));
  return s;
}

std::vector<std::string_view> split_fields(std::string_view line) {
  std::vector<std::string_view> out;
  for (;;) {
    const size_t comma = line.find(',');
    out.push_back(trim(line.substr(0, comma)));
    if (comma == std::string_view::npos) return out;
    line.remove_prefix(comma + 1);
  }
}

// A finite decimal number ("3", "-0.5", "+1e-3"); from_chars takes no leading '+'.
bool parse_number(std::string_view f, double& x) {
  if (!f.empty() && f.front() == '+') {
    f.remove_prefix(1);
    if (!f.empty() && f.front() == '-') return false;
  }
  if (f.empty()) return false;
  const auto [end, ec] = std::from_chars(f.data(), f.data() + f.size(), x);
  return ec == std::errc() && end == f.data() + f.size() && std::isfinite(x);
}

}  // namespace

std::string csv_column_name(const CsvTable& t, int64_t c) {
  return t.columns.empty() ? std::to_string(c) : fmt::format("{} ('{}')", c, t.columns[c]);
}

CsvTable read_csv(const std::string& path) {
  const InputFile f(path, "csv");
  std::string text(static_cast<size_t>(f.size()), '\0');
  f.read_exact(0, text.data(), text.size(), "the file");
  CsvTable t;
  int64_t header_line = 0, first_line = 0;
  std::string_view rest(text);
  if (rest.substr(0, 3) == "\xEF\xBB\xBF") rest.remove_prefix(3);  // a UTF-8 byte order mark
  for (int64_t line_no = 1; !rest.empty(); ++line_no) {
    const size_t nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    rest.remove_prefix(nl == std::string_view::npos ? rest.size() : nl + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (trim(line).empty()) continue;
    const std::vector<std::string_view> fields = split_fields(line);
    const int64_t nf = static_cast<int64_t>(fields.size());
    if (t.cols == 0) {  // the first row: a header if any field is not a number
      t.cols = nf;
      first_line = line_no;
      double x;
      bool header = false;
      for (const auto& fd : fields) header = header || !parse_number(fd, x);
      if (header) {
        header_line = line_no;
        for (const auto& fd : fields) t.columns.emplace_back(fd);
        continue;
      }
    }
    if (nf != t.cols)
      throw IOError(fmt::format("csv {}: line {} has {} field{}, line {} has {}", path, line_no, nf,
                                nf == 1 ? "" : "s", first_line, t.cols));
    for (int64_t c = 0; c < nf; ++c) {
      double x = 0;
      if (!parse_number(fields[c], x))
        throw IOError(fmt::format("csv {}: line {}, column {}: '{}' is not a finite number", path,
                                  line_no, csv_column_name(t, c), fields[c]));
      t.values.push_back(x);
    }
    t.line.push_back(line_no);
    ++t.rows;
  }
  if (t.rows == 0)
    throw IOError(fmt::format(
        "csv {}: no data rows{}", path,
        header_line ? fmt::format(" after the header (line {})", header_line) : std::string()));
  return t;
}

}  // namespace mixtrain::data
