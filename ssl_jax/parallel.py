"""Hosts, the device mesh, and the one table that maps logical axis names onto it.

Data parallel, FSDP and tensor parallel are the same model code with this table:
`batch` is split over `data` and `fsdp`; parameters' `embed` axis over `fsdp` (so
parameters and optimizer state are sharded, ZeRO-3 style); `heads`, `mlp` and `vocab`
over `tensor` (Megatron-style). A mesh axis is used at most once per array: flax skips a
rule whose mesh axis an earlier dimension already took.
"""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from ssl_jax.errors import ConfigError
from ssl_jax.hosts import initialize as initialize_hosts  # noqa: F401  (the trainer's phase 1)

AXES = ('data', 'fsdp', 'tensor')

LOGICAL_RULES = (
    ('batch', ('data', 'fsdp')),
    ('embed', 'fsdp'),
    ('heads', 'tensor'),
    ('mlp', 'tensor'),
    ('vocab', 'tensor'),
    ('length', None),
    ('layers', None),             # scanned layers' stacking axis
    ('kv', None),
    ('qkv', None),
    ('mlm_transform', 'tensor'),  # BERT's MLM transform output (models/bert.py)
)


def logical_rules(platform: str):
  """LOGICAL_RULES for a mesh of `platform` devices: on CPU BERT's MLM transform stays whole
  (XLA:CPU miscomputed a gradient with it split, see models/bert.py)."""
  if platform != 'cpu':
    return LOGICAL_RULES
  return tuple((name, None if name == 'mlm_transform' else axes) for name, axes in LOGICAL_RULES)


_BARRIERS = {}


def _numbered(name: str) -> str:
  """A coordination key used once: the same name in a later pass gets the next number."""
  _BARRIERS[name] = _BARRIERS.get(name, 0) + 1
  return f'{name} #{_BARRIERS[name]}'


def _client():
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  return distributed.global_state.client


def barrier(name: str, timeout_s: int = 3600) -> None:
  """Waits until every process gets here. Through the coordination service, not a device
  collective: one host may spend minutes (tokenising, preparing a corpus) while the others
  wait, longer than a collective's timeout."""
  if jax.process_count() == 1:
    return
  name = _numbered(name)
  client = _client()
  if client is None:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)
    return
  client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)


def gather_text(name: str, value: str, timeout_s: int = 600) -> list:
  """Every process's `value`, in process order, through the coordination service's key-value
  store (no device collective: it works while a host is failing, e.g. mid-restore)."""
  if jax.process_count() == 1:
    return [value]
  key = _numbered(name)
  client = _client()
  client.key_value_set(f'ssl_jax/{key}/{jax.process_index()}', value)
  return [client.blocking_key_value_get(f'ssl_jax/{key}/{i}', timeout_s * 1000) for i in range(jax.process_count())]


def every_host(name: str, ok: bool) -> bool:
  """True when `ok` holds on every host: all hosts take the same branch after it."""
  return all(v == '1' for v in gather_text(name, '1' if ok else '0'))


def mesh_shape(mesh_config, num_devices: int):
  """(data, fsdp, tensor) from the config; one axis set to -1 takes what the others leave."""
  shape = [int(mesh_config.data), int(mesh_config.fsdp), int(mesh_config.tensor)]
  if shape.count(-1) > 1:
    raise ConfigError('mesh: at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1')
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if known <= 0 or num_devices % known:
      raise ConfigError(f'mesh: {shape} does not divide the {num_devices} devices')
    shape[shape.index(-1)] = num_devices // known
  if int(np.prod(shape)) != num_devices:
    raise ConfigError(f'mesh: data={shape[0]} x fsdp={shape[1]} x tensor={shape[2]} = '
                     f'{int(np.prod(shape))} devices, but there are {num_devices}')
  return tuple(shape)


