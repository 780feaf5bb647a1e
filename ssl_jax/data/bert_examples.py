"""BERT pretraining examples, made as google-research/bert's create_pretraining_data.py makes them.

Example i of step s is a pure function of (seed, s, i), so a resumed run, on any number
of hosts, sees the very same pairs and the very same masks:

  1. target length data.seq_len - 3, shorter (uniform in [2, target]) with probability
     data.short_seq_prob;
  2. a chunk of consecutive sentences of one document, grown from a random start until it
     reaches the target; segment A is its first k sentences (k random);
  3. half the time B is the rest of the chunk (IsNext, label 0; the chunk is grown by one
     more sentence if it had only one); otherwise B is sentences from a random start in
     another document (NotNext, label 1), up to the remaining length;
  4. the longer segment is truncated from a random end until the pair fits;
  5. `[CLS] A [SEP] B [SEP]`, segment ids 0 then 1, padding to data.seq_len;
  6. masking: 15% of the tokens other than [CLS]/[SEP]/[PAD] (at least 1, at most
     data.max_predictions), chosen by word when whole-word masking is on; of those 80%
     become [MASK], 10% a random token, 10% stay.

Unlike the original, NotNext is decided before the chunk is read (so labels are an exact
coin flip; the original forces NotNext for one-sentence chunks) and nothing is written to
disk: pairs are drawn afresh at every step.

With nsp off (mlm_nsp.nsp=false: RoBERTa's FULL-SENTENCES within a document) an example is
the chunk of step 2 alone, `[CLS] A [SEP]`, truncated at its end; its NSP label is 0 and
unused. A corpus of single sentences (one document of unrelated lines) then needs no pairs.
"""

from typing import List, Sequence

import numpy as np

from ssl_jax import parallel
from ssl_jax.data import shard_readers
from ssl_jax.data.text import DataError

SPECIALS = ('[UNK]', '[PAD]', '[CLS]', '[SEP]', '[MASK]')
IS_NEXT, NOT_NEXT = 0, 1


class InMemoryDocuments:
  """Documents given as lists of sentence id arrays, behind ShardedDocuments' interface."""

  def __init__(self, documents: Sequence[Sequence[np.ndarray]]):
    self.documents = [shard_readers.Document.of(list(d)) for d in documents if len(d)]
    self.pairs = [i for i, d in enumerate(self.documents) if len(d) >= 2]

  def __len__(self) -> int:
    return len(self.documents)

  def document(self, d: int) -> shard_readers.Document:
    return self.documents[d]

  def num_pairs(self) -> int:
    return len(self.pairs)

  def pair_document(self, k: int) -> int:
    return self.pairs[k]


