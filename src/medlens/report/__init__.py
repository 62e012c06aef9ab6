"""Reports: one self-contained interactive HTML page per run, and print figures."""