def make_mesh(mesh_config, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  slices = len({getattr(d, 'slice_index', 0) for d in devices})
  if slices > 1:
    # Several TPU slices joined over the data-center network: the slowest links carry the
    # least traffic, so the slices split the data axis (else fsdp), each slice the rest.
    from jax.experimental import mesh_utils  # pylint: disable=import-outside-toplevel
    axis = 0 if shape[0] % slices == 0 else 1
    if shape[axis] % slices:
      raise ConfigError(f'mesh: {slices} slices must divide mesh.data={shape[0]} or mesh.fsdp={shape[1]}')
    dcn = [1, 1, 1]
    dcn[axis] = slices
    ici = [s // d for s, d in zip(shape, dcn)]
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    return Mesh(grid, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))
  # Auto axes: XLA's partitioner propagates shardings from parameters, inputs and the
  # logical constraints (the GSPMD model every TPU/GPU trainer uses).
  return jax.make_mesh(shape, AXES, devices=devices, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def logical_shardings(logical_specs, mesh: Mesh, rules=LOGICAL_RULES):
  """NamedShardings for a tree of logical PartitionSpecs (e.g. from nn.get_partition_spec)."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def divisible(shardings, abstract_tree):
  """`shardings` with each dimension left whole whose size its mesh axes do not divide
  (e.g. a 65-character vocabulary over tensor=2): the array stays valid on any mesh, and
  its shape does not depend on the mesh, so checkpoints move between meshes."""

  def fit(sharding, x):
    spec = list(sharding.spec) + [None] * (len(x.shape) - len(sharding.spec))
    for i, axes in enumerate(spec):
      names = axes if isinstance(axes, tuple) else (axes,) if axes else ()
      if names and x.shape[i] % int(np.prod([sharding.mesh.shape[a] for a in names])):
        spec[i] = None
    return NamedSharding(sharding.mesh, P(*spec))
  return jax.tree_util.tree_map(fit, shardings, abstract_tree)


# Which host reads which rows. The one place the data pipelines learn how many hosts there
# are: an objective, and a pipeline beyond asking for its share, never does.

def this_host() -> tuple:
  """(index, count) of this process among the job's hosts."""
  return jax.process_index(), jax.process_count()


def is_first_host() -> bool:
  """Host 0: the one that writes what every host would write alike (a tokenizer, a notice)."""
  return jax.process_index() == 0


@dataclasses.dataclass(frozen=True)
class HostShare:
  """This host's rows of every global batch of `size` rows: the contiguous block
  [host * local, (host + 1) * local) of each (`parallel.global_batch` puts the hosts' blocks
  together in host order)."""
  size: int
  host: int = 0
  hosts: int = 1

  @property
  def local(self) -> int:
    return self.size // self.hosts

  @property
  def within(self) -> np.ndarray:
    """Positions of this host's rows inside a batch."""
    return np.arange(self.host * self.local, (self.host + 1) * self.local)

  def rows(self, step: int) -> np.ndarray:
    """Run-wide indices of this host's rows of batch `step` (row g of the run is row
    g mod size of batch g div size)."""
    return step * self.size + self.within


def host_share(global_batch, host: int = None, hosts: int = None) -> HostShare:
  """This host's share of a global batch of `global_batch` rows (`host` and `hosts` default
  to this process's; tests pass them to play another host). A HostShare is its own share."""
  if isinstance(global_batch, HostShare):
    return global_batch
  if host is None or hosts is None:
    host, hosts = this_host()
  if global_batch % hosts:
    raise ConfigError(f'train.batch_size={global_batch} is not divisible by the {hosts} hosts')
  return HostShare(global_batch, host, hosts)


def all_rows(tree):
  """Every host's rows of a batch-leading tree of arrays, on every host (host-side decoding)."""
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return multihost_utils.process_allgather(tree, tiled=True)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(('data', 'fsdp')))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local: dict, mesh: Mesh) -> dict:
  """A global array from each host's rows (the leading axis of every entry is the batch)."""
  sharding = batch_sharding(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def check_batch(global_batch_size: int, mesh: Mesh, grad_accum: int = 1) -> None:
  ways = mesh.shape['data'] * mesh.shape['fsdp']
  if global_batch_size % (ways * grad_accum):
    raise ConfigError(f'train.batch_size={global_batch_size} is not divisible by the '
                     f'{ways}-way data axis (mesh.data x mesh.fsdp) x train.grad_accum={grad_accum}')
