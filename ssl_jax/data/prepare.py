"""Corpus preparation: quality filters and de-duplication before tokenisation, with a report.

One streaming pass over the raw files. Documents are the blank-line-separated paragraphs of
each file (`data.prepare.documents='paragraphs'`) or whole files ('files'). Each document
meets the filters in a fixed order and is counted once, by the first that removes it:

  quality      Gopher/C4-style heuristics: length in words, mean word length, share of
               alphabetic characters, share of lines ending in punctuation, share of
               repeated word 3-grams, boilerplate ('lorem ipsum'; lines naming javascript
               or cookies are dropped, C4's rule)
  exact        the same text (whitespace-normalised) seen before
  lines        every line of the document repeats a line already kept (lines of at least
               `min_line_chars` characters are remembered; shorter ones, such as a
               play's speaker names, are never deduplicated)
  near         a MinHash over word 5-shingles, locality-sensitive hashing in bands, and an
               estimated Jaccard similarity of at least `near_threshold` with a kept one

Only the hash sets and the LSH index grow with the corpus; the text itself streams. The
kept documents go to `WORKDIR/prepared/corpus.txt` (`run.py prepare`) with their provenance
(source file and line range) in `provenance.jsonl`; `prepare_report.json` and
`prepare_lengths.png` say what went where.

Training (`data.prepare.enabled`) writes no copy of the corpus: the same pass records which
documents it kept, a byte each (`keep.bin`), and the token pipeline's workers read the
sources again, cut them into the same documents and tokenise the kept ones
(`kept_texts`). The decisions need the whole stream in order (a near duplicate is one of a
document kept earlier anywhere in the corpus), so they are one sequential pass; the
tokenising, the costly part, runs on every core. On several hosts each host prepares the files (or, with one file, the
documents) whose index is its process index modulo the host count.
"""

import dataclasses
import hashlib
import io
import json
import os
import re
import time
import uuid
from collections import Counter
from typing import Iterator, List, Tuple

import numpy as np

from ssl_jax import storage
from ssl_jax.data import minhash, shard_readers, sources
from ssl_jax.data.text import DataError

FILTERS = ('quality', 'exact', 'lines', 'near')
BOILERPLATE_DOC = ('lorem ipsum',)
BOILERPLATE_LINE = ('javascript', 'cookie policy', 'use cookies', 'terms of use')
LINE_END_PUNCTUATION = tuple('.!?,;:\'")-]')
_WORD = re.compile(r'\S+')


@dataclasses.dataclass
class Document:
  text: str
  source: str
  first_line: int     # 1-based, inclusive
  last_line: int


def _lines(path: str) -> Iterator[str]:
  """A text file's lines (ended by '\n'), streamed and decompressed (.gz, .zst); bad bytes are
  a DataError. A piece may end inside a line longer than sources.py's blocks: its start waits."""
  carry = []
  for piece in sources.iter_documents([path], 'text', separator=False):
    for line in io.StringIO(piece):
      carry.append(line)
      if line.endswith('\n'):
        yield ''.join(carry)
        carry = []
  if carry:
    yield ''.join(carry)


def documents(paths: List[str], mode: str = 'paragraphs', host: int = 0,
              hosts: int = 1) -> Iterator[Document]:
  """Streams the documents of `paths`, this host's share only."""
  if mode not in ('paragraphs', 'files'):
    raise DataError(f"data.prepare.documents={mode!r}: expected 'paragraphs' or 'files'")
  by_file = len(paths) > 1
  count = 0
  for f_index, path in enumerate(paths):
    if by_file and f_index % hosts != host:
      continue
    lines, first = [], 1
    if sources.format_of(path) != 'text':    # JSONL, Parquet, Arrow: a row is a document
      for number, text in enumerate(sources.iter_documents([path]), start=1):
        if by_file or count % hosts == host:
          yield Document(text, path, number, number)
        count += 1
      continue
    for number, line in enumerate(_lines(path), start=1):
      line = line.rstrip('\n')
      if mode == 'paragraphs' and not line.strip():
        if lines:
          if by_file or count % hosts == host:
            yield Document('\n'.join(lines), path, first, number - 1)
          count += 1
        lines, first = [], number + 1
        continue
      if not lines:
        first = number
      lines.append(line)
    if lines and (by_file or count % hosts == host):
      yield Document('\n'.join(lines), path, first, first + len(lines) - 1)
    count += bool(lines)


