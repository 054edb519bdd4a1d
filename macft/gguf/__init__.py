"""GGUF, shared by import and export: the reader and the HF<->GGUF name maps (``reader``), the
tokenizer in both directions (``tokenizer`` reads it, ``vocab`` writes it) and the metadata keys
(``metadata``). ``models.load`` imports through it; ``export`` writes, quantizes and verifies
with it.
"""
