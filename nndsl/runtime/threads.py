"""Threads: how many BLAS threads a step's GEMMs use, and the pool of a threaded step."""
import ctypes
import glob
import os
import threading
import time

# A threaded step splits a batch only into parts of at least this many rows.
MIN_ROWS_PER_THREAD = 8
# A thread runs its rows of a batch in chunks, one after another, while its workspace is over
# this size (runtime/cpu.py, `_chunks`): the tensors of a chunk then stay in the caches (this
# machine: 1 MB of L2 a core, 32 MB of L3 shared with other machines).
CHUNK_BYTES = 4 << 20

_SETTER = []


def _blas_threads_setter():
    """OpenBLAS's `openblas_set_num_threads_local` in the library numba's BLAS calls go to
    (scipy's), or None. A thread of a threaded step multiplies with one BLAS thread: with
    OpenBLAS's own threads on top, two steps' threads compete for the cores and the pair ran
    slower than one step (1.55 against 1.31 ms, the LSTM benchmark)."""
    try:
        import scipy.linalg.cython_blas as blas
    except ImportError:
        return None
    root = os.path.dirname(os.path.dirname(os.path.abspath(blas.__file__)))    # .../scipy
    for path in sorted(glob.glob(os.path.join(root + ".libs", "*openblas*")) +
                       glob.glob(os.path.join(root, ".dylibs", "*openblas*"))):
        try:
            setter = getattr(ctypes.CDLL(path), "openblas_set_num_threads_local")
        except (OSError, AttributeError):
            continue
        setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
        return setter
    return None


_LOCK = threading.Lock()
_NOW = threading.local()          # the count this thread last set


def use_blas_threads(n):
    """The calling thread's GEMMs use `n` BLAS threads from now on (a call into OpenBLAS only
    when that changes)."""
    if getattr(_NOW, "n", None) != n:
        set_blas_threads(n)
        _NOW.n = n


def _setter():
    if not _SETTER:
        with _LOCK:
            if not _SETTER:
                _SETTER.append(_blas_threads_setter())
    return _SETTER[0]


def set_blas_threads(n):
    """Sets the calling thread's BLAS threads to `n`; returns the previous count (None when
    the BLAS offers no per-thread count, and for n None)."""
    setter = _setter()
    _NOW.n = n
    return setter(n) if setter is not None and n is not None else None


def blas_threads_setter_address():
    """The address of the BLAS's per-thread count setter (`int f(int)`), for compiled code that
    sets it in threads Python does not run (numba's); 0 when the BLAS has none."""
    setter = _setter()
    return ctypes.cast(setter, ctypes.c_void_p).value if setter is not None else 0


def use_loop_threads(n):
    """The `prange` loops of kernels that the calling thread runs from now on use `n` of numba's
    threads (at most as many as numba started)."""
    if getattr(_NOW, "loops", None) != n:
        import numba
        numba.set_num_threads(max(1, min(n, max_loop_threads())))
        _NOW.loops = n


def max_loop_threads():
    """The threads numba starts (NUMBA_NUM_THREADS: the cores, unless the user set fewer)."""
    import numba
    return numba.config.NUMBA_NUM_THREADS


def loop_threads_safe():
    """Whether numba's threading layer may run loops over threads for us: OpenMP or TBB.
    Its fallback `workqueue` is not safe to enter from two threads at once, and it was 2x
    slower than one thread for the batchnorm CNN (each loop wakes its workers)."""
    import numba
    numba.get_num_threads()                    # starts the layer, which names it
    return numba.threading_layer() in ("omp", "tbb")


