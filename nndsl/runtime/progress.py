"""What `fit` shows while it runs, and how it lets Ctrl-C finish the batch."""
import signal
import sys


def progress(epoch, epochs, done, total, loss, rate):
    """The progress bar of an epoch (on a terminal only)."""
    if not sys.stderr.isatty():
        return
    width = 24
    filled = int(width * done / total)
    bar = "=" * filled + ">" * (filled < width) + " " * (width - filled - 1)
    sys.stderr.write(f"\repoch {epoch}/{epochs} [{bar}] {done}/{total} loss {loss:.4f} {rate:,.0f} ex/s ")
    sys.stderr.flush()


def progress_done(line):
    """An epoch's line, replacing its progress bar."""
    if sys.stderr.isatty():
        sys.stderr.write("\r" + " " * 79 + "\r")
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def catch_signals(model):
    """While `fit` runs, the first SIGINT (or SIGTERM: a batch scheduler's notice, and what
    mpiexec forwards) sets `model._interrupted` and lets the batch finish (fit then
    checkpoints if asked and raises KeyboardInterrupt); a second one interrupts at once.
    Returns the handlers to restore, or None off the main thread (where Python allows no
    signal handlers)."""
    def handler(signum, frame):
        if model._interrupted:
            raise KeyboardInterrupt
        model._interrupted = True
        sys.stderr.write("\ninterrupted: finishing the batch (press Ctrl-C again to stop now)\n")

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in previous:
            signal.signal(s, handler)
    except ValueError:                   # not the main thread: leave signals alone
        return None
    return previous


def restore_signals(previous):
    for signum, handler in (previous or {}).items():
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)
