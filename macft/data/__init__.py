"""Data: rows -> tokens + loss masks -> (packed) sequences -> batches; needs only numpy."""

from macft.data.batches import Batch, Batcher, pad_id
from macft.data.encode import (
    FORMATS,
    Encoded,
    EncodedSet,
    EncodeStats,
    check_answers,
    check_row,
    detect_format,
    encode_row,
    encode_rows,
    prompt_and_reference,
)
from macft.data.packing import Sequence, make_sequences
from macft.data.rows import Row, load_rows

__all__ = [
    "FORMATS", "Batch", "Batcher", "Encoded", "EncodedSet", "EncodeStats", "Row", "Sequence",
    "check_answers", "check_row", "detect_format", "encode_row", "encode_rows", "load_rows", "make_sequences",
    "pad_id", "prompt_and_reference",
]
