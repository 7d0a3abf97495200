// Data-parallel training on top of dist/comm.h: bucketed gradient reduction (fp32 or compute
// dtype on the wire, summed in fp32 on arrival, optionally started during the backward pass),
// ZeRO-1 (fp32 master and moments sharded across ranks: reduce-scatter, the real optimizer
// updates this rank's shard, all-gather the compute-dtype weights), ZeRO-2 (the fp32
// gradients sharded too: every micro-batch's gradients are reduce-scattered into the owner's
// shard as backward finishes them, and released) and ZeRO-3, which is FSDP (the compute-dtype
// weights sharded too, per unit: each unit's are all-gathered before its forward and again
// before its backward, and released after).
//
// The precision roles, named as FSDP2's MixedPrecisionPolicy names them: the param dtype (what
// a unit's weights are all-gathered in) is each parameter's compute dtype (fp32 for
// --fp32-modules units); the reduce dtype is `reduce_dtype` (what gradients travel in; they are
// always summed in fp32 on arrival); the output dtype is the compute dtype of the policy in force.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mixtrain/dist/comm.h"
#include "mixtrain/nn/module.h"
#include "mixtrain/nn/parameter.h"
#include "mixtrain/optim/optimizer.h"
#include "mixtrain/tensor.h"

namespace mixtrain::dist {

struct DataParallelOptions {
  /// ZeRO stage: 0, 1 (optimizer state), 2 (and gradients) or 3 (and weights: FSDP)
  int zero = 0;
  /// FSDP2's reduce dtype: f32, bf16 or f16, gradient elements on the wire (summed in fp32)
  DType reduce_dtype = DType::f32;
  int64_t bucket_bytes = 4 << 20;  ///< gradient bucket (wire bytes), whole parameters
  bool overlap = false;            ///< start a bucket's reduction from the backward pass
  /// ZeRO-3: release a unit's gathered weights after its forward (gathered again for its
  /// backward); false keeps them from the forward to the end of the unit's backward.
  bool reshard_after_forward = true;
  /// ZeRO-3: start the next unit's all-gather (forward order, reversed in backward) while the
  /// current one computes.
  bool prefetch = true;
  // the optimizer (optim::make_optimizer's arguments)
  std::string optimizer = "adamw";
  double lr = 1e-3, weight_decay = 0.0, momentum = 0.9;
  optim::CommonOptions common;
};

/// Bytes of optimizer-owned fp32 state one rank holds.
struct StateBytes {
  int64_t master = 0;   ///< fp32 master weights this rank owns (with an fp32 compute dtype
                        ///< they are the compute weights themselves)
  int64_t moments = 0;  ///< optimizer moments (Adam m, v; momentum; RMSProp averages)
  int64_t total() const { return master + moments; }
};

/// What one rank holds of the model's training state at a step's peak, by part: the compute
/// weights (every rank holds them all up to ZeRO-2; with ZeRO-3 its shard plus the most ever
/// gathered at once), the fp32 gradients it keeps (the model's; its shard with ZeRO-2; with
/// ZeRO-3 its shard plus the most ever held unreduced at once, a unit's), the fp32 masters held
/// apart from the weights (none when the weights are fp32: they are the masters) with any
/// 16-bit master auxiliaries, and the moments.
struct ModelStateBytes {
  int64_t weights = 0, gradients = 0, master = 0, moments = 0;
  int64_t gathered_weights = 0;     ///< of weights: ZeRO-3's peak of gathered units
  int64_t unreduced_gradients = 0;  ///< of gradients: ZeRO-3's peak of a unit's before reduction
  int64_t total() const { return weights + gradients + master + moments; }
};

class DataParallel {
 public:
  /// Over every parameter of `model`; with ZeRO-3 its units are the root's children that hold
  /// parameters (a GPT block, an embedding, the head; an MLP's layers), plus the root's own
  /// parameters as one unit. The model must outlive this object.
  DataParallel(nn::Module& model, DataParallelOptions opt);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  /// ZeRO on (stage 1, 2 or 3): the optimizer state is sharded.
  bool zero() const { return opt_.zero > 0; }
  int zero_stage() const { return opt_.zero; }
  DType reduce_dtype() const { return opt_.reduce_dtype; }

  /// The optimizer the trainer drives through the loss scaler. Without ZeRO: the ordinary one
  /// over every parameter (the reduced gradients are identical on every rank). With ZeRO-1:
  /// the same optimizer class over this rank's shard — one shard parameter per piece of a
  /// model parameter inside the rank's flat range, holding the piece's fp32 master, a view of
  /// its compute weight and its reduced fp32 gradient — so the shard update runs the same
  /// fused kernels; the model's own fp32 masters are released (16-bit compute). ZeRO-3 on
  /// several ranks: the shard's compute weights are this rank's part of each unit's flat weight
  /// buffer, the model's weights become views of the unit buffers (resident only while
  /// gathered), and the units' hooks are installed. Call once, after any per-module precision
  /// override is set.
  std::unique_ptr<optim::Optimizer> make_optimizer();

