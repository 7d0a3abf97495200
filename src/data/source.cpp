// open_data(): parses a data spec, reads its files (data/formats.h) and wraps them as a
// DataSource: examples in memory (Fashion-MNIST and other IDX sets, .npy, CSV) or a token
// stream (text bytes, uint16 token files).
#include "mixtrain/data/source.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>

#include "data/formats.h"
#include "mixtrain/data/classification.h"
#include "mixtrain/data/idx.h"
#include "mixtrain/data/text.h"
#include "mixtrain/error.h"

namespace mixtrain {

const char* split_name(Split s) { return s == Split::train ? "train" : "validation"; }

const char* target_kind_name(TargetKind k) {
  switch (k) {
    case TargetKind::classes:
      return "classes";
    case TargetKind::values:
      return "values";
    case TargetKind::next_token:
      return "next_token";
  }
  return "?";
}

Examples DataSource::rows(Split, std::span<const int64_t>) const {
  if (target_kind() == TargetKind::next_token)
    throw ConfigError(
        fmt::format("{} is a token stream: ask for windows of tokens, not rows", name()));
  throw ConfigError(fmt::format("{}: this source does not give rows", name()));
}

Examples DataSource::windows(Split, std::span<const int64_t>, int64_t) const {
  if (target_kind() != TargetKind::next_token)
    throw ConfigError(fmt::format("{} holds examples with {} targets: ask for rows, not windows",
                                  name(), target_kind_name(target_kind())));
  throw ConfigError(fmt::format("{}: this source does not give windows", name()));
}

namespace {

// Class labels above this are refused (npy) or read as values (csv): an output layer that wide
// is a mistake, most likely a regression target saved as integers.
constexpr int64_t kMaxClasses = int64_t{1} << 24;

// Rows (or tokens) held out from the end: the fraction rounded down, keeping at least one
// for training.
int64_t held_out(int64_t n, double fraction) {
  const auto v = static_cast<int64_t>(static_cast<double>(n) * fraction);
  return std::clamp<int64_t>(v, 0, n - 1);
}

// ---- examples in memory ----

struct ExampleSplit {
  Tensor features;  // u8 (decoded as v / 255) or f32, [n, F]
  Tensor targets;   // classes: i64 [n]; values: f32 [n, K]
};

class ExampleSource final : public DataSource {
 public:
  ExampleSource(std::string name, TargetKind kind, Shape input_shape, int64_t output_size,
                ExampleSplit train, ExampleSplit validation, std::vector<std::string> warnings)
      : name_(std::move(name)),
        kind_(kind),
        input_shape_(std::move(input_shape)),
        output_size_(output_size),
        splits_{std::move(train), std::move(validation)} {
    warnings_ = std::move(warnings);
  }
  std::string name() const override { return name_; }
  TargetKind target_kind() const override { return kind_; }
  int64_t size(Split s) const override { return part(s).targets.size(0); }
  Shape input_shape() const override { return input_shape_; }
  int64_t output_size() const override { return output_size_; }

  Examples rows(Split s, std::span<const int64_t> idx) const override {
    const ExampleSplit& p = part(s);
    const int64_t n = size(s), b = static_cast<int64_t>(idx.size());
    for (int64_t i = 0; i < b; ++i)
      if (idx[i] < 0 || idx[i] >= n)
        throw ShapeError(fmt::format(
            "{}: rows: index {} (row {} of the batch) is outside the {} split's {} examples", name_,
            idx[i], i, split_name(s), n));
    Examples out;
    // ClassificationData decodes features as the MLP's batches always were (u8 v / 255 in
    // fp32): the same bits. gather() reads its labels only for their length.
    const ClassificationData view{p.features, p.targets, std::nullopt};
    Shape shape{b};
    shape.insert(shape.end(), input_shape_.begin(), input_shape_.end());
    out.inputs = view.gather(idx.data(), b).view(shape);
    if (kind_ == TargetKind::classes) {
      out.targets = Tensor::empty({b}, DType::i64);
      const int64_t* src = p.targets.data<int64_t>();
      int64_t* dst = out.targets.data<int64_t>();
      for (int64_t i = 0; i < b; ++i) dst[i] = src[idx[i]];
    } else {
      const int64_t k = p.targets.size(1);
      out.targets = Tensor::empty({b, k}, DType::f32);
      const float* src = p.targets.data<float>();
      float* dst = out.targets.data<float>();
      for (int64_t i = 0; i < b; ++i) std::copy_n(src + idx[i] * k, k, dst + i * k);
    }
    return out;
  }

