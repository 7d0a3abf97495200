// custom_model: your own model on your own data, trained in bf16 by mixtrain's Trainer.
//
// 1. writes a small regression data set, y = sin(x·w) + noise, as two .npy files (float32
//    features [N, F] and targets [N, 1]): the files numpy's np.save would write;
// 2. reads them back through open_data("npy:X.npy,Y.npy") (the last 10% held out);
// 3. defines a model as an nn::Module subclass (a residual MLP, which nn::Sequential cannot
//    express), trains it in bf16 (fp32 master weights) and saves it with nn::save_module.
// Exits 1 when the model did not learn: its validation MSE must be far below the variance of
// the targets, the loss of always predicting their mean.
//
//   custom_model [DIR]   (DIR: where the data, the run and the model go; a new temp dir if none)
#include <mixtrain/mixtrain.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

using namespace mixtrain;
namespace fs = std::filesystem;

// A float32 array as a .npy file (format 1.0: magic, version, header length, a dict padded to
// 64 bytes, then the values in C order, little-endian).
static void write_npy(const fs::path& path, const std::vector<float>& v, const std::string& shape) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }";
  header.append(63 - (10 + header.size()) % 64, ' ').push_back('\n');
  const uint16_t len = static_cast<uint16_t>(header.size());
  std::ofstream f(path, std::ios::binary);
  f.write("\x93NUMPY\x01\x00", 8).write(reinterpret_cast<const char*>(&len), 2) << header;
  f.write(reinterpret_cast<const char*>(v.data()), std::streamsize(v.size() * sizeof(float)));
}

// The model: x -> GELU(in(x)) = h, h + GELU(mid(h)), out(...). Sub-modules are registered by
// name, so parameters are "in.weight", "mid.bias", ... in checkpoints and the saved file.
class ResidualMLP : public nn::Module {
 public:
  ResidualMLP(int64_t features, int64_t hidden, Rng& rng)
      : in_(register_module("in", std::make_unique<nn::Linear>(features, hidden, true, rng))),
        mid_(register_module("mid", std::make_unique<nn::Linear>(hidden, hidden, true, rng))),
        out_(register_module("out", std::make_unique<nn::Linear>(hidden, 1, true, rng))) {}
  std::string type() const override { return "ResidualMLP"; }
  Variable forward(const Variable& x) const {
    Variable h = gelu(in_.forward(x));
    h = add(h, gelu(mid_.forward(h)));
    return out_.forward(h);  // [B, 1]: one value per example, against targets [B, 1]
  }

 private:
  nn::Linear &in_, &mid_, &out_;
};

// Progress: the Trainer prints nothing itself; it reports each logged step here.
struct Progress : train::Callbacks {
  void on_log(const train::StepLog& l) override {
    std::printf("step %4lld/%lld  train loss %.4f", static_cast<long long>(l.step),
                static_cast<long long>(l.total_steps), l.mean_loss);
    if (l.evaluated) std::printf("  validation loss %.4f", l.val_loss);  // each epoch, the end
    std::printf("\n");
  }
};

int main(int argc, char** argv) try {
  // Where the files go: DIR, or a new folder under the system's temp dir.
  std::string dir = (fs::temp_directory_path() / "custom_model.XXXXXX").string();
  if (argc > 1)
    fs::create_directories(dir = argv[1]);
  else if (!mkdtemp(dir.data()))
    throw std::runtime_error("cannot create " + dir);

  // 1. The data: N examples of F features, x ~ N(0, 1), y = sin(x·w) + 0.05 noise.
  const int64_t n = 4096, f = 8;
  Rng rng(42);
  std::vector<float> w(f), x(n * f), y(n);
  for (float& wi : w) wi = rng.normal() / std::sqrt(float(f));
  double mean = 0, var = 0;
  for (int64_t i = 0; i < n; ++i) {
    float dot = 0;
    for (int64_t j = 0; j < f; ++j) {
      x[i * f + j] = rng.normal();
      dot += x[i * f + j] * w[j];
    }
    y[i] = std::sin(2 * dot) + 0.05f * rng.normal();
    mean += y[i] / n;
  }
  for (float v : y) var += (v - mean) * (v - mean) / n;  // MSE of predicting the mean
  write_npy(dir + "/x.npy", x, "(" + std::to_string(n) + ", " + std::to_string(f) + ")");
  write_npy(dir + "/y.npy", y, "(" + std::to_string(n) + ", 1)");
  auto data = open_data("npy:" + dir + "/x.npy," + dir + "/y.npy");

  // 2. The model, its weights drawn from a seeded Rng (the run is reproducible).
  Rng init(1);
  auto net = std::make_shared<ResidualMLP>(f, 64, init);

  // 3. Training: bf16 compute, fp32 master weights; MSE, since the targets are float values.
  train::TrainConfig cfg;
  cfg.precision = "bf16";
  cfg.steps = 500;
  cfg.batch = 64;
  cfg.lr = 3e-3;
  cfg.log_every = 100;
  cfg.out = dir + "/run";  // metrics.jsonl, summary.json, checkpoints
  cfg.force = true;        // a rerun into the same DIR starts afresh
  Progress progress;
  train::Trainer trainer(cfg, train::Model::of(net), data, &progress);
  train::TrainSummary s = trainer.run();

  // 4. The result, and the trained weights as safetensors (nn::load_module reads them back).
  nn::save_module(trainer.module(), dir + "/model.safetensors");
  std::printf("%s, %s loss: final train %.4f, validation %.4f (predicting the mean: %.4f)\n",
              s.precision.c_str(), s.loss.c_str(), s.final_train_loss, s.val_loss, var);
  std::printf("data, run and model.safetensors in %s\n", dir.c_str());
  if (!(s.val_loss < 0.2 * var)) {
    std::fprintf(stderr, "custom_model: the model did not learn (validation loss %.4f)\n",
                 s.val_loss);
    return 1;
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "custom_model: error: %s\n", e.what());
  return 1;
}
