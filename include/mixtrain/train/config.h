// Everything a training run is configured by; the CLI flags map one to one onto these fields
// (--grad-accum is grad_accum), and the whole config is saved in OUT/config.json and in every
// checkpoint.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mixtrain::train {

struct TrainConfig {
  // what
  std::string model = "mlp";  ///< a registered model (train/model.h): mlp | gpt | yours
  /// a data spec (data/source.h: fashion-mnist[:DIR] | text:PATH | tokens:TRAIN[,VAL] |
  /// npy:X,Y | csv:PATH[,target=COL]); "" = the model's default
  std::string data;
  int64_t vocab = 0;                   ///< tokens: the vocabulary (0: the largest token + 1)
  std::string loss = "auto";           ///< auto | cross-entropy | mse | l1 (auto: from the targets)
  std::string precision = "auto";      ///< fp32 | bf16 | fp16 | fp8 | auto | p=..,c=..,o=..
  std::string loss_scale = "default";  ///< default (from the policy) | dynamic | static:S | none
  std::string optimizer = "adamw";     ///< adamw | adam | sgd | rmsprop
  /// auto | fp32 | bf16-sr | bf16-kahan | split16. auto: split16 when every weight computes
  /// in bf16 and ZeRO is off (optim::auto_master_mode), else fp32; a resumed run keeps its own.
  std::string master = "auto";
  std::vector<std::string> fp32_modules;  ///< sub-modules kept in fp32 (e.g. the head "fc2")
  std::string grad_dtype = "fp32";  ///< fp32 | compute: dtype parameter gradients accumulate in
  // fp8 (--precision fp8, amp/fp8.h)
  std::string fp8_recipe = "delayed";   ///< delayed | current | mxfp8
  int64_t fp8_amax_history = 1024;      ///< delayed: steps of amax history
  std::string fp8_amax_reduce = "max";  ///< delayed: max | most_recent over the history
  int64_t fp8_margin = 0;               ///< delayed and current: scales divided by 2^margin
  /// Sub-modules kept out of fp8 (in bf16). Empty or "auto": the model's edges (Model::input
  /// and Model::head); "auto" in a list adds them; "none": every linear in fp8.
  std::vector<std::string> bf16_modules;
  // how long
  int64_t epochs = 3;  ///< used when steps == 0
  int64_t steps = 0;   ///< optimizer steps; overrides epochs when > 0
  int64_t batch = 128;
  int64_t grad_accum = 1;  ///< micro-batches per optimizer step (batch is split among them)
  // optimizer
  double lr = 1e-3;
  double weight_decay = 0.0;
  double momentum = 0.9;              ///< sgd
  std::string schedule = "constant";  ///< constant | cosine (linear warm-up then cosine)
  int64_t warmup = 0;
  double clip_grad = 0.0;  ///< global-norm clipping, 0 = off
  // loss scaling
  double scale_init = 65536.0;
  int64_t scale_growth_interval = 2000;
  // model shapes
  std::vector<int64_t> hidden = {512, 512};                   ///< mlp
  int64_t layers = 6, width = 384, heads = 6, context = 256;  ///< gpt
  double dropout = 0.0;
  /// gpt: none | blocks | every:N: transformer blocks recomputed in backward (every block, or
  /// blocks 0, N, 2N, ...); gradients are bit-identical, activation memory smaller
  std::string checkpoint_activations = "none";
  // run control
  /// where this process computes: cpu | cuda | cuda:N (N: the GPU; cuda alone: the local rank
  /// under mpirun, else 0). Not part of the run: a checkpoint written on a GPU resumes on the
  /// CPU and back, so config.json does not record it and --resume takes the one given.
  std::string device = "cpu";
  uint64_t seed = 0;
  std::string out;      ///< run folder ("" = runs/<model>-<precision>-<date>-<time>)
  bool resume = false;  ///< continue the run in `out`
  bool force = false;   ///< start a fresh run in an `out` that holds another (never with resume)
  int64_t log_every = 50;
  int64_t eval_every = 0;        ///< 0 = at the end, and after each epoch for examples (not tokens)
  int64_t eval_batches = 50;     ///< tokens: validation batches (of `batch` windows) per evaluation
  int64_t checkpoint_every = 0;  ///< every N steps (0: off)
  double checkpoint_minutes = 10.0;  ///< every M minutes of training (0: off); and at the end
  int64_t keep_checkpoints = 2;
  int64_t diagnose_every = 0;  ///< gradient precision diagnostics every N steps (0 = off)
  /// TensorBoard event files in OUT/tensorboard (rank 0): the logged scalars, and on diagnose
  /// steps per-parameter histograms of log2|gradient| and log2|update| with range fractions
  bool tensorboard = true;
  int64_t nonfinite_patience = 20;  ///< abort after this many consecutive non-finite losses
  /// testing aid: multiplies every initial weight (a model whose fp16 forward overflows)
  double init_scale = 1.0;
  /// testing aid: steps (1-based) whose gradients get a non-finite value written into the
  /// first parameter's gradient (+Inf, or NaN at odd positions of the list) before unscaling
  std::vector<int64_t> inject_nonfinite_grad;
  // data parallel (under mpirun; see include/mixtrain/dist/comm.h)
  /// ZeRO stage: 1 shards the fp32 master and moments, 2 also the gradients, 3 also the
  /// compute weights (FSDP: each unit gathered for its forward and its backward)
  int zero = 0;
  bool reshard_after_forward = true;  ///< ZeRO-3: release a unit's weights after its forward
  bool prefetch = true;               ///< ZeRO-3: gather the next unit while this one computes
  std::string allreduce = "fp32";     ///< fp32 | compute: gradient dtype on the wire
  double comm_timeout = 120.0;        ///< seconds a collective may wait before the job is aborted
  bool overlap_allreduce = false;     ///< start each bucket's reduction during backward
  int64_t bucket_kib = 4096;          ///< gradient bucket size (wire bytes / 1024)
};

}  // namespace mixtrain::train
