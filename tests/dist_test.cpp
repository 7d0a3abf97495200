// Data-parallel training on localhost: `mpirun -np 2` of this binary (as DistWorker.Train)
// against single-process runs: loss trajectories, ZeRO-1, checkpoints across rank counts,
// per-rank traffic and state in the metrics, and a killed or hung rank ending the job.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "data_files.h"
#include "mixtrain/data/source.h"
#include "mixtrain/dist/comm.h"
#include "mixtrain/io/safetensors.h"
#include "mixtrain/nn/layers.h"
#include "mixtrain/train/generate.h"
#include "mixtrain/train/trainer.h"
#include "train/checkpoint.h"

using namespace mixtrain;
using namespace mixtrain::train;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Run folders (and their mpirun logs) are removed when the test process exits.
struct Reaper {
  std::vector<fs::path> dirs;
  ~Reaper() {
    std::error_code ec;
    for (const auto& d : dirs) {
      fs::remove_all(d, ec);
      fs::remove(d.string() + ".log", ec);
    }
  }
};
Reaper g_reaper;

fs::path fresh_dir(const std::string& name) {
  fs::path p =
      fs::temp_directory_path() / ("mixtrain_dist_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  g_reaper.dirs.push_back(p);
  return p;
}

// The tiny GPT of trainer_test.cpp (about 30k parameters; a step takes milliseconds), with
// dropout off so a rank's slice of a batch sees exactly what a single process sees.
TrainConfig tiny_gpt(const json& j) {
  TrainConfig c;
  c.model = "gpt";
  c.data = std::string("text:") + MIXTRAIN_SOURCE_DIR + "/tests/data/jargon_sample.txt";
  c.layers = 2;
  c.width = 32;
  c.heads = 2;
  c.context = 32;
  c.batch = 8;
  c.lr = 3e-3;
  c.steps = 10;
  c.log_every = 1;
  c.eval_batches = 1;
  c.precision = j.value("precision", "fp32");
  c.zero = j.value("zero", 0);
  c.master = j.value("master", c.master);
  c.allreduce = j.value("allreduce", "fp32");
  c.steps = j.value("steps", c.steps);
  c.clip_grad = j.value("clip_grad", 0.0);
  c.grad_accum = j.value("grad_accum", 1);
  c.checkpoint_every = j.value("checkpoint_every", 0);
  c.comm_timeout = j.value("comm_timeout", 60.0);
  c.overlap_allreduce = j.value("overlap", false);
  c.bucket_kib = j.value("bucket_kib", c.bucket_kib);
  c.resume = j.value("resume", false);
  c.scale_init = j.value("scale_init", c.scale_init);
  c.reshard_after_forward = j.value("reshard_after_forward", true);
  c.prefetch = j.value("prefetch", true);
  c.checkpoint_activations = j.value("checkpoint_activations", c.checkpoint_activations);
  if (j.contains("fp32_modules")) c.fp32_modules = {j.at("fp32_modules").get<std::string>()};
  c.out = j.at("out").get<std::string>();
  return c;
}

std::vector<json> metrics(const fs::path& out) {
  std::ifstream in(out / "metrics.jsonl");
  std::vector<json> v;
  std::string line;
  while (std::getline(in, line)) v.push_back(json::parse(line));
  return v;
}

std::vector<double> losses(const fs::path& out) {
  std::vector<double> l;
  for (const auto& m : metrics(out)) l.push_back(m.at("loss").get<double>());
  return l;
}

bool have_mpirun() {
  static const bool ok = dist::mpi_built() && std::system("mpirun --version >/dev/null 2>&1") == 0;
  return ok;
}

std::string self_exe() { return fs::read_symlink("/proc/self/exe").string(); }

// The command that runs DistWorker.Train on `np` ranks with config `j` (one OpenMP thread per
// rank: two ranks on two cores). As root OpenMPI needs --allow-run-as-root.
std::string mpirun_cmd(int np, const json& j, const fs::path& log) {
  ::setenv("MIXTRAIN_DIST_CFG", j.dump().c_str(), 1);
  return fmt::format(
      "mpirun --allow-run-as-root --oversubscribe -np {} -x OMP_NUM_THREADS=1 -x "
      "MIXTRAIN_DIST_CFG -x MIXTRAIN_DIST_WORKER=1 {} --gtest_filter=DistWorker.Train "
      ">{} 2>&1",
      np, self_exe(), log.string());
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs np ranks to completion; expects success.
void run_ranks(int np, const json& j) {
  const fs::path log = fs::path(j.at("out").get<std::string>()).string() + ".log";
  const int rc = std::system(mpirun_cmd(np, j, log).c_str());
  ASSERT_EQ(rc, 0) << slurp(log);
}

// A user's model (train::Model over nn::Sequential) on .npy classes, for "custom" runs.
Model small_net(const TrainConfig&, const DataSource& data, Rng& init) {
  auto net = std::make_shared<nn::Sequential>();
  net->add<nn::Linear>(data.input_shape()[0], 32, true, init);
  net->add<nn::Tanh>();
  net->add<nn::Linear>(32, data.output_size(), true, init);
  return Model::of(net);
}

// 512 rows of 6 features in [-1, 1) and a class from their signs; returns the npy: spec.
std::string write_npy_classes(const fs::path& dir) {
  fs::create_directories(dir);
  Rng rng(5);
  std::vector<float> x(512 * 6);
  std::vector<int64_t> y(512);
  for (float& v : x) v = 2 * rng.uniform() - 1;
  for (int r = 0; r < 512; ++r) y[r] = (x[r * 6] > 0) + (x[r * 6 + 1] + x[r * 6 + 2] > 0);
  test::write_file((dir / "x.npy").string(), test::npy("<f4", {512, 6}, test::bytes_of(x)));
  test::write_file((dir / "y.npy").string(), test::npy("<i8", {512}, test::bytes_of(y)));
  return "npy:" + (dir / "x.npy").string() + "," + (dir / "y.npy").string();
}

TrainSummary train_from(const json& j) {
  TrainConfig c = tiny_gpt(j);
  if (!j.contains("npy")) return Trainer(c).run();
  c.model = "small-net";
  return Trainer(c, &small_net, open_data(j.at("npy").get<std::string>())).run();
}

void run_local(const json& j) { train_from(j); }

void expect_close(const std::vector<double>& a, const std::vector<double>& b, double rel,
                  const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  ASSERT_FALSE(a.empty());
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_NEAR(a[i], b[i], rel * std::fabs(b[i])) << what << " at step " << i + 1;
}

// Two checkpoints' full tensors (either layout) are the same names, in the same order, with
// the same bits.
void expect_same_tensors(const CheckpointContents& a, const CheckpointContents& b) {
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const auto& [n, x] = a.tensors[i];
    const auto& [m, y] = b.tensors[i];
    ASSERT_EQ(n, m);
    ASSERT_EQ(x.shape(), y.shape()) << n;
    ASSERT_EQ(x.dtype(), y.dtype()) << n;
    const Tensor xc = x.contiguous(), yc = y.contiguous();
    EXPECT_EQ(std::memcmp(xc.raw_data(), yc.raw_data(), xc.nbytes()), 0) << n;
  }
}

#define SKIP_WITHOUT_MPIRUN() \
  if (!have_mpirun()) GTEST_SKIP() << "no MPI build or no mpirun on this machine"

}  // namespace

