"""Development helpers (not loaded by ComfyUI): finding and preparing a ComfyUI runtime for tests,
the demo, benchmarks and the trainer, and building small random-weight stand-in models."""
