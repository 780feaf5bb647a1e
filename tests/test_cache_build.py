"""The token cache built once for the whole job: builds racing on one shared folder from
separate PID namespaces (as containers, with equal pids) never break each other; two hosts
split the units, each tokenised once, into the files one host builds; on a gs:// workdir
the shards live in the bucket, each host keeps a local copy, and a second run tokenises
nothing; a killed build's temporaries go only once they are stale."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from ssl_jax import storage
from ssl_jax.data import prepare, shard_readers, shards, tokenizer as tokenizers

WORDS = 'the old river runs past green hills under a wide grey sky while seven wizards quietly hex jolly boxes'.split()

# One build (or one host of a JAX job) in its own process; prints the folder the readers open.
SCRIPT = '''
import json, sys
sys.path.insert(0, {root!r})
a = json.loads(sys.argv[1])
kw = {{}}
if 'process' in a:
  import jax
  jax.distributed.initialize(coordinator_address=a['coordinator'], num_processes=a['processes'],
                             process_id=a['process'])
else:
  kw.update(host=0, hosts=1)
from ssl_jax.data import shards, tokenizer
tok = tokenizer.load(a['work'])
out = shards.build(a['paths'], tok, a['work'], tokenizer.fingerprint(tok), a['cache'], workers=1,
                   unit_bytes=a['unit_bytes'], sentences=a.get('sentences', False), local_dir=a.get('local_dir', ''),
                   **kw)
print('OUT', out)
'''
TOKENISED = re.compile(r'(token|sentence) cache: tokenised (\d+) of (\d+) units here \(host (\d+) of (\d+)\)')


def make_docs(n, seed=0):
  rng = np.random.default_rng(seed)
  return [' '.join(rng.choice(WORDS, rng.integers(5, 40))) + '.' for _ in range(n)]


@pytest.fixture
def corpus(tmp_path):
  """(work folder holding the tokenizer, paths): two JSONL files of ~6 KB, cut into units of 1 KB."""
  docs = make_docs(80)
  paths = []
  for name, part in (('a.jsonl', docs[:50]), ('b.jsonl', docs[50:])):
    paths.append(str(tmp_path / name))
    with open(paths[-1], 'w') as f:
      f.writelines(json.dumps({'text': d}) + '\n' for d in part)
  work = str(tmp_path / 'work')
  tokenizers.save(tokenizers.CharTokenizer.from_text(docs + ['\n']), work)
  return work, paths


def build_here(work, paths, cache, **kw):
  tok = tokenizers.load(work)
  return shards.build(paths, tok, work, tokenizers.fingerprint(tok), cache, workers=1, unit_bytes=1000, host=0,
                      hosts=1, **kw)


def command(args, pid_namespace=False):
  cmd = [sys.executable, '-c', SCRIPT.format(root=ROOT), json.dumps(args)]
  return ['unshare', '-p', '-f', '--mount-proc', *cmd] if pid_namespace else cmd


def files_of(folder):
  """{name: bytes} of a cache folder's finished files (not temporaries)."""
  return {n: open(os.path.join(folder, n), 'rb').read() for n in sorted(os.listdir(folder)) if '.tmp' not in n}


def tokenised(output):
  """[(units tokenised, of how many, host, hosts)] from the lines a build printed."""
  return [tuple(int(g) for g in m.groups()[1:]) for m in TOKENISED.finditer(output)]


def can_unshare():
  if not shutil.which('unshare'):
    return 'unshare is not installed'
  try:
    proc = subprocess.run(['unshare', '-p', '-f', '--mount-proc', 'true'], capture_output=True, timeout=30)
  except (OSError, subprocess.TimeoutExpired) as e:
    return f'unshare failed: {e}'
  return '' if proc.returncode == 0 else f'unshare -p is not permitted here: {proc.stderr.decode().strip()[:200]}'