// The rank body: only under mpirun, launched by the tests below.
TEST(DistWorker, Train) {
  const char* cfg = std::getenv("MIXTRAIN_DIST_CFG");
  if (!std::getenv("MIXTRAIN_DIST_WORKER") || !cfg)
    GTEST_SKIP() << "run by mpirun from the tests below";
  const json j = json::parse(cfg);
  if (j.contains("pid_dir"))
    std::ofstream(fs::path(j["pid_dir"].get<std::string>()) /
                  fmt::format("rank{}.pid", dist::rank()))
        << ::getpid() << "\n";
  const TrainSummary s = train_from(j);
  if (j.contains("report_dir")) {  // every rank's own view of the loss scaler
    std::ofstream(fs::path(j["report_dir"].get<std::string>()) /
                  fmt::format("rank{}.json", dist::rank()))
        << s.to_json();
    // and the bytes it sent to rank 0 in gathers (checkpoints)
    std::ofstream(fs::path(j["report_dir"].get<std::string>()) /
                  fmt::format("rank{}.gatherv", dist::rank()))
        << dist::bytes_sent(dist::Collective::gatherv) << "\n";
  }
}

// ZeRO-1 on one rank runs the shard update over the whole model: it must reproduce the
// ordinary optimizer bit for bit (same kernels, same multiplier), and hold the same state.
TEST(Dist, ZeroOnOneRankIsBitIdenticalToPlain) {
  for (int stage : {1, 2}) {
    const fs::path a = fresh_dir("plain1"), b = fresh_dir(fmt::format("zero{}on1", stage));
    // ZeRO shards an fp32 master (--master auto takes fp32 with it): the plain run names it.
    run_local({{"out", a.string()}, {"precision", "bf16"}, {"master", "fp32"}});
    run_local({{"out", b.string()}, {"precision", "bf16"}, {"zero", stage}});
    // (The ZeRO run's checkpoint is sharded, rank-0-of-1: read back whole, it holds the
    // plain run's tensors.)
    ASSERT_TRUE(fs::is_directory(list_checkpoints(b).front()));
    expect_same_tensors(read_checkpoint(list_checkpoints(a).front()),
                        read_checkpoint(list_checkpoints(b).front()));
    EXPECT_EQ(losses(a), losses(b));
    // metrics of a ZeRO run report the state it holds: fp32 master + 2 Adam moments.
    const json last = metrics(b).back();
    EXPECT_EQ(last.at("ranks").get<int>(), 1);
    const int64_t params = json::parse(slurp(a / "summary.json")).at("parameters").get<int64_t>();
    EXPECT_EQ(last.at("optimizer_state_bytes_per_rank").get<int64_t>(), 12 * params);
    EXPECT_EQ(last.at("master_bytes_per_rank").get<int64_t>(), 4 * params);
  }
}

// fp32: 2 ranks x 4 rows give the loss trajectory of 1 rank x 8 rows up to summation order
// (fp32 has 24 significant bits; ten steps of reordered sums stay far below 1e-5).
TEST(Dist, TwoRanksMatchOneRankFp32) {
  SKIP_WITHOUT_MPIRUN();
  const fs::path ref = fresh_dir("ref32"), dp = fresh_dir("dp32"), z = fresh_dir("zero32");
  // Clipping on (0.5 is below the early gradient norms): the ZeRO-1 path computes the global
  // norm from its shards.
  run_local({{"out", ref.string()}, {"clip_grad", 0.5}});
  run_ranks(2, {{"out", dp.string()}, {"clip_grad", 0.5}});
  run_ranks(2, {{"out", z.string()}, {"clip_grad", 0.5}, {"zero", 1}});
  expect_close(losses(dp), losses(ref), 1e-5, "2 ranks fp32");
  expect_close(losses(z), losses(ref), 1e-5, "2 ranks fp32 ZeRO-1");
  // Overlapped with backward, in 16 KiB buckets (about ten, against one 4 MiB bucket above):
  // sums are element-wise in rank order whatever the buckets and whenever they start, so the
  // run is bit-identical to the one above.
  const fs::path ov = fresh_dir("dp32ov");
  run_ranks(2, {{"out", ov.string()}, {"clip_grad", 0.5}, {"overlap", true}, {"bucket_kib", 16}});
  EXPECT_EQ(losses(ov), losses(dp));
  {
    SafetensorsFile fa = load_safetensors(list_checkpoints(dp).front().string());
    SafetensorsFile fb = load_safetensors(list_checkpoints(ov).front().string());
    for (const auto& n : fa.names()) {
      const Tensor &x = fa.get(n), &y = fb.get(n);
      ASSERT_EQ(x.nbytes(), y.nbytes()) << n;
      EXPECT_EQ(std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()), 0) << n;
    }
  }
  // Per-rank traffic: the all-reduce sends 2 (N-1)/N x 4 bytes per gradient element; ZeRO-1
  // sends (N-1)/N x (4 bytes of gradient + 4 of fp32 weight) per element, plus a few scalars.
  const json m = metrics(dp).back(), mz = metrics(z).back();
  EXPECT_EQ(m.at("ranks").get<int>(), 2);
  const int64_t params = json::parse(slurp(ref / "summary.json")).at("parameters").get<int64_t>();
  EXPECT_NEAR(m.at("comm_bytes_per_step").get<double>(), 4.0 * params, 0.01 * 4 * params);
  EXPECT_NEAR(mz.at("comm_bytes_per_step").get<double>(), 4.0 * params, 0.01 * 4 * params);
  EXPECT_EQ(metrics(ov).back().at("comm_bytes_per_step"), m.at("comm_bytes_per_step"));
  // State per rank: without ZeRO every rank holds master + 2 moments (12 bytes per
  // parameter); ZeRO-1 holds half of that on each of 2 ranks.
  EXPECT_EQ(m.at("optimizer_state_bytes_per_rank").get<int64_t>(), 12 * params);
  EXPECT_NEAR(mz.at("optimizer_state_bytes_per_rank").get<double>(), 6.0 * params, 12);
  EXPECT_NEAR(mz.at("master_bytes_per_rank").get<double>(), 2.0 * params, 4);
}

