"""Labelled text for fine-tuning: readers, encoders into fixed-length rows, and batches.

  TSV      a header row naming `text` [, `text_b`], `label` columns (GLUE's SST-2 is
           `text<TAB>label`); labels are names, mapped to ids in sorted order
  CoNLL-U  one sentence a block; the FORM and UPOS columns (multi-word token lines such
           as `1-2` and empty nodes such as `8.1` are skipped, as UD's own tools do)

Encoders (BERT framing `[CLS] A [SEP] B [SEP]`, or a decoder's plain tokens) turn rows
into NumPy arrays; `LabelledBatches` serves them: the batch at step s is a pure function
of (seed, s) (epochs reshuffled by (seed, epoch)), held-out batches walk the rows in
order, padded at the end with rows of weight 0.
"""

import csv
import functools
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ssl_jax import parallel
from ssl_jax.data import sources
from ssl_jax.data.text import DataError, read_text

IGNORE = -1   # label of positions that carry no loss (sub-word continuations, specials, padding)


def read_tsv(path: str) -> Tuple[List[str], List[Optional[str]], List[str]]:
  """(texts, texts_b or Nones, label names) of a TSV with a header."""
  lines = read_text(path).splitlines()
  rows = list(csv.reader(lines, delimiter='\t', quoting=csv.QUOTE_NONE))
  if not rows:
    raise DataError(f'{path}: empty')
  header = [h.strip().lower() for h in rows[0]]
  text_col = next((header.index(n) for n in ('text', 'sentence', 'sentence1', 'text_a') if n in header), None)
  b_col = next((header.index(n) for n in ('text_b', 'sentence2') if n in header), None)
  if text_col is None or 'label' not in header:
    raise DataError(f'{path}: the header {rows[0]} needs a text (or sentence) column and a label column')
  label_col = header.index('label')
  texts, texts_b, labels = [], [], []
  for n, row in enumerate(rows[1:], start=2):
    if not any(cell.strip() for cell in row):
      continue
    if len(row) <= max(text_col, label_col, b_col or 0):
      raise DataError(f'{path}:{n}: {len(row)} columns, the header has {len(header)}')
    texts.append(row[text_col].strip())
    texts_b.append(row[b_col].strip() if b_col is not None else None)
    labels.append(row[label_col].strip())
  if not texts:
    raise DataError(f'{path}: no rows after the header')
  return texts, texts_b, labels


def read_conllu_tags(path: str) -> List[Tuple[List[str], List[str]]]:
  """[(words, UPOS tags)] per sentence of a CoNLL-U file."""
  sentences, words, tags = [], [], []
  for n, line in enumerate(read_text(path).splitlines(), start=1):
    line = line.rstrip('\n')
    if not line.strip():
      if words:
        sentences.append((words, tags))
        words, tags = [], []
      continue
    if line.startswith('#'):
      continue
    cols = line.split('\t')
    if len(cols) != 10:
      raise DataError(f'{path}:{n}: {len(cols)} columns, CoNLL-U has 10')
    if '-' in cols[0] or '.' in cols[0]:
      continue
    words.append(cols[1])
    tags.append(cols[3])
  if words:
    sentences.append((words, tags))
  if not sentences:
    raise DataError(f'{path}: no sentences')
  return sentences


def split(config, read) -> Tuple[list, list]:
  """(training rows, held-out rows) of data.path and data.eval_path, each read by `read(path)`.

  Without data.eval_path the last data.eval_fraction of data.path's rows is held out;
  data.max_examples (0: all) then caps the training rows, taken from the front.
  """
  d = config.data
  rows = read(sources.resolve(d.path, 'data.path')[0])
  if d.eval_path:
    held_out = read(sources.resolve(d.eval_path, 'data.eval_path')[0])
  else:
    cut = max(1, int(len(rows) * (1 - d.eval_fraction)))
    rows, held_out = rows[:cut], rows[cut:]
  return (rows[:d.max_examples] if d.max_examples else rows), held_out


def label_ids(names: Sequence[str], classes: Sequence[str] = ()) -> Tuple[np.ndarray, Tuple[str, ...]]:
  """Ids of label names in `classes` (default: the sorted distinct names; integers sort as numbers)."""
  if not classes:
    distinct = set(names)
    numeric = all(n.lstrip('-').isdigit() for n in distinct)
    classes = tuple(sorted(distinct, key=int if numeric else str))
  index = {c: i for i, c in enumerate(classes)}
  unknown = sorted(set(names) - set(index))
  if unknown:
    raise DataError(f'labels {unknown[:5]} are not among the training labels {list(classes)[:20]}')
  return np.asarray([index[n] for n in names], np.int32), tuple(classes)


