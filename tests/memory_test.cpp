// Step plans (StepMemoryScope, core/memory.cpp): the layout never puts two live buffers on the
// same bytes, later steps are served from the arena, and whatever a step does differently
// (a kept tensor, another shape, another thread, a dropped plan) falls back without corrupting
// a byte or changing a result.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <future>
#include <random>
#include <thread>
#include <vector>

#include "core/memory.h"
#include "core/sanitizers.h"  // defines MIXTRAIN_ASAN
#include "mixtrain/tensor.h"
#include "mixtrain/train/bench_step.h"
#include "mixtrain/train/trainer.h"
#include "train_fixtures.h"
#if defined(MIXTRAIN_ASAN)
#include <sanitizer/asan_interface.h>
#endif

using namespace mixtrain;

namespace {

constexpr int64_t kMiB = int64_t{1} << 20;

// Peak of bytes alive at once over the intervals (an end frees before a start at the same time).
size_t live_peak(const std::vector<memory::Interval>& iv) {
  std::vector<std::pair<int64_t, int64_t>> ev;
  for (const auto& v : iv) {
    ev.emplace_back(v.start, static_cast<int64_t>(v.size));
    ev.emplace_back(v.end, -static_cast<int64_t>(v.size));
  }
  std::sort(ev.begin(), ev.end());
  int64_t now = 0, peak = 0;
  for (const auto& [t, d] : ev) peak = std::max(peak, now += d);
  return static_cast<size_t>(peak);
}

void expect_no_live_overlap(const std::vector<memory::Interval>& iv, const std::vector<size_t>& off,
                            size_t arena) {
  ASSERT_EQ(off.size(), iv.size());
  for (size_t i = 0; i < iv.size(); ++i) {
    EXPECT_LE(off[i] + iv[i].size, arena) << i;
    for (size_t j = i + 1; j < iv.size(); ++j) {
      const bool in_time = iv[i].start < iv[j].end && iv[j].start < iv[i].end;
      const bool in_space = off[i] < off[j] + iv[j].size && off[j] < off[i] + iv[i].size;
      EXPECT_FALSE(in_time && in_space) << "buffers " << i << " and " << j << " share bytes";
    }
  }
}

// Writes a pattern that depends on `seed` into t and returns its checksum.
uint64_t stamp(Tensor& t, uint32_t seed) {
  auto* p = static_cast<uint32_t*>(t.raw_data());
  const int64_t n = t.numel() * static_cast<int64_t>(dtype_size(t.dtype())) / 4;
  uint64_t sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += p[i] = seed * 2654435761u + static_cast<uint32_t>(i);
  return sum;
}
uint64_t checksum(const Tensor& t) {
  const auto* p = static_cast<const uint32_t*>(t.raw_data());
  const int64_t n = t.numel() * static_cast<int64_t>(dtype_size(t.dtype())) / 4;
  uint64_t sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += p[i];
  return sum;
}

// A step-like pattern: buffers of several sizes, some alive across others (the "activations"),
// some freed at once (the temporaries); returns a checksum of what it computed.
uint64_t fake_step(int64_t scale = 1) {
  uint64_t out = 0;
  std::vector<Tensor> kept;
  for (int layer = 0; layer < 4; ++layer) {
    Tensor tmp = Tensor::empty({scale * 3 * kMiB / 4}, DType::f32);  // 3 MiB, dies at once
    stamp(tmp, layer);
    Tensor act = Tensor::empty({scale * kMiB}, DType::bf16);  // 2 MiB, kept for "backward"
    out += stamp(act, 100 + layer) + checksum(tmp);
    kept.push_back(act);
  }
  while (!kept.empty()) {
    Tensor grad = Tensor::empty({scale * kMiB / 2}, DType::f32);  // 2 MiB
    out += stamp(grad, 7) + checksum(kept.back());
    kept.pop_back();
  }
  return out;
}

struct PlansOn {
  PlansOn() { memory::set_step_plans_enabled(true); }
  ~PlansOn() { memory::set_step_plans_enabled(true); }
};

}  // namespace

