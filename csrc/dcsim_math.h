// Per-element math shared by the CPU loops and the CUDA kernels, written once.
// Every function here is inline and host+device, so the two backends cannot drift.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DCSIM_HD __host__ __device__ __forceinline__
#else
#define DCSIM_HD inline
#endif

namespace dcsim {

// Neuron models (must match dcsim/ops.py).
enum NeuronMethod : int { kQCFS = 0, kQFFS = 1 };

// Stopping scores (must match dcsim/readout.py).
enum Readout : int { kMaxSoftmax = 0, kEntropy = 1, kMargin = 2 };

// One integrate-and-fire neuron for one time step.
//   u    membrane potential (same unit as the current), updated in place
//   z    net spike count so far (QFFS), updated in place; ignored for QCFS
//   x    input current of this step (already summed over all inputs, bias included)
//   th   threshold = Qp * s; a spike carries th to the next layer
//   zmax spike-count cap (QFFS), Zmax = Qp
// Returns the spike: {0, 1} for QCFS, {-1, 0, 1} for QFFS. Soft reset: u -= spike * th.
DCSIM_HD int neuron_update(int method, float& u, int32_t& z, float x, float th, int32_t zmax) {
  // Written as selects, not branches, so CPU loops vectorize; the same rule either way.
  u = u + x;
  int spike;
  if (method == kQFFS) {
    const int up = (u >= th) & (z < zmax);
    const int down = (u < 0.0f) & (z > 0) & !up;
    spike = up - down;
    z += spike;
  } else {
    spike = u >= th;
  }
  u = u - static_cast<float>(spike) * th;
  return spike;
}

// Stopping score of one sample from its running output sums.
//   s      [k] running sums S_t of the output currents
//   scale  1 / (alpha * tau): logits are S_t * scale
//   kind   kMaxSoftmax: max softmax probability
//          kEntropy:    1 - H(p) / log(k)  (1 when k == 1)
//          kMargin:     top-1 minus top-2 softmax probability (1 when k == 1)
// Writes the argmax of s (first index of the maximum) to *argmax; returns a score in [0, 1].
DCSIM_HD float readout_score(int kind, const float* s, int64_t k, float scale, int64_t* argmax) {
  int64_t best = 0;
  float smax = s[0];
  for (int64_t j = 1; j < k; ++j) {
    if (s[j] > smax) {
      smax = s[j];
      best = j;
    }
  }
  *argmax = best;
  if (k == 1) return 1.0f;
  // Partition function relative to the maximum: Z = sum_j exp((s_j - smax) * scale) >= 1.
  float zsum = 0.0f;
  float second = -INFINITY;
  for (int64_t j = 0; j < k; ++j) {
    const float d = (s[j] - smax) * scale;
    zsum += expf(d);
    if (j != best && s[j] > second) second = s[j];
  }
  const float pmax = 1.0f / zsum;
  if (kind == kMaxSoftmax) return pmax;
  if (kind == kMargin) return pmax - expf((second - smax) * scale) / zsum;
  // Entropy: H = log Z - sum_j p_j d_j, with d_j = (s_j - smax) * scale.
  float pd = 0.0f;
  for (int64_t j = 0; j < k; ++j) {
    const float d = (s[j] - smax) * scale;
    pd += expf(d) * d;
  }
  const float h = logf(zsum) - pd / zsum;
  const float score = 1.0f - h / logf(static_cast<float>(k));
  return score < 0.0f ? 0.0f : (score > 1.0f ? 1.0f : score);
}

// One sample of the output step: S += x, score and argmax of S, steps += 1, exit decision.
//   x, s: [k] this step's output current and the running sums (updated)
//   exit when score > threshold (strictly) or when steps reaches max_steps
DCSIM_HD void output_sample(const float* x, float* s, int64_t k, int readout, float scale, float threshold,
                            int32_t max_steps, int32_t* steps, int64_t* pred, float* score, uint8_t* exited) {
  for (int64_t j = 0; j < k; ++j) s[j] = s[j] + x[j];
  const float sc = readout_score(readout, s, k, scale, pred);
  const int32_t done = ++(*steps);
  *score = sc;
  *exited = (sc > threshold || done >= max_steps) ? 1 : 0;
}

}  // namespace dcsim