def _specials(tokenizer):
  if not hasattr(tokenizer, 'piece_id'):   # the char tokenizer has no pieces of its own
    raise DataError('an encoder needs a sub-word vocabulary with [CLS], [SEP] and [PAD]: '
                    'data.tokenizer=sentencepiece (or a pretrained body through init_from)')
  ids = [tokenizer.piece_id(p) for p in ('[CLS]', '[SEP]', '[PAD]')]
  unk = tokenizer.piece_id('[UNK]')
  if any(i == unk for i in ids):
    raise DataError('this vocabulary lacks [CLS], [SEP] or [PAD]: an encoder needs them')
  return ids


def encode_pairs(tokenizer, texts, texts_b, seq_len: int) -> dict:
  """`[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]` rows, the longer side truncated first."""
  cls, sep, pad = _specials(tokenizer)
  n = len(texts)
  tokens = np.full((n, seq_len), pad, np.int32)
  segments = np.zeros((n, seq_len), np.int32)
  for i, (a, b) in enumerate(zip(texts, texts_b)):
    a = list(tokenizer.encode(a))
    b = list(tokenizer.encode(b)) if b is not None else None
    room = seq_len - (3 if b is not None else 2)
    while len(a) + len(b or []) > room:
      if b is not None and len(b) > len(a):
        b.pop()
      else:
        a.pop()
    row = [cls] + a + [sep] + ((b + [sep]) if b is not None else [])
    tokens[i, :len(row)] = row
    if b is not None:
      segments[i, len(a) + 2:len(row)] = 1
  return {'tokens': tokens, 'segments': segments, 'padding': tokens != pad}


def encode_plain(tokenizer, texts, texts_b, seq_len: int) -> dict:
  """A decoder's rows (GPT-1 style): A, then a newline and B, left-aligned; `length` per row.

  Too long a row keeps its last seq_len tokens, since a decoder's classifier reads the
  last one. A character-level tokenizer drops the characters its alphabet lacks.
  """
  n = len(texts)
  tokens = np.zeros((n, seq_len), np.int32)
  lengths = np.zeros((n,), np.int32)
  known = set(tokenizer.chars) if tokenizer.kind == 'char' else None
  for i, (a, b) in enumerate(zip(texts, texts_b)):
    row = a if b is None else f'{a}\n{b}'
    if known is not None:     # a character-level model skips characters its alphabet lacks
      row = ''.join(ch for ch in row if ch in known)
    ids = list(tokenizer.encode(row)) or [0]
    ids = ids[-seq_len:]
    tokens[i, :len(ids)] = ids
    lengths[i] = len(ids)
  return {'tokens': tokens, 'lengths': lengths, 'padding': np.arange(seq_len)[None, :] < lengths[:, None]}


def encode_tags(tokenizer, sentences, seq_len: int, tag_ids: np.ndarray) -> dict:
  """`[CLS] pieces [SEP]` rows; each word's tag on its first piece, IGNORE elsewhere.

  Words past the end of a row are cut (their tags are not scored); `words_kept` counts them.
  """
  cls, sep, pad = _specials(tokenizer)
  unk = tokenizer.piece_id('[UNK]')
  n = len(sentences)
  tokens = np.full((n, seq_len), pad, np.int32)
  labels = np.full((n, seq_len), IGNORE, np.int32)
  kept = 0
  offset = 0
  for i, (words, _) in enumerate(sentences):
    row, row_labels = [cls], [IGNORE]
    for j, word in enumerate(words):
      pieces = list(tokenizer.encode(word)) or [unk]
      if len(row) + len(pieces) > seq_len - 1:
        break
      row += pieces
      row_labels += [int(tag_ids[offset + j])] + [IGNORE] * (len(pieces) - 1)
      kept += 1
    offset += len(words)
    row.append(sep)
    row_labels.append(IGNORE)
    tokens[i, :len(row)] = row
    labels[i, :len(row)] = row_labels
  return {'tokens': tokens, 'segments': np.zeros_like(tokens), 'padding': tokens != pad, 'labels': labels,
          'words_kept': kept}


