"""Console output, loggers and run-folder helpers."""
