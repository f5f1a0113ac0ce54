"""Model loading: aliases, local checkpoints, GGUF files, the offline hub cache, and run directories."""