  /// Before each micro-batch's backward; `last`: the accumulation boundary. With overlap on,
  /// the last backward (ZeRO-2: every backward) starts each bucket's reduce-scatter once all
  /// its gradients are final.
  void before_backward(bool last);
  /// After each micro-batch's backward but the last (which reduce_gradients() finishes).
  /// ZeRO-2: reduces this micro-batch's gradients into the shard (fp32 sums accumulate there
  /// over the micro-batches) and releases them; otherwise nothing (gradients accumulate
  /// unsharded, in the model, and are reduced once).
  void after_backward();
  /// After the last backward: finishes every bucket. Without ZeRO every rank ends with the
  /// same summed gradients (bit for bit); with ZeRO the shard optimizer's gradients hold this
  /// rank's fp32 sums and reduced_stats() the global verdict. The 1/N of the mean is folded
  /// into the backward seed.
  void reduce_gradients();
  /// ZeRO-1: the global found-Inf/NaN verdict, first offending parameter and sum of squares
  /// (multiplier 1) of the reduced gradients, for LossScaler::unscale(opt, stats).
  const optim::GradStats& reduced_stats() const { return stats_; }
  /// ZeRO-1 and 2, after the loss scaler's step: all-gathers the compute-dtype weights each
  /// rank updated (nothing when the step was skipped; ZeRO-3 gathers a unit when it runs).
  void after_step(const optim::StepResult& r);
  /// Clears the model's gradients (with ZeRO the optimizer only knows its shard's) and, with
  /// ZeRO-2, the shard's accumulated ones.
  void zero_grad();
  /// Bytes of fp32 gradient this rank keeps between micro-batches and until the update: the
  /// model's gradients (stages 0 and 1), its shard of them (stage 2).
  int64_t gradient_bytes() const;

  /// Mean seconds per step spent in reduce_gradients() and after_step() since the last call:
  /// waiting for collectives, packing, fp32 sums, the all-gather (the optimizer not included).
  double take_comm_seconds() {
    const double t = comm_seconds_ / static_cast<double>(std::max<int64_t>(1, comm_steps_));
    comm_seconds_ = 0;
    comm_steps_ = 0;
    return t;
  }

  /// fp32 master and moment bytes this rank holds (`opt`: what make_optimizer() returned).
  StateBytes state_bytes(const optim::Optimizer& opt) const;
  /// The model state this rank holds, by part (`opt`: what make_optimizer() returned).
  ModelStateBytes model_state_bytes(const optim::Optimizer& opt) const;

  // ---- Sharded checkpoints (src/dist/sharded_state.cpp): each rank saves and loads only the
  // pieces it holds; nothing is gathered.
  /// Every parameter's full compute weight is on every rank (stages 0 to 2).
  bool full_weights_resident() const { return opt_.zero < 3; }
  /// A piece of a parameter this rank holds, and the checkpoint tensors that describe it.
  struct StatePiece {
    std::string param;           ///< the parameter's name
    int64_t begin = 0, end = 0;  ///< element range of the flattened parameter
    /// "param.<name>" (the fp32 master) and "optim.<name>.<buf>", each 1-d of end - begin
    std::vector<std::string> tensors;
  };
  /// ZeRO: this rank's pieces (at most one per parameter), in parameter order.
  std::vector<StatePiece> state_pieces(const optim::Optimizer& opt) const;
  /// ZeRO: this rank's state under the names state_pieces() lists (views of the fp32 masters
  /// and moments, 1-d), then "optim.step" and "optim.rng_step". No collective.
  std::vector<std::pair<std::string, Tensor>> shard_state(const optim::Optimizer& opt) const;
  /// ZeRO resume, any rank count and stage having written the checkpoint: `pieces` holds the
  /// tensors state_pieces() names (1-d fp32) plus "optim.step" and "optim.rng_step"; `full` the
  /// full fp32 master of every parameter by name, needed when full_weights_resident() (the
  /// compute weights are written from it), ignored otherwise. Throws IOError/ShapeError naming
  /// a missing or mis-shaped tensor before changing anything. No collective.
  void load_shard_state(optim::Optimizer& opt,
                        const std::vector<std::pair<std::string, Tensor>>& pieces,
                        const std::map<std::string, Tensor>& full);

