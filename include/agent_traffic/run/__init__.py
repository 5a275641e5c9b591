"""Run: the step functions both conductors call, the command-line runner and the run summary."""
