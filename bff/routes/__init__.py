"""HTTP endpoints under /bff, plus health and metrics."""
