"""Several processes (torchrun): ranks and devices, sharded evaluation, data-parallel training hooks and
agreement checks (distributed), and batch norm over the global batch on the CPU (global_bn)."""