def quality_problem(text: str, p) -> str:
  """Why the document fails the heuristics ('' if it passes); lines of boilerplate are removed
  by `clean_lines` before this is asked."""
  words = _WORD.findall(text)
  if not p.min_words <= len(words) <= p.max_words:
    return f'{len(words)} words'
  mean = sum(len(w) for w in words) / len(words)
  if not p.min_mean_word_length <= mean <= p.max_mean_word_length:
    return f'mean word length {mean:.1f}'
  visible = [ch for ch in text if not ch.isspace()]
  alpha = sum(ch.isalpha() for ch in visible) / max(len(visible), 1)
  if alpha < p.min_alpha_fraction:
    return f'{alpha:.0%} alphabetic'
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  ending = sum(l.endswith(LINE_END_PUNCTUATION) for l in lines) / max(len(lines), 1)
  if ending < p.min_punctuated_lines:
    return f'{ending:.0%} of lines end in punctuation'
  grams = Counter(zip(words, words[1:], words[2:]))
  repeated = sum(c for c in grams.values() if c > 1) / max(sum(grams.values()), 1)
  if repeated > p.max_repeated_3grams:
    return f'{repeated:.0%} repeated 3-grams'
  lowered = text.lower()
  if any(b in lowered for b in BOILERPLATE_DOC):
    return 'boilerplate'
  return ''


def clean_lines(text: str) -> str:
  return '\n'.join(l for l in text.split('\n') if not any(b in l.lower() for b in BOILERPLATE_LINE))


def _hash(text: str) -> bytes:
  return hashlib.blake2b(text.encode('utf-8', 'replace'), digest_size=12).digest()


class Filters:
  """The filters' state over one stream of documents, and the report's counts.

  `judge(doc)` is the document's fate: its kept text (boilerplate lines removed), or None
  if a filter removed it. The de-duplicating filters remember what was kept before, so
  documents must be judged in corpus order, by one process."""

  def __init__(self, p):
    self.p = p
    self.lsh = minhash.MinHashLSH(p.near_threshold, p.num_perm) if p.near else None
    self.seen_docs, self.seen_lines = set(), set()
    self.removed = {f: 0 for f in FILTERS}
    self.examples = {f: [] for f in FILTERS}
    self.lengths_in, self.lengths_out = [], []
    self.words_in = self.words_out = 0

  def judge(self, doc: Document):
    p, lsh = self.p, self.lsh
    words = len(doc.text.split())
    self.words_in += words
    self.lengths_in.append(words)
    text = clean_lines(doc.text) if p.quality else doc.text
    reason = ''
    if p.quality and quality_problem(text, p):
      reason = 'quality'
    normalised = ' '.join(text.split())
    if not reason and p.exact:
      key = _hash(normalised)
      if key in self.seen_docs:
        reason = 'exact'
      else:
        self.seen_docs.add(key)
    line_keys = [_hash(l.strip()) for l in text.split('\n') if len(l.strip()) >= p.min_line_chars]
    if not reason and p.lines and line_keys and all(k in self.seen_lines for k in line_keys):
      reason = 'lines'
    signature = lsh.signature(normalised) if lsh is not None and not reason else None
    if signature is not None and lsh.near_duplicate(signature):
      reason = 'near'
    if reason:
      self.removed[reason] += 1
      if len(self.examples[reason]) < 3:
        self.examples[reason].append({'source': doc.source, 'lines': [doc.first_line, doc.last_line],
                                      'text': doc.text[:300]})
      return None
    if signature is not None:
      lsh.add(signature)
    self.seen_lines.update(line_keys)
    self.words_out += len(text.split())
    self.lengths_out.append(len(text.split()))
    return text

  def report(self, total_bytes: int, seconds: float) -> dict:
    p = self.p
    report = {'documents_in': len(self.lengths_in), 'documents_out': len(self.lengths_out),
              'words_in': self.words_in, 'words_out': self.words_out, 'removed': self.removed,
              'examples': self.examples, 'bytes_in': total_bytes, 'seconds': seconds,
              'mb_per_sec': total_bytes / 1e6 / max(seconds, 1e-9),
              'lsh': {'bands': self.lsh.bands, 'rows': self.lsh.rows} if self.lsh else None,
              'settings': p.to_dict() if hasattr(p, 'to_dict') else dict(p)}
    assert report['documents_in'] == report['documents_out'] + sum(self.removed.values())
    return report