// ZeRO-2 shards the fp32 gradients as well: each micro-batch is reduce-scattered into its
// owner's shard and the model's gradients are released. With one micro-batch a step it sums
// exactly what ZeRO-1 sums (bit-identical); with two it accumulates sharded (each micro-batch
// summed over the ranks first), which moves fp32 rounding only (1e-5 of the one-rank run).
TEST(Dist, ZeroTwoShardsTheGradientsAndMatchesOneRank) {
  SKIP_WITHOUT_MPIRUN();
  const fs::path ref = fresh_dir("z2ref"), z1 = fresh_dir("z2z1"), z2 = fresh_dir("z2"),
                 ref_acc = fresh_dir("z2refacc"), z2_acc = fresh_dir("z2acc"),
                 z2_ov = fresh_dir("z2ov");
  run_local({{"out", ref.string()}, {"clip_grad", 0.5}});
  run_ranks(2, {{"out", z1.string()}, {"clip_grad", 0.5}, {"zero", 1}});
  run_ranks(2, {{"out", z2.string()}, {"clip_grad", 0.5}, {"zero", 2}});
  expect_close(losses(z2), losses(ref), 1e-5, "2 ranks fp32 ZeRO-2");
  EXPECT_EQ(losses(z2), losses(z1)) << "one micro-batch: ZeRO-2 sums what ZeRO-1 sums";
  {
    expect_same_tensors(read_checkpoint(list_checkpoints(z1).front()),
                        read_checkpoint(list_checkpoints(z2).front()));
  }
  // Two micro-batches a step, accumulated in the shard; overlapped in 16 KiB buckets, the same
  // bits (sums element-wise in rank order, whenever each bucket starts).
  run_local({{"out", ref_acc.string()}, {"grad_accum", 2}});
  run_ranks(2, {{"out", z2_acc.string()}, {"grad_accum", 2}, {"zero", 2}});
  run_ranks(2, {{"out", z2_ov.string()},
                {"grad_accum", 2},
                {"zero", 2},
                {"overlap", true},
                {"bucket_kib", 16}});
  expect_close(losses(z2_acc), losses(ref_acc), 1e-5, "2 ranks fp32 ZeRO-2, 2 micro-batches");
  EXPECT_EQ(losses(z2_ov), losses(z2_acc)) << "ZeRO-2 overlapped in 16 KiB buckets";
  // What a rank holds: fp32 weights (4 B/param, they are the masters), its half of the fp32
  // gradients (2) and of the moments (4); ZeRO-1 keeps the whole gradient (4).
  const int64_t params = json::parse(slurp(ref / "summary.json")).at("parameters").get<int64_t>();
  const json s1 = json::parse(slurp(z1 / "summary.json")),
             s2 = json::parse(slurp(z2 / "summary.json"));
  EXPECT_EQ(s2.at("zero_stage"), 2);
  EXPECT_EQ(s1.at("gradient_bytes_per_rank").get<int64_t>(), 4 * params);
  EXPECT_NEAR(s2.at("gradient_bytes_per_rank").get<double>(), 2.0 * params, 4);
  EXPECT_NEAR(s2.at("model_state_bytes_per_rank").get<double>(), 10.0 * params, 12);
  const json plain = json::parse(slurp(ref / "summary.json"));
  EXPECT_EQ(plain.at("model_state_bytes_per_rank").get<int64_t>(), 16 * params);
  // Per-rank traffic is ZeRO-1's, split by collective: the gradient reduce-scatter (alltoallv)
  // and the weight all-gather each send (N-1)/N x 4 bytes per parameter, plus scalars
  // (allreduce: the loss, the verdict and the norm; broadcast: the checkpoint decision).
  const json by = metrics(z2).back().at("comm_bytes_by_collective");
  EXPECT_NEAR(by.at("alltoallv").get<double>(), 2.0 * params, 0.001 * params);
  EXPECT_NEAR(by.at("allgatherv").get<double>(), 2.0 * params, 0.001 * params);
  EXPECT_LT(by.at("allreduce").get<int64_t>(), 100);
  EXPECT_EQ(metrics(z2).back().at("comm_bytes_per_step"),
            metrics(z1).back().at("comm_bytes_per_step"));
}

// The final fp32 parameters of a run, through `mixtrain export` (whatever the checkpoint
// layout), as name -> bytes.
std::map<std::string, std::vector<char>> exported(const fs::path& run) {
  const std::string file = run.string() + ".export.safetensors";
  export_weights(run.string(), "fp32", file);
  SafetensorsFile f = load_safetensors(file);
  std::map<std::string, std::vector<char>> out;
  for (const auto& n : f.names()) {
    const char* b = static_cast<const char*>(f.get(n).raw_data());
    out[n].assign(b, b + f.get(n).nbytes());
  }
  fs::remove(file);
  return out;
}

