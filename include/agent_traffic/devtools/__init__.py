"""Dev tools: the local receiver, sample logs and the process cluster for tests and demos."""
