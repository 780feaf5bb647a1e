"""Which host of the job this process is. The job's launcher says so, read by JAX's own
cluster detection (a TPU VM's metadata server, GKE's TPU variables, SLURM under srun, Open
MPI, a Kubernetes Indexed Job), or SSL_JAX_COORDINATOR, SSL_JAX_NUM_PROCESSES and
SSL_JAX_PROCESS_ID say it explicitly; several hosts start JAX's multi-controller runtime
(its coordination service: barriers, heartbeats, the preemption sync point, what Orbax
needs). A launch that cannot work (`python` started by sbatch itself for several tasks, a
launcher whose peers JAX cannot find, peers that never start) is a one-line HostsError
naming the fix, never a hang. A host that dies mid-run ends the others: at once and in one
line where their collective fails (gloo, on CPU), else by JAX's heartbeat timeout.

A single process on one machine, launched by none of these, looks at a few environment
variables and nothing else: no network, no change."""

import dataclasses
import os
import re
import sys
import threading
import time

import jax

from ssl_jax.errors import ConfigError

INIT_TIMEOUT_S = 300        # for every host to start: SSL_JAX_INIT_TIMEOUT_S
HEARTBEAT_TIMEOUT_S = 100   # JAX's: a host silent this long is dead: SSL_JAX_HEARTBEAT_TIMEOUT_S
EXPLICIT = ('SSL_JAX_COORDINATOR', 'SSL_JAX_NUM_PROCESSES', 'SSL_JAX_PROCESS_ID')


class HostsError(ConfigError):
  """A launch that cannot work, said in one line with its fix. A ConfigError, so that the
  command line prints it as one line and exits 1, as it does a bad config."""


@dataclasses.dataclass(frozen=True)
class Launch:
  """What the launcher says about this process; `launcher` 'local' is one process alone."""
  launcher: str = 'local'
  num_processes: int = 1
  process_id: int = 0
  coordinator: str = ''
  local_device_ids: tuple = None    # None: every device of the machine (or JAX_LOCAL_DEVICE_IDS)

  def describe(self) -> str:
    return f'host {self.process_id} of {self.num_processes} ({self.launcher}, coordinator {self.coordinator})'


def _int_env(name: str, default: int = 1) -> int:
  text = os.environ.get(name, '')
  try:
    return int(text) if text.strip() else default
  except ValueError as e:
    raise HostsError(f'{name}={text!r} is not a whole number') from e


def _explicit() -> Launch:
  missing = [k for k in EXPLICIT if not os.environ.get(k)]
  if missing:
    raise HostsError(f'SSL_JAX_COORDINATOR is set but not {" or ".join(missing)}: a job set by hand needs all three '
                     '(SSL_JAX_COORDINATOR=HOST0:PORT, SSL_JAX_NUM_PROCESSES=N, SSL_JAX_PROCESS_ID=0..N-1)')
  n, i = _int_env('SSL_JAX_NUM_PROCESSES'), _int_env('SSL_JAX_PROCESS_ID')
  if n < 1 or not 0 <= i < n:
    raise HostsError(f'SSL_JAX_PROCESS_ID={i} with SSL_JAX_NUM_PROCESSES={n}: the ids are 0 to N-1')
  coordinator = os.environ['SSL_JAX_COORDINATOR']
  if ':' not in coordinator:
    raise HostsError(f'SSL_JAX_COORDINATOR={coordinator!r} needs a port: HOST:PORT of host 0')
  return Launch('explicit', n, i, coordinator)


