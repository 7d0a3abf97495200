// What users get wrong, table-driven through the CLI: every case must end with a non-zero exit
// status (2: a flag value or a combination of flags is wrong, found before anything is written,
// so the --out folder is never created; 1: a runtime fault, a file or the numerics) and a
// message holding the key words (the flag, file or tensor at fault), never a crash, a hang or a
// silent start.
//
// NaN/Inf in input data: no input path carries floats (Fashion-MNIST is u8 IDX, scaled to
// [0, 1] by the loader; text is bytes), so a non-finite input value cannot reach the model. What
// can happen is a loss that becomes non-finite because of what the user chose (here a huge
// learning rate): that must end with the non-finite-loss abort, not a run that trains on NaN.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "cli_run.h"
#include "mixtrain/data/text.h"
#include "mixtrain/error.h"
#include "mixtrain/random.h"
#include "mixtrain/tensor.h"
#include "train/checkpoint.h"

namespace fs = std::filesystem;

namespace {

using mixtrain::testing::run_cli;

fs::path tmp(const std::string& name) {
  const fs::path p =
      fs::temp_directory_path() / ("mixtrain_bad_" + name + "_" + std::to_string(getpid()));
  fs::remove_all(p);
  return p;
}

const std::string kText = std::string(MIXTRAIN_SOURCE_DIR) + "/tests/data/jargon_sample.txt";
// A tiny GPT on the committed sample; `extra` may override any of the defaulted flags (CLI11
// refuses a flag given twice).
std::string tiny(const std::string& extra = "") {
  std::string a = "--model gpt --layers 1 --quiet ";
  for (const auto& [flag, value] : {std::pair<std::string, std::string>{"--data", "text:" + kText},
                                    {"--width", "32"},
                                    {"--heads", "2"},
                                    {"--context", "16"},
                                    {"--batch", "4"},
                                    {"--eval-batches", "1"}})
    if (extra.find(flag + " ") == std::string::npos) a += flag + " " + value + " ";
  return a + extra + " ";
}

void write(const fs::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary) << bytes;
}

std::string read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A finished 2-step run in `dir` (one checkpoint kept); returns its only checkpoint file.
fs::path make_run(const fs::path& dir, const std::string& extra = "") {
  const auto r =
      run_cli("train " + tiny("--steps 2 --keep-checkpoints 1 " + extra) + "--out " + dir.string());
  EXPECT_EQ(r.status, 0) << r.out;
  const auto files = mixtrain::train::list_checkpoints(dir);
  EXPECT_EQ(files.size(), 1u);
  return files.empty() ? fs::path() : files.front();
}

struct Case {
  std::string what;  // for the failure message
  std::string args;
  int status;
  std::vector<std::string> needles;  // all must appear in the output
};

}  // namespace

