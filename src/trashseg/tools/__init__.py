"""Tools for the team: EDA, run comparison, prediction pictures, model cost card."""
