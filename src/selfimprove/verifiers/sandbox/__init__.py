"""Isolation layer for running generated code: a pool of pre-started bubblewrap sandboxes.

``SandboxPool`` (host side, ``pool.py``) runs jobs in long-lived bwrap sandboxes, each a fork server
(``_worker.py``) that forks a fresh process per job and sweeps its PID namespace afterwards. Test jobs
split the candidate and the tests into two processes so the verdict cannot be forged by the code under
test; the verifier built on it is ``selfimprove.verifiers.code.SandboxedTestsVerifier``. Design,
limits and threat model: ``docs/verifiers.md`` ("Sandboxed code tests").
"""

from selfimprove.verifiers.sandbox.pool import (
    DEFAULT_SANDBOX_UID,
    UNSAFE_WARNING,
    Job,
    JobResult,
    Limits,
    ProcessStatus,
    SandboxConfig,
    SandboxPool,
    SandboxUnavailableError,
    bwrap_argv,
    check_isolation,
)

__all__ = [
    "DEFAULT_SANDBOX_UID",
    "UNSAFE_WARNING",
    "Job",
    "JobResult",
    "Limits",
    "ProcessStatus",
    "SandboxConfig",
    "SandboxPool",
    "SandboxUnavailableError",
    "bwrap_argv",
    "check_isolation",
]
