"""The shared ground under every layer: errors, settings, retry policies (imports nothing of the project)."""