 private:
  const ExampleSplit& part(Split s) const { return splits_[s == Split::train ? 0 : 1]; }
  std::string name_;
  TargetKind kind_;
  Shape input_shape_;
  int64_t output_size_;
  ExampleSplit splits_[2];
};

// Rows [0, n - held) for training and the rest for validation, as views of the same tensors.
std::pair<ExampleSplit, ExampleSplit> split_rows(const Tensor& features, const Tensor& targets,
                                                 double fraction) {
  const int64_t n = targets.size(0), t = n - held_out(n, fraction);
  return {ExampleSplit{features.slice(0, 0, t), targets.slice(0, 0, t)},
          ExampleSplit{features.slice(0, t, n), targets.slice(0, t, n)}};
}

// ---- token streams ----

// Windows of context + 1 tokens: inputs [b, t] = tokens[start_b + t], targets the next token
// (ByteTextData's batches, for any starts).
template <class T>
Examples token_windows(const DataSource& src, Split s, const T* tokens, int64_t n,
                       std::span<const int64_t> starts, int64_t context) {
  if (context < 1)
    throw ConfigError(fmt::format("{}: windows need a context >= 1, got {}", src.name(), context));
  const int64_t b = static_cast<int64_t>(starts.size());
  for (int64_t r = 0; r < b; ++r)
    // context >= n first: start > n - context - 1 must not overflow.
    if (starts[r] < 0 || context >= n || starts[r] > n - context - 1)
      throw ShapeError(fmt::format(
          "{}: window {} of the batch, tokens [{}, {} + {} + 1), is outside the {} split's {} "
          "tokens",
          src.name(), r, starts[r], starts[r], context, split_name(s), n));
  Examples out{Tensor::empty({b, context}, DType::i64), Tensor::empty({b, context}, DType::i64)};
  int64_t* in = out.inputs.data<int64_t>();
  int64_t* tg = out.targets.data<int64_t>();
  for (int64_t r = 0; r < b; ++r) {
    const T* p = tokens + starts[r];
    for (int64_t i = 0; i < context; ++i) {
      in[r * context + i] = p[i];
      tg[r * context + i] = p[i + 1];
    }
  }
  return out;
}

class TextSource final : public DataSource {
 public:
  TextSource(std::string name, ByteTextData data, std::vector<std::string> warnings)
      : name_(std::move(name)), data_(std::move(data)) {
    warnings_ = std::move(warnings);
  }
  std::string name() const override { return name_; }
  TargetKind target_kind() const override { return TargetKind::next_token; }
  int64_t size(Split s) const override { return data_.size(text_split(s)); }
  Shape input_shape() const override { return {}; }
  int64_t output_size() const override { return ByteTextData::kVocabSize; }
  Examples windows(Split s, std::span<const int64_t> starts, int64_t context) const override {
    const std::string_view bytes = data_.bytes(text_split(s));
    return token_windows(*this, s, reinterpret_cast<const unsigned char*>(bytes.data()),
                         static_cast<int64_t>(bytes.size()), starts, context);
  }

 private:
  static TextSplit text_split(Split s) {
    return s == Split::train ? TextSplit::train : TextSplit::validation;
  }
  std::string name_;
  ByteTextData data_;
};

class TokenSource final : public DataSource {
 public:
  TokenSource(std::string name, std::vector<uint16_t> train, std::vector<uint16_t> validation,
              int64_t vocab, std::vector<std::string> warnings)
      : name_(std::move(name)), tokens_{std::move(train), std::move(validation)}, vocab_(vocab) {
    warnings_ = std::move(warnings);
  }
  std::string name() const override { return name_; }
  TargetKind target_kind() const override { return TargetKind::next_token; }
  int64_t size(Split s) const override { return static_cast<int64_t>(part(s).size()); }
  Shape input_shape() const override { return {}; }
  int64_t output_size() const override { return vocab_; }
  Examples windows(Split s, std::span<const int64_t> starts, int64_t context) const override {
    return token_windows(*this, s, part(s).data(), size(s), starts, context);
  }

