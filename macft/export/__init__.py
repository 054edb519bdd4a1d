"""Export: the targets table, the GGUF writer, quantizers and checks against llama.cpp."""
