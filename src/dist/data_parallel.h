// Data-parallel training on top of dist/comm.h: gradient all-reduce (fp32 or compute dtype on
// the wire, summed in fp32 on arrival, bucketed) and ZeRO-1 (fp32 master and moments sharded
// across ranks: reduce-scatter, update the shard, all-gather the compute-dtype weights).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mixtrain/nn/parameter.h"
#include "mixtrain/optim/optimizer.h"
#include "mixtrain/tensor.h"
#include "mixtrain/train/config.h"

namespace mixtrain::dist {

struct DataParallelOptions {
  bool zero = false;
  DType wire = DType::f32;         ///< f32, bf16 or f16: gradient elements on the wire
  int64_t bucket_bytes = 4 << 20;  ///< all-reduce bucket (wire bytes): bounds the extra memory
  // the optimizer, for ZeRO-1's own update (same hyper-parameters as optim::make_optimizer)
  std::string optimizer = "adamw";
  double weight_decay = 0.0, momentum = 0.9;
};

class DataParallel {
 public:
  DataParallel(std::vector<nn::Parameter*> params, DataParallelOptions opt);
  ~DataParallel();

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool zero() const { return opt_.zero; }
  DType wire() const { return opt_.wire; }

  /// ZeRO-1: the optimizer the trainer drives through the loss scaler. It holds one proxy
  /// parameter whose gradient carries the global found-Inf/NaN verdict (so every rank's
  /// scaler skips the same steps and keeps the same scale), and it counts applied steps and
  /// carries the scheduled learning rate; the real update is zero_step() on this rank's shard.
  std::unique_ptr<optim::Optimizer> make_proxy_optimizer(double lr, optim::CommonOptions common);

  /// After backward: sums gradients over ranks (the 1/N average is folded into the backward
  /// seed). Without ZeRO every rank ends with bit-identical gradients (so identical found-Inf
  /// verdicts, norms and updates); with ZeRO this rank keeps the fp32 sum of its shard, the
  /// global Inf/NaN verdict is all-reduced and written into the proxy's gradient. `scale`:
  /// the loss scale the gradients carry.
  void reduce_gradients(float scale);
  /// ZeRO-1, after the loss scaler's step on the proxy: if applied, updates this rank's
  /// shard (clipping to max_norm when > 0) and all-gathers the compute-dtype weights. Fills
  /// r's grad_norm, clip_coef and, for a skipped step, the offending parameter's name.
  void zero_step(optim::StepResult& r, float scale, double max_norm);
  /// ZeRO-1: clears the model's gradients (the proxy optimizer only knows its own).
  void zero_grad();

  /// Mean seconds per step spent in reduce_gradients() and zero_step() (packing, collectives,
  /// sums, the ZeRO update and all-gather) since the last call: what overlap could hide at most.
  double take_comm_seconds() {
    const double t = comm_seconds_ / static_cast<double>(std::max<int64_t>(1, comm_steps_));
    comm_seconds_ = 0;
    comm_steps_ = 0;
    return t;
  }

  /// Bytes of fp32 master + optimizer moments this rank holds (`full`: the ordinary optimizer
  /// when not sharded).
  int64_t optimizer_state_bytes(const optim::Optimizer& full) const;

  /// ZeRO-1 checkpoints (collective): the full optimizer state under the names a plain
  /// Optimizer uses (so a checkpoint resumes with or without ZeRO, on any number of ranks),
  /// and every parameter's fp32 master made current.
  std::vector<std::pair<std::string, Tensor>> gather_state();
  /// ZeRO-1 resume: slices this rank's shard out of the loaded masters (params' `master`) and
  /// the full optimizer state. Throws IOError/ShapeError naming a missing or mis-shaped tensor.
  void load_state(const std::vector<std::pair<std::string, Tensor>>& tensors);

 private:
  struct Piece {
    size_t param;
    int64_t begin, end;  ///< element range within the parameter
    int64_t flat;        ///< its first element's flat index (over all parameters)
  };
  std::vector<Piece> pieces_in(int64_t a, int64_t b) const;
  void pack_grads(int64_t a, int64_t b, float* dst) const;
  void allreduce_bucket(int64_t a, int64_t b);

  std::vector<nn::Parameter*> params_;
  DataParallelOptions opt_;
  int rank_ = 0, size_ = 1;
  std::vector<int64_t> flat_begin_;  ///< per parameter, plus the total at the end
  std::vector<char> had_grad_;       ///< per parameter: reached by this step's backward
  // ZeRO-1 shard [lo_, hi_) of the flat parameter vector, with its fp32 state
  std::vector<int64_t> shard_lo_;  ///< per rank, plus the total at the end
  int64_t lo_ = 0, hi_ = 0;
  std::vector<float> master_, grad_;
  std::vector<float> state_[3];
  std::vector<std::string> state_names_;  ///< buffer name per state slot ("" unused)
  nn::Parameter proxy_param_;
  optim::Optimizer* proxy_ = nullptr;
  double global_sumsq_ = 0;
  double comm_seconds_ = 0;
  int64_t comm_steps_ = 0;
  bool global_finite_ = true;
  std::string first_bad_;
};

/// The trainer's data-parallel engine for cfg (--zero, --allreduce fp32|compute,
/// --comm-timeout), on this process's ranks. Throws ConfigError naming the flag (a ZeRO-1 run
/// with a master-free --master, a micro-batch that the ranks cannot split evenly, ...).
std::unique_ptr<DataParallel> make_data_parallel(const train::TrainConfig& cfg, DType compute,
                                                 std::vector<nn::Parameter*> params);
/// Runs fn on rank 0 only; an exception there is rethrown on rank 0 and raised as a
/// ConfigError with the same message on every other rank (no rank is left waiting).
void run_on_root(const std::function<void()>& fn);
/// Rank 0's string, on every rank.
std::string broadcast_string(std::string s);
/// The mean of v over the ranks.
double mean_over_ranks(double v);

}  // namespace mixtrain::dist
