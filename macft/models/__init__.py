"""Models: loading (HF folder, hub, GGUF), quantized layers, adapters, fusing."""
