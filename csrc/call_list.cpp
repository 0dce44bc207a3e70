// A list of CPU kernel calls, see call_list.h.
#include "call_list.h"

#include <climits>
#include <cstddef>

namespace dcsim {
namespace {

template <typename T>
T* resolve(const PointerRef& r, const int64_t* table) {
  const int64_t base = r.slot < 0 ? 0 : table[r.slot];
  return reinterpret_cast<T*>(static_cast<uintptr_t>(base + r.offset));
}

}  // namespace

void CallList::add(Call call, std::initializer_list<PointerRef> refs) {
  if (refs.size() > static_cast<std::size_t>(kMaxRefs)) {  // not reached: each kind's add passes its own few
    valid_ = false;
    return;
  }
  int r = 0;
  for (const PointerRef& ref : refs) {
    if (ref.slot < -1) valid_ = false;
    if (ref.slot > max_slot_) max_slot_ = ref.slot;
    call.refs[r++] = ref;
  }
  calls_.push_back(call);
}

void CallList::add_block_conv(BlockConvArgs a, PointerRef x, PointerRef weight, PointerRef bias, PointerRef out,
                              int threads, bool simd) {
  Call c;
  c.kind = Kind::kBlockConv, c.conv = a, c.threads = threads, c.simd = simd;
  add(c, {x, weight, bias, out});
}

void CallList::add_neuron_steps(NeuronStepsArgs a, PointerRef x, PointerRef x2, PointerRef u, PointerRef z,
                                PointerRef out, PointerRef counts, PointerRef fanout, PointerRef sops,
                                PointerRef counts_out, PointerRef sops_out, int threads) {
  Call c;
  c.kind = Kind::kNeuronSteps, c.neuron = a, c.threads = threads;
  add(c, {x, x2, u, z, out, counts, fanout, sops, counts_out, sops_out});
}

void CallList::add_avg_pool_2x2(AvgPoolArgs a, PointerRef x, PointerRef out, int threads) {
  Call c;
  c.kind = Kind::kAvgPool2x2, c.pool = a, c.threads = threads;
  add(c, {x, out});
}

void CallList::add_global_avg_pool(GlobalPoolArgs a, PointerRef x, PointerRef out, int threads) {
  Call c;
  c.kind = Kind::kGlobalAvgPool, c.global = a, c.threads = threads;
  add(c, {x, out});
}

void CallList::add_output_step(OutputStepArgs a, PointerRef x, PointerRef sums, PointerRef steps, PointerRef pred,
                               PointerRef score, PointerRef exited, int threads) {
  Call c;
  c.kind = Kind::kOutputStep, c.output = a, c.threads = threads;
  add(c, {x, sums, steps, pred, score, exited});
}

void CallList::add_linear(LinearArgs a, PointerRef x, PointerRef weight, PointerRef bias, PointerRef out) {
  Call c;
  c.kind = Kind::kLinear, c.linear = a;
  if (a.rows > INT_MAX || a.in > INT_MAX || a.features > INT_MAX || a.sgemm == nullptr) valid_ = false;
  add(c, {x, weight, bias, out});
}

void CallList::add_bias_add(BiasAddArgs a, PointerRef x, PointerRef bias, int threads) {
  Call c;
  c.kind = Kind::kBiasAdd, c.bias_add = a, c.threads = threads;
  add(c, {x, bias});
}

bool CallList::run(const int64_t* table, int64_t slots) const {
  if (!fits(slots)) return false;
  run_once(table);
  return true;
}

int64_t CallList::run_until(const int64_t* table, int64_t slots, int64_t max_runs, PointerRef flag) const {
  if (!fits(slots) || flag.slot < -1 || flag.slot >= slots) return -1;
  const uint8_t* stop = resolve<const uint8_t>(flag, table);
  if (stop == nullptr) return -1;
  int64_t runs = 0;
  while (runs < max_runs) {
    run_once(table);
    ++runs;
    if (*stop != 0) break;
  }
  return runs;
}

void CallList::run_once(const int64_t* table) const {
  for (const Call& c : calls_) {
    const PointerRef* r = c.refs;
    switch (c.kind) {
      case Kind::kBlockConv: {
        BlockConvArgs a = c.conv;
        a.x = resolve<const float>(r[0], table), a.weight = resolve<const float>(r[1], table);
        a.bias = resolve<const float>(r[2], table), a.out = resolve<float>(r[3], table);
        block_conv_cpu(a, c.threads, c.simd);
        break;
      }
      case Kind::kNeuronSteps: {
        NeuronStepsArgs a = c.neuron;
        NeuronStepArgs& f = a.first;
        f.x = resolve<const float>(r[0], table), f.x2 = resolve<const float>(r[1], table);
        f.u = resolve<float>(r[2], table), f.z = resolve<int32_t>(r[3], table), f.out = resolve<float>(r[4], table);
        f.counts = resolve<int64_t>(r[5], table), f.fanout = resolve<const int32_t>(r[6], table);
        f.sops = resolve<int64_t>(r[7], table);
        a.counts_out = resolve<int64_t>(r[8], table), a.sops_out = resolve<int64_t>(r[9], table);
        neuron_steps_cpu(a, c.threads);
        break;
      }
      case Kind::kAvgPool2x2: {
        AvgPoolArgs a = c.pool;
        a.x = resolve<const float>(r[0], table), a.out = resolve<float>(r[1], table);
        avg_pool_2x2_cpu(a, c.threads);
        break;
      }
      case Kind::kGlobalAvgPool: {
        GlobalPoolArgs a = c.global;
        a.x = resolve<const float>(r[0], table), a.out = resolve<float>(r[1], table);
        global_avg_pool_cpu(a, c.threads);
        break;
      }
      case Kind::kOutputStep: {
        OutputStepArgs a = c.output;
        a.x = resolve<const float>(r[0], table), a.sums = resolve<float>(r[1], table);
        a.steps = resolve<int32_t>(r[2], table), a.pred = resolve<int64_t>(r[3], table);
        a.score = resolve<float>(r[4], table), a.exited = resolve<uint8_t>(r[5], table);
        output_step_cpu(a, c.threads);
        break;
      }
      case Kind::kLinear: {
        LinearArgs a = c.linear;
        a.x = resolve<const float>(r[0], table), a.weight = resolve<const float>(r[1], table);
        a.bias = resolve<const float>(r[2], table), a.out = resolve<float>(r[3], table);
        linear_cpu(a);  // sizes checked when listed
        break;
      }
      case Kind::kBiasAdd: {
        BiasAddArgs a = c.bias_add;
        a.x = resolve<float>(r[0], table), a.bias = resolve<const float>(r[1], table);
        bias_add_cpu(a, c.threads);
        break;
      }
    }
  }
}

}  // namespace dcsim