@pytest.mark.multihost
def test_concurrent_builds_in_separate_pid_namespaces_are_clean_20_of_20(tmp_path, corpus):
  reason = can_unshare()
  if reason:
    pytest.skip(reason)
  work, paths = corpus
  reference = files_of(build_here(work, paths, str(tmp_path / 'reference')))
  assert sum(n.endswith('.json') for n in reference) > 10    # several units to race on
  failures = []
  for trial in range(20):
    args = {'work': work, 'paths': paths, 'cache': str(tmp_path / f'shared{trial}'), 'unit_bytes': 1000}
    procs = [subprocess.Popen(command(args, pid_namespace=True), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    bad = [out[-1500:] for p, out in zip(procs, outputs) if p.returncode != 0]
    if bad:
      failures.append(f'trial {trial}: ' + '\n'.join(bad))
      continue
    folder = outputs[0].split('OUT ')[-1].strip()
    if files_of(folder) != reference:
      failures.append(f'trial {trial}: the files differ from a lone build\'s')
  assert not failures, f'{len(failures)} of 20 trials failed:\n' + '\n'.join(failures[:3])


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def job(args, processes=2, local_dirs=None, env=None):
  """Runs one build as a JAX job of `processes` processes over loopback; their outputs, in order."""
  port = free_port()
  procs = []
  for i in range(processes):
    a = {**args, 'coordinator': f'127.0.0.1:{port}', 'processes': processes, 'process': i,
         **({'local_dir': local_dirs[i]} if local_dirs else {})}
    procs.append(subprocess.Popen(command(a), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env={**os.environ, 'JAX_PLATFORMS': 'cpu', **(env or {})}))
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  return [p.returncode for p in procs], outputs


@pytest.mark.multihost
def test_two_hosts_split_the_units_and_index_as_one_host(tmp_path, corpus):
  work, paths = corpus
  one = build_here(work, paths, str(tmp_path / 'one'))
  codes, outputs = job({'work': work, 'paths': paths, 'cache': str(tmp_path / 'shared'), 'unit_bytes': 1000})
  assert codes == [0, 0], '\n'.join(o[-2000:] for o in outputs)
  counts = [tokenised(o) for o in outputs]
  units = len(json.load(open(os.path.join(one, shard_readers.INDEX)))['shards'])
  assert counts == [[((units + 1) // 2, units, 0, 2)], [(units // 2, units, 1, 2)]]   # each unit once
  folder = outputs[0].split('OUT ')[-1].strip()
  assert outputs[1].split('OUT ')[-1].strip() == folder
  assert files_of(folder) == files_of(one)          # index.json included: written once, the same


@pytest.mark.multihost
def test_bad_input_on_one_host_is_the_same_error_on_both(tmp_path, corpus):
  work, paths = corpus
  with open(paths[1], 'a') as f:
    f.write('{"text": broken\n')      # in the last unit, one host's
  codes, outputs = job({'work': work, 'paths': paths, 'cache': str(tmp_path / 'shared'), 'unit_bytes': 1000})
  assert codes[0] != 0 and codes[1] != 0
  for out in outputs:
    assert 'b.jsonl' in out and 'not JSON' in out, out[-2000:]
  assert not os.listdir(tmp_path / 'shared')   # nothing left of the partial cache


def test_gs_workdir_keeps_the_shards_in_the_bucket_and_a_local_copy(tmp_path, corpus, gcs, capsys):
  work, paths = corpus
  reference = files_of(build_here(work, paths, str(tmp_path / 'reference')))
  capsys.readouterr()
  cache = f'{gcs.url}/run/cache'
  first = build_here(work, paths, cache, local_dir=str(tmp_path / 'local'))
  assert first.startswith(str(tmp_path / 'local')) and files_of(first) == reference
  name = os.path.basename(first)
  bucket = gcs.url[len('gs://'):]
  assert sorted(n.split('/')[-1] for n in gcs.objects(bucket, f'run/cache/{name}/')) == sorted(reference)
  assert storage.read_bytes(f'{cache}/{name}/{shard_readers.INDEX}') == reference[shard_readers.INDEX]
  assert tokenised(capsys.readouterr().out) == [(len(reference) // 3, len(reference) // 3, 0, 1)]
  assert not os.path.exists(os.path.join(os.getcwd(), 'gs:'))
  # A resume on this host, and another host with an empty disk: nothing tokenised, the same files.
  again = build_here(work, paths, cache, local_dir=str(tmp_path / 'local'))
  other = build_here(work, paths, cache, local_dir=str(tmp_path / 'other'))
  out = capsys.readouterr().out
  assert again == first and files_of(other) == reference
  assert tokenised(out) == [] and out.count('token cache: found in gs://') == 2
  stream = shard_readers.ShardedTokens(other)
  assert np.array_equal(stream.to_array(), shard_readers.ShardedTokens(first).to_array())


def test_gs_workdir_sentence_cache_and_an_interrupted_upload(tmp_path, corpus, gcs, capsys):
  work, paths = corpus
  reference = files_of(build_here(work, paths, str(tmp_path / 'reference'), sentences=True))
  cache = f'{gcs.url}/run/cache'
  local = build_here(work, paths, cache, local_dir=str(tmp_path / 'local'), sentences=True)
  assert files_of(local) == reference
  name = os.path.basename(local)
  # Lost from the bucket: one shard's .json (its upload cut short) and the index; the local
  # copy uploads them again and the cache is whole once more, nothing tokenised.
  storage.remove(f'{cache}/{name}/shard-00001.json')
  storage.remove(f'{cache}/{name}/{shard_readers.INDEX}')
  capsys.readouterr()
  build_here(work, paths, cache, local_dir=str(tmp_path / 'local'), sentences=True)
  assert tokenised(capsys.readouterr().out) == [(0, (len(reference) - 1) // 5, 0, 1)]
  fresh = build_here(work, paths, cache, local_dir=str(tmp_path / 'fresh'), sentences=True)
  assert files_of(fresh) == reference
  assert shard_readers.ShardedDocuments(fresh).document(3).lengths == shard_readers.ShardedDocuments(
      local).document(3).lengths


@pytest.mark.multihost
def test_two_hosts_on_gs_each_with_its_own_disk(tmp_path, corpus, gcs):
  work, paths = corpus
  reference = files_of(build_here(work, paths, str(tmp_path / 'reference')))
  args = {'work': work, 'paths': paths, 'cache': f'{gcs.url}/run/cache', 'unit_bytes': 1000}
  disks = [str(tmp_path / 'host0'), str(tmp_path / 'host1')]
  codes, outputs = job(args, local_dirs=disks, env=gcs.env)
  assert codes == [0, 0], '\n'.join(o[-2000:] for o in outputs)
  units = len(reference) // 3
  assert sum(t[0] for o in outputs for t in tokenised(o)) == units          # built once, split
  assert all(t[0] < units for o in outputs for t in tokenised(o))
  for i, out in enumerate(outputs):
    folder = out.split('OUT ')[-1].strip()
    assert folder.startswith(disks[i]) and files_of(folder) == reference
  # Resumed on fresh disks: found in the bucket, nothing tokenised.
  codes, outputs = job(args, local_dirs=[str(tmp_path / 'new0'), str(tmp_path / 'new1')], env=gcs.env)
  assert codes == [0, 0], '\n'.join(o[-2000:] for o in outputs)
  assert all(tokenised(o) == [] and 'token cache: found in gs://' in o for o in outputs)


def test_stale_temporaries_go_live_ones_stay(tmp_path, corpus):
  work, paths = corpus
  cache = str(tmp_path / 'cache')
  tok = tokenizers.load(work)
  target = shards.cache_dir_for(paths, tokenizers.fingerprint(tok), cache, unit_bytes=1000)
  os.makedirs(target)
  stale = os.path.join(target, 'shard-00000.bin.tmp-0123456789ab')
  live = os.path.join(target, 'shard-00001.bin.tmp-ba9876543210')
  for path in (stale, live):
    with open(path, 'wb') as f:
      f.write(b'half')
  day_ago = time.time() - shards.STALE_S - 60
  os.utime(stale, (day_ago, day_ago))
  out = build_here(work, paths, cache)
  assert not os.path.exists(stale) and os.path.exists(live)     # another build may still be writing it
  assert os.path.exists(os.path.join(out, shard_readers.INDEX))


def test_prepared_selection_on_gs_workdir(tmp_path, corpus, gcs):
  from ssl_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from ssl_jax.data import corpus as corpus_lib  # pylint: disable=import-outside-toplevel
  work, paths = corpus
  text = str(tmp_path / 'prose.txt')
  with open(text, 'w') as f:
    f.write('\n\n'.join(make_docs(60, seed=1) * 2))     # every paragraph twice: half are duplicates
  settings = config_lib.base_config().data.prepare
  local = corpus_lib.prepare_on_one_host([text], str(tmp_path / 'localrun'), settings)
  remote = corpus_lib.prepare_on_one_host([text], f'{gcs.url}/run', settings, str(tmp_path / 'disk'))
  assert remote['keep'].startswith(str(tmp_path / 'disk'))
  assert open(remote['keep'], 'rb').read() == open(local['keep'], 'rb').read()
  names = gcs.objects(gcs.url[len('gs://'):], 'run/')
  assert {'run/prepare_report.json', 'run/prepare_lengths.png', f'run/prepared/{prepare.KEEP_FILE}'} <= set(names)
  # Another host: reads the report from the bucket, keeps its own copy of keep.bin.
  other = corpus_lib.prepare_on_one_host([text], f'{gcs.url}/run', settings, str(tmp_path / 'disk2'))
  assert other['keep'].startswith(str(tmp_path / 'disk2')) and other['key'] == remote['key']