 private:
  const std::vector<uint16_t>& part(Split s) const { return tokens_[s == Split::train ? 0 : 1]; }
  std::string name_;
  std::vector<uint16_t> tokens_[2];
  int64_t vocab_;
};

// ---- fashion-mnist[:DIR]: an MNIST-layout IDX set ----

std::string idx_path(const std::string& dir, const std::string& stem) {
  struct stat st;
  for (const char* suffix : {".gz", ""}) {
    const std::string p = fmt::format("{}/{}{}", dir, stem, suffix);
    if (::stat(p.c_str(), &st) == 0) return p;
  }
  throw IOError(fmt::format("fashion-mnist {}: neither {}.gz nor {} is there", dir, stem, stem));
}

struct IdxPair {
  ClassificationData data;
  std::string images_path;
  Shape image_shape;  // one image's: [rows, cols] for an idx3 file
};

IdxPair read_idx_pair(const std::string& dir, const std::string& stem) {
  const std::string ipath = idx_path(dir, stem + "-images-idx3-ubyte");
  const std::string lpath = idx_path(dir, stem + "-labels-idx1-ubyte");
  const Tensor images = read_idx_images(ipath);
  const Tensor labels = read_idx_labels(lpath);
  if (images.size(0) != labels.size(0))
    throw IOError(fmt::format("fashion-mnist: {} holds {} images but {} holds {} labels", ipath,
                              images.size(0), lpath, labels.size(0)));
  const Shape shape(images.shape().begin() + 1, images.shape().end());
  return {images_to_classification(images, labels), ipath, shape};
}

std::shared_ptr<DataSource> open_idx_set(const std::string& spec, const std::string& dir) {
  if (dir.empty()) throw IOError(fmt::format("{}: an empty directory name", spec));
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw IOError(fmt::format(
        "fashion-mnist {}: no such directory{}", dir,
        dir == kFashionMnistDir ? " (Debian's dataset-fashion-mnist package installs it)" : ""));
  // Any image shape and number of examples: the training and t10k images need only agree. Both
  // splits go through images_to_classification, so the rows are ClassificationData::gather's.
  IdxPair train_pair = read_idx_pair(dir, "train");
  IdxPair test_pair = read_idx_pair(dir, "t10k");
  if (train_pair.data.num_features() != test_pair.data.num_features())
    throw IOError(fmt::format(
        "fashion-mnist {}: {} holds {} images but {} holds {} images: the splits must agree", dir,
        train_pair.images_path, shape_str(train_pair.image_shape), test_pair.images_path,
        shape_str(test_pair.image_shape)));
  const ClassificationData& train = train_pair.data;
  const ClassificationData& test = test_pair.data;
  int64_t classes = 0;
  for (const ClassificationData* d : {&train, &test})
    for (int64_t i = 0; i < d->size(); ++i)
      classes = std::max(classes, d->labels.data<int64_t>()[i] + 1);
  const int64_t f = train.num_features();
  return std::make_shared<ExampleSource>(
      spec, TargetKind::classes, Shape{f}, classes, ExampleSplit{train.features, train.labels},
      ExampleSplit{test.features, test.labels}, std::vector<std::string>{});
}

// ---- text:PATH ----

// A text file that is really a token file: llm.c's magic, or zero bytes at odd offsets (the
// high bytes of small little-endian uint16 tokens; text has no NUL bytes).
std::optional<std::string> token_file_hint(const ByteTextData& d, const std::string& path) {
  std::string head(d.bytes(TextSplit::train).substr(0, 1 << 20));
  if (head.size() < (1u << 20))
    head += d.bytes(TextSplit::validation).substr(0, (1 << 20) - head.size());
  if (head.size() >= 4) {
    int32_t magic;
    std::memcpy(&magic, head.data(), 4);
    if (magic == data::kLlmcMagic)
      return fmt::format(
          "text:{}: the file starts with llm.c's token-file magic {}; did you mean tokens:{}?",
          path, data::kLlmcMagic, path);
  }
  const size_t n = head.size() & ~size_t{1};
  if (n < 64) return std::nullopt;
  size_t odd = 0, even = 0;
  for (size_t i = 0; i < n; i += 2) {
    even += head[i] == '\0';
    odd += head[i + 1] == '\0';
  }
  if (odd * 10 >= n / 2 && odd >= 4 * even)
    return fmt::format(
        "text:{}: {}% of the bytes at odd offsets are zero, as the high bytes of small uint16 "
        "little-endian tokens are (a headerless token file?); did you mean tokens:{}?",
        path, odd * 100 / (n / 2), path);
  return std::nullopt;
}

std::shared_ptr<DataSource> open_text(const std::string& spec, const std::string& path,
                                      const DataOptions& opt) {
  if (path.empty()) throw IOError(fmt::format("{}: an empty file name", spec));
  ByteTextData d = ByteTextData::load(path, opt.validation_fraction);
  std::vector<std::string> warnings;
  if (auto hint = token_file_hint(d, path)) warnings.push_back(std::move(*hint));
  return std::make_shared<TextSource>(spec, std::move(d), std::move(warnings));
}

// ---- tokens:TRAIN[,VAL] ----

// A headerless "token file" whose bytes are nearly all printable text is likely text.
std::optional<std::string> text_file_hint(const data::TokenFile& f, const std::string& path) {
  if (f.header_bytes != 0) return std::nullopt;
  const size_t n = std::min<size_t>(f.tokens.size(), 1 << 19);
  if (n < 32) return std::nullopt;
  size_t printable = 0;
  for (size_t i = 0; i < n; ++i) {
    const unsigned t = f.tokens[i];
    for (const unsigned v : {t & 0xffu, t >> 8})
      printable += (v >= 32 && v < 127) || v == '\n' || v == '\r' || v == '\t';
  }
  if (printable * 100 < 2 * n * 98) return std::nullopt;
  return fmt::format(
      "tokens {}: headerless, and {}% of its bytes are printable text; did you mean text:{}?", path,
      printable * 100 / (2 * n), path);
}

std::shared_ptr<DataSource> open_tokens(const std::string& spec,
                                        const std::vector<std::string>& paths,
                                        const DataOptions& opt) {
  std::vector<data::TokenFile> files;
  std::vector<std::string> warnings;
  for (const std::string& p : paths) {
    if (p.empty()) throw IOError(fmt::format("{}: an empty file name", spec));
    files.push_back(data::read_token_file(p));
    if (auto hint = text_file_hint(files.back(), p)) warnings.push_back(std::move(*hint));
  }
  int64_t vocab = opt.vocab;
  for (size_t k = 0; k < files.size(); ++k) {
    const std::vector<uint16_t>& t = files[k].tokens;
    if (opt.vocab > 0) {
      const auto bad = std::find_if(t.begin(), t.end(), [&](uint16_t v) { return v >= opt.vocab; });
      if (bad != t.end())
        throw IOError(fmt::format(
            "tokens {}: offset {}: token {} is outside the vocabulary of {} (the data options' "
            "vocab)",
            paths[k], files[k].header_bytes + 2 * static_cast<uint64_t>(bad - t.begin()), *bad,
            opt.vocab));
    } else {
      vocab = std::max<int64_t>(vocab, *std::max_element(t.begin(), t.end()) + 1);
    }
  }
  std::vector<uint16_t> train = std::move(files[0].tokens), validation;
  if (files.size() == 2) {
    validation = std::move(files[1].tokens);
  } else {
    const int64_t n = static_cast<int64_t>(train.size());
    const int64_t v = held_out(n, opt.validation_fraction);
    validation.assign(train.end() - v, train.end());
    train.resize(static_cast<size_t>(n - v));
    train.shrink_to_fit();
  }
  return std::make_shared<TokenSource>(spec, std::move(train), std::move(validation), vocab,
                                       std::move(warnings));
}

// ---- npy:FEATURES.npy,TARGETS.npy ----

// Little-endian (or single-byte) codes only: '<' and '|', and '=' (native: little on the x86
// machines this library runs on).
bool little(const data::NpyHeader& h) {
  return h.byte_order == '<' || h.byte_order == '|' || (h.byte_order == '=' && h.itemsize > 0);
}

std::shared_ptr<DataSource> open_npy(const std::string& spec, const std::string& xpath,
                                     const std::string& ypath, const DataOptions& opt) {
  if (xpath.empty() || ypath.empty()) throw IOError(fmt::format("{}: an empty file name", spec));
  const data::NpyFile xf(xpath), yf(ypath);
  const data::NpyHeader &xh = xf.header(), &yh = yf.header();
  for (const auto* f : {&xf, &yf})
    if (f->header().fortran_order)
      throw IOError(
          fmt::format("npy {}: fortran_order is True (column-major); this reader takes C order "
                      "(np.ascontiguousarray before np.save)",
                      f->path()));

  // Features: float32 or uint8, [N, ...].
  DType xdt;
  if (little(xh) && xh.kind == 'f' && xh.itemsize == 4)
    xdt = DType::f32;
  else if (xh.byte_order != 0 && xh.kind == 'u' && xh.itemsize == 1)
    xdt = DType::u8;
  else
    throw IOError(fmt::format(
        "npy {}: features dtype '{}' is not supported: float32 ('<f4') or uint8 ('|u1')", xpath,
        xh.descr));
  xf.check_length();  // the shape is a claim: the file must hold it before anything is allocated
  if (xh.shape.empty() || xh.shape[0] < 1)
    throw IOError(fmt::format("npy {}: features of shape {}: need [N, ...] with N >= 1", xpath,
                              shape_str(xh.shape)));
  const int64_t n = xh.shape[0];
  // A 1-d array is one feature per example.
  Shape input_shape = xh.shape.size() == 1 ? Shape{1} : Shape(xh.shape.begin() + 1, xh.shape.end());
  const int64_t f = shape_numel(input_shape);
  if (f < 1)
    throw IOError(fmt::format("npy {}: features of shape {} hold no values per example", xpath,
                              shape_str(xh.shape)));

  // Targets: integers are classes [N], floats values [N] or [N, K].
  const bool is_int =
      little(yh) && (yh.kind == 'i' || yh.kind == 'u' || yh.kind == 'b') &&
      (yh.itemsize == 1 || yh.itemsize == 2 || yh.itemsize == 4 || yh.itemsize == 8) &&
      (yh.kind != 'b' || yh.itemsize == 1);
  const bool is_float = little(yh) && yh.kind == 'f' && (yh.itemsize == 4 || yh.itemsize == 8);
  if (!is_int && !is_float)
    throw IOError(fmt::format(
        "npy {}: targets dtype '{}' is not supported: integers ('<i8', '<i4', '<i2', '|u1', "
        "'<u2', ...: classes) or floats ('<f4', '<f8': values)",
        ypath, yh.descr));
  yf.check_length();
  if (is_int ? yh.shape.size() != 1 : (yh.shape.empty() || yh.shape.size() > 2))
    throw IOError(fmt::format("npy {}: {} targets of shape {}: need {}", ypath,
                              is_int ? "integer (class)" : "float (value)", shape_str(yh.shape),
                              is_int ? "[N]" : "[N] or [N, K]"));
  if (yh.shape[0] != n)
    throw IOError(fmt::format("npy: {} holds {} examples (shape {}) but {} holds {} (shape {})",
                              xpath, n, shape_str(xh.shape), ypath, yh.shape[0],
                              shape_str(yh.shape)));
  const int64_t k = yh.shape.size() == 2 ? yh.shape[1] : 1;
  if (k < 1)
    throw IOError(fmt::format("npy {}: targets of shape {} hold no values per example", ypath,
                              shape_str(yh.shape)));

  Tensor features = Tensor::empty({n, f}, xdt);
  xf.read_data(features.raw_data());
  if (xdt == DType::f32) {
    const float* v = features.data<float>();
    for (int64_t i = 0; i < n * f; ++i)
      if (!std::isfinite(v[i]))
        throw IOError(fmt::format("npy {}: feature {} of example {} is {}: not a finite number",
                                  xpath, i % f, i / f, v[i]));
  }

  std::vector<unsigned char> raw(static_cast<size_t>(yh.data_bytes));
  yf.read_data(raw.data());
  const size_t w = static_cast<size_t>(yh.itemsize);
  Tensor targets;
  int64_t output_size = k;
  if (is_int) {
    targets = Tensor::empty({n}, DType::i64);
    int64_t* t = targets.data<int64_t>();
    int64_t max_label = 0;
    for (int64_t i = 0; i < n; ++i) {
      const unsigned char* p = raw.data() + i * w;
      uint64_t u = 0;
      for (size_t b = w; b-- > 0;) u = (u << 8) | p[b];
      const bool negative = yh.kind == 'i' && (p[w - 1] & 0x80);
      if (negative) {
        const int64_t value =
            w == 8 ? static_cast<int64_t>(u) : static_cast<int64_t>(u) - (int64_t{1} << (8 * w));
        throw IOError(
            fmt::format("npy {}: label {} at index {} is negative; class labels are 0, 1, 2, ...",
                        ypath, value, i));
      }
      if (u >= static_cast<uint64_t>(kMaxClasses))
        throw IOError(fmt::format(
            "npy {}: label {} at index {} is not below {}: too many classes (save values to "
            "regress as floats)",
            ypath, u, i, kMaxClasses));
      t[i] = static_cast<int64_t>(u);
      max_label = std::max(max_label, t[i]);
    }
    output_size = max_label + 1;
  } else {
    targets = Tensor::empty({n, k}, DType::f32);
    float* t = targets.data<float>();
    for (int64_t i = 0; i < n * k; ++i) {
      if (w == 4) {
        std::memcpy(&t[i], raw.data() + i * 4, 4);
      } else {
        double d;
        std::memcpy(&d, raw.data() + i * 8, 8);
        t[i] = static_cast<float>(d);
      }
      if (!std::isfinite(t[i]))
        throw IOError(fmt::format("npy {}: target {} of example {} is {}{}: not a finite number",
                                  ypath, i % k, i / k, t[i], w == 8 ? " as float32" : ""));
    }
  }
  auto [train, validation] = split_rows(features, targets, opt.validation_fraction);
  return std::make_shared<ExampleSource>(spec, is_int ? TargetKind::classes : TargetKind::values,
                                         std::move(input_shape), output_size, std::move(train),
                                         std::move(validation), std::vector<std::string>{});
}

// ---- csv:PATH[,target=COLUMN] ----

std::shared_ptr<DataSource> open_csv(const std::string& spec, const std::string& path,
                                     const std::optional<std::string>& target,
                                     const DataOptions& opt) {
  const data::CsvTable t = data::read_csv(path);
  if (t.cols < 2)
    throw IOError(fmt::format("csv {}: {} column: need a target and at least one feature column",
                              path, t.cols));
  int64_t tc = t.cols - 1;
  if (target) {
    const auto named = std::find(t.columns.begin(), t.columns.end(), *target);
    int64_t index = -1;
    if (named != t.columns.end()) {
      index = named - t.columns.begin();
    } else if (!target->empty() && target->find_first_not_of("0123456789") == std::string::npos &&
               target->size() < 10) {
      index = std::stoll(*target);
      if (index >= t.cols) index = -1;
    }
    if (index < 0) {
      std::string cols;
      for (int64_t c = 0; c < t.cols; ++c) cols += (c ? ", " : "") + data::csv_column_name(t, c);
      throw ConfigError(fmt::format("{}: no target column '{}' in {}; its columns are {} ({})",
                                    spec, *target, path, cols,
                                    t.columns.empty() ? "no header row: name one by 0-based index"
                                                      : "by name or 0-based index"));
    }
    tc = index;
  }
  const int64_t n = t.rows, f = t.cols - 1;
  bool classes = true;
  double max_target = 0;
  for (int64_t r = 0; r < n; ++r) {
    const double y = t.values[r * t.cols + tc];
    classes = classes && y >= 0 && y == std::floor(y) && y < static_cast<double>(kMaxClasses);
    max_target = std::max(max_target, y);
  }
  Tensor features = Tensor::empty({n, f}, DType::f32);
  Tensor targets = classes ? Tensor::empty({n}, DType::i64) : Tensor::empty({n, 1}, DType::f32);
  float* x = features.data<float>();
  for (int64_t r = 0; r < n; ++r) {
    const double* row = t.values.data() + r * t.cols;
    for (int64_t c = 0, j = 0; c < t.cols; ++c)
      if (c != tc) x[r * f + j++] = static_cast<float>(row[c]);
    if (classes)
      targets.data<int64_t>()[r] = static_cast<int64_t>(row[tc]);
    else
      targets.data<float>()[r] = static_cast<float>(row[tc]);
  }
  auto [train, validation] = split_rows(features, targets, opt.validation_fraction);
  return std::make_shared<ExampleSource>(
      spec, classes ? TargetKind::classes : TargetKind::values, Shape{f},
      classes ? static_cast<int64_t>(max_target) + 1 : 1, std::move(train), std::move(validation),
      std::vector<std::string>{});
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    const size_t comma = s.find(',', start);
    out.push_back(s.substr(start, comma - start));
    if (comma == std::string::npos) return out;
    start = comma + 1;
  }
}

constexpr const char* kForms =
    "fashion-mnist[:DIR], text:PATH, tokens:TRAIN[,VAL], npy:FEATURES.npy,TARGETS.npy, "
    "csv:PATH[,target=COLUMN]";

}  // namespace

