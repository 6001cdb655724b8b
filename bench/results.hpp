// Shared by the custom benchmark harnesses: medians of repeated samples, and the machine-readable
// results that bench/report.py turns into the Markdown report and the chart.
//
// When HERALD_BENCH_RESULTS names a file, every harness appends tab-separated rows to it:
//   measure  suite  workload  x  contender  unit  higher|lower  median  min  max  samples
//   goal     suite  goal      measured-ratio  target  met|MISSED|info
// `x` is the workload's parameter (subscribers, patterns) or empty. Harnesses print their own
// human-readable tables as before; the file is only for the report.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace herald_bench {

struct Summary {
  double median = 0;
  double min = 0;
  double max = 0;
  std::size_t samples = 0;
};

/// Median (the mean of the two middle values for an even count), min and max.
inline Summary summarize(std::vector<double> v) {
  if (v.empty()) return {};
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  const double mid = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  return {mid, v.front(), v.back(), n};
}

inline double median(std::vector<double> v) {
  return summarize(std::move(v)).median;
}

/// Appends result rows to $HERALD_BENCH_RESULTS (nothing when it is unset). Tabs and newlines in
/// fields are replaced by spaces so a row is always one line of exactly its columns.
class ResultsFile {
 public:
  ResultsFile() {
    const char* path = std::getenv("HERALD_BENCH_RESULTS");
    if (path != nullptr && *path != '\0') file_ = std::fopen(path, "a");
  }
  ~ResultsFile() {
    if (file_ != nullptr) std::fclose(file_);
  }
  ResultsFile(const ResultsFile&) = delete;
  ResultsFile& operator=(const ResultsFile&) = delete;

  void measure(std::string_view suite, std::string_view workload, std::string_view x,
               std::string_view contender, std::string_view unit, bool higher_is_better,
               const std::vector<double>& samples) {
    if (file_ == nullptr || samples.empty()) return;
    const Summary s = summarize(samples);
    std::fprintf(file_, "measure\t%s\t%s\t%s\t%s\t%s\t%s\t%.6g\t%.6g\t%.6g\t%zu\n",
                 clean(suite).c_str(), clean(workload).c_str(), clean(x).c_str(),
                 clean(contender).c_str(), clean(unit).c_str(),
                 higher_is_better ? "higher" : "lower", s.median, s.min, s.max, s.samples);
  }

  void goal(std::string_view suite, std::string_view what, double measured, std::string_view target,
            bool met) {
    if (file_ == nullptr) return;
    std::fprintf(file_, "goal\t%s\t%s\t%.4g\t%s\t%s\n", clean(suite).c_str(), clean(what).c_str(),
                 measured, clean(target).c_str(), met ? "met" : "MISSED");
  }

  /// A figure shown beside the goals but not judged (verdict "info", target "-").
  void info(std::string_view suite, std::string_view what, double measured) {
    if (file_ == nullptr) return;
    std::fprintf(file_, "goal\t%s\t%s\t%.4g\t-\tinfo\n", clean(suite).c_str(), clean(what).c_str(),
                 measured);
  }

 private:
  static std::string clean(std::string_view s) {
    std::string out(s);
    std::replace_if(
        out.begin(), out.end(), [](char c) { return c == '\t' || c == '\n'; }, ' ');
    return out;
  }

  std::FILE* file_ = nullptr;
};

}  // namespace herald_bench
