"""GGUF models: hub metadata, verified resumable downloads, header reading, fit, lock file."""
