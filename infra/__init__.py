"""Infrastructure: storage backends, cluster providers, preemption watchers."""
