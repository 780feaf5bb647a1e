"""The accelerator program, compiled by the real TPU compiler (libtpu) for a v5p:2x2x1 slice on
this CPU host: every family and pretext task, tiny configs, through `run.py plan --topology`."""

import json
import os
import re

import pytest

from conftest import ROOT, last_json_line, run_cli, shared_data

TOPOLOGY = 'v5p:2x2x1'
TINY = ['--config.model.num_layers=2', '--config.model.num_heads=2', '--config.model.d_model=64',
        '--config.model.d_ff=128', '--config.train.batch_size=8', '--config.mesh.data=1', '--config.mesh.fsdp=4',
        '--config.mesh.tensor=1']
TEXT = ['--config.data.seq_len=128', '--config.model.max_len=128']
VISION = ['--config.data.image_size=16', '--config.model.patch=4']
CASES = {
    'gpt': ('default.py', TEXT),
    'llama': ('llama.py:llama:nano', TEXT + ['--config.model.num_kv_heads=1']),   # 2 query heads on 1 kv head
    'bert': ('bert.py:tiny', TEXT + ['--config.model.vocab_size=600', '--config.data.max_predictions=5']),
    'mae': ('vit_mae.py', VISION + ['--config.model.decoder_layers=1', '--config.model.decoder_d_model=32',
                                    '--config.model.decoder_heads=2']),
    'jigsaw': ('vit_jigsaw.py', ['--config.data.image_size=24', '--config.model.patch=4', '--config.jigsaw.tile_size=8',
                                 '--config.jigsaw.hidden=64']),
    'rotation': ('vit_rotation.py', VISION),
    'inpaint': ('vit_inpaint.py', VISION),
    'colorize': ('vit_colorize.py', VISION),
    'finetune_sst2': ('finetune_sst2.py', TEXT + ['--config.model.vocab_size=600', '--config.data.max_examples=400']),
    # The transfer heads: an image classifier, a tagger, extractive QA, a decoder's classifier (GPT-1's).
    'vit_classifier': ('finetune_images.py', VISION),
    'bert_tagger': ('finetune_pos.py', TEXT + ['--config.model.vocab_size=600']),
    'bert_qa': ('finetune_qa.py', TEXT + ['--config.model.vocab_size=600']),
    'gpt_classifier': ('finetune_sst2.py', TEXT + ['--config.model.family=gpt_classifier', '--config.model.vocab_size=600',
                                                   '--config.data.max_examples=400']),
}
SPLASH = ('gpt', 'llama', 'bert', 'finetune_sst2', 'bert_tagger', 'bert_qa', 'gpt_classifier')   # text: the Pallas kernel
WORDS = 'the cat sat on a mat while dogs ran far away'.split()


def libtpu_present():
  try:
    import libtpu  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    return True
  except ImportError:
    return False


pytestmark = pytest.mark.skipif(not libtpu_present() and not os.environ.get('CI'),
                                reason='libtpu is not installed (pip install -r tests/requirements.txt brings it)')


def corpus_args(case, tmp_path, corpus):
  if case in ('gpt', 'llama', 'bert'):
    return [f'--config.data.path={corpus}']
  if case in ('finetune_sst2', 'gpt_classifier'):
    return [f'--config.data.path={shared_data("sst2", "train.tsv")}']
  sentences = [[WORDS[(i + j) % len(WORDS)] for j in range(12)] for i in range(40)]
  if case == 'bert_tagger':
    path = tmp_path / 'tags.conllu'
    path.write_text(''.join(f'# text = {" ".join(s)}\n' + ''.join(f'{j + 1}\t{w}\t{w}\t{"DET" if j % 2 else "NOUN"}'
                                                                   f'\t_\t_\t0\troot\t_\t_\n' for j, w in enumerate(s)) + '\n'
                            for s in sentences))
    return [f'--config.data.path={path}']
  if case == 'bert_qa':
    path = tmp_path / 'squad.json'
    paragraphs = [{'context': ' '.join(s), 'qas': [{'id': str(i), 'question': f'which word is {i}?', 'answers': [
        {'text': s[3], 'answer_start': len(' '.join(s[:3])) + 1}]}]} for i, s in enumerate(sentences)]
    path.write_text(json.dumps({'version': '1.1', 'data': [{'title': 'words', 'paragraphs': paragraphs}]}))
    return [f'--config.data.path={path}']
  return []


@pytest.mark.parametrize('case', list(CASES))
def test_every_family_compiles_for_a_tpu_slice(case, tmp_path, corpus):
  experiment, extra = CASES[case]
  workdir = tmp_path / 'plan'
  proc = run_cli('plan', '--config', f'experiments/{experiment}', '--topology', TOPOLOGY, *TINY, *extra,
                 *corpus_args(case, tmp_path, corpus), '--workdir', str(workdir))
  r = last_json_line(proc.stdout)
  with open(workdir / 'plan.json') as f:
    assert json.load(f) == r
  assert r['devices'] == 4 and r['accelerator'] == 'TPU v5p' and 'libtpu' in r['target']
  assert r['kernels'] == 'xla' and r['dtype'] == 'bfloat16'
  assert r['involuntary_full_rematerializations'] == 0
  assert 'Involuntary full rematerialization' not in proc.stderr
  if case in SPLASH:     # causal GPT, padded BERT: the Pallas kernel is in the program
    assert r['attention'] == 'splash' and any(k.startswith('splash_mha_fwd') for k in r['custom_calls'])
  b = r['bytes_per_device']
  # fsdp=4 splits every parameter's embed axis (64 -> 16): a device holds about a quarter.
  assert r['params'] * 4 / 4 * 0.9 < b['params'] < r['params'] * 4 / 4 * 1.35
  assert b['optimizer_state'] >= 2 * b['params'] and b['generated_code'] > 0
  roof = r['roofline']
  assert roof['compute_s'] > 0 and roof['memory_s'] > 0 and roof['bound_by'] in ('compute', 'memory')
  assert 0 < roof['mfu_bound'] <= 1.5
  if case == 'gpt':
    # The parameters enter the program sharded as the rules say: wpe (positions, embed) with embed over fsdp.
    with open(workdir / 'plan_hlo.txt') as f:
      entry = next(line for line in f if line.startswith('ENTRY'))
    shapes = re.findall(r'f32\[(\d+),(\d+)\]', entry)
    assert ('128', '16') in shapes and ('128', '64') not in shapes     # 128 positions, 64 / 4 wide


def test_two_slices_over_dcn_compile(tmp_path, corpus):
  proc = run_cli('plan', '--config', 'experiments/default.py', '--topology', 'v5e:2x2', '--slices', '2',
                 '--config.mesh.data=2', '--config.mesh.fsdp=4', '--config.mesh.tensor=1', *TINY[:4],
                 '--config.data.seq_len=128', '--config.train.batch_size=16', f'--config.data.path={corpus}')
  r = last_json_line(proc.stdout)
  assert r['devices'] == 8 and '2 slices' in r['target'] and r['accelerator'] == 'TPU v5e'
  assert r['mesh'] == [2, 4, 1] and r['bytes_per_device']['params'] > 0
