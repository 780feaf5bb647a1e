"""Which host of the job this process is: JAX's multi-controller runtime started when the
environment says the job has several processes."""

import os

import jax


def initialize() -> None:
  """Starts JAX's multi-controller runtime when the environment says this is a multi-host job.

  An explicit coordinator (SSL_JAX_COORDINATOR, SSL_JAX_NUM_PROCESSES, SSL_JAX_PROCESS_ID)
  or JAX's own detection (TPU VMs, SLURM, GKE/Kubernetes, Open MPI) decides; a single
  process on one machine needs nothing.
  """
  if jax.distributed.is_initialized():
    return
  coordinator = os.environ.get('SSL_JAX_COORDINATOR')
  if coordinator:
    # Cross-process collectives for CPU devices (only the CPU backend reads this).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=int(os.environ['SSL_JAX_NUM_PROCESSES']),
        process_id=int(os.environ['SSL_JAX_PROCESS_ID']))
  elif any(k in os.environ for k in ('SLURM_JOB_ID', 'TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS',
                                     'OMPI_COMM_WORLD_SIZE')) and _multi_host_env():
    jax.distributed.initialize()


def _multi_host_env() -> bool:
  for key in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    if int(os.environ.get(key, '1')) > 1:
      return True
  return bool(os.environ.get('TPU_WORKER_HOSTNAMES', '').count(','))