// ZeRO-3 (FSDP) shards the compute weights too: each unit (a block, an embedding, the head)
// is all-gathered before its forward and again before its backward, and its gradients are
// reduce-scattered as soon as its backward is done. The sums are ZeRO-2's, element-wise in
// rank order, so it is bit-identical to ZeRO-2 (and, with one micro-batch, ZeRO-1) whatever
// the resharding, prefetching and recomputation; in fp32 it stays within 1e-5 of one rank on
// 2 and 4 ranks (summation order only).
TEST(Dist, ZeroThreeShardsTheWeightsAndMatchesOneRank) {
  SKIP_WITHOUT_MPIRUN();
  const fs::path ref = fresh_dir("z3ref"), z1 = fresh_dir("z3z1"), z3 = fresh_dir("z3"),
                 keep = fresh_dir("z3keep"), nopf = fresh_dir("z3nopf");
  run_local({{"out", ref.string()}, {"clip_grad", 0.5}});
  run_ranks(2, {{"out", z1.string()}, {"clip_grad", 0.5}, {"zero", 1}});
  run_ranks(2, {{"out", z3.string()}, {"clip_grad", 0.5}, {"zero", 3}});
  run_ranks(
      2,
      {{"out", keep.string()}, {"clip_grad", 0.5}, {"zero", 3}, {"reshard_after_forward", false}});
  run_ranks(2, {{"out", nopf.string()}, {"clip_grad", 0.5}, {"zero", 3}, {"prefetch", false}});
  expect_close(losses(z3), losses(ref), 1e-5, "2 ranks fp32 ZeRO-3");
  EXPECT_EQ(losses(z3), losses(z1)) << "one micro-batch: ZeRO-3 sums what ZeRO-1 sums";
  EXPECT_EQ(losses(keep), losses(z3)) << "--reshard-after-forward false";
  EXPECT_EQ(losses(nopf), losses(z3)) << "--prefetch false";
  const auto params_z1 = exported(z1);
  EXPECT_EQ(exported(z3), params_z1);
  EXPECT_EQ(exported(keep), params_z1);
  EXPECT_EQ(exported(nopf), params_z1);

  // Traffic per rank and step, fp32 (4 B) on 2 ranks: the gradient reduce-scatter sends
  // (N-1)/N x 4 B/param; the weights are all-gathered twice (forward, and again for backward)
  // at (N-1)/N x 4 B/param each, once when they stay gathered from forward to backward.
  const int64_t params = json::parse(slurp(ref / "summary.json")).at("parameters").get<int64_t>();
  const json by = metrics(z3).back().at("comm_bytes_by_collective");
  EXPECT_NEAR(by.at("alltoallv").get<double>(), 2.0 * params, 0.001 * params);
  EXPECT_NEAR(by.at("allgatherv").get<double>(), 4.0 * params, 0.01 * params);
  EXPECT_NEAR(metrics(keep).back().at("comm_bytes_by_collective").at("allgatherv").get<double>(),
              2.0 * params, 0.01 * params);
  // What a rank holds: half of the fp32 weights (they are the masters), of the gradients and of
  // the moments (2 + 2 + 4 B/param), plus the units gathered at once and one unit's unreduced
  // gradients. A tiny GPT block is about 30% of this model, so those are bounded by the two
  // largest units (a block and its prefetched neighbour) and one block.
  const json s3 = json::parse(slurp(z3 / "summary.json"));
  EXPECT_EQ(s3.at("zero_stage"), 3);
  EXPECT_EQ(s3.at("comm_bytes_by_collective"), metrics(z3).back().at("comm_bytes_by_collective"));
  const double block = 12.0 * 32 * 32 + 13 * 32;  // width 32
  const double gathered = s3.at("gathered_weight_bytes_per_rank").get<double>();
  const double unreduced = s3.at("unreduced_gradient_bytes_per_rank").get<double>();
  EXPECT_GE(gathered, 4 * block);
  EXPECT_LE(gathered, 2 * 4 * block + 1024);
  EXPECT_GE(unreduced, 4 * block);
  EXPECT_LE(unreduced, 4 * block + 1024);
  EXPECT_NEAR(s3.at("model_state_bytes_per_rank").get<double>() - gathered - unreduced,
              8.0 * params, 64);
  EXPECT_NEAR(s3.at("weight_bytes_per_rank").get<double>() - gathered, 2.0 * params, 64);

  // Two micro-batches a step with every block recomputed in backward (which gathers the block
  // again): ZeRO-2's accumulation, so ZeRO-2's bits.
  const fs::path z2a = fresh_dir("z3z2acc"), z3a = fresh_dir("z3acc");
  run_ranks(2, {{"out", z2a.string()}, {"grad_accum", 2}, {"zero", 2}});
  run_ranks(2, {{"out", z3a.string()},
                {"grad_accum", 2},
                {"zero", 3},
                {"checkpoint_activations", "blocks"}});
  EXPECT_EQ(losses(z3a), losses(z2a)) << "ZeRO-3, 2 micro-batches, blocks recomputed";
  EXPECT_EQ(exported(z3a), exported(z2a));
}

// Stages 2 and 3 on 4 ranks (2 rows each), for the GPT and for a user's model (whose units
// are its Linear layers): within 1e-5 of one rank in fp32.
TEST(Dist, ShardedStagesOnFourRanksMatchOneRank) {
  SKIP_WITHOUT_MPIRUN();
  const fs::path ref = fresh_dir("r4ref");
  run_local({{"out", ref.string()}});
  for (int stage : {2, 3}) {
    const fs::path d = fresh_dir(fmt::format("r4z{}", stage));
    run_ranks(4, {{"out", d.string()}, {"zero", stage}});
    expect_close(losses(d), losses(ref), 1e-5, fmt::format("4 ranks fp32 ZeRO-{}", stage));
  }
  const fs::path data = fresh_dir("r4npy"), nref = fresh_dir("r4net1"), n3 = fresh_dir("r4net3"),
                 n3x2 = fresh_dir("r2net3");
  const std::string spec = write_npy_classes(data);
  run_local({{"out", nref.string()}, {"npy", spec}, {"steps", 20}});
  run_ranks(4, {{"out", n3.string()}, {"npy", spec}, {"steps", 20}, {"zero", 3}});
  run_ranks(2, {{"out", n3x2.string()}, {"npy", spec}, {"steps", 20}, {"zero", 3}});
  expect_close(losses(n3), losses(nref), 1e-5, "4 ranks, a user's model, ZeRO-3");
  expect_close(losses(n3x2), losses(nref), 1e-5, "2 ranks, a user's model, ZeRO-3");
}

// bf16 compute, bf16 on the wire: ZeRO-3 all-gathers the bf16 weights (half the bytes of fp32)
// and stays within the tolerance ZeRO-1 meets against one rank (2e-3, see below). With the
// head kept in fp32 (--fp32-modules head) that unit gathers fp32.
TEST(Dist, ZeroThreeBf16GathersTheComputeDtype) {
  SKIP_WITHOUT_MPIRUN();
  const fs::path ref = fresh_dir("z3r16"), z3 = fresh_dir("z3bf16"), z1 = fresh_dir("z1bf16"),
                 hd = fresh_dir("z3bf16head");
  run_local({{"out", ref.string()}, {"precision", "bf16"}, {"master", "fp32"}});
  run_ranks(2,
            {{"out", z1.string()}, {"precision", "bf16"}, {"allreduce", "compute"}, {"zero", 1}});
  run_ranks(2,
            {{"out", z3.string()}, {"precision", "bf16"}, {"allreduce", "compute"}, {"zero", 3}});
  run_ranks(2, {{"out", hd.string()},
                {"precision", "bf16"},
                {"allreduce", "compute"},
                {"zero", 3},
                {"fp32_modules", "head"}});
  expect_close(losses(z3), losses(ref), 2e-3, "2 ranks bf16 ZeRO-3");
  EXPECT_EQ(losses(z3), losses(z1)) << "bf16: ZeRO-3 sums and updates what ZeRO-1 does";
  const int64_t params = json::parse(slurp(ref / "summary.json")).at("parameters").get<int64_t>();
  // bf16 weights: two all-gathers of (N-1)/N x 2 B/param; bf16 gradients: (N-1)/N x 2 B/param.
  const json by = metrics(z3).back().at("comm_bytes_by_collective");
  EXPECT_NEAR(by.at("allgatherv").get<double>(), 2.0 * params, 0.01 * params);
  EXPECT_NEAR(by.at("alltoallv").get<double>(), 1.0 * params, 0.001 * params);
  // The fp32 head (32 x 256 weights) gathers 2 more bytes per element, twice, half of it sent.
  const double head = 32.0 * 256;
  EXPECT_NEAR(metrics(hd).back().at("comm_bytes_by_collective").at("allgatherv").get<double>(),
              2.0 * params + 2 * head, 0.01 * params);
  // State: half of the bf16 weights, of the fp32 gradients, masters and moments (1+2+2+4).
  const json s3 = json::parse(slurp(z3 / "summary.json"));
  EXPECT_NEAR(s3.at("model_state_bytes_per_rank").get<double>() -
                  s3.at("gathered_weight_bytes_per_rank").get<double>() -
                  s3.at("unreduced_gradient_bytes_per_rank").get<double>(),
              9.0 * params, 64);
}

