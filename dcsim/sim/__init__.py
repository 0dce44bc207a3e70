"""The simulator: the spiking-network IR (network), the step-major engine (engine) and its batch state (state),
when early exit compacts (compaction, a measured cost model), native kernels and their Python twins (ops,
reference), CUDA-graph step loops (graphs), the output readout (readout), continuous batching (continuous),
latency histograms (latency) and the eager reference simulator the benchmarks compare against (eager)."""
