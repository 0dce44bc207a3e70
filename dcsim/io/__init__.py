"""Files: checkpoints (safetensors + JSON metadata, checkpoint), sha256-checked shard folders (zoo) and
atomic writes, exclusive folders and digests (atomic)."""
