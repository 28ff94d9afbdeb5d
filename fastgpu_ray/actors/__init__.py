"""The Ray side: the actors (node schedulers, GPU workers and slots, the lobby, the arbiter, monitors) and
the backend through which the core reaches Ray."""
