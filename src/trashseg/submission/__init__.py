"""Leaderboard CSVs: write (streamed, atomic), read back, check, and vote (DESIGN.md section 1)."""

from .csv_format import SUBMISSION_SIZE, SubmissionWriter, decode_row, encode_row, read_submission, to_submission_size

__all__ = ["SUBMISSION_SIZE", "SubmissionWriter", "decode_row", "encode_row", "read_submission", "to_submission_size"]
