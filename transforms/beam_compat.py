"""Version-checked workarounds for three faults of Beam 2.61: a data-loss race in the local
multi-process runner, a DoFn introspection repeated thousands of times per job, and an
options view parsed anew at every one of the thousand calls that ask for it.

Flow position: pipeline.preprocess calls `prepare_local_parallelism(options)`,
`cache_dofn_specs()` and `cache_option_views()` before it builds the pipeline
(tests/conftest.py calls the latter two for the tests' own pipelines); nothing else in
the job touches Beam internals.

1. The race (apache_beam 2.61.0, runners/worker/data_plane.py; docs/SCALING.md 2.1.1
lists which streams have it): `TimeBasedBufferingClosableOutputStream`'s flusher thread
runs `flush_callback(self.get())` then `self._clear()` under `self._flush_lock`, but
`write()` and the `write_*` methods take no lock, so bytes written in between vanish.

The fix (docs/SCALING.md 2.1.2): `write`, every `write_*` and `close` hold the flush
lock, made re-entrant because the Cython `write` calls the overriding `write_var_int64`.
It patches this process (the runner's streams, `multi_threading`'s harness); a
`multi_processing` worker's streams have no time limit unless
`--experiments=data_buffer_time_limit_ms=N` is given, which `prepare_local_parallelism`
refuses, as it refuses any Beam version but `CHECKED_VERSION`.

2. The repeated introspection (docs/SCALING.md 2.6): `apache_beam.transforms.userstate
.get_dofn_specs(dofn)` wraps every method of the DoFn (about 40, DoFn's own included)
and calls `inspect.signature` on each, and Beam calls it again for the same DoFn
instance at construction, at the Runner API round trip and per stage: about 9 times per
instance, 1,973 calls and 61,000 signatures for the log job on 100 records, 22% of its
CPU. The answer depends only on the instance's methods' default arguments, which do
not change, so `cache_dofn_specs` remembers it per instance (a weak reference guards
against a reused id; every call gets new sets) and per set of methods (`_methods_key`),
which answers the copies each stage's bundle processor unpickles; on another Beam
version it does nothing.

3. The options views (docs/SCALING.md 2.7): `PipelineOptions.view_as(cls)` builds a new
`cls(self._flags)`, which makes an argparse parser of cls's options and parses every
flag again, and `Pipeline.apply` asks for `view_as(TypeOptions)` (and others) several
times per transform: 1,065 views for the log job's 1,056 applications on a 900-impression
world, a third of its pipeline's construction. A view keeps no values (it reads and
writes the shared `_all_options`), so `cache_option_views` hands out one view per options
instance and class; on another Beam version it does nothing.
"""

import threading
import types
from typing import Any, Dict, Optional, Set, Tuple
import weakref

from absl import logging
import apache_beam as beam
from apache_beam.options import pipeline_options
from apache_beam.runners.worker import data_plane
from apache_beam.transforms import userstate

CHECKED_VERSION = "2.61.0"
LOCAL_PARALLEL_MODES = ("multi_processing", "multi_threading")
DIRECT_RUNNERS = (None, "DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner",
                  "FnApiRunner")
TIME_LIMIT_EXPERIMENT = "data_buffer_time_limit_ms"
_WRITE_METHODS = ("write", "write_byte", "write_var_int64", "write_bigendian_int64",
                  "write_bigendian_uint64", "write_bigendian_int32", "write_bigendian_int16",
                  "write_bigendian_double", "write_bigendian_float")

_STREAM = data_plane.TimeBasedBufferingClosableOutputStream
_ORIGINALS = {name: _STREAM.__dict__[name] for name in ("__init__", "close")
              if name in _STREAM.__dict__}
_PATCH_LOCK = threading.Lock()


class UnsupportedBeamModeError(RuntimeError):
  """A local multi-process/-thread run on a Beam version the fix was not checked against."""


def _locked_init(self, close_callback=None, flush_callback=None,
                 size_flush_threshold=data_plane._DEFAULT_SIZE_FLUSH_THRESHOLD,  # pylint: disable=protected-access
                 time_flush_threshold_ms=data_plane._DEFAULT_TIME_FLUSH_THRESHOLD_MS):  # pylint: disable=protected-access
  # 2.61.0's __init__ with one change: the flush lock is re-entrant and exists before
  # the periodic flusher starts.
  data_plane.SizeBasedBufferingClosableOutputStream.__init__(
      self, close_callback, flush_callback, size_flush_threshold)
  assert time_flush_threshold_ms > 0
  self._time_flush_threshold_ms = time_flush_threshold_ms
  self._flush_lock = threading.RLock()
  self._schedule_lock = threading.Lock()
  self._closed = False
  self._schedule_periodic_flush()


