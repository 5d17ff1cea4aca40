"""Leaderboard CSVs: write (streamed, atomic), read back, check, and vote (the format: docs/competition.md,
The submission CSV)."""

from .csv_format import SUBMISSION_SIZE, SubmissionWriter, decode_row, encode_row, read_submission, to_submission_size

__all__ = ["SUBMISSION_SIZE", "SubmissionWriter", "decode_row", "encode_row", "read_submission", "to_submission_size"]
