"""Evaluation: public test sets, the resumable run, scoring, normalisers, word timing."""
