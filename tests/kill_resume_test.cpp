// Crash safety: `mixtrain train` killed with SIGKILL at random moments (many of them inside
// checkpoint writes), resumed each time, ends with a checkpoint bit-identical (every tensor:
// masters, optimizer moments, loss scaler) to an uninterrupted run's.
//
// MIXTRAIN_TEST_SLOW_WRITES (src/io/atomic_file.cpp) makes every file write go out in 64 KiB
// pieces with a pause after each, so most of a step's time is spent inside a write and a kill
// at a random moment often lands there; a leftover temp file (.step-*.tmp.*) after a kill proves
// it did (the kill came between the temp file's creation and its rename).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "mixtrain/dist/comm.h"
#include "mixtrain/io/safetensors.h"
#include "train/checkpoint.h"
#include "train_fixtures.h"

namespace fs = std::filesystem;
using namespace mixtrain;

namespace {

fs::path fresh_dir(const std::string& name) { return test::fresh_run_dir("kill", name); }

constexpr int kSteps = 30;
constexpr const char* kSlowWriteUs = "1500";  // per 64 KiB piece: ~10 ms per checkpoint

// A tiny GPT on the committed sample, fp16 (the loss scaler's state is in the checkpoint too)
// with dropout (so is the dropout RNG), a checkpoint after every step.
std::vector<std::string> train_args(const fs::path& out, bool resume) {
  return {MIXTRAIN_BINARY_DIR "/mixtrain",
          "train",
          "--model",
          "gpt",
          "--data",
          std::string("text:") + MIXTRAIN_SOURCE_DIR + "/tests/data/jargon_sample.txt",
          "--layers",
          "1",
          "--width",
          "32",
          "--heads",
          "2",
          "--context",
          "16",
          "--batch",
          "4",
          "--dropout",
          "0.1",
          "--precision",
          "fp16",
          "--steps",
          std::to_string(kSteps),
          "--checkpoint-every",
          "1",
          "--keep-checkpoints",
          "2",
          "--eval-batches",
          "1",
          "--log-every",
          "1",
          "--quiet",
          resume ? "--resume" : "--out",
          out.string()};
}

// Starts the trainer with its output in `log`; returns the pid.
pid_t spawn(const std::vector<std::string>& args, const fs::path& log) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setenv("MIXTRAIN_TEST_SLOW_WRITES", kSlowWriteUs, 1);
    ::setenv("OMP_NUM_THREADS", "1", 1);  // 2-core CI: the test's own timing stays sane
    FILE* f = std::fopen(log.c_str(), "w");
    if (f) {
      ::dup2(fileno(f), 1);
      ::dup2(fileno(f), 2);
    }
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execvp(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

// Waits up to `ms` for the child, or until `stop()` says to stop waiting; returns true (and
// its exit status) if it ended by itself.
template <class Stop>
bool wait_for(pid_t pid, int ms, int* status, Stop stop) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (std::chrono::steady_clock::now() < end && !stop()) {
    int st = 0;
    if (::waitpid(pid, &st, WNOHANG) == pid) {
      *status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}
bool wait_for(pid_t pid, int ms, int* status) {
  return wait_for(pid, ms, status, [] { return false; });
}

int temp_files(const fs::path& out) {
  int n = 0;
  std::error_code ec;
  for (const auto& e : fs::recursive_directory_iterator(out / "checkpoints", ec)) {
    const std::string name = e.path().filename().string();
    n += name.size() > 1 && name[0] == '.' && name.find(".tmp.") != std::string::npos;
  }
  return n;
}

// Sharded saves: step directories without their manifest (a save killed between the ranks'
// files and rank 0's manifest).
std::set<std::string> incomplete_dirs(const fs::path& out) {
  std::set<std::string> dirs;
  for (const auto& c : train::list_checkpoints(out))
    if (fs::is_directory(c) && !fs::exists(c / "manifest.json")) dirs.insert(c.filename().string());
  return dirs;
}

int64_t newest_step(const fs::path& out) {
  const auto files = train::list_checkpoints(out);
  if (files.empty()) return 0;
  return std::stoll(files.front().filename().string().substr(5, 8));
}

std::map<std::string, std::vector<uint8_t>> tensors_of_newest(const fs::path& out) {
  return test::newest_checkpoint_tensors(out);
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// How one kind of job is started and killed.
struct Job {
  std::function<pid_t(const fs::path& out, bool resume, const fs::path& log)> start;
  std::function<void(pid_t)> kill;  ///< SIGKILL, and reap
  bool sharded = false;             ///< ZeRO: step directories, each complete with its manifest
};

// Kills the job `kills` times at random moments (resuming it each time), lets the last
// resume finish, and checks its final checkpoint is bit-identical to an uninterrupted run's.
void kill_and_resume(const Job& job, const int kKills, const std::string& name) {
  const fs::path ref = fresh_dir(name + "ref"), run = fresh_dir(name + "run");
  const fs::path log =
      fs::temp_directory_path() / ("mixtrain_kill_log_" + name + std::to_string(getpid()));
  // The only warning a resume may give: a sharded save killed before its manifest was written
  // left a step directory that cannot load (skipped; the one before it resumes).
  auto unexpected_warnings = [&](const std::string& out) {
    std::string bad;
    std::istringstream in(out);
    for (std::string line; std::getline(in, line);)
      if (line.find("skipping unreadable checkpoint") != std::string::npos &&
          !(job.sharded && line.find("no manifest.json") != std::string::npos))
        bad += line + "\n";
    return bad;
  };

  // The uninterrupted run, timed: it sets the range the kill delays are drawn from.
  const auto t0 = std::chrono::steady_clock::now();
  int status = -1;
  pid_t pid = job.start(ref, false, log);
  ASSERT_TRUE(wait_for(pid, 120000, &status)) << "reference run hung";
  ASSERT_EQ(status, 0) << read_file(log);
  const double ref_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

  // Kill delays drawn so the kills spread over the whole run: uniform in [0, 2d + 60 ms], where
  // d is the time of the steps still to do shared among the kills still to make (the 60 ms
  // cover a start-up). Each attempt resumes from the newest checkpoint that survived.
  std::mt19937 rng(12345);
  const double step_ms = ref_ms / kSteps;
  int kills = 0, mid_write = 0, attempts = 0, no_progress = 0;
  int64_t last = 0;
  while (true) {
    ++attempts;
    ASSERT_LT(attempts, 200) << "the run makes no progress between kills";
    // --out until the run's config.json exists (a kill may land before it is written).
    const bool resume = fs::exists(run / "config.json");
    const auto incomplete_before = incomplete_dirs(run);
    pid = job.start(run, resume, log);
    const bool killing = kills < kKills;
    // Without progress for a few attempts, wait longer (each attempt must get past start-up).
    const double d = step_ms * static_cast<double>(kSteps - last) / (kKills - kills + 1);
    const int ms = static_cast<int>(std::uniform_real_distribution<double>(0.0, 2 * d + 60)(rng) *
                                    (1 + no_progress));
    // Never let the run get within (kills still to make) steps of its end before they are made.
    auto too_far = [&] { return newest_step(run) >= kSteps - (kKills - kills); };
    if (killing && !wait_for(pid, ms, &status, too_far)) {
      job.kill(pid);
      ++kills;
      // A temp file (a resume removes the old ones first), or a step directory this attempt
      // began and did not finish.
      bool cut = temp_files(run) > 0;
      for (const auto& d : incomplete_dirs(run)) cut |= incomplete_before.count(d) == 0;
      mid_write += cut;
      EXPECT_EQ(unexpected_warnings(read_file(log)), "");
      const int64_t now = newest_step(run);
      no_progress = now > last ? 0 : no_progress + 1;
      last = now;
      continue;
    }
    if (!killing) ASSERT_TRUE(wait_for(pid, 120000, &status)) << "final resume hung";
    const std::string out = read_file(log);
    ASSERT_EQ(status, 0) << "attempt " << attempts << ":\n" << out;
    EXPECT_EQ(unexpected_warnings(out), "");
    break;
  }
  EXPECT_GE(kills, kKills);
  // Some kills must have landed inside a checkpoint write, or the test proves less than it says.
  EXPECT_GE(mid_write, 3) << "kills landing mid-write: " << mid_write << " of " << kills;
  EXPECT_EQ(temp_files(run), 0) << "a resume removes the temp files killed saves left";
  EXPECT_TRUE(incomplete_dirs(run).empty()) << "the resumed saves replaced the incomplete ones";
  EXPECT_EQ(newest_step(run), kSteps);
  EXPECT_EQ(fs::is_directory(train::list_checkpoints(run).front()), job.sharded);
  const auto a = tensors_of_newest(ref), b = tensors_of_newest(run);
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(a.size(), b.size());
  int differ = 0;
  for (const auto& [tensor, bytes] : a) {
    auto it = b.find(tensor);
    const bool same = it != b.end() && it->second == bytes;
    differ += !same;
    EXPECT_TRUE(same) << tensor << " differs from the uninterrupted run";
  }
  std::printf(
      "kill/resume (%s): %d SIGKILLs (%d inside a checkpoint write), %d attempts, %d of %zu "
      "tensors differ; reference run %.0f ms\n",
      name.c_str(), kills, mid_write, attempts, differ, a.size(), ref_ms);
  ::testing::Test::RecordProperty("kills", kills);
  ::testing::Test::RecordProperty("kills_mid_write", mid_write);
  fs::remove_all(ref);
  fs::remove_all(run);
  fs::remove(log);
}

// The processes whose parent is `pid` (mpirun's ranks).
std::vector<pid_t> children_of(pid_t pid) {
  std::vector<pid_t> kids;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    const std::string n = e.path().filename().string();
    if (n.empty() || n.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(e.path() / "stat");
    std::string stat;
    std::getline(in, stat);
    const size_t close = stat.rfind(')');  // "pid (comm) state ppid ..."
    if (close == std::string::npos) continue;
    std::istringstream rest(stat.substr(close + 1));
    std::string state;
    pid_t ppid = 0;
    if (rest >> state >> ppid && ppid == pid) kids.push_back(std::stoi(n));
  }
  return kids;
}

}  // namespace

TEST(KillResume, TwentyFourSigkillsThenBitIdenticalWeights) {
  Job job;
  job.start = [](const fs::path& out, bool resume, const fs::path& log) {
    return spawn(train_args(out, resume), log);
  };
  job.kill = [](pid_t pid) {
    ::kill(pid, SIGKILL);
    int st = 0;
    ::waitpid(pid, &st, 0);
  };
  kill_and_resume(job, 24, "single");
}

// The same on 2 ranks with ZeRO-1 (mpirun): each save is every rank's shard file, then rank
// 0's manifest. Both ranks are SIGKILLed at once at random moments; a save cut before its
// manifest leaves an incomplete step directory, which the resume skips and later replaces.
TEST(KillResume, ShardedZeroSavesSurviveSigkills) {
  if (!dist::mpi_built() || std::system("mpirun --version >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "no MPI build or no mpirun on this machine";
  Job job;
  job.sharded = true;
  job.start = [](const fs::path& out, bool resume, const fs::path& log) {
    std::vector<std::string> args{"mpirun",
                                  "--allow-run-as-root",
                                  "--oversubscribe",
                                  "-np",
                                  "2",
                                  "-x",
                                  "OMP_NUM_THREADS",
                                  "-x",
                                  "MIXTRAIN_TEST_SLOW_WRITES"};
    for (const auto& a : train_args(out, resume)) args.push_back(a);
    for (const char* a : {"--zero", "1"}) args.emplace_back(a);
    return spawn(args, log);
  };
  job.kill = [](pid_t pid) {
    // mpirun starts each rank in its own process group: the ranks are found by parent, and
    // killed until mpirun, seeing them die, ends the job (a rank it was still starting is
    // killed on a later pass). mpirun itself last, after 20 s.
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    int st = 0;
    while (::waitpid(pid, &st, WNOHANG) != pid) {
      for (pid_t k : children_of(pid)) ::kill(k, SIGKILL);
      if (std::chrono::steady_clock::now() > end) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &st, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  };
  kill_and_resume(job, 12, "zero");
}
