"""Readers of checkpoints and results (spectra, retention, phases, hypothesis, report); each writes one store table."""