// A user's model on a user's data is data parallel like the built-ins: 2 ranks x 4 rows give
// 1 rank x 8 rows' losses up to fp32 summation order (1e-5 relative, as above).
TEST(Dist, YourModelOnTwoRanksMatchesOneRank) {
  SKIP_WITHOUT_MPIRUN();
  const fs::path data = fresh_dir("npy"), ref = fresh_dir("net1"), dp = fresh_dir("net2");
  const std::string spec = write_npy_classes(data);
  run_local({{"out", ref.string()}, {"npy", spec}, {"steps", 20}});
  run_ranks(2, {{"out", dp.string()}, {"npy", spec}, {"steps", 20}});
  expect_close(losses(dp), losses(ref), 1e-5, "2 ranks, a user's model");
  EXPECT_EQ(metrics(dp).back().at("ranks").get<int>(), 2);
}

// bf16 compute with bf16 on the wire. Tolerance 2e-3 relative, half a bf16 ulp (2^-9): the
// runs differ in fp32 summation order (~1e-7), which bf16 activations (8 significant bits)
// turn into occasional one-ulp rounding flips, and in the gradients' bf16 rounding on the wire
// (2^-9 relative each, unbiased). Over ten Adam steps the measured gap is below 1e-4; a real
// error (a wrong slice, a missing 1/N, an unsummed shard) moves the loss by far more than 2e-3.
TEST(Dist, TwoRanksMatchOneRankBf16) {
  SKIP_WITHOUT_MPIRUN();
  const fs::path ref = fresh_dir("ref16"), dp = fresh_dir("dp16"), z = fresh_dir("zero16"),
                 d32 = fresh_dir("dp16w32");
  // fp32 master where ZeRO-1's state is compared with the plain run's (ZeRO-1 shards an fp32
  // master); the default (split16 in bf16) is checked against the same reference below.
  run_local({{"out", ref.string()}, {"precision", "bf16"}, {"master", "fp32"}});
  run_ranks(
      2,
      {{"out", dp.string()}, {"precision", "bf16"}, {"allreduce", "compute"}, {"master", "fp32"}});
  run_ranks(2, {{"out", z.string()}, {"precision", "bf16"}, {"allreduce", "compute"}, {"zero", 1}});
  run_ranks(2, {{"out", d32.string()}, {"precision", "bf16"}, {"allreduce", "fp32"}});
  const fs::path s16 = fresh_dir("dp16split");
  run_ranks(2, {{"out", s16.string()}, {"precision", "bf16"}, {"allreduce", "compute"}});
  const fs::path zo = fresh_dir("zero16ov");
  run_ranks(2, {{"out", zo.string()},
                {"precision", "bf16"},
                {"allreduce", "compute"},
                {"zero", 1},
                {"overlap", true},
                {"bucket_kib", 8}});
  expect_close(losses(dp), losses(ref), 2e-3, "2 ranks bf16, bf16 all-reduce");
  expect_close(losses(z), losses(ref), 2e-3, "2 ranks bf16, ZeRO-1");
  {  // ZeRO-2, two micro-batches a step: within the tolerance ZeRO-1 meets
    const fs::path r2 = fresh_dir("ref16acc"), z2 = fresh_dir("zero2bf16");
    run_local({{"out", r2.string()}, {"precision", "bf16"}, {"master", "fp32"}, {"grad_accum", 2}});
    run_ranks(2, {{"out", z2.string()},
                  {"precision", "bf16"},
                  {"allreduce", "compute"},
                  {"zero", 2},
                  {"grad_accum", 2}});
    expect_close(losses(z2), losses(r2), 2e-3, "2 ranks bf16, ZeRO-2, 2 micro-batches");
  }
  EXPECT_EQ(losses(zo), losses(z)) << "ZeRO-1 overlapped in 8 KiB buckets";
  expect_close(losses(d32), losses(ref), 2e-3, "2 ranks bf16, fp32 all-reduce");
  // The default master in bf16 is split16: the fp32 master's bits, so the same losses as the
  // fp32-master run up to the bf16 weights' rounding at exact ties.
  expect_close(losses(s16), losses(dp), 1e-4, "2 ranks bf16, split16 master");
  EXPECT_EQ(json::parse(slurp(s16 / "config.json")).at("master"), "split16");
  // bf16 on the wire halves the bytes of the fp32 all-reduce.
  const double b16 = metrics(dp).back().at("comm_bytes_per_step").get<double>();
  const double b32 = metrics(d32).back().at("comm_bytes_per_step").get<double>();
  EXPECT_NEAR(b16 / b32, 0.5, 0.01);
  // ZeRO-1 really shards: each of 2 ranks holds half the fp32 master and moments, and the
  // model's full fp32 masters are gone (bf16 compute): 6 bytes per parameter fewer through the
  // steps. Its checkpoints write each rank's shard as it is (nothing is gathered), so the
  // peak drops too (asserted by at least 1 B/param). The gradient buckets (4 B/param here)
  // count in both.
  const json s_dp = json::parse(slurp(dp / "summary.json")),
             s_z = json::parse(slurp(z / "summary.json"));
  const int64_t params = s_dp.at("parameters").get<int64_t>();
  EXPECT_EQ(s_dp.at("optimizer_state_bytes_per_rank").get<int64_t>(), 12 * params);
  EXPECT_NEAR(s_z.at("optimizer_state_bytes_per_rank").get<double>(), 6.0 * params, 12);
  EXPECT_NEAR(s_z.at("master_bytes_per_rank").get<double>(), 2.0 * params, 4);
  EXPECT_LE(s_z.at("peak_tensor_bytes").get<int64_t>(),
            s_dp.at("peak_tensor_bytes").get<int64_t>() - params);
  // split16: the master's 2 low bytes beside the bf16 weight, and the moments.
  EXPECT_EQ(json::parse(slurp(s16 / "summary.json")).at("optimizer_state_bytes_per_rank"),
            10 * params);
}