KEEP_FILE = 'keep.bin'          # one byte a document of the corpus (in prepare's order): 1 kept, 0 removed


def prepare(paths: List[str], out_dir: str, p, host: int = 0, hosts: int = 1,
            progress: bool = True, plot_path: str = '', write_corpus: bool = True) -> dict:
  """Filters and de-duplicates `paths`; returns the report (and plots the document lengths
  before and after to plot_path, if given).

  Writes out_dir/provenance.jsonl, the kept text to out_dir/corpus.txt if `write_corpus`,
  and, over the whole corpus (one process), out_dir/keep.bin: which documents were kept,
  what training's token pipeline reads instead of a copy of the corpus (`kept_texts`).
  `out_dir` is a local folder; `plot_path` may be a URL."""
  os.makedirs(out_dir, exist_ok=True)
  total_bytes = sum(sources.stat(x)['size'] for x in paths)
  filters = Filters(p)
  start = time.perf_counter()
  bar = None
  if progress:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm(total=total_bytes, unit='B', unit_scale=True, desc='prepare', leave=False)
  tmp = f'.tmp-{uuid.uuid4().hex[:12]}'      # unique to this writer, also across hosts and containers
  names = _outputs(write_corpus, hosts)
  files = {n: open(os.path.join(out_dir, n + tmp), 'wb') if n == KEEP_FILE  # pylint: disable=consider-using-with
           else open(os.path.join(out_dir, n + tmp), 'w', encoding='utf-8') for n in names}
  documents_per_file = Counter()
  try:
    for doc in documents(paths, p.documents, host, hosts):
      if bar is not None:
        bar.update(len(doc.text.encode('utf-8', 'replace')) + 2)
      documents_per_file[doc.source] += 1
      text = filters.judge(doc)
      if KEEP_FILE in files:
        files[KEEP_FILE].write(b'\0' if text is None else b'\1')
      if text is None:
        continue
      if write_corpus:
        files['corpus.txt'].write(text + '\n\n')
      files['provenance.jsonl'].write(json.dumps({'source': doc.source, 'first_line': doc.first_line,
                                                  'last_line': doc.last_line, 'words': len(text.split())}) + '\n')
  finally:
    for f in files.values():
      f.close()
  if bar is not None:
    bar.close()
  for n in names:
    os.replace(os.path.join(out_dir, n + tmp), os.path.join(out_dir, n))
  report = filters.report(total_bytes, time.perf_counter() - start)
  if hosts == 1:
    report['documents_per_file'] = [documents_per_file[x] for x in paths]
  if plot_path:
    _plot(filters.lengths_in, filters.lengths_out, plot_path)
  return report


def _outputs(write_corpus: bool, hosts: int) -> List[str]:
  return ['provenance.jsonl'] + (['corpus.txt'] if write_corpus else []) + ([KEEP_FILE] if hosts == 1 else [])


def kept_texts(path: str, first: int, keep_path: str, mode: str, quality: bool) -> Iterator[str]:
  """The kept documents of one file, as `prepare` wrote them to corpus.txt (less the blank
  line after each): `first` is the file's first document in keep.bin."""
  keep = np.memmap(keep_path, np.uint8, 'r')
  for k, doc in enumerate(documents([path], mode)):
    if keep[first + k]:
      yield clean_lines(doc.text) if quality else doc.text


def _plot(before, after, path):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(7, 4))
  top = max(before + after + [1])
  bins = np.unique(np.geomspace(1, top + 1, 40).astype(int))
  ax.hist(before, bins=bins, alpha=0.5, label=f'before ({len(before)} documents)')
  ax.hist(after, bins=bins, alpha=0.5, label=f'after ({len(after)} documents)')
  ax.set_xscale('log')
  ax.set_xlabel('document length (words)')
  ax.set_ylabel('documents')
  ax.legend()
  fig.tight_layout()
  picture = storage.buffer()
  fig.savefig(picture, format='png')
  plt.close(fig)
  storage.write_bytes(path, picture.getvalue())


