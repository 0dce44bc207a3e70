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

// Kernel 1 over k steps of one layer in one call (CPU): step t reads first.x + t * x_step (first.x2 + t * x2_step;
// a step of 0 gives every step the same current), writes first.out + t * n * m, is fresh (first.fresh) only at
// t = 0, and afterwards copies counts [n] (and sops [n]) to row t of counts_out (sops_out) where given.
struct NeuronStepsArgs {
  NeuronStepArgs first;  // step 0; u, z, counts, sops are carried from step to step
  int64_t k;             // steps
  int64_t x_step;        // elements between the currents of two steps (0 or n * m)
  int64_t x2_step;       // the same for x2
  int64_t* counts_out;   // [k, n] counts after each step, or nullptr
  int64_t* sops_out;     // [k, n] sops after each step, or nullptr
};

void neuron_steps_cpu(const NeuronStepsArgs& a, int threads);
#ifdef DCSIM_WITH_CUDA
void neuron_step_cuda(const NeuronStepArgs& a, void* stream);
#endif

}  // namespace dcsim
