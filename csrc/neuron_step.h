// Kernel 1: fused neuron step (QCFS / QFFS) for one layer, one time step.
#pragma once
#include <cstdint>

namespace dcsim {

// Arguments shared by the CPU and CUDA launchers. Shapes use n = samples, m = neurons per sample.
struct NeuronStepArgs {
  int method;           // kQCFS or kQFFS
  int64_t n;            // samples
  int64_t m;            // neurons per sample
  const float* x;       // [n, m] input current of this step
  const float* x2;      // [n, m] second current summed into x (residual), or nullptr
  float* u;             // [n, m] membrane potential, updated in place
  int32_t* z;           // [n, m] net spike count (QFFS), updated in place; nullptr for QCFS
  float* out;           // [n, m] output current: spike * th
  int64_t* counts;      // [n] spikes emitted per sample (|+1| and |-1| both count), accumulated
  float th;             // threshold
  int32_t zmax;         // spike-count cap (QFFS)
  const int32_t* fanout;  // [m] synaptic operations one spike of each neuron triggers, or nullptr
  int64_t* sops;          // [n] sum of |spike| * fanout per sample, accumulated; nullptr when fanout is
  bool fresh;             // the first step: u and z are not read (they may be uninitialised) but taken as u0 and 0
  float u0;               // the initial membrane potential (read when fresh)
};

void neuron_step_cpu(const NeuronStepArgs& a, int threads);
#ifdef DCSIM_WITH_CUDA
void neuron_step_cuda(const NeuronStepArgs& a, void* stream);
#endif

}  // namespace dcsim