std::shared_ptr<DataSource> open_data(const std::string& spec, const DataOptions& options) {
  if (!(options.validation_fraction >= 0.0 && options.validation_fraction < 1.0))
    throw ConfigError(fmt::format("{}: validation fraction {} outside [0, 1)", spec,
                                  options.validation_fraction));
  if (options.vocab < 0)
    throw ConfigError(
        fmt::format("{}: vocabulary {} < 0 (0: from the tokens)", spec, options.vocab));
  const size_t colon = spec.find(':');
  const std::string kind = spec.substr(0, colon);
  const std::string rest = colon == std::string::npos ? std::string() : spec.substr(colon + 1);
  if (kind == "fashion-mnist")
    return open_idx_set(spec, colon == std::string::npos ? kFashionMnistDir : rest);
  if (colon != std::string::npos) {
    if (kind == "text") return open_text(spec, rest, options);
    const std::vector<std::string> parts = split_commas(rest);
    if (kind == "tokens") {
      if (parts.size() > 2)
        throw ConfigError(
            fmt::format("data spec '{}': tokens:TRAIN[,VAL] takes one or two files, got {}", spec,
                        parts.size()));
      return open_tokens(spec, parts, options);
    }
    if (kind == "npy") {
      if (parts.size() != 2)
        throw ConfigError(
            fmt::format("data spec '{}': npy:FEATURES.npy,TARGETS.npy takes two files, got {}",
                        spec, parts.size()));
      return open_npy(spec, parts[0], parts[1], options);
    }
    if (kind == "csv") {
      std::optional<std::string> target;
      for (size_t i = 1; i < parts.size(); ++i) {
        if (parts[i].rfind("target=", 0) != 0)
          throw ConfigError(
              fmt::format("data spec '{}': unknown csv option '{}' (csv:PATH[,target=COLUMN])",
                          spec, parts[i]));
        target = parts[i].substr(7);
      }
      if (parts[0].empty()) throw IOError(fmt::format("{}: an empty file name", spec));
      return open_csv(spec, parts[0], target, options);
    }
  }
  throw ConfigError(fmt::format("data spec '{}' is not one of: {}", spec, kForms));
}

}  // namespace mixtrain