def _locked_close(self):
  # 2.61.0's close, whose final get() now excludes a concurrent flush. The schedule
  # lock is released before the flush lock is taken (the flusher takes them in the
  # other order), so the two cannot deadlock.
  with self._schedule_lock:
    self._closed = True
    if self._periodic_flusher:
      self._periodic_flusher.cancel()
      self._periodic_flusher = None
  with self._flush_lock:
    data_plane.ClosableOutputStream.close(self)


def _locked(name):
  unlocked = getattr(data_plane.OutputStream, name)

  def write(self, *args, **kwargs):
    with self._flush_lock:
      return unlocked(self, *args, **kwargs)

  write.__name__ = name
  write.__doc__ = f"OutputStream.{name} under the flush lock (transforms/beam_compat.py)."
  return write


def is_fix_applied() -> bool:
  return _STREAM.__init__ is _locked_init


def apply_fix() -> None:
  """Patches the stream class in this process (idempotent).

  Raises:
    UnsupportedBeamModeError: apache_beam is not CHECKED_VERSION.
  """
  if beam.__version__ != CHECKED_VERSION:
    raise UnsupportedBeamModeError(
        f"apache_beam {beam.__version__}: DirectRunner's multi_processing/multi_threading "
        f"modes lose records in Beam {CHECKED_VERSION} (docs/SCALING.md 2.1) and the fix in "
        f"transforms/beam_compat.py was checked against {CHECKED_VERSION} only. Run without "
        f"--local_workers / --direct_running_mode (in_memory, one core), or check "
        f"apache_beam/runners/worker/data_plane.py of {beam.__version__} and update "
        f"CHECKED_VERSION.")
  with _PATCH_LOCK:
    if is_fix_applied():
      return
    _STREAM.__init__ = _locked_init
    _STREAM.close = _locked_close
    for name in _WRITE_METHODS:
      setattr(_STREAM, name, _locked(name))
  logging.info("Applied the data_plane flush-lock fix (transforms/beam_compat.py) for "
               "apache_beam %s", beam.__version__)


def remove_fix() -> None:
  """Restores the class as Beam ships it (for tests that show the race)."""
  with _PATCH_LOCK:
    for name in _WRITE_METHODS:
      if name in _STREAM.__dict__:
        delattr(_STREAM, name)
    for name, original in _ORIGINALS.items():
      setattr(_STREAM, name, original)


def local_parallel_mode(options: pipeline_options.PipelineOptions) -> Optional[str]:
  """"multi_processing" / "multi_threading" when `options` run one, else None."""
  runner = options.view_as(pipeline_options.StandardOptions).runner
  runner_name = runner if runner is None or isinstance(runner, str) else type(runner).__name__
  mode = options.view_as(pipeline_options.DirectOptions).direct_running_mode
  if runner_name in DIRECT_RUNNERS and mode in LOCAL_PARALLEL_MODES:
    return mode
  return None


def prepare_local_parallelism(options: pipeline_options.PipelineOptions) -> Optional[str]:
  """Applies the fix when `options` run a local multi-process/-thread DirectRunner.

  Returns:
    The running mode the fix was applied for, or None (nothing to do; the default path
    is not touched).

  Raises:
    UnsupportedBeamModeError: such a mode on a Beam version other than CHECKED_VERSION,
      or with the `data_buffer_time_limit_ms` experiment (the workers' own output streams
      would then be timed, in processes this fix does not reach).
  """
  mode = local_parallel_mode(options)
  if mode is None:
    return None
  experiments = options.view_as(pipeline_options.DebugOptions).experiments or []
  timed = [e for e in experiments if e.startswith(TIME_LIMIT_EXPERIMENT + "=")]
  if timed and mode == "multi_processing":
    raise UnsupportedBeamModeError(
        f"--experiments {timed[0]} gives the worker processes time-flushed output streams, "
        f"which lose data (docs/SCALING.md 2.1) and which transforms/beam_compat.py cannot "
        f"patch from the runner process; drop the experiment.")
  apply_fix()
  return mode


_GET_DOFN_SPECS = userstate.get_dofn_specs  # Beam's own
_DOFN_SPECS: Dict[int, Tuple[Any, Tuple[frozenset, frozenset]]] = {}


def _recall(cache: Dict[int, Tuple[Any, Any]], instance) -> Any:
  """What `cache` holds for `instance` (keyed by id, guarded by a weak reference against
  a reused id), or None."""
  entry = cache.get(id(instance))
  return entry[1] if entry is not None and entry[0]() is instance else None


