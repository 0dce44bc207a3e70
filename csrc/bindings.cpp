// Thin pybind11 bindings. Tensors cross as raw data pointers plus sizes; dcsim/ops.py
// checks dtypes, devices, shapes and contiguity before calling. CUDA launches go to the
// caller's stream (passed as an integer handle).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <tuple>
#include <vector>

#include "dcsim_math.h"
#include "gather_rows.h"
#include "neuron_step.h"
#include "output_step.h"
#include "spike_conv.h"
#include "avg_pool.h"
#include "block_conv.h"
#include "call_list.h"
#include "linear.h"
#include "bias_add.h"

namespace py = pybind11;

namespace {

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

#ifdef DCSIM_WITH_CUDA
constexpr bool kHasCuda = true;
#else
constexpr bool kHasCuda = false;
[[noreturn]] void no_cuda() {
  throw std::runtime_error("dcsim._core was built without CUDA kernels; rebuild with a CUDA compiler (DCSIM_CUDA=ON)");
}
#endif

void neuron_step(int method, int64_t n, int64_t m, uintptr_t x, uintptr_t x2, uintptr_t u, uintptr_t z,
                 uintptr_t out, uintptr_t counts, float th, int32_t zmax, uintptr_t fanout, uintptr_t sops, bool fresh,
                 float u0, bool cuda, [[maybe_unused]] uintptr_t stream, int threads) {
  const dcsim::NeuronStepArgs a{method, n, m, ptr<const float>(x), ptr<const float>(x2), ptr<float>(u),
                                ptr<int32_t>(z), ptr<float>(out), ptr<int64_t>(counts), th, zmax,
                                ptr<const int32_t>(fanout), ptr<int64_t>(sops), fresh, u0};
  if (cuda) {
#ifdef DCSIM_WITH_CUDA
    dcsim::neuron_step_cuda(a, ptr<void>(stream));
#else
    no_cuda();
#endif
    return;
  }
  py::gil_scoped_release release;
  dcsim::neuron_step_cpu(a, threads);
}

void neuron_steps(int method, int64_t k, int64_t n, int64_t m, uintptr_t x, int64_t x_step, uintptr_t x2,
                  int64_t x2_step, uintptr_t u, uintptr_t z, uintptr_t out, uintptr_t counts, uintptr_t counts_out,
                  float th, int32_t zmax, uintptr_t fanout, uintptr_t sops, uintptr_t sops_out, bool fresh, float u0,
                  int threads) {
  const dcsim::NeuronStepsArgs a{{method, n, m, ptr<const float>(x), ptr<const float>(x2), ptr<float>(u),
                                  ptr<int32_t>(z), ptr<float>(out), ptr<int64_t>(counts), th, zmax,
                                  ptr<const int32_t>(fanout), ptr<int64_t>(sops), fresh, u0},
                                 k,
                                 x_step,
                                 x2_step,
                                 ptr<int64_t>(counts_out),
                                 ptr<int64_t>(sops_out)};
  py::gil_scoped_release release;
  dcsim::neuron_steps_cpu(a, threads);
}

void output_step(int64_t n, int64_t k, uintptr_t x, uintptr_t sums, uintptr_t steps, int32_t max_steps,
                 int readout, float scale, float threshold, uintptr_t pred, uintptr_t score, uintptr_t exited,
                 bool cuda, [[maybe_unused]] uintptr_t stream, int threads) {
  const dcsim::OutputStepArgs a{n,           k,     ptr<const float>(x), ptr<float>(sums), ptr<int32_t>(steps),
                                max_steps,   readout, scale,           threshold,         ptr<int64_t>(pred),
                                ptr<float>(score), ptr<uint8_t>(exited)};
  if (cuda) {
#ifdef DCSIM_WITH_CUDA
    dcsim::output_step_cuda(a, ptr<void>(stream));
#else
    no_cuda();
#endif
    return;
  }
  py::gil_scoped_release release;
  dcsim::output_step_cpu(a, threads);
}

// entries: (src pointer, dst pointer, bytes per row); launched in groups of kMaxGatherEntries.
void gather_rows(const std::vector<std::tuple<uintptr_t, uintptr_t, int64_t>>& entries, uintptr_t index,
                 int64_t n_out, bool cuda, [[maybe_unused]] uintptr_t stream, int threads) {
  for (size_t first = 0; first < entries.size(); first += dcsim::kMaxGatherEntries) {
    dcsim::GatherArgs a{};
    a.index = ptr<const int64_t>(index);
    a.n_out = n_out;
    for (size_t e = first; e < entries.size() && a.count < dcsim::kMaxGatherEntries; ++e) {
      a.entries[a.count++] = {ptr<const void>(std::get<0>(entries[e])), ptr<void>(std::get<1>(entries[e])),
                              std::get<2>(entries[e])};
    }
    if (cuda) {
#ifdef DCSIM_WITH_CUDA
      dcsim::gather_rows_cuda(a, ptr<void>(stream));
#else
      no_cuda();
#endif
      continue;
    }
    py::gil_scoped_release release;
    dcsim::gather_rows_cpu(a, threads);
  }
}

// x [n, h, w, cin], weight [kh, kw, cin, cout], bias [cout] or 0, out [n, oh, ow, cout]; CPU only.
void spike_conv(int64_t n, int64_t h, int64_t w, int64_t cin, int64_t oh, int64_t ow, int64_t cout, int64_t kh,
                int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, uintptr_t x, uintptr_t weight,
                uintptr_t bias, uintptr_t out, int threads, bool simd) {
  const dcsim::SpikeConvArgs a{n,  h,  w,  cin, oh, ow, cout, kh, kw, sh, sw, ph, pw, ptr<const float>(x),
                               ptr<const float>(weight), ptr<const float>(bias), ptr<float>(out)};
  py::gil_scoped_release release;
  dcsim::spike_conv_cpu(a, threads, simd);
}

// x [planes, h, w], out [planes, h / 2, w / 2]; CPU only.
void avg_pool_2x2(int64_t planes, int64_t h, int64_t w, uintptr_t x, uintptr_t out, int threads) {
  const dcsim::AvgPoolArgs a{planes, h, w, ptr<const float>(x), ptr<float>(out)};
  py::gil_scoped_release release;
  dcsim::avg_pool_2x2_cpu(a, threads);
}

// x [planes, size], out [planes]; CPU only.
void global_avg_pool(int64_t planes, int64_t size, uintptr_t x, uintptr_t out, int threads) {
  const dcsim::GlobalPoolArgs a{planes, size, ptr<const float>(x), ptr<float>(out)};
  py::gil_scoped_release release;
  dcsim::global_avg_pool_cpu(a, threads);
}

// x [n, cin, h, w], weight [cout / (16 * group), kh, kw, cin, group, 16], bias [cout] or 0, out [n, cout, oh, ow];
// CPU only.
void block_conv(int64_t n, int64_t cin, int64_t h, int64_t w, int64_t cout, int64_t oh, int64_t ow, int64_t kh,
                int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t chunk, bool bias_first,
                double max_density, int64_t group, uintptr_t x, uintptr_t weight, uintptr_t bias, uintptr_t out,
                int threads, bool simd) {
  const dcsim::BlockConvArgs a{n,          cin,         h,     w,  cout, oh, ow, kh, kw, sh, sw, ph, pw, chunk,
                               bias_first, max_density, group, ptr<const float>(x), ptr<const float>(weight),
                               ptr<const float>(bias), ptr<float>(out)};
  py::gil_scoped_release release;
  dcsim::block_conv_cpu(a, threads, simd);
}

// A pointer reference (slot, byte offset) of a call list: slot -1 for an address given as the offset.
using Ref = std::pair<int64_t, int64_t>;
dcsim::PointerRef ref(const Ref& r) { return {r.first, r.second}; }

void list_block_conv(dcsim::CallList& l, int64_t n, int64_t cin, int64_t h, int64_t w, int64_t cout, int64_t oh,
                     int64_t ow, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t chunk,
                     bool bias_first, double max_density, int64_t group, const Ref& x, const Ref& weight,
                     const Ref& bias, const Ref& out, int threads, bool simd) {
  const dcsim::BlockConvArgs a{n,          cin,         h,     w,       cout,    oh,      ow, kh, kw, sh, sw, ph, pw,
                               chunk,      bias_first,  max_density,   group,   nullptr, nullptr, nullptr, nullptr};
  l.add_block_conv(a, ref(x), ref(weight), ref(bias), ref(out), threads, simd);
}

void list_neuron_steps(dcsim::CallList& l, int method, int64_t k, int64_t n, int64_t m, const Ref& x, int64_t x_step,
                       const Ref& x2, int64_t x2_step, const Ref& u, const Ref& z, const Ref& out, const Ref& counts,
                       const Ref& counts_out, float th, int32_t zmax, const Ref& fanout, const Ref& sops,
                       const Ref& sops_out, bool fresh, float u0, int threads) {
  const dcsim::NeuronStepsArgs a{{method, n, m, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, th, zmax, nullptr,
                                  nullptr, fresh, u0},
                                 k,
                                 x_step,
                                 x2_step,
                                 nullptr,
                                 nullptr};
  l.add_neuron_steps(a, ref(x), ref(x2), ref(u), ref(z), ref(out), ref(counts), ref(fanout), ref(sops),
                     ref(counts_out), ref(sops_out), threads);
}

void list_avg_pool_2x2(dcsim::CallList& l, int64_t planes, int64_t h, int64_t w, const Ref& x, const Ref& out,
                       int threads) {
  l.add_avg_pool_2x2(dcsim::AvgPoolArgs{planes, h, w, nullptr, nullptr}, ref(x), ref(out), threads);
}

void list_global_avg_pool(dcsim::CallList& l, int64_t planes, int64_t size, const Ref& x, const Ref& out,
                          int threads) {
  l.add_global_avg_pool(dcsim::GlobalPoolArgs{planes, size, nullptr, nullptr}, ref(x), ref(out), threads);
}

void list_output_step(dcsim::CallList& l, int64_t n, int64_t k, const Ref& x, const Ref& sums, const Ref& steps,
                      int32_t max_steps, int readout, float scale, float threshold, const Ref& pred, const Ref& score,
                      const Ref& exited, int threads) {
  const dcsim::OutputStepArgs a{n,       k,     nullptr,   nullptr, nullptr, max_steps,
                                readout, scale, threshold, nullptr, nullptr, nullptr};
  l.add_output_step(a, ref(x), ref(sums), ref(steps), ref(pred), ref(score), ref(exited), threads);
}

void list_linear(dcsim::CallList& l, int64_t rows, int64_t in, int64_t features, const Ref& x, const Ref& weight,
                 const Ref& bias, const Ref& out, uintptr_t sgemm) {
  const dcsim::LinearArgs a{rows, in, features, nullptr, nullptr, nullptr, nullptr,
                            reinterpret_cast<dcsim::SgemmFn>(sgemm)};
  l.add_linear(a, ref(x), ref(weight), ref(bias), ref(out));
}

void list_bias_add(dcsim::CallList& l, int64_t rows, int64_t channels, int64_t plane, const Ref& x, const Ref& bias,
                   int threads) {
  l.add_bias_add(dcsim::BiasAddArgs{rows, channels, plane, nullptr, nullptr}, ref(x), ref(bias), threads);
}

void bias_add(int64_t rows, int64_t channels, int64_t plane, uintptr_t x, uintptr_t bias, int threads) {
  const dcsim::BiasAddArgs a{rows, channels, plane, ptr<float>(x), ptr<const float>(bias)};
  py::gil_scoped_release release;
  dcsim::bias_add_cpu(a, threads);
}

int64_t list_run_until(const dcsim::CallList& l, const std::vector<int64_t>& table, int64_t max_runs,
                       const Ref& flag) {
  py::gil_scoped_release release;
  return l.run_until(table.data(), static_cast<int64_t>(table.size()), max_runs, ref(flag));
}

bool linear(int64_t rows, int64_t in, int64_t features, uintptr_t x, uintptr_t weight, uintptr_t bias, uintptr_t out,
            uintptr_t sgemm) {
  const dcsim::LinearArgs a{rows,           in,           features, ptr<const float>(x), ptr<const float>(weight),
                            ptr<const float>(bias), ptr<float>(out), reinterpret_cast<dcsim::SgemmFn>(sgemm)};
  py::gil_scoped_release release;
  return dcsim::linear_cpu(a);
}

bool list_run(const dcsim::CallList& l, const std::vector<int64_t>& table) {
  py::gil_scoped_release release;
  return l.run(table.data(), static_cast<int64_t>(table.size()));
}

}  // namespace