def pack_rows(arrays: dict, max_examples: int, seed: int) -> dict:
  """Encoded examples (encode_pairs' rows, with `labels` (N,)) packed several a row (data.pack).

  Taken in an order shuffled by `seed`, each example goes to the open row with the least room
  that holds it (best fit), a row holding at most `max_examples`. A packed row carries its
  examples one after another, each with its own [CLS], then padding: `tokens`, `segments`
  (token types), `padding` (T,) as before, `pack_ids` (T,) each token's example in the row
  (-1 for padding), and per example slot (K = max_examples) `cls_positions`, `labels` and
  `valid` (1 for a real example, 0 for an empty slot).
  """
  tokens, padding = arrays['tokens'], arrays['padding']
  n, seq_len = tokens.shape
  lengths = padding.sum(1)
  pad = int(tokens[~padding][0]) if (~padding).any() else 0
  rows, open_rows = [], [[] for _ in range(seq_len + 1)]     # open_rows[r]: rows with room r
  for i in np.random.default_rng([seed, 11]).permutation(n):
    room = next((r for r in range(lengths[i], seq_len + 1) if open_rows[r]), None)
    if room is None:
      row, room = len(rows), seq_len
      rows.append([])
    else:
      row = open_rows[room].pop()
    rows[row].append(i)
    room -= lengths[i]
    if len(rows[row]) < max_examples and room > 0:
      open_rows[room].append(row)
  shape = (len(rows), seq_len)
  out = {'tokens': np.full(shape, pad, tokens.dtype), 'segments': np.zeros(shape, np.int32),
         'pack_ids': np.full(shape, -1, np.int32)}
  for key, dtype in (('cls_positions', np.int32), ('labels', np.int32), ('valid', np.float32)):
    out[key] = np.zeros((len(rows), max_examples), dtype)
  for r, members in enumerate(rows):
    at = 0
    for k, i in enumerate(members):
      length = lengths[i]
      out['tokens'][r, at:at + length] = tokens[i, :length]
      out['segments'][r, at:at + length] = arrays['segments'][i, :length]
      out['pack_ids'][r, at:at + length] = k
      out['cls_positions'][r, k], out['labels'][r, k], out['valid'][r, k] = at, arrays['labels'][i], 1.0
      at += length
  out['padding'] = out['pack_ids'] >= 0
  return out


class LabelledBatches:
  """Rows of equal-length arrays served as global batches; each host gets its own rows.

  `batch(step)`: rows of a permutation drawn per epoch from (seed, epoch), so the batch at
  step s is a pure function of (seed, s) and every row is seen once an epoch.
  `eval_batch(i)`: rows i*B ... (i+1)*B - 1 in order; past the end, row 0 again with
  `weight` 0. `num_batches` held-out batches cover every row once. Packed rows (pack_rows)
  weigh each example slot: `weight` (B, K) is the row's weight times the slot's `valid`.
  """

  def __init__(self, arrays: dict, global_batch, seed: int, name: str = 'data'):
    """global_batch: the global batch size, or this host's parallel.HostShare of it."""
    self.size = len(next(iter(arrays.values())))
    if self.size == 0:
      raise DataError(f'{name}: no examples')
    self.share = parallel.host_share(global_batch)
    self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
    self.global_batch, self.seed = self.share.size, seed
    self.num_batches = -(-self.size // self.global_batch)

  @functools.lru_cache(maxsize=2)
  def _order(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch, 7]).permutation(self.size)

  def _take(self, index: np.ndarray, weight: np.ndarray, positions: np.ndarray) -> dict:
    out = {k: v[index] for k, v in self.arrays.items()}
    out['weight'] = weight.astype(np.float32)
    if 'valid' in out:      # packed rows: one weight an example
      out['weight'] = out['weight'][:, None] * out.pop('valid')
    out['index'] = positions.astype(np.int32)
    return out

  def batch(self, step: int) -> dict:
    positions = self.share.rows(step)                                   # global positions in the stream
    epochs, within = positions // self.size, positions % self.size
    index = np.asarray([self._order(int(e))[w] for e, w in zip(epochs, within)])
    return self._take(index, np.ones(len(index)), positions)

  def eval_batch(self, i: int) -> dict:
    positions = self.share.rows(i)
    valid = positions < self.size
    return self._take(np.where(valid, positions, 0), valid, positions)

  def epochs(self, steps: int) -> float:
    return steps * self.global_batch / self.size
