"""Data: GLUE tasks (TSV and hub reading) and their metrics."""