TEST(BadInput, EveryCaseGivesAClearMessageAndNonZeroExit) {
  const fs::path dir = tmp("files");
  fs::create_directories(dir);
  // Each case its own output folder (a case that gets as far as creating one must not turn the
  // next case into a "different run" refusal).
  int outs = 0;
  auto O = [&] { return (dir / ("out" + std::to_string(++outs))).string(); };
  // Data files users get wrong.
  write(dir / "empty.txt", "");
  write(dir / "short.txt", "abc");
  write(dir / "corrupt.txt.gz", std::string("\x1f\x8b\x08\x00", 4) + std::string(200, '\x5a'));
  // Run folders: one holding a run, one whose checkpoint has a flipped bit, one truncated, one
  // holding a wider model's checkpoint under this run's config.
  const fs::path held = dir / "held", flipped = dir / "flipped", cut = dir / "cut",
                 wider = dir / "wider", swapped = dir / "swapped";
  make_run(held);
  {
    const fs::path ck = make_run(flipped);
    std::string b = read(ck);
    ASSERT_GT(b.size(), 4096u);
    b[b.size() - 1000] ^= 0x10;  // in the tensor data (the header is at the front)
    write(ck, b);
  }
  {
    const fs::path ck = make_run(cut);
    const std::string b = read(ck);
    write(ck, b.substr(0, b.size() / 2));
  }
  {
    const fs::path mine = make_run(swapped);
    const fs::path theirs = make_run(wider, "--width 48");
    fs::copy_file(theirs, mine, fs::copy_options::overwrite_existing);
  }
  // A run folder where checkpoints/ is a file: found before the first step (the test runs as
  // root, where a read-only folder would still be written).
  const fs::path blocked = dir / "blocked";
  fs::create_directories(blocked);
  write(blocked / "checkpoints", "not a folder");

  auto T = [](const std::string& extra) { return "train " + tiny(extra); };
  const Case cases[] = {
      // data
      {"missing text file",
       "train --model gpt --data text:/no/such/file --out " + O(),
       1,
       {"/no/such/file"}},
      {"empty text file",
       T("--data text:" + (dir / "empty.txt").string() + " --out " + O()),
       1,
       {"empty.txt"}},
      {"text shorter than the context",
       T("--data text:" + (dir / "short.txt").string() + " --out " + O()),
       2,
       {"short.txt", "context"}},
      {"corrupt gzip text",
       T("--data text:" + (dir / "corrupt.txt.gz").string() + " --out " + O()),
       1,
       {"corrupt.txt.gz"}},
      {"a folder as the text file",
       T("--data text:" + dir.string() + " --out " + O()),
       1,
       {dir.string()}},
      {"unknown data spec", "train --data mnist --out " + O(), 2, {"--data", "mnist"}},
      {"mlp on text", "train --model mlp --data text:" + kText + " --out " + O(), 2, {"--data"}},
      {"context longer than the file", T("--context 100000000 --out " + O()), 2, {"context"}},
      {"batch that cannot fit in memory",
       T("--batch 4000000000000 --out " + O()),
       2,
       {"--batch", "memory"}},
      // numbers
      {"lr 0", T("--lr 0 --out " + O()), 2, {"--lr"}},
      {"lr negative", T("--lr -0.1 --out " + O()), 2, {"--lr"}},
      {"lr nan", T("--lr nan --out " + O()), 2, {"--lr"}},
      {"lr inf", T("--lr inf --out " + O()), 2, {"--lr"}},
      {"batch 0", T("--batch 0 --out " + O()), 2, {"--batch"}},
      {"batch negative", T("--batch -4 --out " + O()), 2, {"--batch"}},
      {"grad-accum not dividing the batch", T("--grad-accum 3 --out " + O()), 2, {"--grad-accum"}},
      {"steps negative", T("--steps -1 --out " + O()), 2, {"--steps"}},
      {"epochs 0", T("--epochs 0 --out " + O()), 2, {"--epochs"}},
      {"warmup negative", T("--warmup -5 --out " + O()), 2, {"--warmup"}},
      {"checkpoint-every negative",
       T("--checkpoint-every -1 --out " + O()),
       2,
       {"--checkpoint-every"}},
      {"keep-checkpoints 0", T("--keep-checkpoints 0 --out " + O()), 2, {"--keep-checkpoints"}},
      {"eval-batches 0", T("--eval-batches 0 --out " + O()), 2, {"--eval-batches"}},
      {"dropout 1", T("--dropout 1 --out " + O()), 2, {"--dropout"}},
      {"heads not dividing width", T("--heads 5 --out " + O()), 2, {"heads"}},
      {"width 0", T("--width 0 --out " + O()), 2, {"width"}},
      {"clip-grad negative", T("--clip-grad -1 --out " + O()), 2, {"--clip-grad"}},
      {"weight-decay negative", T("--weight-decay -1 --out " + O()), 2, {"--weight-decay"}},
      {"scale-init 0", T("--scale-init 0 --out " + O()), 2, {"--scale-init"}},
      {"scale-init inf", T("--scale-init inf --out " + O()), 2, {"--scale-init"}},
      {"scale-growth-interval 0",
       T("--scale-growth-interval 0 --out " + O()),
       2,
       {"--scale-growth-interval"}},
      {"static loss scale not a number",
       T("--loss-scale static:abc --out " + O()),
       2,
       {"--loss-scale"}},
      {"static loss scale negative", T("--loss-scale static:-3 --out " + O()), 2, {"--loss-scale"}},
      {"unknown loss-scale mode", T("--loss-scale sometimes --out " + O()), 2, {"--loss-scale"}},
      // precision names
      {"unknown precision", T("--precision fp12 --out " + O()), 2, {"fp12"}},
      {"unknown precision dtype in a policy",
       T("--precision p=f32,c=int8,o=f32 --out " + O()),
       2,
       {"int8"}},
      {"unknown grad dtype", T("--grad-dtype fp8 --out " + O()), 2, {"--grad-dtype"}},
      {"steps 0", T("--steps 0 --out " + O()), 2, {"--steps", "positive"}},
      {"hidden 0", "train --hidden 512,0 --steps 2 --out " + O(), 2, {"--hidden", "positive"}},
      {"negative seed", T("--seed -1 --out " + O()), 2, {"--seed"}},
      {"gpt on fashion-mnist",
       "train --model gpt --data fashion-mnist --out " + O(),
       2,
       {"--data fashion-mnist", "gpt", "token"}},
      {"mlp on tokens",
       "train --model mlp --data tokens:" + (dir / "short.txt").string() + " --out " + O(),
       2,
       {"--data", "mlp"}},
      {"unknown loss", T("--loss hinge --out " + O()), 2, {"--loss"}},
      {"mse on classes",
       "train --loss mse --steps 2 --out " + O(),
       2,
       {"--loss mse", "cross-entropy"}},
      {"negative checkpoint minutes",
       T("--checkpoint-minutes -1 --out " + O()),
       2,
       {"--checkpoint-minutes"}},
      {"a run folder whose checkpoints/ cannot be made",
       T("--steps 2 --out " + blocked.string()),
       1,
       {"checkpoints"}},
      // the command line itself (exit 2)
      {"unknown flag", T("--no-such-flag --out " + O()), 2, {"--no-such-flag"}},
      {"flag without its value", "train --steps", 2, {"--steps"}},
      {"not a number", T("--steps many --out " + O()), 2, {"--steps"}},
      {"unknown model", "train --model rnn", 2, {"--model"}},
      {"unknown optimizer", T("--optimizer lion --out " + O()), 2, {"--optimizer"}},
      {"unknown master mode", T("--master fp8 --out " + O()), 2, {"--master"}},
      {"unknown subcommand", "frobnicate", 2, {"frobnicate"}},
      // run folders and checkpoints
      {"folder holding a different run",
       T("--steps 2 --lr 0.5 --out " + held.string()),
       2,
       {"different run", "lr", "--force"}},
      {"folder holding this run, no --resume",
       T("--steps 2 --out " + held.string()),
       2,
       {"--resume"}},
      {"resume with another width",
       T("--steps 4 --width 48 --resume " + held.string()),
       2,
       {"another run", "--width: the run has 32, given 48"}},
      // fp32: what auto never picks, so the precision differs on every CPU (auto is fp16 on one
      // without bf16 arithmetic).
      {"resume with another precision and lr",
       "train --precision fp32 --lr 0.5 --resume " + held.string(),
       2,
       {"another run", "--precision: the run has", "--lr: the run has"}},
      {"--force with --resume",
       "train --force --resume " + held.string(),
       2,
       {"--force", "--resume"}},
      {"resume of a folder with no run",
       T("--steps 2 --resume " + (dir / "nothing").string()),
       2,
       {"no run to resume"}},
      {"--resume and --out differ",
       T("--resume " + held.string() + " --out " + O()),
       2,
       {"--resume", "--out"}},
      {"checkpoint with a flipped bit",
       T("--steps 4 --keep-checkpoints 1 --resume " + flipped.string()),
       1,
       {"fails its checksum", "step-00000002.safetensors", "could be loaded"}},
      {"truncated checkpoint",
       T("--steps 4 --keep-checkpoints 1 --resume " + cut.string()),
       1,
       {"step-00000002.safetensors", "could be loaded"}},
      {"checkpoint of a wider model",
       T("--steps 4 --keep-checkpoints 1 --resume " + swapped.string()),
       1,
       {"step-00000002.safetensors", "different run"}},
      {"export past a corrupt checkpoint to none",
       "export " + cut.string() + " --out " + (dir / "x.safetensors").string(),
       1,
       {"step-00000002.safetensors", "could be read"}},
      {"export of a folder with no checkpoint",
       "export /no/such/run --out x.safetensors",
       1,
       {"no checkpoint"}},
      // numerics
      {"a learning rate that blows the loss up",
       T("--steps 30 --lr 1e30 --nonfinite-patience 3 --precision fp32 --force --out " + O()),
       1,
       {"non-finite"}},
      {"fp16 asked of a model whose activations overflow fp16",
       T("--steps 3 --precision fp16 --init-scale 3000 --force --out " + O()),
       1,
       {"fp16 overflow in the forward pass", "65504", "doctor", "bf16"}},
  };
  int tried = 0, clean = 0;
  for (const Case& c : cases) {
    ++tried;
    const auto at = c.args.find("--out ");
    const fs::path out = at == std::string::npos
                             ? fs::path()
                             : fs::path(c.args.substr(at + 6, c.args.find(" ", at + 6) - at - 6));
    const bool existed = !out.empty() && fs::exists(out);
    const auto r = run_cli(c.args);
    bool ok = r.status == c.status;
    EXPECT_EQ(r.status, c.status) << c.what << ": mixtrain " << c.args << "\n" << r.out;
    for (const auto& n : c.needles) {
      const bool has = r.out.find(n) != std::string::npos;
      ok = ok && has;
      EXPECT_TRUE(has) << c.what << ": no '" << n << "' in the output of mixtrain " << c.args
                       << "\n"
                       << r.out;
    }
    // A refused command line writes nothing: the --out it names was not created.
    if (c.status == 2 && !out.empty() && !existed && fs::exists(out)) {
      ok = false;
      ADD_FAILURE() << c.what << ": exit 2 but " << out << " was created";
    }
    // Never a crash: no sanitizer report, no uncaught exception text, no signal.
    for (const char* bad : {"AddressSanitizer", "runtime error", "terminate called", "bad_alloc"})
      if (r.out.find(bad) != std::string::npos) {
        ok = false;
        ADD_FAILURE() << c.what << ": '" << bad << "' in\n" << r.out;
      }
    clean += ok;
  }
  std::printf("bad input: %d cases tried, %d gave a clean error\n", tried, clean);
  RecordProperty("tried", tried);
  RecordProperty("clean", clean);
  // --force starts the different run over instead.
  EXPECT_EQ(run_cli(T("--steps 2 --lr 0.5 --force --out " + held.string())).status, 0);
  fs::remove_all(dir);
}

