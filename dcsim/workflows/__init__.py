"""Library workflows behind the command line, each taking typed options: train, trace/analyze/eval, the
report loop (report, demo), reproduce, continuous batching and the benchmarks. The command line
(dcsim.cli) only parses arguments into these options; nothing below this package imports it."""
