"""The launchers in launch/ and the detection that reads them (ssl_jax/hosts.py): each
launcher's environment, as srun, sbatch, Open MPI, a TPU VM's metadata server and GKE set
it (mocked), gives the process id, count and coordinator JAX will use, or a one-line error
that names the fix; the recipes' own commands are checked with fake gcloud and srun. Then two
processes on loopback: one started without its peer, and one whose peer is SIGKILLed in
training, each ends in one line, exit 1, within its time limit; one whose peer hangs ends
within the heartbeat timeout."""

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, TINY
from test_multihost import free_port

from ssl_jax import hosts
from jax._src.clusters import cloud_tpu_cluster

LAUNCH = os.path.join(ROOT, 'launch')
PREFIXES = ('SSL_JAX_', 'SLURM_', 'OMPI_', 'PMI_', 'TPU_', 'MEGASCALE_', 'JAX_COORDINATOR', 'JAX_LOCAL_DEVICE_IDS',
            'KUBERNETES_', 'JOB_COMPLETION_INDEX')


@pytest.fixture
def env(monkeypatch):
  """No launcher at all (this machine as CI runs it), no TPU, and no network: each test adds
  its launcher's variables with env.setenv."""
  for key in list(os.environ):
    if key.startswith(PREFIXES):
      monkeypatch.delenv(key)
  monkeypatch.setattr(cloud_tpu_cluster, 'running_in_cloud_tpu_vm', False)

  def no_network(*args, **kwargs):
    raise AssertionError(f'network access: {args}')

  monkeypatch.setattr('socket.create_connection', no_network)
  monkeypatch.setattr('socket.gethostbyname', no_network)
  monkeypatch.setattr(cloud_tpu_cluster, 'get_metadata', no_network)
  return monkeypatch


def sbatch_options(path):
  """The #SBATCH options of a batch script, as {name: value}."""
  with open(path) as f:
    return dict(re.match(r'#SBATCH --([\w-]+)=(\S+)', line).groups() for line in f if line.startswith('#SBATCH'))


def one_line(text):
  assert '\n' not in text.strip(), text
  return text


def test_one_process_alone_starts_nothing_and_asks_no_one(env):
  assert hosts.detect() == hosts.Launch()
  env.setenv('KUBERNETES_SERVICE_HOST', '10.0.0.1')          # a CI runner in a pod
  env.setenv('SLURM_JOB_ID', '77')                           # sbatch of one task, or srun of one
  env.setenv('SLURM_NTASKS', '1')
  assert hosts.detect() == hosts.Launch()
  env.setenv('SLURM_STEP_ID', '0')
  assert hosts.detect() == hosts.Launch()
  started = time.perf_counter()
  assert hosts.initialize() == hosts.Launch()
  assert time.perf_counter() - started < 0.5
  import jax  # pylint: disable=import-outside-toplevel
  assert not jax.distributed.is_initialized()


def test_explicit_variables(env):
  env.setenv('SSL_JAX_COORDINATOR', 'node0:1234')
  env.setenv('SSL_JAX_NUM_PROCESSES', '4')
  env.setenv('SSL_JAX_PROCESS_ID', '2')
  launch = hosts.detect()
  assert launch == hosts.Launch('explicit', 4, 2, 'node0:1234')
  assert launch.describe() == 'host 2 of 4 (explicit, coordinator node0:1234)'
  env.setenv('SSL_JAX_PROCESS_ID', '4')
  with pytest.raises(hosts.HostsError, match='ids are 0 to N-1'):
    hosts.detect()
  env.delenv('SSL_JAX_NUM_PROCESSES')
  with pytest.raises(hosts.HostsError, match='not SSL_JAX_NUM_PROCESSES'):
    hosts.detect()


def test_sbatch_script_uses_srun_for_every_task(tmp_path):
  """The script run by a fake srun: what it starts, once per task, is `python run.py train`."""
  (tmp_path / 'srun').write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$SRUN_ARGS"\n')
  (tmp_path / 'srun').chmod(0o755)
  args = tmp_path / 'args'
  subprocess.run(['bash', os.path.join(LAUNCH, 'slurm.sbatch'), '--config', 'experiments/gpt.py:gpt2:124M'],
                 cwd=ROOT, check=True, env={**os.environ, 'PATH': f'{tmp_path}:{os.environ["PATH"]}',
                                            'SRUN_ARGS': str(args), 'WORKDIR': 'gs://bucket/run'})
  argv = args.read_text().split('\n')[:-1]
  start = argv.index('python')
  assert argv[start:start + 3] == ['python', 'run.py', 'train']
  assert argv[argv.index('--workdir') + 1] == 'gs://bucket/run'
  assert argv[-2:] == ['--config', 'experiments/gpt.py:gpt2:124M']
  assert '--kill-on-bad-exit=1' in argv[:start]