TEST(MemoryPlan, PlaceIntervalsNeverPutsTwoLiveBuffersOnTheSameBytes) {
  std::mt19937 rng(1);
  for (int round = 0; round < 20; ++round) {
    std::vector<memory::Interval> iv(60);
    for (auto& v : iv) {
      v.start = static_cast<int64_t>(rng() % 100);
      v.end = v.start + 1 + static_cast<int64_t>(rng() % 40);
      v.size = (1 + rng() % 16) << 16;
    }
    std::vector<size_t> off;
    const size_t arena = memory::place_intervals(iv, off);
    expect_no_live_overlap(iv, off, arena);
    EXPECT_GE(arena, live_peak(iv));
  }
}

TEST(MemoryPlan, PlaceIntervalsReachesTheLivePeakOnAStepShape) {
  // Activations kept through the forward and freed in reverse, with a temporary of another
  // size beside each: reuse by size would hold both sizes' peaks, the layout only the sum.
  std::vector<memory::Interval> iv;
  int64_t t = 0;
  const int layers = 6;
  std::vector<int64_t> act_start;
  for (int l = 0; l < layers; ++l) {
    iv.push_back({t, t + 2, size_t{3} << 20});  // temporary
    act_start.push_back(t + 1);
    t += 3;
  }
  for (int l = layers - 1; l >= 0; --l) {
    iv.push_back({act_start[l], t + 1, size_t{2} << 20});  // activation, freed by backward
    iv.push_back({t, t + 2, size_t{1} << 20});             // a gradient temporary
    t += 2;
  }
  std::vector<size_t> off;
  const size_t arena = memory::place_intervals(iv, off);
  expect_no_live_overlap(iv, off, arena);
  EXPECT_EQ(arena, live_peak(iv));
}

TEST(StepMemoryScope, LaterStepsComeFromTheArenaWithTheSameResults) {
  PlansOn on;
  memory::set_step_plans_enabled(false);
  const uint64_t want = fake_step();
  memory::set_step_plans_enabled(true);
  for (int step = 0; step < 4; ++step) {
    StepMemoryScope scope;
    EXPECT_EQ(fake_step(), want) << "step " << step;
  }
  const MemoryStats s = memory_stats();
  // Live at once at most: the four 2 MiB activations, one 3 MiB temporary or 2 MiB gradient.
  EXPECT_GT(s.arena_bytes, 0);
  EXPECT_LE(s.arena_bytes, 11 * kMiB);
  EXPECT_EQ(s.step_missed_bytes, 0);
}

TEST(StepMemoryScope, ATensorStillAliveIsNeverHandedOutAgain) {
  PlansOn on;
  {
    StepMemoryScope record;
    Tensor a = Tensor::empty({kMiB}, DType::bf16);
  }
  // The plan has one 2 MiB buffer per step. Keep step 2's: step 3's must go elsewhere.
  Tensor kept;
  uint64_t sum = 0;
  {
    StepMemoryScope step;
    kept = Tensor::empty({kMiB}, DType::bf16);
    sum = stamp(kept, 42);
  }
  EXPECT_EQ(memory_stats().step_missed_bytes, 0);
  {
    StepMemoryScope step;
    Tensor b = Tensor::empty({kMiB}, DType::bf16);
    EXPECT_NE(b.raw_data(), kept.raw_data());
    stamp(b, 9);
  }
  EXPECT_EQ(memory_stats().step_missed_bytes, 2 * kMiB);
  EXPECT_EQ(checksum(kept), sum);
}

TEST(StepMemoryScope, AStepOfOtherShapesFallsBackThenRecordsAgain) {
  PlansOn on;
  const uint64_t want = fake_step(), want2 = fake_step(2);
  for (int step = 0; step < 2; ++step) {
    StepMemoryScope scope;
    fake_step();
  }
  const int64_t arena = memory_stats().arena_bytes;
  ASSERT_GT(arena, 0);
  {
    StepMemoryScope scope;
    EXPECT_EQ(fake_step(2), want2);  // nothing fits: all from the cache
  }
  EXPECT_GT(memory_stats().step_missed_bytes, arena / 8);
  EXPECT_EQ(memory_stats().arena_bytes, 0);  // dropped: the next step records
  for (int step = 0; step < 2; ++step) {
    StepMemoryScope scope;
    EXPECT_EQ(fake_step(2), want2);
  }
  EXPECT_GT(memory_stats().arena_bytes, arena);
  EXPECT_EQ(memory_stats().step_missed_bytes, 0);
  {
    StepMemoryScope scope;
    EXPECT_EQ(fake_step(), want);  // smaller: the plan does not serve other sizes either
  }
}