class PretrainingBatches:
  """MLM + NSP batches from tokenised documents: a shard_readers.ShardedDocuments (memory-mapped:
  an example reads only its two documents), or a list of documents of sentence id arrays."""

  def __init__(self, documents, tokenizer, seq_len: int, global_batch,
               seed: int, max_predictions: int = 20, short_seq_prob: float = 0.1, whole_word: bool = False,
               mask_prob: float = 0.15, name: str = 'data', nsp: bool = True):
    """global_batch: the global batch size, or this host's parallel.HostShare of it."""
    self.documents = documents if hasattr(documents, 'pair_document') else InMemoryDocuments(documents)
    if nsp and (len(self.documents) < 2 or not self.documents.num_pairs()):   # a pair is needed for IsNext
      raise DataError(f'{name}: BERT pretraining needs at least 2 documents, one of 2+ sentences '
                      f'(found {len(self.documents)} documents; mlm_nsp.nsp=false needs one)')
    if not len(self.documents):
      raise DataError(f'{name}: no documents')
    self.nsp = nsp
    self.share = parallel.host_share(global_batch)
    if seq_len < 8:
      raise DataError(f'data.seq_len={seq_len} is too short for [CLS] A [SEP] B [SEP]')
    self.max_tokens = seq_len - 3 if nsp else seq_len - 2
    self.seq_len, self.global_batch, self.seed = seq_len, self.share.size, seed
    self.max_predictions, self.short_seq_prob = max_predictions, short_seq_prob
    self.whole_word, self.mask_prob = whole_word, mask_prob
    self.pad, self.cls, self.sep, self.mask = (tokenizer.piece_id(p) for p in ('[PAD]', '[CLS]', '[SEP]', '[MASK]'))
    self.first_ordinary = max(tokenizer.piece_id(p) for p in SPECIALS) + 1   # random replacements start here
    self.vocab_size = tokenizer.vocab_size
    self.word_start = word_starts(tokenizer)
    self.rows = [int(r) for r in self.share.within]

  # --- one example ---------------------------------------------------------------------

  def pair(self, rng: np.random.Generator):
    """(tokens_a, tokens_b, label, where): where = (doc_a, a_sentences, doc_b, b_sentences)."""
    if not self.nsp:
      return self.single(rng)
    max_tokens = self.max_tokens
    target = self.target_length(rng)
    label = IS_NEXT if rng.random() < 0.5 else NOT_NEXT
    if label == IS_NEXT:
      doc_id = self.documents.pair_document(int(rng.integers(self.documents.num_pairs())))
      doc = self.documents.document(doc_id)
      start = int(rng.integers(len(doc) - 1))            # leave room for at least one B sentence
    else:
      doc_id = int(rng.integers(len(self.documents)))
      doc = self.documents.document(doc_id)
      start = int(rng.integers(len(doc)))
    lengths = doc.lengths
    end, length = start, 0
    while end < len(lengths) and length < target:
      length += lengths[end]
      end += 1
    if label == IS_NEXT and end - start < 2:
      end = start + 2                                     # grow a one-sentence chunk by its successor
    a_end = start + 1 if end - start < 2 else int(rng.integers(start + 1, end))
    a = list(range(start, a_end))
    if label == IS_NEXT:
      b_doc, other, b = doc_id, doc, list(range(a_end, end))
    else:
      b_doc = int(rng.integers(len(self.documents) - 1))
      b_doc += b_doc >= doc_id                            # any document but A's
      other = self.documents.document(b_doc)
      b_start = int(rng.integers(len(other)))
      room = max(target - sum(lengths[start:a_end]), 1)
      b, length = [], 0
      for j in range(b_start, len(other)):
        if length >= room:
          break
        b.append(j)
        length += other.lengths[j]
    tokens_a = doc.tokens(start, a_end).tolist()         # sentences are consecutive: one slice each
    tokens_b = other.tokens(b[0], b[-1] + 1).tolist()
    while len(tokens_a) + len(tokens_b) > max_tokens:     # truncate the longer one from a random end
      longer = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
      if rng.random() < 0.5:
        del longer[0]
      else:
        longer.pop()
    return tokens_a, tokens_b, label, (doc_id, a, b_doc, b)

  def target_length(self, rng: np.random.Generator) -> int:
    """An example's token budget: max_tokens, or with probability short_seq_prob a uniform
    length in [2, max_tokens]."""
    if rng.random() < self.short_seq_prob:
      return int(rng.integers(2, self.max_tokens + 1))
    return self.max_tokens

  def single(self, rng: np.random.Generator):
    """pair()'s result with no B: consecutive sentences of one document from a random start,
    up to a target length drawn as pair() draws it (a long last sentence is cut at max_tokens)."""
    target = self.target_length(rng)
    doc_id = int(rng.integers(len(self.documents)))
    doc = self.documents.document(doc_id)
    start = int(rng.integers(len(doc)))
    end, length = start, 0
    while end < len(doc.lengths) and length < target:
      length += doc.lengths[end]
      end += 1
    tokens = doc.tokens(start, end).tolist()[:self.max_tokens]
    return tokens, [], IS_NEXT, (doc_id, list(range(start, end)), doc_id, [])

  def example(self, entropy) -> dict:
    rng = np.random.default_rng(entropy)
    tokens_a, tokens_b, label, _ = self.pair(rng)
    tail = [*tokens_b, self.sep] if self.nsp else []
    tokens = [self.cls, *tokens_a, self.sep, *tail]
    n = len(tokens)
    inputs = np.full(self.seq_len, self.pad, np.int32)
    inputs[:n] = tokens
    segments = np.zeros(self.seq_len, np.int32)
    segments[len(tokens_a) + 2:n] = 1
    positions, labels, weights = self.mask_tokens(inputs, n, rng)
    return {'inputs': inputs, 'segments': segments, 'padding': np.arange(self.seq_len) < n,
            'positions': positions, 'labels': labels, 'weights': weights, 'nsp': np.int32(label)}

  def mask_tokens(self, inputs: np.ndarray, n: int, rng: np.random.Generator):
    """Masks `inputs` in place; returns (positions, original ids, weights), each max_predictions long."""
    candidates = [i for i in range(n) if inputs[i] not in (self.cls, self.sep, self.pad)]
    groups: List[List[int]] = []
    for i in candidates:   # with whole-word masking a word's pieces are chosen together
      if self.whole_word and groups and not self.word_start[inputs[i]] and groups[-1][-1] == i - 1:
        groups[-1].append(i)
      else:
        groups.append([i])
    wanted = min(self.max_predictions, max(1, int(round(len(candidates) * self.mask_prob))))
    chosen: List[int] = []
    for g in rng.permutation(len(groups)):
      if len(chosen) >= wanted:
        break
      if len(chosen) + len(groups[g]) <= wanted:
        chosen.extend(groups[g])
    chosen.sort()
    positions = np.zeros(self.max_predictions, np.int32)
    labels = np.zeros(self.max_predictions, np.int32)
    weights = np.zeros(self.max_predictions, np.float32)
    k = len(chosen)
    positions[:k], labels[:k], weights[:k] = chosen, inputs[chosen], 1.0
    action = rng.random(k)
    random_ids = rng.integers(self.first_ordinary, self.vocab_size, size=k)
    for j, i in enumerate(chosen):
      if action[j] < 0.8:
        inputs[i] = self.mask
      elif action[j] >= 0.9:
        inputs[i] = random_ids[j]
    return positions, labels, weights

  # --- batches -----------------------------------------------------------------------

  def _batch(self, step: int, stream: int) -> dict:
    examples = [self.example([self.seed, step, i, stream]) for i in self.rows]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}

  def batch(self, step: int) -> dict:
    return self._batch(step, 0)

  def eval_batch(self, i: int) -> dict:
    return self._batch(i, 1)


def word_starts(tokenizer) -> np.ndarray:
  """Per id: does the piece begin a word (sentencepiece's '▁' prefix; specials and bytes do)."""
  if hasattr(tokenizer, 'word_starts'):   # WordPiece: '##' marks a continuation
    return tokenizer.word_starts()
  flags = np.ones(tokenizer.vocab_size, bool)
  if not hasattr(tokenizer, 'sp'):          # no word boundaries known: every piece starts one
    return flags
  for i in range(tokenizer.vocab_size):
    piece = tokenizer.sp.id_to_piece(i)
    flags[i] = piece.startswith('\u2581') or tokenizer.sp.is_control(i) or tokenizer.sp.is_byte(i) \
        or tokenizer.sp.is_unknown(i)
  return flags