def _from_cluster(env, name: str, timeout_s: int) -> Launch:
  """The launch as JAX's ClusterEnv `env` reads it: the very values jax.distributed would use."""
  from jax._src.clusters import cloud_tpu_cluster  # pylint: disable=import-outside-toplevel
  try:
    n = env.get_process_count()
    if n <= 1:
      return Launch()
    coordinator = os.environ.get('JAX_COORDINATOR_ADDRESS') or env.get_coordinator_address(
        timeout_secs=timeout_s, override_coordinator_port=os.environ.get('JAX_COORDINATOR_PORT'))
    local = None
    # As jax.distributed does: one device per process where the launcher numbers the processes
    # of a machine (SLURM, Open MPI on GPUs), every device on a TPU VM or where JAX_LOCAL_DEVICE_IDS says.
    if not cloud_tpu_cluster.running_in_cloud_tpu_vm and 'JAX_LOCAL_DEVICE_IDS' not in os.environ:
      pid = env.get_local_process_id()
      local = None if pid is None else (pid,)
    return Launch(name, n, env.get_process_id(), coordinator, local)
  except (OSError, RuntimeError, KeyError, ValueError) as e:   # a variable or a name that is not there
    raise HostsError(f'{name}: JAX could not read which hosts make up this job ({_first_line(e)})') from e


def _explicit_fix(size_var: str, rank_var: str) -> str:
  return (f'set SSL_JAX_COORDINATOR=HOST0:PORT, SSL_JAX_NUM_PROCESSES=${size_var} and '
          f'SSL_JAX_PROCESS_ID=${rank_var} on every host')


def detect(timeout_s: int = INIT_TIMEOUT_S) -> Launch:
  """This process's place in its job, from the environment (os.environ) and, on a TPU VM only,
  its metadata server; a launch that cannot start is a HostsError saying how to start it."""
  # pylint: disable-next=import-outside-toplevel
  from jax._src.clusters import cloud_tpu_cluster, k8s_cluster, ompi_cluster, slurm_cluster
  env = os.environ
  if env.get('SSL_JAX_COORDINATOR'):
    return _explicit()

  if 'SLURM_JOB_ID' in env:
    tasks = _int_env('SLURM_NTASKS', _int_env('SLURM_NPROCS'))
    if tasks > 1 and 'SLURM_STEP_ID' not in env:
      raise HostsError(f'SLURM job {env["SLURM_JOB_ID"]} has {tasks} tasks but this python was started by the batch '
                       'script itself (no srun), as one process that would wait for the others forever: '
                       f'start it as `{_srun_command()}`')
    if tasks > 1:
      if not slurm_cluster.SlurmCluster.is_env_present():
        missing = [k for k in ('SLURM_STEP_NODELIST', 'SLURM_PROCID', 'SLURM_LOCALID') if k not in env]
        raise HostsError(f'srun started {tasks} tasks but {", ".join(missing)} is not set, which JAX finds the '
                         f'other tasks by: {_explicit_fix("SLURM_NTASKS", "SLURM_PROCID")}')
      return _from_cluster(slurm_cluster.SlurmCluster, 'slurm', timeout_s)
    return Launch()

  size = _int_env('OMPI_COMM_WORLD_SIZE')
  if size > 1:
    if not ompi_cluster.OmpiCluster.is_env_present():
      fix = _explicit_fix('OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_RANK')
      raise HostsError(f'Open MPI started {size} processes without OMPI_MCA_orte_hnp_uri (Open MPI 5 and later), '
                       f'where JAX finds no coordinator: {fix}')
    return _from_cluster(ompi_cluster.OmpiCluster, 'openmpi', timeout_s)
  if _int_env('PMI_SIZE') > 1:
    raise HostsError(f'an MPI launcher (MPICH, Intel MPI) started {env["PMI_SIZE"]} processes, which JAX does '
                     f'not read: {_explicit_fix("PMI_SIZE", "PMI_RANK")}, or use srun or Open MPI')

  tpu_workers = env.get('TPU_PROCESS_ADDRESSES') or env.get('TPU_WORKER_HOSTNAMES') or ''
  if cloud_tpu_cluster.GkeTpuCluster.is_env_present():      # GKE: TPU_WORKER_HOSTNAMES, TPU_WORKER_ID
    return _from_cluster(cloud_tpu_cluster.GkeTpuCluster, 'gke tpu', timeout_s)
  if tpu_workers.count(','):
    raise HostsError(f'TPU_WORKER_HOSTNAMES names {tpu_workers.count(",") + 1} TPU hosts but JAX sees no TPU on '
                     'this one: install jax[tpu] (libtpu) in the image')
  if cloud_tpu_cluster.running_in_cloud_tpu_vm:              # a TPU VM: its metadata server says
    try:
      tpu_vm = cloud_tpu_cluster.GceTpuCluster.is_env_present()
    except OSError as e:
      raise HostsError(f'this TPU VM\'s metadata server did not answer ({_first_line(e)}): JAX reads the slice\'s '
                       'hosts from it; set TPU_SKIP_MDS_QUERY=1 to run one host alone') from e
    return _from_cluster(cloud_tpu_cluster.GceTpuCluster, 'tpu vm', timeout_s) if tpu_vm else Launch()

  if 'KUBERNETES_SERVICE_HOST' in env and 'JOB_COMPLETION_INDEX' in env:   # a pod of an Indexed Job
    try:
      import kubernetes  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError as e:
      raise HostsError('a pod of a Kubernetes Indexed Job, whose other pods JAX finds through the Kubernetes API: '
                       'install jax[k8s] in the image (and let the pod\'s service account read pods and jobs), or '
                       f'{_explicit_fix("N", "JOB_COMPLETION_INDEX")}') from e
    try:
      if k8s_cluster.K8sCluster.is_env_present():
        return _from_cluster(k8s_cluster.K8sCluster, 'kubernetes', timeout_s)
    except Exception as e:  # pylint: disable=broad-except
      raise HostsError(f'the Kubernetes API did not say which pods make up this job ({_first_line(e)}): the pod\'s '
                       'service account must read pods and jobs, and the Job be Indexed') from e
  return Launch()


