// CPU twin of neuron_step_cuda.cu: the [n, m] elements in blocks of at most kBlock, spread over
// threads (so a single sample uses every thread too); per-sample spike counts (and, with a fan-out
// map, synaptic operations) summed per block.
#include "neuron_step.h"

#include <algorithm>

#include "dcsim_math.h"

namespace dcsim {
namespace {

constexpr int64_t kBlock = 1 << 14;  // elements per parallel task
constexpr int64_t kSopsRun = 1 << 10;  // outputs summed in int32 before the int64 sum (fan-outs < 2^21: FANOUT_MAX)

struct BlockCounts {
  int64_t spikes;  // spikes in the block (+1 and -1 both count)
  int64_t sops;    // sum of |spike| * fanout over the block (0 without a fan-out map)
};

// Elements [lo, hi) of sample i; returns their spikes and synaptic operations. Method, the presence
// of x2 and of the fan-out map, and whether the step is the first (u and z taken as u0 and 0, not read)
// are compile-time constants, so the loop has no branches left and vectorizes.
template <int Method, bool HasX2, bool HasFanout, bool Fresh>
BlockCounts neuron_block(const NeuronStepArgs& a, int64_t i, int64_t lo, int64_t hi) {
  const float* __restrict x = a.x;
  const float* __restrict x2 = a.x2;
  float* __restrict u = a.u;
  int32_t* __restrict z = a.z;
  float* __restrict out = a.out;
  const int32_t* __restrict fan = HasFanout ? a.fanout + (lo - i * a.m) : nullptr;  // fan[k]: element lo + k
  const float th = a.th;
  const int32_t zmax = a.zmax;
  const float u0 = a.u0;
  // Spikes and synaptic operations summed in int32 over runs of kSopsRun elements (a fan-out is below
  // 2^21, dcsim.sim.sops.FANOUT_MAX, so a run cannot overflow), then in int64: int32 sums and a mask
  // instead of a branch keep the loop vectorized (an int64 sum or a branch per element do not: 4-6x slower).
  int64_t count = 0, sops = 0;
  for (int64_t s = lo; s < hi; s += kSopsRun) {
    const int64_t e = s + kSopsRun < hi ? s + kSopsRun : hi;
    int32_t run_count = 0, run_sops = 0;
    for (int64_t j = s; j < e; ++j) {
      float uj = Fresh ? u0 : u[j];
      int32_t zj = Method == kQFFS && !Fresh ? z[j] : 0;
      const int spike = neuron_update(Method, uj, zj, HasX2 ? x[j] + x2[j] : x[j], th, zmax);
      u[j] = uj;
      if (Method == kQFFS) z[j] = zj;
      out[j] = static_cast<float>(spike) * th;
      run_count += spike != 0;
      if (HasFanout) run_sops += fan[j - lo] & -static_cast<int32_t>(spike != 0);
    }
    count += run_count;
    sops += run_sops;
  }
  return {count, sops};
}

template <int Method, bool HasX2, bool HasFanout, bool Fresh>
void neuron_step_blocks(const NeuronStepArgs& a, int threads) {
  const int64_t per_sample = (a.m + kBlock - 1) / kBlock;
  const int64_t tasks = a.n * per_sample;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && tasks > 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t i = t / per_sample;
    const int64_t lo = i * a.m + (t % per_sample) * kBlock;
    const int64_t hi = lo + kBlock < (i + 1) * a.m ? lo + kBlock : (i + 1) * a.m;
    const BlockCounts c = neuron_block<Method, HasX2, HasFanout, Fresh>(a, i, lo, hi);
#pragma omp atomic
    a.counts[i] += c.spikes;
    if (HasFanout) {
#pragma omp atomic
      a.sops[i] += c.sops;
    }
  }
}

template <int Method, bool HasX2, bool HasFanout>
void neuron_step_fresh(const NeuronStepArgs& a, int threads) {
  a.fresh ? neuron_step_blocks<Method, HasX2, HasFanout, true>(a, threads)
          : neuron_step_blocks<Method, HasX2, HasFanout, false>(a, threads);
}

template <int Method, bool HasX2>
void neuron_step_fanout(const NeuronStepArgs& a, int threads) {
  a.fanout ? neuron_step_fresh<Method, HasX2, true>(a, threads) : neuron_step_fresh<Method, HasX2, false>(a, threads);
}

}  // namespace

void neuron_step_cpu(const NeuronStepArgs& a, int threads) {
  if (a.method == kQFFS) {
    a.x2 ? neuron_step_fanout<kQFFS, true>(a, threads) : neuron_step_fanout<kQFFS, false>(a, threads);
  } else {
    a.x2 ? neuron_step_fanout<kQCFS, true>(a, threads) : neuron_step_fanout<kQCFS, false>(a, threads);
  }
}

void neuron_steps_cpu(const NeuronStepsArgs& a, int threads) {
  NeuronStepArgs step = a.first;
  const int64_t n = step.n;
  for (int64_t t = 0; t < a.k; ++t) {
    step.x = a.first.x + t * a.x_step;
    step.x2 = a.first.x2 == nullptr ? nullptr : a.first.x2 + t * a.x2_step;
    step.out = a.first.out + t * n * step.m;
    step.fresh = a.first.fresh && t == 0;
    neuron_step_cpu(step, threads);
    if (a.counts_out != nullptr) std::copy(step.counts, step.counts + n, a.counts_out + t * n);
    if (a.sops_out != nullptr && step.sops != nullptr) std::copy(step.sops, step.sops + n, a.sops_out + t * n);
  }
}

}  // namespace dcsim
