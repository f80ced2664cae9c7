"""Intake: what comes in — manifests (CSV/YAML) read under budgets, validated into job records, and the one admission step."""