def initialize() -> Launch:
  """Starts JAX's multi-controller runtime when the launcher says this is a multi-host job
  (before anything asks JAX about devices); says `host i of N` on stderr, on every host.

  A job whose hosts do not all start within SSL_JAX_INIT_TIMEOUT_S (default 300) is a one-line
  error on each, within that time; a host silent for SSL_JAX_HEARTBEAT_TIMEOUT_S (default 100,
  JAX's) is dead, and the others stop."""
  if jax.distributed.is_initialized():
    return Launch('jax', jax.process_count(), jax.process_index())
  timeout_s = _int_env('SSL_JAX_INIT_TIMEOUT_S', INIT_TIMEOUT_S)
  launch = detect(timeout_s)
  if launch.launcher == 'local':
    _require_coordination()
    return launch
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
  if xla_bridge.backends_are_initialized():
    raise HostsError(f'{launch.describe()}: JAX was started before the hosts were: call '
                     'ssl_jax.hosts.initialize() before anything asks JAX about devices')
  # Cross-process collectives for CPU devices (only the CPU backend reads this).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  started = time.monotonic()
  watch = threading.Timer(timeout_s, _not_all_started, (launch, timeout_s))   # JAX's own timeout aborts
  watch.daemon = True
  watch.start()
  try:
    jax.distributed.initialize(
        launch.coordinator, launch.num_processes, launch.process_id,
        local_device_ids=None if launch.local_device_ids is None else list(launch.local_device_ids),
        cluster_detection_method='deactivate',   # detect() has read the launcher: nothing more to look up
        initialization_timeout=timeout_s + 60,   # later than our timer: its abort is a stack dump, ours one line
        heartbeat_timeout_seconds=_int_env('SSL_JAX_HEARTBEAT_TIMEOUT_S', HEARTBEAT_TIMEOUT_S))
  except Exception as e:  # pylint: disable=broad-except
    raise HostsError(f'{launch.describe()}: the job\'s coordination did not start ({_first_line(e)})') from e
  finally:
    watch.cancel()
  _stop_together(launch)
  if launch.num_processes > 1:
    print(f'{launch.describe()}; all started in {time.monotonic() - started:.1f}s', file=sys.stderr, flush=True)
  return launch


