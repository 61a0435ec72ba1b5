// LoadForecaster: predicts next interval's request rate, mean prompt length and mean output
// length from the per-interval observations. Rate: Holt's linear exponential smoothing with a
// damped trend — a level and a slope, so a ramp (the Azure traces climb and fall over tens of
// minutes) is met one interval early instead of one interval late as with a constant or a plain
// moving-average predictor, and the damping keeps one noisy interval from projecting a runaway
// trend (ARIMA would need far more history than a freshly scaled pool has). The forecast is
// never below the last observation (scale-up must not wait for the smoother to catch up with a
// step). Lengths: plain exponential smoothing (they drift, they do not trend). Not thread-safe.
#pragma once

namespace pdpool::controller::planner {

struct ForecasterSettings {
  double level_alpha = 0.5;    // weight of the newest rate observation in the level
  double trend_beta = 0.3;     // weight of the newest level change in the slope
  double trend_damping = 0.8;  // slope carried into the forecast (φ of damped Holt)
  double length_alpha = 0.3;   // prompt/output length smoothing
};

class LoadForecaster {
 public:
  explicit LoadForecaster(ForecasterSettings settings = {});

  // One interval's observation; NaN lengths (no finished requests) keep the previous ones.
  void Observe(double request_rate, double mean_prompt_tokens, double mean_output_tokens);

  bool has_data() const { return observations_ > 0; }
  // Next interval's request rate (≥ 0, ≥ the last observation).
  double PredictedRate() const;
  double PredictedPromptTokens() const { return prompt_tokens_; }
  double PredictedOutputTokens() const { return output_tokens_; }
  double level() const { return level_; }
  double trend() const { return trend_; }

 private:
  ForecasterSettings settings_;
  int observations_ = 0;
  double level_ = 0;
  double trend_ = 0;
  double last_rate_ = 0;
  double prompt_tokens_ = 0;
  double output_tokens_ = 0;
};

}  // namespace pdpool::controller::planner
