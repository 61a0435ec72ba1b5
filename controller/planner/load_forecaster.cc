// LoadForecaster implementation: damped Holt for the rate, EWMA for the lengths.
#include "controller/planner/load_forecaster.h"

#include <algorithm>
#include <cmath>

namespace pdpool::controller::planner {

LoadForecaster::LoadForecaster(ForecasterSettings settings) : settings_(settings) {}

void LoadForecaster::Observe(double request_rate, double mean_prompt_tokens,
                             double mean_output_tokens) {
  if (std::isnan(request_rate)) return;
  request_rate = std::max(0.0, request_rate);
  if (observations_ == 0) {
    level_ = request_rate;
    trend_ = 0;
  } else {
    const double previous_level = level_;
    const double a = settings_.level_alpha;
    const double phi = settings_.trend_damping;
    level_ = a * request_rate + (1 - a) * (previous_level + phi * trend_);
    trend_ = settings_.trend_beta * (level_ - previous_level) +
             (1 - settings_.trend_beta) * phi * trend_;
  }
  last_rate_ = request_rate;
  auto smooth = [&](double* value, double sample) {
    if (std::isnan(sample) || sample < 0) return;
    *value = *value == 0 ? sample
                         : settings_.length_alpha * sample + (1 - settings_.length_alpha) * *value;
  };
  smooth(&prompt_tokens_, mean_prompt_tokens);
  smooth(&output_tokens_, mean_output_tokens);
  ++observations_;
}

double LoadForecaster::PredictedRate() const {
  const double forecast = level_ + settings_.trend_damping * trend_;
  return std::max({0.0, forecast, last_rate_});
}

}  // namespace pdpool::controller::planner