 private:
  struct Piece {
    size_t param;
    int64_t begin, end;  ///< element range within the parameter
    int64_t flat;        ///< its first element's flat index (over all parameters)
  };
  struct Bucket {
    int64_t a, b;                 ///< flat range (whole parameters)
    size_t p0, p1;                ///< parameters [p0, p1)
    std::vector<int64_t> region;  ///< size()+1 flat edges: rank j sums [region[j], region[j+1])
    int64_t pending = 0;          ///< parameters whose gradient is not final yet (overlap)
    bool launched = false;
    bool summed = false;  ///< its reduce-scatter is done and summed
    /// 1-d wire-dtype tensors on the collectives' device: the gradient once in the wire dtype
    /// plus N copies of this rank's region. Kept between steps (as PyTorch DDP's buckets)
    /// unless the gradients are sharded (ZeRO-2 and 3 release them after each reduction).
    Tensor send, recv;
    std::vector<int64_t> sb, so, rb, ro;  ///< byte counts and offsets per rank
    Request rs = 0, ag = 0;               ///< reduce-scatter (alltoallv), then all-gather (no ZeRO)
  };
  /// A ZeRO-3 unit: parameters [p0, p1), flat elements [a, b), one flat weight buffer of bytes
  /// (each parameter at a 64-byte-aligned offset, in its compute dtype) of which this rank
  /// keeps its region's bytes.
  struct Unit {
    nn::Module* module;
    std::string name;
    size_t p0, p1;
    int64_t a, b;
    size_t bucket;               ///< its gradients' bucket (the same parameters)
    std::vector<int64_t> pbyte;  ///< per parameter: its byte offset in the buffer
    std::vector<int64_t> edge;   ///< size()+1: byte edges of the ranks' regions
    std::vector<int64_t> bytes;  ///< allgatherv arguments: edge differences
    Tensor full;                 ///< u8 buffer; its storage is resident only while gathered
    Tensor shard;                ///< u8, kept: this rank's region (after `lead` pad bytes)
    int64_t lead = 0;            ///< edge[rank] % 64: keeps the shard's views aligned as in full
    enum class State { sharded, gathering, gathered } state = State::sharded;
    Request ag = 0;
    bool backward_done = false;  ///< this micro-batch's backward finished its gradients
  };
  std::vector<Piece> pieces_in(int64_t a, int64_t b) const;
  /// ZeRO-3 over several ranks: weights are sharded per unit.
  bool sharded_weights() const { return opt_.zero == 3 && size_ > 1; }
  void shard_weights();
  int64_t unit_byte_of(const Unit& u, int64_t e) const;
  void start_gather(Unit& u);
  void finish_gather(Unit& u);
  void release(Unit& u);
  void release_all();
  void pre_forward(size_t u);
  void post_forward(size_t u);
  void pre_backward(size_t u);
  /// Where flat element e (owned by this rank) lives in grad_shard_.
  int64_t shard_offset(int64_t e) const;
  void launch(Bucket& k);
  void sum_received(Bucket& k);
  void reduce_buckets();  ///< launches what is left and finishes every bucket
  /// ZeRO-2 and 3 over several ranks: gradients live in grad_shard_ (one rank keeps the model's).
  bool sharded_grads() const { return opt_.zero >= 2 && size_ > 1; }
  void on_grad_ready(size_t param);
  void reduce_stats();

  nn::Module& model_;
  std::vector<nn::Parameter*> params_;
  DataParallelOptions opt_;
  int rank_ = 0, size_ = 1;
  std::vector<int64_t> flat_begin_;  ///< per parameter, plus the total at the end
  std::vector<char> had_grad_;       ///< per parameter: reached by this micro-batch's backward
  std::vector<char> reached_;        ///< ZeRO-2, per parameter: by any micro-batch of the step
  std::vector<Bucket> buckets_;      ///< in launch order (reverse parameter order)
  std::vector<size_t> bucket_of_;    ///< per parameter
  bool armed_ = false;               ///< overlap: the last backward is running
  // ZeRO-1 and 2: shard [lo_, hi_) of the flat parameter vector (ZeRO-3: each unit's region)
  std::vector<int64_t> shard_lo_;  ///< per rank, plus the total at the end
  int64_t lo_ = 0, hi_ = 0;
  // ZeRO-3
  std::vector<Unit> units_;
  std::vector<size_t> unit_of_;     ///< per parameter
  std::vector<int64_t> unit_goff_;  ///< per unit: its region's offset in grad_shard_
  std::vector<size_t> fwd_order_;   ///< units in the order forward first ran them
  std::vector<int64_t> fwd_pos_;    ///< per unit: its place in fwd_order_, or -1
  int64_t gathered_bytes_ = 0, peak_gathered_bytes_ = 0, peak_unreduced_bytes_ = 0;
  std::vector<Piece> shard_pieces_;
  /// One per piece: master, a view of the weight, a view of the model's (reduced) gradient
  /// (ZeRO-2: of grad_shard_).
  std::vector<nn::Parameter> shard_;
  /// ZeRO-2: this rank's fp32 gradient sums, [lo_, hi_) of the flat vector; the first
  /// micro-batch of a step writes it, later ones add.
  Tensor grad_shard_;
  bool first_micro_ = true;
  optim::GradStats stats_;
  bool made_optimizer_ = false;
  double comm_seconds_ = 0;
  int64_t comm_steps_ = 0;
};

/// Runs fn on rank 0 only; an exception there is rethrown on rank 0 and raised as a
/// ConfigError with the same message on every other rank (no rank is left waiting).
void run_on_root(const std::function<void()>& fn);
/// Rank 0's string, on every rank.
std::string broadcast_string(std::string s);
/// The mean of v over the ranks.
double mean_over_ranks(double v);

}  // namespace mixtrain::dist
