"""Tasks own their settings: each is a `Task` with its own config group; old keys still read;
a run never writes into the config it was given."""

import json
import tempfile

import pytest

from conftest import tiny_config
from ssl_jax import config as config_lib, tasks, trainer, workdirs
from ssl_jax.errors import ConfigError

GROUPS = {'masked_image': 'mae', 'inpaint': 'inpaint', 'jigsaw': 'jigsaw', 'rotation': 'rotation',
          'classify': 'classify', 'span_qa': 'span_qa'}


def test_every_task_is_found_and_its_settings_are_a_config_group_of_its_own():
  found = [task.name for task in tasks.every()]
  assert {'clm', 'mlm_nsp', 'masked_image', 'inpaint', 'jigsaw', 'rotation', 'classify', 'tag', 'span_qa'} <= set(found)
  base, docs = config_lib.base_config(), config_lib.docs()
  for task in tasks.every():
    if task.per_family:   # one objective per head, each a task of its own
      assert all(tasks.get(task.name, family).heads.items() <= task.heads.items() for family in task.per_family)
      continue
    assert callable(task.make_data) and callable(task.loss_fn) and callable(task.flops_per_step)
    assert task.fine_tuning == bool(task.best_metric)
    if task.name in GROUPS:
      assert task.group == GROUPS[task.name] and task.settings
    for key, (default, doc) in task.settings.items():
      assert base[task.group][key] == default and docs[f'{task.group}.{key}'].endswith(doc)
  with pytest.raises(ConfigError, match="unknown task 'colour'.*clm"):
    tasks.get('colour')


def test_no_task_setting_is_left_where_it_was():
  base = config_lib.base_config()
  for old, new in config_lib.RENAMED.items():
    (old_group, old_key), (group, key) = old.split('.'), new.split('.')
    assert old_key not in base[old_group] and key in base[group], old


def test_an_old_key_on_the_command_line_sets_the_new_one_with_a_notice(capsys):
  config = config_lib.load('experiments/vit_jigsaw.py')
  config_lib.override(config, 'model.tile_size', '12')
  config_lib.override(config, 'finetune.doc_stride', '7')
  assert config.jigsaw.tile_size == 12 and config.span_qa.doc_stride == 7
  err = capsys.readouterr().err
  assert 'model.tile_size is now jigsaw.tile_size' in err and 'finetune.doc_stride is now span_qa.doc_stride' in err


def test_a_config_saved_with_the_old_keys_reads_them_where_they_are_now(tmp_path, capsys):
  saved = json.loads(config_lib.load('experiments/vit_inpaint.py').to_json())
  for group in ('inpaint', 'mae', 'rotation'):
    saved.pop(group)
  saved['model'].update({'hole': 0.25, 'overlap': 3, 'overlap_weight': 5.0, 'mask_ratio': 0.5, 'all_turns': True})
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(saved, f)
  config = workdirs.saved_config(str(tmp_path))
  assert (config.inpaint.hole, config.inpaint.overlap, config.inpaint.overlap_weight) == (0.25, 3, 5.0)
  assert config.mae.mask_ratio == 0.5 and config.rotation.all_turns is True
  assert 'hole' not in config.model
  err = capsys.readouterr().err
  assert 'model.hole -> inpaint.hole' in err and 'model.all_turns -> rotation.all_turns' in err
  assert len(err.strip().splitlines()) == 1   # one notice, not five


def test_an_experiment_file_written_with_old_keys_is_read_where_they_are_now(tmp_path, capsys):
  path = tmp_path / 'old_mae.py'
  path.write_text('from ssl_jax.config import base_config\n\n\ndef get_config(arg=None):\n'
                  '  c = base_config()\n  c.task, c.model.family = "masked_image", "mae"\n'
                  '  c.model.mask_ratio = 0.5\n  c.finetune.doc_stride = 9\n  return c\n')
  config = config_lib.load(str(path))
  assert config.mae.mask_ratio == 0.5 and config.span_qa.doc_stride == 9
  assert 'mask_ratio' not in config.model and 'doc_stride' not in config.finetune
  assert 'model.mask_ratio -> mae.mask_ratio' in capsys.readouterr().err


def test_a_resume_compares_a_saved_old_key_with_its_new_place():
  from ssl_jax import workdirs  # pylint: disable=import-outside-toplevel
  old = {'model': {'mask_ratio': 0.5, 'd_model': 64}, 'mae': {}}
  new = {'model': {'d_model': 64}, 'mae': {'mask_ratio': 0.75}}
  assert workdirs.config_changes(old, new) == {'mae.mask_ratio': (0.5, 0.75)}


def test_a_run_leaves_the_config_it_was_given_as_it_was(corpus):
  config = tiny_config(corpus, 'default.py', **{'model.vocab_size': 0})
  before = config.to_json()
  s = trainer.setup(config, tempfile.mkdtemp(), compile_steps=False)
  assert config.to_json() == before and config.model.vocab_size == 0
  assert s.config.model.vocab_size == s.data.tokenizer.vocab_size > 0


def test_classes_come_from_the_data_into_the_runs_own_config(tmp_path):
  path = tmp_path / 'train.tsv'
  rows = [('good fun', 'pos'), ('dull and slow', 'neg'), ('a delight', 'pos'), ('tedious', 'neg'), ('meh', 'mid')] * 8
  path.write_text('sentence\tlabel\n' + ''.join(f'{t}\t{y}\n' for t, y in rows))
  config = tiny_config('', 'finetune_sst2.py', **{'data.path': str(path), 'data.tokenizer': 'char', 'data.seq_len': 16,
                                                  'model.family': 'gpt_classifier', 'model.vocab_size': 0})
  s = trainer.setup(config, str(tmp_path / 'run'), compile_steps=False)
  assert config.model.num_classes == 0 and s.config.model.num_classes == 3 == len(s.data.classes)
  assert s.model.num_classes == 3


def test_nothing_task_specific_can_be_stored_on_the_setup(corpus):
  s = trainer.setup(tiny_config(corpus), tempfile.mkdtemp(), compile_steps=False)
  with pytest.raises(AttributeError):
    s._qa_forward = None   # pylint: disable=protected-access  (span_qa once cached its forward function here)