// fp16 with a loss scale far too high: the early steps overflow. The found-Inf verdict comes
// from the reduced gradients (all-reduced from the shards under ZeRO), so both ranks skip the same
// steps and end with the same scale; fp16 on the wire overflows like the fp16 backward does.
TEST(Dist, RanksSkipTheSameStepsAndKeepOneScale) {
  SKIP_WITHOUT_MPIRUN();
  for (int zero : {0, 1, 3}) {
    const fs::path out = fresh_dir(fmt::format("fp16z{}", zero));
    const fs::path rep = fresh_dir(fmt::format("fp16z{}rep", zero));
    fs::create_directories(rep);
    run_ranks(2, {{"out", out.string()},
                  {"precision", "fp16"},
                  {"allreduce", "compute"},
                  {"zero", zero},
                  {"scale_init", 1e30},
                  {"report_dir", rep.string()}});
    const json r0 = json::parse(slurp(rep / "rank0.json")),
               r1 = json::parse(slurp(rep / "rank1.json"));
    EXPECT_GT(r0.at("skipped_steps").get<int64_t>(), 0) << "zero " << zero;
    EXPECT_LT(r0.at("skipped_steps").get<int64_t>(), 10) << "zero " << zero;
    EXPECT_EQ(r0.at("skipped_steps"), r1.at("skipped_steps")) << "zero " << zero;
    EXPECT_EQ(r0.at("final_loss_scale"), r1.at("final_loss_scale")) << "zero " << zero;
    EXPECT_EQ(r0.at("final_train_loss"), r1.at("final_train_loss")) << "zero " << zero;
    // The skipped steps are named in the metrics with the offending parameter.
    bool named = false;
    for (const auto& m : metrics(out))
      if (m.contains("skip_reason"))
        named |= m["skip_reason"].get<std::string>().find("'") != std::string::npos;
    EXPECT_TRUE(named);
  }
}

// A checkpoint written by 2 ranks (ZeRO: one shard file per rank) resumes on 1 rank, and the
// reverse, each landing on the uninterrupted single-process trajectory.
TEST(Dist, CheckpointsResumeAcrossRankCounts) {
  SKIP_WITHOUT_MPIRUN();
  const fs::path ref = fresh_dir("ckref"), a = fresh_dir("ck21"), b = fresh_dir("ck12");
  run_local({{"out", ref.string()}, {"steps", 12}});
  // 2 ranks (ZeRO-1) for 6 steps, then 1 rank to 12.
  run_ranks(2, {{"out", a.string()}, {"steps", 6}, {"zero", 1}});
  ASSERT_EQ(list_checkpoints(a).size(), 1u);
  run_local({{"out", a.string()}, {"steps", 12}, {"resume", true}});
  // 1 rank for 6 steps, then 2 ranks (ZeRO-1: the shards are sliced from the full state).
  run_local({{"out", b.string()}, {"steps", 6}});
  run_ranks(2, {{"out", b.string()}, {"steps", 12}, {"resume", true}, {"zero", 1}});
  // 2 ranks without ZeRO for 6 steps (one file), then 1 rank with ZeRO-1.
  const fs::path c = fresh_dir("ck21z");
  run_ranks(2, {{"out", c.string()}, {"steps", 6}});
  run_local({{"out", c.string()}, {"steps", 12}, {"resume", true}, {"zero", 1}});
  expect_close(losses(a), losses(ref), 1e-5, "2 ranks ZeRO-1 -> 1 rank");
  expect_close(losses(b), losses(ref), 1e-5, "1 rank -> 2 ranks ZeRO-1");
  expect_close(losses(c), losses(ref), 1e-5, "2 ranks -> 1 rank ZeRO-1");
  // ZeRO-2 (sharded too): 2 ranks at stage 2, then 1 rank without ZeRO, and back.
  const fs::path d = fresh_dir("ck21z2"), e = fresh_dir("ck12z2");
  run_ranks(2, {{"out", d.string()}, {"steps", 6}, {"zero", 2}});
  run_local({{"out", d.string()}, {"steps", 12}, {"resume", true}});
  run_local({{"out", e.string()}, {"steps", 6}});
  run_ranks(2, {{"out", e.string()}, {"steps", 12}, {"resume", true}, {"zero", 2}});
  expect_close(losses(d), losses(ref), 1e-5, "2 ranks ZeRO-2 -> 1 rank");
  expect_close(losses(e), losses(ref), 1e-5, "1 rank -> 2 ranks ZeRO-2");
  // Across stages on the same ranks: 2 ranks at stage 2 for 6 steps, then stage 1 to 12, is
  // an uninterrupted 2-rank ZeRO-1 run bit for bit (one micro-batch: stage 2 sums what stage
  // 1 sums), each rank reading its pieces from the shards.
  const fs::path z1 = fresh_dir("ckz1"), f = fresh_dir("ck22z1");
  run_ranks(2, {{"out", z1.string()}, {"steps", 12}, {"zero", 1}});
  run_ranks(2, {{"out", f.string()}, {"steps", 6}, {"zero", 2}});
  ASSERT_TRUE(fs::is_directory(list_checkpoints(f).front()));
  run_ranks(2, {{"out", f.string()}, {"steps", 12}, {"resume", true}, {"zero", 1}});
  EXPECT_EQ(losses(f), losses(z1)) << "2 ranks ZeRO-2 -> 2 ranks ZeRO-1";
  // 2 shards re-cut into 4 (the new pieces begin inside the old files).
  const fs::path g = fresh_dir("ck24");
  run_ranks(2, {{"out", g.string()}, {"steps", 6}, {"zero", 1}});
  run_ranks(4, {{"out", g.string()}, {"steps", 12}, {"resume", true}, {"zero", 2}});
  expect_close(losses(g), losses(ref), 1e-5, "2 ranks ZeRO-1 -> 4 ranks ZeRO-2");
  // ZeRO-3, whose shards are each unit's even split (not one slice of the flat space): 2 ranks
  // at stage 3 resumed at stage 3 is the uninterrupted stage-3 run bit for bit (the compute
  // weights come back from the shards' fp32 masters); resumed on 1 rank without ZeRO, and
  // 1 rank resumed on 4 ranks at stage 3, within 1e-5.
  const fs::path z3 = fresh_dir("ckz3"), h = fresh_dir("ck22z3"), i = fresh_dir("ck21z3"),
                 k = fresh_dir("ck14z3");
  run_ranks(2, {{"out", z3.string()}, {"steps", 12}, {"zero", 3}});
  run_ranks(2, {{"out", h.string()}, {"steps", 6}, {"zero", 3}});
  run_ranks(2, {{"out", h.string()}, {"steps", 12}, {"resume", true}, {"zero", 3}});
  EXPECT_EQ(losses(h), losses(z3)) << "2 ranks ZeRO-3 -> 2 ranks ZeRO-3";
  EXPECT_EQ(losses(z3), losses(z1)) << "ZeRO-3 sums and updates what ZeRO-1 does";
  run_ranks(2, {{"out", i.string()}, {"steps", 6}, {"zero", 3}});
  run_local({{"out", i.string()}, {"steps", 12}, {"resume", true}});
  expect_close(losses(i), losses(ref), 1e-5, "2 ranks ZeRO-3 -> 1 rank");
  run_local({{"out", k.string()}, {"steps", 6}});
  run_ranks(4, {{"out", k.string()}, {"steps", 12}, {"resume", true}, {"zero", 3}});
  expect_close(losses(k), losses(ref), 1e-5, "1 rank -> 4 ranks ZeRO-3");
}

