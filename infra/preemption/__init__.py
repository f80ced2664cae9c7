"""Preemption notices (AWS IMDSv2, GCP metadata, SIGTERM) watched per node, and draining the current Ray node."""

from .metadata import AwsImdsSource, GcpMetadataSource
from .notice import Notice, Source
from .sigterm import (SigtermSource, boot_id, node_start_time, sigterm_flag_path, sigterm_trap_command,
                      write_sigterm_flag)
from .watcher import PreemptionWatcher, drain_this_node, make_source, watcher_from_settings

__all__ = [
    "AwsImdsSource", "GcpMetadataSource", "Notice", "PreemptionWatcher", "SigtermSource", "Source", "boot_id",
    "drain_this_node", "make_source", "node_start_time", "sigterm_flag_path", "sigterm_trap_command",
    "watcher_from_settings", "write_sigterm_flag",
]
