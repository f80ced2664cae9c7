"""Remote runs: stage a manifest to object storage, forward settings and secrets, tunnel to the head, submit."""