// With ZeRO every rank writes only what it holds: checkpoints/step-N/ holds rank-R-of-N files
// with about 1/N of the fp32 masters and moments each, and a manifest; nothing is gathered to
// rank 0 (rank 1 sends it only its piece list).
TEST(Dist, ShardedCheckpointsHoldEachRanksOwnPieces) {
  SKIP_WITHOUT_MPIRUN();
  for (int stage : {1, 2}) {
    const fs::path out = fresh_dir(fmt::format("shard{}", stage)),
                   rep = fresh_dir(fmt::format("shard{}rep", stage));
    fs::create_directories(rep);
    run_ranks(2, {{"out", out.string()},
                  {"steps", 6},
                  {"checkpoint_every", 3},
                  {"zero", stage},
                  {"report_dir", rep.string()}});
    const int64_t params = json::parse(slurp(out / "summary.json")).at("parameters").get<int64_t>();
    const auto cks = list_checkpoints(out);
    ASSERT_EQ(cks.size(), 2u);  // steps 3 and 6 (the last 2 kept)
    const fs::path dir = cks.front();
    EXPECT_EQ(dir.filename(), "step-00000006");
    ASSERT_TRUE(fs::is_directory(dir));
    const json mf = json::parse(slurp(dir / "manifest.json"));
    EXPECT_EQ(mf.at("format"), "mixtrain-sharded-checkpoint");
    EXPECT_EQ(mf.at("step"), 6);
    EXPECT_EQ(mf.at("ranks"), 2);
    EXPECT_EQ(mf.at("zero_stage"), stage);
    EXPECT_EQ(mf.at("files"), json({"rank-0-of-2.safetensors", "rank-1-of-2.safetensors"}));
    EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator{}), 3);
    int64_t total = 0;
    for (int r : {0, 1}) {
      const SafetensorsFile f =
          load_safetensors((dir / fmt::format("rank-{}-of-2.safetensors", r)).string());
      int64_t masters = 0, moments = 0;
      for (const auto& n : f.names()) {
        if (n.rfind("param.", 0) == 0) masters += f.get(n).numel();
        if (n.rfind("optim.", 0) == 0 && f.get(n).dtype() == DType::f32)
          moments += f.get(n).numel();
      }
      // The flat split of the parameters: half each, to one element; AdamW's two moments.
      EXPECT_NEAR(static_cast<double>(masters), params / 2.0, 1.0) << "rank " << r;
      EXPECT_EQ(moments, 2 * masters) << "rank " << r;
      EXPECT_EQ(f.contains("loss_scaler.scale"), r == 0);
      total += masters;
    }
    EXPECT_EQ(total, params);
    // Two checkpoints' piece lists (names and ranges, about 3.5 KB each here); a gather of
    // rank 1's half of the masters and moments would be 6 bytes per parameter (~260 KB).
    int64_t gathered = -1;
    std::ifstream(rep / "rank1.gatherv") >> gathered;
    EXPECT_GT(gathered, 0);
    EXPECT_LT(gathered, params / 2) << "stage " << stage;
  }
}

// A sharded checkpoint read back whole is the state itself: resumed on one rank without ZeRO
// and saved again at the same step (a single file), every tensor is the same bits, and
// `export` of either gives the same weights.
TEST(Dist, ShardedCheckpointConsolidatesBitForBit) {
  SKIP_WITHOUT_MPIRUN();
  const fs::path a = fresh_dir("cons2"), b = fresh_dir("cons1");
  run_ranks(2, {{"out", a.string()}, {"steps", 6}, {"zero", 2}});
  fs::copy(a, b, fs::copy_options::recursive);
  run_local({{"out", b.string()}, {"steps", 6}, {"resume", true}});
  const fs::path sharded = list_checkpoints(a).front();
  const fs::path single = list_checkpoints(b).front();
  ASSERT_TRUE(fs::is_directory(sharded));
  ASSERT_EQ(single.filename(), "step-00000006.safetensors");
  expect_same_tensors(read_checkpoint(sharded), read_checkpoint(single));
  const fs::path ea = a / "export.safetensors", eb = b / "export.safetensors";
  const ExportResult ra = export_weights(a.string(), "fp32", ea.string());
  const ExportResult rb = export_weights(b.string(), "fp32", eb.string());
  EXPECT_EQ(ra.source, sharded.string());
  EXPECT_EQ(rb.source, single.string());
  EXPECT_GT(ra.tensors, 0);
  expect_same_tensors(read_checkpoint(ea), read_checkpoint(eb));
  // generate reads the shards too: the same tokens from the same weights.
  GenerateOptions go;
  go.prompt = "The ";
  go.tokens = 16;
  go.temperature = 0;
  const Generated ga = generate(a.string(), go), gb = generate(b.string(), go);
  EXPECT_EQ(ga.checkpoint, sharded.string());
  EXPECT_EQ(ga.tokens, gb.tokens);
  EXPECT_EQ(ga.tokens.size(), 16u);
}

namespace {

struct Recorder : Callbacks {
  int64_t resumed_at = -2;
  std::vector<std::string> warnings;
  void on_start(const RunStart& s) override { resumed_at = s.resumed_at; }
  void on_warning(const std::string& w) override { warnings.push_back(w); }
};

}  // namespace

