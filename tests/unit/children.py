"""Forked children for tests of shared-memory native modules: run a body in a child process,
wait for it with a deadline, report how it ended."""
import faulthandler
import os
import signal
import time
import traceback

import pytest

WAIT = 10.0  # seconds a child may take before the test kills it and fails


def start_child(body):
    """Fork a child that runs `body()`; exit status 0 when it returns, 1 when it raises."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        faulthandler.disable()  # a crash is the parent's finding, reported by its status
        code = 1
        try:
            body()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def reap(pid, timeout=WAIT):
    """The child's wait status; a child still running after `timeout` is killed and fails."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"child {pid} did not finish in {timeout} s")
        time.sleep(0.001)


def run_in_child(body):
    status = reap(start_child(body))
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return os.WEXITSTATUS(status)
