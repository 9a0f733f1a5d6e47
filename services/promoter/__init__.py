"""promoter: TFMA gate, approval API, and TF Serving version management."""