def _remember(cache: Dict[int, Tuple[Any, Any]], instance, value) -> Any:
  """Stores `value` for `instance` until it is collected (not when it is not weakly
  referenceable); returns `value`."""
  key = id(instance)
  try:
    reference = weakref.ref(instance, lambda _, key=key, cache=cache: cache.pop(key, None))
  except TypeError:  # not weakly referenceable: not cached
    return value
  cache[key] = (reference, value)
  return value


# Answers by what they are a function of (`_methods_key`), for the copies of a DoFn that
# each stage's bundle processor unpickles: [key] -> (specs, the functions' defaults,
# held so that the ids in the key stay theirs).
_SPECS_BY_METHODS: Dict[Tuple[Any, ...], Tuple[Tuple[frozenset, frozenset], Any]] = {}


def _methods_key(dofn) -> Optional[Tuple[Any, ...]]:
  """What Beam's `get_dofn_specs(dofn)` reads of `dofn`, as a dict key, or None.

  Beam inspects every bound method `dir(dofn)` finds (the same `getattr`s as here), each
  through `inspect.signature` of its function, unless the instance has an
  `_inspect_<name>` for it (CallableWrapperDoFn's `_inspect_process`, read when the
  wrapped callable is a bound method): the answer is then the instance's, and None
  sends it to the per-instance cache alone. Otherwise the key is (name, function, ids of
  its defaults) per method: two instances with the same key get the same answer.
  """
  key = []
  for name in dir(dofn):
    value = getattr(dofn, name, None)
    if not isinstance(value, types.MethodType):
      continue
    if hasattr(dofn, "_inspect_" + name):
      return None
    function = value.__func__
    key.append((name, function, id(getattr(function, "__defaults__", None)),
                id(getattr(function, "__kwdefaults__", None))))
  key = tuple(key)
  try:
    hash(key)
  except TypeError:  # an unhashable callable as a method's function
    return None
  return key


def _cached_dofn_specs(dofn) -> Tuple[Set[Any], Set[Any]]:
  """`userstate.get_dofn_specs(dofn)`, computed once per DoFn instance and once per set
  of methods (`_methods_key`: the unpickled copies of a DoFn) (module doc, 2)."""
  specs = _recall(_DOFN_SPECS, dofn)
  if specs is None:
    key = _methods_key(dofn)
    known = _SPECS_BY_METHODS.get(key) if key is not None else None
    if known is not None:
      specs = known[0]
    else:
      state_specs, timer_specs = _GET_DOFN_SPECS(dofn)
      specs = (frozenset(state_specs), frozenset(timer_specs))
      if key is not None:
        _SPECS_BY_METHODS[key] = (specs, tuple(
            (getattr(f, "__defaults__", None), getattr(f, "__kwdefaults__", None))
            for _, f, _, _ in key))
    specs = _remember(_DOFN_SPECS, dofn, specs)
  return set(specs[0]), set(specs[1])  # new sets: a caller's change stays its own


def cache_dofn_specs() -> bool:
  """Makes `userstate.get_dofn_specs` remember its answer per DoFn instance (idempotent),
  on CHECKED_VERSION only; returns whether the cache is in place."""
  if beam.__version__ != CHECKED_VERSION:
    return False
  userstate.get_dofn_specs = _cached_dofn_specs
  return True


def uncache_dofn_specs() -> None:
  """Restores Beam's own `get_dofn_specs` (for the test that compares both)."""
  userstate.get_dofn_specs = _GET_DOFN_SPECS
  _DOFN_SPECS.clear()
  _SPECS_BY_METHODS.clear()


_VIEW_AS = pipeline_options.PipelineOptions.view_as  # Beam's own
_VIEWS: Dict[int, Tuple[Any, Dict[type, Any]]] = {}


def _cached_view_as(self, cls):
  """`PipelineOptions.view_as(cls)`, made once per options instance and class (module
  doc, 3). A view holds no values of its own: it reads and writes the instance's
  `_all_options` dict, so the same view serves every later call; a view made before the
  instance's dict was replaced is made again."""
  views = _recall(_VIEWS, self)
  if views is None:
    views = _remember(_VIEWS, self, {})
  view = views.get(cls)
  if view is None or view._all_options is not self._all_options:  # pylint: disable=protected-access
    view = views[cls] = _VIEW_AS(self, cls)
  return view


def cache_option_views() -> bool:
  """Makes `PipelineOptions.view_as` hand out one view per options instance and class
  (idempotent), on CHECKED_VERSION only; returns whether the cache is in place."""
  if beam.__version__ != CHECKED_VERSION:
    return False
  pipeline_options.PipelineOptions.view_as = _cached_view_as
  return True


def uncache_option_views() -> None:
  """Restores Beam's own `view_as` (for the test that compares both)."""
  pipeline_options.PipelineOptions.view_as = _VIEW_AS
  _VIEWS.clear()
