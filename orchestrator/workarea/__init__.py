"""The work area: its layout (checkpoints, run state), the tail codec, leases per job key, liveness, and gc."""
