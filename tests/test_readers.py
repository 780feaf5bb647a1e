"""ssl_jax/data/sources.py and documents.py on what users' files hold: lines of any length read
in bounded blocks, CoNLL-U known by its extension whatever the compression."""

import gzip
import tracemalloc

import pytest

from ssl_jax.data import documents, sources

CONLLU = '''# newdoc id = one
# sent_id = 1
# text = The cat sat.
1\tThe\tthe\tDET\t_\t_\t2\tdet\t_\t_
2\tcat\tcat\tNOUN\t_\t_\t3\tnsubj\t_\t_
3\tsat\tsit\tVERB\t_\t_\t0\troot\t_\t_

# sent_id = 2
# text = It slept.
1\tIt\tit\tPRON\t_\t_\t2\tnsubj\t_\t_
2\tslept\tsleep\tVERB\t_\t_\t0\troot\t_\t_

# newdoc id = two
# sent_id = 3
# text = Rain fell.
1\tRain\train\tNOUN\t_\t_\t2\tnsubj\t_\t_
2\tfell\tfall\tVERB\t_\t_\t0\troot\t_\t_

'''


@pytest.mark.parametrize('suffix', ['.conllu.gz', '.conllu.zst', '.CONLLU'])
def test_conllu_is_known_by_its_extension_whatever_the_compression(tmp_path, suffix):
  plain = tmp_path / 'ud.conllu'
  plain.write_text(CONLLU)
  data = CONLLU.encode()
  if suffix.endswith('.gz'):
    data = gzip.compress(data)
  elif suffix.endswith('.zst'):
    data = pytest.importorskip('zstandard').ZstdCompressor().compress(data)
  other = tmp_path / ('ud' + suffix)
  other.write_bytes(data)
  want = [['The cat sat.', 'It slept.'], ['Rain fell.']]
  assert documents.read_documents([str(plain)]) == want
  assert documents.read_documents([str(other)]) == want


@pytest.mark.parametrize('line', [b'word ' * (3 << 20), 'é'.encode() * (8 << 20)], ids=['words', 'accents'])  # 15, 16 MB
def test_a_text_without_newlines_is_read_in_bounded_blocks(tmp_path, line):
  path = tmp_path / 'one_line.txt'
  path.write_bytes(line)
  tracemalloc.start()
  try:
    sizes, total = [], 0
    for piece in sources.iter_documents([str(path)], separator=False):
      sizes.append(len(piece))
      total += len(piece.encode())
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert total == len(line) and len(sizes) >= 8
  assert max(sizes) <= 2 * sources.PIECE_BYTES
  assert peak < 8 * sources.PIECE_BYTES, peak        # the line is 15-16 times that: it is never held whole
  if line.startswith(b'word'):                       # cut between words: each piece ends after a space
    assert all(size % 5 == 0 for size in sizes)


def test_long_lines_keep_their_numbers_and_their_documents(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, 'PIECE_BYTES', 64)
  text = 'A first sentence. ' * 20 + '\nshort\n\n' + 'x' * 300 + '\n\xff'
  path = tmp_path / 'long.txt'
  path.write_bytes(text.encode()[:-2] + b'\xff\n')      # line 5 is not UTF-8
  with pytest.raises(sources.DataError, match=f'{path}:5: not UTF-8'):
    list(sources.iter_documents([str(path)]))
  path.write_text(text[:-1])
  assert ''.join(sources.iter_documents([str(path)], separator=False)) == text[:-1]
  assert documents.read_documents([str(path)]) == [['A first sentence.'] * 20 + ['short'], ['x' * 300]]
