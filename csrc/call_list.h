// A list of CPU kernel calls run one after the other in one native call: a chunk program's layers without the
// Python between them (at batch 1 that Python, cold in the caches after each layer's kernel, cost as much as the
// kernels of a one-step call of the zoo ResNet-18). The calls are the kernels' own (1, 2, 5-9) with the same
// arguments, so the same bits. A pointer argument is an address, or a slot of the table given to each run plus
// a byte offset: the tensors that change from run to run (the batch's state, the step record, values computed
// in Python between two lists) are looked up there.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "avg_pool.h"
#include "bias_add.h"
#include "block_conv.h"
#include "linear.h"
#include "neuron_step.h"
#include "output_step.h"

namespace dcsim {

// table[slot] + offset where slot >= 0; the address offset (0: nullptr) where slot < 0.
struct PointerRef {
  int64_t slot = -1;
  int64_t offset = 0;
};

class CallList {
 public:
  // Each add takes the kernel's arguments with their pointers left out, and those pointers as references.
  void add_block_conv(BlockConvArgs a, PointerRef x, PointerRef weight, PointerRef bias, PointerRef out, int threads,
                      bool simd);
  void add_neuron_steps(NeuronStepsArgs a, PointerRef x, PointerRef x2, PointerRef u, PointerRef z, PointerRef out,
                        PointerRef counts, PointerRef fanout, PointerRef sops, PointerRef counts_out,
                        PointerRef sops_out, int threads);
  void add_avg_pool_2x2(AvgPoolArgs a, PointerRef x, PointerRef out, int threads);
  void add_global_avg_pool(GlobalPoolArgs a, PointerRef x, PointerRef out, int threads);
  void add_output_step(OutputStepArgs a, PointerRef x, PointerRef sums, PointerRef steps, PointerRef pred,
                       PointerRef score, PointerRef exited, int threads);
  // a.sgemm fixed at listing; a size past the BLAS's 32-bit integers makes the list unrunnable (fits is false).
  void add_linear(LinearArgs a, PointerRef x, PointerRef weight, PointerRef bias, PointerRef out);
  void add_bias_add(BiasAddArgs a, PointerRef x, PointerRef bias, int threads);
  // Whether every reference names slot -1 or a slot of a table of `slots` addresses.
  bool fits(int64_t slots) const { return valid_ && max_slot_ < slots; }
  // The calls in order, each pointer resolved against table [slots]; false, and no call made, where !fits(slots).
  // Nothing here throws: the sanitized build's Python host cannot unwind a C++ exception.
  bool run(const int64_t* table, int64_t slots) const;
  // The calls run again and again, at most max_runs times, until the byte at flag (resolved as the pointers are)
  // is nonzero after a run: a lone sample's steps until its exit. The runs made; -1, and no call made, where
  // !fits(slots) or flag names a slot past the table or no address.
  int64_t run_until(const int64_t* table, int64_t slots, int64_t max_runs, PointerRef flag) const;
  int64_t size() const { return static_cast<int64_t>(calls_.size()); }

 private:
  enum class Kind { kBlockConv, kNeuronSteps, kAvgPool2x2, kGlobalAvgPool, kOutputStep, kLinear, kBiasAdd };
  static constexpr int kMaxRefs = 10;
  struct Call {
    Kind kind = Kind::kBlockConv;
    int threads = 1;
    bool simd = false;
    BlockConvArgs conv{};
    NeuronStepsArgs neuron{};
    AvgPoolArgs pool{};
    GlobalPoolArgs global{};
    OutputStepArgs output{};
    LinearArgs linear{};
    BiasAddArgs bias_add{};
    PointerRef refs[kMaxRefs];
  };
  // The call with its pointer references (in its kind's order), checked against the table's bounds at each run.
  void add(Call call, std::initializer_list<PointerRef> refs);
  void run_once(const int64_t* table) const;
  std::vector<Call> calls_;
  int64_t max_slot_ = -1;  // the largest slot any reference names
  bool valid_ = true;      // no reference names a slot below -1
};

}  // namespace dcsim