// Library-level bad sizes: element counts past int64 are ShapeErrors (they were signed
// overflow: UB, and a wrapped count could pass later size checks), and a text batch that can
// never fit in memory is a ConfigError naming the sizes (it was std::bad_alloc, or minutes of
// drawing window starts into an overcommitted vector).
TEST(BadInput, HugeShapesAndBatchesAreClearErrors) {
  using namespace mixtrain;
  const int64_t big = int64_t{1} << 40;
  EXPECT_THROW(shape_numel({big, big}), ShapeError);
  const Tensor t = Tensor::zeros({4, 6}, DType::f32);
  EXPECT_THROW(t.view({big, big, -1}), ShapeError);
  EXPECT_THROW(t.view({-2, 12}), ShapeError);
  EXPECT_EQ(t.view({2, -1}).size(1), 12);

  const ByteTextData d = ByteTextData::from_spec("text:" + kText);
  Rng rng(1);
  try {
    d.sample(TextSplit::train, int64_t{1} << 40, 16, rng);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("memory"), std::string::npos) << e.what();
  }
  EXPECT_THROW(d.sample(TextSplit::train, INT64_MAX / 2, 16, rng), ConfigError);
  EXPECT_EQ(d.sample(TextSplit::train, 3, 16, rng).inputs.size(0), 3);
}
