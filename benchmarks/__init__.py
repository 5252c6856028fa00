"""burla's benchmark suite: workloads on burla and its installed peers (`python -m benchmarks`)."""