def test_srun_tasks_of_the_sbatch_script(env):
  """Each task srun starts for launch/slurm.sbatch: its id, the job's count, the first node as
  coordinator (port from the job id, as JAX picks it), and its one GPU."""
  options = sbatch_options(os.path.join(LAUNCH, 'slurm.sbatch'))
  nodes, per_node = int(options['nodes']), int(options['ntasks-per-node'])
  assert options['gpus-per-node'] == options['ntasks-per-node']          # one process per GPU
  tasks = nodes * per_node
  for k in (0, 1, per_node, tasks - 1):
    for key, value in dict(SLURM_JOB_ID='4242', SLURM_STEP_ID='0', SLURM_NTASKS=str(tasks), SLURM_PROCID=str(k),
                           SLURM_LOCALID=str(k % per_node), SLURM_NODEID=str(k // per_node),
                           SLURM_STEP_NODELIST=f'gpu[017-{17 + nodes - 1:03d}]', SLURM_JOB_NODELIST='gpu[017-018]',
                           SLURM_STEP_NUM_NODES=str(nodes)).items():
      env.setenv(key, value)
    launch = hosts.detect()
    assert launch == hosts.Launch('slurm', tasks, k, f'gpu017:{4242 % 4096 + 65536 - 4096}', (k % per_node,))
  env.setenv('JAX_COORDINATOR_PORT', '1234')
  assert hosts.detect().describe() == f'host {tasks - 1} of {tasks} (slurm, coordinator gpu017:1234)'


def test_sbatch_without_srun_is_a_one_line_error(env):
  """What sbatch sets for the batch script itself: the job's tasks, but no step of srun."""
  options = sbatch_options(os.path.join(LAUNCH, 'slurm.sbatch'))
  tasks = int(options['nodes']) * int(options['ntasks-per-node'])
  sbatch = dict(SLURM_JOB_ID='4242', SLURM_NTASKS=str(tasks), SLURM_NNODES=options['nodes'],
                SLURM_JOB_NODELIST='gpu[017-018]', SLURM_PROCID='0', SLURM_LOCALID='0', SLURM_NODEID='0')
  for key, value in sbatch.items():
    env.setenv(key, value)
  env.setattr(sys, 'argv', ['run.py', 'train', '--workdir', 'runs/x'])
  with pytest.raises(hosts.HostsError) as e:
    hosts.detect()
  assert 'start it as `srun python run.py train ...`' in one_line(str(e.value))
  assert f'{tasks} tasks' in str(e.value)

  # The command line says it in one line and exits 1, before JAX starts.
  proc = subprocess.run([sys.executable, 'run.py', 'train', '--workdir', 'runs/never'], cwd=ROOT,
                        env={**os.environ, **sbatch}, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines() == [
      f'error: SLURM job 4242 has {tasks} tasks but this python was started by the batch script itself (no srun), '
      'as one process that would wait for the others forever: start it as `srun python run.py train ...`']


def test_open_mpi_and_other_mpi(env):
  env.setenv('OMPI_MCA_orte_hnp_uri', '1531576320.0;tcp://10.96.0.1,10.148.0.1:34911')
  for key, value in dict(OMPI_COMM_WORLD_SIZE='4', OMPI_COMM_WORLD_RANK='3', OMPI_COMM_WORLD_LOCAL_RANK='1').items():
    env.setenv(key, value)
  assert hosts.detect() == hosts.Launch('openmpi', 4, 3, f'10.96.0.1:{1531576320 // 4096 % 4096 + 61440}', (1,))
  env.delenv('OMPI_MCA_orte_hnp_uri')                        # Open MPI 5 sets no such URI
  with pytest.raises(hosts.HostsError, match=r'SSL_JAX_NUM_PROCESSES=\$OMPI_COMM_WORLD_SIZE'):
    hosts.detect()
  for key in ('OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_LOCAL_RANK'):
    env.delenv(key)
  env.setenv('PMI_SIZE', '8')
  env.setenv('PMI_RANK', '5')
  with pytest.raises(hosts.HostsError, match=r'SSL_JAX_PROCESS_ID=\$PMI_RANK'):
    hosts.detect()


def tpu_vm(env, worker, endpoints):
  """A TPU VM as JAX sees it: TPU chips, and its metadata server (mocked) naming the slice's hosts."""
  env.setattr(cloud_tpu_cluster, 'running_in_cloud_tpu_vm', True)
  metadata = {'agent-worker-number': str(worker), 'worker-network-endpoints': endpoints}
  asked = []

  def get_metadata(key):
    asked.append(key)
    return (metadata[key], 200) if key in metadata else ('', 404)

  env.setattr(cloud_tpu_cluster, 'get_metadata', get_metadata)
  env.setattr('socket.gethostbyname', lambda host: '10.0.0.2')
  return asked


def test_tpu_vm_slice_from_its_metadata_server(env):
  endpoints = ','.join(f'w-{i}:1:10.0.0.{i + 2}' for i in range(4))   # name:id:ip, as the server gives them
  asked = tpu_vm(env, 2, endpoints)
  assert hosts.detect() == hosts.Launch('tpu vm', 4, 2, '10.0.0.2:8482')
  assert 'agent-worker-number' in asked
  tpu_vm(env, 0, 'w-0:1:10.0.0.2')                                   # a TPU VM of one host: alone, as today
  assert hosts.detect() == hosts.Launch()


def test_tpu_vm_recipe_runs_the_same_command_on_every_worker(tmp_path):
  (tmp_path / 'gcloud').write_text('#!/bin/sh\nprintf "%s\\n" "$@" >> "$GCLOUD_ARGS"\n')
  (tmp_path / 'gcloud').chmod(0o755)
  args = tmp_path / 'args'
  subprocess.run([os.path.join(LAUNCH, 'tpu_vm.sh'), 'train', 'my-tpu', 'us-east5-a', 'gs://bucket/run',
                  '--config', 'experiments/gpt.py:gpt2:124M', '--config.data.path=gs://bucket/corpus/*.jsonl.gz'],
                 check=True, env={**os.environ, 'PATH': f'{tmp_path}:{os.environ["PATH"]}', 'GCLOUD_ARGS': str(args)})
  argv = args.read_text().split('\n')[:-1]
  assert argv[:5] == ['compute', 'tpus', 'tpu-vm', 'ssh', 'my-tpu'] and '--worker=all' in argv
  command = next(a for a in argv if a.startswith('--command='))[len('--command='):]
  cd, run = command.split(' && ')
  assert cd == 'cd ssl_jax'
  assert shlex.split(run) == ['python3', 'run.py', 'train', '--workdir', 'gs://bucket/run', '--config',
                              'experiments/gpt.py:gpt2:124M', '--config.data.path=gs://bucket/corpus/*.jsonl.gz']


def test_gke_jobset_pods_find_each_other(env):
  """Each pod of launch/gke_tpu_jobset.yaml, with the variables GKE gives TPU pods of an
  Indexed Job (its hosts' names, from JobSet's naming, and its index)."""
  yaml = pytest.importorskip('yaml')
  with open(os.path.join(LAUNCH, 'gke_tpu_jobset.yaml')) as f:
    jobset = yaml.safe_load(f)
  assert jobset['kind'] == 'JobSet'
  [replicated] = jobset['spec']['replicatedJobs']
  job = replicated['template']['spec']
  assert job['completionMode'] == 'Indexed' and job['parallelism'] == job['completions']
  [container] = job['template']['spec']['containers']
  command = container['command']
  assert command[:3] == ['python', 'run.py', 'train'] and command[command.index('--workdir') + 1].startswith('gs://')
  chips = job['template']['spec']['nodeSelector']['cloud.google.com/gke-tpu-topology'].split('x')
  per_host = container['resources']['limits']['google.com/tpu']
  assert job['parallelism'] == eval('*'.join(chips)) // per_host   # pylint: disable=eval-used
  name, rjob, n = jobset['metadata']['name'], replicated['name'], job['parallelism']
  hostnames = ','.join(f'{name}-{rjob}-0-{i}.{name}' for i in range(n))
  tpu_vm(env, 0, '')
  for i in range(n):
    pod = {**{e['name']: e['value'] for e in container['env']}, 'KUBERNETES_SERVICE_HOST': '10.1.0.1',
           'JOB_COMPLETION_INDEX': str(i), 'TPU_WORKER_ID': str(i), 'TPU_WORKER_HOSTNAMES': hostnames}
    for key, value in pod.items():
      env.setenv(key, value)
    assert hosts.detect() == hosts.Launch('gke tpu', n, i, f'{name}-{rjob}-0-0.{name}:8482')
  assert os.environ['SSL_JAX_INIT_TIMEOUT_S'] == '600'


def test_launchers_whose_peers_jax_cannot_find(env):
  env.setenv('TPU_WORKER_HOSTNAMES', 'a,b,c,d')          # GKE TPU pod, but no TPU seen (no libtpu)
  env.setenv('TPU_WORKER_ID', '1')
  with pytest.raises(hosts.HostsError, match=r'install jax\[tpu\]'):
    hosts.detect()
  env.delenv('TPU_WORKER_HOSTNAMES')
  env.setenv('KUBERNETES_SERVICE_HOST', '10.1.0.1')       # a GPU pod of an Indexed Job
  env.setenv('JOB_COMPLETION_INDEX', '1')
  try:
    import kubernetes  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    with pytest.raises(hosts.HostsError, match=r'install jax\[k8s\]'):
      hosts.detect()
  env.delenv('JOB_COMPLETION_INDEX')
  env.setenv('SLURM_JOB_ID', '5')                         # srun without the variables JAX reads
  env.setenv('SLURM_STEP_ID', '0')
  env.setenv('SLURM_NTASKS', '2')
  with pytest.raises(hosts.HostsError, match='SLURM_STEP_NODELIST'):
    hosts.detect()


def test_several_processes_without_a_coordination_service(env):
  """JAX started (here: as if by libtpu on a slice) before any coordination client: an error
  now, not Orbax's `Distributed system is not available` or a hang later."""
  import jax  # pylint: disable=import-outside-toplevel
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
  env.setattr(xla_bridge, 'backends_are_initialized', lambda: True)
  env.setattr(jax, 'process_count', lambda: 8)
  with pytest.raises(hosts.HostsError, match='8 processes but no coordination service'):
    hosts.initialize()
  env.setenv('SSL_JAX_COORDINATOR', '127.0.0.1:1')
  env.setenv('SSL_JAX_NUM_PROCESSES', '2')
  env.setenv('SSL_JAX_PROCESS_ID', '1')
  with pytest.raises(hosts.HostsError, match='JAX was started before the hosts'):
    hosts.initialize()


def test_the_line_for_a_host_that_is_gone():
  launch = hosts.Launch('slurm', 2, 0, 'node0:1234')
  gloo = RuntimeError('UNKNOWN: Gloo AllGather failed: [pair.cc:547] Connection closed by peer [10.0.0.3]:9117')
  assert hosts.lost_host(launch, gloo) == (
      'host 0 of 2: another host stopped answering (UNKNOWN: Gloo AllGather failed: [pair.cc:547] Connection '
      'closed by peer [10.0.0.3]:9117); every host stops (the first host to fail says why)')
  beat = RuntimeError('UNAVAILABLE: Task 1 heartbeat timeout. This indicates that the remote task has failed\nmore')
  assert hosts.lost_host(launch, beat).startswith('host 0 of 2: host 1 stopped answering (UNAVAILABLE: Task 1 heart')
  assert hosts.lost_host(launch, ValueError('shapes (3,) and (4,) differ')) is None


def start(corpus, workdir, port, process_id, extra_env=()):
  """Host `process_id` of 2 training for ever; its output (stdout and stderr) read into .lines."""
  env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'JAX_PLATFORMS': 'cpu', 'SSL_JAX_COORDINATOR': f'127.0.0.1:{port}',
         'SSL_JAX_NUM_PROCESSES': '2', 'SSL_JAX_PROCESS_ID': str(process_id), **dict(extra_env)}
  proc = subprocess.Popen([sys.executable, 'run.py', 'train', f'--config.data.path={corpus}', *TINY,
                           '--config.train.steps=100000', '--config.train.checkpoint_every=0',
                           '--config.train.eval_every=0', '--config.train.sample_tokens=0',
                           '--config.mesh.data=1', '--config.mesh.fsdp=-1', '--config.mesh.tensor=1',
                           '--workdir', workdir], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  proc.lines = []
  proc.reader = threading.Thread(target=lambda: proc.lines.extend(proc.stdout), daemon=True)
  proc.reader.start()
  return proc


def ended(proc, timeout):
  """Its exit status and output, once it has exited (or been killed after `timeout` s)."""
  try:
    proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
  proc.reader.join(timeout=10)                 # its last lines
  return proc.returncode, ''.join(proc.lines)


@pytest.mark.multihost
def test_hosts_that_never_come_are_an_error_in_bounded_time(tmp_path, corpus):
  """Host 0 of 2 alone (its peer never starts), and host 1 of 2 alone (no coordinator)."""
  procs = [start(corpus, str(tmp_path / f'alone{i}'), free_port(), i, {'SSL_JAX_INIT_TIMEOUT_S': '5'})
           for i in range(2)]
  started = time.time()
  for i, p in enumerate(procs):
    code, out = ended(p, 120)
    assert code == 1, out[-3000:]
    assert re.fullmatch(rf'error: host {i} of 2 \(explicit, coordinator 127\.0\.0\.1:\d+\): not every host started '
                        r'within 5s; start all 2 \(same command on each\).*SSL_JAX_INIT_TIMEOUT_S to wait longer',
                        out.strip().splitlines()[-1]), out[-3000:]
    assert 'Traceback' not in out and 'Check failure' not in out, out[-3000:]
  assert time.time() - started < 60


@pytest.mark.multihost
def test_a_host_killed_in_training_stops_the_other_in_one_line(tmp_path, corpus):
  port = free_port()
  procs = [start(corpus, str(tmp_path / 'run'), port, i) for i in range(2)]
  try:
    deadline = time.time() + 240
    while time.time() < deadline and not any(line.startswith('step 3/') for line in procs[0].lines):
      assert all(p.poll() is None for p in procs), ''.join(procs[0].lines)[-3000:]
      time.sleep(0.1)
    procs[1].send_signal(signal.SIGKILL)       # host 1 dies in training, host 0 (the coordinator) lives on
    killed = time.time()
    code, out = ended(procs[0], 150)
    took = time.time() - killed
  finally:
    for p in procs:
      p.kill()
      p.wait()
  assert 'step 3/' in out, out[-3000:]
  assert code == 1, out[-3000:]
  assert took < 120, took
  assert f'host 0 of 2 (explicit, coordinator 127.0.0.1:{port}); all started in' in out
  assert re.fullmatch(r'error: host 0 of 2: (another host|host 1) stopped answering \(.+\); every host stops '
                      r'\(the first host to fail says why\)', out.strip().splitlines()[-1]), out[-3000:]
  assert 'Traceback' not in out and 'Check failure' not in out, out[-3000:]


@pytest.mark.multihost
def test_a_host_that_hangs_ends_the_other_within_the_heartbeat_timeout(tmp_path, corpus):
  """Host 1 stopped (SIGSTOP: its sockets stay open, as a hung or cut-off machine's do), so
  host 0 waits in a collective that never fails: JAX's coordination service ends it once
  host 1 has been silent for SSL_JAX_HEARTBEAT_TIMEOUT_S, with its own (multi-line) message."""
  port = free_port()
  procs = [start(corpus, str(tmp_path / 'run'), port, i, {'SSL_JAX_HEARTBEAT_TIMEOUT_S': '10'}) for i in range(2)]
  try:
    deadline = time.time() + 240
    while time.time() < deadline and not any(line.startswith('step 3/') for line in procs[0].lines):
      assert all(p.poll() is None for p in procs), ''.join(procs[0].lines)[-3000:]
      time.sleep(0.1)
    procs[1].send_signal(signal.SIGSTOP)
    stopped = time.time()
    code, out = ended(procs[0], 120)
    took = time.time() - stopped
  finally:
    for p in procs:
      p.kill()
      p.wait()
  assert code != 0 and took < 60, (code, took, out[-3000:])
  assert 'stopped sending heartbeats' in out, out[-3000:]