TEST(StepMemoryScope, OtherThreadsDoNotTakeTheStepsBuffers) {
  PlansOn on;
  for (int step = 0; step < 3; ++step) {
    StepMemoryScope scope;
    Tensor mine = Tensor::empty({kMiB}, DType::f32);
    // A loader thread's batch, allocated while the step runs: not part of the sequence.
    std::thread([] {
      Tensor batch = Tensor::empty({kMiB}, DType::f32);
      stamp(batch, 1);
    }).join();
    Tensor next = Tensor::empty({2 * kMiB}, DType::f32);
    stamp(mine, 2);
    stamp(next, 3);
  }
  EXPECT_EQ(memory_stats().step_missed_bytes, 0);
  EXPECT_GT(memory_stats().arena_bytes, 0);
}

TEST(StepMemoryScope, AScopeOnAnotherThreadDoesNotJoinTheStep) {
  PlansOn on;
  std::promise<void> opened, mine_closed;
  std::thread other;
  {
    StepMemoryScope mine;
    other = std::thread([&] {
      StepMemoryScope theirs;  // mine is open: this one does nothing
      opened.set_value();
      mine_closed.get_future().wait();
      Tensor t = Tensor::empty({kMiB}, DType::f32);
      stamp(t, 3);
    });
    opened.get_future().wait();
    Tensor x = Tensor::empty({kMiB}, DType::f32);
    stamp(x, 4);
  }
  EXPECT_GT(memory_stats().arena_bytes, 0);  // my step's end laid out the plan
  mine_closed.set_value();
  other.join();
}

TEST(StepMemoryScope, AReleasedPlansArenaLivesUntilItsLastTensor) {
  PlansOn on;
  {
    StepMemoryScope record;
    Tensor a = Tensor::empty({kMiB}, DType::f32);
  }
  Tensor kept;
  {
    StepMemoryScope step;
    kept = Tensor::empty({kMiB}, DType::f32);
  }
  const uint64_t sum = stamp(kept, 5);
  release_cached_memory();
  EXPECT_EQ(memory_stats().arena_bytes, 4 * kMiB);  // retired, still mapped
  Tensor other = Tensor::empty({kMiB}, DType::f32);
  stamp(other, 6);
  EXPECT_EQ(checksum(kept), sum);
  kept = Tensor();
  EXPECT_EQ(memory_stats().arena_bytes, 0);
}

// Resident bytes of this process (/proc/self/statm's second field, in pages).
int64_t resident_bytes() {
  std::ifstream f("/proc/self/statm");
  int64_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * static_cast<int64_t>(sysconf(_SC_PAGESIZE));
}