// A step directory without its manifest (a save killed before rank 0 finished), with a
// truncated shard or without one is skipped with a warning naming it, and the checkpoint
// before it loads.
TEST(Dist, IncompleteShardedCheckpointFallsBackToThePreviousOne) {
  SKIP_WITHOUT_MPIRUN();
  const fs::path a = fresh_dir("inc");
  run_ranks(2, {{"out", a.string()}, {"steps", 6}, {"checkpoint_every", 3}, {"zero", 1}});
  ASSERT_EQ(list_checkpoints(a).size(), 2u);
  for (const std::string fault : {"manifest", "truncated", "missing"}) {
    const fs::path b = fresh_dir("inc" + fault);
    fs::copy(a, b, fs::copy_options::recursive);
    const fs::path dir = b / "checkpoints" / "step-00000006";
    const fs::path shard = dir / "rank-1-of-2.safetensors";
    if (fault == "manifest")
      fs::remove(dir / "manifest.json");
    else if (fault == "truncated")
      fs::resize_file(shard, fs::file_size(shard) / 2);
    else
      fs::remove(shard);
    Recorder rec;
    TrainConfig c = tiny_gpt({{"out", b.string()}, {"steps", 6}, {"resume", true}, {"zero", 1}});
    Trainer(c, &rec).run();
    EXPECT_EQ(rec.resumed_at, 3) << fault;
    ASSERT_EQ(rec.warnings.size(), 1u) << fault;
    const std::string named = fault == "manifest" ? "step-00000006: no manifest.json"
                              : fault == "missing"
                                  ? fmt::format("shard file {} is missing", shard.string())
                                  : shard.string();
    EXPECT_NE(rec.warnings[0].find(named), std::string::npos) << rec.warnings[0];
    // Steps 4 to 6 again, on one rank: the 2-rank run's losses up to fp32 summation order.
    expect_close(losses(b), losses(a), 1e-5, "resumed from step 3 after a bad step 6");
    // The save at step 6 replaced the bad directory with a complete one.
    EXPECT_TRUE(fs::exists(dir / "manifest.json")) << fault;
    EXPECT_NO_THROW(read_checkpoint(dir)) << fault;
  }
}

namespace {

// Starts `cmd` under sh in its own process group; returns the pid.
pid_t spawn(const std::string& cmd) {
  const pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

// Waits up to `limit` seconds; returns the exit status, or -1 on timeout (the group is then
// killed so no test leaves ranks behind).
int wait_for(pid_t pid, double limit, double* took) {
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    int st = 0;
    if (waitpid(pid, &st, WNOHANG) == pid) {
      *took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    if (std::chrono::steady_clock::now() - t0 > std::chrono::duration<double>(limit)) {
      kill(-pid, SIGKILL);
      waitpid(pid, &st, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

pid_t wait_for_rank_pid(const fs::path& dir, int rank, const fs::path& out) {
  for (int i = 0; i < 600; ++i) {  // up to 30 s for start-up and a first checkpoint
    std::ifstream in(dir / fmt::format("rank{}.pid", rank));
    pid_t pid = 0;
    if (in >> pid && !list_checkpoints(out).empty()) return pid;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return 0;
}

// Nothing that was checkpointed is lost: the newest complete checkpoint reads whole (either
// layout). A sharded save the kill interrupted (no manifest yet) is not a checkpoint; resume
// skips it.
void expect_newest_checkpoint_loads(const fs::path& out) {
  for (const auto& f : list_checkpoints(out)) {
    if (fs::is_directory(f) && !fs::exists(f / "manifest.json")) continue;
    EXPECT_NO_THROW(read_checkpoint(f)) << f;
    return;
  }
}

}  // namespace

// A rank killed mid-run: mpirun notices the dead process and ends the job with a non-zero
// status and a message; the checkpoints already written stay loadable.
TEST(Dist, KilledRankEndsTheJob) {
  SKIP_WITHOUT_MPIRUN();
  // ZeRO-3 too: there a rank dies inside a unit's all-gather or reduce-scatter.
  for (int stage : {0, 3}) {
    SCOPED_TRACE(fmt::format("--zero {}", stage));
    const fs::path out = fresh_dir(fmt::format("kill{}", stage)),
                   pids = fresh_dir(fmt::format("killpids{}", stage)), log = out.string() + ".log";
    fs::create_directories(pids);
    const pid_t job = spawn(mpirun_cmd(2,
                                       {{"out", out.string()},
                                        {"steps", 1000000},
                                        {"checkpoint_every", 5},
                                        {"zero", stage},
                                        {"pid_dir", pids.string()}},
                                       log));
    const pid_t victim = wait_for_rank_pid(pids, 1, out);
    ASSERT_GT(victim, 0) << slurp(log);
    kill(victim, SIGKILL);
    double took = 0;
    const int rc = wait_for(job, 60, &took);
    ASSERT_NE(rc, -1) << "the job did not end within 60 s of the kill\n" << slurp(log);
    EXPECT_NE(rc, 0);
    const std::string text = slurp(log);
    EXPECT_TRUE(text.find("signal 9") != std::string::npos ||
                text.find("rank 0 of 2: ") != std::string::npos)
        << text;
    expect_newest_checkpoint_loads(out);
  }
}

// A rank that hangs (SIGSTOP: alive, silent) is caught by the collective deadline
// (--comm-timeout 3): the waiting rank's CommError names the collective, and its exit ends
// the job.
TEST(Dist, HungRankHitsTheCollectiveDeadline) {
  SKIP_WITHOUT_MPIRUN();
  for (int stage : {0, 3}) {
    SCOPED_TRACE(fmt::format("--zero {}", stage));
    const fs::path out = fresh_dir(fmt::format("hang{}", stage)),
                   pids = fresh_dir(fmt::format("hangpids{}", stage)), log = out.string() + ".log";
    fs::create_directories(pids);
    const pid_t job = spawn(mpirun_cmd(2,
                                       {{"out", out.string()},
                                        {"steps", 1000000},
                                        {"checkpoint_every", 5},
                                        {"comm_timeout", 3.0},
                                        {"zero", stage},
                                        {"pid_dir", pids.string()}},
                                       log));
    const pid_t victim = wait_for_rank_pid(pids, 1, out);
    ASSERT_GT(victim, 0) << slurp(log);
    kill(victim, SIGSTOP);
    double took = 0;
    const int rc = wait_for(job, 60, &took);
    kill(victim, SIGKILL);  // in case mpirun left it stopped
    ASSERT_NE(rc, -1) << "the job did not end within 60 s\n" << slurp(log);
    EXPECT_NE(rc, 0);
    const std::string text = slurp(log);
    EXPECT_NE(text.find("did not complete within 3 s"), std::string::npos) << text;
    // The collective is named: under ZeRO-3 mostly a unit's all-gather or reduce-scatter, or
    // a checkpoint's gather of piece lists when the stop lands in a save.
    bool named = false;
    for (const char* c :
         {"allgatherv", "alltoallv", "gatherv", "allreduce", "broadcast", "barrier"})
      named = named || text.find(c) != std::string::npos;
    EXPECT_TRUE(named) << text;
    expect_newest_checkpoint_loads(out);
  }
}