def _require_coordination() -> None:
  """Several processes and no coordination client (JAX started before the hosts, or a TPU
  slice JAX's detection missed) would fail in Orbax or hang in a collective: say so now.
  Asks JAX only where it has started already or on a TPU VM (it would start there next)."""
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
  from jax._src.clusters import cloud_tpu_cluster  # pylint: disable=import-outside-toplevel
  if not (xla_bridge.backends_are_initialized() or cloud_tpu_cluster.running_in_cloud_tpu_vm):
    return
  if jax.process_count() > 1 and not jax.distributed.is_initialized():
    raise HostsError(f'this job has {jax.process_count()} processes but no coordination service (JAX\'s cluster '
                     'detection found no launcher): start it with gcloud --worker=all, srun, a GKE JobSet, or '
                     'set SSL_JAX_COORDINATOR, SSL_JAX_NUM_PROCESSES and SSL_JAX_PROCESS_ID, before JAX starts')


def _not_all_started(launch: Launch, timeout_s: int) -> None:
  """On the timer's thread, while the main one waits in JAX's connect (which releases the GIL)."""
  _exit_with(f'{launch.describe()}: not every host started within {timeout_s}s; start all '
             f'{launch.num_processes} (same command on each), check that they reach {launch.coordinator}, or '
             'set SSL_JAX_INIT_TIMEOUT_S to wait longer')


def _exit_with(message: str) -> None:
  """One line and exit 1, now: exiting normally would wait at JAX's shutdown barrier for hosts
  that are gone, then abort with a stack dump."""
  try:
    sys.stdout.flush()
  except Exception:  # pylint: disable=broad-except
    pass
  os.write(2, f'error: {message}\n'.encode())
  os._exit(1)  # pylint: disable=protected-access


# What a collective or the coordination service says when a host has gone.
LOST = re.compile(r'gloo|connection (closed|reset|refused)|broken pipe|heartbeat|unhealthy|coordination ?service|'
                  r'unavailable|deadline.?exceeded|nccl|socket closed', re.I)


def lost_host(launch: Launch, e: BaseException):
  """The one line for an error that says another host has gone, else None."""
  if not isinstance(e, Exception) or not LOST.search(str(e)):
    return None
  dead = re.search(r'Task (\d+) heartbeat timeout|stopped sending heartbeats\)?:\s*(\d+)', str(e))
  who = f'host {dead.group(1) or dead.group(2)}' if dead else 'another host'
  return (f'host {launch.process_id} of {launch.num_processes}: {who} stopped answering ({_first_line(e)}); '
          'every host stops (the first host to fail says why)')


def _stop_together(launch: Launch) -> None:
  """In a multi-host job an error that ends this host ends it now, in one line where another
  host has gone: the default exit would wait at JAX's shutdown barrier for the heartbeat
  timeout and then abort with a stack dump."""
  previous = sys.excepthook

  def excepthook(kind, value, tb):
    line = lost_host(launch, value)
    if line is None:
      previous(kind, value, tb)
      line = f'host {launch.process_id} of {launch.num_processes} stopped ({kind.__name__}); every host stops'
    _exit_with(line)

  sys.excepthook = excepthook


def _first_line(e: BaseException) -> str:
  text = ' '.join(str(e).split('\n', 1)[0].split())
  return (text[:200] + '...') if len(text) > 200 else text or type(e).__name__


def _srun_command() -> str:
  """The command this process runs, started by srun as it should be."""
  argv = sys.argv if sys.argv and sys.argv[0] else ['run.py']
  if os.path.basename(argv[0]) == 'ssl-jax':
    return ' '.join(['srun ssl-jax', *argv[1:2], '...'])
  return ' '.join(['srun python', *argv[:2], '...'])