def table(report: dict) -> str:
  lines = [f"{'':<10}{'documents':>12}{'words':>14}",
           f"{'in':<10}{report['documents_in']:>12,}{report['words_in']:>14,}"]
  for name, count in report['removed'].items():
    lines.append(f"{'- ' + name:<10}{count:>12,}")
  lines.append(f"{'kept':<10}{report['documents_out']:>12,}{report['words_out']:>14,}")
  lines.append(f"{report['bytes_in'] / 1e6:.1f} MB in {report['seconds']:.1f} s ({report['mb_per_sec']:.2f} MB/s)")
  return '\n'.join(lines)


def cache_key(paths: List[str], p) -> str:
  stats = [(os.path.abspath(x), os.path.getsize(x), os.path.getmtime(x)) if not sources.is_url(x)
           else tuple(sources.stat(x).values()) for x in paths]
  settings = {k: v for k, v in (p.to_dict() if hasattr(p, 'to_dict') else dict(p)).items() if k != 'enabled'}
  return hashlib.sha1(json.dumps([stats, settings], sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepared_corpus(paths: List[str], workdir: str, p, host: int = 0, hosts: int = 1,
                    progress: bool = True, write_corpus: bool = True, local_dir: str = '') -> Tuple[str, dict]:
  """(path of the cleaned corpus, report): prepared once per (files, settings), then cached.
  Without `write_corpus` (training: its token pipeline reads the kept documents from the
  sources, `kept_texts`), the path of keep.bin and no copy of the corpus.

  With hosts > 1 (`run.py prepare` on every host) each host writes its own shard
  under prepared/host_<i>; training prepares on one host, over every document. On an
  object-store workdir the files are written in a local folder (`local_copy`'s, under
  `local_dir`) and uploaded.
  """
  out_dir = storage.join(workdir, 'prepared')
  report_dir = workdir
  if hosts > 1:
    out_dir = report_dir = storage.join(out_dir, f'host_{host}')
  key = cache_key(paths, p)
  report_path = storage.join(report_dir, 'prepare_report.json')
  product = storage.join(out_dir, 'corpus.txt' if write_corpus else KEEP_FILE)
  if storage.exists(report_path) and storage.exists(product):
    report = json.loads(storage.read_text(report_path))
    if report.get('key') == key and (write_corpus or 'documents_per_file' in report):
      return product, report
  if not write_corpus:
    storage.remove(storage.join(out_dir, 'corpus.txt'))     # another corpus's, or settings'
  work = out_dir
  if storage.is_url(out_dir):
    work = os.path.dirname(local_copy(storage.join(out_dir, KEEP_FILE), key, local_dir, fetch=False))
    if hosts > 1:
      work = os.path.join(work, f'host_{host}')
  report = prepare(paths, work, p, host, hosts, progress,
                   storage.join(report_dir, 'prepare_lengths.png'), write_corpus)
  if work != out_dir:
    for name in _outputs(write_corpus, hosts):
      storage.upload(os.path.join(work, name), storage.join(out_dir, name))
  report['key'] = key
  storage.write_text(report_path, json.dumps(report, indent=1))   # last: it says the files are complete
  return product, report


def local_copy(path: str, key: str, local_dir: str = '', fetch: bool = True) -> str:
  """A local file with `path`'s content (memory-mapped by the token pipeline's workers):
  `path` itself if local, else a copy under the host's cache folder (data.cache_dir), one
  folder per preparation key."""
  if not storage.is_url(path):
    return path
  local = os.path.join(shard_readers.local_cache_dir(local_dir), f'prepared-{key}', storage.basename(path))
  if fetch and not os.path.exists(local):
    os.makedirs(os.path.dirname(local), exist_ok=True)
    storage.download(path, local)
  return local


def selection(paths: List[str], keep_path: str, report: dict, p) -> dict:
  """What the token pipeline needs to read the kept documents of `paths` (shards.build's
  `select`): keep.bin, each file's first document in it, how documents are cut, the key."""
  firsts = np.concatenate([[0], np.cumsum(report['documents_per_file'])[:-1]]).astype(int).tolist()
  return {'keep': keep_path, 'firsts': dict(zip(paths, firsts)), 'documents': p.documents,
          'quality': bool(p.quality), 'key': report['key']}
