"""Data preparation before a run: stats, cleaning (dedup, PII, length), leak-free splits.

Every function here reads rows and returns new rows plus a record of what changed; nothing
edits its input file, and nothing prints (progress goes to a callback the caller supplies).
"""
