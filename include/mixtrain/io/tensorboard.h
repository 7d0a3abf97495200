// TensorBoard event files: scalars and histograms written in TensorBoard's own format
// (TFRecord-framed `Event` protobufs), so `tensorboard --logdir RUN` shows a run with no
// TensorFlow or Python on the training side.
//
//   io::EventWriter tb("runs/x/tensorboard");       // events.out.tfevents.<time>.<host>
//   tb.scalar("loss", step, 2.31);
//   tb.flush();                                     // a killed run keeps what was flushed
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace mixtrain::io {

/// TensorBoard's HistogramProto: bucket[i] counts values in (bucket_limit[i-1], bucket_limit[i]].
struct Histogram {
  double min = 0, max = 0, num = 0, sum = 0, sum_squares = 0;
  std::vector<double> bucket_limit, bucket;
};

class EventWriter {
 public:
  /// Creates `dir` and a new event file in it (an existing file is never appended to: a resumed
  /// run adds a file, and TensorBoard merges the files of a folder). IOError names the path.
  explicit EventWriter(const std::string& dir);
  /// A SessionLog START at `step`: TensorBoard drops the events of earlier files at this step
  /// and later (a run killed after its last checkpoint and resumed from it logs them again).
  void session_start(int64_t step);
  void scalar(const std::string& tag, int64_t step, double value);
  /// `description`: markdown TensorBoard shows beside the chart (SummaryMetadata).
  void histogram(const std::string& tag, int64_t step, const Histogram& h,
                 const std::string& description = "");
  /// Writes the buffered records through to the file.
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_event(int64_t step, const std::string& summary);
  std::string path_;
  std::ofstream out_;
};

}  // namespace mixtrain::io
