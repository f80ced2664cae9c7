"""Plan: each admitted job's audio analysed, cut into scenes and frame-exact clip chains, keyed, and costed."""
