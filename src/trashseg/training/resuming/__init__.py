"""Continuing a run: which checkpoint it continues (target), what a resume may change and whether
anything is left to train (changes), and the train loader that resumes mid-epoch (mid_epoch)."""
