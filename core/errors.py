"""One error base with a few families; the CLI maps families to exit codes in one place."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, located precisely enough to fix it."""

    where: str  # file (and line/row) or URI
    field: str | None
    reason: str
    hint: str | None = None

    def __str__(self) -> str:
        loc = self.where + (f" field '{self.field}'" if self.field else "")
        return f"{loc}: {self.reason}" + (f" — {self.hint}" if self.hint else "")


class S2VError(Exception):
    """Base of every error this tool raises on purpose."""

    exit_code = 1


class InputError(S2VError):
    """The user's input (manifest, media, settings, URI) is wrong; fixing it is the user's move."""

    exit_code = 2

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])

    def __str__(self) -> str:
        head = super().__str__()
        if not self.problems:
            return head
        return head + "\n" + "\n".join(f"  - {p}" for p in self.problems)


class ManifestError(InputError):
    """A manifest cannot be read or has invalid rows."""


class MediaError(InputError):
    """An input media file is missing, unreadable or unusable (corrupt, empty, silent, too small)."""


class ConfigError(InputError):
    """Settings or a cluster config are invalid."""


class RenderError(S2VError):
    """A job failed while rendering, stitching or checking its output; other jobs go on."""


class TransientError(S2VError):
    """A failure worth retrying (network blip, 5xx, a flaky subprocess)."""


class StorageError(S2VError):
    """A storage operation failed for a reason retrying will not fix (no bucket, access denied)."""

    exit_code = 2


class ClusterError(S2VError):
    """A cluster could not be created, reached or torn down."""


class NotReady(ClusterError):
    """`s2v cluster check` found what would fail a cluster (credentials, roles, quotas, images, keys): the account
    or the config to fix before anything is launched."""

    exit_code = 2


class ImageError(ClusterError):
    """A node image could not be built or pushed (`s2v cluster image`): the build or the push failed."""


class ImageToolMissing(ImageError):
    """Neither docker nor podman is on PATH: nothing can build or push a node image here."""

    exit_code = 2


class RegistryLoginFailed(ImageError):
    """The image registry refused the login (or its credentials could not be had): fix the account, not the code."""

    exit_code = 2


class ChainBroken(S2VError):
    """The previous clip's tail is neither in memory nor checkpointed (its render failed): not the job's fault."""


class Preempted(S2VError):
    """This node got a preemption notice; the chain continues elsewhere from its last checkpoint."""

    def __init__(self, message: str, node: str = ""):
        super().__init__(message)
        self.node = node


class Warned(S2VError):
    """This node has an early spot warning (AWS rebalance): it finishes its chain but starts no new one."""


class CudaUnavailable(ClusterError):
    """Ray granted a GPU but CUDA does not work there, and the backend must not fall back to the CPU."""


class InterruptedRun(S2VError):
    """The run was stopped (Ctrl-C, budget, preemption of the driver); a rerun resumes."""

    exit_code = 130


def exit_code_for(exc: BaseException) -> int:
    """The single place where errors become process exit codes."""
    if isinstance(exc, S2VError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 1


@dataclass
class ProblemList:
    """Collects problems so validation can report every one at once."""

    items: list[Problem] = field(default_factory=list)

    def add(self, where: str, field_name: str | None, reason: str, hint: str | None = None) -> None:
        self.items.append(Problem(where, field_name, reason, hint))

    def __bool__(self) -> bool:
        return bool(self.items)