PYBIND11_MODULE(_core, mod) {
  mod.doc() = "dcsim fused kernels (CPU, and CUDA when built with it). Call through dcsim.ops.";
  mod.attr("has_cuda") = kHasCuda;
  mod.attr("QCFS") = static_cast<int>(dcsim::kQCFS);
  mod.attr("QFFS") = static_cast<int>(dcsim::kQFFS);
  mod.attr("MAX_SOFTMAX") = static_cast<int>(dcsim::kMaxSoftmax);
  mod.attr("ENTROPY") = static_cast<int>(dcsim::kEntropy);
  mod.attr("MARGIN") = static_cast<int>(dcsim::kMargin);
  mod.def("neuron_step", &neuron_step, "Fused QCFS/QFFS neuron step (kernel 1).");
  mod.def("neuron_steps", &neuron_steps, "Kernel 1 over k steps of one layer in one call (CPU).");
  mod.def("output_step", &output_step, "Fused output accumulate/score/exit step (kernel 2).");
  mod.def("gather_rows", &gather_rows, "Row gather of many state tensors (kernel 3, compaction).");
  mod.def("spike_conv", &spike_conv, "Event-driven convolution of spike maps (kernel 4, CPU).");
  mod.def("block_conv", &block_conv, "Dense convolution in oneDNN's order of sums (kernel 6, CPU).");
  mod.def("avg_pool_2x2", &avg_pool_2x2, "2x2, stride-2 average pooling of NCHW planes (kernel 5, CPU).");
  py::class_<dcsim::CallList>(mod, "CallList", "CPU kernel calls run in one native call (a chunk program's layers).")
      .def(py::init<>())
      .def("block_conv", &list_block_conv, "Append a block conv (kernel 6) call.")
      .def("neuron_steps", &list_neuron_steps, "Append a k-step neuron (kernel 1) call.")
      .def("avg_pool_2x2", &list_avg_pool_2x2, "Append a 2x2 average pool (kernel 5) call.")
      .def("global_avg_pool", &list_global_avg_pool, "Append a global average pool (kernel 7) call.")
      .def("output_step", &list_output_step, "Append an output step (kernel 2) call.")
      .def("linear", &list_linear, "Append a linear (kernel 8) call through a BLAS sgemm's address.")
      .def("bias_add", &list_bias_add, "Append a per-channel bias add (kernel 9) call.")
      .def("run_until", &list_run_until, "Run the calls up to max_runs times, until the byte at flag is nonzero "
                                          "after a run; the runs made, -1 (nothing run) where a slot is past the table.")
      .def("run", &list_run, "Run the calls, pointers resolved against the table (slot -> address); False, and "
                              "nothing run, where a call names a slot past the table.")
      .def("__len__", &dcsim::CallList::size);
  mod.def("linear", &linear, "A fully connected layer through a BLAS sgemm's address (kernel 8, CPU); False, "
                             "nothing written, where a size passes 32-bit integers.");
  mod.def("bias_add", &bias_add, "A per-channel bias added in place to [rows, channels, plane] (kernel 9, CPU).");
  mod.def("global_avg_pool", &global_avg_pool, "Global average pooling of NCHW planes in torch's order (kernel 7, CPU).");
}
