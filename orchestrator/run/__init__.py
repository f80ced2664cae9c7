"""One run of a manifest as numbered steps: admit, plan, lease, render, publish, report."""
