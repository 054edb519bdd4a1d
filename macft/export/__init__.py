"""Export: GGUF writer, name maps, quantizers and checks against llama.cpp (the GGUF issue)."""
