"""Training, GLUE data and metrics, cost accounting."""