def available_cores():
    """The cores this process may run on (its affinity), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_cores():
    """The machine's cores where this process may use them all, else None: the machine's
    busy time (`CpuLoad`) then says nothing of the cores left to it."""
    cores = os.cpu_count()
    return cores if cores and available_cores() == cores else None


class CpuLoad:
    """What else uses the CPUs, measured cheaply for the `Tuner`:

    - `others()`: the cores other processes kept busy lately: the machine's busy time
      (/proc/stat, the hypervisor's steal included) less this process's own and its
      children's (`os.times`), over the last WINDOW to 2·WINDOW seconds; None where it
      cannot tell (no /proc, too short a while);
    - `threads_idle()`: whether this process's other threads (OpenBLAS's, numba's) have
      stopped spinning: their CPU time (`time.process_time` less the calling thread's
      `time.thread_time`) grew by less than a fifth of a core over the last IDLE_WINDOW.

    `crowded()` says whether the others keep every core of the machine (`cores`; None: this
    process may not use them all, so it cannot tell) busy but about one, ours. `clock` is
    the tuner's; `machine`, `mine` and `threads` return CPU seconds (tests give fakes)."""

    WINDOW = 0.25            # seconds between samples of the machine's busy time
    IDLE_WINDOW = 0.01       # seconds over which the other threads' CPU time is judged
    IDLE_RATE = 0.2          # cores the other threads may use and still count as idle
    FREE = 1.5               # fewer idle cores than this: crowded (a program spinning beside our two
                             # threads got 0.76 of its core)

    def __init__(self, clock, cores, machine=None, mine=None, threads=None):
        self.clock, self.cores = clock, cores
        self.machine = machine or _machine_busy_seconds
        self.mine = mine or _own_busy_seconds
        self.threads = threads or _other_threads_seconds
        self.samples = [self._sample()]
        self.idle_since, self.idle_cpu, self.idle = None, 0.0, False

    def _sample(self):
        busy = self.machine()
        return self.clock(), None if busy is None else busy - self.mine()

    def tick(self, now):
        """Called on every step: a new sample once a WINDOW has passed."""
        if now - self.samples[-1][0] >= self.WINDOW:
            self.samples = [self.samples[-1], self._sample()]

    def others(self):
        (start, before), (now, busy) = self.samples[0], self._sample()
        if before is None or busy is None or now - start < self.WINDOW / 2:
            return None
        return max(0.0, busy - before) / (now - start)

    def crowded(self):
        others = None if self.cores is None else self.others()
        return None if others is None else self.cores - others < self.FREE

    def threads_idle(self, woken):
        """Whether the other threads, last woken by a step that ended at `woken`, are idle:
        judged over windows of IDLE_WINDOW that start after that step."""
        now = self.clock()
        if self.idle_since is None or self.idle_since < woken:
            self.idle_since, self.idle_cpu, self.idle = now, self.threads(), False
        elif now - self.idle_since >= self.IDLE_WINDOW:
            cpu = self.threads()
            self.idle = cpu - self.idle_cpu < self.IDLE_RATE * (now - self.idle_since)
            self.idle_since, self.idle_cpu = now, cpu
        return self.idle


def _machine_busy_seconds():
    """CPU seconds the whole machine has been busy (every process), or None without /proc."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if fields[:1] != [b"cpu"] or len(fields) < 9:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_busy_seconds():
    """CPU seconds of this process and its ended children: a cold first step compiles in a
    helper process (runtime/compiler.py), 2 s of CPU that are not another program's."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _other_threads_seconds():
    """CPU seconds this process's threads other than the calling one have used."""
    return time.process_time() - time.thread_time()


class Tuner:
    """The fastest way to run the training steps of one shape, found by timing those steps.

    A way is (parts, BLAS threads[, threads]): the batch's gradient in `parts` parts over
    `threads` threads (by default `parts`) of one BLAS thread each, or whole (one part) in one
    thread whose GEMMs use that many BLAS threads and whose split loops use `threads` of
    numba's threads (runtime/cpu.py). The tuner tries each way
    on a few steps (a way that is twice as slow as the best so far is dropped after one),
    keeps the fastest, and tries them all again when the steps become 1.5 times slower than
    they were (another program took a core: OpenBLAS threads that spin on a busy core make a
    step 10-70 times slower) or after a while (the core may be free again; the while doubles
    each time the choice stands, up to a minute). A way with BLAS threads whose steps got twice
    as slow (`DISTRUST`) is not trusted for a minute: its probes score no better than the
    steps it slowed to (OpenBLAS's threads beside a busy core probe well for a few steps,
    then spin against the other program), unless the load says the machine is idle a while
    later (`LOAD_LAG`): then a hiccup of the machine slowed it. Other ways are judged by
    their probes alone: a passing slowdown of the split batch right after a probe had kept
    it out for a minute, for a way 1.5x slower.
    A way that needs every core (the batch or the loops split) is probed only once OpenBLAS's
    threads have stopped spinning after the last step that used them (`SETTLE`; steps of the
    fastest one-thread way probed so far, `quiet`, run meanwhile): they spin ~0.1 s after
    their last GEMM, and the LSTM's split batch probed at 1.8 ms beside them against 0.95 ms
    after, so the tuner kept a slower way.
    The other way round, numba's OpenMP workers spin ~10 ms after the parts of a split step
    (GOMP's default spin count): a BLAS-threaded step in that while took 3-12 ms against 0.8
    (the MNIST MLP). A probe of BLAS threads waits `PARTS_SETTLE` after a way that needs every
    core, and a step of BLAS threads in that while does not count as a slowdown.
    Where `load` (a `CpuLoad`) tells, a round probes only the ways of one thread and one BLAS
    thread when other programs keep the other cores busy (there the wider ways lose, and one
    probe step of the BLAS threads beside a busy core took 58 ms against 1.6, the MNIST MLP),
    and the settling above ends as soon as this process's other threads stop using CPU
    (OpenBLAS's spin for 0.1 s here; SETTLE and PARTS_SETTLE become the longest waits).
    Every way computes the same step up to rounding. `clock` is `time.perf_counter`; tests
    give a fake one."""

    PROBE_STEPS = 3          # timed steps of each way in a probe; a way scores their median
    RECENT = 5               # steps whose median says the choice got slow
    SLOWER = 1.5
    DISTRUST = 2.0           # a BLAS-threaded choice this much slower is not trusted for a while
    FIRST_WAIT, LAST_WAIT = 2.0, 60.0
    # seconds to the next round after a doubtful one (`_doubtful`): a round takes ~0.15 s,
    # and a hiccup of this VM in that while (the MNIST MLP's BLAS threads probed at 2.0-3.5 ms
    # against 1.0) had the default run a way 1.2-1.6x slower until the next round, 2 s later
    RECHECK = 0.5
    # seconds OpenBLAS's idle threads spin before they sleep: 2^28 cycles by default
    # (OPENBLAS_THREAD_TIMEOUT), 0.09 s at 3 GHz, 0.13 s at 2 GHz
    SETTLE = 0.2
    # seconds numba's threads spin after a parallel region: GOMP_SPINCOUNT's 300,000 spins
    # took ~10 ms of an idle core here, and BLAS-threaded steps beside them were slow for
    # 30 ms (its thread and theirs share the core)
    PARTS_SETTLE = 0.1
    # seconds after a slowdown before the load's word that the machine is idle counts: it
    # averages the machine's busy time over the last 0.25-0.5 s (`CpuLoad.WINDOW`)
    LOAD_LAG = 2 * CpuLoad.WINDOW

    def __init__(self, ways, clock, load=None):
        self.ways, self.clock, self.load = list(ways), clock, load
        self.warm = set()                # kinds of ways that have run once (`_kind`)
        self.ran = set()                 # ways that have run once (their kind is warm)
        self.choice, self.baseline = self.ways[0], None
        self.wait = self.FIRST_WAIT
        self.slowed = {}                 # way -> (the typical step it slowed to, when)
        self.spun = None                 # when the last step whose GEMMs used BLAS threads ended
        self.parted = None               # when the last step that needed every core ended
        # the ways of one thread of one BLAS thread (the batch whole, or in chunks)
        self.calm = [w for w in self.ways if not self._wide(w)]
        self.scores = {}                 # way -> its typical probe step, in the round that last probed it
        self.recent = []
        self._start_probe()

    @staticmethod
    def _kind(way):
        """What a way's first run compiles or builds (its kernels, lanes, numba's threads): not
        its BLAS threads, which only change OpenBLAS's count."""
        return (way[0],) + tuple(way[2:])

    @staticmethod
    def _spins(way):
        return way[1] > 1

    @staticmethod
    def _needs_every_core(way):
        return (way[2] if len(way) > 2 else way[0]) > 1

    @staticmethod
    def _wide(way):
        return Tuner._spins(way) or Tuner._needs_every_core(way)

    @property
    def quiet(self):
        """What runs while other ways' threads settle: the fastest way of one thread and one
        BLAS thread probed so far (the first before any was). The CNN's batch in chunks took
        2.4 ms a step against 3.4 whole, and the first round runs ~50 steps so."""
        known = [w for w in self.calm if w in self.scores]
        return min(known, key=self.scores.get) if known else (self.calm[0] if self.calm else None)

    def _start_probe(self):
        # what the steps of the last choice take now: a way probed before any other of this
        # round that is twice as slow is dropped after one step too (the BLAS threads' way,
        # probed first, beside a busy core: 4-10 ms steps against 1.8)
        self.reference = self._typical(self.recent) if self.recent else None
        self.todo = list(self.ways)
        if self.reference is None and self.quiet is not None:
            # no steps yet to compare with: one thread first, so that the BLAS threads' way,
            # beside a busy core 40-60 ms a step against 1.6 (the MNIST MLP), is dropped
            # after one step (it had run four: a quarter of a second at the start)
            self.todo.remove(self.quiet)
            self.todo.insert(0, self.quiet)
        self.best = {}
        self.recent = []
        self.judged = self.load is None          # whether this round asked if the machine is crowded
        self.machine_idle = False                # ... and heard that it is not

    def way(self):
        """The way to run the next step."""
        if not self.todo:
            return self.choice
        way = self.todo[0]
        if not self.judged and self._wide(way):
            self.judged = True
            crowded = self.load.crowded()
            self.machine_idle = crowded is False
            if crowded:
                self.todo = [w for w in self.todo if not self._wide(w)]
                if not self.todo:
                    self._choose()
                    return self.choice
                way = self.todo[0]
        if self.quiet is not None and (self._needs_every_core(way) and self._settling(self.spun, self.SETTLE) or
                                       self._spins(way) and self._settling(self.parted, self.PARTS_SETTLE)):
            return self.quiet            # the other way's threads still spin: one thread meanwhile
        return way

    def _settling(self, since, wait):
        """Whether the threads a step woke (ending at `since`) may still spin: less than `wait`
        ago, and where the load is measured, this process's other threads still use CPU."""
        if since is None or self.clock() - since >= wait:
            return False
        return self.load is None or not self.load.threads_idle(since)

    def record(self, way, seconds):
        """The step just run that way took `seconds`. (Called after every step: the lecture
        MLP's takes 20 µs, so the clock is read once and the common case kept short.)"""
        now = self.clock()
        if self.load is not None:
            self.load.tick(now)
        spins = self._spins(way)
        beside_parts = spins and self._settling(self.parted, self.PARTS_SETTLE)
        if self._needs_every_core(way):
            self.parted = now
        if spins:
            self.spun = now
        elif self.spun is not None and now - self.spun >= self.SETTLE:
            self.spun = None             # OpenBLAS's threads sleep by now
        if way not in self.ran:
            self.ran.add(way)
            if self._kind(way) not in self.warm:
                self.warm.add(self._kind(way))    # its first run is not its speed
                return
        if self.todo:
            if way == self.todo[0]:      # not a step run while the BLAS threads settle
                self._probe(way, seconds)
            return
        if self.spun is not None and self._needs_every_core(way) or beside_parts:
            return                       # beside the threads the last probe woke: not its speed
        recent = self.recent
        recent.append(seconds)
        if len(recent) > self.RECENT:
            del recent[0]
        # The median can only pass the line when a slow step comes in: sorted only then (the
        # lecture MLP's step is 20 µs). One thread of one BLAS thread is what every other way
        # falls back to when a core is taken: its slow steps are no reason to probe again
        # before the while is up (beside a busy core such probes cost the default 4-6 %
        # against `threads=1`).
        limit = self.SLOWER * self.baseline
        slow = seconds > limit and way != self.quiet and len(recent) == self.RECENT and \
            sorted(recent)[self.RECENT // 2] > limit
        if slow:
            self.wait = self.FIRST_WAIT
            typical = sorted(recent)[self.RECENT // 2]
            # only BLAS threads probe well and then slow down (beside a busy core, 3-70x);
            # a passing hiccup of the machine (1.6-1.9x for a few steps on this VM) is not that
            if self._spins(self.choice) and typical >= self.DISTRUST * self.baseline:
                self.slowed[self.choice] = (typical, now)
        if slow or now >= self.next_probe:
            self._start_probe()

    @staticmethod
    def _typical(times):
        # the median, not the fastest: with a core busy, OpenBLAS threads that spin on it
        # give erratic steps, and a lucky fast one must not win (the MNIST MLP's step kept
        # two BLAS threads beside a busy core and ran 3.2x slower than quiet). Of two, the
        # slower: a way dropped after a lucky step and a slow one (twice the best) scored its
        # lucky step and won (the MNIST MLP's split batch beside a busy core, 1.55 then 5.4
        # ms against 1.75 for one thread, so the default ran 1.3x slower than `threads=1`)
        return sorted(times)[len(times) // 2]

    def _score(self, way):
        """The typical probe step of `way`, or the step it slowed to (`slowed`)."""
        score = self._typical(self.best[way])
        slowed, _ = self.slowed.get(way, (0.0, None))
        return max(score, slowed)

    def _forgive(self):
        """Drop the slowdowns of more than a minute ago, and where the load says the machine is
        idle a while after a slowdown (`LOAD_LAG`), that one too: no program on a busy core
        slowed that way but a hiccup of the machine (3.5x for 0.1 s, the MNIST MLP)."""
        now = self.clock()
        self.slowed = {way: (slowed, when) for way, (slowed, when) in self.slowed.items()
                       if now - when < self.LAST_WAIT and not (self.machine_idle and now - when >= self.LOAD_LAG)}

    def _probe(self, way, seconds):
        times = self.best.setdefault(way, [])
        times.append(seconds)
        self.scores[way] = self._typical(times)
        fastest = min((self._typical(t) for w, t in self.best.items() if w != way), default=self.reference)
        if len(times) >= self.PROBE_STEPS or (fastest is not None and seconds > 2 * fastest):
            self.todo.pop(0)
        if not self.todo:
            self._choose()

    def _choose(self):
        """The round is over: the fastest way probed is the choice until the next."""
        before, baseline = self.choice, self.baseline
        self._forgive()
        if self.best:
            self.choice = min(self.best, key=self._score)
            self.baseline = self._typical(self.best[self.choice])
        self.wait = min(self.wait * 2, self.LAST_WAIT) if self.choice == before else self.FIRST_WAIT
        self.next_probe = self.clock() + (self.RECHECK if self._doubtful(before, baseline) else self.wait)

    def _doubtful(self, before, baseline):
        """Whether the round just over may have chosen in a hiccup of the machine, so that the
        next round comes soon: the first round on a machine the load says is idle (nothing to
        compare its probes with), or a round that changed the choice to a way slower than the
        last choice ran (a hiccup that slowed the steady steps starts a round in it; where a
        program took a core instead, the next round confirms the change). A round that changes
        the choice to a faster way, or keeps it, is not doubtful: the checks end."""
        if baseline is None:
            return self.machine_idle
        return self.choice != before and self.baseline > baseline
