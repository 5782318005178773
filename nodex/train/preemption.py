"""Preemption: SIGTERM (what Slurm and most schedulers send), SIGHUP (a closed terminal; not under ``nohup``) and
submitit's "USR" signal are recorded, not acted on
mid-step; the training loop asks :attr:`StopRequest.signal` at each step boundary, saves, and stops.

Ctrl-C (SIGINT) stops at once where that loses nothing: while a step draws its batch and computes its gradients
(:attr:`StopRequest.abortable`; the loop then rewinds the batch stream, so the saved state is the one that step
starts from). From the optimizer update to the next step boundary (the update, the step count, logging, validation,
checkpoints) it is recorded and acted on at the boundary, like SIGTERM, so a step is never half applied.

Handlers chain: :meth:`StopRequest.forward` calls the handler that was installed before for every signal that
arrived (submitit's: SIGTERM is only logged, SIGUSR2 requeues the job and exits), so nodex never silently breaks a
launcher's requeue protocol, also when a preemption brings SIGTERM and SIGUSR2 one after the other.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Callable

HANGUP = getattr(signal, "SIGHUP", None)  # the terminal closed: a stop like SIGTERM, unless ignored (nohup)
SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR2", None), HANGUP)
                if s is not None)


def catchable(signals: tuple[int, ...]) -> tuple[int, ...]:
    """``signals`` without SIGHUP where the process ignores it (started under ``nohup``): closing the terminal must
    not stop such a run."""
    return tuple(s for s in signals if not (s == HANGUP and signal.getsignal(s) == signal.SIG_IGN))


class Preempted(BaseException):
    """Raised by the loop after it saved its state because a stop signal arrived (a ``BaseException``, like
    ``KeyboardInterrupt``: no ``except Exception`` on the way swallows it)."""

    def __init__(self, signum: int, step: int) -> None:
        self.signum, self.step = signum, step
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")

    @property
    def exit_code(self) -> int:
        """The shell convention for death by a signal: 128 + its number (SIGTERM: 143)."""
        return 128 + self.signum


class StoppedWhileStarting(BaseException):
    """A stop signal (SIGTERM, SIGHUP) that arrived while nodex started, before a run could record it: raised by
    :func:`stop_while_starting`, the CLI's handler until the run's :class:`StopRequest` takes over."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name} before the run started")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def stop_while_starting(signum: int, frame: FrameType | None) -> None:
    """The CLI's handler for SIGTERM/SIGHUP until a run handles them: one line and the signal's exit code instead of
    a silent death (:class:`StoppedWhileStarting`)."""
    raise StoppedWhileStarting(signum)


def install_startup_handlers() -> None:
    """:func:`stop_while_starting` for SIGTERM and SIGHUP where they still have their default action (not a
    launcher's handler, not ``nohup``'s ignore)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (getattr(signal, "SIGTERM", None), HANGUP):
        if signum is not None and signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, stop_while_starting)


class StopRequest:
    """``with StopRequest() as stop:`` records the first stop signal in ``stop.signal`` (``None`` until then) and
    every distinct one, in order, in ``stop.received``.

    Only the main thread can install signal handlers; elsewhere (a launcher's worker thread) this is a no-op.
    """

    def __init__(self, signals: tuple[int, ...] = SIGNALS, *, interrupt: bool = True) -> None:
        self.signals = signals
        self.signal: int | None = None
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}
        self.interrupt = interrupt
        self.abortable = True  # a SIGINT now raises KeyboardInterrupt at once; False: recorded until the boundary
        self.interrupted = False  # a SIGINT was recorded while not abortable

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        if self.abortable:
            raise KeyboardInterrupt
        self.interrupted = True

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signum
        if signum not in self.received:
            self.received.append(signum)

    def forward(self) -> None:
        """Hand each recorded signal, in the order it came, to the handler installed before ours, if any (submitit's
        SIGUSR2 handler requeues the job and exits: it raises ``SystemExit``)."""
        for signum in list(self.received):  # SIGINT is never forwarded: it ends the run as KeyboardInterrupt
            previous = self._previous.get(signum)
            if callable(previous) and previous is not stop_while_starting:  # the CLI's: the run has recorded it
                previous(signum, None)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in catchable(self.signals):
                self._previous[signum] = signal.signal(signum, self._record)
            if self.interrupt:
                self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._interrupt)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)


def raise_if_requested(stop: StopRequest | None, step: int, save: Callable[[], None]) -> None:
    """At a step boundary: when a stop signal was recorded, ``save()`` the state and raise :class:`Preempted`; when a
    SIGINT was recorded, raise ``KeyboardInterrupt`` (the loop saves on its way out)."""
    if stop is not None and stop.signal is not None:
        save()
        raise Preempted(stop.signal, step)
    if stop is not None and stop.interrupted:
        raise KeyboardInterrupt