TEST(StepMemoryScope, TrimmingBetweenStepsReturnsTheIdleArenasPagesAndKeepsThePlan) {
  PlansOn on;
  const uint64_t want = fake_step(4);
  uint64_t during_step_kept = 0;
  for (int step = 0; step < 3; ++step) {
    StepMemoryScope scope;
    EXPECT_EQ(fake_step(4), want);
    if (step == 2) {
      // Inside a step nothing is idle: the call does nothing and the step's buffers are intact.
      Tensor live = Tensor::empty({kMiB / 4}, DType::f32);  // 1 MiB: within the plan's slack
      const uint64_t sum = stamp(live, 3);
      trim_idle_memory();
      during_step_kept = checksum(live) == sum;
    }
  }
  EXPECT_TRUE(during_step_kept);
  const int64_t arena = memory_stats().arena_bytes;
  ASSERT_GE(arena, 32 * kMiB);  // fake_step(4): ~44 MiB live at once
  const int64_t before = resident_bytes();
  trim_idle_memory();
  const int64_t after = resident_bytes();
  // The whole arena was touched by the steps and is idle now: its pages leave the RSS (a
  // quarter of slack for whatever else the process maps meanwhile).
  EXPECT_GE(before - after, arena * 3 / 4)
      << "arena " << arena << ", RSS " << before << " -> " << after;
  EXPECT_EQ(memory_stats().cached_bytes, 0);
  // The plan stays: the next steps replay it (zeroed pages fault back in) with the same results.
  for (int step = 0; step < 2; ++step) {
    StepMemoryScope scope;
    EXPECT_EQ(fake_step(4), want);
  }
  EXPECT_EQ(memory_stats().arena_bytes, arena);
  EXPECT_EQ(memory_stats().step_missed_bytes, 0);
}

TEST(StepMemoryScope, FreedArenaBytesArePoisonedUnderAddressSanitizer) {
  // The arena is one mapping ASan does not manage: without poisoning, a use after free of a
  // planned buffer would go unreported.
  if (!kAddressSanitizer) GTEST_SKIP() << "not an AddressSanitizer build";
#if defined(MIXTRAIN_ASAN)
  PlansOn on;
  {
    StepMemoryScope record;
    Tensor a = Tensor::empty({kMiB}, DType::f32);
  }
  StepMemoryScope step;
  Tensor t = Tensor::empty({kMiB}, DType::f32);
  ASSERT_GT(memory_stats().arena_bytes, 0);
  char* p = static_cast<char*>(t.raw_data());
  EXPECT_FALSE(__asan_address_is_poisoned(p));
  EXPECT_FALSE(__asan_address_is_poisoned(p + 4 * kMiB - 1));
  t = Tensor();
  EXPECT_TRUE(__asan_address_is_poisoned(p));
  EXPECT_TRUE(__asan_address_is_poisoned(p + 4 * kMiB - 1));
#endif
}

TEST(StepMemoryScope, ATrainingStepGivesTheSameBitsWithAndWithoutThePlan) {
  // A small GPT through bench_step (the trainer's step): [1024, 512] bf16 is 1 MiB.
  train::BenchStepOptions o;
  o.model = "gpt";
  o.gpt_layers = 2;
  o.gpt_width = 128;
  o.gpt_heads = 4;
  o.gpt_context = 64;
  o.batch = 16;
  o.warmup = 1;
  o.repeats = 2;
  o.peak_seconds = 0;
  o.optimizer_bandwidth = false;
  for (const char* precision : {"fp32", "bf16"}) {
    o.precision = precision;
    o.step_plan = true;
    const train::BenchStepResult planned = train::bench_step(o);
    o.step_plan = false;
    const train::BenchStepResult cached = train::bench_step(o);
    EXPECT_EQ(planned.loss, cached.loss) << precision;
    EXPECT_GT(planned.arena_bytes, 0) << precision;
    EXPECT_EQ(planned.step_missed_bytes, 0) << precision;
    EXPECT_EQ(cached.arena_bytes, 0) << precision;
  }
  memory::set_step_plans_enabled(true);
}

TEST(StepMemoryScope, TheTrainersStepsRunFromThePlan) {
  // Fashion-MNIST MLP at batch 512: [512, 1024] fp32 buffers are 2 MiB. Evaluation between
  // steps is outside the scope and must not make the steps miss.
  PlansOn on;
  const auto out = test::fresh_run_dir("memory", "trainer");
  train::TrainConfig c;
  c.precision = "fp32";
  c.steps = 6;
  c.batch = 512;
  c.hidden = {1024};
  c.eval_every = 2;
  c.log_every = 2;
  c.out = out.string();
  const train::TrainSummary s = train::Trainer(c).run();
  EXPECT_EQ(s.steps, 6);
  EXPECT_GT(memory_stats().arena_bytes, 0);
  EXPECT_EQ(memory_stats().step_missed_bytes, 0);
  std::filesystem::remove_all(out);
}
