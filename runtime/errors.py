"""Errors a user can cause, and the one way every entry point reports them.

Every ``python -m PACKAGE.MODULE`` runs its ``main`` through :func:`run_main`. A known user error
(one of the classes below) becomes a single ``error: ...`` line on stderr and exit code 2; any other
exception keeps its traceback (exit code 1), because it is a bug to report, not an input to fix.

======================  =========================================================  ===================
class                   raised for                                                 also a
======================  =========================================================  ===================
``UserError``           base class: anything the user can fix                      ``Exception``
``ConfigError``         bad flag values and refused flag combinations              ``ValueError``
``DataError``           damaged, malformed or refused input data                   ``ValueError``
``MissingFileError``    an input file or directory that does not exist             ``DataError``,
                                                                                   ``FileNotFoundError``
``CheckpointError``     corrupt, unsafe, foreign or mismatched checkpoints         ``RuntimeError``
``NonFiniteError``      a NaN or infinite loss, metric or input value              ``FloatingPointError``
``DistributedError``    a peer or the launcher died, or a collective timed out     ``RuntimeError``
======================  =========================================================  ===================

The "also a" bases keep ``except ValueError`` (and friends) in callers working.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, List, Optional


class UserError(Exception):
    """An error the user can fix; reported as one ``error: ...`` line with exit code 2."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A bad flag value or a refused combination of flags."""


class DataError(UserError, ValueError):
    """Input data that is damaged, malformed or refused; the message names the file and the fix."""


class MissingFileError(DataError, FileNotFoundError):
    """An input file or directory that does not exist."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used: corrupt, truncated, unsafe, foreign or not matching the run."""


class NonFiniteError(UserError, FloatingPointError):
    """A NaN or infinite loss, metric or input value."""


class DistributedError(UserError, RuntimeError):
    """A peer process or the launcher died, or a collective did not finish within --dist_timeout."""


def _rank_suffix() -> str:
    world = os.environ.get("WORLD_SIZE", "1")
    return f" (rank {os.environ.get('RANK', '?')} of {world})" if world not in ("", "1") else ""


def report(err: BaseException) -> str:
    """The one-line message printed for a user error."""
    text = " ".join(str(err).split()) or type(err).__name__
    return f"error: {text}{_rank_suffix()}"


_PEER_FAILURE = ("gloo/transport", "Connection reset by peer", "Connection closed by peer", "Timed out waiting",
                 "ProcessGroupNCCL", "NCCL error", "Socket Timeout", "Broken pipe")


def is_peer_failure(err: BaseException) -> bool:
    """A collective that failed because a peer died or did not answer in time (gloo or NCCL)."""
    if any(cls.__name__ == "DistError" for cls in type(err).__mro__):
        return True
    return isinstance(err, RuntimeError) and any(p in str(err) for p in _PEER_FAILURE)


def _exit_without_teardown(code: int) -> None:
    """Leave now when a process group is broken: tearing it down at interpreter exit can abort the
    process (gloo threads still wait on the dead peer), which would hide the one-line message."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_main(main: Callable[[Optional[List[str]]], object], argv: Optional[List[str]] = None) -> int:
    """Run an entry point's ``main``; user errors -> one ``error:`` line on stderr and exit code 2.

    A collective that failed because a peer died or timed out (``--dist_timeout``) is reported in one
    line as well, with exit code 1. Returns the exit code; use as ``sys.exit(run_main(main))``.
    """
    try:
        main(argv)
    except UserError as err:
        sys.stdout.flush()
        print(report(err), file=sys.stderr, flush=True)
        _exit_without_teardown(err.exit_code)       # a rank that failed alone: peers may still be waiting
        return err.exit_code
    except RuntimeError as err:
        if not is_peer_failure(err):
            raise
        detail = " ".join(str(err).split())[:300]
        print(report(DistributedError(f"a peer process died or did not answer within --dist_timeout; "
                                      f"see the other ranks' output ({detail})")), file=sys.stderr, flush=True)
        _exit_without_teardown(1)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted" + _rank_suffix(), file=sys.stderr, flush=True)
        return 130
    return 0
